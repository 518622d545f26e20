"""Tests for the synthetic shapes data set: content, captions, splits, files."""

import dataclasses
import inspect
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mgjax.data import shapes, video

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_frames=8, height=32, width=32, num_images=2)


def color_mask(frames, color):
  """Pixels close to the named shape colour: bool [..., H, W]."""
  target = np.asarray(shapes.COLORS[color], np.float32)
  return np.linalg.norm(frames.astype(np.float32) - target, axis=-1) < 60


def centroids(frames, color):
  """Per-frame (x, y) centroid of the shape's colour mask, in pixels: [T, 2]."""
  mask = color_mask(frames, color)  # [T, H, W]
  ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
  area = mask.sum(axis=(1, 2))
  assert area.min() > 0, "shape not visible in some frame"
  return np.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], -1)


def nearest_color(rgb):
  names = list(shapes.COLORS)
  table = np.asarray([shapes.COLORS[n] for n in names], np.float32)
  return names[int(np.argmin(np.linalg.norm(table - np.asarray(rgb, np.float32), axis=1)))]


@pytest.fixture(scope="module", params=shapes.PATHS)
def specs_by_motion(request):
  found = {m: [] for m in shapes.MOTIONS}
  for i in range(200):
    spec = shapes.sample_spec(np.random.default_rng([11, i]), request.param)
    if len(found[spec.motion]) < 6:
      found[spec.motion].append(spec)
  assert all(len(v) == 6 for v in found.values())
  return found


# ----------------------------------------------------------------------------
# Rendered content.


@pytest.mark.parametrize("height, width", [(64, 64), (48, 96)])
def test_motion_really_happens(specs_by_motion, height, width):
  for motion, specs in specs_by_motion.items():
    for spec in specs:
      frames = shapes.render_clip(spec, 32, height, width)
      assert frames.shape == (32, height, width, 3) and frames.dtype == np.uint8
      c = centroids(frames, spec.color)  # [T, 2]
      # In frame: exactly by the path, roughly by the visible area (the
      # threshold mask flickers by a few edge pixels).
      xy = shapes.centers(spec, 32)
      assert (xy >= spec.size / 2 - 1e-9).all() and (xy <= 1 - spec.size / 2 + 1e-9).all()
      area = color_mask(frames, spec.color).sum(axis=(1, 2))
      assert area.min() > 0.8 * area.max(), f"{motion}: shape leaves the frame"
      dx, dy = c[-1] - c[0]
      steps = np.diff(c, axis=0)  # [T-1, 2]
      if motion == "still":
        assert np.array_equal(frames[0], frames[-1])
      elif motion in ("left", "right"):
        sign = 1 if motion == "right" else -1
        assert sign * dx > 0.35 * width and abs(dy) < 1.0
        assert (sign * steps[:, 0] > -0.5).all()
      elif motion in ("up", "down"):
        sign = 1 if motion == "down" else -1
        assert sign * dy > 0.35 * height and abs(dx) < 1.0
        assert (sign * steps[:, 1] > -0.5).all()
      else:  # bouncing: some axis goes out and comes back by a clear margin.
        reversals = []
        for axis in range(2):
          k = np.argmax(np.abs(c[:, axis] - c[0, axis]))
          out, back = c[k, axis] - c[0, axis], c[-1, axis] - c[k, axis]
          turned = np.sign(out) != np.sign(back)
          reversals.append(abs(out) > 3 and abs(back) > 3 and turned)
        assert any(reversals), f"bouncing without a bounce: {spec}"
        assert np.abs(steps).sum() > 0.5 * min(height, width)  # Diagonal path length.


def test_lanes_fix_each_motions_path():
  """With paths="lanes" a motion's path is one lane: clips of a motion stay within
  the jitter of each other in every frame, and any two motions' mean paths lie at
  least a fifth of the frame apart somewhere along the clip."""
  by_motion = {m: [] for m in shapes.MOTIONS}
  for i in range(300):
    spec = shapes.sample_spec(np.random.default_rng([3, i]), "lanes")
    by_motion[spec.motion].append(shapes.centers(spec, 16))  # [T, 2]
  paths = {m: np.stack(v) for m, v in by_motion.items()}  # [N, T, 2]
  for motion, p in paths.items():
    assert len(p) >= 20, motion
    spread = p.max(axis=0) - p.min(axis=0)  # [T, 2]
    assert (spread <= 4 * shapes.LANE_JITTER + 1e-9).all(), (motion, spread.max())
  means = {m: p.mean(axis=0) for m, p in paths.items()}  # [T, 2]
  for a, b in itertools.combinations(shapes.MOTIONS, 2):
    assert np.linalg.norm(means[a] - means[b], axis=-1).max() > 0.2, (a, b)
  with pytest.raises(ValueError, match="paths"):
    shapes.sample_spec(np.random.default_rng(0), "diagonal")


