"""The "shapes" data set: synthetic captioned clips of one moving shape.

A coloured circle, square or triangle moves left/right/up/down, stays still
or bounces around on a muted, low-contrast textured background. The clips
train the temporal autoencoder and a small text-to-video model whose samples
a checker scores by reading pixels, so everything is chosen to be
unambiguous from pixels alone:

* Shape colours are exact, saturated RGB values (`COLORS`); every fully
  covered shape pixel has chroma (max - min channel) >= 140, every background
  pixel <= 40, so a chroma threshold separates shape from background and a
  nearest-colour rule names the colour, even after H.264.
* Shapes are fill-ratio distinct (square ~1.0, circle ~0.79, triangle ~0.5 of
  their bounding box) and axis-aligned; the triangle always points up.
* Linear motions cover 40-60% of the frame over the clip and stay fully in
  frame; bouncing is diagonal and reflects off the walls at least once, in
  the middle part of the clip.
* Edges are antialiased from signed distances, backgrounds are smooth
  (periods >= 8 px), so nothing aliases or needs high frequencies that an
  8x-compressing autoencoder could not reconstruct.

Content is defined in resolution-independent units (fractions of the frame,
fractions of the clip), so one `ClipSpec` renders consistently at any size and
frame count.

Command line:
  python -m mgjax.data.shapes --out=DIR --num_videos=200 --seed=0
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re

import numpy as np

from mgjax.data import video

SHAPES = ("circle", "square", "triangle")

# Exact shape colours; a pixel checker imports this table. Pairwise RGB
# distance >= 120 so nearest-colour classification survives compression.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 75, 225),
    "yellow": (230, 210, 40),
    "purple": (165, 50, 205),
    "cyan": (30, 195, 205),
}

MOTIONS = ("left", "right", "up", "down", "still", "bouncing")
BACKGROUNDS = ("plain", "striped", "checkered", "dotted", "gradient")

# Muted, near-grey base colours for backgrounds (chroma <= 20); each clip
# jitters its base by up to BACKGROUND_JITTER per channel.
BACKGROUND_BASES: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "slate": (108, 116, 126),
    "sand": (150, 142, 128),
    "sage": (118, 130, 114),
    "mauve": (136, 120, 128),
    "stone": (164, 160, 152),
    "charcoal": (92, 94, 100),
}
BACKGROUND_JITTER = 6

# Shape size as a fraction of the frame's shorter side.
SIZE_RANGE = (0.25, 0.35)
# Distance a linearly moving shape covers over a clip, as a fraction of the
# frame along its direction of motion.
TRAVEL_RANGE = (0.4, 0.6)
# A bouncing shape hits a wall on its bounce axis at this fraction of the clip.
BOUNCE_TIME_RANGE = (0.3, 0.6)
BOUNCE_SPEED_RANGE = (0.6, 0.9)  # Along the bounce axis, frames per clip.
DRIFT_SPEED_RANGE = (0.3, 0.6)  # Along the other axis, frames per clip.

# How paths are drawn (`sample_spec(paths=...)`):
#   "random": anywhere in frame, as above: a motion word says how the shape moves but
#             little about where it is in any one frame.
#   "lanes":  each motion has one path through the frame, jittered by LANE_JITTER:
#             left/right along the middle row, up/down along the middle column, still
#             at the centre, bouncing off the right wall in the upper band. The
#             motion word then fixes where the shape is in every frame, a signal as
#             strong as its colour, which a small model learns within a CPU budget.
PATHS = ("random", "lanes")
LANE_TRAVEL = 0.5  # Fraction of the frame a linear motion covers in "lanes".
LANE_JITTER = 0.05  # Uniform +- jitter of a lane's start and travel, frame fractions.
LANE_BOUNCE_Y, LANE_BOUNCE_DRIFT = 0.25, 0.15  # Bouncing lane: first y and its drift.
# Background texture: period as a fraction of the shorter side (never below
# MIN_TEXTURE_PERIOD pixels) and amplitude in 0..255 levels.
TEXTURE_SCALE_RANGE = (0.15, 0.3)
MIN_TEXTURE_PERIOD = 8.0
TEXTURE_CONTRAST_RANGE = (8.0, 14.0)

MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves to the left", "slides left", "drifts to the left"),
    "right": ("moves to the right", "slides right", "drifts to the right"),
    "up": ("moves up", "slides up", "drifts up"),
    "down": ("moves down", "slides down", "drifts down"),
    "still": ("stays still", "sits still", "holds still"),
    "bouncing": ("is bouncing around", "keeps bouncing off the edges", "is bouncing off the walls"),
}
CLIP_TEMPLATES = (
    "a {color} {shape} {motion} on a {background} background",
    "a {color} {shape} {motion} against a {background} background",
    "on a {background} background, a {color} {shape} {motion}",
    "a {background} background where a {color} {shape} {motion}",
)
IMAGE_TEMPLATES = (
    "a {color} {shape} on a {background} background",
    "a {color} {shape} against a {background} background",
    "a {background} background with a {color} {shape}",
    "a picture of a {color} {shape} on a {background} background",
)

# Bumped whenever rendering or sampling changes, so ensure_dataset rebuilds.
DATASET_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything needed to render and caption one clip.

  Positions are shape centres in fractions of the frame (x of width, y of
  height, y down); `velocity` is the displacement over the whole clip in the
  same units. For "bouncing" the path reflects off walls inset by size / 2.
  """

  shape: str
  color: str
  motion: str
  background: str
  background_color: tuple[int, int, int]
  size: float  # Fraction of the shorter side: circle diameter, square/triangle side.
  start: tuple[float, float]  # (x, y) at the first frame.
  velocity: tuple[float, float]  # (dx, dy) over the clip.
  texture_scale: float
  texture_angle: float  # Radians; stripe and gradient direction.
  texture_phase: float  # In [0, 1): texture offset in periods.
  texture_contrast: float
  caption_template: int = 0
  motion_phrase: int = 0

  def __post_init__(self):
    for name, value, allowed in (
        ("shape", self.shape, SHAPES),
        ("color", self.color, tuple(COLORS)),
        ("motion", self.motion, MOTIONS),
        ("background", self.background, BACKGROUNDS),
    ):
      if value not in allowed:
        raise ValueError(f"ClipSpec {name}={value!r} is not one of {allowed}")
    if not 0 < self.size < 1:
      raise ValueError(
          f"ClipSpec size={self.size!r} must be a fraction of the shorter side in (0, 1)"
      )

  @property
  def attributes(self) -> dict[str, str]:
    return {
        "shape": self.shape,
        "color": self.color,
        "motion": self.motion,
        "background": self.background,
    }


