"""Scores instruction-guided video edits of the shapes edit set from pixels.

An editing model gets a source clip of `mgjax.data.shapes_edit` and an instruction
("make the circle blue", "remove the green square", ...) and returns a clip. This
module reads both clips and says whether the edit happened (`success`), whether
everything else stayed as it was (`preserved`, comparing readings of the output
with readings of the source, so a bias of the checker cancels) and how much the
pixels away from the edited objects changed (`psnr_outside`).

Reading a scene (`read_scene`) relies on how the set is drawn, and must also read
what a model makes: clips decoded by a tiny TAE (8x compression in time and
space), blurry, with blotches on the 8-px latent grid, halos around objects and
pale markers. On TAE reconstructions of the truth it reads every attribute but the
shapes on >= 95% of clips (see the constants for what was measured):

* Foreground is "coloured or marker-coloured": chroma well above the near-grey
  backgrounds', or a min channel brighter / max channel darker than any background
  (the white and black markers), or, for markers as a TAE decodes them (tinted,
  with less contrast), far enough off the local background level. Each ramps from
  0 to 1 between fixed levels.
* The corner object is still and sits in a known box (shapes_edit.CORNER_CENTERS),
  which no lane path enters: it is read off the clip's temporal median inside the
  boxes, the main object outside them, frame by frame.
* An object's soft coverage is the projection of each pixel onto the line from the
  local background colour (median of a ring around the blob) to the object's
  colour, so antialiased and blurred edges count in proportion; colour and motion
  then follow mgjax.eval.shapes (hue, centroid track), shape blur-invariant complex
  moments (3-fold: triangle, 4-fold: square).
* The background is read from the brightness of pixels well away from objects
  (temporal median, so what changes between latent frames fades; then a robust
  plane fit, whose slope tells gradient from plain) by the amplitude spectrum of
  what is left: each texture puts its waves where shapes draws them (stripes: one
  wave in any direction; checkers: two equal diagonal waves; dots: two equal waves
  along x and y), all at periods longer than the latent grid's 8 px, while
  blotches spread over the spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mgjax.data import shapes, shapes_edit
from mgjax.data.shapes_edit import CORNER_CENTERS, MARKERS, Scene
from mgjax.eval import shapes as shape_checker

# Foreground evidence ramps (0..255 levels): from `lo` (background side, 0) to `hi` (1).
CHROMA_RAMP = (45.0, 100.0)  # Backgrounds <= ~40, shape colours >= 140 (>= 57 decoded).
WHITE_RAMP = (195.0, 240.0)  # Min channel: backgrounds <= ~180, white 250.
BLACK_RAMP = (70.0, 25.0)  # Max channel: backgrounds >= ~73, black 12.
# A TAE decodes the markers with little contrast: white as a pale lavender (object
# medians: min channel 163..210, 25..85 levels above the background level), black
# as a dark green (max channel 52..97, 38..105 below it); backgrounds stay within
# ~21 levels of their local level (dots 1.5 x contrast 14). So markers are also
# found by their contrast to the background level (see _background_level), gated by
# the channel that keeps shape colours out (their min channel <= 113, max >= 127).
CONTRAST_RAMP = (24.0, 40.0)  # |brightness - background level|.
WHITE_GATE = (120.0, 150.0)  # Min channel: shape colours <= 113, decoded white >= 163.
BLACK_GATE = (140.0, 110.0)  # Max channel: shape colours >= 127, decoded black <= 97.
WHITE_MIN, BLACK_MAX = 138.0, 112.0  # An object colour beyond these is a marker (midpoints).
LEVEL_SIGMA = 5.0  # Pixels; local mean of the background, over texture periods of 10..29 px.
LEVEL_OUTLIER = 30.0  # Levels off the background level: an object pixel, left out of it.
LEVEL_EDGE = 2  # Pixels around such objects also left out.
DETECT_SIGMA = 0.75  # Pixels; spatial smoothing of the evidence before thresholding.
MIN_BLOB_FRACTION, MIN_BLOB_PIXELS = 0.002, 4  # As mgjax.eval.shapes.
MIN_FOUND_FRACTION = 0.5  # Frames that must show the main object.
TAIL_LEVEL = 0.2  # Soft coverage kept above this next to a blob, as the shapes checker.
CORNER_MARGIN = 1.0  # Pixels around the largest corner object's box.
# A corner blob must cover this fraction of the smallest corner object (a triangle).
MIN_EXTRA_AREA = 0.3
# An object colour with less chroma is a marker (white or black); decoded markers
# (chroma up to ~85) are caught by WHITE_MIN and BLACK_MAX first.
MARKER_CHROMA = 40.0
# Shapes (see _shape_features). Measured on the soft masks of TAE reconstructions of
# 508 objects (main and corner): the triangle score errs on 6..9 (renders: triangle
# >= ~1.6, circle and square <= ~0.3); `cornered` tells a square from a circle on
# ~89% (median -0.0099 | -0.0007; a TAE rounds the corners), renders on all.
TRIANGLE_LOPSIDED = 0.066  # Sharp up-pointing triangle.
CIRCLE_SPREAD, TRIANGLE_SPREAD = 1 / (16 * math.pi**2), 0.0093
SPREAD_WEIGHT = 0.5
TRIANGLE_SCORE = 0.5
SQUARE_CORNERED = -0.004  # Square -1/60, circle 0.

# Background: objects masked out with this evidence level, dilated by this much:
# a TAE's decoder leaves halos up to ~10 px around objects.
MASK_LEVEL = 0.1
MASK_DILATION = 10
MIN_BACKGROUND_FRACTION = 0.2  # Of the frame, needed to read the background.
# The textures are read off the amplitude spectrum (levels) of the static background
# (see background_features). Measured on TAE reconstructions of 368 ground-truth
# clips (64x64x32), 2% / 98% quantiles [min / max]; renders (contrast 8..14) are
# far apart:
#   stripes (strongest wave at a texture frequency): plain, gradient <= 1.4 [1.6];
#     striped >= 3.7 [2.9], checkered >= 4.8 [4.6], dotted >= 2.0 [1.9].
#   dots (weaker of the two waves along x and y at one frequency): plain, gradient
#     <= 1.1 [1.2]; dotted >= 1.7 [1.4].
#   checks (weaker of the two diagonal waves): striped <= 1.6 [1.6]; checkered >= 4.0 [3.8].
# Stripes, or checks, of at least this: plain, gradient | striped, checkered, dotted.
TEXTURE_AMPLITUDE = 2.2
DOTS_AMPLITUDE = 1.3  # Or dots this strong: plain, gradient | dotted.
DOTS_RATIO = 0.5  # Dots / stripes: striped, checkered <= 0.28 [0.33] | dotted >= 0.78 [0.74].
CHECKS_RATIO = 0.5  # Checks / stripes: striped <= 0.16 [0.22] | checkered >= 0.78 [0.73].
# Plane slope, levels per frame length: plain ~0 | gradient >= ~17 on renders; TAE
# reconstructions: plain <= 9.8 [10.6], gradient >= 7.7 (2%), >= 10.5 (5%) [4.4]: a
# TAE can flatten a gradient to a third, which no threshold recovers.
GRADIENT_SLOPE = 10.0
PLANE_ITERATIONS, PLANE_TUKEY = 3, 2.5  # Robust refits of the plane; cut-off in sigmas.
FREQUENCY_MARGIN = 0.1  # Relative, around the textures' frequency ranges.
FREQUENCY_OVERSAMPLING = 2  # Grid steps per DFT bin (1 / frame side) the amplitudes are read on.

PSNR_CAP = 100.0  # dB, for identical pixels.
PSNR_DILATION = 2  # Pixels around the objects left out of psnr_outside.
MARKED_FRACTION = 0.5  # Of the object's interior near the marker colour: segmented.
# A marked pixel: beyond WHITE_MIN / BLACK_MAX and this far off the background
# level, so a background that shows where the object was never counts.
MARKED_CONTRAST = 15.0
# Averaged into "main" by score_edits; shape and segment are reported on their own.
MAIN_KINDS = ("color", "background", "motion", "add", "remove")
# Readings compared for preservation, and the ones each edit is allowed to change.
READ_ATTRIBUTES = ("color", "shape", "motion", "background", "extra", "extra_color", "extra_shape")
TOUCHED = {
    "color": ("color",),
    "shape": ("shape",),
    "background": ("background",),
    "motion": ("motion",),
    "add": ("extra", "extra_color", "extra_shape"),
    "remove": ("extra", "extra_color", "extra_shape"),
}


# 4-connected growth within each frame of a [T, H, W] mask, never across frames.
_SPATIAL = ndimage.generate_binary_structure(2, 1)[None]

# ----------------------------------------------------------------------------
# Foreground.


def _ramp(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return np.clip((value - lo) / (hi - lo), 0.0, 1.0)


def _extremes(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(max, min) channel as float32: [..., H, W, 3] -> 2 x [..., H, W]."""
  r, g, b = (video[..., c].astype(np.float32) for c in range(3))
  return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def _brightness(video: np.ndarray) -> np.ndarray:
  """Channel mean as float32: [..., H, W, 3] -> [..., H, W], from the channel planes
  (several times faster than numpy's mean over a last axis of 3)."""
  r, g, b = (video[..., c].astype(np.float32) for c in range(3))
  return (r + g + b) / 3.0


