"""PT2V's parts that need no training: the identity shapes and their checker, reference
images, cross-pairing and guidance over two conditions. The recipe itself (stages I ->
III through the trainer, resume, evaluation, sampling) is tested in tests/test_t2v.py,
on the text-to-video tests' TAE."""

from __future__ import annotations

import io
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mgjax import configs, flow
from mgjax.data import shapes, shapes_identity, video
from mgjax.data.shapes_identity import HELDOUT_IDENTITIES, IDENTITIES
from mgjax.eval import identity as identity_eval
from mgjax.tasks.pt2v import cross_pairs, fit_square, load_reference


def subject_clip(identity: str, seed: int, num_frames=8, size=64) -> np.ndarray:
  spec = shapes_identity.sample_subject_spec(np.random.default_rng(seed), "lanes")
  return shapes_identity.render_subject(spec, identity, num_frames, size, size)


def test_the_checker_reads_every_identity_in_every_frame():
  for i, identity in enumerate(IDENTITIES):
    assert identity_eval.read_video(subject_clip(identity, i)) == [identity] * 8


def test_the_checker_survives_h264_and_reads_no_identity_without_an_accent(tmp_path):
  clip = subject_clip("dark135", 3, num_frames=16)
  video.write_video(str(tmp_path / "c.mp4"), clip, 16)
  frames, _, _ = video.read_video(str(tmp_path / "c.mp4"))
  figures = identity_eval.score_identity(identity_eval.read_video(frames), "dark135")
  assert figures["identity_correct"] == 1.0 and figures["identity_frames"] >= 0.9
  plain = shapes.render_clip(shapes.sample_spec(np.random.default_rng(0), "lanes"), 4, 64, 64)
  assert identity_eval.read_video(plain) == [None] * 4


def test_identity_figures_of_per_frame_readings():
  readings = ["light000", "light000", None, "dark090", "light000"]
  figures = identity_eval.score_identity(readings, "light000")
  assert figures["identity_correct"] == 1.0  # the most common reading
  assert figures["identity_best_frame"] == 1.0 and figures["identity_worst_frame"] == 0.0
  assert figures["identity_frames"] == pytest.approx(0.6)
  assert figures["identity_consistency"] == pytest.approx(0.25)  # 1 of 4 adjacent pairs
  assert identity_eval.score_identity([None, None], "light000")["identity_correct"] == 0.0
  with pytest.raises(ValueError, match="Unknown identity 'blue'"):
    identity_eval.score_identity(readings, "blue")


def test_the_identity_set_holds_out_subjects_and_writes_their_references(tmp_path):
  manifest = shapes_identity.ensure_dataset(
      tmp_path, num_videos=20, seed=0, num_frames=4, height=32, width=32, reference_size=24
  )
  records = shapes.read_jsonl(manifest)
  assert all((r["split"] == "eval") == (r["subject"] in HELDOUT_IDENTITIES) for r in records)
  assert {r["split"] for r in records} == {"train", "eval"}
  assert {r["subject"] for r in records} <= set(shapes_identity.SUBJECTS)
  for r in records:
    reference = video.read_image(os.path.join(tmp_path, r["reference"]))
    assert reference.shape == (24, 24, 3)
    assert tuple(reference[0, 0]) == shapes_identity.MASK_GREY  # the background masked
    if r["subject"] in IDENTITIES:  # the subject, alone, as the checker reads it
      assert identity_eval.read_frame(reference) == r["subject"]
  mtime = os.path.getmtime(manifest)
  again = shapes_identity.ensure_dataset(
      tmp_path, num_videos=20, seed=0, num_frames=4, height=32, width=32, reference_size=24
  )
  assert again == manifest and os.path.getmtime(manifest) == mtime  # found, not remade


def test_cross_pairs_take_another_clip_of_the_same_subject():
  records = [
      {"video": f"{i}.mp4", "subject": s, "reference": f"ref{i}.png"}
      for i, s in enumerate(["a", "a", "b", "a", "b", "c"])
  ]
  paired, alone = cross_pairs(records, seed=0)
  assert alone == 1 and len(paired) == 5  # "c" has no other clip
  by_ref = {r["reference"]: r for r in records}
  for r in paired:
    assert r["reference"] != f"ref{r['video'][:-4]}.png"
    assert by_ref[r["reference"]]["subject"] == r["subject"]
  assert cross_pairs(records, seed=0) == (paired, alone)  # deterministic in the seed
  with pytest.raises(ValueError, match='"subject" and "reference"'):
    cross_pairs([{"video": "x.mp4", "caption": "c"}], seed=0)


