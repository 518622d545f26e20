"""TAE latents of a manifest, computed once and cached, and batches drawn from them.

Training a diffusion model on precomputed latents skips the TAE encoder on every
step, which is most of the cost on a CPU and a large share on accelerators. The
cache of each (split, bucket) is one `.npz` holding the latent means, the captions
(with the frame-rate tag) and a fingerprint of what made them: a different TAE
checkpoint, manifest or bucket recomputes it rather than training on stale latents.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from mgjax.data.buckets import Bucket, assign_bucket
from mgjax.data.video import MediaDecodeError, read_clip, read_image


def fps_tag(fps: float) -> str:
  """The frame-rate prefix Movie Gen puts before a video's caption: 'FPS-16'."""
  return f"FPS-{fps:g}"


def tagged_caption(caption: str, fps: float | None) -> str:
  """Video captions get the frame-rate tag; images (fps None) keep theirs as is."""
  return caption if fps is None else f"{fps_tag(fps)} {caption}"


@dataclasses.dataclass
class LatentSet:
  latents: np.ndarray          # float32 [N, T', h, w, C]
  captions: list[str]          # tagged captions, one per latent
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def save(self, path: str, fingerprint: str):
    tmp = path + ".tmp.npz"
    np.savez(tmp, latents=self.latents, captions=np.asarray(self.captions, dtype=str),
             fingerprint=np.asarray(fingerprint), skipped=np.asarray(json.dumps(self.skipped)))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str, fingerprint: str) -> LatentSet | None:
    """The cached set, or None when absent or made by something else."""
    if not os.path.exists(path):
      return None
    with np.load(path) as data:
      if str(data["fingerprint"]) != fingerprint:
        return None
      return cls(data["latents"], [str(c) for c in data["captions"]],
                 collections.Counter(json.loads(str(data["skipped"]))))


def read_example(record: dict, bucket: Bucket, fps: float | None) -> tuple[np.ndarray, str]:
  """uint8 [T, H, W, 3] at the bucket's size, and its tagged caption."""
  size = (bucket.height, bucket.width)
  if bucket.is_image:
    path = record.get("image") or record["video"]
    if "image" in record:
      return read_image(path, size=size)[None], record["caption"]
    return read_clip(path, 1, size=size), record["caption"]
  clip = read_clip(record["video"], bucket.num_frames, fps=fps, size=size)
  return clip, tagged_caption(record["caption"], fps or record["fps"])


def encode_records(records: Sequence[dict], bucket: Bucket, fps: float | None,
                   encode_fn: Callable[[np.ndarray], np.ndarray],
                   batch_size: int) -> LatentSet:
  """Latents of every record that reads; unreadable files are skipped and counted."""
  latents, captions, skipped = [], [], collections.Counter()
  pending_pixels: list[np.ndarray] = []

  def flush():
    if pending_pixels:
      latents.append(np.asarray(encode_fn(np.stack(pending_pixels))))
      pending_pixels.clear()

  for record in records:
    try:
      pixels, caption = read_example(record, bucket, fps)
    except MediaDecodeError as e:
      skipped[e.kind] += 1
      logging.warning("Skipping %s (%s): %s", bucket.name, e.kind, e)
      continue
    pending_pixels.append(pixels)
    captions.append(caption)
    if len(pending_pixels) == batch_size:
      flush()
  flush()
  if not latents:
    raise ValueError(f"No readable examples for bucket {bucket.name!r} "
                     f"(skipped: {dict(skipped)}).")
  return LatentSet(np.concatenate(latents).astype(np.float32), captions, skipped)


def cached_latents(cache_dir: str, split: str, records: Sequence[dict],
                   buckets: Sequence[Bucket], fps: float | None, fingerprint: str,
                   encode_fn: Callable[[np.ndarray], np.ndarray],
                   batch_size: int = 16) -> dict[str, LatentSet]:
  """{bucket name: LatentSet} for one split, from the cache or freshly encoded.

  Records that fit no bucket are counted under 'no_bucket' and left out.
  """
  os.makedirs(cache_dir, exist_ok=True)
  by_bucket: dict[str, list[dict]] = collections.defaultdict(list)
  unassigned = 0
  for record in records:
    bucket = assign_bucket(record, buckets, fps)
    if bucket is None:
      unassigned += 1
    else:
      by_bucket[bucket.name].append(record)
  if unassigned:
    logging.warning("%d %s records fit no bucket (too short or no bucket of their kind).",
                    unassigned, split)
  sets = {}
  for bucket in buckets:
    if not by_bucket[bucket.name]:
      continue
    key = hashlib.sha256(json.dumps(
        [fingerprint, dataclasses.asdict(bucket), fps,
         [r.get("video") or r.get("image") for r in by_bucket[bucket.name]]]).encode()
    ).hexdigest()
    path = os.path.join(cache_dir, f"{split}_{bucket.name}.npz")
    latent_set = LatentSet.load(path, key)
    if latent_set is None:
      logging.info("Encoding %d %s examples for bucket %r with the TAE...",
                   len(by_bucket[bucket.name]), split, bucket.name)
      latent_set = encode_records(by_bucket[bucket.name], bucket, fps, encode_fn, batch_size)
      latent_set.save(path, key)
    if unassigned:
      latent_set.skipped["no_bucket"] += unassigned
      unassigned = 0
    sets[bucket.name] = latent_set
  if not sets:
    raise ValueError(f"No {split} examples fit any of the buckets {[b.name for b in buckets]}.")
  return sets


def channel_stats(sets: dict[str, LatentSet]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std over all latents: each float32 [C]."""
  flat = np.concatenate([s.latents.reshape(-1, s.latents.shape[-1]) for s in sets.values()])
  return flat.mean(0).astype(np.float32), (flat.std(0) + 1e-6).astype(np.float32)


def choose_bucket(step: int, seed: int, names: Sequence[str], weights: Sequence[float]) -> str:
  """The bucket of step `step`: a pure function of (seed, step)."""
  p = np.asarray(weights, np.float64)
  return names[int(np.random.default_rng([seed, step, 1]).choice(len(names), p=p / p.sum()))]


def sample_indices(step: int, seed: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Batch `step`'s example indices: without replacement when the set is big enough."""
  rng = np.random.default_rng([seed, step, 2])
  return rng.choice(num_examples, batch_size, replace=num_examples < batch_size)
