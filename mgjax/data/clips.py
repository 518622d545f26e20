"""Deterministic batches of video clips from a JSONL manifest.

Batch `s` is a pure function of (seed, s): sample k = s * batch_size + i reads record
`perm_epoch[k % n]` with its own random clip start and crop. A resumed run therefore
sees exactly the batches it would have seen, with no iterator state to save.

Unreadable files never stop the run: a record that raises `VideoDecodeError` is
counted under its kind (`missing`, `truncated`, ...), logged with its path, and
replaced by the next record of the permutation. If more than `max_skip_fraction` of
the distinct records tried turn out bad, the loader raises, since the data set is
probably broken.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from absl import logging

from mgjax.data.video import VideoDecodeError, probe, read_clip


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  num_frames: int
  height: int
  width: int
  fps: float | None = None          # None: the file's own frame rate
  resize: tuple[int, int] | None = None  # (h, w) to scale-and-crop to before cropping
  random_crop: bool = True          # random (h, w) crop of the resized frame; else centre


def read_manifest(path: str, split: str | None = None) -> list[dict]:
  """Records of a JSONL manifest, media paths made absolute; optional split filter."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Manifest {path} does not exist; make it with "
                            "`python -m mgjax.data.shapes --out=DIR` or point the "
                            "config's data.dir at a folder with a manifest.jsonl.")
  base = os.path.dirname(os.path.abspath(path))
  records = []
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number} is not valid JSON: {e}") from e
      if split is not None and record.get("split", "train") != split:
        continue
      media = [key for key in ("video", "image") if key in record]
      if not media:
        raise ValueError(f"{path}:{line_number} has neither a 'video' nor an 'image' path.")
      for key in media:
        record[key] = os.path.join(base, record[key])
      records.append(record)
  return records


class ClipLoader:
  """Batches {"video": uint8 [B, T, H, W, 3]} from manifest records."""

  def __init__(self, records: Sequence[dict], spec: ClipSpec, batch_size: int, seed: int,
               num_workers: int = 4, max_skip_fraction: float = 0.1):
    if not records:
      raise ValueError("ClipLoader got no records; check the manifest and split.")
    self.records = list(records)
    self.spec = spec
    self.batch_size = batch_size
    self.seed = seed
    self.max_skip_fraction = max_skip_fraction
    self.skipped = collections.Counter()  # kind -> count
    self._bad: set[int] = set()
    self._good: set[int] = set()
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_workers)
    self._permutations: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._permutations:
        rng = np.random.default_rng([self.seed, epoch])
        self._permutations = {epoch: rng.permutation(len(self.records))}
      return self._permutations[epoch]

  def _decode(self, record: dict, rng: np.random.Generator) -> np.ndarray:
    spec = self.spec
    info = probe(record["video"])
    fps = spec.fps or info.fps
    needed = spec.num_frames / fps
    slack = max(info.duration - needed, 0.0)
    start_time = float(rng.uniform(0.0, slack)) if spec.random_crop else 0.0
    clip = read_clip(record["video"], spec.num_frames, fps=spec.fps, size=spec.resize,
                     start_time=start_time)  # [T, H0, W0, 3]
    _, h0, w0, _ = clip.shape
    if spec.height > h0 or spec.width > w0:
      raise ValueError(f"Clip size {spec.height}x{spec.width} exceeds the frame size "
                       f"{h0}x{w0} of {record['video']}; set data.resize or a smaller crop.")
    if spec.random_crop:
      top = int(rng.integers(0, h0 - spec.height + 1))
      left = int(rng.integers(0, w0 - spec.width + 1))
    else:
      top, left = (h0 - spec.height) // 2, (w0 - spec.width) // 2
    return clip[:, top:top + spec.height, left:left + spec.width]

  def _sample(self, k: int) -> np.ndarray:
    n = len(self.records)
    perm = self._permutation(k // n)
    rng = np.random.default_rng([self.seed, k])
    for offset in range(n):
      index = int(perm[(k + offset) % n])
      if index in self._bad:
        continue
      try:
        clip = self._decode(self.records[index], rng)
      except VideoDecodeError as e:
        with self._lock:
          if index not in self._bad:
            self._bad.add(index)
            self.skipped[e.kind] += 1
            logging.warning("Skipping video (%s): %s", e.kind, e)
          self._check_skip_fraction()
        continue
      with self._lock:
        self._good.add(index)
        self._check_skip_fraction()
      return clip
    raise RuntimeError(f"None of the {n} videos in the data set could be read; "
                       f"skipped by kind: {dict(self.skipped)}.")

  def _check_skip_fraction(self):
    tried = len(self._bad) + len(self._good)
    if tried >= 10 and len(self._bad) / tried > self.max_skip_fraction:
      raise RuntimeError(
          f"{len(self._bad)} of {tried} videos tried could not be read "
          f"({dict(self.skipped)}), above data.max_skip_fraction="
          f"{self.max_skip_fraction}. Fix the data set or raise the threshold.")

  def batch(self, step: int) -> dict[str, np.ndarray]:
    first = step * self.batch_size
    clips = list(self._pool.map(self._sample, range(first, first + self.batch_size)))
    return {"video": np.stack(clips)}  # [B, T, H, W, 3]

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Batches for start_step, start_step + 1, ... decoded ahead in a thread."""
    return prefetch_batches(self.batch, start_step, prefetch)


def prefetch_batches(batch_fn: Callable[[int], dict], start_step: int,
                     prefetch: int = 2) -> Iterator[dict]:
  """Yields batch_fn(start_step), batch_fn(start_step + 1), ..., computed ahead in a
  background thread; an exception there is raised in the consumer."""
  batches: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def produce():
    step = start_step
    while not stop.is_set():
      try:
        item = batch_fn(step)
      except Exception as e:  # surfaced in the consumer
        batches.put(e)
        return
      while not stop.is_set():
        try:
          batches.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
      step += 1

  threading.Thread(target=produce, daemon=True).start()
  try:
    while True:
      item = batches.get()
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()
