"""Reads colour, shape and motion off the pixels of a "shapes" video.

A text-to-video model trained on `mgjax.data.shapes` is asked for "a red
circle moves up"; whether it obeyed can be decided from its pixels alone,
because the data set was built to make that easy (see its docstring): the one
shape is saturated, the background is near-grey, the shapes differ in how much
of their bounding box they fill and the motions differ in their centroid
tracks. This module turns that into a prompt-following score, so a model's
progress can be measured without a learned classifier (which could share the
generator's blind spots).

Generated samples are small (32x32 or 64x64, 8-32 frames) and come out of a
lossy autoencoder: soft edges, noise, slightly shifted colours. So every step
measures something that survives blur and noise:

* Segmentation uses chroma (max - min channel), which the brightness-only
  background textures never raise; the threshold sits halfway between the
  video's background and shape chroma levels rather than at a fixed value,
  and only the largest connected blob of each frame counts.
* Colour is the hue of the shape's median interior colour, nearest of the hues
  of `shapes.COLORS`, so a darker, paler or slightly shifted colour keeps its
  name.
* Shape is read off a soft (0..1) coverage map. Only the (up-pointing)
  triangle is lopsided: the third cumulant of its row profile is far from 0.
  Square and circle differ in fill ratio, area / (longest row * longest
  column), ~1.0 vs ~0.79, and in how flat their profiles are (fourth
  cumulant). Cumulants above the second and the area are unchanged by a
  Gaussian blur, which is what makes these cues hold on soft, decoded edges.
  Frames where the shape touches the border are left out when others exist.
* Motion comes from the (temporally median-filtered) centroid track: its
  range, net displacement and the movement on the second axis tell still,
  the four linear directions and the diagonal, wall-reflecting bouncing apart.

A video where no shape can be found gets readings of None, which `score`
counts as wrong; nothing here raises on odd content, only on malformed input.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from mgjax.data import shapes

# Segmentation. Chroma levels are 0..255 (max - min channel).
# Shape minus background chroma below this: no shape. Clean shapes give
# > 100; background-only videos with pixel noise of std 30 stay below 40.
MIN_CONTRAST = 40.0
DETECT_SIGMA = 0.75  # Pixels; spatial blur of the chroma used for detection.
MIN_THRESHOLD_MARGIN = 25.0  # The mask threshold is at least this above background.
MIN_BLOB_FRACTION = 0.002  # Smallest blob, as a fraction of the frame...
MIN_BLOB_PIXELS = 4  # ...and in pixels.
MIN_FOUND_FRACTION = 0.5  # Fraction of frames that must show the shape.
# Soft coverage is kept where it exceeds TAIL_LEVEL in pixels connected to
# the blob (so blurred edges count in full), plus REGION_DILATION pixels.
TAIL_LEVEL = 0.2
REGION_DILATION = 1

# Shape boundaries (see _fill_ratio and _moment_features). Blur pulls the
# triangle's asymmetry and the circle's fill towards the others, hence the
# boundaries below the midpoints.
TRIANGLE_ASYMMETRY = 0.006  # circle, square ~0 | triangle ~0.017
SQUARE_FILL = 0.88  # circle ~0.79 | square ~1.0
SQUARE_FLATNESS = 0.0073  # circle ~0.0063 | square ~0.0083

# Motion, in fractions of the frame.
STILL_RANGE = 0.1  # Centroid moves less than this on both axes: still.
DRIFT_RANGE = 0.1  # Second-axis movement that, with...
DRIFT_RATIO = 0.25  # ...this fraction of the first axis' range, means bouncing.
REVERSAL_RATIO = 0.6  # |net| / range below this on a moving axis: bouncing.
TRACK_SMOOTHING = 3  # Frames in the temporal median filter of the track.

ATTRIBUTES = ("color", "shape", "motion")


@dataclasses.dataclass(frozen=True)
class ShapeReading:
  """What the checker saw in one video; a value is None when undecided.

  Diagnostics: `track` [T, 2] is the shape's centroid (x, y) per frame in
  fractions of the frame (NaN where no shape was found), `foreground` [T] the
  fraction of the frame the shape covers; `fill`, `asymmetry` and `flatness`
  the medians of the shape features (see _fill_ratio, _moment_features) over
  frames clear of the border; `rgb` and `hue` (degrees) the shape's median
  colour; `contrast` the shape-minus-background chroma.
  """

  color: str | None
  shape: str | None
  motion: str | None
  track: np.ndarray  # [T, 2]
  foreground: np.ndarray  # [T]
  fill: float | None = None
  asymmetry: float | None = None
  flatness: float | None = None
  rgb: tuple[float, float, float] | None = None
  hue: float | None = None
  contrast: float = 0.0

  def as_dict(self) -> dict[str, str | None]:
    return {"color": self.color, "shape": self.shape, "motion": self.motion}


# ----------------------------------------------------------------------------
# Input checks.


def _check_video(video) -> np.ndarray:
  """uint8 [T, H, W, 3] or a ValueError saying what is wrong."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"read_video needs a video [T, H, W, 3], got shape {video.shape}")
  if min(video.shape[:3]) < 1:
    raise ValueError(f"read_video needs T, H, W >= 1, got shape {video.shape}")
  if video.dtype != np.uint8:
    raise ValueError(
        f"read_video needs uint8 pixels in [0, 255], got dtype {video.dtype}; "
        "convert [-1, 1] floats with mgjax.tasks.tae.to_uint8 first"
    )
  return video


