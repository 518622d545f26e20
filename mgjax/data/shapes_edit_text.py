"""Words of the shapes edit set: scene captions and edit instructions.

A caption is shapes.caption of the moving object, then the corner object and any
marking. An instruction comes from one of several templates per edit kind (your own
words would do as well: the model reads them through its text encoders) and names
each object so that it is unambiguous in a two-object scene: by colour and shape, by
shape alone when the other object is another shape, or by its corner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mgjax.data import shapes

if TYPE_CHECKING:
  from mgjax.data.shapes_edit import Scene

EXTRA_PHRASES = (
    "and a small {color} {shape} sits in the {corner} corner",
    "with a small {color} {shape} in the {corner} corner",
    "and a {color} {shape} rests in the {corner} corner",
)
MARK_PHRASE = "with the {name} marked in {marker}"


def scene_caption(scene: Scene) -> str:
  """shapes.caption of the main object, then the corner object and the marking.

  A lone unmarked object gets exactly shapes.caption, which parse_caption reads.
  """
  text = shapes.caption(scene.main)
  if scene.extra is not None:
    phrase = EXTRA_PHRASES[scene.main.motion_phrase % len(EXTRA_PHRASES)]
    text += ", " + phrase.format(**scene.extra.attributes)
  if scene.marked is not None:
    name = "{} {}".format(*scene.describe(scene.marked))
    text += ", " + MARK_PHRASE.format(name=name, marker=scene.marker)
  return text


# ----------------------------------------------------------------------------
# Instructions.

COLOR_TEMPLATES = (
    "make {name} {new}",
    "turn {name} {new}",
    "change the colour of {name} to {new}",
    "paint {name} {new}",
    "recolour {name} so that it is {new}",
)
SHAPE_TEMPLATES = (
    "turn {name} into a {new}",
    "make {name} a {new} instead",
    "change {name} into a {new}",
    "replace {name} with a {color} {new}",
    "reshape {name} into a {new}",
)
BACKGROUND_TEMPLATES = (
    "change the background to a {new} one",
    "replace the {old} background with a {new} one",
    "make the background {new}",
    "give the scene a {new} background",
    "swap the {old} background for a {new} one",
)
ADD_TEMPLATES = (
    "add a {color} {shape} in the {corner} corner",
    "put a small {color} {shape} in the {corner} corner",
    "place a {color} {shape} in the {corner} corner",
    "insert a small {color} {shape} at the {corner} corner",
)
REMOVE_TEMPLATES = (
    "remove {name}",
    "delete {name}",
    "take the {color} {shape} out of the {corner} corner",
    "get rid of {name}",
    "erase {name} from the scene",
)
MOTION_TEMPLATES = (
    "make {name} {verb} instead",
    "have {name} {verb}",
    "change the motion so that {name} {does}",
    "make {name} {verb} instead of {old_doing}",
)
SEGMENT_TEMPLATES = (
    "mark {name} in {marker}",
    "highlight {name} in {marker}",
    "segment {name} and paint it {marker}",
    "fill {name} with {marker} to mark it",
)
MOTION_VERBS = {  # (verb, third person, gerund)
    "left": ("move to the left", "moves to the left", "moving left"),
    "right": ("move to the right", "moves to the right", "moving right"),
    "up": ("move up", "moves up", "moving up"),
    "down": ("move down", "moves down", "moving down"),
    "still": ("stay still", "stays still", "staying still"),
    "bouncing": ("bounce around", "bounces around", "bouncing around"),
}


def _names(scene: Scene, which: str) -> list[str]:
  """Noun phrases that pick out one object of the scene and nothing else."""
  color, shape = scene.describe(which)
  other = scene.extra if which == "main" else scene.main
  names = [f"the {color} {shape}"]
  if other is None or other.shape != shape:
    names.append(f"the {shape}")
  if which == "extra":
    names.append(f"the {shape} in the {scene.extra.corner} corner")
  return names


def _choose(rng: np.random.Generator | None, options):
  """A random option, or the first when there is no rng (a canonical wording)."""
  return options[0] if rng is None else shapes._pick(rng, tuple(options))


def instruction(kind: str, scene: Scene, before, after, rng=None) -> str:
  """The words for changing `scene`'s ATTRIBUTE_OF[kind] from `before` to `after`."""
  main = _choose(rng, _names(scene, "main"))
  if kind == "color":
    return _choose(rng, COLOR_TEMPLATES).format(name=main, new=after)
  if kind == "shape":
    template = _choose(rng, SHAPE_TEMPLATES)
    return template.format(name=main, new=after, color=scene.main.color)
  if kind == "background":
    return _choose(rng, BACKGROUND_TEMPLATES).format(old=before, new=after)
  if kind == "add":
    return _choose(rng, ADD_TEMPLATES).format(**after)
  if kind == "remove":
    name = _choose(rng, _names(scene, "extra"))
    return _choose(rng, REMOVE_TEMPLATES).format(name=name, **before)
  if kind == "motion":
    verb, does, _ = MOTION_VERBS[after]
    template = _choose(rng, MOTION_TEMPLATES)
    return template.format(name=main, verb=verb, does=does, old_doing=MOTION_VERBS[before][2])
  if kind == "segment":
    name = _choose(rng, _names(scene, after["object"]))
    return _choose(rng, SEGMENT_TEMPLATES).format(name=name, marker=after["marker"])
  raise ValueError(f"kind={kind!r} is not an edit kind")
