"""Precomputed TAE latents in ArrayRecord shards: written once, read by Grain.

A diffusion model trained on fixed latents need not run the TAE encoder on every
step (most of the cost on a CPU, a large share on accelerators). Layout:

    <dir>/fingerprint.json                  what made the latents (TAE, buckets, data)
    <dir>/<split>/<bucket>/shard-NNNNN.array_record   one msgpack record per example:
                                            {"latent": float [T', h, w, C], "caption": str,
                                             optionally "<encoder>_emb" [L, D] and
                                             "<encoder>_mask" [L] of frozen text encoders}
    <dir>/<split>/<bucket>/shard-NNNNN.json done marker: examples, skipped by kind, and
                                            per-channel sums for the latent statistics

Shard k of a bucket holds records [k * shard_size, (k + 1) * shard_size) of that
bucket's record list; process p of P writes the shards with k % P == p. A shard
counts only once its .json exists (written after the .array_record is renamed into
place), so a killed precompute resumes by redoing unfinished shards.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import json
import os
from collections.abc import Callable, Sequence

import flax.serialization
import grain
import numpy as np
import tqdm
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter

from mgjax.data.buckets import Bucket
from mgjax.data.examples import ExampleSpec, load_pixels, tagged_caption
from mgjax.data.video import MediaDecodeError

FINGERPRINT_FILE = "fingerprint.json"


def bucket_spec(
    bucket: Bucket, fps: float | None, min_fps: float, random_clip: bool
) -> ExampleSpec:
  """Pixels of a bucket's example: scaled to cover its size, centre-cropped; the clip
  starts at a random time (random_clip) or at the start."""
  return ExampleSpec(
      bucket.num_frames,
      bucket.height,
      bucket.width,
      fps=fps,
      min_fps=min_fps,
      scale_to=(bucket.height, bucket.width),
      random_crop=False,
      random_start=random_clip,
  )


def shard_dir(root: str, split: str, bucket: str) -> str:
  return os.path.join(root, split, bucket)


def check_fingerprint(root: str, fingerprint: dict) -> bool:
  """True when `root` holds latents made the same way; else it is (re)claimed."""
  path = os.path.join(root, FINGERPRINT_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == fingerprint:
        return True
    logging.warning(
        "Latents in %s were made by something else (TAE, data or buckets "
        "changed); encoding them again.",
        root,
    )
    for old in glob.glob(os.path.join(root, "*", "*", "shard-*")):
      os.remove(old)
  os.makedirs(root, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(fingerprint, f, indent=1)
  os.replace(path + ".tmp", path)
  return False


def write_bucket(
    root: str,
    split: str,
    bucket: Bucket,
    records: Sequence[dict],
    spec: ExampleSpec,
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    embed_text: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
    shard_size: int = 256,
    batch_size: int = 8,
    num_threads: int = 8,
    process_index: int = 0,
    process_count: int = 1,
) -> None:
  """Encodes this process's unfinished shards of one bucket."""
  out_dir = shard_dir(root, split, bucket.name)
  os.makedirs(out_dir, exist_ok=True)
  shards = [
      k
      for k in range(-(-len(records) // shard_size))
      if k % process_count == process_index
      and not os.path.exists(os.path.join(out_dir, f"shard-{k:05d}.json"))
  ]
  rng = np.random.default_rng(0)  # unused by a spec without random choices
  progress = tqdm.tqdm(
      total=sum(len(records[k * shard_size : (k + 1) * shard_size]) for k in shards),
      unit="clip",
      desc=f"{split}/{bucket.name}",
  )

  def read(record):
    try:
      pixels, fps = load_pixels(record, spec, rng)
      return pixels, tagged_caption(record["caption"], fps)
    except MediaDecodeError as e:
      logging.warning("Skipping %s (%s): %s", e.path, e.kind, e.detail)
      return e.kind

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for k in shards:
      examples = list(pool.map(read, records[k * shard_size : (k + 1) * shard_size]))
      _write_shard(out_dir, k, examples, encode, embed_text, batch_size)
      progress.update(len(examples))
  progress.close()


def _write_shard(out_dir: str, k: int, examples: list, encode, embed_text, batch_size: int) -> None:
  good = [e for e in examples if not isinstance(e, str)]
  skipped = collections.Counter(e for e in examples if isinstance(e, str))
  path = os.path.join(out_dir, f"shard-{k:05d}.array_record")
  writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
  sums = ChannelSums()
  for latents, captions in encode_in_batches(good, encode, batch_size):
    text = embed_text(captions + captions[-1:] * (batch_size - len(captions))) if embed_text else {}
    for i, (latent, caption) in enumerate(zip(latents, captions)):
      record = {"latent": latent, "caption": caption, **{k: v[i] for k, v in text.items()}}
      writer.write(flax.serialization.msgpack_serialize(record))
    sums.add(latents)
  writer.close()
  os.replace(path + ".tmp", path)
  marker = {"examples": len(good), "skipped": dict(skipped), **sums.to_json()}
  with open(path[: -len(".array_record")] + ".json.tmp", "w") as f:
    json.dump(marker, f)
  os.replace(path[: -len(".array_record")] + ".json.tmp", path[: -len(".array_record")] + ".json")


def encode_in_batches(examples: Sequence[tuple[np.ndarray, str]], encode, batch_size: int):
  """Yields (float32 latents [b, T', h, w, C], captions) of (pixels, caption) examples,
  encoding full batches only (the last one padded) so `encode` compiles once."""
  for start in range(0, len(examples), batch_size):
    chunk = examples[start : start + batch_size]
    pixels = np.stack([p for p, _ in chunk])
    padded = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - len(chunk), 0)])
    yield np.asarray(encode(padded), np.float32)[: len(chunk)], [c for _, c in chunk]


