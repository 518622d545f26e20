"""The shapes edit set: source clip, instruction, edited clip, for instruction-guided editing.

Movie Gen Edit learns to edit videos from text without real edit pairs, in three
stages: single-frame edits (stage I), multi-frame edits made by animating edited
frames and by segmenting real clips (stage II), and back-translation on real clips
(stage III). This module builds the synthetic counterpart on the shapes world
(`mgjax.data.shapes`), where every edit is exact and a pixel checker
(`mgjax.eval.edit`) can score a model's output:

* A scene is a shapes clip on a lane path (the "main" object) plus, optionally, one
  still "extra" object in a bottom corner. The two never share a colour, so an
  instruction can always name either object unambiguously.
* Seven edit kinds (`EDIT_KINDS`): recolour or reshape the main object, swap the
  background texture, add or remove the extra object, change the main object's
  motion, or "segment" an object by painting it in an achromatic marker colour.
  Each edit changes exactly one entry of `Scene.attributes`.
* Some (object, edit) combinations are held out (`heldout_edits`): they never occur
  in the training manifests and form the eval split, applied to fresh lane clips.

Captions and instructions: mgjax/data/shapes_edit_text.py; the files of the data
set: mgjax/data/shapes_edit_set.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from scipy import ndimage

from mgjax.data import shapes
from mgjax.data.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    ClipSpec,
)
from mgjax.data.shapes_edit_text import instruction

EDIT_KINDS = ("color", "shape", "background", "add", "remove", "motion", "segment")
IMAGE_KINDS = ("color", "shape", "background", "add", "remove", "segment")  # stage I
ANIMATED_KINDS = ("color", "shape", "background", "add", "remove")  # stage II (a)
# The Scene.attributes entry each kind changes.
ATTRIBUTE_OF = {
    "color": "color",
    "shape": "shape",
    "background": "background",
    "add": "extra",
    "remove": "extra",
    "motion": "motion",
    "segment": "marked",
}

# Segmentation markers: achromatic, so a chroma threshold never mistakes them for a
# shape colour, and far from every background's brightness (~86..176, texture
# included ~65..197), so a brightness threshold finds them.
MARKERS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "black": (12, 12, 12)}

# The extra object sits still in a bottom corner. Lane paths (shapes._lane_path) keep
# a main object of any size within x in [0.275, 0.725] on the vertical lanes (which
# reach the bottom edge) and y <= 0.725 elsewhere, so a corner object must stay left
# of x = 0.275 (right of 0.725) and below y = 0.725 to never touch it. Centres at
# 0.14 / 0.86 with sides up to 0.2 end at 0.24 / 0.76: a gap of >= 2 px at 64x64
# between the corner object's box and every lane (measured over 20,000 lane paths),
# and ~2.5 px from the frame's edges, so a checker reads the two objects apart. The
# ~0.24 first planned would close that gap.
CORNERS = ("bottom left", "bottom right")
CORNER_CENTERS: dict[str, tuple[float, float]] = {
    "bottom left": (0.14, 0.86),
    "bottom right": (0.86, 0.86),
}
EXTRA_SIZE_RANGE = (0.18, 0.2)  # Fraction of the shorter side.


# ----------------------------------------------------------------------------
# Scenes.


@dataclasses.dataclass(frozen=True)
class Extra:
  """A still second object in a bottom corner (centre CORNER_CENTERS[corner])."""

  shape: str
  color: str
  size: float  # Fraction of the shorter side, as ClipSpec.size.
  corner: str

  def __post_init__(self):
    for name, value, allowed in (
        ("shape", self.shape, SHAPES),
        ("color", self.color, tuple(COLORS)),
        ("corner", self.corner, CORNERS),
    ):
      if value not in allowed:
        raise ValueError(f"Extra {name}={value!r} is not one of {allowed}")
    if not 0 < self.size <= max(EXTRA_SIZE_RANGE):
      raise ValueError(f"Extra size={self.size!r} must be in (0, {max(EXTRA_SIZE_RANGE)}]")

  @property
  def attributes(self) -> dict[str, str]:
    return {"color": self.color, "shape": self.shape, "corner": self.corner}


@dataclasses.dataclass(frozen=True)
class Scene:
  """A main object on its lane, an optional extra object, an optional marking.

  `marked` ("main" or "extra") names the object painted in MARKERS[marker]: the
  ground truth of a segmentation edit.
  """

  main: ClipSpec
  extra: Extra | None = None
  marked: str | None = None
  marker: str | None = None

  def __post_init__(self):
    if self.extra is not None and self.extra.color == self.main.color:
      raise ValueError(
          f"the extra object's colour {self.extra.color!r} equals the main object's; "
          "two objects must differ in colour so instructions can name them"
      )
    if self.marked not in (None, "main", "extra"):
      raise ValueError(f"marked={self.marked!r} must be None, 'main' or 'extra'")
    if self.marked == "extra" and self.extra is None:
      raise ValueError("marked='extra' needs an extra object")
    if (self.marked is None) != (self.marker is None) or (
        self.marker is not None and self.marker not in MARKERS
    ):
      raise ValueError(
          f"marker={self.marker!r} must be one of {tuple(MARKERS)} exactly when "
          f"an object is marked (marked={self.marked!r})"
      )

  @property
  def attributes(self) -> dict:
    return {
        "color": self.main.color,
        "shape": self.main.shape,
        "motion": self.main.motion,
        "background": self.main.background,
        "extra": None if self.extra is None else self.extra.attributes,
        "marked": None if self.marked is None else {"object": self.marked, "marker": self.marker},
    }

  def describe(self, which: str) -> tuple[str, str]:
    """(colour, shape) of the "main" or "extra" object."""
    obj = self.main if which == "main" else self.extra
    return obj.color, obj.shape


def scene_to_dict(scene: Scene) -> dict:
  """A JSON-able dict; scene_from_dict(scene_to_dict(s)) == s."""
  return {
      "main": dataclasses.asdict(scene.main),
      "extra": None if scene.extra is None else dataclasses.asdict(scene.extra),
      "marked": scene.marked,
      "marker": scene.marker,
  }


def scene_from_dict(d: dict) -> Scene:
  main = {k: tuple(v) if isinstance(v, list) else v for k, v in d["main"].items()}
  extra = d.get("extra")
  return Scene(
      main=ClipSpec(**main),
      extra=None if extra is None else Extra(**extra),
      marked=d.get("marked"),
      marker=d.get("marker"),
  )


def sample_extra(rng: np.random.Generator, avoid_color: str) -> Extra:
  """A corner object of any shape, corner and colour but `avoid_color`."""
  colors = tuple(c for c in COLORS if c != avoid_color)
  return Extra(
      shape=shapes._pick(rng, SHAPES),
      color=shapes._pick(rng, colors),
      size=float(rng.uniform(*EXTRA_SIZE_RANGE)),
      corner=shapes._pick(rng, CORNERS),
  )


def sample_scene(rng: np.random.Generator, extra_prob: float) -> Scene:
  """A lane clip, with a corner object with probability extra_prob."""
  main = shapes.sample_spec(rng, "lanes")
  extra = sample_extra(rng, main.color) if rng.random() < extra_prob else None
  return Scene(main=main, extra=extra)


def still_scene(scene: Scene) -> Scene:
  """The scene with its main object at rest where the clip starts: what a still shows."""
  return dataclasses.replace(scene, main=shapes.still_spec(scene.main))


# ----------------------------------------------------------------------------
# Rendering.


def _extra_coverage(extra: Extra, height: int, width: int) -> np.ndarray:
  """Antialiased coverage of the corner object, as shapes.render_clip draws: [H, W]."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  cx, cy = CORNER_CENTERS[extra.corner]
  side = extra.size * min(height, width)
  distance = shapes._signed_distance(extra.shape, x, y, cx * width, cy * height, side)
  return np.clip(0.5 - distance, 0.0, 1.0)


