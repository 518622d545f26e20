"""Personalised text-to-video (PT2V): a subject from one reference image, kept in video.

Movie Gen's personalisation (§4): the reference image of the subject (a masked crop)
goes through a CLIP vision tower (long-prompt MetaCLIP in the paper;
`pt2v.encoder`: a Hugging Face directory, or a random tower described by `model`),
and its output tokens, projected to the model width with a LayerNorm like each text
encoder's, are concatenated with the text tokens the DiT cross-attends to (the DiT's
`text_projection_reference`). Everything else is the T2V task, which the model
starts from (`train.init_from`, or the recipe's stage before).

  data       clips of one subject, each with a reference image (manifest fields
             "reference": an image path, and "subject": who it shows). Pairing
             (`pt2v.pairing`): "paired" takes the clip's own reference (a clip without
             one uses its middle frame); "cross" the reference of another clip of the
             same subject (drawn with `pt2v.seed`), so identity must come from the
             reference and everything else from the text; clips whose subject has no
             other clip are skipped and counted. References are stored with the
             latents (uint8 [R, R, 3], R = the tower's image size) so a trainable
             tower sees pixels.
  encoder    frozen (`pt2v.encoder.trainable=False`, stages I and II: weights in the
             state's `frozen` tree) or trained (stage III); `train.init_from` carries
             it from frozen to trainable between stages.
  guidance   the reference and the text are dropped on their own
             (`pt2v.reference_drop_prob`, `flow.text_drop_prob`) and guided with
             their own scales, reference first, then the text on top
             (`flow.nested_cfg_velocity_fn`: scales (pt2v.reference_cfg_scale,
             flow.cfg_scale)).
  evaluation held-out clips (on the identity shapes: subjects never trained on), each
             with the reference of another clip of its subject; the identity figures
             (mgjax/eval/identity.py: best / worst frame, share of frames, consistency,
             accuracy; and the vision tower's cosine to the reference), and prompt
             following (mgjax/eval/shapes.py) of this model and of the baselines in
             `pt2v.baselines` (a T2V run reads the text alone), side by side.

`python -m mgjax.sample --workdir=W --reference=IMG --prompt=...`: IMG of any size
or format (grey, RGBA: composited over grey, EXIF-rotated: turned upright) is padded
to a square with grey and resized to R.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import flow, recipe, runs
from mgjax.data.examples import tagged_caption
from mgjax.data.shapes_identity import MASK_GREY
from mgjax.data.video import read_image, write_image
from mgjax.eval import identity as identity_eval
from mgjax.models.clip_vision import CLIPVisionConfig, CLIPVisionEncoder, preprocess
from mgjax.tasks.outputs import Sample, write_samples
from mgjax.tasks.t2v import T2VTask, strip_fps_tag, with_fps_tag
from mgjax.text import hf_import
from mgjax.text.hf_checkpoint import read_config

PAIRINGS = ("paired", "cross")
ENCODER_KEYS = {"path", "model", "trainable", "dtype"}


def vision_config(encoder) -> CLIPVisionConfig:
  """The vision tower of `pt2v.encoder`: a Hugging Face directory's, or `model`'s."""
  unknown = set(encoder.keys()) - ENCODER_KEYS
  if unknown:
    raise ValueError(
        f"Unknown keys {sorted(unknown)} in pt2v.encoder; the keys are " f"{sorted(ENCODER_KEYS)}."
    )
  if encoder.path:
    return CLIPVisionConfig.from_hf(read_config(encoder.path), dtype=encoder.dtype)
  if not encoder.model:
    raise ValueError(
        "pt2v.encoder has neither a path nor a model: set pt2v.encoder.path to a Hugging "
        "Face CLIP / MetaCLIP directory, or pt2v.encoder.model to HF-style vision config "
        "keys for a randomly initialised tower."
    )
  return CLIPVisionConfig.from_hf(encoder.model.to_dict(), dtype=encoder.dtype)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [size, size, 3]: padded to a square with grey, then resized."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = image.shape[:2]
  side = max(h, w)
  square = np.empty((side, side, 3), np.uint8)
  square[:] = MASK_GREY
  top, left = (side - h) // 2, (side - w) // 2
  square[top : top + h, left : left + w] = image
  if side == size:
    return square
  resized = Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(resized, np.uint8)


def load_reference(path: str, size: int) -> np.ndarray:
  """A reference image file as uint8 [size, size, 3] (see the module docstring)."""
  return fit_square(read_image(path, matte=MASK_GREY), size)


def cross_pairs(records: list[dict], seed: int) -> tuple[list[dict], int]:
  """(records with the reference of another clip of their subject, clips left out
  for having no such clip); the partner is drawn per clip with `seed`."""
  by_subject = collections.defaultdict(list)
  for i, r in enumerate(records):
    if "subject" not in r or "reference" not in r:
      raise ValueError(
          'Cross-paired data needs "subject" and "reference" in every record; '
          f"{r.get('video') or r.get('image')} lacks one. Give them in the manifest, or "
          'set pt2v.pairing="paired".'
      )
    by_subject[r["subject"]].append(i)
  out, alone = [], 0
  for i, r in enumerate(records):
    others = [j for j in by_subject[r["subject"]] if j != i]
    if not others:
      alone += 1
      continue
    partner = others[int(np.random.default_rng([seed, i]).integers(len(others)))]
    out.append({**r, "reference": records[partner]["reference"]})
  return out, alone


class PT2VTask(T2VTask):
  num_batched_guidance_args = 2  # reference images, text tokens

  def __init__(self, config, workdir, **codec_and_stats):
    super().__init__(config, workdir, **codec_and_stats)
    p = config.pt2v
    if p.pairing not in PAIRINGS:
      raise ValueError(f"pt2v.pairing is {p.pairing!r}; use one of {PAIRINGS}.")
    if config.data.encode_on_the_fly:
      raise ValueError(
          "PT2V trains on precomputed latents stored with their reference images; set "
          "data.encode_on_the_fly=False."
      )
    self.vision_config = vision_config(p.encoder)
    self.vision = CLIPVisionEncoder(self.vision_config)

  @property
  def reference_size(self) -> int:
    return self.vision_config.image_size

  @property
  def vision_trainable(self) -> bool:
    return bool(self.config.pt2v.encoder.trainable)

  # ------------------------------------------------------------- examples
  def batch_specs(self):
    """T2V's, plus "reference" uint8 [B, R, R, 3]."""
    specs = super().batch_specs()
    r = self.reference_size
    for spec in specs.values():
      spec["reference"] = jax.ShapeDtypeStruct((spec["latent"].shape[0], r, r, 3), jnp.uint8)
    return specs

  def read_records(self, split):
    """The split's records, cross-paired when pt2v.pairing is "cross" (training)."""
    records = super().read_records(split)
    if self.config.pt2v.pairing != "cross" or split != "train":
      return records
    paired, self.num_alone = cross_pairs(records.records, self.config.pt2v.seed)
    if self.num_alone:
      logging.warning("%d clips have no other clip of their subject: left out.", self.num_alone)
    return dataclasses.replace(records, records=paired)

  num_alone = 0  # training clips left out of cross-pairing: no other clip of their subject

  def reference_of(self, record: dict, pixels: np.ndarray) -> np.ndarray:
    """uint8 [R, R, 3]: the record's reference image, else the clip's middle frame."""
    if record.get("reference"):
      return load_reference(record["reference"], self.reference_size)
    return fit_square(pixels[len(pixels) // 2], self.reference_size)

  def record_arrays(self, record, pixels):
    return {"reference": self.reference_of(record, pixels)}

  def latent_fingerprint(self):
    p = self.config.pt2v
    return {
        **super().latent_fingerprint(),
        "pt2v": {"pairing": p.pairing, "seed": p.seed, "reference_size": self.reference_size},
    }

  # ---------------------------------------------------------------- model
  def example_conditions(self):
    n = 1 + (self.reference_size // self.vision_config.patch_size) ** 2
    tokens = (jnp.zeros((1, n, self.vision_config.hidden_size)), jnp.ones((1, n), bool))
    return {**super().example_conditions(), "reference": tokens}

  def init(self, rng):
    """T2V's, plus the vision tower: params["vision"] when trained, else frozen["vision"]."""
    t2v_rng, vision_rng = jax.random.split(rng)
    params, frozen = super().init(t2v_rng)
    r = self.reference_size
    vision = self.vision.init(vision_rng, jnp.zeros((1, r, r, 3)))["params"]
    (params if self.vision_trainable else frozen)["vision"] = vision
    return params, frozen

  def pretrained_weights(self):
    weights = super().pretrained_weights()
    if self.config.pt2v.encoder.path:
      _, vision = hf_import.load_clip_vision(self.config.pt2v.encoder.path)
      weights["params" if self.vision_trainable else "frozen"]["vision"] = vision
    return weights

  def vision_params(self, params, frozen):
    return (params if self.vision_trainable else frozen)["vision"]

  def reference_tokens(self, params, frozen, references) -> jax.Array:
    """uint8 [B, R, R, 3] -> the tower's last hidden states [B, 1 + N, D_v]."""
    pixels = preprocess(references)
    return self.vision.apply({"params": self.vision_params(params, frozen)}, pixels)[0]

  def condition_dropout(self):
    return {
        "text": self.config.flow.text_drop_prob,
        "reference": self.config.pt2v.reference_drop_prob,
    }

  def velocity(self, params, frozen, x_t, t, conditions, keep):
    """T2V's velocity with the reference tokens beside the text; rows whose keep
    ["reference"] is False see no reference."""
    text = self.text.embed(params["text"], frozen["text"], conditions, keep.get("text"))
    tokens = self.reference_tokens(params, frozen, conditions["reference"])  # [B, N, D_v]
    mask = jnp.ones(tokens.shape[:2], bool)
    if "reference" in keep:
      mask &= keep["reference"][:, None]
    text["reference"] = (tokens, mask)
    return self.dit.apply({"params": params["dit"]}, x_t, t, text)

  # ------------------------------------------------------------- sampling
  def guided_velocity(self, cfg_scale):
    """Reference, then text, each with its own scale (see the module docstring)."""
    scales = (float(self.config.pt2v.reference_cfg_scale), float(cfg_scale))
    if scales not in self._guided:
      self._guided[scales] = flow.nested_cfg_velocity_fn(
          self.guided_model_fn, scales, self.num_batched_guidance_args
      )
    return self._guided[scales]

  def guided_model_fn(self, x, t, num_kept, references, tokens, params, frozen):
    keep = {"reference": num_kept >= 1, "text": num_kept >= 2}
    return self.velocity(params, frozen, x, t, {**tokens, "reference": references}, keep)

  def check_request(self, request):
    super().check_request(request)
    self.request_conditions(request)

  def request_conditions(self, request):
    """(references uint8 [N, R, R, 3],): one --reference for all prompts or one each."""
    paths, n = list(request.references), len(request.prompts)
    if len(paths) not in (1, n):
      raise ValueError(
          f"PT2V needs a reference image: pass --reference=IMG once for all {n} prompts, "
          f"or once per prompt; got {len(paths)}."
      )
    images = [load_reference(p, self.reference_size) for p in paths]
    return (np.stack(images * n if len(images) == 1 else images),)

  def preview(self, params, frozen, request):
    """The first requested video; without a reference (`mgjax.inspect`), a held-out
    clip's prompt (or the request's) and the reference of another clip of its subject:
    reference | video, [T, H, H + W, 3]."""
    if request.references:
      return super().preview(params, frozen, request)
    prompts, references, _, bucket = self.eval_cases()
    t, h, w = bucket.num_frames, bucket.height, bucket.width
    prompt = with_fps_tag(request.prompts[0], self.fps, t) if request.prompts else prompts[0]
    settings = self.sampler_settings(request, self.config.flow)
    video = self.generate_videos(
        params,
        frozen,
        [prompt],
        t,
        h,
        w,
        conditions=(references[:1],),
        seed=request.seed,
        **settings,
    )[0]
    shown = np.broadcast_to(fit_square(references[0], h), (t, h, h, 3))
    return Sample("preview", prompt, np.concatenate([shown, video], axis=2), self.fps)

  # ----------------------------------------------------------- evaluation
  def eval_cases(self) -> tuple[list[str], np.ndarray, list[str | None], dict]:
    """(tagged prompts, references [N, R, R, 3], subjects, bucket) of the first
    eval.num_prompts_per_bucket held-out clips of the first video bucket, each with
    the reference of another clip of its subject (its own when it has none)."""
    bucket = next((b for b in self.buckets if not b.is_image), self.buckets[0])
    groups, _ = self.records_by_bucket("eval")
    records = groups[bucket.name]
    if not records:
      raise ValueError(
          'PT2V evaluation needs held-out clips (split "eval"); the data set has none in '
          f"bucket {bucket.name!r}. Set train.eval_every=-1 to train without."
      )
    if all("subject" in r and "reference" in r for r in records):
      crossed, _ = cross_pairs(records, self.config.eval.seed)
      records = crossed or records
    records = records[: self.config.eval.num_prompts_per_bucket]
    data = self.config.data
    prompts = [
        tagged_caption(r["caption"], data.fps or max(r["fps"], data.min_fps)) for r in records
    ]
    references = np.stack([self.reference_of(r, np.zeros((1, 8, 8, 3), np.uint8)) for r in records])
    return prompts, references, [r.get("subject") for r in records], bucket

  def vision_similarity(self, params, frozen, videos, references) -> dict:
    """Cosine of the tower's pooled features, each frame (fitted to R) against the
    reference: best and worst frame, and adjacent frames against each other."""
    embed = self._pooled
    vision = self.vision_params(params, frozen)
    ref = embed(vision, jnp.asarray(references))  # [N, D]
    best, worst, adjacent = [], [], []
    for video, r in zip(videos, ref):
      frames = np.stack([fit_square(f, self.reference_size) for f in video])
      e = embed(vision, jnp.asarray(frames))  # [T, D]
      cos = np.asarray(e @ r)
      best.append(cos.max())
      worst.append(cos.min())
      adjacent.append(np.mean(np.sum(np.asarray(e[1:] * e[:-1]), -1)))
    return {
        "clip_best_frame": float(np.mean(best)),
        "clip_worst_frame": float(np.mean(worst)),
        "clip_consistency": float(np.mean(adjacent)),
    }

  @functools.cached_property
  def _pooled(self):
    def pooled(vision, images):
      out = self.vision.apply({"params": vision}, preprocess(images))[1]
      return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

    return jax.jit(pooled)

  def evaluate(self, params, frozen, step):
    """Samples the held-out cases with this model and with each of pt2v.baselines
    (name -> run: a T2V run reads the text alone), and prints their identity and
    prompt-following figures side by side."""
    from mgjax.eval import shapes as shapes_eval

    e = self.config.eval
    prompts, references, subjects, bucket = self.eval_cases()
    sampler = dict(
        num_steps=e.num_steps,
        schedule=e.schedule,
        method=e.method,
        cfg_scale=e.cfg_scale,
        seed=e.seed,
    )
    shape = (bucket.num_frames, bucket.height, bucket.width)
    models = {"pt2v": (self, params, frozen)}
    for name, workdir in sorted(self.config.pt2v.baselines.items()):
      if workdir:
        workdir = recipe.run_or_stage(self.config, self.workdir, workdir)
        _, task, base_params, base_frozen = runs.restore_weights(workdir)
        models[name] = (task, base_params, base_frozen)
    results, rows, videos_of = {}, [], {}
    for name, (task, p, f) in models.items():
      conditions = (references,) if isinstance(task, PT2VTask) else ()
      videos = task.generate_videos(p, f, prompts, *shape, conditions=conditions, **sampler)
      videos_of[name] = videos
      figures = self.vision_similarity(params, frozen, videos, references)
      if all(subjects) and self.config.data.name == "shapes_identity":
        figures.update(identity_eval.score_videos(list(videos), subjects))
        figures.pop("details")
        report = shapes_eval.score(list(videos), [strip_fps_tag(p) for p in prompts])
        counts = report["counts"]
        figures["prompt_color_motion"] = (
            report["color"] * counts["color"] + report["motion"] * counts["motion"]
        ) / max(counts["color"] + counts["motion"], 1)
      prefix = "" if name == "pt2v" else f"{name}/"
      results.update({prefix + k: v for k, v in figures.items()})
      rows.append((name, figures))
    if jax.process_index() == 0:
      print(
          f"PT2V at step {step} on {len(prompts)} held-out clips (references of other "
          "clips of their subjects):",
          flush=True,
      )
      for name, figures in rows:
        print(f"  {name:>10}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
      self.write_references(step, prompts, references, videos_of)
    return results

  def write_references(self, step, prompts, references, videos_of):
    """Each model's samples and the references they were given, under samples/step_N."""
    out_dir = self.eval_dir(step)
    for name, videos in videos_of.items():
      samples = [
          Sample(f"{name}_{i:02d}", p, v, self.fps) for i, (p, v) in enumerate(zip(prompts, videos))
      ]
      write_samples(
          samples,
          out_dir,
          index_name=f"{name}_prompts.txt",
          sheet=False,
          max_media=self.config.eval.num_videos_to_write,
      )
    for i, image in enumerate(references[: self.config.eval.num_videos_to_write]):
      write_image(os.path.join(out_dir, f"reference_{i:02d}.png"), image)
