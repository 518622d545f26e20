"""The clip loader: deterministic batches, and bad files skipped and counted."""

import json
import os

import numpy as np
import pytest

from mgjax.data.clips import ClipLoader, ClipSpec, read_manifest
from mgjax.data.video import write_video


def make_manifest(root, num_good, bad_kinds=()):
  rng = np.random.default_rng(0)
  lines = []
  for i in range(num_good):
    frames = np.repeat(rng.integers(0, 255, (1, 1, 1, 3), dtype=np.uint8), 24, 0)
    frames = np.broadcast_to(frames, (24, 32, 48, 3)).copy()
    frames[:, :, :8] = np.arange(24, dtype=np.uint8)[:, None, None, None] * 10
    write_video(root / f"good_{i}.mp4", frames, fps=12)
    lines.append({"video": f"good_{i}.mp4", "caption": f"clip {i}", "split": "train"})
  for kind in bad_kinds:
    path = root / f"bad_{kind}.mp4"
    if kind == "empty":
      path.write_bytes(b"")
    elif kind == "undecodable":
      path.write_bytes(os.urandom(4000))
    elif kind == "truncated":
      good = (root / "good_0.mp4").read_bytes()
      path.write_bytes(good[:len(good) // 3])
    lines.append({"video": path.name, "caption": kind, "split": "train"})  # missing: not written
  (root / "manifest.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return str(root / "manifest.jsonl")


SPEC = ClipSpec(num_frames=8, height=16, width=16)


def test_batches_are_deterministic_by_step(tmp_path):
  records = read_manifest(make_manifest(tmp_path, 5))
  a = ClipLoader(records, SPEC, batch_size=3, seed=1)
  b = ClipLoader(records, SPEC, batch_size=3, seed=1)
  batch = a.batch(4)["video"]
  assert batch.shape == (3, 8, 16, 16, 3) and batch.dtype == np.uint8
  np.testing.assert_array_equal(batch, b.batch(4)["video"])
  assert not np.array_equal(batch, a.batch(5)["video"])
  # iterate() yields the same batches as batch(step), from any start.
  iterator = b.iterate(start_step=4)
  np.testing.assert_array_equal(next(iterator)["video"], batch)
  np.testing.assert_array_equal(next(iterator)["video"], a.batch(5)["video"])


def test_bad_files_are_skipped_and_counted_by_kind(tmp_path):
  kinds = ("missing", "empty", "truncated", "undecodable")
  records = read_manifest(make_manifest(tmp_path, 12, kinds))
  loader = ClipLoader(records, SPEC, batch_size=4, seed=0, max_skip_fraction=0.5)
  for step in range(8):  # two passes over the 16 records
    assert loader.batch(step)["video"].shape == (4, 8, 16, 16, 3)
  assert dict(loader.skipped) == {kind: 1 for kind in kinds}


def test_too_many_bad_files_stop_with_a_clear_error(tmp_path):
  records = read_manifest(make_manifest(tmp_path, 8, ("missing", "empty", "undecodable")))
  loader = ClipLoader(records, SPEC, batch_size=11, seed=0, max_skip_fraction=0.1)
  with pytest.raises(RuntimeError, match="max_skip_fraction"):
    loader.batch(0)


def test_missing_manifest_explains_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="mgjax.data.shapes"):
    read_manifest(str(tmp_path / "nope.jsonl"))
