"""Aspect-ratio x duration buckets: every batch holds examples of one shape.

Movie Gen trains on videos of several aspect ratios and lengths, and on images, in
one model. mgjax gives each batch a single bucket (no padding mask): every example
in it is resized to the bucket's (height, width) by scale-and-centre-crop and cut to
its frame count, so a step compiles once per bucket and wastes no compute on
padding. A bucket's batch size is set per bucket, so image buckets (1 frame) can
carry more examples for the same token count.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from collections.abc import Sequence

from absl import logging

from mgjax.data.examples import with_metadata
from mgjax.data.video import MediaDecodeError


@dataclasses.dataclass(frozen=True)
class Bucket:
  name: str
  num_frames: int  # 1: an image bucket
  height: int  # pixels
  width: int
  batch_size: int

  @property
  def is_image(self) -> bool:
    return self.num_frames == 1

  @property
  def aspect_ratio(self) -> float:
    return self.width / self.height


def buckets_from_config(entries: Sequence[Sequence]) -> list[Bucket]:
  """[(name, num_frames, height, width, batch_size), ...] -> buckets, validated."""
  buckets = []
  for entry in entries:
    if len(entry) != 5:
      raise ValueError(
          f"Bucket {tuple(entry)} needs 5 fields: (name, num_frames, height, " "width, batch_size)."
      )
    bucket = Bucket(str(entry[0]), *(int(v) for v in entry[1:]))
    if min(bucket.num_frames, bucket.height, bucket.width, bucket.batch_size) < 1:
      raise ValueError(f"Bucket {bucket} needs positive frames, size and batch size.")
    buckets.append(bucket)
  names = [b.name for b in buckets]
  if len(set(names)) != len(names) or not buckets:
    raise ValueError(f"data.buckets needs at least one bucket and unique names; got {names}.")
  return buckets


def assign_bucket(record: dict, buckets: Sequence[Bucket], fps: float | None) -> Bucket | None:
  """The bucket a manifest record trains in, or None when no bucket fits it.

  Images go to the image bucket of nearest aspect ratio. A video goes to the video
  bucket of nearest aspect ratio (in log space) and, among those, the longest whose
  duration at `fps` (the file's own rate when None) the video covers.
  """
  is_image = "video" not in record and "num_frames" not in record
  candidates = [b for b in buckets if b.is_image == is_image]
  if not candidates:
    return None
  aspect = math.log(record["width"] / record["height"])
  distance = lambda b: abs(math.log(b.aspect_ratio) - aspect)
  nearest = min(distance(b) for b in candidates)
  candidates = [b for b in candidates if math.isclose(distance(b), nearest, abs_tol=1e-6)]
  if is_image:
    return candidates[0]
  video_fps = record.get("fps") or fps or 16.0
  frames_available = record["num_frames"] * ((fps or video_fps) / video_fps)
  fitting = [b for b in candidates if b.num_frames <= frames_available + 1e-6]
  return max(fitting, key=lambda b: b.num_frames) if fitting else None


def group_by_bucket(
    records: Sequence[dict],
    buckets: Sequence[Bucket],
    fps: float | None,
    min_fps: float = 0.0,
    num_threads: int = 16,
) -> tuple[dict[str, list[dict]], collections.Counter]:
  """({bucket name: records}, skipped by kind) of a record list.

  Records without size/length metadata are probed (in threads); files that cannot be
  probed are skipped under their kind, and records that fit no bucket (too short,
  or no bucket of their kind) under "no_bucket".
  """

  def complete(record):
    try:
      return with_metadata(record)
    except MediaDecodeError as e:
      logging.warning("Skipping %s (%s): %s", e.path, e.kind, e.detail)
      return e.kind

  with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
    completed = list(pool.map(complete, records))
  groups: dict[str, list[dict]] = {b.name: [] for b in buckets}
  skipped = collections.Counter()
  for record in completed:
    if isinstance(record, str):
      skipped[record] += 1
      continue
    record_fps = fps or (max(record["fps"], min_fps) if record.get("fps") else None)
    bucket = assign_bucket(record, buckets, record_fps)
    if bucket is None:
      skipped["no_bucket"] += 1
    else:
      groups[bucket.name].append(record)
  if skipped["no_bucket"]:
    logging.warning(
        "%d records fit no bucket (too short, or no bucket of their kind).", skipped["no_bucket"]
    )
  return groups, skipped