def _smooth(strength: np.ndarray) -> np.ndarray:
  """Spatial Gaussian smoothing of [..., H, W], so pixel noise forms no blobs."""
  sigma = (0,) * (strength.ndim - 2) + (DETECT_SIGMA, DETECT_SIGMA)
  return ndimage.gaussian_filter(strength, sigma=sigma)


def _masked_mean(image: np.ndarray, keep: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian-weighted mean of image [H, W] over the pixels `keep`, at every pixel."""
  weight = ndimage.gaussian_filter(keep.astype(np.float64), sigma)
  total = ndimage.gaussian_filter(np.where(keep, image, 0.0), sigma)
  if (weight > 1e-3).all():
    return total / weight
  fallback = float(np.median(image[keep])) if keep.any() else float(np.median(image))
  return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), fallback)


def _background_level(still: np.ndarray, coloured: np.ndarray) -> np.ndarray:
  """Local mean brightness of the background [H, W] from a still image [H, W].

  Averaged over LEVEL_SIGMA without the `coloured` pixels and those off the running
  estimate by LEVEL_OUTLIER (still objects, markers; with their blurred edges,
  LEVEL_EDGE). The first estimate is the median, which objects, a minority of the
  frame, cannot drag; a local one could be, inside a large still object.
  """
  grey = still[~coloured] if (~coloured).any() else still
  level = np.full_like(still, np.median(grey))
  for _ in range(2):
    off = ndimage.binary_dilation(
        coloured | (np.abs(still - level) >= LEVEL_OUTLIER), iterations=LEVEL_EDGE
    )
    level = _masked_mean(still, ~off, LEVEL_SIGMA)
  return level


def _contrast(video: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
  """Brightness minus the background level: [T, H, W, 3] -> [T, H, W].

  The level comes from the temporal median, where moving objects vanish; `high`,
  `low`: _extremes(video).
  """
  brightness = _brightness(video)
  still = np.median(brightness, axis=0).astype(np.float64)  # [H, W]
  level = _background_level(still, np.median(high - low, axis=0) >= CHROMA_RAMP[0])
  return brightness - level


def _marker_strengths(video: np.ndarray) -> dict[str, np.ndarray]:
  """Per marker, how much each pixel looks like it: [T, H, W, 3] -> {name: [T, H, W]}.

  Far beyond any background (WHITE_RAMP, BLACK_RAMP), or off the background level
  by CONTRAST_RAMP with the gate channel out of the shape colours' range.
  """
  high, low = _extremes(video)
  contrast = _contrast(video, high, low)
  white = np.minimum(_ramp(contrast, *CONTRAST_RAMP), _ramp(low, *WHITE_GATE))
  black = np.minimum(_ramp(-contrast, *CONTRAST_RAMP), _ramp(high, *BLACK_GATE))
  return {
      "white": np.maximum(_ramp(low, *WHITE_RAMP), white),
      "black": np.maximum(_ramp(high, *BLACK_RAMP), black),
  }


def _evidence(video: np.ndarray, markers: dict[str, np.ndarray] | None = None) -> np.ndarray:
  """Foreground strength in [0, 1], smoothed: [T, H, W, 3] uint8 -> [T, H, W].

  `markers`: _marker_strengths(video), when already at hand.
  """
  high, low = _extremes(video)
  markers = _marker_strengths(video) if markers is None else markers
  strength = np.maximum(_ramp(high - low, *CHROMA_RAMP), np.maximum(*markers.values()))
  return _smooth(strength)


def corner_boxes(height: int, width: int) -> dict[str, tuple[slice, slice]]:
  """Pixel box (rows, columns) of each corner object's place, with CORNER_MARGIN."""
  half = max(shapes_edit.EXTRA_SIZE_RANGE) * min(height, width) / 2 + CORNER_MARGIN
  boxes = {}
  for corner, (cx, cy) in CORNER_CENTERS.items():
    x0, x1 = max(0, math.floor(cx * width - half)), min(width, math.ceil(cx * width + half))
    y0, y1 = max(0, math.floor(cy * height - half)), min(height, math.ceil(cy * height + half))
    boxes[corner] = (slice(y0, y1), slice(x0, x1))
  return boxes


def _largest_blob(mask: np.ndarray, min_pixels: float) -> np.ndarray | None:
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if count == 0:
    return None
  sizes = np.bincount(labels.ravel())[1:]
  best = int(np.argmax(sizes))
  return labels == best + 1 if sizes[best] >= min_pixels else None


def _interior(blob: np.ndarray) -> np.ndarray:
  core = ndimage.binary_erosion(blob)
  return core if core.any() else blob


def _soft_coverage(
    frame: np.ndarray, blob: np.ndarray, color: np.ndarray, evidence: np.ndarray
) -> np.ndarray:
  """Coverage in [0, 1] of one object around its blob: [H, W].

  Each pixel is projected onto the segment from the local background colour (the
  median of a ring 2-3 px around the blob, other blobs left out) to the object's
  colour; only the blob and its connected soft fringe count. Works on a crop
  around the blob, which holds all of that.
  """
  full_shape = blob.shape
  rows, cols = np.nonzero(blob)
  pad = 5
  y0, x0 = max(0, rows.min() - pad), max(0, cols.min() - pad)
  crop = (slice(y0, rows.max() + pad + 1), slice(x0, cols.max() + pad + 1))
  frame, blob, evidence = frame[crop], blob[crop], evidence[crop]
  strong, _ = ndimage.label(evidence > 0.5, structure=np.ones((3, 3), bool))
  others = (strong > 0) & ~np.isin(strong, np.unique(strong[blob]))  # Other objects.
  near = ndimage.binary_dilation(blob, iterations=1)
  ring = ndimage.binary_dilation(blob, iterations=3) & ~near & ~others
  background = np.median(frame[ring], axis=0) if ring.any() else np.median(frame, axis=(0, 1))
  direction = color - background  # [3]
  alpha = (frame - background) @ direction / max(float(direction @ direction), 1e-6)
  alpha = np.clip(alpha, 0.0, 1.0)  # [h, w]
  labels, _ = ndimage.label((alpha > TAIL_LEVEL) | blob, structure=np.ones((3, 3), bool))
  region = ndimage.binary_dilation(np.isin(labels, np.unique(labels[blob])), iterations=1)
  alpha = np.where(region, alpha, 0.0)
  if alpha.sum() <= 0.5:
    alpha = blob.astype(np.float64)
  out = np.zeros(full_shape, np.float64)  # [H, W]
  out[crop] = alpha
  return out


def color_name(rgb) -> str:
  """A shapes colour name, or "white" / "black" for a marker-coloured object."""
  rgb = np.asarray(rgb, np.float64)
  if rgb.min() >= WHITE_MIN:
    return "white"
  if rgb.max() <= BLACK_MAX:
    return "black"
  if rgb.max() - rgb.min() < MARKER_CHROMA:
    return min(MARKERS, key=lambda m: np.linalg.norm(rgb - np.asarray(MARKERS[m])))
  return shape_checker.classify_color(rgb)


def _shape_features(alpha: np.ndarray) -> tuple[float, float, float]:
  """(lopsided, cornered, spread) of a soft mask [H, W], from complex moments.

  With z = (x - cx) + i (y - cy) about the centroid, sum(alpha z^k) / area^(k/2+1)
  for k >= 3 does not change when an isotropic blur is convolved in (the blur's
  complex moments vanish). lopsided = Im k=3, the 3-fold asymmetry of the
  up-pointing triangle (0.066; circle, square 0); cornered = Re k=4, the 4-fold
  one of the axis-aligned square (-1/60; circle, triangle 0). spread = k2x k2y /
  area^2 of the row and column profiles (circle 1/(16 pi^2) ~0.0063, square 1/144,
  triangle ~0.0093) grows with blur, but more for the triangle, which has the
  least area for its size; a TAE keeps it where it rounds the triangle's corners.
  """
  height, width = alpha.shape
  area = float(alpha.sum())
  y, x = np.mgrid[0:height, 0:width] + 0.5
  cx, cy = (alpha * x).sum() / area, (alpha * y).sum() / area
  z = (x - cx) + 1j * (y - cy)
  z2 = z * z
  lopsided = float((alpha * z2 * z).sum().imag) / area**2.5
  cornered = float((alpha * z2 * z2).sum().real) / area**3
  k2x = (alpha.sum(axis=0) * (x[0] - cx) ** 2).sum() / area
  k2y = (alpha.sum(axis=1) * (y[:, 0] - cy) ** 2).sum() / area
  return lopsided, cornered, float(k2x * k2y) / area**2


def classify_shape(lopsided: float, cornered: float, spread: float) -> str:
  """circle / square / triangle from _shape_features.

  Triangle: lopsidedness in units of a sharp triangle's, plus SPREAD_WEIGHT times
  the spread's excess over a circle's in units of the triangle-circle gap, above
  TRIANGLE_SCORE. Square: cornered below SQUARE_CORNERED.
  """
  score = lopsided / TRIANGLE_LOPSIDED + SPREAD_WEIGHT * (spread - CIRCLE_SPREAD) / (
      TRIANGLE_SPREAD - CIRCLE_SPREAD
  )
  if score > TRIANGLE_SCORE:
    return "triangle"
  return "square" if cornered < SQUARE_CORNERED else "circle"


def _shape_of(alphas: list[np.ndarray], blobs: list[np.ndarray]) -> str:
  """classify_shape on the median features of frames clear of the border."""
  inside, touching = [], []
  for alpha, blob in zip(alphas, blobs):
    features = _shape_features(alpha)
    (touching if shape_checker._touches_border(blob) else inside).append(features)
  return classify_shape(*np.median(np.array(inside or touching), axis=0))


# ----------------------------------------------------------------------------
# Objects.


def _read_main(video: np.ndarray, evidence: np.ndarray, boxes) -> dict:
  """Colour, shape, motion and track of the largest object outside the corner boxes."""
  num_frames, height, width = evidence.shape
  mask = evidence > 0.5  # [T, H, W]
  corners = np.zeros((height, width), bool)
  for rows, cols in boxes.values():
    corners[rows, cols] = True
  mask &= ~corners
  min_pixels = max(MIN_BLOB_PIXELS, MIN_BLOB_FRACTION * height * width)
  blobs = [_largest_blob(m, min_pixels) for m in mask]
  found = [i for i, b in enumerate(blobs) if b is not None]
  track = np.full((num_frames, 2), np.nan)
  if len(found) < max(1, MIN_FOUND_FRACTION * num_frames):
    return {"color": None, "shape": None, "motion": None, "track": track}
  interior = np.stack([_interior(blobs[i]) for i in found])  # [N, H, W]
  color = np.median(video[found][interior].astype(np.float32), axis=0)  # [3]
  alphas = []
  for i in found:
    alpha = _soft_coverage(video[i].astype(np.float32), blobs[i], color, evidence[i])
    track[i] = shape_checker._centroid(alpha)
    alphas.append(alpha)
  motion = shape_checker.classify_motion(track) if num_frames > 1 else None
  return {
      "color": color_name(color),
      "shape": _shape_of(alphas, [blobs[i] for i in found]),
      "motion": motion,
      "track": track,
  }


def _read_extra(video: np.ndarray, boxes) -> tuple[dict | None, int]:
  """The still corner object ({"color", "shape", "corner"} or None), and how many
  corners hold one, read off the temporal median frame."""
  height, width = video.shape[1:3]
  still = np.median(video.astype(np.float32), axis=0)  # [H, W, 3]
  evidence = _evidence(np.clip(np.rint(still), 0, 255).astype(np.uint8)[None])[0]  # [H, W]
  smallest = min(shapes_edit.EXTRA_SIZE_RANGE) * min(height, width)
  min_pixels = max(MIN_BLOB_PIXELS, MIN_EXTRA_AREA * math.sqrt(3) / 4 * smallest**2)
  found = []
  for corner, (rows, cols) in boxes.items():
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = evidence[rows, cols] > 0.5
    blob = _largest_blob(mask, min_pixels)
    if blob is not None:
      found.append((int(blob.sum()), corner, blob))
  if not found:
    return None, 0
  _, corner, blob = max(found, key=lambda f: f[0])
  color = np.median(still[_interior(blob)], axis=0)
  alpha = _soft_coverage(still, blob, color, evidence)
  reading = {"color": color_name(color), "shape": _shape_of([alpha], [blob]), "corner": corner}
  return reading, len(found)


def _marker_frames(video: np.ndarray, markers: dict[str, np.ndarray]) -> dict[str, float]:
  """Per marker, the fraction of frames showing a blob of that colour (`markers`:
  _marker_strengths(video))."""
  num_frames, height, width = video.shape[:3]
  min_pixels = max(MIN_BLOB_PIXELS, MIN_BLOB_FRACTION * height * width)
  out = {}
  for name, strength in markers.items():
    masks = _smooth(strength) > 0.5  # [T, H, W]
    out[name] = float(np.mean([_largest_blob(m, min_pixels) is not None for m in masks]))
  return out


# ----------------------------------------------------------------------------
# Background.


def _texture_bands(height: int, width: int) -> dict[str, tuple[float, float]]:
  """Frequency range (cycles per pixel) of each texture's fundamental, as shapes
  draws them: stripes' period, dots' spacing, checkers' diagonal waves per axis."""
  short = min(height, width)
  low, high = (s * short for s in shapes.TEXTURE_SCALE_RANGE)
  periods = {
      "stripes": (max(shapes.MIN_TEXTURE_PERIOD, low), max(shapes.MIN_TEXTURE_PERIOD, high)),
      "dots": (max(10.0, low), max(10.0, high)),
      # Cells of side c: sin(pi x / c) sin(pi y / c) is two waves along the diagonals,
      # each of period 2c along x and along y.
      "checks": tuple(2 * max(shapes.MIN_TEXTURE_PERIOD, 0.75 * p) for p in (low, high)),
  }
  return {
      name: ((1 - FREQUENCY_MARGIN) / longest, (1 + FREQUENCY_MARGIN) / shortest)
      for name, (shortest, longest) in periods.items()
  }


def _amplitudes(field: np.ndarray, valid: np.ndarray, size: int, n: int) -> np.ndarray:
  """Least-squares amplitude of a sinusoid a cos(k.x) + b sin(k.x) fitted to field
  [H, W] over the `valid` pixels only, at k = 2 pi (u, v) / size for v in 0..n and
  u in -n..n: [n + 1, 2n + 1].

  The fit needs the sums of r e^(-ik.x) and of e^(-2ik.x) over the valid pixels:
  two zero-padded FFTs give them on the whole grid.
  """
  data = np.fft.fft2(np.where(valid, field, 0.0), (size, size))
  twice = np.fft.fft2(valid.astype(np.float64), (size, size))
  u, v = np.arange(-n, n + 1)[None, :], np.arange(n + 1)[:, None]
  data, twice = data[v, u % size], twice[(2 * v) % size, (2 * u) % size]  # [n + 1, 2n + 1]
  count = float(valid.sum())
  rc, rs = data.real, -data.imag  # Sums of r cos, r sin.
  cc, ss, cs = (count + twice.real) / 2, (count - twice.real) / 2, -twice.imag / 2
  det = np.maximum(cc * ss - cs**2, 1e-6)
  return np.hypot(ss * rc - cs * rs, cc * rs - cs * rc) / det


def _robust_plane(design: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Least-squares plane [3] of values [N] over design [N, 3], then refitted with
  Tukey's biweight (PLANE_TUKEY robust sigmas) so a TAE's halos and blotches, which
  a texture-free background shows as outliers, pull it less."""
  weight = np.ones_like(values)
  for _ in range(PLANE_ITERATIONS + 1):
    plane, *_ = np.linalg.lstsq(design * weight[:, None], values * weight, rcond=None)
    residual = values - design @ plane
    scale = PLANE_TUKEY * 1.4826 * float(np.median(np.abs(residual))) + 1e-6
    weight = np.clip(1.0 - (residual / scale) ** 2, 0.0, 1.0)
  return plane


def background_features(video: np.ndarray, evidence: np.ndarray | None = None) -> dict | None:
  """Texture measurements of the background with objects masked out (None if hidden).

  Brightness is the channel mean (textures shift all channels alike); each pixel's
  background is its median over the frames where no object is near it, so the
  latent noise of a TAE, which changes between latent frames, fades, and the
  static texture stays. After a plane fit ("slope": the gradient), the residual's
  amplitude spectrum says which texture is there, from where its waves lie (shapes
  draws them at known periods, all longer than a TAE's 8-px latent grid):
  "stripes": the strongest wave at a stripe frequency, any direction; "checks": two
  equal waves along both diagonals (axis-aligned cells); "dots": two equal waves
  along x and y (a square grid of dots). Blur and blotches spread over the spectrum
  and rarely make two matched waves.
  """
  if evidence is None:
    evidence = _evidence(video)
  num_frames, height, width = evidence.shape
  masked = ndimage.binary_dilation(
      evidence > MASK_LEVEL, structure=_SPATIAL, iterations=MASK_DILATION
  )  # [T, H, W]
  valid = ~masked.all(axis=0)  # [H, W]
  if valid.mean() < MIN_BACKGROUND_FRACTION:
    return None
  brightness = np.where(masked, np.nan, _brightness(video))  # [T, H, W]
  with np.errstate(all="ignore"):
    image = np.nanmedian(brightness[:, valid], axis=0)  # [N]
  y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
  ys, xs = y[valid] / height - 0.5, x[valid] / width - 0.5
  design = np.stack([np.ones_like(xs), xs, ys], axis=1)  # [N, 3]
  plane = _robust_plane(design, image)
  field = np.zeros((height, width))
  field[valid] = image - design @ plane

  bands = _texture_bands(height, width)
  size = FREQUENCY_OVERSAMPLING * max(height, width)  # One grid step: 1 / size cycles per px.
  n = math.ceil(max(hi for _, hi in bands.values()) * size)
  amplitude = _amplitudes(field, valid, size, n)  # [n + 1, 2n + 1]
  fy, fx = np.arange(n + 1)[:, None] / size, np.arange(-n, n + 1)[None, :] / size

  def within(name, f):
    lo, hi = bands[name]
    return (f >= lo) & (f <= hi)

  radius = np.hypot(fx, fy)
  stripes = float(amplitude[within("stripes", radius)].max())
  j = np.arange(n + 1)
  on_axes = np.minimum(amplitude[0, n + j], amplitude[j, n])  # (0, f) and (f, 0).
  on_diagonals = np.minimum(amplitude[j, n + j], amplitude[j, n - j])  # (f, f), (f, -f).
  dots = float(on_axes[within("dots", j / size)].max())
  checks = float(on_diagonals[within("checks", j / size)].max())
  return {
      "slope": float(math.hypot(plane[1], plane[2])),
      "stripes": stripes,
      "checks": checks,
      "dots": dots,
      "visible": float(valid.mean()),
  }


def classify_background(features: dict | None) -> str | None:
  """One of shapes.BACKGROUNDS from background_features (None when unreadable).

  A texture needs a strong wave; dots and checks need both of their waves strong
  and on a par with the strongest, so a faint wave or blotch makes no pattern.
  """
  if features is None:
    return None
  stripes, checks, dots = features["stripes"], features["checks"], features["dots"]
  if stripes < TEXTURE_AMPLITUDE and dots < DOTS_AMPLITUDE:
    return "gradient" if features["slope"] > GRADIENT_SLOPE else "plain"
  if dots >= DOTS_AMPLITUDE and dots >= DOTS_RATIO * stripes:
    return "dotted"
  if checks >= TEXTURE_AMPLITUDE and checks >= CHECKS_RATIO * stripes:
    return "checkered"
  return "striped"


# ----------------------------------------------------------------------------
# Reading a scene.


def read_scene(video) -> dict:
  """What a uint8 video [T, H, W, 3] shows, as far as the edit checker reads it.

  {"color", "shape", "motion": the main (largest, non-corner) object, None when
  absent; "background": one of shapes.BACKGROUNDS or None; "extra": {"color",
  "shape", "corner"} of a still corner object or None; "extras": how many corners
  hold one; "marker": {"white", "black": fraction of frames showing a blob of that
  marker colour}; "background_features"; "track" [T, 2]}. A colour reads "white"
  or "black" for a marker-painted object. Raises ValueError only on malformed input.
  """
  video = shape_checker._check_video(video)
  height, width = video.shape[1:3]
  markers = _marker_strengths(video)  # name -> [T, H, W]
  evidence = _evidence(video, markers)  # [T, H, W]
  boxes = corner_boxes(height, width)
  main = _read_main(video, evidence, boxes)
  extra, extras = _read_extra(video, boxes)
  features = background_features(video, evidence)
  return {
      "color": main["color"],
      "shape": main["shape"],
      "motion": main["motion"],
      "background": classify_background(features),
      "extra": extra,
      "extras": extras,
      "marker": _marker_frames(video, markers),
      "background_features": features,
      "track": main["track"],
  }


def _flat(reading: dict) -> dict:
  """The READ_ATTRIBUTES of a reading."""
  extra = reading["extra"] or {}
  return {
      "color": reading["color"],
      "shape": reading["shape"],
      "motion": reading["motion"],
      "background": reading["background"],
      "extra": extra.get("corner"),
      "extra_color": extra.get("color"),
      "extra_shape": extra.get("shape"),
  }


# ----------------------------------------------------------------------------
# Scoring.


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
  """PSNR (dB, peak 255) of two uint8 videos over the pixels `where` [T, H, W]."""
  if not where.any():
    return None
  diff = a.astype(np.float64)[where] - b.astype(np.float64)[where]  # [N, 3]
  mse = float(np.mean(diff**2))
  return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def _psnr_region(source_scene: Scene, target_scene: Scene, kind: str, shape) -> np.ndarray:
  """Pixels psnr_outside compares: [T, H, W] bool.

  Away from every object of source and target (dilated by PSNR_DILATION); for
  background edits, inside them instead (eroded by one pixel), where the
  background is the one thing that must not show.
  """
  num_frames, height, width = shape
  union = np.maximum(
      shapes_edit.object_coverage(source_scene, num_frames, height, width),
      shapes_edit.object_coverage(target_scene, num_frames, height, width),
  )  # [T, H, W]
  if kind == "background":
    return ndimage.binary_erosion(union >= 0.99, structure=_SPATIAL)
  return ~ndimage.binary_dilation(union > 0.01, structure=_SPATIAL, iterations=PSNR_DILATION)


def _marked_fraction(output: np.ndarray, target_scene: Scene) -> float:
  """Fraction of the marked object's interior (target_scene) in its marker colour.

  A pixel counts when it is past WHITE_MIN (BLACK_MAX) and MARKED_CONTRAST off the
  background level: decoded markers are pale or dark but tinted (see
  CONTRAST_RAMP), shape colours never pass, and a background showing through
  rarely does.
  """
  num_frames, height, width = output.shape[:3]
  coverage = shapes_edit.object_coverage(
      target_scene, num_frames, height, width, which=target_scene.marked
  )
  inside = ndimage.binary_erosion(coverage >= 0.99, structure=_SPATIAL)
  if not inside.any():
    inside = coverage >= 0.5
  if not inside.any():
    return 0.0
  high, low = _extremes(output)
  contrast = _contrast(output, high, low)[inside]
  high, low = high[inside], low[inside]
  if target_scene.marker == "white":
    marked = (low >= WHITE_MIN) & (contrast >= MARKED_CONTRAST)
  else:
    marked = (high <= BLACK_MAX) & (contrast <= -MARKED_CONTRAST)
  return float(np.mean(marked))


def _success(kind: str, after, read: dict, output: np.ndarray, target_scene: Scene):
  if kind in ("color", "shape", "motion", "background"):
    return read[kind] == after, None
  if kind == "add":
    return read["extra"] == after, None
  if kind == "remove":
    return read["extra"] is None, None
  fraction = _marked_fraction(output, target_scene)
  return fraction >= MARKED_FRACTION, fraction


def score_edit(
    source_video,
    output_video,
    record: dict,
    source_reading: dict | None = None,
    output_reading: dict | None = None,
) -> dict:
  """Scores one edit (a shapes_edit record) from the source and the model's output.

  {"success": the edited attribute reads the new value (add: a corner object of
  the added colour and shape in the named corner; remove: no corner object;
  segment: MARKED_FRACTION of the named object's interior, where target_scene
  puts it, in the marker colour: see _marked_fraction); "preserved": fraction of
  the other READ_ATTRIBUTES reading the same on output and source (the corner
  object's colour and shape only when the source shows one, motion only for
  clips); "psnr_outside": see _psnr_region (None when no pixel qualifies); and
  for diagnosis "same" (per compared attribute), "source_read" and "output_read"
  (READ_ATTRIBUTES), "marked_fraction" (segment only)}. Pass read_scene results
  as source_reading / output_reading to reuse them.
  """
  source = shape_checker._check_video(source_video)
  output = shape_checker._check_video(output_video)
  if source.shape != output.shape:
    raise ValueError(f"source {source.shape} and output {output.shape} differ in shape")
  edit = record["edit"]
  kind = edit["kind"]
  if kind not in shapes_edit.EDIT_KINDS:
    raise ValueError(f"record edit kind {kind!r} is not one of {shapes_edit.EDIT_KINDS}")
  source_scene = shapes_edit.scene_from_dict(record["source_scene"])
  target_scene = shapes_edit.scene_from_dict(record["target_scene"])
  source_reading = source_reading or read_scene(source)
  output_reading = output_reading or read_scene(output)
  success, marked = _success(kind, edit["after"], output_reading, output, target_scene)

  touched = TOUCHED.get(kind, ())
  if kind == "segment":
    touched = ("color",) if edit["after"]["object"] == "main" else ("extra_color",)
  before, now = _flat(source_reading), _flat(output_reading)
  compared = [a for a in READ_ATTRIBUTES if a not in touched]
  if before["extra"] is None:
    compared = [a for a in compared if a not in ("extra_color", "extra_shape")]
  if source.shape[0] < 2:  # An image shows no motion.
    compared = [a for a in compared if a != "motion"]
  same = {a: before[a] == now[a] for a in compared}
  region = _psnr_region(source_scene, target_scene, kind, source.shape[:3])
  return {
      "kind": kind,
      "success": bool(success),
      "preserved": float(np.mean(list(same.values()))) if same else 1.0,
      "psnr_outside": _psnr(output, source, region),
      "marked_fraction": marked,
      "same": same,
      "source_read": before,
      "output_read": now,
      "after": edit["after"],
  }


def score_edits(sources: Sequence, outputs: Sequence, records: Sequence[dict]) -> dict:
  """score_edit over many edits, summarised per kind.

  {kind: {"success", "preserved", "psnr_outside" (means), "count"} for each kind
  present; "main": the means over MAIN_KINDS' per-kind numbers (the headline;
  shape and segment are reported on their own); "details": per-record results}.
  """
  if not len(sources) == len(outputs) == len(records):
    raise ValueError(f"{len(sources)} sources, {len(outputs)} outputs, {len(records)} records")
  details = [score_edit(s, o, r) for s, o, r in zip(sources, outputs, records)]
  result = {}
  for kind in shapes_edit.EDIT_KINDS:
    mine = [d for d in details if d["kind"] == kind]
    if not mine:
      continue
    psnrs = [d["psnr_outside"] for d in mine if d["psnr_outside"] is not None]
    result[kind] = {
        "success": float(np.mean([d["success"] for d in mine])),
        "preserved": float(np.mean([d["preserved"] for d in mine])),
        "psnr_outside": float(np.mean(psnrs)) if psnrs else None,
        "count": len(mine),
    }
  present = [result[k] for k in MAIN_KINDS if k in result]
  main = {}
  for name in ("success", "preserved", "psnr_outside"):
    values = [r[name] for r in present if r[name] is not None]
    main[name] = float(np.mean(values)) if values else None
  main["count"] = sum(r["count"] for r in present)
  result["main"] = main
  result["details"] = details
  return result