# ----------------------------------------------------------------------------
# Segmentation.


def _chroma(video: np.ndarray) -> np.ndarray:
  """Max minus min channel: [T, H, W, 3] uint8 -> [T, H, W] float32."""
  r, g, b = (video[..., c].astype(np.float32) for c in range(3))
  return np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)


def _min_blob_pixels(height: int, width: int) -> int:
  return max(MIN_BLOB_PIXELS, int(MIN_BLOB_FRACTION * height * width))


def _levels(chroma: np.ndarray) -> tuple[float, float]:
  """(background, peak) chroma of a video [T, H, W].

  The shape covers at most ~12% of a frame, so the median is background.
  The peak is the level that the brightest smallest-possible blob reaches in
  a typical frame: robust to a few noisy pixels, yet it still finds a tiny,
  blurred shape that a global percentile would miss.
  """
  num_frames, height, width = chroma.shape
  k = min(_min_blob_pixels(height, width), height * width)
  top = -np.partition(-chroma.reshape(num_frames, -1), k - 1, axis=1)[:, k - 1]  # [T]
  return float(np.median(chroma)), float(np.median(top))


def _largest_blob(mask: np.ndarray, min_pixels: int) -> np.ndarray | None:
  """The biggest 8-connected component of a bool [H, W], or None if too small."""
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if count == 0:
    return None
  sizes = np.bincount(labels.ravel())[1:]  # [count]
  best = int(np.argmax(sizes))
  if sizes[best] < min_pixels:
    return None
  return labels == best + 1


def _blobs(chroma: np.ndarray, threshold: float) -> list[np.ndarray | None]:
  """Per frame, the shape's hard mask [H, W] (None where absent)."""
  min_pixels = _min_blob_pixels(*chroma.shape[1:])
  return [_largest_blob(frame > threshold, min_pixels) for frame in chroma]


def _interior(mask: np.ndarray) -> np.ndarray:
  """Mask pixels away from the edge (all of it if erosion leaves nothing)."""
  core = ndimage.binary_erosion(mask)
  return core if core.any() else mask