# ----------------------------------------------------------------------------
# Sampling.


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _random_path(rng: np.random.Generator, motion: str, size: float):
  """(start, velocity) anywhere in frame; see PATHS."""
  lo, hi = size / 2, 1 - size / 2  # Centre range that keeps the shape in frame.
  if motion in ("left", "right", "up", "down"):
    travel = float(rng.uniform(*TRAVEL_RANGE))
    sign = 1.0 if motion in ("right", "down") else -1.0
    if sign > 0:
      along = float(rng.uniform(lo, hi - travel))
    else:
      along = float(rng.uniform(lo + travel, hi))
    across = float(rng.uniform(lo, hi))
    if motion in ("left", "right"):
      return (along, across), (sign * travel, 0.0)
    return (across, along), (0.0, sign * travel)
  if motion == "still":
    return (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))), (0.0, 0.0)
  # bouncing: guarantee a wall hit on one axis inside BOUNCE_TIME_RANGE.
  bounce_axis = int(rng.integers(2))
  bounce_time = float(rng.uniform(*BOUNCE_TIME_RANGE))
  speed = float(rng.uniform(*BOUNCE_SPEED_RANGE)) * _pick(rng, (-1.0, 1.0))
  wall = hi if speed > 0 else lo
  bounce_start = wall - speed * bounce_time
  drift = float(rng.uniform(*DRIFT_SPEED_RANGE)) * _pick(rng, (-1.0, 1.0))
  drift_start = float(rng.uniform(lo, hi))
  if bounce_axis == 0:
    return (bounce_start, drift_start), (speed, drift)
  return (drift_start, bounce_start), (drift, speed)


