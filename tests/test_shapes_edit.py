"""Tests for the shapes edit set (mgjax.data.shapes_edit): scenes, edits, splits, files."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from mgjax.data import records, shapes, shapes_edit, shapes_edit_set, shapes_edit_text, video
from mgjax.data.shapes_edit import EDIT_KINDS, Scene

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    num_image_edits=12,
    num_video_edits=8,
    num_real=4,
    num_eval=14,
    num_frames=8,
    height=32,
    width=32,
)
EDITS_PER_KIND = 30


def edit_of(kind, index, seed=3):
  rng = np.random.default_rng([seed, index])
  return shapes_edit.sample_edit_where(rng, kind, 0.5, lambda key: True)


@pytest.fixture(scope="module")
def edits():
  """kind -> EDITS_PER_KIND random edits of that kind."""
  return {kind: [edit_of(kind, i) for i in range(EDITS_PER_KIND)] for kind in EDIT_KINDS}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
  out = tmp_path_factory.mktemp("edit_set")
  manifests = shapes_edit_set.make_dataset(out, seed=5, **TINY)
  return out, {name: shapes.read_jsonl(path) for name, path in manifests.items()}


# ----------------------------------------------------------------------------
# Scenes and rendering.


def test_render_scene_is_render_clip_for_a_lone_object():
  for i in range(12):
    scene = shapes_edit.sample_scene(np.random.default_rng([1, i]), extra_prob=0.0)
    assert scene.extra is None
    for frames, height, width in ((8, 64, 64), (3, 48, 96)):
      expected = shapes.render_clip(scene.main, frames, height, width)
      np.testing.assert_array_equal(
          shapes_edit.render_scene(scene, frames, height, width), expected
      )


def test_extra_object_and_marking_are_painted_where_they_cover():
  for i in range(10):
    scene = shapes_edit.sample_scene(np.random.default_rng([2, i]), extra_prob=1.0)
    frames = shapes_edit.render_scene(scene, 6, 64, 64)  # [T, H, W, 3]
    alone = shapes.render_clip(scene.main, 6, 64, 64)
    extra = shapes_edit.object_coverage(scene, 6, 64, 64, which="extra")  # [T, H, W]
    main = shapes_edit.object_coverage(scene, 6, 64, 64, which="main")
    # Only the corner object's pixels differ from the lone clip; full cover is its colour.
    assert np.array_equal(frames != alone, (frames != alone) & (extra > 0)[..., None])
    assert (frames[extra == 1] == shapes.COLORS[scene.extra.color]).all()
    assert (main * extra).max() == 0, "the objects overlap"
    union = shapes_edit.object_coverage(scene, 6, 64, 64)
    np.testing.assert_array_equal(union, np.maximum(main, extra))
    for which in ("main", "extra"):
      marked = dataclasses.replace(scene, marked=which, marker="black")
      painted = shapes_edit.render_scene(marked, 6, 64, 64)
      cover = shapes_edit.object_coverage(scene, 6, 64, 64, which=which)
      assert (painted[cover == 1] == shapes_edit.MARKERS["black"]).all()
      np.testing.assert_array_equal(painted[cover == 0], frames[cover == 0])


def test_corner_objects_keep_clear_of_every_lane():
  """At 64x64 a gap of >= 2 px between any lane's object box and the corner boxes."""
  side = 64
  half_extra = max(shapes_edit.EXTRA_SIZE_RANGE) / 2
  gaps = []
  for i in range(3000):
    spec = shapes.sample_spec(np.random.default_rng([4, i]), "lanes")
    xy = shapes.centers(spec, 32)  # [T, 2]
    for cx, cy in shapes_edit.CORNER_CENTERS.values():
      apart_x = np.abs(xy[:, 0] - cx) - spec.size / 2 - half_extra
      apart_y = np.abs(xy[:, 1] - cy) - spec.size / 2 - half_extra
      gaps.append(np.maximum(apart_x, apart_y).min() * side)
  assert min(gaps) >= 2.0
  for cx, cy in shapes_edit.CORNER_CENTERS.values():  # ... and the frame's edges
    assert min(cx, cy, 1 - cx, 1 - cy) - half_extra >= 2.0 / side