def _coverage(
    chroma: np.ndarray, blob: np.ndarray, background: float, shape_level: float
) -> np.ndarray:
  """Soft shape coverage in [0, 1] around the blob, 0 elsewhere: [H, W].

  Chroma maps linearly onto coverage (background -> 0, shape -> 1). Only
  the blob's own surroundings count, so noise elsewhere adds nothing.
  """
  alpha = np.clip((chroma - background) / (shape_level - background), 0.0, 1.0)  # [H, W]
  labels, _ = ndimage.label((alpha > TAIL_LEVEL) | blob, structure=np.ones((3, 3), bool))
  region = np.isin(labels, np.unique(labels[blob]))  # The blob and its soft fringe.
  region = ndimage.binary_dilation(region, iterations=REGION_DILATION)
  alpha = np.where(region, alpha, 0.0)
  # Smoothing found the blob but raw chroma is flat: fall back to the hard mask.
  return alpha if alpha.sum() > 0.5 else blob.astype(np.float64)


# ----------------------------------------------------------------------------
# Per-frame measurements.


def _centroid(alpha: np.ndarray) -> np.ndarray:
  """Coverage-weighted centre (x, y) in fractions of the frame: [2]."""
  height, width = alpha.shape
  total = alpha.sum()
  x = (alpha.sum(axis=0) * (np.arange(width) + 0.5)).sum() / total
  y = (alpha.sum(axis=1) * (np.arange(height) + 0.5)).sum() / total
  return np.array([x / width, y / height])


def _fill_ratio(alpha: np.ndarray) -> float:
  """Area over (longest row * longest column) of a soft mask [H, W].

  Square 1, circle pi/4, up-pointing triangle 1/2. Row and column sums
  average out noise; blur lowers the peaks of round profiles a little.
  """
  longest_row = alpha.sum(axis=1).max()
  longest_column = alpha.sum(axis=0).max()
  return float(alpha.sum() / max(longest_row * longest_column, 1e-6))


def _profile_cumulants(profile: np.ndarray) -> tuple[float, float, float]:
  """2nd, 3rd and 4th cumulants of a 1-D mass profile [N] over pixel positions."""
  position = np.arange(len(profile)) + 0.5
  mass = profile.sum()
  offset = position - (profile * position).sum() / mass
  k2 = (profile * offset**2).sum() / mass
  k3 = (profile * offset**3).sum() / mass
  k4 = (profile * offset**4).sum() / mass - 3.0 * k2**2
  return float(k2), float(k3), float(k4)


def _moment_features(alpha: np.ndarray) -> tuple[float, float]:
  """(asymmetry, flatness) of a soft mask [H, W], both unchanged by Gaussian blur.

  Cumulants above the second do not change when a symmetric Gaussian blur
  is convolved in, and the area does not either, so third and fourth
  cumulants of the row and column profiles over area^(3/2) and area^2 are
  blur-invariant shape numbers:
  asymmetry = max |k3| / area^1.5: triangle ~0.0169, circle and square 0.
  flatness = -mean k4 / area^2: square 1/120 ~0.0083, circle 1/(16 pi^2)
  ~0.0063 (triangle ~0.0055).
  """
  area = alpha.sum()
  _, k3_x, k4_x = _profile_cumulants(alpha.sum(axis=0))
  _, k3_y, k4_y = _profile_cumulants(alpha.sum(axis=1))
  asymmetry = max(abs(k3_x), abs(k3_y)) / area**1.5
  flatness = -0.5 * (k4_x + k4_y) / area**2
  return float(asymmetry), float(flatness)


def _touches_border(blob: np.ndarray) -> bool:
  return bool(blob[0].any() or blob[-1].any() or blob[:, 0].any() or blob[:, -1].any())


# ----------------------------------------------------------------------------
# Classification.