def _lane_path(rng: np.random.Generator, motion: str, size: float):
  """(start, velocity) on the motion's one lane, jittered; see PATHS.

  Every lane keeps a shape of any size in SIZE_RANGE fully in frame.
  """
  shift = lambda: float(rng.uniform(-LANE_JITTER, LANE_JITTER))  # noqa: E731
  if motion in ("left", "right", "up", "down"):
    travel = LANE_TRAVEL + shift()
    sign = 1.0 if motion in ("right", "down") else -1.0
    along, across = 0.5 - sign * travel / 2 + shift(), 0.5 + shift()
    if motion in ("left", "right"):
      return (along, across), (sign * travel, 0.0)
    return (across, along), (0.0, sign * travel)
  if motion == "still":
    return (0.5 + shift(), 0.5 + shift()), (0.0, 0.0)
  # bouncing: in the upper band, off the right wall at BOUNCE_TIME_RANGE's middle and
  # back, drifting down a little; away from the middle row and column.
  hi = 1 - size / 2
  speed = float(np.mean(BOUNCE_SPEED_RANGE))
  bounce_start = hi - speed * float(np.mean(BOUNCE_TIME_RANGE)) + shift()
  return (bounce_start, LANE_BOUNCE_Y + shift()), (speed, LANE_BOUNCE_DRIFT)


def sample_spec(rng: np.random.Generator, paths: str = "random") -> ClipSpec:
  """Draws one clip description; every attribute is uniform over its values.

  `paths` (one of PATHS) says how the shape's path is drawn; see PATHS.
  """
  if paths not in PATHS:
    raise ValueError(f"paths={paths!r} is not one of {PATHS}")
  shape = _pick(rng, SHAPES)
  color = _pick(rng, tuple(COLORS))
  motion = _pick(rng, MOTIONS)
  background = _pick(rng, BACKGROUNDS)
  base = np.array(BACKGROUND_BASES[_pick(rng, tuple(BACKGROUND_BASES))])
  jitter = rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, 3)
  background_color = tuple(int(c) for c in base + jitter)
  size = float(rng.uniform(*SIZE_RANGE))
  path = _lane_path if paths == "lanes" else _random_path
  start, velocity = path(rng, motion, size)

  return ClipSpec(
      shape=shape,
      color=color,
      motion=motion,
      background=background,
      background_color=background_color,
      size=size,
      start=start,
      velocity=velocity,
      texture_scale=float(rng.uniform(*TEXTURE_SCALE_RANGE)),
      texture_angle=float(rng.uniform(0, math.pi)),
      texture_phase=float(rng.uniform(0, 1)),
      texture_contrast=float(rng.uniform(*TEXTURE_CONTRAST_RANGE)),
      caption_template=int(rng.integers(len(CLIP_TEMPLATES))),
      motion_phrase=int(rng.integers(3)),
  )


def still_spec(spec: ClipSpec) -> ClipSpec:
  """The same scene with the shape at rest: what a still image shows."""
  return dataclasses.replace(spec, motion="still", velocity=(0.0, 0.0))


# ----------------------------------------------------------------------------
# Captions.


def caption(spec: ClipSpec) -> str:
  """A sentence naming colour, shape, motion and background by their keys."""
  phrases = MOTION_PHRASES[spec.motion]
  template = CLIP_TEMPLATES[spec.caption_template % len(CLIP_TEMPLATES)]
  return template.format(
      color=spec.color,
      shape=spec.shape,
      motion=phrases[spec.motion_phrase % len(phrases)],
      background=spec.background,
  )


def image_caption(spec: ClipSpec) -> str:
  """A still's caption: colour, shape and background, no motion."""
  template = IMAGE_TEMPLATES[spec.caption_template % len(IMAGE_TEMPLATES)]
  return template.format(color=spec.color, shape=spec.shape, background=spec.background)


