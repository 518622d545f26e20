"""The shapes edit set on disk, for the edit task's three stages.

Files (under out_dir): images/ and videos/, then the manifests, written last and
atomically: image_edits.jsonl (stage I: single-frame edits), video_edits.jsonl
(stage II: animated image edits, segmentation and motion edits of lane clips),
real.jsonl (captioned clips for text-to-video, image-to-video, extension and
back-translation) and eval_edits.jsonl (held-out (object, edit) combinations applied
to fresh lane clips). Scenes, edits and the held-out split: mgjax/data/shapes_edit.py.

Command line:
  python -m mgjax.data.shapes_edit_set --out=DIR --seed=0
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from mgjax.data import shapes, video
from mgjax.data.shapes import holds_finished_set, jsonl_text, write_text_atomic
from mgjax.data.shapes_edit import (
    ANIMATED_KINDS,
    EDIT_KINDS,
    IMAGE_KINDS,
    Edit,
    Scene,
    animate_pair,
    edit_key,
    heldout_edits,
    inverse_instruction,
    render_scene,
    sample_edit_where,
    sample_scene,
    scene_to_dict,
)
from mgjax.data.shapes_edit_text import scene_caption

DATASET_VERSION = 1  # bumped whenever rendering or sampling changes, so sets are remade
IMAGE_EDITS = "image_edits.jsonl"
VIDEO_EDITS = "video_edits.jsonl"
REAL = "real.jsonl"
EVAL_EDITS = "eval_edits.jsonl"
MANIFESTS = (IMAGE_EDITS, VIDEO_EDITS, REAL, EVAL_EDITS)
PARAMS_FILE = "shapes_edit.json"
# Per-record rng streams, np.random.default_rng([seed, index, K]), one K per manifest.
STREAMS = {IMAGE_EDITS: 11, VIDEO_EDITS: 12, REAL: 13, EVAL_EDITS: 14}
# Stage II slots, cycled by record index: animated frame edits, segmentation and
# motion edits of real clips.
VIDEO_SLOTS = ("animated", "segment", "animated", "motion")
HELDOUT_FRACTION = 0.15
_MEDIA_NAME = re.compile(r"^(image|video|real|eval)_\d{5,}(_source|_target)?\.(png|mp4)$")


def dataset_params(
    seed=0,
    num_image_edits=2048,
    num_video_edits=1024,
    num_real=512,
    num_eval=84,
    fps=16,
    num_frames=32,
    height=64,
    width=64,
    extra_prob=0.35,
) -> dict:
  """Validated parameters, as stored in shapes_edit.json."""
  for name, value, minimum in (
      ("num_image_edits", num_image_edits, 0),
      ("num_video_edits", num_video_edits, 0),
      ("num_real", num_real, 0),
      ("num_eval", num_eval, 0),
      ("num_frames", num_frames, 1),
      ("height", height, 16),
      ("width", width, 16),
  ):
    if int(value) != value or value < minimum:
      raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
  if height % 2 or width % 2:
    raise ValueError(f"height={height} and width={width} must be even (H.264 4:2:0)")
  if not fps > 0:
    raise ValueError(f"fps={fps!r} must be positive")
  if not 0 <= extra_prob <= 1:
    raise ValueError(f"extra_prob={extra_prob!r} must be in [0, 1]")
  return {
      "version": DATASET_VERSION,
      "seed": int(seed),
      "num_image_edits": int(num_image_edits),
      "num_video_edits": int(num_video_edits),
      "num_real": int(num_real),
      "num_eval": int(num_eval),
      "fps": float(fps),
      "num_frames": int(num_frames),
      "height": int(height),
      "width": int(width),
      "extra_prob": float(extra_prob),
  }


def _edit_record(edit: Edit, media: str, target: str, source: str, split: str, rng) -> dict:
  inverse = None if edit.kind == "segment" else inverse_instruction(edit, rng)
  return {
      media: target,
      "source": source,
      "caption": edit.instruction,
      "task": edit.kind,
      "split": split,
      "source_scene": scene_to_dict(edit.source),
      "target_scene": scene_to_dict(edit.target),
      "edit": {
          "kind": edit.kind,
          "attribute": edit.attribute,
          "before": edit.before,
          "after": edit.after,
      },
      "key": list(edit_key(edit)),
      "source_caption": scene_caption(edit.source),
      "target_caption": scene_caption(edit.target),
      "inverse": inverse,
  }


class _Writer:
  """Renders and writes one data set's media; paths relative to out_dir."""

  def __init__(self, out_dir: str, params: dict):
    self.out_dir, self.p = out_dir, params

  def clip_fields(self) -> dict:
    p = self.p
    return {k: p[k] for k in ("fps", "num_frames", "width", "height")}

  def video(self, name: str, frames: np.ndarray) -> str:
    relative = f"videos/{name}.mp4"
    video.write_video(os.path.join(self.out_dir, relative), frames, self.p["fps"])
    return relative

  def image(self, name: str, image: np.ndarray) -> str:
    relative = f"images/{name}.png"
    video.write_image(os.path.join(self.out_dir, relative), image)
    return relative

  def render(self, scene: Scene, num_frames: int | None = None) -> np.ndarray:
    p = self.p
    return render_scene(scene, num_frames or p["num_frames"], p["height"], p["width"])


