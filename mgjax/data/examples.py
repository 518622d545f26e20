"""One record -> one training example of a bucket's shape, surviving bad files.

`ExampleSpec` says how a record becomes pixels: the clip's frame count and frame
rate, where the clip starts, how frames are scaled and cropped. `LoadExample` is the
Grain transform that applies it to record `i`; when the file is unusable it draws
another record with the element's own RNG (so the replacement is as deterministic
as the rest of the pipeline) and reports the bad file, `(kind, path)`, in the
example's `skipped` list. The main process counts those (mgjax/data/pipeline.py):
worker processes keep no state.

Frame rate (DESIGN §1): `fps` fixed resamples every video to that rate; `fps=None`
keeps each video's own rate but never below `min_fps` (the paper: original frame
rate, minimum 16 FPS), by repeating frames of slower videos. The rate used is what
the caption's "FPS-<n>" tag says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from mgjax.data.video import MediaDecodeError, VideoInfo, probe, read_clip, read_image


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  num_frames: int  # 1: a still (an image, or one frame of a video)
  height: int  # of the example, after scaling and cropping
  width: int
  fps: float | None = None  # None: the video's own rate, at least min_fps
  min_fps: float = 0.0
  scale_to: tuple[int, int] | None = None  # (h, w) to scale-to-cover + centre-crop first;
  # None keeps the native size
  random_crop: bool = True  # (height, width) crop position: random or centre
  random_start: bool = True  # clip start: uniform over the video, or its start

  def clip_fps(self, native_fps: float) -> float:
    return self.fps or max(native_fps, self.min_fps)


def fps_tag(fps: float) -> str:
  """The frame-rate prefix Movie Gen puts before a video's caption: 'FPS-16'."""
  return f"FPS-{fps:g}"


def tagged_caption(caption: str, fps: float | None) -> str:
  """Video captions get the frame-rate tag; images (fps None) keep theirs as is."""
  return caption if fps is None else f"{fps_tag(fps)} {caption}"


def video_info(record: dict) -> VideoInfo:
  """A video record's metadata: from the record when complete, else from the file."""
  if all(record.get(k) for k in ("fps", "num_frames", "width", "height")):
    return VideoInfo(
        fps=float(record["fps"]),
        num_frames=int(record["num_frames"]),
        width=int(record["width"]),
        height=int(record["height"]),
        duration=record["num_frames"] / record["fps"],
    )
  return probe(record["video"])


def with_metadata(record: dict) -> dict:
  """The record with width, height (and for videos num_frames, fps) filled in from the
  file when absent; raises MediaDecodeError when the file cannot be read."""
  if "video" in record:
    info = video_info(record)
    return {
        **record,
        "fps": info.fps,
        "num_frames": info.num_frames,
        "width": info.width,
        "height": info.height,
    }
  if record.get("width") and record.get("height"):
    return record
  if "pixels" in record:  # decoded (TFDS): [H, W, 3] or [T, H, W, 3]
    shape = np.shape(record["pixels"])
    return {
        **record,
        "height": shape[-3],
        "width": shape[-2],
        **({"num_frames": shape[0]} if len(shape) == 4 else {}),
    }
  height, width, _ = read_image(record["image"]).shape
  return {**record, "width": width, "height": height}


def _scale_cover(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [T, H, W, 3] scaled to cover `size` and centre-cropped to it."""
  height, width = size
  if frames.shape[1:3] == (height, width):
    return frames
  return np.stack(
      [
          np.asarray(
              ImageOps.fit(Image.fromarray(f), (width, height), method=Image.Resampling.BICUBIC)
          )
          for f in frames
      ]
  )


def load_pixels(
    record: dict, spec: ExampleSpec, rng: np.random.Generator
) -> tuple[np.ndarray, float | None]:
  """(uint8 [T, H, W, 3], the clip's frame rate or None for stills) of one record.

  Records hold a "video" or "image" path, or decoded "pixels" (TFDS) as uint8
  [H, W, 3] or [T, H, W, 3]. Raises MediaDecodeError for unusable files.
  """
  fps = None
  if "pixels" in record:
    frames = np.asarray(record["pixels"], np.uint8)
    frames = frames[None] if frames.ndim == 3 else frames  # [T0, H0, W0, 3]
    if len(frames) < spec.num_frames:
      raise MediaDecodeError(
          record.get("id", "<tfds>"), "too_short", f"{len(frames)} frames, {spec.num_frames} needed"
      )
    first = int(rng.integers(len(frames) - spec.num_frames + 1)) if spec.random_start else 0
    frames = frames[first : first + spec.num_frames]
    if spec.scale_to:
      frames = _scale_cover(frames, spec.scale_to)
  elif record.get("image"):
    if spec.num_frames != 1:
      raise ValueError(
          f"Image {record['image']} cannot make a {spec.num_frames}-frame clip; "
          "images belong in 1-frame buckets."
      )
    frames = read_image(record["image"], size=spec.scale_to)[None]
  else:
    info = video_info(record)
    fps = spec.clip_fps(info.fps)
    slack = max(info.duration - spec.num_frames / fps, 0.0)
    start = float(rng.uniform(0.0, slack)) if spec.random_start else 0.0
    frames = read_clip(
        record["video"], spec.num_frames, fps=fps, size=spec.scale_to, start_time=start
    )
    if spec.num_frames == 1:
      fps = None  # a still taken from a video trains as an image
  return _crop(frames, spec, rng, record), fps


def _crop(
    frames: np.ndarray, spec: ExampleSpec, rng: np.random.Generator, record: dict
) -> np.ndarray:
  _, h0, w0, _ = frames.shape
  if spec.height > h0 or spec.width > w0:
    path = record.get("video") or record.get("image") or record.get("id", "<tfds>")
    raise MediaDecodeError(
        path,
        "too_small",
        f"frames are {h0}x{w0}, smaller than the "
        f"{spec.height}x{spec.width} crop; set data.scale_to to scale them",
    )
  if spec.random_crop:
    top, left = int(rng.integers(h0 - spec.height + 1)), int(rng.integers(w0 - spec.width + 1))
  else:
    top, left = (h0 - spec.height) // 2, (w0 - spec.width) // 2
  return frames[:, top : top + spec.height, left : left + spec.width]


class LoadExample:
  """Grain element transform: record index -> {"pixels", "caption", "skipped"}.

  `records` is any random-access sequence of records. A record whose file is
  unusable is replaced by a random other one, up to `max_attempts` draws.
  """

  def __init__(self, records: Sequence[dict], spec: ExampleSpec, max_attempts: int = 16):
    self.records = records
    self.spec = spec
    self.max_attempts = max_attempts

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    skipped = []
    for _ in range(self.max_attempts):
      record = self.records[int(index)]
      try:
        pixels, fps = load_pixels(record, self.spec, rng)
      except MediaDecodeError as e:
        skipped.append((e.kind, e.path, e.detail))
        index = rng.integers(len(self.records))
        continue
      return {
          "pixels": pixels,
          "caption": tagged_caption(record.get("caption", ""), fps),
          "skipped": skipped,
      }
    raise RuntimeError(
        f"{self.max_attempts} records in a row could not be read "
        f"({[s[:2] for s in skipped]}); the data set looks broken."
    )


def collate(examples: Sequence[dict]) -> dict:
  """Examples -> a batch: arrays stacked, strings and `skipped` lists concatenated."""
  batch = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    if key == "skipped":
      batch[key] = [s for v in values for s in v]
    elif isinstance(values[0], str):
      batch[key] = values
    else:
      batch[key] = np.stack(values)
  return batch