_ATTRIBUTE_WORDS = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "motion": MOTIONS,
    "background": BACKGROUNDS,
}


def parse_caption(text: str) -> dict[str, str]:
  """The attributes named in a caption (or prompt), found as whole words.

  An attribute is included only when exactly one of its values appears.
  """
  words = set(re.findall(r"[a-z]+", text.lower()))
  found = {}
  for attribute, values in _ATTRIBUTE_WORDS.items():
    present = [v for v in values if v in words]
    if len(present) == 1:
      found[attribute] = present[0]
  return found


# ----------------------------------------------------------------------------
# Rendering.


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Folds an unbounded coordinate into [lo, hi] like a ball off two walls."""
  span = hi - lo
  x = np.mod(p - lo, 2 * span)
  return lo + np.where(x <= span, x, 2 * span - x)


def centers(spec: ClipSpec, num_frames: int) -> np.ndarray:
  """Shape centre per frame in frame fractions: [T, 2] of (x, y)."""
  u = np.arange(num_frames) / max(num_frames - 1, 1)  # [T] in [0, 1]
  xy = np.asarray(spec.start)[None, :] + u[:, None] * np.asarray(spec.velocity)[None, :]  # [T, 2]
  if spec.motion == "bouncing":
    xy = _reflect(xy, spec.size / 2, 1 - spec.size / 2)
  return xy


def _signed_distance(
    shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, side: float
) -> np.ndarray:
  """Pixel-unit distance to the shape's edge, negative inside. [H, W]"""
  dx, dy = x - cx, y - cy
  half = side / 2
  if shape == "circle":
    return np.hypot(dx, dy) - half
  if shape == "square":
    qx, qy = np.abs(dx) - half, np.abs(dy) - half
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)
  # Upward equilateral triangle centred on its bounding box.
  height = side * math.sqrt(3) / 2
  base = dy - height / 2  # Below the base edge is outside.
  # Slanted edges: normals (+-sin60, -cos60) through the apex (0, -height/2).
  sin60, cos60 = math.sqrt(3) / 2, 0.5
  right = sin60 * dx - cos60 * (dy + height / 2)
  left = -sin60 * dx - cos60 * (dy + height / 2)
  return np.maximum(base, np.maximum(left, right))


def _background(spec: ClipSpec, height: int, width: int) -> np.ndarray:
  """Muted textured backdrop: float32 [H, W, 3].

  Textures only change brightness (same offset on all channels), so the
  background keeps its low chroma.
  """
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # Pixel centres.
  short = min(height, width)
  period = max(MIN_TEXTURE_PERIOD, spec.texture_scale * short)
  contrast = spec.texture_contrast
  cos_a, sin_a = math.cos(spec.texture_angle), math.sin(spec.texture_angle)
  phase = spec.texture_phase
  if spec.background == "plain":
    pattern = np.zeros((height, width), np.float32)
  elif spec.background == "striped":
    pattern = contrast * np.sin(2 * np.pi * ((x * cos_a + y * sin_a) / period + phase))
  elif spec.background == "checkered":
    cell = max(MIN_TEXTURE_PERIOD, 0.75 * period)
    shift = phase * 2 * cell
    wave = np.sin(np.pi * (x + shift) / cell) * np.sin(np.pi * (y + shift) / cell)
    pattern = contrast * np.clip(3.0 * wave, -1.0, 1.0)  # Soft-edged squares.
  elif spec.background == "dotted":
    spacing = max(10.0, period)
    radius = 0.25 * spacing
    dx = np.mod(x + phase * spacing, spacing) - spacing / 2
    dy = np.mod(y + phase * spacing, spacing) - spacing / 2
    coverage = np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)
    pattern = contrast * (2.0 * coverage - 0.5)
  else:  # gradient
    along = (x - width / 2) * cos_a + (y - height / 2) * sin_a
    extent = 0.5 * (abs(width * cos_a) + abs(height * sin_a))
    pattern = 1.5 * contrast * along / extent
  base = np.asarray(spec.background_color, np.float32)
  return base[None, None, :] + pattern[:, :, None].astype(np.float32)