def _main_coverage(spec: ClipSpec, num_frames: int, height: int, width: int) -> np.ndarray:
  """Antialiased coverage of the main object per frame: [T, H, W]."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  side = spec.size * min(height, width)
  out = np.empty((num_frames, height, width), np.float32)
  for i, (cx, cy) in enumerate(shapes.centers(spec, num_frames)):
    distance = shapes._signed_distance(spec.shape, x, y, cx * width, cy * height, side)
    out[i] = np.clip(0.5 - distance, 0.0, 1.0)
  return out


def object_coverage(
    scene: Scene, num_frames: int, height: int, width: int, which: str | None = None
) -> np.ndarray:
  """Coverage in [0, 1] of the objects: float32 [T, H, W].

  which=None: the union (max) of all objects; "main" or "extra": that one alone
  (zeros for an absent extra).
  """
  if which not in (None, "main", "extra"):
    raise ValueError(f"which={which!r} must be None, 'main' or 'extra'")
  coverage = np.zeros((num_frames, height, width), np.float32)
  if which in (None, "main"):
    coverage = _main_coverage(scene.main, num_frames, height, width)
  if which in (None, "extra") and scene.extra is not None:
    coverage = np.maximum(coverage, _extra_coverage(scene.extra, height, width)[None])
  return coverage


def _fill(scene: Scene, which: str) -> np.ndarray:
  color = MARKERS[scene.marker] if scene.marked == which else COLORS[scene.describe(which)[0]]
  return np.asarray(color, np.float32)


def render_scene(scene: Scene, num_frames: int, height: int, width: int) -> np.ndarray:
  """Renders the scene as uint8 [T, H, W, 3].

  Exactly shapes.render_clip(scene.main, ...) for a lone, unmarked object; the
  extra object is composited over the background first, the main object on top
  (they never overlap), both antialiased the same way.
  """
  if scene.extra is None and scene.marked is None:
    return shapes.render_clip(scene.main, num_frames, height, width)
  base = shapes._background(scene.main, height, width)  # [H, W, 3]
  if scene.extra is not None:
    alpha = _extra_coverage(scene.extra, height, width)[:, :, None]  # [H, W, 1]
    base = base + (_fill(scene, "extra") - base) * alpha
  color = _fill(scene, "main")  # [3]
  coverage = _main_coverage(scene.main, num_frames, height, width)[..., None]  # [T, H, W, 1]
  frames = base[None] + (color - base[None]) * coverage  # [T, H, W, 3]
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Edits.


@dataclasses.dataclass(frozen=True)
class Edit:
  """One edit: `instruction` turns `source` into `target`.

  source.attributes[attribute] == before and target.attributes[attribute] ==
  after; every other attribute is the same in both.
  """

  kind: str
  instruction: str
  source: Scene
  target: Scene
  attribute: str
  before: object  # JSON-able: a name, an {"color", "shape", "corner"} dict or None
  after: object


def _others(options, *taken) -> tuple:
  return tuple(o for o in options if o not in taken)


def apply_edit(scene: Scene, kind: str, value, rng: np.random.Generator | None = None) -> Scene:
  """`scene` with ATTRIBUTE_OF[kind] set to `value` (an Edit's `after`).

  "add" takes {"shape", "color", "corner"} (and optionally "size"; else drawn
  from rng, or the middle of EXTRA_SIZE_RANGE); "motion" draws the new lane from
  rng, which it needs; "segment" takes {"object", "marker"}.
  """
  main = scene.main
  if kind in ("color", "shape", "background"):
    return dataclasses.replace(scene, main=dataclasses.replace(main, **{kind: value}))
  if kind == "add":
    size = value.get("size")
    if size is None:
      size = float(np.mean(EXTRA_SIZE_RANGE) if rng is None else rng.uniform(*EXTRA_SIZE_RANGE))
    extra = Extra(shape=value["shape"], color=value["color"], size=size, corner=value["corner"])
    return dataclasses.replace(scene, extra=extra)
  if kind == "remove":
    return dataclasses.replace(scene, extra=None)
  if kind == "motion":
    if rng is None:
      raise ValueError("a motion edit needs an rng to draw the new motion's lane")
    start, velocity = shapes._lane_path(rng, value, main.size)
    moved = dataclasses.replace(main, motion=value, start=start, velocity=velocity)
    return dataclasses.replace(scene, main=moved)
  if kind == "segment":
    return dataclasses.replace(scene, marked=value["object"], marker=value["marker"])
  raise ValueError(f"kind={kind!r} is not one of {EDIT_KINDS}")


def _new_value(rng: np.random.Generator, kind: str, scene: Scene):
  """A random `after` for an edit of `kind` that applies to `scene`, else None."""
  main, extra = scene.main, scene.extra
  if kind == "color":  # Never the other object's colour.
    return shapes._pick(rng, _others(COLORS, main.color, extra and extra.color))
  if kind == "shape":
    return shapes._pick(rng, _others(SHAPES, main.shape))
  if kind == "background":
    return shapes._pick(rng, _others(BACKGROUNDS, main.background))
  if kind == "add":
    if extra is not None:
      return None
    return {
        "shape": shapes._pick(rng, SHAPES),
        "color": shapes._pick(rng, _others(COLORS, main.color)),
        "corner": shapes._pick(rng, CORNERS),
    }
  if kind == "motion":
    return shapes._pick(rng, _others(MOTIONS, main.motion))
  # segment
  which = "main" if extra is None or rng.random() < 0.5 else "extra"
  return {"object": which, "marker": shapes._pick(rng, tuple(MARKERS))}


def sample_edit(rng: np.random.Generator, kind: str, scene: Scene) -> Edit | None:
  """One edit of `kind` to `scene` with a random new value, worded at random.

  None when the kind does not apply: "add" to a scene with a corner object,
  "remove" from one without, or any edit of an already marked scene. A new colour
  is never the other object's, so the two objects keep differing in colour.
  """
  if kind not in EDIT_KINDS:
    raise ValueError(f"kind={kind!r} is not one of {EDIT_KINDS}")
  if scene.marked is not None or (kind == "remove" and scene.extra is None):
    return None
  after = None if kind == "remove" else _new_value(rng, kind, scene)
  if after is None and kind != "remove":
    return None
  before = scene.attributes[ATTRIBUTE_OF[kind]]
  return Edit(
      kind=kind,
      instruction=instruction(kind, scene, before, after, rng),
      source=scene,
      target=apply_edit(scene, kind, after, rng),
      attribute=ATTRIBUTE_OF[kind],
      before=before,
      after=after,
  )


INVERSE_KIND = {"add": "remove", "remove": "add"}


def inverse_instruction(edit: Edit, rng: np.random.Generator | None = None) -> str:
  """Words that undo the edit (target -> source), for back-translation.

  Without an rng the wording is the first template's. Segmentation has no inverse
  (a marked object's colour is lost): ValueError.
  """
  if edit.kind == "segment":
    raise ValueError("a segmentation edit has no inverse: the marked object's colour is lost")
  kind = INVERSE_KIND.get(edit.kind, edit.kind)
  return instruction(kind, edit.target, edit.after, edit.before, rng)


def inverse_edit(edit: Edit, rng: np.random.Generator | None = None) -> Edit:
  """The edit that undoes `edit`: target -> source with inverse_instruction's words."""
  return Edit(
      kind=INVERSE_KIND.get(edit.kind, edit.kind),
      instruction=inverse_instruction(edit, rng),
      source=edit.target,
      target=edit.source,
      attribute=edit.attribute,
      before=edit.after,
      after=edit.before,
  )


# ----------------------------------------------------------------------------
# Held-out (object, edit) combinations.

# kind -> (objects, values) whose product is that kind's keys.
KEY_SPACES = {
    "color": (SHAPES, tuple(COLORS)),
    "shape": (tuple(COLORS), SHAPES),
    "background": (SHAPES, BACKGROUNDS),
    "motion": (SHAPES, MOTIONS),
    "add": (SHAPES, tuple(COLORS)),
    "remove": (SHAPES, tuple(COLORS)),
    "segment": (SHAPES, tuple(MARKERS)),
}


def edit_key(edit: Edit) -> tuple[str, str, str]:
  """(kind, object, value): what the held-out split is decided on (KEY_SPACES)."""
  main = edit.source.main
  if edit.kind in ("color", "background", "motion"):
    return edit.kind, main.shape, edit.after
  if edit.kind == "shape":
    return "shape", main.color, edit.after
  if edit.kind == "add":
    return "add", edit.after["shape"], edit.after["color"]
  if edit.kind == "remove":
    return "remove", edit.before["shape"], edit.before["color"]
  marked = edit.after["object"]
  return "segment", edit.target.describe(marked)[1], edit.after["marker"]


def heldout_edits(seed: int, fraction: float = 0.15) -> frozenset[tuple[str, str, str]]:
  """About `fraction` of each kind's keys (at least one), drawn from the seed.

  A key is held out only while its object and its value each keep another training
  key of the kind, so every shape, colour, background, motion and marker is still
  seen in training for every kind; an eval edit is new only as a combination.
  """
  if not 0 < fraction <= 0.5:
    raise ValueError(f"fraction={fraction!r} must be in (0, 0.5]")
  heldout = set()
  for k, kind in enumerate(EDIT_KINDS):
    keys = [(kind, *pair) for pair in itertools.product(*KEY_SPACES[kind])]
    target = max(1, round(fraction * len(keys)))
    left = {}  # (position, name) -> training keys still using it
    for key in keys:
      for part in ((1, key[1]), (2, key[2])):
        left[part] = left.get(part, 0) + 1
    rng = np.random.default_rng([seed, 0, 20 + k])
    for index in rng.permutation(len(keys)):
      key = keys[int(index)]
      if len(heldout & set(keys)) == target:
        break
      if left[(1, key[1])] > 1 and left[(2, key[2])] > 1:
        heldout.add(key)
        left[(1, key[1])] -= 1
        left[(2, key[2])] -= 1
  return frozenset(heldout)


def is_heldout(edit: Edit, heldout: frozenset) -> bool:
  return edit_key(edit) in heldout


def sample_edit_where(
    rng: np.random.Generator, kind: str, extra_prob: float, accept, still: bool = False
) -> Edit:
  """A random scene and edit of `kind` whose edit_key passes `accept` (rejection).

  "add" draws scenes without, "remove" with a corner object; `still` edits the
  scene's first frame at rest (still_scene) as stage I does.
  """
  prob = {"add": 0.0, "remove": 1.0}.get(kind, extra_prob)
  for _ in range(10_000):
    scene = sample_scene(rng, prob)
    edit = sample_edit(rng, kind, still_scene(scene) if still else scene)
    if edit is not None and accept(edit_key(edit)):
      return edit
  raise RuntimeError(f"no {kind} edit passed the filter in 10,000 draws")


# ----------------------------------------------------------------------------
# Animated frame editing (stage II).

MAX_SHIFT = 0.2  # Translation at the last frame, fraction of the frame, per axis.
ZOOM_RANGE = (0.85, 1.2)
MAX_ROTATION = 15.0  # Degrees.


def animate_pair(
    source_image: np.ndarray, target_image: np.ndarray, rng: np.random.Generator, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
  """Both stills moved by the same random affine motion: two uint8 [T, H, W, 3] clips.

  Movie Gen Edit's animated frame editing: an edited image pair becomes an edited
  video pair with identical camera motion, so only the edit differs. Shift, zoom
  and rotation (about the centre) grow linearly from the identity at frame 0 to
  a random end. Uncovered borders repeat the edge pixels: a reflection would
  mirror a corner object into view and add a second one.
  """
  source_image, target_image = np.asarray(source_image), np.asarray(target_image)
  if source_image.shape != target_image.shape or source_image.ndim != 3:
    raise ValueError(
        f"animate_pair needs two images [H, W, 3] of one shape, got "
        f"{source_image.shape} and {target_image.shape}"
    )
  height, width = source_image.shape[:2]
  shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * np.array([height, width])  # (dy, dx) px
  zoom = float(rng.uniform(*ZOOM_RANGE))
  angle = math.radians(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)))
  centre = np.array([height - 1, width - 1]) / 2.0
  planes = np.concatenate([source_image, target_image], axis=-1).astype(np.float32)  # [H, W, 6]
  clips = np.empty((num_frames, height, width, 6), np.uint8)
  for t in range(num_frames):
    u = t / max(num_frames - 1, 1)
    scale, a = 1.0 + u * (zoom - 1.0), u * angle
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    # Output pixel p shows input pixel centre + R^T (p - centre - shift) / scale.
    inverse = rotation.T / scale  # [2, 2] on (y, x)
    offset = centre - inverse @ (centre + u * shift)
    for c in range(6):  # Plane by plane: 2-D interpolation is twice as fast as 3-D.
      moved = ndimage.affine_transform(
          planes[:, :, c], inverse, offset=offset, order=1, mode="nearest"
      )
      clips[t, :, :, c] = np.clip(np.rint(moved), 0, 255).astype(np.uint8)
  return clips[..., :3], clips[..., 3:]
