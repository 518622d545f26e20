"""Tests for mgjax.data.latent_shards: re-encoding never loses finished latents."""

import json
import os

import numpy as np
import pytest

from mgjax.data import latent_shards
from mgjax.data.buckets import Bucket
from mgjax.data.latent_shards import LatentShards

SHARD_SIZE = 2
IMAGE = Bucket("image", 1, 8, 8, 2)
SMALL = Bucket("small", 1, 4, 4, 2)
FINGERPRINT_A = {"tae": "A", "buckets": [["image"], ["small"]]}
FINGERPRINT_B = {"tae": "B", "buckets": [["image"]]}
OFFSET = {"A": 0.0, "B": 1000.0}  # what each "TAE" adds: tells the sets apart


def records(num=5):
  """Decoded stills whose pixel level is 10 * i."""
  return [
      {"pixels": np.full((8, 8, 3), 10 * i, np.uint8), "caption": f"clip {i}"} for i in range(num)
  ]


class Encoder:
  """A stand-in TAE: latent [B, 1, 2, 2, 4] = mean pixel + its offset; counts its calls
  and raises on call number `fail_on` (1-based) to stand for a killed run."""

  def __init__(self, name, fail_on=None):
    self.offset, self.fail_on, self.calls = OFFSET[name], fail_on, 0

  def __call__(self, pixels, arrays):  # [B, 1, H, W, 3], the examples' own arrays
    del arrays
    self.calls += 1
    if self.calls == self.fail_on:
      raise KeyboardInterrupt("killed")
    mean = pixels.reshape(len(pixels), -1).mean(1).astype(np.float32)
    latent = mean[:, None, None, None, None] + self.offset
    return {"latent": np.broadcast_to(latent, (len(pixels), 1, 2, 2, 4))}


def write(root, bucket, encode, **kwargs):
  spec = latent_shards.bucket_spec(bucket, None, 1.0, False)
  latent_shards.write_bucket(
      root,
      "train",
      bucket,
      records(),
      spec,
      encode,
      shard_size=SHARD_SIZE,
      batch_size=SHARD_SIZE,
      num_threads=1,
      **kwargs,
  )


def read(root, bucket="image"):
  """[(latent value, caption)] of a bucket's examples, in shard order."""
  shards = LatentShards(root, "train", bucket)
  return [(float(shards[i]["latent"].flat[0]), shards[i]["caption"]) for i in range(len(shards))]


def expected(name):
  return [(10.0 * i + OFFSET[name], f"clip {i}") for i in range(5)]


def set_a(root):
  """A finished set made by fingerprint A: two buckets of 3 shards."""
  assert not latent_shards.check_fingerprint(root, FINGERPRINT_A)
  assert os.listdir(root) == [latent_shards.FINGERPRINT_FILE]  # empty: claimed in place
  for bucket in (IMAGE, SMALL):
    write(root, bucket, Encoder("A"))
  # What the caller keeps beside the buckets (t2v's records_skipped.json).
  with open(os.path.join(root, "train", "records_skipped.json"), "w") as f:
    json.dump({"skipped": {}, "records": 5}, f)
  assert read(root) == expected("A") and len(read(root, "small")) == 5
  return {
      os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
      for d, _, files in os.walk(os.path.join(root, "train"))
      for f in files
  }