def render_clip(spec: ClipSpec, num_frames: int, height: int, width: int) -> np.ndarray:
  """Renders the clip as uint8 [T, H, W, 3]; num_frames=1 gives a still.

  Edge coverage is clamp(0.5 - signed distance) per pixel: a one-pixel
  linear ramp across every edge, which antialiases without supersampling.
  """
  if num_frames < 1 or height < 1 or width < 1:
    raise ValueError(
        "render_clip needs num_frames, height, width >= 1, " f"got {num_frames}, {height}, {width}"
    )
  background = _background(spec, height, width)  # [H, W, 3]
  color = np.asarray(COLORS[spec.color], np.float32)
  side = spec.size * min(height, width)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for i, (cx, cy) in enumerate(centers(spec, num_frames)):
    distance = _signed_distance(spec.shape, x, y, cx * width, cy * height, side)
    coverage = np.clip(0.5 - distance, 0.0, 1.0)[:, :, None]  # [H, W, 1]
    frame = background + (color - background) * coverage
    frames[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
  return frames


# ----------------------------------------------------------------------------
# Held-out combinations.


def heldout_combinations(seed: int, eval_fraction: float) -> frozenset[tuple[str, str, str]]:
  """The (color, shape, motion) triples that appear only in the eval split.

  About eval_fraction of all triples, drawn from the seed, with the rule
  that every pair of attribute values (colour+shape, colour+motion,
  shape+motion) keeps at least one training triple. So each colour, shape
  and motion, and each pairing of them, is seen in training; an eval triple
  is new only as a whole.
  """
  if not 0 <= eval_fraction <= 0.5:
    raise ValueError(f"eval_fraction={eval_fraction!r} must be in [0, 0.5]")
  combos = list(itertools.product(COLORS, SHAPES, MOTIONS))
  target = int(round(eval_fraction * len(combos)))
  # [seed, 0, 1] cannot collide with the per-clip [seed, index] streams
  # (SeedSequence pads those with zeros).
  rng = np.random.default_rng([seed, 0, 1])
  train_pairs: dict[tuple, int] = {}
  for c in combos:
    for pair in _pairs(c):
      train_pairs[pair] = train_pairs.get(pair, 0) + 1
  heldout = set()
  for index in rng.permutation(len(combos)):
    if len(heldout) == target:
      break
    combo = combos[int(index)]
    if all(train_pairs[pair] > 1 for pair in _pairs(combo)):
      heldout.add(combo)
      for pair in _pairs(combo):
        train_pairs[pair] -= 1
  return frozenset(heldout)


def _pairs(combo: tuple[str, str, str]) -> tuple[tuple, ...]:
  color, shape, motion = combo
  return (("cs", color, shape), ("cm", color, motion), ("sm", shape, motion))


# ----------------------------------------------------------------------------
# Data set on disk.

MANIFEST = "manifest.jsonl"
IMAGES_MANIFEST = "images.jsonl"
PARAMS_FILE = "shapes.json"
_VIDEO_NAME = re.compile(r"^\d{5,}\.mp4$")
_IMAGE_NAME = re.compile(r"^\d{5,}\.png$")


def write_text_atomic(path: str, text: str) -> None:
  with video.atomic_write(path) as temp, open(temp, "w") as f:
    f.write(text)


def jsonl_text(records: list[dict]) -> str:
  return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


def dataset_params(
    num_videos, seed, fps, num_frames, height, width, num_images, eval_fraction, paths
) -> dict:
  """Validated parameters, as stored in shapes.json."""
  for name, value, minimum in (
      ("num_videos", num_videos, 0),
      ("num_frames", num_frames, 1),
      ("height", height, 16),
      ("width", width, 16),
      ("num_images", num_images, 0),
  ):
    if int(value) != value or value < minimum:
      raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
  if height % 2 or width % 2:
    raise ValueError(
        f"height={height} and width={width} must be even (H.264 4:2:0 needs even sizes)"
    )
  if not fps > 0:
    raise ValueError(f"fps={fps!r} must be positive")
  if not 0 <= eval_fraction <= 0.5:
    raise ValueError(f"eval_fraction={eval_fraction!r} must be in [0, 0.5]")
  if paths not in PATHS:
    raise ValueError(f"paths={paths!r} is not one of {PATHS}")
  return {
      "version": DATASET_VERSION,
      "num_videos": int(num_videos),
      "seed": int(seed),
      "fps": float(fps),
      "num_frames": int(num_frames),
      "height": int(height),
      "width": int(width),
      "num_images": int(num_images),
      "eval_fraction": float(eval_fraction),
      "paths": paths,
  }


def _remove_stale(out_dir: str) -> None:
  """Removes this data set's own files: markers first, then media."""
  for name in (MANIFEST, IMAGES_MANIFEST, PARAMS_FILE):
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      os.remove(path)
  for sub, pattern in (("videos", _VIDEO_NAME), ("images", _IMAGE_NAME)):
    directory = os.path.join(out_dir, sub)
    if os.path.isdir(directory):
      for name in os.listdir(directory):
        temporary = name.startswith(".") and name.endswith((".tmp.mp4", ".tmp.png"))
        if pattern.match(name) or temporary:
          os.remove(os.path.join(directory, name))


def make_dataset(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    num_images: int = 8,
    eval_fraction: float = 0.15,
    paths: str = "random",
) -> str:
  """Writes the data set under out_dir and returns the manifest path.

  Layout: videos/NNNNN.mp4, images/NNNNN.png, images.jsonl, shapes.json
  (parameters) and manifest.jsonl, written last and atomically: its
  presence marks a complete set. Clip i is drawn from
  np.random.default_rng([seed, i]) and still k from [seed, k, 2], so the
  same arguments give identical files. A clip whose (color, shape, motion)
  is held out (see heldout_combinations) goes to split "eval"; a still
  follows the split of a still clip of its colour and shape, since a still
  clip is that image repeated.
  """
  out_dir = os.fspath(out_dir)
  params = dataset_params(
      num_videos, seed, fps, num_frames, height, width, num_images, eval_fraction, paths
  )
  heldout = heldout_combinations(params["seed"], params["eval_fraction"])
  os.makedirs(out_dir, exist_ok=True)
  _remove_stale(out_dir)
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)

  records = []
  for index in range(params["num_videos"]):
    spec = sample_spec(np.random.default_rng([params["seed"], index]), paths)
    relative = f"videos/{index:05d}.mp4"
    frames = render_clip(spec, params["num_frames"], params["height"], params["width"])
    video.write_video(os.path.join(out_dir, relative), frames, params["fps"])
    split = "eval" if (spec.color, spec.shape, spec.motion) in heldout else "train"
    records.append(
        {
            "video": relative,
            "caption": caption(spec),
            "fps": params["fps"],
            "num_frames": params["num_frames"],
            "width": params["width"],
            "height": params["height"],
            "split": split,
            "attributes": spec.attributes,
        }
    )

  image_records = []
  for index in range(params["num_images"]):
    spec = still_spec(sample_spec(np.random.default_rng([params["seed"], index, 2]), paths))
    relative = f"images/{index:05d}.png"
    image = render_clip(spec, 1, params["height"], params["width"])[0]
    video.write_image(os.path.join(out_dir, relative), image)
    split = "eval" if (spec.color, spec.shape, "still") in heldout else "train"
    attributes = {"shape": spec.shape, "color": spec.color, "background": spec.background}
    image_records.append(
        {
            "image": relative,
            "caption": image_caption(spec),
            "width": params["width"],
            "height": params["height"],
            "split": split,
            "attributes": attributes,
        }
    )

  write_text_atomic(os.path.join(out_dir, IMAGES_MANIFEST), jsonl_text(image_records))
  params_text = json.dumps(params, sort_keys=True, indent=1) + "\n"
  write_text_atomic(os.path.join(out_dir, PARAMS_FILE), params_text)
  manifest = os.path.join(out_dir, MANIFEST)
  write_text_atomic(manifest, jsonl_text(records))
  return manifest


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def holds_finished_set(
    out_dir: str | os.PathLike,
    params_file: str,
    params: dict,
    manifests: dict[str, tuple[int, tuple[str, ...]]],
) -> bool:
  """Whether out_dir holds a finished set made with exactly `params`: params_file
  records them, and each manifest {name: (records, keys)} has that many records,
  every file they name under `keys` present. A set cut short lacks one of these."""
  out_dir = os.fspath(out_dir)
  try:
    with open(os.path.join(out_dir, params_file)) as f:
      if json.load(f) != params:
        return False
    listed = {name: read_jsonl(os.path.join(out_dir, name)) for name in manifests}
  except (OSError, ValueError):
    return False
  for name, (count, keys) in manifests.items():
    records = listed[name]
    if len(records) != count or not all(
        os.path.isfile(os.path.join(out_dir, r[key])) for r in records for key in keys
    ):
      return False
  return True