def test_shape_and_background_colours_are_separable(specs_by_motion):
  for spec in itertools.chain(*specs_by_motion.values()):
    frame = shapes.render_clip(spec, 1, 64, 64)[0].astype(np.int32)  # [H, W, 3]
    chroma = frame.max(-1) - frame.min(-1)
    side = spec.size * 64
    cx, cy = spec.start[0] * 64, spec.start[1] * 64
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    far = np.hypot(xs - cx, ys - cy) > 0.75 * side + 1.5
    assert chroma[far].max() <= 40
    centre = frame[int(cy), int(cx)]
    assert tuple(centre) == shapes.COLORS[spec.color]
    assert chroma[int(cy), int(cx)] >= 140


def test_colours_survive_h264(tmp_path, specs_by_motion):
  base = specs_by_motion["still"][0]
  for color in shapes.COLORS:
    for background in shapes.BACKGROUNDS:
      spec = dataclasses.replace(base, color=color, background=background)
      path = str(tmp_path / f"{color}_{background}.mp4")
      video.write_video(path, shapes.render_clip(spec, 2, 64, 64), fps=16)
      frame = video.read_clip(path, 1)[0].astype(np.int32)
      shape_pixels = frame[(frame.max(-1) - frame.min(-1)) >= 100]  # Chroma threshold.
      assert len(shape_pixels) > 0.5 * (spec.size * 64) ** 2 * 0.4
      assert nearest_color(shape_pixels.mean(0)) == color


def test_single_frame_render_is_the_first_frame(specs_by_motion):
  spec = specs_by_motion["right"][0]
  still = shapes.render_clip(spec, 1, 40, 56)
  assert still.shape == (1, 40, 56, 3)
  np.testing.assert_array_equal(still[0], shapes.render_clip(spec, 5, 40, 56)[0])


def test_edges_are_antialiased(specs_by_motion):
  spec = dataclasses.replace(specs_by_motion["still"][0], shape="circle", background="plain")
  frame = shapes.render_clip(spec, 1, 64, 64)[0].astype(np.int32)
  colour = np.asarray(shapes.COLORS[spec.color])
  background = np.asarray(spec.background_color)
  exact = (frame == colour).all(-1) | (frame == background).all(-1)
  assert (~exact).sum() > 10  # Partially covered edge pixels exist.


def test_spec_validates_names(specs_by_motion):
  spec = specs_by_motion["up"][0]
  with pytest.raises(ValueError, match="color='pink'"):
    dataclasses.replace(spec, color="pink")


# ----------------------------------------------------------------------------
# Captions.


def test_captions_name_every_attribute_once():
  phrasings = itertools.product(range(len(shapes.CLIP_TEMPLATES)), shapes.MOTIONS, range(3))
  for template, motion, phrase in phrasings:
    names = itertools.product(shapes.COLORS, shapes.SHAPES, shapes.BACKGROUNDS)
    for color, shape, background in names:
      spec = shapes.ClipSpec(
                shape=shape, color=color, motion=motion, background=background,
                background_color=(128, 128, 128), size=0.3, start=(0.5, 0.5), velocity=(0.0, 0.0),
                texture_scale=0.2, texture_angle=0.0, texture_phase=0.0, texture_contrast=10.0,
                caption_template=template, motion_phrase=phrase,
            )  # fmt: skip
      assert shapes.parse_caption(shapes.caption(spec)) == spec.attributes
      image_attributes = {"shape": shape, "color": color, "background": background}
      assert shapes.parse_caption(shapes.image_caption(spec)) == image_attributes


def test_captions_vary():
  specs = [shapes.sample_spec(np.random.default_rng([0, i])) for i in range(60)]
  captions = {shapes.caption(spec) for spec in specs}
  templates = {c.split(" ")[0] for c in captions}
  assert len(captions) > 50 and len(templates) >= 2