def test_scene_dict_round_trip_and_validation(edits):
  for kind_edits in edits.values():
    for edit in kind_edits[:5]:
      for scene in (edit.source, edit.target):
        text = json.dumps(shapes_edit.scene_to_dict(scene))
        assert shapes_edit.scene_from_dict(json.loads(text)) == scene
  scene = edits["remove"][0].source
  with pytest.raises(ValueError, match="differ in colour"):
    dataclasses.replace(scene, extra=dataclasses.replace(scene.extra, color=scene.main.color))
  with pytest.raises(ValueError, match="marker"):
    dataclasses.replace(scene, marked="main")
  with pytest.raises(ValueError, match="extra object"):
    Scene(main=scene.main, marked="extra", marker="white")
  with pytest.raises(ValueError, match="corner"):
    shapes_edit.Extra(shape="circle", color="red", size=0.2, corner="top left")


def test_scene_caption():
  scene = shapes_edit.sample_scene(np.random.default_rng(0), extra_prob=0.0)
  assert shapes_edit_text.scene_caption(scene) == shapes.caption(scene.main)
  marked = dataclasses.replace(scene, marked="main", marker="white")
  text = shapes_edit_text.scene_caption(marked)
  assert text.endswith(f"with the {scene.main.color} {scene.main.shape} marked in white")
  assert shapes.parse_caption(text) == scene.main.attributes
  two = shapes_edit.sample_scene(np.random.default_rng(3), extra_prob=1.0)
  extra = two.extra
  assert f"{extra.color} {extra.shape}" in shapes_edit_text.scene_caption(two)
  assert f"{extra.corner} corner" in shapes_edit_text.scene_caption(two)


# ----------------------------------------------------------------------------
# Edits.


def test_every_edit_changes_exactly_its_attribute(edits):
  for kind, kind_edits in edits.items():
    for edit in kind_edits:
      source, target = edit.source.attributes, edit.target.attributes
      assert edit.attribute == shapes_edit.ATTRIBUTE_OF[kind]
      assert source[edit.attribute] == edit.before != edit.after == target[edit.attribute]
      assert {k: v for k, v in source.items() if k != edit.attribute} == {
          k: v for k, v in target.items() if k != edit.attribute
      }
      changed = {
          f.name
          for f in dataclasses.fields(shapes.ClipSpec)
          if getattr(edit.source.main, f.name) != getattr(edit.target.main, f.name)
      }
      allowed = {"motion": {"motion", "start", "velocity"}, "color": {"color"}}.get(kind, set())
      allowed |= {kind} & {"shape", "background"}
      assert changed <= allowed, (kind, changed)
      if edit.target.extra is not None:  # two objects never share a colour
        assert edit.target.extra.color != edit.target.main.color
      json.dumps([edit.before, edit.after])


def test_instructions_name_the_new_value_and_an_unambiguous_object(edits):
  wordings = set()
  for kind, kind_edits in edits.items():
    for edit in kind_edits:
      text = edit.instruction
      wordings.add(text.split(" the ")[0])
      if kind in ("color", "shape", "background"):
        assert edit.after in text.split(), text
      elif kind == "add":
        assert all(edit.after[k] in text for k in ("color", "shape", "corner")), text
      elif kind == "motion":
        verb, does, _ = shapes_edit_text.MOTION_VERBS[edit.after]
        assert verb in text or does in text, text
      elif kind == "segment":
        assert edit.after["marker"] in text.split(), text
      # The object is named by its colour, a shape the other object lacks, or its corner.
      if kind in ("color", "shape", "motion", "remove", "segment"):
        which = {"remove": "extra"}.get(kind, "main")
        which = edit.after["object"] if kind == "segment" else which
        color, shape = edit.source.describe(which)
        other = edit.source.extra if which == "main" else edit.source.main
        unique_shape = other is None or other.shape != shape
        by_place = which == "extra" and f"{shape} in the {edit.source.extra.corner}" in text
        assert color in text.split() or (unique_shape and shape in text.split()) or by_place
  assert len(wordings) >= 15  # several templates per kind


def test_sample_edit_returns_none_where_the_kind_does_not_apply(edits):
  rng = np.random.default_rng(0)
  with_extra = edits["remove"][0].source
  without = edits["add"][0].source
  assert shapes_edit.sample_edit(rng, "add", with_extra) is None
  assert shapes_edit.sample_edit(rng, "remove", without) is None
  marked = edits["segment"][0].target
  assert all(shapes_edit.sample_edit(rng, k, marked) is None for k in EDIT_KINDS)
  with pytest.raises(ValueError, match="kind"):
    shapes_edit.sample_edit(rng, "blur", without)


