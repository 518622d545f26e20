"""The identity shapes set: subjects a checker can tell apart, for personalisation.

Personalised text-to-video (PT2V) keeps a subject's identity from one reference
image. The plain shapes have no identity beyond their attributes, so here every
clip's shape carries an *accent*: the part of the shape beyond ACCENT_OFFSET of
its side from its centroid, towards one of 16 directions, painted in one of two
tones (near white, near black). Direction x tone is the subject, 32 in all
(`SUBJECTS`, named like "light045": tone, then the direction in whole degrees
counter-clockwise from the +x axis, y up). A subject is shown under varying colour,
shape, size, background and motion, like a person in different clothes and places;
the caption names the colour, shape, motion and background as usual, never the
subject: only the reference tells it.

  * The tones are achromatic and far from every background's brightness, so the
    accent is found as "not background, not coloured" next to the coloured part.
    The checker (mgjax/eval/identity.py) reads 8 directions: the 16 subjects on
    that grid (`IDENTITIES`) are the ones it tells apart, the 16 between them
    make the training set's subjects dense, so that a model learns to copy an
    accent rather than to recognise a few.
  * `HELDOUT_IDENTITIES` (4 of the 16) never appear in training: their clips form
    the "eval" split. Each held-out direction is trained in the other tone and each
    tone in the other directions, so an unseen identity is new only as a whole.
  * Every clip has a reference image (references/NNNNN.png): the subject alone on
    flat grey, centred and filling 1/REFERENCE_MARGIN of the image, as a masked
    crop of one of its frames would be (the paper's masked face crop). Pairing a
    clip with its own reference is "paired" data; with the reference of another
    clip of the same subject (another colour, shape and size), "cross-paired"
    (mgjax/tasks/pt2v.py chooses).

Command line:
  python -m mgjax.data.shapes_identity --out=DIR --num_videos=512 --seed=0
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from mgjax.data import shapes, video
from mgjax.data.shapes import (
    COLORS,
    MANIFEST,
    ClipSpec,
    caption,
    centers,
    holds_finished_set,
    jsonl_text,
    sample_spec,
    write_text_atomic,
)

NUM_DIRECTIONS = 8  # the directions the checker tells apart
SUBJECT_DIRECTIONS = 16  # the directions subjects face: twice as many
TONES: dict[str, tuple[int, int, int]] = {"light": (250, 250, 250), "dark": (12, 12, 12)}


def subject_name(tone: str, step: int, directions: int = SUBJECT_DIRECTIONS) -> str:
  """ "light045": the tone, then direction `step` of `directions` in whole degrees."""
  return f"{tone}{round(step * 360 / directions):03d}"


SUBJECTS = tuple(subject_name(tone, d) for tone in TONES for d in range(SUBJECT_DIRECTIONS))
IDENTITIES = SUBJECTS[:: SUBJECT_DIRECTIONS // NUM_DIRECTIONS]  # on the checker's grid
HELDOUT_IDENTITIES = ("light045", "dark090", "light180", "dark315")
# The accent is the part of the shape beyond this fraction of its side from its
# centroid, towards the identity's direction (a third to a half of the shape).
ACCENT_OFFSET = 0.05
# Larger shapes than the plain set (0.25-0.35) so the accent spans a latent pixel.
IDENTITY_SIZE_RANGE = (0.42, 0.52)
REFERENCE_MARGIN = 1.3  # the reference image's side over the shape's side
MASK_GREY = (128, 128, 128)  # what replaces the background in a reference
PARAMS_FILE = "identity.json"
DATASET_VERSION = 2


def direction_of(subject: str) -> float:
  """The accent direction of a subject, radians counter-clockwise from +x, y up."""
  step = round(int(subject[-3:]) * SUBJECT_DIRECTIONS / 360)
  return 2 * math.pi * step / SUBJECT_DIRECTIONS


def tone_of(identity: str) -> str:
  return identity[:-3]


def check_subject(subject: str) -> str:
  if subject not in SUBJECTS:
    raise ValueError(f"Unknown subject {subject!r}; the subjects are {SUBJECTS}.")
  return subject


def render_subject(
    spec: ClipSpec, identity: str, num_frames: int, height: int, width: int
) -> np.ndarray:
  """The clip of `spec` with its shape wearing `identity`'s accent: uint8 [T, H, W, 3].

  Edges are antialiased as in shapes.render_clip; the accent boundary too.
  """
  background = shapes._background(spec, height, width)  # [H, W, 3]
  color = np.asarray(COLORS[spec.color], np.float32)
  tone = np.asarray(TONES[tone_of(check_subject(identity))], np.float32)
  side = spec.size * min(height, width)
  angle = direction_of(identity)
  ux, uy = math.cos(angle), -math.sin(angle)  # image coordinates: y points down
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for i, (cx, cy) in enumerate(centers(spec, num_frames)):
    px, py = cx * width, cy * height
    distance = shapes._signed_distance(spec.shape, x, y, px, py, side)
    coverage = np.clip(0.5 - distance, 0.0, 1.0)[:, :, None]  # [H, W, 1]
    oy = py + (side * math.sqrt(3) / 12 if spec.shape == "triangle" else 0.0)  # centroid
    along = (x - px) * ux + (y - oy) * uy  # [H, W] pixels towards the accent
    accent = np.clip(0.5 + along - ACCENT_OFFSET * side, 0.0, 1.0)[:, :, None]
    fill = color + (tone - color) * accent  # [H, W, 3]
    frame = background + (fill - background) * coverage
    frames[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
  return frames


def reference_image(spec: ClipSpec, identity: str, size: int) -> np.ndarray:
  """The subject alone on flat grey, centred: uint8 [size, size, 3] (a masked crop)."""
  centred = dataclasses.replace(
      spec,
      background="plain",
      background_color=MASK_GREY,
      size=1.0 / REFERENCE_MARGIN,
      start=(0.5, 0.5),
      velocity=(0.0, 0.0),
      motion="still",
  )
  return render_subject(centred, identity, 1, size, size)[0]


def sample_subject_spec(rng: np.random.Generator, paths: str) -> ClipSpec:
  """A shapes clip description with the identity set's shape sizes."""
  spec = sample_spec(rng, paths)
  low, high = IDENTITY_SIZE_RANGE
  if paths == "random":  # a path anywhere must still fit its longest travel in frame
    high = min(high, 1 - shapes.TRAVEL_RANGE[1])
    low = min(low, high - 0.05)
  size = float(rng.uniform(low, high))
  path = shapes._lane_path if paths == "lanes" else shapes._random_path
  start, velocity = path(rng, spec.motion, size)  # a path that fits this size
  return dataclasses.replace(spec, size=size, start=start, velocity=velocity)