# ----------------------------------------------------------------------------
# Held-out split.


def test_heldout_combinations():
  total = len(shapes.COLORS) * len(shapes.SHAPES) * len(shapes.MOTIONS)
  for seed in range(10):
    heldout = shapes.heldout_combinations(seed, 0.15)
    assert heldout == shapes.heldout_combinations(seed, 0.15)
    assert len(heldout) == round(0.15 * total)
    train = set(itertools.product(shapes.COLORS, shapes.SHAPES, shapes.MOTIONS)) - heldout
    assert {c for c, _, _ in train} == set(shapes.COLORS)
    assert {s for _, s, _ in train} == set(shapes.SHAPES)
    assert {m for _, _, m in train} == set(shapes.MOTIONS)
    pairs = lambda a, b: set(itertools.product(a, b))  # noqa: E731
    assert {(c, s) for c, s, _ in train} == pairs(shapes.COLORS, shapes.SHAPES)
    assert {(c, m) for c, _, m in train} == pairs(shapes.COLORS, shapes.MOTIONS)
    assert {(s, m) for _, s, m in train} == pairs(shapes.SHAPES, shapes.MOTIONS)
  assert shapes.heldout_combinations(0, 0.15) != shapes.heldout_combinations(1, 0.15)
  assert shapes.heldout_combinations(0, 0.0) == frozenset()


def test_dataset_split_follows_heldout_combinations(tmp_path):
  manifest = shapes.make_dataset(
      tmp_path, 60, seed=2, num_frames=2, height=16, width=16, num_images=20
  )
  heldout = shapes.heldout_combinations(2, 0.15)
  records = [json.loads(line) for line in open(manifest)]
  for r in records:
    a = r["attributes"]
    combination = (a["color"], a["shape"], a["motion"])
    assert r["split"] == ("eval" if combination in heldout else "train")
  assert {r["split"] for r in records} == {"train", "eval"}
  for r in (json.loads(line) for line in open(tmp_path / "images.jsonl")):
    a = r["attributes"]
    assert r["split"] == ("eval" if (a["color"], a["shape"], "still") in heldout else "train")


# ----------------------------------------------------------------------------
# Files on disk.


def test_manifest_fields(tmp_path):
  manifest = shapes.make_dataset(tmp_path, 4, seed=0, fps=8, **SMALL)
  assert manifest == os.path.join(str(tmp_path), "manifest.jsonl")
  records = [json.loads(line) for line in open(manifest)]
  assert len(records) == 4
  for i, r in enumerate(records):
    assert set(r) == {
            "video", "caption", "fps", "num_frames", "width", "height", "split", "attributes"
        }  # fmt: skip
    assert r["video"] == f"videos/{i:05d}.mp4"
    assert isinstance(r["caption"], str) and isinstance(r["fps"], float) and r["fps"] == 8.0
    assert (r["num_frames"], r["height"], r["width"]) == (8, 32, 32)
    assert r["split"] in ("train", "eval")
    assert set(r["attributes"]) == {"shape", "color", "motion", "background"}
    for word in r["attributes"].values():
      assert word in r["caption"].split(" ") or word + "," in r["caption"].split(" ")
    assert shapes.parse_caption(r["caption"]) == r["attributes"]
    path = os.path.join(os.path.dirname(manifest), r["video"])
    expected = video.VideoInfo(fps=8.0, num_frames=8, width=32, height=32, duration=1.0)
    assert video.probe(path) == expected
    assert video.read_clip(path, 8).shape == (8, 32, 32, 3)
  images = [json.loads(line) for line in open(tmp_path / "images.jsonl")]
  assert len(images) == 2
  for i, r in enumerate(images):
    assert set(r) == {"image", "caption", "width", "height", "split", "attributes"}
    assert r["image"] == f"images/{i:05d}.png"
    assert set(r["attributes"]) == {"shape", "color", "background"}
    assert shapes.parse_caption(r["caption"]) == r["attributes"]
    assert video.read_image(tmp_path / r["image"]).shape == (32, 32, 3)
  params = json.load(open(tmp_path / "shapes.json"))
  assert params["num_videos"] == 4 and params["seed"] == 0


def _decoded(out_dir):
  records = [json.loads(line) for line in open(os.path.join(out_dir, "manifest.jsonl"))]
  return [video.read_clip(os.path.join(out_dir, r["video"]), r["num_frames"]) for r in records]