def test_inverse_instruction_undoes_the_edit(edits):
  for kind, kind_edits in edits.items():
    for edit in kind_edits[:10]:
      if kind == "segment":
        with pytest.raises(ValueError, match="no inverse"):
          shapes_edit.inverse_instruction(edit)
        continue
      inverse = shapes_edit.inverse_edit(edit, np.random.default_rng(0))
      assert inverse.source == edit.target and inverse.target == edit.source
      assert inverse.kind == {"add": "remove", "remove": "add"}.get(kind, kind)
      # The inverse's wording asks for the old value, and applying that value to the
      # target gives back the source (motion: a lane of the old motion).
      text = shapes_edit.inverse_instruction(edit)
      assert text == shapes_edit_text.instruction(
          inverse.kind, edit.target, edit.after, edit.before
      )
      back = shapes_edit.apply_edit(
          edit.target, inverse.kind, inverse.after, np.random.default_rng(0)
      )
      assert back.attributes == edit.source.attributes
      if kind in ("color", "shape", "background"):
        assert back == edit.source and edit.before in text.split()
      elif kind == "motion":
        assert shapes_edit_text.MOTION_VERBS[edit.before][0] in text
      elif kind == "add":
        assert edit.after["color"] in text or edit.after["shape"] in text
      else:  # remove: add the old object back, where it was
        assert all(edit.before[k] in text for k in ("color", "shape", "corner"))


def test_heldout_edits_keep_every_value_in_training():
  heldout = shapes_edit.heldout_edits(0)
  assert heldout == shapes_edit.heldout_edits(0) != shapes_edit.heldout_edits(1)
  for kind, (objects, values) in shapes_edit.KEY_SPACES.items():
    mine = {k for k in heldout if k[0] == kind}
    total = len(objects) * len(values)
    assert max(1, round(0.15 * total)) == len(mine), kind
    train = {(kind, o, v) for o in objects for v in values} - mine
    assert {k[1] for k in train} == set(objects), kind
    assert {k[2] for k in train} == set(values), kind
  edit = edit_of("color", 0)
  assert shapes_edit.is_heldout(edit, heldout) == (shapes_edit.edit_key(edit) in heldout)


def test_animate_pair_moves_both_stills_alike():
  edit = edit_of("color", 1)
  still = shapes_edit.still_scene(edit.source)
  target = shapes_edit.apply_edit(still, "color", edit.after)
  source_image = shapes_edit.render_scene(still, 1, 64, 64)[0]
  target_image = shapes_edit.render_scene(target, 1, 64, 64)[0]
  source_clip, target_clip = shapes_edit.animate_pair(
      source_image, target_image, np.random.default_rng(7), 16
  )
  assert source_clip.shape == (16, 64, 64, 3) and source_clip.dtype == np.uint8
  np.testing.assert_array_equal(source_clip[0], source_image)
  np.testing.assert_array_equal(target_clip[0], target_image)
  assert np.abs(source_clip[-1].astype(int) - source_image).mean() > 3  # it moves
  # Differences stay where the edited object went: the same motion moves both.
  edited = ndimage.binary_dilation((source_image != target_image).any(-1), iterations=1)
  mask = np.repeat(edited[..., None] * np.uint8(255), 3, axis=-1)
  moved, _ = shapes_edit.animate_pair(mask, mask, np.random.default_rng(7), 16)
  differs = (source_clip != target_clip).any(-1)  # [T, H, W]
  assert differs.any() and not (differs & (moved[..., 0] == 0)).any()


# ----------------------------------------------------------------------------
# Files.