def _image_edit(w: _Writer, index: int, rng, heldout) -> dict:
  kind = IMAGE_KINDS[index % len(IMAGE_KINDS)]
  edit = sample_edit_where(rng, kind, w.p["extra_prob"], lambda k: k not in heldout, still=True)
  name = f"image_{index:05d}"
  source = w.image(name + "_source", w.render(edit.source, 1)[0])
  target = w.image(name + "_target", w.render(edit.target, 1)[0])
  record = _edit_record(edit, "image", target, source, "train", rng)
  return {**record, "width": w.p["width"], "height": w.p["height"]}


def _video_edit(w: _Writer, index: int, rng, heldout) -> dict:
  slot = VIDEO_SLOTS[index % len(VIDEO_SLOTS)]
  train = lambda k: k not in heldout  # noqa: E731
  animated = slot == "animated"
  if animated:
    kind = shapes._pick(rng, ANIMATED_KINDS)
    edit = sample_edit_where(rng, kind, w.p["extra_prob"], train, still=True)
    stills = w.render(edit.source, 1)[0], w.render(edit.target, 1)[0]  # 2 x [H, W, 3]
    source_clip, target_clip = animate_pair(*stills, rng, w.p["num_frames"])
  else:
    edit = sample_edit_where(rng, slot, w.p["extra_prob"], train)
    source_clip, target_clip = w.render(edit.source), w.render(edit.target)
  name = f"video_{index:05d}"
  source = w.video(name + "_source", source_clip)
  target = w.video(name + "_target", target_clip)
  record = _edit_record(edit, "video", target, source, "train", rng)
  return {**record, **w.clip_fields(), "animated": animated}


