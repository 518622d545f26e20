"""Reads a subject's identity from pixels: the identity shapes' accent checker.

An identity shape (mgjax/data/shapes_identity.py) is a coloured shape whose part
towards one of 8 directions is painted near white or near black. Per frame:

  1. the coloured part: the largest blob of chroma (max - min channel) above
     COLOR_CHROMA;
  2. the accent: achromatic pixels (chroma below ACCENT_CHROMA) whose brightness
     departs from the frame's median (the background) by more than ACCENT_CONTRAST,
     in the blob's neighbourhood (dilated by a third of its size);
  3. the identity: the accent's tone (brighter or darker than the background) and
     the normal of the line between the accent and the coloured part (Fisher's
     discriminant of their pixels), rounded to the nearest of the 8 directions.

A frame without a blob or with too small an accent reads None. Per video and
reference identity, `score_identity` gives the paper's identity figures from these
readings: the best and worst frame (does any / every frame show the identity),
the share of frames that do, consistency across frames (adjacent frames reading
the same identity) and whether the video's most common reading is the identity
(its accuracy).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mgjax.data.shapes_identity import IDENTITIES, NUM_DIRECTIONS, subject_name

COLOR_CHROMA = 70.0
ACCENT_CHROMA = 60.0
ACCENT_CONTRAST = 35.0
MIN_ACCENT_FRACTION = 0.08  # of the coloured blob's pixels
MIN_BLOB_PIXELS = 6


def read_frame(frame: np.ndarray) -> str | None:
  """The identity one uint8 frame [H, W, 3] shows, or None."""
  pixels = frame.astype(np.float32)
  chroma = pixels.max(-1) - pixels.min(-1)  # [H, W]
  luma = pixels.mean(-1)  # [H, W]
  labels, count = ndimage.label(chroma > COLOR_CHROMA, structure=np.ones((3, 3), bool))
  if not count:
    return None
  sizes = np.bincount(labels.ravel())[1:]
  blob = labels == int(np.argmax(sizes)) + 1  # [H, W]
  if blob.sum() < MIN_BLOB_PIXELS:
    return None
  reach = max(1, int(round(math.sqrt(blob.sum()) / 3)))
  near = ndimage.binary_dilation(blob, iterations=reach)
  background = float(np.median(luma))
  offset = luma - background
  accent = near & ~blob & (chroma < ACCENT_CHROMA) & (np.abs(offset) > ACCENT_CONTRAST)
  if accent.sum() < max(3, MIN_ACCENT_FRACTION * blob.sum()):
    return None
  tone = "light" if float(np.mean(offset[accent])) > 0 else "dark"
  # Only the accent's own tone: the other tone's stray pixels are edge ringing.
  accent &= offset > 0 if tone == "light" else offset < 0
  dx, dy = _boundary_normal(np.argwhere(accent), np.argwhere(blob))
  direction = int(round(math.atan2(dy, dx) / (2 * math.pi / NUM_DIRECTIONS))) % NUM_DIRECTIONS
  return subject_name(tone, direction, NUM_DIRECTIONS)


def _boundary_normal(accent: np.ndarray, colored: np.ndarray) -> tuple[float, float]:
  """(dx, dy), y up: the normal of the line that best separates the accent's pixels
  from the coloured ones ([N, 2] (row, col) each), pointing to the accent.

  Fisher's discriminant, Sw^-1 (mean_a - mean_c): for a shape cut by a straight
  line it is that line's normal whatever the shape, where the direction between
  the two parts' centroids leans for a shape that is not symmetric about it (a
  triangle cut towards a corner).
  """
  between = accent.mean(0) - colored.mean(0)  # [2]
  within = np.cov(accent.T, bias=True) * len(accent) + np.cov(colored.T, bias=True) * len(colored)
  normal = np.linalg.solve(within + 1e-3 * np.eye(2), between)  # [2] (row, col)
  return float(normal[1]), float(-normal[0])


def read_video(video: np.ndarray) -> list[str | None]:
  """Per frame of a uint8 video [T, H, W, 3], the identity it shows (or None)."""
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise ValueError(
        f"read_video needs a uint8 video [T, H, W, 3]; got {video.dtype} {video.shape}"
    )
  return [read_frame(frame) for frame in video]


def score_identity(readings: Sequence[str | None], identity: str) -> dict:
  """Identity figures of one video's per-frame readings against the reference's."""
  if identity not in IDENTITIES:
    raise ValueError(f"Unknown identity {identity!r}; the identities are {IDENTITIES}.")
  match = np.array([r == identity for r in readings], np.float64)  # [T]
  same = [a is not None and a == b for a, b in zip(readings[:-1], readings[1:])]
  found = [r for r in readings if r is not None]
  mode = collections.Counter(found).most_common(1)[0][0] if found else None
  return {
      "identity_correct": float(mode == identity),
      "identity_best_frame": float(match.max()),
      "identity_worst_frame": float(match.min()),
      "identity_frames": float(match.mean()),
      "identity_consistency": float(np.mean(same)) if same else float(bool(found)),
      "read_as": mode,
  }


def score_videos(videos: Sequence[np.ndarray], identities: Sequence[str]) -> dict:
  """Mean identity figures over videos (each with its reference's identity), and the
  per-video details."""
  details = [score_identity(read_video(v), i) for v, i in zip(videos, identities)]
  keys = [k for k in details[0] if k != "read_as"] if details else []
  means = {k: float(np.mean([d[k] for d in details])) for k in keys}
  return {**means, "details": [dict(d, identity=i) for d, i in zip(details, identities)]}
