"""Movie Gen Edit stage III data: back-translation of real clips.

There is no supervised video editing data, so the stage II model makes it: it edits
a real clip by an instruction (through `Task.generate`, as a user would), an
instruction that undoes the edit is written, and stage III learns to map the
model's edit back to the real clip with that instruction. The target is therefore
always a real video; the model's artefacts are only ever in its input.

On the shapes edit set the scene of every real clip is known, so the edit is drawn
(edit.backtranslate.kinds) and its inverse worded by mgjax/data/shapes_edit.py
(the paper has an LLM write it). Pairs whose inverse (object, edit) combination is
held out are not made. Written under <workdir>/backtranslation:

    videos/NNNNN.mp4    the stage II model's edit of real clip NNNNN
    partial.jsonl       pairs made so far (a killed run resumes after them)
    manifest.jsonl      all pairs, written last: {"video": the real clip, "source":
                        the edit, "caption": the undoing instruction, "task": its
                        kind, "forward": the instruction the model was given, ...}
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from mgjax import recipe, runs
from mgjax.data import shapes_edit
from mgjax.data.records import read_manifest
from mgjax.data.shapes import jsonl_text, read_jsonl, write_text_atomic
from mgjax.data.video import write_video
from mgjax.parallel import distributed
from mgjax.tasks.outputs import SampleRequest

DIR = "backtranslation"


def manifest_path(workdir: str) -> str:
  return os.path.join(workdir, DIR, "manifest.jsonl")


def planned_edits(task) -> list[tuple[dict, shapes_edit.Edit]]:
  """(real clip record, the edit to make of it) for the first edit.backtranslate.num_clips
  training clips; each clip's edit is drawn from [seed, index]."""
  b = task.config.edit.backtranslate
  path = os.path.join(task.data_dir, "real.jsonl")
  clips = read_manifest(path, split="train").records[: b.num_clips]
  heldout = shapes_edit.heldout_edits(task.config.data.shapes.seed)
  plans = []
  for index, record in enumerate(clips):
    rng = np.random.default_rng([b.seed, index, 7])
    scene = shapes_edit.scene_from_dict(record["scene"])
    for kind in rng.permutation(list(b.kinds)):
      edit = shapes_edit.sample_edit(rng, str(kind), scene)
      if edit is not None and not shapes_edit.is_heldout(shapes_edit.inverse_edit(edit), heldout):
        plans.append((record, edit))
        break
  return plans


def ensure(task) -> str:
  """The back-translation manifest, made (or finished) on process 0 first."""
  path = manifest_path(task.workdir)
  return distributed.first_process_first(
      "backtranslation", lambda: path if os.path.exists(path) else make(task)
  )


def make(task) -> str:
  b = task.config.edit.backtranslate
  out_dir = os.path.dirname(manifest_path(task.workdir))
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  partial_path = os.path.join(out_dir, "partial.jsonl")
  done = read_jsonl(partial_path) if os.path.exists(partial_path) else []
  plans = planned_edits(task)
  source_run = recipe.run_or_stage(task.config, task.workdir, b.run)
  if not runs.has_run(source_run):
    raise FileNotFoundError(
        f"edit.backtranslate.run={b.run!r}: no trained run in {source_run}; train stage II "
        "first (or list it in train.recipe)."
    )
  _, model, params, frozen = runs.restore_weights(source_run)
  logging.info(
      "Back-translation: %d of %d real clips edited by %s so far.",
      len(done),
      len(plans),
      source_run,
  )
  for start in range(len(done), len(plans), b.batch_size):
    part = plans[start : start + b.batch_size]
    request = SampleRequest(
        inputs=[record["video"] for record, _ in part],
        instructions=[edit.instruction for _, edit in part],
        edit_tasks=[edit.kind for _, edit in part],
        num_steps=b.num_steps,
        cfg_scale=b.cfg_scale,
        seed=b.seed + start,
        batch_size=b.batch_size,
    )
    samples = model.generate(params, frozen, request)
    for offset, ((record, edit), sample) in enumerate(zip(part, samples)):
      relative = os.path.join("videos", f"{start + offset:05d}.mp4")
      write_video(os.path.join(out_dir, relative), sample.video, sample.fps)
      inverse = shapes_edit.inverse_edit(edit)
      done.append(
          {
              "video": record["video"],
              "source": relative,
              "caption": inverse.instruction,
              "task": inverse.kind,
              "forward": edit.instruction,
              "split": "train",
              "fps": sample.fps,
              "num_frames": len(sample.video),
              "height": sample.video.shape[1],
              "width": sample.video.shape[2],
              "source_scene": shapes_edit.scene_to_dict(edit.target),
              "target_scene": shapes_edit.scene_to_dict(edit.source),
          }
      )
    write_text_atomic(partial_path, jsonl_text(done))
  path = manifest_path(task.workdir)
  write_text_atomic(path, jsonl_text(done))
  with open(os.path.join(out_dir, "made_by.json"), "w") as f:
    json.dump({"run": source_run, "pairs": len(done)}, f)
  return path
