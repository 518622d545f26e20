"""Scores instruction-guided video edits of the shapes edit set from pixels.

An editing model gets a source clip of `mgjax.data.shapes_edit` and an instruction
("make the circle blue", "remove the green square", ...) and returns a clip. This
module reads both clips and says whether the edit happened (`success`), whether
everything else stayed as it was (`preserved`, comparing readings of the output
with readings of the source, so a bias of the checker cancels) and how much the
pixels away from the edited objects changed (`psnr_outside`).

Reading a scene (`read_scene`) relies on how the set is drawn:

* Foreground is "coloured or marker-coloured": chroma well above the near-grey
  backgrounds', or a min channel brighter / max channel darker than any background
  (the white and black markers). Each ramps from 0 to 1 between fixed levels.
* The corner object is still and sits in a known box (shapes_edit.CORNER_CENTERS),
  which no lane path enters: it is read off the clip's temporal median inside the
  boxes, the main object outside them, frame by frame.
* An object's soft coverage is the projection of each pixel onto the line from the
  local background colour (median of a ring around the blob) to the object's
  colour, so antialiased and blurred edges count in proportion; colour, shape and
  motion then follow mgjax.eval.shapes (hue, blur-invariant mask cumulants,
  centroid track).
* The background is classified from the brightness of pixels away from objects
  (temporal median, then a plane fit): little residual texture means plain, or
  gradient when the plane is steep; dots are the only texture whose brightness
  histogram is lopsided (bright dots on ~80% base: skewness ~1.5); stripes have
  one gradient direction (structure-tensor coherence ~1), checkers two
  (axis-aligned edges: coherence ~0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mgjax.data import shapes_edit
from mgjax.data.shapes_edit import CORNER_CENTERS, MARKERS, Scene
from mgjax.eval import shapes as shape_checker

# Foreground evidence ramps (0..255 levels): from `lo` (background side, 0) to `hi` (1).
CHROMA_RAMP = (45.0, 100.0)  # Backgrounds <= ~40, shape colours >= 140.
WHITE_RAMP = (195.0, 240.0)  # Min channel: backgrounds <= ~180, white 250.
BLACK_RAMP = (70.0, 25.0)  # Max channel: backgrounds >= ~73, black 12.
DETECT_SIGMA = 0.75  # Pixels; spatial smoothing of the evidence before thresholding.
MIN_BLOB_FRACTION, MIN_BLOB_PIXELS = 0.002, 4  # As mgjax.eval.shapes.
MIN_FOUND_FRACTION = 0.5  # Frames that must show the main object.
TAIL_LEVEL = 0.2  # Soft coverage kept above this next to a blob, as the shapes checker.
CORNER_MARGIN = 1.0  # Pixels around the largest corner object's box.
# A corner blob must cover this fraction of the smallest corner object (a triangle).
MIN_EXTRA_AREA = 0.3
MARKER_CHROMA = 60.0  # An object colour with less chroma is a marker (white or black).

# Background: objects masked out with this evidence level, dilated by this much.
MASK_LEVEL, MASK_DILATION = 0.1, 3
MIN_BACKGROUND_FRACTION = 0.2  # Of the frame, needed to read the background.
TEXTURE_STD = 2.5  # Residual brightness std (levels) below this: no texture.
GRADIENT_SLOPE = 8.0  # Levels per frame length: plain | gradient (>= ~17).
DOT_SKEW = 0.6  # Brightness skewness: stripes, checkers ~0 | dots ~1.5.
STRIPE_COHERENCE = 0.5  # Structure-tensor coherence: checkers ~0 | stripes ~1.
TENSOR_SIGMA = 1.0  # Pixels; smoothing of the residual texture (see background_features).

PSNR_CAP = 100.0  # dB, for identical pixels.
PSNR_DILATION = 2  # Pixels around the objects left out of psnr_outside.
MARKED_FRACTION = 0.5  # Of the object's interior near the marker colour: segmented.
MARKER_TOLERANCE = 60.0  # RGB distance to the marker colour.
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


def _smooth(strength: np.ndarray) -> np.ndarray:
  """Spatial Gaussian smoothing of [..., H, W], so pixel noise forms no blobs."""
  sigma = (0,) * (strength.ndim - 2) + (DETECT_SIGMA, DETECT_SIGMA)
  return ndimage.gaussian_filter(strength, sigma=sigma)


def _marker_strengths(high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
  return {"white": _ramp(low, *WHITE_RAMP), "black": _ramp(high, *BLACK_RAMP)}


def _evidence(video: np.ndarray) -> np.ndarray:
  """Foreground strength in [0, 1], smoothed: [..., H, W, 3] uint8 -> [..., H, W]."""
  high, low = _extremes(video)
  markers = _marker_strengths(high, low)
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
  if rgb.max() - rgb.min() < MARKER_CHROMA:
    return min(MARKERS, key=lambda m: np.linalg.norm(rgb - np.asarray(MARKERS[m])))
  return shape_checker.classify_color(rgb)


def _shape_of(alphas: list[np.ndarray], blobs: list[np.ndarray]) -> str:
  """classify_shape on the median features of frames clear of the border."""
  inside, touching = [], []
  for alpha, blob in zip(alphas, blobs):
    features = (shape_checker._fill_ratio(alpha),) + shape_checker._moment_features(alpha)
    (touching if shape_checker._touches_border(blob) else inside).append(features)
  return shape_checker.classify_shape(*np.median(np.array(inside or touching), axis=0))


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
  evidence = _evidence(np.clip(np.rint(still), 0, 255).astype(np.uint8))  # [H, W]
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


def _marker_frames(video: np.ndarray) -> dict[str, float]:
  """Per marker, the fraction of frames showing a blob of that colour."""
  num_frames, height, width = video.shape[:3]
  min_pixels = max(MIN_BLOB_PIXELS, MIN_BLOB_FRACTION * height * width)
  out = {}
  for name, strength in _marker_strengths(*_extremes(video)).items():
    masks = _smooth(strength) > 0.5  # [T, H, W]
    out[name] = float(np.mean([_largest_blob(m, min_pixels) is not None for m in masks]))
  return out


# ----------------------------------------------------------------------------
# Background.


def background_features(video: np.ndarray, evidence: np.ndarray | None = None) -> dict | None:
  """Texture measurements of the background with objects masked out (None if hidden).

  Brightness is the channel mean (textures shift all channels alike); each pixel's
  background is its median over the frames where no object is near it.
  """
  if evidence is None:
    evidence = _evidence(video)
  num_frames, height, width = evidence.shape
  masked = ndimage.binary_dilation(
      evidence > MASK_LEVEL, structure=_SPATIAL, iterations=MASK_DILATION
  )  # [T, H, W]
  brightness = np.where(masked, np.nan, video.astype(np.float32).mean(axis=-1))  # [T, H, W]
  valid = ~masked.all(axis=0)  # [H, W]
  if valid.mean() < MIN_BACKGROUND_FRACTION:
    return None
  with np.errstate(all="ignore"):
    image = np.nanmedian(brightness[:, valid], axis=0)  # [N]
  y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
  ys, xs = y[valid] / height - 0.5, x[valid] / width - 0.5
  design = np.stack([np.ones_like(xs), xs, ys], axis=1)  # [N, 3]
  plane, *_ = np.linalg.lstsq(design, image, rcond=None)
  residual = image - design @ plane  # [N]
  skew = float(np.mean(residual**3) / max(float(residual.std()), 1e-6) ** 3)
  # Texture strength and the structure tensor come from the residual smoothed
  # within the valid pixels, so pixel noise adds little (periods >= 8 px keep most
  # of their amplitude); the tensor only from pixels whose neighbours are valid.
  field = np.zeros((height, width))
  field[valid] = residual
  weight = ndimage.gaussian_filter(valid.astype(np.float64), TENSOR_SIGMA)
  field = ndimage.gaussian_filter(field, TENSOR_SIGMA) / np.maximum(weight, 1e-6)
  std = float(field[valid].std())
  gy, gx = np.gradient(field)
  inner = ndimage.binary_erosion(valid, iterations=1)
  jxx, jyy, jxy = (gx[inner] ** 2).sum(), (gy[inner] ** 2).sum(), (gx[inner] * gy[inner]).sum()
  spread = math.hypot(jxx - jyy, 2 * jxy)
  coherence = spread / max(jxx + jyy, 1e-6)
  return {
      "std": std,
      "slope": float(math.hypot(plane[1], plane[2])),
      "skew": skew,
      "coherence": float(coherence),
      "visible": float(valid.mean()),
  }


def classify_background(features: dict | None) -> str | None:
  """One of shapes.BACKGROUNDS from background_features (None when unreadable)."""
  if features is None:
    return None
  if features["std"] < TEXTURE_STD:
    return "gradient" if features["slope"] > GRADIENT_SLOPE else "plain"
  if features["skew"] > DOT_SKEW:
    return "dotted"
  return "striped" if features["coherence"] > STRIPE_COHERENCE else "checkered"


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
  evidence = _evidence(video)  # [T, H, W]
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
      "marker": _marker_frames(video),
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
  """Fraction of the marked object's interior (target_scene) near its marker colour."""
  num_frames, height, width = output.shape[:3]
  coverage = shapes_edit.object_coverage(
      target_scene, num_frames, height, width, which=target_scene.marked
  )
  inside = ndimage.binary_erosion(coverage >= 0.99, structure=_SPATIAL)
  if not inside.any():
    inside = coverage >= 0.5
  marker = np.asarray(MARKERS[target_scene.marker], np.float32)
  distance = np.linalg.norm(output[inside].astype(np.float32) - marker, axis=-1)
  return float(np.mean(distance < MARKER_TOLERANCE)) if distance.size else 0.0


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
  puts it, within MARKER_TOLERANCE of the marker colour); "preserved": fraction of
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
