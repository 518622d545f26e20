"""Evaluation of an edit run: held-out edits scored from pixels, beside earlier stages
and SDEdit; image-to-video and extension on held-out clips.

Edits: the first eval.num_edits records of edit.eval_manifest ((object, edit)
combinations never trained on), each source clip edited by this run, by the runs of
edit.baselines (earlier stages: the same edit; a T2V run: SDEdit, the source noised
to edit.sdedit_t0 and denoised towards the target's caption, as the paper compares
with SDEdit), scored by mgjax/eval/edit.py: success (the edited attribute reads the
new value), preservation (the untouched attributes read as on the source; PSNR
outside the edited objects), per kind and averaged over colour, background, motion,
add and remove.

Generation (this run only), on the same held-out source clips and their captions:
  i2v     the clip's first frame as the image: PSNR of the first output frame against
          it, next to the TAE's own reconstruction of it (the ceiling), and whether the
          clip follows the caption's motion;
  extend  the first half of the clip's latent frames kept: the largest change of a
          kept latent (0: bit-exact), the seam (the frame-to-frame change across the
          boundary over the median change elsewhere), and the motion of the whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import flow, recipe, runs
from mgjax.data import shapes_edit, shapes_edit_text
from mgjax.data.examples import load_pixels
from mgjax.data.video import MediaDecodeError
from mgjax.eval import edit as edit_checker
from mgjax.eval import metrics
from mgjax.tasks import edit_conditions as conds
from mgjax.tasks.edit import stack_conditions
from mgjax.tasks.outputs import Sample, write_samples
from mgjax.tasks.t2v import with_fps_tag


def eval_edits(task) -> tuple[np.ndarray, list[dict]]:
  """(source clips uint8 [N, T, H, W, 3], their records): the first eval.num_edits
  held-out edits of the first video bucket's size."""
  bucket = next(b for b in task.buckets if not b.is_image)
  groups, _ = task.records_by_bucket("eval")
  records = [r for r in groups[bucket.name] if r.get("source")][: task.config.eval.num_edits]
  if not records:
    raise ValueError(
        f'No held-out edits (split "eval" of {task.config.edit.eval_manifest}) in bucket '
        f"{bucket.name!r}; set train.eval_every=-1 to train without evaluation."
    )
  spec = task.bucket_spec(bucket)
  sources, kept, rng = [], [], np.random.default_rng(0)
  for record in records:
    try:
      pixels, _ = load_pixels({"video": record["source"]}, spec, rng)
    except MediaDecodeError as err:
      logging.warning("Evaluation skips %s (%s).", err.path, err.kind)
      continue
    sources.append(pixels)
    kept.append(record)
  return np.stack(sources), kept


def sampler_of(config) -> dict:
  e = config.eval
  return dict(
      num_steps=e.num_steps,
      schedule=e.schedule,
      method=e.method,
      cfg_scale=e.cfg_scale,
      seed=e.seed,
  )


def sdedit(
    t2v, params, frozen, sources, captions, t0, num_steps, schedule, cfg_scale, seed, method
):
  """SDEdit with a T2V run: the sources' latents noised to time t0 on the flow path,
  then integrated to t = 1 with guidance towards `captions`. uint8 like `sources`."""
  t = sources.shape[1]
  stats = t2v.stats()
  x1 = stats.standardise(jnp.asarray(t2v.codec.encode(sources)))
  noise = jax.random.normal(jax.random.key(seed), x1.shape)
  sigma_min = t2v.config.flow.sigma_min
  x_t0 = t0 * x1 + (1 - (1 - sigma_min) * t0) * noise
  times = flow.make_schedule(schedule, num_steps, t2v.config.flow.get("emulated_linear_steps", 250))
  times = np.concatenate([[t0], times[times > t0]]).astype(np.float32)
  tokens = {
      k: jnp.asarray(v)
      for k, v in t2v.text.tokenize([with_fps_tag(c, t2v.fps, t) for c in captions]).items()
  }
  z = flow.solve(t2v.guided_velocity(cfg_scale), x_t0, times, method, args=(tokens, params, frozen))
  tiling = t2v.config.sample
  return t2v.codec.decode(stats.unstandardise(z), t, tiling.tile_frames, tiling.tile_overlap)


