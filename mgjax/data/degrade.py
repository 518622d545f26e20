"""Second-order degradations: the low-resolution inputs a spatial upsampler trains on.

An upsampler that only ever saw clean, bicubically downsampled frames sharpens
clean frames and copies every artefact of a real one. Movie Gen's upsampler trains
on inputs made by degrading the high-resolution clip twice over (Real-ESRGAN's
"second-order" process): each round blurs, resizes by a random factor, adds noise
and compresses as JPEG, each with its own probability and strength; a final resize
gives the low resolution. The model then learns to undo real artefacts, those of
the text-to-video model's own samples among them.

One draw of the strengths serves the whole clip (a real video is blurred and
compressed alike in every frame); the noise is new in every frame. The draw is a
function of the clip's pixels and `seed`, so an example degrades the same way
wherever and whenever it is encoded (precomputed shards, on-the-fly batches, the
evaluation), and a new seed gives new degradations.

Config keys (`config.upsample.degrade`, `default_config()`): probabilities `*_prob`,
ranges `(low, high)` drawn uniformly; `rounds` 1 or 2; `enabled=False` leaves only
the final resize (a clean bicubic downsample).
"""

from __future__ import annotations

import dataclasses
import io
import zlib

import ml_collections
import numpy as np
from PIL import Image, ImageFilter

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}
RANDOM_RESIZE_METHODS = ("bilinear", "bicubic", "area")


def default_config() -> ml_collections.ConfigDict:
  """The degradation keys. Kinds and order are Real-ESRGAN's; the strengths are
  milder, for a 2x model whose inputs should still show what the frame holds:
  noise and compression (which bicubic upsampling keeps and a restorer removes)
  more than blur and rescaling (which destroy it). On 8 held-out shapes clips at
  32 px they cost bicubic upsampling 7 dB against a clean 2x downsample (28.9
  against 36.0 dB; docs/benchmarks.md "Spatial upsampler")."""
  return ml_collections.ConfigDict(
      dict(
          enabled=True,
          rounds=2,  # 2: second-order
          second_round_prob=0.8,  # the second round happens this often
          blur_prob=0.7,
          blur_sigma=(0.2, 1.2),  # Gaussian, in pixels of the frame being blurred
          resize_prob=0.5,
          resize_scale=(0.7, 1.2),  # random intermediate rescale in each round
          noise_prob=0.9,
          noise_sigma=(2.0, 20.0),  # Gaussian, in 0..255 units, new in every frame
          jpeg_prob=0.8,
          jpeg_quality=(30, 80),
      )
  )


@dataclasses.dataclass(frozen=True)
class Round:
  """One round's draw: None where the operation is skipped."""

  blur_sigma: float | None
  scale: float | None
  resize_method: str
  noise_sigma: float | None
  jpeg_quality: int | None


def _check(config) -> None:
  for key in ("blur_sigma", "resize_scale", "noise_sigma", "jpeg_quality"):
    low, high = config[key]
    if not 0 <= low <= high:
      raise ValueError(
          f"upsample.degrade.{key}={tuple(config[key])} must be (low, high), 0 <= low <= high."
      )
  if config.rounds not in (1, 2):
    raise ValueError(f"upsample.degrade.rounds={config.rounds} must be 1 or 2 (second-order).")


def draw_rounds(config, rng: np.random.Generator) -> list[Round]:
  """The operations and strengths of each round for one clip."""
  _check(config)
  rounds = []
  for i in range(config.rounds):
    if i == 1 and rng.random() >= config.second_round_prob:
      break
    uniform = lambda key: float(rng.uniform(*config[key]))
    happens = lambda key: rng.random() < config[key]
    rounds.append(
        Round(
            blur_sigma=uniform("blur_sigma") if happens("blur_prob") else None,
            scale=uniform("resize_scale") if happens("resize_prob") else None,
            resize_method=RANDOM_RESIZE_METHODS[rng.integers(len(RANDOM_RESIZE_METHODS))],
            noise_sigma=uniform("noise_sigma") if happens("noise_prob") else None,
            jpeg_quality=int(round(uniform("jpeg_quality"))) if happens("jpeg_prob") else None,
        )
    )
  return rounds


def clip_seed(video: np.ndarray, seed: int) -> list[int]:
  """A seed of the clip's pixels and `seed`: the same clip always degrades alike."""
  return [int(seed) & 0xFFFFFFFF, zlib.crc32(np.ascontiguousarray(video).tobytes())]


def resize_frame(frame: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [height, width, 3] with PIL's `method` (RESAMPLING)."""
  if frame.shape[:2] == (height, width):
    return frame
  image = Image.fromarray(frame).resize((width, height), RESAMPLING[method])
  return np.asarray(image)


def resize_video(
    video: np.ndarray, height: int, width: int, method: str = "bilinear"
) -> np.ndarray:
  """uint8 [T, h, w, 3] -> uint8 [T, height, width, 3], frame by frame (the
  upsampler's pixel-space bilinear upsampling, and the bilinear/bicubic baselines)."""
  if method not in RESAMPLING:
    raise ValueError(f"Unknown resize method {method!r}; use one of {sorted(RESAMPLING)}.")
  return np.stack([resize_frame(f, height, width, method) for f in video])


def _apply_round(
    frames: list[Image.Image], r: Round, rng: np.random.Generator
) -> list[Image.Image]:
  if r.blur_sigma:
    frames = [f.filter(ImageFilter.GaussianBlur(r.blur_sigma)) for f in frames]
  if r.scale:
    w, h = frames[0].size
    size = (max(4, round(w * r.scale)), max(4, round(h * r.scale)))
    frames = [f.resize(size, RESAMPLING[r.resize_method]) for f in frames]
  if r.noise_sigma:
    noisy = []
    for f in frames:
      x = np.asarray(f, np.float32) + rng.normal(0.0, r.noise_sigma, (f.size[1], f.size[0], 3))
      noisy.append(Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8)))
    frames = noisy
  if r.jpeg_quality:
    compressed = []
    for f in frames:
      buffer = io.BytesIO()
      f.save(buffer, format="JPEG", quality=r.jpeg_quality)
      compressed.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    frames = compressed
  return frames


def degrade(video: np.ndarray, factor: int, config, seed: int = 0) -> np.ndarray:
  """uint8 [T, H, W, 3] high-resolution clip -> uint8 [T, H / factor, W / factor, 3]
  low-resolution input, degraded as `config` says (deterministic in video and seed)."""
  video = np.asarray(video)
  t, height, width, _ = video.shape
  if height % factor or width % factor:
    raise ValueError(f"Frames of {height}x{width} do not divide by the upsampling factor {factor}.")
  rng = np.random.default_rng(clip_seed(video, seed))
  frames = [Image.fromarray(f) for f in video]
  if config.enabled:
    for r in draw_rounds(config, rng):
      frames = _apply_round(frames, r, rng)
  final = (
      RANDOM_RESIZE_METHODS[rng.integers(len(RANDOM_RESIZE_METHODS))]
      if config.enabled
      else "bicubic"
  )
  size = (width // factor, height // factor)
  return np.stack([np.asarray(f.resize(size, RESAMPLING[final])) for f in frames])