def is_complete(out_dir: str | os.PathLike, params: dict) -> bool:
  """Whether out_dir holds a finished data set made with exactly `params`."""
  return holds_finished_set(
      out_dir,
      PARAMS_FILE,
      params,
      {
          MANIFEST: (params["num_videos"], ("video",)),
          IMAGES_MANIFEST: (params["num_images"], ("image",)),
      },
  )


def ensure_dataset(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    num_images: int = 8,
    eval_fraction: float = 0.15,
    paths: str = "random",
) -> str:
  """Returns the manifest of a complete matching set, making it if needed.

  Same arguments as make_dataset. A directory left half-made by a killed
  run has no manifest (or mismatching parameters) and is rebuilt.
  """
  args = dict(
      num_videos=num_videos,
      seed=seed,
      fps=fps,
      num_frames=num_frames,
      height=height,
      width=width,
      num_images=num_images,
      eval_fraction=eval_fraction,
      paths=paths,
  )
  if is_complete(out_dir, dataset_params(**args)):
    return os.path.join(os.fspath(out_dir), MANIFEST)
  return make_dataset(out_dir, **args)


# ----------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module never
  # claims flag names (like --seed) in another program's absl flags.
  from absl import flags

  flags.DEFINE_string("out", None, "Directory to write the data set into.", required=True)
  flags.DEFINE_integer("num_videos", 200, "Number of clips.")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed gives identical files.")
  flags.DEFINE_float("fps", 16, "Frame rate of the clips.")
  flags.DEFINE_integer("num_frames", 32, "Frames per clip.")
  flags.DEFINE_integer("height", 64, "Frame height in pixels (even).")
  flags.DEFINE_integer("width", 64, "Frame width in pixels (even).")
  flags.DEFINE_integer("num_images", 8, "Number of still images.")
  flags.DEFINE_float(
      "eval_fraction", 0.15, "Fraction of (color, shape, motion) triples held out for eval."
  )
  flags.DEFINE_enum("paths", "random", PATHS, "How shapes' paths are drawn (see PATHS).")


def _main(argv) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
  f = flags.FLAGS
  args = dict(
      num_videos=f.num_videos,
      seed=f.seed,
      fps=f.fps,
      num_frames=f.num_frames,
      height=f.height,
      width=f.width,
      num_images=f.num_images,
      eval_fraction=f.eval_fraction,
      paths=f.paths,
  )
  try:
    reused = is_complete(f.out, dataset_params(**args))
    manifest = ensure_dataset(f.out, **args)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  videos = read_jsonl(manifest)
  images = read_jsonl(os.path.join(os.path.dirname(manifest), IMAGES_MANIFEST))
  count = lambda rs, split: sum(r["split"] == split for r in rs)  # noqa: E731
  print(
      f"shapes: {'found' if reused else 'wrote'} {len(videos)} videos "
      f"({count(videos, 'train')} train, {count(videos, 'eval')} eval) and {len(images)} "
      f"images ({count(images, 'train')} train, {count(images, 'eval')} eval) in {manifest}"
  )


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(_main)