def test_make_dataset_writes_the_documented_records(tiny_set):
  out, manifests = tiny_set
  assert [len(manifests[m]) for m in shapes_edit_set.MANIFESTS] == [12, 8, 4, 14]
  heldout = shapes_edit.heldout_edits(5)
  edit_fields = {
      "source",
      "caption",
      "task",
      "split",
      "source_scene",
      "target_scene",
      "edit",
      "target_caption",
      "inverse",
      "key",
  }
  for name in (
      shapes_edit_set.IMAGE_EDITS,
      shapes_edit_set.VIDEO_EDITS,
      shapes_edit_set.EVAL_EDITS,
  ):
    for record in manifests[name]:
      assert edit_fields <= set(record)
      assert record["task"] == record["edit"]["kind"] in EDIT_KINDS
      assert (tuple(record["key"]) in heldout) == (name == shapes_edit_set.EVAL_EDITS)
      assert record["split"] == ("eval" if name == shapes_edit_set.EVAL_EDITS else "train")
      target = shapes_edit.scene_from_dict(record["target_scene"])
      assert record["target_caption"] == shapes_edit_text.scene_caption(target)
      assert (record["inverse"] is None) == (record["task"] == "segment")
  images = manifests[shapes_edit_set.IMAGE_EDITS]
  assert {r["task"] for r in images} == set(shapes_edit.IMAGE_KINDS)
  for record in images[:3]:
    image = video.read_image(os.path.join(out, record["image"]))
    scene = shapes_edit.scene_from_dict(record["target_scene"])
    np.testing.assert_array_equal(image, shapes_edit.render_scene(scene, 1, 32, 32)[0])
    assert scene.main.motion == "still"
  clips = manifests[shapes_edit_set.VIDEO_EDITS]
  assert {r["animated"] for r in clips} == {True, False}
  assert all(r["task"] in ("segment", "motion") for r in clips if not r["animated"])
  evals = manifests[shapes_edit_set.EVAL_EDITS]
  assert {r["task"] for r in evals} == set(EDIT_KINDS)  # 14 = 2 per kind
  real = manifests[shapes_edit_set.REAL]
  assert all(r["task"] == "generate" and r["split"] == "train" for r in real)
  assert real[0]["caption"] == shapes_edit_text.scene_caption(
      shapes_edit.scene_from_dict(real[0]["scene"])
  )
  frames, _, _ = video.read_video(os.path.join(out, evals[0]["source"]))
  assert frames.shape == (8, 32, 32, 3)
  # Paths are relative to the manifests' folder, as read_manifest resolves them.
  loaded = records.read_manifest(os.path.join(out, shapes_edit_set.EVAL_EDITS)).records
  assert os.path.isfile(loaded[0]["video"])
  assert os.path.isfile(os.path.join(out, loaded[0]["source"]))


def test_same_seed_same_files(tiny_set, tmp_path):
  out, manifests = tiny_set
  again = shapes_edit_set.make_dataset(tmp_path, seed=5, **TINY)
  for name, path in again.items():
    with open(path) as f:
      assert [json.loads(line) for line in f] == manifests[name]
  digest = lambda root, rel: hashlib.sha256(open(os.path.join(root, rel), "rb").read()).digest()
  for record in manifests[shapes_edit_set.VIDEO_EDITS][:2]:
    assert digest(out, record["video"]) == digest(tmp_path, record["video"])
  other = shapes_edit_set.make_dataset(tmp_path / "other", seed=6, **{**TINY, "num_image_edits": 4})
  assert shapes.read_jsonl(other[shapes_edit_set.REAL]) != manifests[shapes_edit_set.REAL]


def test_ensure_dataset_reuses_a_finished_set(tiny_set, monkeypatch, tmp_path):
  out, _ = tiny_set
  built = []
  real_make = shapes_edit_set.make_dataset
  monkeypatch.setattr(
      shapes_edit_set, "make_dataset", lambda *a, **k: built.append(1) or real_make(*a, **k)
  )
  shapes_edit_set.ensure_dataset(out, seed=5, **TINY)
  assert built == []
  small = {**TINY, "num_image_edits": 2, "num_video_edits": 1, "num_real": 1, "num_eval": 7}
  shapes_edit_set.ensure_dataset(tmp_path, seed=5, **small)
  os.remove(os.path.join(tmp_path, shapes_edit_set.REAL))  # cut short
  shapes_edit_set.ensure_dataset(tmp_path, seed=5, **small)
  assert built == [1, 1]
  with pytest.raises(ValueError, match="even"):
    shapes_edit_set.ensure_dataset(tmp_path, **{**small, "height": 33})


def test_command_line(tmp_path):
  args = ["--num_image_edits=2", "--num_video_edits=2", "--num_real=1", "--num_eval=7"]
  args += ["--num_frames=4", "--height=32", "--width=32"]
  result = subprocess.run(
      [sys.executable, "-m", "mgjax.data.shapes_edit_set", f"--out={tmp_path}", *args],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "wrote 2 in image_edits.jsonl" in result.stdout
  assert len(shapes.read_jsonl(os.path.join(tmp_path, shapes_edit_set.EVAL_EDITS))) == 7
