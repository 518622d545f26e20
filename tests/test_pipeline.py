"""The Grain pipeline: determinism, exact resume, per-process rows, bad input counted
by kind (and the stop above the threshold), and one shape per bucketed batch."""

import json
import os

import numpy as np
import pytest

from mgjax.data.buckets import buckets_from_config, group_by_bucket
from mgjax.data.examples import ExampleSpec, LoadExample
from mgjax.data.pipeline import DataIterator, DataQualityError, LoaderOptions, Stream
from mgjax.data.records import read_manifest
from mgjax.data.video import write_image, write_video


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
      path.write_bytes(good[: len(good) // 3])
    lines.append({"video": path.name, "caption": kind, "split": "train"})  # missing: not written
  (root / "manifest.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return str(root / "manifest.jsonl")


SPEC = ExampleSpec(num_frames=8, height=16, width=16)


def iterator(records, batch_size=4, seed=0, rows=None, max_skip_fraction=0.5, **options):
  stream = Stream("clips", len(records.records), LoadExample(records.records, SPEC), batch_size)
  return DataIterator(
      [stream],
      LoaderOptions(seed=seed, max_skip_fraction=max_skip_fraction, **options),
      finish=lambda batch: batch,
      rows_of=rows or (lambda b: slice(0, b)),
      skipped_records=records.skipped,
      num_records=len(records.records) + sum(records.skipped.values()),
  )


def take(it, n):
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_a_restored_iterator_continues_identically(tmp_path):
  records = read_manifest(make_manifest(tmp_path, 6))
  a, b = iterator(records), iterator(records, num_threads=1)
  first = take(a, 4)
  for x, y in zip(first, take(b, 4)):
    np.testing.assert_array_equal(x["pixels"], y["pixels"])
    assert x["caption"] == y["caption"]
  assert first[0]["pixels"].shape == (4, 8, 16, 16, 3) and first[0]["pixels"].dtype == np.uint8
  assert first[0]["caption"][0].startswith("FPS-12 clip ")
  other_seed = take(iterator(records, seed=1), 1)[0]
  assert not np.array_equal(other_seed["pixels"], first[0]["pixels"])

  state = json.loads(json.dumps(a.get_state()))  # what a checkpoint holds
  expected = take(a, 3)
  restored = iterator(records, num_threads=2)
  restored.set_state(state)
  for x, y in zip(expected, take(restored, 3)):
    np.testing.assert_array_equal(x["pixels"], y["pixels"])
  # A fresh iterator started at that batch index sees the same too.
  started = DataIterator(
      [Stream("clips", 6, LoadExample(records.records, SPEC), 4)],
      LoaderOptions(seed=0),
      lambda b: b,
      start=4,
  )
  np.testing.assert_array_equal(next(started)["pixels"], expected[0]["pixels"])
  for it in (a, b, restored, started):
    it.close()


def test_two_processes_read_disjoint_rows_that_cover_the_data(tmp_path):
  records = read_manifest(make_manifest(tmp_path, 8))
  whole = iterator(records)
  halves = [
      iterator(records, rows=lambda b, p=p: slice(p * b // 2, (p + 1) * b // 2)) for p in range(2)
  ]
  seen = [[], []]
  for _ in range(2):  # one epoch: 8 examples in two batches of 4
    full = next(whole)
    parts = [next(h) for h in halves]
    for p, part in enumerate(parts):
      assert len(part["caption"]) == 2
      seen[p] += part["caption"]
    # Together the processes make exactly the single-process global batch.
    np.testing.assert_array_equal(np.concatenate([q["pixels"] for q in parts]), full["pixels"])
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == {f"FPS-12 clip {i}" for i in range(8)}


def test_bad_input_of_every_kind_is_skipped_counted_and_reported(tmp_path):
  kinds = ("missing", "empty", "truncated", "undecodable")
  manifest = make_manifest(tmp_path, 16, kinds)
  with open(manifest, "a") as f:  # records that are not usable at all
    f.write('{"video": "good_0.mp4", "caption": ""}\n')
    f.write('{"video": 17, "caption": "a number for a path"}\n')
    f.write('{"video": "good_1.mp4", "caption": "x", "fps": "fast"}\n')
    f.write('{"caption": "no media"}\n')
    f.write("not json\n")
  write_video(tmp_path / "short.mp4", np.zeros((3, 32, 48, 3), np.uint8), fps=12)
  with open(manifest, "a") as f:
    f.write('{"video": "short.mp4", "caption": "three frames"}\n')
  records = read_manifest(manifest)
  assert dict(records.skipped) == {"empty_caption": 1, "bad_field": 2, "no_media": 1, "bad_json": 1}
  it = iterator(records, max_skip_fraction=0.5)
  for batch in take(it, 10):  # two epochs of the 21 readable-looking records
    assert batch["pixels"].shape == (4, 8, 16, 16, 3)
    assert all(c.startswith("FPS-12 clip ") for c in batch["caption"])
  metrics = it.metrics()
  for kind in (*kinds, "too_short"):
    assert metrics[f"data/skipped_{kind}"] == 1, kind
  assert metrics["data/skipped_bad_field"] == 2 and metrics["data/skipped_bad_json"] == 1
  assert 0.1 < metrics["data/skipped_fraction"] < 0.5
  it.close()


def test_too_much_bad_input_stops_with_a_clear_error(tmp_path):
  records = read_manifest(make_manifest(tmp_path, 8, ("missing", "empty", "undecodable")))
  it = iterator(records, max_skip_fraction=0.1)
  with pytest.raises(DataQualityError, match=r"max_skip_fraction=0.1.*raise"):
    take(it, 10)
  (tmp_path / "m2.jsonl").write_text(
      '{"video": 1}\n' * 3 + '{"video": "good_0.mp4", ' '"caption": "ok"}\n'
  )
  with pytest.raises(DataQualityError, match="3 of 4 records are unusable"):
    iterator(read_manifest(str(tmp_path / "m2.jsonl")))


def test_missing_manifest_explains_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="data.name='shapes'"):
    read_manifest(str(tmp_path / "nope.jsonl"))


def test_buckets_give_one_shape_per_batch_and_keep_aspect_ratios(tmp_path):
  """A disc drawn in each source file stays round in every bucket's examples."""
  lines = []
  for i, (h, w) in enumerate([(64, 64), (72, 128), (128, 72), (60, 110), (90, 90)]):
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
    frame = np.where(disc[..., None], 255, 0).astype(np.uint8).repeat(3, -1)
    if i == 4:
      write_image(tmp_path / f"still_{i}.png", frame)
      lines.append({"image": f"still_{i}.png", "caption": f"still {i}"})
    else:
      write_video(tmp_path / f"clip_{i}.mp4", np.repeat(frame[None], 20, 0), fps=16)
      lines.append({"video": f"clip_{i}.mp4", "caption": f"clip {i}"})
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  buckets = buckets_from_config(
      [("img", 1, 32, 32, 2), ("sq", 8, 32, 32, 2), ("wide", 8, 32, 56, 2), ("tall", 8, 56, 32, 2)]
  )
  groups, skipped = group_by_bucket(
      read_manifest(str(tmp_path / "m.jsonl")).records, buckets, fps=16.0
  )
  assert {k: len(v) for k, v in groups.items()} == {"img": 1, "sq": 1, "wide": 2, "tall": 1}
  assert not skipped
  for bucket in buckets:
    spec = ExampleSpec(
        bucket.num_frames,
        bucket.height,
        bucket.width,
        fps=16.0,
        scale_to=(bucket.height, bucket.width),
    )
    load = LoadExample(groups[bucket.name], spec)
    it = DataIterator(
        [Stream(bucket.name, len(groups[bucket.name]), load, 2)], LoaderOptions(), lambda b: b
    )
    for batch in take(it, 2):
      assert batch["pixels"].shape == (2, bucket.num_frames, bucket.height, bucket.width, 3)
      disc = batch["pixels"][:, 0, ..., 0] > 127  # [B, H, W]
      for d in disc:
        rows, cols = np.nonzero(d)
        extent_h, extent_w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert abs(extent_h / extent_w - 1) < 0.15, (bucket.name, extent_h, extent_w)
    it.close()