def test_reference_images_of_any_mode_size_and_orientation(tmp_path):
  # Grey, RGBA (transparent parts become the mask grey) and a non-square image.
  Image.fromarray(np.full((20, 40), 200, np.uint8)).save(tmp_path / "grey.png")
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[4:12, 4:12] = (220, 40, 40, 255)
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  grey = load_reference(str(tmp_path / "grey.png"), 16)
  assert grey.shape == (16, 16, 3) and np.all(grey[8, :, 0] == 200)
  assert np.all(grey[0, 8] == shapes_identity.MASK_GREY)  # padded above: 20 x 40 letterboxed
  red = load_reference(str(tmp_path / "rgba.png"), 16)
  assert tuple(red[8, 8]) == (220, 40, 40) and tuple(red[0, 0]) == shapes_identity.MASK_GREY
  # A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view).
  tall = np.zeros((30, 10, 3), np.uint8)
  tall[:10] = 255  # white top of the upright image
  stored = Image.fromarray(tall).transpose(Image.Transpose.ROTATE_90)  # 10 x 30, on its side
  exif = Image.Exif()
  exif[0x0112] = 6
  buffer = io.BytesIO()
  stored.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
  (tmp_path / "sideways.jpg").write_bytes(buffer.getvalue())
  upright = video.read_image(str(tmp_path / "sideways.jpg"))
  assert upright.shape == (30, 10, 3) and upright[:8].mean() > 200 and upright[12:].mean() < 50
  assert fit_square(upright, 30).shape == (30, 30, 3)


def test_nested_guidance_pushes_along_each_condition_with_its_own_scale():
  # v(x, k) = x + k^2: the reference adds 1, the text 3 on top of it.
  model_fn = lambda x, t, num_kept, shared: x + num_kept[:, None].astype(x.dtype) ** 2 + shared
  x, t = jnp.ones((3, 2)), jnp.zeros((3,))
  guided = flow.nested_cfg_velocity_fn(model_fn, (2.0, 5.0), num_batched_args=0)
  np.testing.assert_allclose(guided(x, t, 10.0), 1 + 10 + 2 * 1 + 5 * 3, rtol=1e-6)
  conditional = flow.nested_cfg_velocity_fn(model_fn, (1.0, 1.0))
  np.testing.assert_allclose(conditional(x, t, 0.0), 1 + 4)  # both conditions, one pass
  with pytest.raises(ValueError, match="scales must be Python numbers"):
    flow.nested_cfg_velocity_fn(model_fn, ())


PT2V_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "pt2v.py")


def test_the_stages_differ_as_the_paper_says():
  stages = {s: configs.load_config(f"{PT2V_CONFIG}:{s}") for s in ("stage1", "stage2", "stage3")}
  frames = lambda c: [b[1] for b in c.data.buckets if b[1] > 1]  # noqa: E731
  assert frames(stages["stage1"]) == [f // 2 for f in frames(stages["stage2"])]  # short clips
  assert [s.pt2v.pairing for s in stages.values()] == ["paired", "paired", "cross"]
  assert [s.pt2v.encoder.trainable for s in stages.values()] == [False, False, True]
  big = configs.load_config(f"{PT2V_CONFIG}:stage3_30b")
  assert big.model.num_layers == 48 and not big.pt2v.encoder.model  # MetaCLIP from a path
  with pytest.raises(ValueError, match="Unknown PT2V stage 'stage4'"):
    configs.load_config(f"{PT2V_CONFIG}:stage4")


def test_subjects_on_paths_anywhere_stay_in_frame():
  for seed in range(40):
    spec = shapes_identity.sample_subject_spec(np.random.default_rng(seed), "random")
    xy = shapes.centers(spec, 16)
    assert np.all(xy >= spec.size / 2 - 1e-6) and np.all(xy <= 1 - spec.size / 2 + 1e-6)