def test_same_seed_same_data_different_seed_different_data(tmp_path):
  a = shapes.make_dataset(tmp_path / "a", 5, seed=3, **SMALL)
  b = shapes.make_dataset(tmp_path / "b", 5, seed=3, **SMALL)
  c = shapes.make_dataset(tmp_path / "c", 5, seed=4, **SMALL)
  assert open(a).read() == open(b).read()
  images = [open(tmp_path / d / "images.jsonl").read() for d in ("a", "b")]
  assert images[0] == images[1]
  for x, y in zip(_decoded(tmp_path / "a"), _decoded(tmp_path / "b")):
    np.testing.assert_array_equal(x, y)
  for name in ("videos/00000.mp4", "images/00001.png"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  assert open(a).read() != open(c).read()
  assert not np.array_equal(_decoded(tmp_path / "a")[0], _decoded(tmp_path / "c")[0])


def test_ensure_dataset_reuses_complete_and_rebuilds_incomplete(tmp_path, monkeypatch):
  out = tmp_path / "set"
  manifest = shapes.ensure_dataset(out, num_videos=3, seed=1, **SMALL)
  reference = open(manifest).read()

  calls = []
  real_make = shapes.make_dataset

  def counting_make(*args, **kwargs):
    calls.append(kwargs)
    return real_make(*args, **kwargs)

  monkeypatch.setattr(shapes, "make_dataset", counting_make)
  assert shapes.ensure_dataset(out, num_videos=3, seed=1, **SMALL) == manifest
  assert calls == []

  os.remove(out / "videos" / "00001.mp4")  # A file went missing.
  shapes.ensure_dataset(out, num_videos=3, seed=1, **SMALL)
  assert len(calls) == 1 and (out / "videos" / "00001.mp4").exists()

  new_parameters = {**SMALL, "num_frames": 4}
  shapes.ensure_dataset(out, num_videos=3, seed=1, **new_parameters)
  assert len(calls) == 2 and json.load(open(out / "shapes.json"))["num_frames"] == 4

  # A run killed after two videos leaves no manifest and is not reused.
  real_write = video.write_video
  written = []

  def dying_write(path, frames, fps, **kwargs):
    if len(written) == 2:
      raise KeyboardInterrupt
    written.append(path)
    real_write(path, frames, fps, **kwargs)

  monkeypatch.setattr(video, "write_video", dying_write)
  with pytest.raises(KeyboardInterrupt):
    real_make(out, num_videos=3, seed=1, **SMALL)
  monkeypatch.setattr(video, "write_video", real_write)
  assert not (out / "manifest.jsonl").exists()
  assert shapes.ensure_dataset(out, num_videos=3, seed=1, **SMALL) == manifest
  assert len(calls) == 3 and open(manifest).read() == reference
  assert sorted(os.listdir(out / "videos")) == ["00000.mp4", "00001.mp4", "00002.mp4"]


def test_bad_parameters_are_named(tmp_path):
  with pytest.raises(ValueError, match="even"):
    shapes.make_dataset(tmp_path, 1, seed=0, height=33)
  with pytest.raises(ValueError, match="eval_fraction"):
    shapes.make_dataset(tmp_path, 1, seed=0, eval_fraction=0.9)
  with pytest.raises(ValueError, match="paths"):
    shapes.make_dataset(tmp_path, 1, seed=0, paths="zigzag")
  with pytest.raises(TypeError, match="colour"):
    shapes.ensure_dataset(tmp_path, num_videos=1, seed=0, colour="red")


def test_ensure_dataset_has_make_dataset_defaults():
  make = inspect.signature(shapes.make_dataset).parameters
  ensure = inspect.signature(shapes.ensure_dataset).parameters
  assert {n: p.default for n, p in make.items()} == {n: p.default for n, p in ensure.items()}


def test_command_line_writes_the_data_set(tmp_path):
  out = tmp_path / "cli"
  env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run(
        [sys.executable, "-m", "mgjax.data.shapes", f"--out={out}", "--num_videos=3", "--seed=5",
         "--num_frames=4", "--height=32", "--width=32", "--num_images=1"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out / "videos")) == ["00000.mp4", "00001.mp4", "00002.mp4"]
  assert len(open(out / "manifest.jsonl").readlines()) == 3
  assert "3 videos" in result.stdout and str(out / "manifest.jsonl") in result.stdout