def dataset_params(num_videos, seed, fps, num_frames, height, width, paths, reference_size) -> dict:
  params = shapes.dataset_params(num_videos, seed, fps, num_frames, height, width, 0, 0.0, paths)
  if int(reference_size) != reference_size or reference_size < 8:
    raise ValueError(f"reference_size={reference_size!r} must be an int >= 8")
  del params["num_images"], params["eval_fraction"]
  return {**params, "version": DATASET_VERSION, "reference_size": int(reference_size)}


def make_dataset(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    paths: str = "lanes",
    reference_size: int = 32,
) -> str:
  """Writes videos/NNNNN.mp4, references/NNNNN.png, identity.json and manifest.jsonl
  (last, atomically) under out_dir; returns the manifest path.

  Clip i is drawn from np.random.default_rng([seed, i, 3]), its identity uniformly
  from IDENTITIES; a held-out identity's clips are split "eval". Records carry
  "subject" (the identity) and "reference" next to the usual shapes fields.
  """
  out_dir = os.fspath(out_dir)
  params = dataset_params(num_videos, seed, fps, num_frames, height, width, paths, reference_size)
  for sub in ("videos", "references"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  for name in (MANIFEST, PARAMS_FILE):  # a half-made set has neither
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  records = []
  for index in range(params["num_videos"]):
    rng = np.random.default_rng([params["seed"], index, 3])
    identity = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    spec = sample_subject_spec(rng, paths)
    clip, reference = f"videos/{index:05d}.mp4", f"references/{index:05d}.png"
    frames = render_subject(spec, identity, params["num_frames"], params["height"], params["width"])
    video.write_video(os.path.join(out_dir, clip), frames, params["fps"])
    video.write_image(
        os.path.join(out_dir, reference), reference_image(spec, identity, params["reference_size"])
    )
    records.append(
        {
            "video": clip,
            "reference": reference,
            "subject": identity,
            "caption": caption(spec),
            "fps": params["fps"],
            "num_frames": params["num_frames"],
            "width": params["width"],
            "height": params["height"],
            "split": "eval" if identity in HELDOUT_IDENTITIES else "train",
            "attributes": {**spec.attributes, "identity": identity},
        }
    )
  write_text_atomic(
      os.path.join(out_dir, PARAMS_FILE), json.dumps(params, sort_keys=True, indent=1) + "\n"
  )
  manifest = os.path.join(out_dir, MANIFEST)
  write_text_atomic(manifest, jsonl_text(records))
  return manifest


def ensure_dataset(out_dir: str | os.PathLike, **kwargs) -> str:
  """The manifest of a complete set made with these arguments (make_dataset's),
  making it when absent, different or cut short."""
  defaults = dict(fps=16, num_frames=32, height=64, width=64, paths="lanes", reference_size=32)
  args = {**defaults, **kwargs}
  params = dataset_params(**args)
  if holds_finished_set(
      out_dir, PARAMS_FILE, params, {MANIFEST: (params["num_videos"], ("video", "reference"))}
  ):
    return os.path.join(os.fspath(out_dir), MANIFEST)
  return make_dataset(out_dir, **args)


def _main(argv) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
  f = flags.FLAGS
  manifest = ensure_dataset(
      f.out,
      num_videos=f.num_videos,
      seed=f.seed,
      num_frames=f.num_frames,
      height=f.height,
      width=f.width,
      reference_size=f.reference_size,
  )
  records = shapes.read_jsonl(manifest)
  print(
      f"shapes_identity: {len(records)} clips of {len({r['subject'] for r in records})} "
      f"subjects ({sum(r['split'] == 'eval' for r in records)} of held-out subjects) in "
      f"{manifest}"
  )


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("out", None, "Directory to write the data set into.", required=True)
  flags.DEFINE_integer("num_videos", 512, "Number of clips.")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed gives identical files.")
  flags.DEFINE_integer("num_frames", 32, "Frames per clip.")
  flags.DEFINE_integer("height", 64, "Frame height in pixels (even).")
  flags.DEFINE_integer("width", 64, "Frame width in pixels (even).")
  flags.DEFINE_integer("reference_size", 32, "Side of the reference images in pixels.")
  app.run(_main)