def edit_with(model, params, frozen, sources, records, config) -> np.ndarray:
  """The held-out edits made by an edit run, or by SDEdit when `model` is a T2V run."""
  sampler = sampler_of(config)
  if hasattr(model, "edit_videos"):
    kinds = [r["task"] if r["task"] in conds.EDIT_KINDS else "edit" for r in records]
    return model.edit_videos(
        params, frozen, sources, [r["caption"] for r in records], kinds, **sampler
    )
  return sdedit(
      model, params, frozen, sources, [r["target_caption"] for r in records],
      config.edit.sdedit_t0, **sampler,
  )  # fmt: skip


def baseline_runs(task) -> dict:
  """{name: (task, params, frozen)} of edit.baselines (run dirs or recipe stages)."""
  models = {}
  for name, workdir in sorted(task.config.edit.baselines.items()):
    if workdir:
      workdir = recipe.run_or_stage(task.config, task.workdir, workdir)
      _, model, params, frozen = runs.restore_weights(workdir)
      models[name] = (model, params, frozen)
  return models


def generation_figures(task, params, frozen, sources, records, config) -> dict:
  """Image-to-video and extension on the held-out source clips (module docstring)."""
  n = min(config.eval.num_generations, len(sources))
  clips, captions = sources[:n], [caption_of(r) for r in records[:n]]
  _, t, h, w, _ = clips.shape
  sampler = sampler_of(config)
  prompts = [with_fps_tag(c, task.fps, t) for c in captions]
  # Image-to-video from each clip's first frame.
  i2v_conditions = [task.generation_condition(t, h, w, first=c[0]) for c in clips]
  i2v = task.conditional_videos(params, frozen, prompts, i2v_conditions, t, h, w, **sampler)
  images = clips[:, :1]
  reconstructed = task.codec.decode(task.codec.encode(images), 1)
  # Extension: the first half of the latent frames kept.
  latents = task.codec.encode(clips)  # [N, T', h, w, C]
  keep = max(1, latents.shape[1] // 2)
  ext_conditions = [task.generation_condition(t, h, w, prefix=z[:keep]) for z in latents]
  cond, task_ids = stack_conditions(ext_conditions)
  tokens = {k: jnp.asarray(v) for k, v in task.text.tokenize(prompts).items()}
  ext_latents = task.sample_latents(
      (cond, task_ids, tokens, params, frozen), latents.shape[1:], num_examples=n, **sampler
  )
  extended = task.codec.decode(np.asarray(ext_latents), t)
  boundary = keep * task.codec.temporal_factor
  motion = lambda videos: float(
      np.mean(
          [
              edit_checker.read_scene(v)["motion"] == scene_of(r).main.motion
              for v, r in zip(videos, records)
          ]
      )
  )
  return {
      "i2v_first_frame_psnr": float(metrics.psnr(i2v[:, :1], images, 255.0).mean()),
      "i2v_tae_psnr": float(metrics.psnr(reconstructed, images, 255.0).mean()),
      "i2v_motion": motion(i2v),
      "extend_kept_max_change": float(
          np.abs(np.asarray(ext_latents)[:, :keep] - latents[:, :keep]).max()
      ),
      "extend_seam_ratio": seam_ratio(extended, boundary),
      "extend_motion": motion(extended),
  }, {"i2v": i2v, "extend": extended}


def seam_ratio(videos: np.ndarray, boundary: int) -> float:
  """Mean absolute change from frame boundary - 1 to boundary over the median change
  between the other adjacent frames (1: the seam is like any other frame step)."""
  steps = np.abs(np.diff(videos.astype(np.float32), axis=1)).mean(axis=(2, 3, 4))  # [N, T - 1]
  seam = steps[:, boundary - 1]
  others = np.delete(steps, boundary - 1, axis=1)
  return float(np.mean(seam / np.maximum(np.median(others, axis=1), 1e-3)))


def scene_of(record: dict) -> shapes_edit.Scene:
  return shapes_edit.scene_from_dict(record["source_scene"])


def caption_of(record: dict) -> str:
  """The source clip's caption (what image-to-video and extension are prompted with)."""
  return record.get("source_caption") or shapes_edit_text.scene_caption(scene_of(record))


def evaluate(task, params, frozen, step) -> dict:
  sources, records = eval_edits(task)
  models = {"edit": (task, params, frozen), **baseline_runs(task)}
  results, rows, outputs_of = {}, [], {}
  for name, (model, p, f) in models.items():
    outputs = edit_with(model, p, f, sources, records, task.config)
    outputs_of[name] = outputs
    report = edit_checker.score_edits(sources, outputs, records)
    figures = flat_figures(report)
    prefix = "" if name == "edit" else f"{name}/"
    results.update({prefix + k: v for k, v in figures.items()})
    rows.append((name, report))
  generation, generated = generation_figures(task, params, frozen, sources, records, task.config)
  results.update(generation)
  if jax.process_index() == 0:
    print_table(step, len(records), rows, generation)
    write(task, step, sources, records, outputs_of, generated)
  return results


def flat_figures(report: dict) -> dict:
  """{"<kind>/success", "<kind>/preserved", "<kind>/psnr_outside", "main/..."}."""
  out = {}
  for kind, figures in report.items():
    if isinstance(figures, dict) and "success" in figures:
      for key in ("success", "preserved", "psnr_outside"):
        if figures.get(key) is not None:
          out[f"{kind}/{key}"] = float(figures[key])
  return out


def print_table(step, num_edits, rows, generation):
  print(
      f"Edit at step {step} on {num_edits} held-out edits (success / preserved / PSNR outside):",
      flush=True,
  )
  for name, report in rows:
    cells = [
        f"{kind} {100 * f['success']:.0f}%/{100 * f['preserved']:.0f}%/{f['psnr_outside']:.1f}"
        for kind, f in report.items()
        if isinstance(f, dict) and f.get("success") is not None
    ]
    print(f"  {name:>8}: " + ", ".join(cells), flush=True)
  print("  generation: " + ", ".join(f"{k} {v:.3f}" for k, v in generation.items()), flush=True)


def write(task, step, sources, records, outputs_of, generated):
  """source | each model's edit | target contact videos and the generations."""
  out_dir = task.eval_dir(step)
  limit = task.config.eval.num_videos_to_write
  for name, videos in {**outputs_of, **generated}.items():
    samples = [
        Sample(f"{name}_{i:02d}", r["caption"], v, task.fps)
        for i, (r, v) in enumerate(zip(records, videos))
    ]
    write_samples(samples, out_dir, index_name=f"{name}_prompts.txt", sheet=False, max_media=limit)
  write_samples(
      [Sample(f"source_{i:02d}", r["caption"], s, task.fps) for i, (r, s) in enumerate(zip(records, sources))],
      out_dir, index_name="sources.txt", sheet=False, max_media=limit,
  )  # fmt: skip
  logging.info("Wrote evaluation samples to %s", out_dir)


def preview(task, params, frozen, request) -> Sample:
  """The first held-out edit: source | edited, [T, H, 2W, 3]."""
  sources, records = eval_edits(task)
  settings = task.sampler_settings(request, task.config.flow)
  kind = records[0]["task"] if records[0]["task"] in conds.EDIT_KINDS else "edit"
  edited = task.edit_videos(
      params, frozen, sources[:1], [records[0]["caption"]], [kind], seed=request.seed, **settings
  )
  return Sample(
      "preview", records[0]["caption"], np.concatenate([sources[0], edited[0]], axis=2), task.fps
  )