class ChannelSums:
  """Running per-channel sum and sum of squares of latents, for their mean and std."""

  def __init__(self, values: int = 0, total=None, total_sq=None):
    self.values, self.total, self.total_sq = values, total, total_sq

  def add(self, latents: np.ndarray):
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)  # [N, C]
    self.values += len(flat)
    self.total = flat.sum(0) + (0 if self.total is None else self.total)
    self.total_sq = (flat**2).sum(0) + (0 if self.total_sq is None else self.total_sq)

  def to_json(self) -> dict:
    return {
        "values": self.values,
        "sum": [] if self.total is None else self.total.tolist(),
        "sum_sq": [] if self.total is None else self.total_sq.tolist(),
    }

  @classmethod
  def from_json(cls, markers: Sequence[dict]) -> ChannelSums:
    markers = [m for m in markers if m["values"]]
    return cls(
        sum(m["values"] for m in markers),
        np.sum([m["sum"] for m in markers], 0),
        np.sum([m["sum_sq"] for m in markers], 0),
    )

  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std: each float32 [C]."""
    if not self.values:
      raise ValueError("No latents to compute statistics from; every example was skipped.")
    mean = self.total / self.values
    std = np.sqrt(np.maximum(self.total_sq / self.values - mean**2, 0.0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


class LatentShards:
  """The examples of one split's bucket: a Grain random-access source."""

  def __init__(self, root: str, split: str, bucket: str):
    directory = shard_dir(root, split, bucket)
    markers = sorted(glob.glob(os.path.join(directory, "shard-*.json")))
    self.markers = []
    for marker in markers:
      with open(marker) as f:
        self.markers.append(json.load(f))
    paths = [m[: -len(".json")] + ".array_record" for m in markers]
    paths = [p for p, m in zip(paths, self.markers) if m["examples"]]
    self.source = grain.sources.ArrayRecordDataSource(paths) if paths else []

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return flax.serialization.msgpack_restore(self.source[int(index)])

  @property
  def skipped(self) -> collections.Counter:
    return sum((collections.Counter(m["skipped"]) for m in self.markers), collections.Counter())


class ReadLatent:
  """Grain element transform: shard example index -> {"latent", "caption", "skipped"}."""

  def __init__(self, shards: LatentShards):
    self.shards = shards

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    del rng
    return {**self.shards[index], "skipped": []}


def channel_stats(sets: Sequence[LatentShards]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel latent mean and std over all shards: each float32 [C]."""
  return ChannelSums.from_json([m for s in sets for m in s.markers]).mean_std()