def _hue(rgb) -> float:
  """Hue angle in degrees [0, 360) from the opponent axes of an RGB colour."""
  r, g, b = (float(c) for c in rgb)
  return math.degrees(math.atan2(math.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


_COLOR_HUES = {name: _hue(rgb) for name, rgb in shapes.COLORS.items()}


def classify_color(rgb) -> str:
  """The name in shapes.COLORS whose hue is nearest that of `rgb`."""
  hue = _hue(rgb)

  def distance(name):
    d = abs(hue - _COLOR_HUES[name]) % 360.0
    return min(d, 360.0 - d)

  return min(_COLOR_HUES, key=distance)


def classify_shape(fill: float, asymmetry: float, flatness: float) -> str:
  """circle / square / triangle from mask features (see _moment_features).

  Only the triangle is lopsided. Square and circle are told apart by two
  cues, each measured in units of its circle-to-square gap and summed, so
  that one cue a little past its boundary can be outvoted by the other.
  """
  if asymmetry > TRIANGLE_ASYMMETRY:
    return "triangle"
  squareness = (fill - SQUARE_FILL) / (1.0 - math.pi / 4) + (flatness - SQUARE_FLATNESS) / (
      1 / 120 - 1 / (16 * math.pi**2)
  )
  return "square" if squareness > 0 else "circle"


def _smooth_track(track: np.ndarray) -> np.ndarray:
  """Drops undetected frames and median-filters each axis: [N, 2] -> [N, 2]."""
  track = track[~np.isnan(track).any(axis=1)]
  if len(track) >= TRACK_SMOOTHING:
    track = ndimage.median_filter(track, size=(TRACK_SMOOTHING, 1), mode="nearest")
  return track


def classify_motion(track: np.ndarray) -> str | None:
  """Motion name from a centroid track [T, 2] (x, y in frame fractions, NaN = missing).

  still: moves less than STILL_RANGE on both axes. Bouncing (diagonal, and
  reflecting off walls): the second axis moves too, or an axis reverses so
  that its net displacement is well below its range. Otherwise the sign of
  the net displacement on the moving axis names the direction.
  """
  track = _smooth_track(np.asarray(track, np.float64))
  if len(track) < 2:
    return None
  ranges = track.max(axis=0) - track.min(axis=0)  # [2]
  net = track[-1] - track[0]  # [2]
  if ranges.max() < STILL_RANGE:
    return "still"
  main = int(np.argmax(ranges))
  other = 1 - main
  if ranges[other] >= DRIFT_RANGE and ranges[other] >= DRIFT_RATIO * ranges[main]:
    return "bouncing"
  if abs(net[main]) < REVERSAL_RATIO * ranges[main]:
    return "bouncing"
  if main == 0:
    return "right" if net[0] > 0 else "left"
  return "down" if net[1] > 0 else "up"


# ----------------------------------------------------------------------------
# Reading a video.


def _empty_reading(num_frames: int, contrast: float) -> ShapeReading:
  return ShapeReading(
      color=None,
      shape=None,
      motion=None,
      track=np.full((num_frames, 2), np.nan),
      foreground=np.zeros(num_frames),
      contrast=contrast,
  )


def read_video(video) -> ShapeReading:
  """Reads colour, shape and motion of the shape in a uint8 video [T, H, W, 3].

  A one-frame video (an image) gets motion None. Raises ValueError only for
  malformed input; a video without a recognisable shape reads as all None.
  """
  video = _check_video(video)
  num_frames, height, width = video.shape[:3]
  chroma = _chroma(video)  # [T, H, W]
  # Detection runs on lightly smoothed chroma, so pixel noise cannot form blobs.
  smooth = ndimage.gaussian_filter(chroma, sigma=(0, DETECT_SIGMA, DETECT_SIGMA))  # [T, H, W]
  background, peak = _levels(smooth)
  contrast = peak - background
  if contrast < MIN_CONTRAST:
    return _empty_reading(num_frames, contrast)
  threshold = background + max(0.5 * contrast, MIN_THRESHOLD_MARGIN)
  blobs = _blobs(smooth, threshold)  # T x [H, W] or None
  found = [i for i, blob in enumerate(blobs) if blob is not None]
  if len(found) < max(1, MIN_FOUND_FRACTION * num_frames):
    return _empty_reading(num_frames, contrast)

  # The shape's own chroma and colour: medians over interior pixels.
  interior = np.zeros(chroma.shape, bool)  # [T, H, W]
  for i in found:
    interior[i] = _interior(blobs[i])
  shape_level = max(float(np.median(chroma[interior])), threshold + 1.0)
  rgb = np.median(video[interior].astype(np.float32), axis=0)  # [3]

  track = np.full((num_frames, 2), np.nan)  # [T, 2]
  foreground = np.zeros(num_frames)  # [T]
  inside, touching = [], []  # Per frame (fill, asymmetry, flatness).
  for i in found:
    alpha = _coverage(chroma[i], blobs[i], background, shape_level)  # [H, W]
    track[i] = _centroid(alpha)
    foreground[i] = alpha.sum() / (height * width)
    features = (_fill_ratio(alpha),) + _moment_features(alpha)
    (touching if _touches_border(blobs[i]) else inside).append(features)
  fill, asymmetry, flatness = np.median(np.array(inside or touching), axis=0)  # [3]

  return ShapeReading(
      color=classify_color(rgb),
      shape=classify_shape(fill, asymmetry, flatness),
      motion=classify_motion(track) if num_frames > 1 else None,
      track=track,
      foreground=foreground,
      fill=float(fill),
      asymmetry=float(asymmetry),
      flatness=float(flatness),
      rgb=tuple(float(c) for c in rgb),
      hue=_hue(rgb),
      contrast=contrast,
  )


# ----------------------------------------------------------------------------
# Scoring against prompts.


def _expected(prompt) -> dict[str, str]:
  """The colour / shape / motion a prompt (text or attribute dict) asks for."""
  wanted = shapes.parse_caption(prompt) if isinstance(prompt, str) else dict(prompt)
  return {k: v for k, v in wanted.items() if k in ATTRIBUTES}


def score_attributes(
    readings: Sequence[ShapeReading],
    expected: Sequence[dict],
    num_frames: Sequence[int] | None = None,
) -> dict:
  """Accuracy of readings against expected attribute dicts (one per video).

  An attribute counts only for the videos whose expectation names it (and,
  for motion, that have more than one frame when `num_frames` is given); a
  None reading is wrong. Returns per-attribute accuracy (None when no video
  was scored on it), 'mean' over the scored attributes, 'counts' and
  per-video 'details'.
  """
  if len(readings) != len(expected):
    raise ValueError(f"{len(readings)} readings but {len(expected)} expectations")
  if num_frames is None:
    num_frames = [len(r.track) for r in readings]
  hits = {a: [] for a in ATTRIBUTES}
  details = []
  for reading, wanted, frames in zip(readings, expected, num_frames):
    wanted = {k: v for k, v in wanted.items() if k in ATTRIBUTES}
    if frames < 2:
      wanted.pop("motion", None)  # An image shows no motion.
    got = reading.as_dict()
    correct = {a: got[a] == v for a, v in wanted.items()}
    for a, ok in correct.items():
      hits[a].append(ok)
    details.append(
        {
            "expected": wanted,
            "read": got,
            "correct": correct,
            "fill": reading.fill,
            "hue": reading.hue,
        }
    )
  result = {a: (float(np.mean(h)) if h else None) for a, h in hits.items()}
  scored = [v for v in result.values() if v is not None]
  result["mean"] = float(np.mean(scored)) if scored else None
  result["counts"] = {a: len(h) for a, h in hits.items()}
  result["details"] = details
  return result


def score(videos: Iterable, prompts: Sequence) -> dict:
  """Prompt-following accuracy of uint8 videos [T, H, W, 3] for their prompts.

  `videos` is a sequence of videos or one array [B, T, H, W, 3]; each prompt
  is a caption string (parsed with shapes.parse_caption) or an attribute
  dict. Returns {'color', 'shape', 'motion': accuracy, 'mean': their mean,
  'counts', 'details'}; motion is not scored on one-frame videos.
  """
  videos = list(videos)
  prompts = list(prompts)
  if len(videos) != len(prompts):
    raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
  readings = [read_video(v) for v in videos]
  frames = [np.shape(v)[0] for v in videos]
  expected = [_expected(p) for p in prompts]
  result = score_attributes(readings, expected, frames)
  for detail, prompt in zip(result["details"], prompts):
    detail["prompt"] = prompt
  return result
