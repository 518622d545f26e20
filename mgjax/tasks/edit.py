"""Instruction-guided video editing (Movie Gen Edit), and image-to-video, first/last
frame and extension on the same conditioning path.

The model is the text-to-video transformer (`train.init_from` a T2V run) with two
additions (mgjax/models/dit.py): the condition latents and their frame mask as
C + 1 extra input channels (zero-initialised: at step 0 it is the T2V model), and a
task embedding per task (mgjax/tasks/edit_conditions.py: t2v, i2v, first_last,
extend, and the edit kinds), turned into 4 cross-attention tokens after the text
and added to the timestep embedding.

Each training example is a record of the data set:

  an edit     "source" (a video or image file) -> "video"/"image" (the target), the
              instruction as "caption", the kind as "task" (a name of
              edit_conditions.EDIT_KINDS; others train as the generic "edit");
  a clip      no "source" ("task" absent or "generate"): the loss draws a generation
              task for it each step (edit.generation_mix over t2v, i2v, first_last,
              extend), so one model also animates images and extends videos.

The paper's stages are configs of this one task (experiments/edit.py): I single-frame
edits (1-frame videos) with text-to-video clips, image edits sampled more often
(data.image_fraction); II multi-frame edits (animated image edits, segmentation,
and, since the shapes world renders them, motion edits); III back-translation: the
stage II model edits real clips (`edit.backtranslate`, mgjax/tasks/edit_backtranslation.py),
and the model learns to map its edits back to the real clips with the instruction
that undoes them, so every target is a real video.

Guidance is over the text (the instruction); the condition and the task are in both
halves. Sampling keeps given frames exact (extension) and runs windows of the
model's positional table blended by MultiDiffusion when a clip is longer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from mgjax import configs, multidiffusion
from mgjax.data import shapes_edit_set
from mgjax.data.examples import ExampleSpec, load_pixels
from mgjax.data.records import Records, read_manifest
from mgjax.data.video import probe, read_image, read_video
from mgjax.models.dit import VideoDiT
from mgjax.parallel import distributed
from mgjax.tasks import edit_conditions as conds
from mgjax.tasks.outputs import Sample, slug
from mgjax.tasks.t2v import T2VTask, with_fps_tag


class EditTask(T2VTask):
  num_batched_guidance_args = 3  # condition {cond, cond_mask, known}, task, text tokens
  uses_frame_mask = True
  takes_edit_requests = True

  def __init__(self, config, workdir, **codec_and_stats):
    super().__init__(config, workdir, **codec_and_stats)
    if config.data.encode_on_the_fly:
      raise ValueError(
          "The edit task trains on precomputed latents stored with their sources; set "
          "data.encode_on_the_fly=False."
      )
    mix = np.asarray(config.edit.generation_mix, np.float64)
    if mix.shape != (len(conds.GENERATION_TASKS),) or (mix < 0).any() or not mix.sum():
      raise ValueError(
          f"edit.generation_mix={tuple(mix)} must be {len(conds.GENERATION_TASKS)} "
          f"non-negative weights of {conds.GENERATION_TASKS}, not all zero."
      )
    self.generation_mix = mix / mix.sum()
    self.dit = VideoDiT.from_config(
        config.model,
        context_attention=configs.parallel_settings(config)["context_attention"],
        num_tasks=len(conds.TASKS),
        task_tokens=config.edit.task_tokens,
    )

  # ------------------------------------------------------------- examples
  @property
  def concat_channels(self) -> int:
    return self.codec.latent_channels + 1  # the condition latent and its frame mask

  def batch_specs(self):
    """T2V's, plus "source_latent" like "latent", "first_latent" / "last_latent"
    [B, 1, h, w, C] (the clip's end frames encoded as images) and "task" int32 [B]."""
    specs = super().batch_specs()
    for spec in specs.values():
      b, _, h, w, c = spec["latent"].shape
      spec["source_latent"] = jax.ShapeDtypeStruct(spec["latent"].shape, jnp.float32)
      for name in ("first_latent", "last_latent"):
        spec[name] = jax.ShapeDtypeStruct((b, 1, h, w, c), jnp.float32)
      spec["task"] = jax.ShapeDtypeStruct((b,), jnp.int32)
    return specs

  def dit_example_inputs(self, latent):
    return {**super().dit_example_inputs(latent), "task": jnp.zeros((1,), jnp.int32)}

  @property
  def data_dir(self) -> str:
    return self.config.data.dir or os.path.join(self.workdir, "shapes")

  def manifest_paths(self, split: str) -> list[str]:
    """The manifests of a split: edit.manifests (training) or edit.eval_manifest, under
    data.dir unless absolute; training adds the back-translated pairs when made."""
    e = self.config.edit
    names = list(e.manifests) if split == "train" else [e.eval_manifest]
    paths = [os.path.join(self.data_dir, n) for n in names if n]
    if split == "train" and e.backtranslate.run:
      from mgjax.tasks import edit_backtranslation  # pylint: disable=import-outside-toplevel

      paths.append(edit_backtranslation.manifest_path(self.workdir))
    return paths

  def read_records(self, split):
    """The split's records of every manifest (the shapes edit set is made first)."""
    if self.config.data.name == "shapes_edit":
      s = self.config.data.shapes
      make = lambda: shapes_edit_set.ensure_dataset(
          self.data_dir,
          seed=s.seed,
          num_frames=s.num_frames,
          height=s.height,
          width=s.width,
          fps=s.fps,
          **self.config.edit.shapes_edit.to_dict(),
      )
      distributed.first_process_first("shapes_edit", make)
    elif self.config.data.name != "manifest":
      raise ValueError(
          f'The edit task reads data.name="shapes_edit" or "manifest"; got {self.config.data.name!r}.'
      )
    records = Records([])
    for path in self.manifest_paths(split):
      records = records + read_manifest(path, split=split)
    return records

  def record_arrays(self, record, pixels):
    """{"source_pixels": the source, read like the target (zeros for a plain clip),
    "task": its id}; an unreadable source skips the example."""
    kind = record.get("task") or "generate"
    if kind == "generate" or not record.get("source"):
      return {"source_pixels": np.zeros_like(pixels), "task": np.int32(conds.task_id("t2v"))}
    t, h, w, _ = pixels.shape
    data = self.config.data
    spec = ExampleSpec(
        t, h, w, fps=data.fps or None, min_fps=data.min_fps, scale_to=(h, w),
        random_crop=False, random_start=False,
    )  # fmt: skip
    media = "image" if t == 1 else "video"
    source, _ = load_pixels({media: record["source"]}, spec, np.random.default_rng(0))
    kind = kind if kind in conds.EDIT_KINDS else "edit"
    return {"source_pixels": source, "task": np.int32(conds.task_id(kind))}

  def encode_examples(self, pixels_uint8, arrays=None):
    """{latent, source_latent (zeros for plain clips), first_latent, last_latent, task}."""
    arrays = arrays or {}
    out = {
        "latent": self.encode_pixels(pixels_uint8),
        "first_latent": self.encode_pixels(pixels_uint8[:, :1]),
        "last_latent": self.encode_pixels(pixels_uint8[:, -1:]),
    }
    task = arrays.get("task", np.full(len(pixels_uint8), conds.task_id("t2v"), np.int32))
    is_edit = task != conds.task_id("t2v")  # [B]
    source = np.zeros_like(out["latent"])
    if is_edit.any():  # a batch of plain clips encodes no source
      source = self.encode_pixels(arrays["source_pixels"])
    out["source_latent"] = np.where(is_edit[:, None, None, None, None], source, 0.0)
    out["task"] = np.asarray(task, np.int32)
    return out

  def latent_fingerprint(self):
    e = self.config.edit
    made = {"manifests": self.manifest_paths("train"), "shapes_edit": e.shapes_edit.to_dict()}
    return {**super().latent_fingerprint(), "edit": made}

  # ---------------------------------------------------------------- model
  def frame_mask(self, rng, x1, batch):
    """Each example's condition (edit_conditions.training_conditions); the frames it
    is given exactly are out of the loss."""
    e = self.config.edit
    extra = conds.training_conditions(
        rng, batch, jnp.asarray(self.generation_mix, jnp.float32), e.generic_task_prob
    )
    loss_mask = (1.0 - extra["known"])[:, :, None, None, None]  # [B, T', 1, 1, 1]
    metrics = {"edit_fraction": jnp.mean(batch["task"] != conds.task_id("t2v"))}
    return loss_mask, extra, metrics

  def velocity(self, params, frozen, x_t, t, conditions, keep):
    """The DiT on x_t (its known frames the clean condition) with the condition's
    channels and the task embedding; rows with keep["text"] False read the null text."""
    stats = self.stats()
    text = self.text.embed(params["text"], frozen["text"], conditions, keep.get("text"))
    cond = stats.standardise(conditions["cond"])  # [B, T', h, w, C]
    known = conditions["known"][:, :, None, None, None] > 0
    x_t = jnp.where(known, cond, x_t)
    concat = conds.concat_channels(cond, conditions["cond_mask"])
    return self.dit.apply(
        {"params": params["dit"]}, x_t, t, text, concat=concat, task=conditions["task"]
    )

  # ------------------------------------------------------------- sampling
  def guided_model_fn(self, x, t, use_condition, cond, task, tokens, params, frozen):
    conditions = {**tokens, **cond, "task": task}
    return self.velocity(params, frozen, x, t, conditions, {"text": use_condition})

  @property
  def window(self) -> int:
    """Latent frames the model takes at once: its positional table."""
    return self.config.model.max_frames * self.config.model.patch_size[0]

  def integrate(self, velocity_fn, noise, times, method, step_callback, args):
    """One solve, or MultiDiffusion windows of the positional table's length when the
    clip is longer (args: condition, task, tokens, then the model variables)."""
    cond, task, tokens, *variables = args
    if noise.shape[1] <= self.window:
      return super().integrate(velocity_fn, noise, times, method, step_callback, args)
    e = self.config.edit
    return multidiffusion.sample(
        velocity_fn,
        noise,
        times,
        window=self.window,
        overlap=min(e.window_overlap, self.window - 1),
        weighting="average",
        method=method,
        aligned=(cond,),
        per_example=(task, tokens),
        args=tuple(variables),
        step_callback=step_callback,
    )

  def sample_latents(self, args, latent_shape, **kwargs):
    """The base's, with the known frames of args[0] put back exactly."""
    latents = super().sample_latents(args, latent_shape, **kwargs)
    cond = args[0]
    known = cond["known"][:, :, None, None, None] > 0
    return jnp.where(known, cond["cond"], latents)

  def conditional_videos(
      self, params, frozen, prompts, conditions: list[dict], num_frames, height, width, **sampler
  ) -> np.ndarray:
    """uint8 [N, num_frames, H, W, 3] for prompts (instructions or captions) and one
    `edit_conditions.request_condition` each."""
    cond, task = stack_conditions(conditions)
    return self.generate_videos(
        params, frozen, prompts, num_frames, height, width, conditions=(cond, task), **sampler
    )

  def edit_videos(self, params, frozen, sources, instructions, kinds, **sampler) -> np.ndarray:
    """uint8 [N, T, H, W, 3] of source videos uint8 [N, T, H, W, 3] edited by the
    instructions; `kinds` names each one's task embedding ("edit": any)."""
    n, t, h, w, _ = sources.shape
    latents = self.codec.encode(sources)  # [N, T', h, w, C]
    conditions = [
        conds.request_condition(len(z), z.shape[1:], task=k, source=z)
        for z, k in zip(latents, kinds)
    ]
    prompts = [with_fps_tag(p, self.fps, t) for p in instructions]
    return self.conditional_videos(params, frozen, prompts, conditions, t, h, w, **sampler)

  def image_latent(self, image: np.ndarray) -> np.ndarray:
    """[1, h, w, C] of a uint8 [H, W, 3] image, encoded as a 1-frame video."""
    return self.codec.encode(image[None, None])[0]

  def generation_condition(self, num_frames, height, width, first=None, last=None, prefix=None):
    """The condition of an image-to-video / first-last / extension request."""
    shape = self.latent_shape(num_frames, height, width)
    task = "extend" if prefix is not None else "first_last" if last is not None else "i2v"
    if first is None and last is None and prefix is None:
      task = "t2v"
    return conds.request_condition(
        shape[0],
        shape[1:],
        task=task,
        first=None if first is None else self.image_latent(first),
        last=None if last is None else self.image_latent(last),
        prefix=prefix,
    )

  # ------------------------------------------------------------ requests
  def request_size(self, request) -> tuple[int, int, int]:
    """(frames, height, width): the request's, else the first video bucket's."""
    bucket = next((b for b in self.buckets if not b.is_image), self.buckets[0])
    return (
        request.num_frames or bucket.num_frames,
        request.height or bucket.height,
        request.width or bucket.width,
    )

  def check_request(self, request):
    """Files and text a request needs, checked before the weights are read."""
    super().check_request(request)
    if request.instructions:
      if not request.inputs:
        raise ValueError("An --instruction edits videos: pass --video=IN.mp4.")
      if len(request.instructions) not in (1, len(request.inputs)):
        raise ValueError(
            f"Give one --instruction for all {len(request.inputs)} videos or one each; got "
            f"{len(request.instructions)}."
        )
      for i, text in enumerate(request.instructions):
        if not text.strip():
          raise ValueError(f"Instruction {i + 1} is empty; say what to change in the video.")
    elif request.inputs:
      raise ValueError('Videos to edit need an instruction: --instruction="make the circle blue".')
    for path in (request.first_frame, request.last_frame):
      if path:
        read_image(path)
    if request.extend:
      probe(request.extend)
    if (request.first_frame or request.last_frame or request.extend) and not request.prompts:
      raise ValueError('Say what happens in the video: --prompt="a red circle moves up ...".')
    if request.extend and not (request.seconds and request.seconds > 0):
      raise ValueError("--extend needs --seconds=S > 0: how much video to add.")
    if len(request.edit_tasks) not in (0, 1, len(request.instructions)):
      raise ValueError("Give one --edit_task for all instructions, one each, or none.")
    for name in request.edit_tasks:
      if name != "auto" and name not in conds.TASKS:
        raise ValueError(f"--edit_task={name!r}; use auto or one of {conds.TASKS}.")

  def generate(self, params, frozen, request):
    """Edits (--video + --instruction), image-to-video and first/last frame (--image,
    --first_frame, --last_frame), extension (--extend + --seconds), else text-to-video."""
    self.check_request(request)
    sampler = dict(
        seed=request.seed,
        step_callback=request.progress and (lambda i, n: request.progress(1)),
        **self.sampler_settings(request, self.config.flow),
    )
    if request.instructions:
      return self._edit_files(params, frozen, request, sampler)
    if request.extend:
      return [self._extend_file(params, frozen, request, sampler)]
    t, h, w = self.request_size(request)
    first, last = (
        read_image(p, size=(h, w)) if p else None for p in (request.first_frame, request.last_frame)
    )
    condition = self.generation_condition(t, h, w, first, last)
    prompts = [with_fps_tag(p, self.fps, t) for p in request.prompts]
    videos, size = [], request.batch_size
    for start in range(0, len(prompts), size):
      part = prompts[start : start + size]
      videos.extend(
          self.conditional_videos(
              params, frozen, part, [condition] * len(part), t, h, w,
              **{**sampler, "seed": sampler["seed"] + start},
          )  # fmt: skip
      )
    return [
        Sample(f"{i:03d}_{slug(p)}", tag, v, self.fps)
        for i, (p, tag, v) in enumerate(zip(request.prompts, prompts, videos))
    ]

  def _edit_files(self, params, frozen, request, sampler) -> list[Sample]:
    """Each --video edited by its instruction, at the run's frame rate and size; videos
    of one length are edited request.batch_size at a time."""
    _, h, w = self.request_size(request)
    pick = lambda values, i, default: values[min(i, len(values) - 1)] if values else default
    jobs = []
    for i, path in enumerate(request.inputs):
      frames, _, _ = read_video(path, fps=self.fps, size=(h, w))
      kind = pick(request.edit_tasks, i, "edit")
      jobs.append(
          (path, frames, pick(request.instructions, i, ""), "edit" if kind == "auto" else kind)
      )
    out = [None] * len(jobs)
    for length in sorted({len(j[1]) for j in jobs}):
      group = [i for i, j in enumerate(jobs) if len(j[1]) == length]
      for start in range(0, len(group), request.batch_size):
        part = group[start : start + request.batch_size]
        videos = self.edit_videos(
            params,
            frozen,
            np.stack([jobs[i][1] for i in part]),
            [jobs[i][2] for i in part],
            [jobs[i][3] for i in part],
            **{**sampler, "seed": sampler["seed"] + part[0]},
        )
        for i, video in zip(part, videos):
          stem = os.path.splitext(os.path.basename(jobs[i][0]))[0]
          out[i] = Sample(f"{stem}_{slug(jobs[i][2], 32)}", jobs[i][2], video, self.fps)
    return out

  def _extend_file(self, params, frozen, request, sampler) -> Sample:
    """The video's whole latent frames kept exactly, request.seconds more generated."""
    _, h, w = self.request_size(request)
    frames, _, _ = read_video(request.extend, fps=self.fps, size=(h, w))
    factor = self.codec.temporal_factor
    kept = len(frames) // factor * factor
    if not kept:
      raise ValueError(
          f"--extend={request.extend} has {len(frames)} frames at {self.fps:g} fps; an "
          f"extension keeps whole latent frames of {factor}: give at least {factor}."
      )
    prefix = self.codec.encode(frames[None, :kept])[0]  # [K, h, w, C]
    total = kept + max(1, round(request.seconds * self.fps))
    condition = self.generation_condition(total, h, w, prefix=prefix)
    prompt = with_fps_tag(request.prompts[0], self.fps, total)
    video = self.conditional_videos(params, frozen, [prompt], [condition], total, h, w, **sampler)
    stem = os.path.splitext(os.path.basename(request.extend))[0]
    return Sample(f"{stem}_extended", prompt, video[0], self.fps)

  def sampling_steps(self, request):
    steps = self.sampler_settings(request, self.config.flow)["num_steps"]
    if request.extend:
      return steps
    items = request.inputs if request.instructions else request.prompts
    return steps * -(-len(items) // request.batch_size)  # videos of one length share batches

  def preview(self, params, frozen, request):
    if request.instructions or request.extend or request.first_frame or request.prompts:
      return self.generate(params, frozen, request)[0]
    from mgjax.tasks import edit_eval  # pylint: disable=import-outside-toplevel

    return edit_eval.preview(self, params, frozen, request)

  def evaluate(self, params, frozen, step):
    from mgjax.tasks import edit_eval  # pylint: disable=import-outside-toplevel

    return edit_eval.evaluate(self, params, frozen, step)

  def prepare(self):
    """Back-translated pairs first (stage III), then T2V's: latents and statistics."""
    if self.config.edit.backtranslate.run:
      from mgjax.tasks import edit_backtranslation  # pylint: disable=import-outside-toplevel

      edit_backtranslation.ensure(self)
    super().prepare()


def stack_conditions(conditions: list[dict]) -> tuple[dict, jax.Array]:
  """`request_condition`s -> ({cond, cond_mask, known} [N, ...], task [N]): the
  per-example guidance args of the sampler."""
  cond = {
      k: jnp.asarray(np.stack([c[k] for c in conditions])) for k in ("cond", "cond_mask", "known")
  }
  return cond, jnp.asarray(np.stack([c["task"] for c in conditions]))