def test_interrupted_reencode_keeps_old_shards_then_resumes_and_swaps(tmp_path):
  root = str(tmp_path / "latents")
  files_a = set_a(root)

  # Re-encoding with B is killed after its first shard.
  assert not latent_shards.check_fingerprint(root, FINGERPRINT_B)
  killed = Encoder("B", fail_on=2)
  with pytest.raises(KeyboardInterrupt):
    write(root, IMAGE, killed)
  assert killed.calls == 2
  # Every file of A is still there, untouched, and A is what readers get.
  for path, mtime in files_a.items():
    assert os.path.getmtime(path) == mtime, path
  assert read(root) == expected("A") and len(read(root, "small")) == 5
  with open(os.path.join(root, latent_shards.FINGERPRINT_FILE)) as f:
    assert json.load(f) == FINGERPRINT_A
  assert not latent_shards.commit_staged(root)

  # The rerun resumes the staged shard: 2 of 3 shards left, one encode call each.
  assert not latent_shards.check_fingerprint(root, FINGERPRINT_B)
  assert latent_shards.is_claimed(root, FINGERPRINT_B)
  assert not latent_shards.is_claimed(root, FINGERPRINT_A)
  rerun = Encoder("B")
  write(root, IMAGE, rerun)
  assert rerun.calls == 2
  # Only B is read now; A's bucket that B lacks is gone, the caller's file stays.
  assert read(root) == expected("B")
  assert read(root, "small") == []
  assert os.path.exists(os.path.join(root, "train", "records_skipped.json"))
  with open(os.path.join(root, latent_shards.FINGERPRINT_FILE)) as f:
    assert json.load(f) == FINGERPRINT_B
  assert sorted(os.listdir(root)) == [latent_shards.FINGERPRINT_FILE, "train"]
  assert latent_shards.check_fingerprint(root, FINGERPRINT_B)
  again = Encoder("B")
  write(root, IMAGE, again)  # in place now: nothing left to do
  assert again.calls == 0 and read(root) == expected("B")


def test_going_back_to_the_old_fingerprint_keeps_both(tmp_path):
  """Pointed at the wrong TAE (B), the user goes back to A: A is still complete;
  switching to B again later resumes B's staged work."""
  root = str(tmp_path / "latents")
  set_a(root)
  latent_shards.check_fingerprint(root, FINGERPRINT_B)
  with pytest.raises(KeyboardInterrupt):
    write(root, IMAGE, Encoder("B", fail_on=2))

  assert latent_shards.check_fingerprint(root, FINGERPRINT_A)
  redo_a = Encoder("A")
  write(root, IMAGE, redo_a)
  assert redo_a.calls == 0 and read(root) == expected("A")

  assert not latent_shards.check_fingerprint(root, FINGERPRINT_B)
  resumed = Encoder("B")
  write(root, IMAGE, resumed)
  assert resumed.calls == 2 and read(root) == expected("B")


def test_processes_share_a_reencode_and_it_swaps_only_when_complete(tmp_path):
  root = str(tmp_path / "latents")
  set_a(root)
  latent_shards.check_fingerprint(root, FINGERPRINT_B)  # process 0 claims
  first = Encoder("B")
  write(root, IMAGE, first, process_index=0, process_count=2)  # shards 0 and 2
  assert first.calls == 2
  assert not latent_shards.commit_staged(root)  # shard 1 is process 1's
  assert read(root) == expected("A")
  second = Encoder("B")
  write(root, IMAGE, second, process_index=1, process_count=2)
  assert second.calls == 1
  assert read(root) == expected("B")


def test_swap_killed_halfway_is_finished_by_the_next_reader(tmp_path, monkeypatch):
  root = str(tmp_path / "latents")
  set_a(root)
  latent_shards.check_fingerprint(root, FINGERPRINT_B)
  write(root, IMAGE, Encoder("B"))

  real_replace, moves = os.replace, []

  def replace_then_die(src, dst):
    if os.path.isdir(src):
      moves.append(dst)
      if len(moves) == 3:  # both old buckets moved aside, B's not yet in place
        raise KeyboardInterrupt("killed mid-swap")
    real_replace(src, dst)

  monkeypatch.setattr(latent_shards.os, "replace", replace_then_die)
  with pytest.raises(KeyboardInterrupt):
    LatentShards(root, "train", "image")
  monkeypatch.setattr(latent_shards.os, "replace", real_replace)
  assert os.path.exists(os.path.join(root, ".commit.json"))
  assert not os.path.exists(os.path.join(root, "train", "image"))  # nothing live

  assert read(root) == expected("B")
  assert read(root, "small") == []
  assert sorted(os.listdir(root)) == [latent_shards.FINGERPRINT_FILE, "train"]
  assert latent_shards.check_fingerprint(root, FINGERPRINT_B)