def _eval_edit(w: _Writer, index: int, rng, heldout) -> dict:
  kind = EDIT_KINDS[index % len(EDIT_KINDS)]
  keys = sorted(k for k in heldout if k[0] == kind)
  wanted = keys[(index // len(EDIT_KINDS)) % len(keys)]
  edit = sample_edit_where(rng, kind, w.p["extra_prob"], lambda k: k == wanted)
  name = f"eval_{index:05d}"
  source = w.video(name + "_source", w.render(edit.source))
  target = w.video(name + "_target", w.render(edit.target))
  record = _edit_record(edit, "video", target, source, "eval", rng)
  return {**record, **w.clip_fields(), "animated": False}


def _real_clip(w: _Writer, index: int, rng, heldout) -> dict:
  del heldout  # Generation has no held-out edits.
  scene = sample_scene(rng, w.p["extra_prob"])
  return {
      "video": w.video(f"real_{index:05d}", w.render(scene)),
      "caption": scene_caption(scene),
      "task": "generate",
      "split": "train",
      **w.clip_fields(),
      "scene": scene_to_dict(scene),
      "attributes": scene.attributes,
  }


_BUILDERS = {
    IMAGE_EDITS: ("num_image_edits", _image_edit),
    VIDEO_EDITS: ("num_video_edits", _video_edit),
    REAL: ("num_real", _real_clip),
    EVAL_EDITS: ("num_eval", _eval_edit),
}


def _remove_stale(out_dir: str) -> None:
  """Removes this data set's own files: manifests and parameters first, then media."""
  for name in (*MANIFESTS, PARAMS_FILE):
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  for sub in ("images", "videos"):
    directory = os.path.join(out_dir, sub)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
      if _MEDIA_NAME.match(name):
        os.remove(os.path.join(directory, name))


def make_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_image_edits: int = 2048,
    num_video_edits: int = 1024,
    num_real: int = 512,
    num_eval: int = 84,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    extra_prob: float = 0.35,
) -> dict[str, str]:
  """Writes the data set under out_dir; returns {manifest name: path}.

  Record i of a manifest is drawn from
  np.random.default_rng([seed, i, STREAMS[manifest]]), so the same arguments
  give identical files. Edits whose edit_key is held out (heldout_edits(seed))
  appear only in eval_edits.jsonl, spread evenly over the kinds and their keys.
  Media paths in the records are relative to out_dir.
  """
  out_dir = os.fspath(out_dir)
  params = dataset_params(
      seed,
      num_image_edits,
      num_video_edits,
      num_real,
      num_eval,
      fps,
      num_frames,
      height,
      width,
      extra_prob,
  )
  heldout = heldout_edits(params["seed"], HELDOUT_FRACTION)
  os.makedirs(out_dir, exist_ok=True)
  _remove_stale(out_dir)
  for sub in ("images", "videos"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  writer = _Writer(out_dir, params)
  texts = {}
  for manifest, (count, build) in _BUILDERS.items():
    records = []
    for index in range(params[count]):
      rng = np.random.default_rng([params["seed"], index, STREAMS[manifest]])
      records.append(build(writer, index, rng, heldout))
    texts[manifest] = jsonl_text(records)
  params_text = json.dumps(params, sort_keys=True, indent=1) + "\n"
  write_text_atomic(os.path.join(out_dir, PARAMS_FILE), params_text)
  for manifest in MANIFESTS:  # After all media, so a listed file always exists.
    write_text_atomic(os.path.join(out_dir, manifest), texts[manifest])
  return {m: os.path.join(out_dir, m) for m in MANIFESTS}


def is_complete(out_dir: str | os.PathLike, params: dict) -> bool:
  """Whether out_dir holds a finished set made with exactly `params`."""
  return holds_finished_set(
      out_dir,
      PARAMS_FILE,
      params,
      {
          IMAGE_EDITS: (params["num_image_edits"], ("image", "source")),
          VIDEO_EDITS: (params["num_video_edits"], ("video", "source")),
          REAL: (params["num_real"], ("video",)),
          EVAL_EDITS: (params["num_eval"], ("video", "source")),
      },
  )


def ensure_dataset(out_dir: str | os.PathLike, **kwargs) -> dict[str, str]:
  """The manifests of a complete set made with these arguments (make_dataset's),
  making it when absent, different or cut short."""
  if is_complete(out_dir, dataset_params(**kwargs)):
    return {m: os.path.join(os.fspath(out_dir), m) for m in MANIFESTS}
  return make_dataset(out_dir, **kwargs)


# ----------------------------------------------------------------------------
# Command line.


def _main(argv) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
  f = flags.FLAGS
  args = {name: getattr(f, name) for name in _FLAG_NAMES}
  try:
    reused = is_complete(f.out, dataset_params(**args))
    manifests = ensure_dataset(f.out, **args)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  counts = ", ".join(
      f"{len(shapes.read_jsonl(path))} in {name}" for name, path in manifests.items()
  )
  print(f"shapes_edit: {'found' if reused else 'wrote'} {counts} under {f.out}")


_FLAG_NAMES = (
    "seed",
    "num_image_edits",
    "num_video_edits",
    "num_real",
    "num_eval",
    "fps",
    "num_frames",
    "height",
    "width",
    "extra_prob",
)

if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("out", None, "Directory to write the data set into.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed; the same seed gives identical files.")
  flags.DEFINE_integer("num_image_edits", 2048, "Stage I single-frame edit pairs.")
  flags.DEFINE_integer("num_video_edits", 1024, "Stage II multi-frame edit pairs.")
  flags.DEFINE_integer("num_real", 512, "Captioned real clips (generation, back-translation).")
  flags.DEFINE_integer("num_eval", 84, "Held-out eval edits on real clips.")
  flags.DEFINE_float("fps", 16, "Frame rate of the clips.")
  flags.DEFINE_integer("num_frames", 32, "Frames per clip.")
  flags.DEFINE_integer("height", 64, "Frame height in pixels (even).")
  flags.DEFINE_integer("width", 64, "Frame width in pixels (even).")
  flags.DEFINE_float("extra_prob", 0.35, "Probability of a corner object in a scene.")
  app.run(_main)
