"""Spatial upsampler: a video-to-video flow model that doubles the resolution.

Movie Gen makes 768 px video and a separate model, the same transformer initialised
from text-to-image, takes it to full HD. Per training clip (high resolution, `data`):

  low-res input  the clip degraded twice over (mgjax/data/degrade.py) to H/f x W/f,
                 deterministic per clip, then bilinearly upsampled back to H x W in
                 pixels;
  latents        both encoded frame by frame with the TAE (images are 1-frame videos
                 to it, `FramewiseTAECodec`), so latent frames are frames and any
                 length works: target "latent" [T, H/8, W/8, C], condition
                 "lowres_latent" of the same shape;
  model          the DiT on the noisy target with the standardised condition
                 concatenated along channels (`concat_embed`, zero-initialised: at
                 step 0 the model is the text-to-video one it starts from,
                 `train.init_from`), text from the clip's caption as in T2V.

The flow, t-sampling, condition dropout (`flow.text_drop_prob`,
`upsample.lowres_drop_prob`) and guidance (over the text) are the latent flow
base's. Sampling runs ~20 steps over windows of `upsample.window` frames that
overlap by `upsample.overlap`, blended at every step by MultiDiffusion
(mgjax/multidiffusion.py, "average"), so a clip of any length is one ODE and no
seam forms between windows.

`python -m mgjax.sample --workdir=U --video=IN.mp4` upsamples files;
`--workdir=T2V --upsampler=U` chains it after a text-to-video run. Evaluation
degrades held-out clips and prints PSNR/SSIM of the model against bilinear and
bicubic upsampling of the same inputs (and the TAE's own ceiling), and how much
more the frame-to-frame change departs from the truth at window seams than
elsewhere.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import multidiffusion
from mgjax.data import degrade
from mgjax.data.examples import load_pixels, tagged_caption
from mgjax.data.video import MediaDecodeError, read_video
from mgjax.eval import metrics
from mgjax.tasks.codecs import FramewiseTAECodec
from mgjax.tasks.outputs import Sample, write_samples
from mgjax.tasks.t2v import T2VTask, with_fps_tag

BASELINES = ("bilinear", "bicubic")


class UpsampleTask(T2VTask):
  codec_class = FramewiseTAECodec
  num_batched_guidance_args = 3  # lowres latent, text tokens, text kept
  refines_videos = True

  def __init__(self, config, workdir, **codec_and_stats):
    super().__init__(config, workdir, **codec_and_stats)
    u = config.upsample
    multidiffusion.check_window(u.window, u.window, u.overlap)
    if u.factor < 1 or int(u.factor) != u.factor:
      raise ValueError(f"upsample.factor={u.factor} must be a whole number >= 1.")
    table_frames = config.model.max_frames * config.model.patch_size[0]
    if u.window > table_frames:
      raise ValueError(
          f"upsample.window={u.window} frames is longer than the model's positional "
          f"table (model.max_frames={config.model.max_frames}); raise model.max_frames."
      )
    for b in self.buckets:
      if b.height % u.factor or b.width % u.factor:
        raise ValueError(
            f"Bucket {b.name!r} ({b.height}x{b.width}) does not divide by upsample.factor."
        )

  @property
  def factor(self) -> int:
    return int(self.config.upsample.factor)

  # ------------------------------------------------------------- examples
  def batch_specs(self):
    """T2V's, plus the condition "lowres_latent" shaped like "latent"."""
    specs = super().batch_specs()
    for spec in specs.values():
      spec["lowres_latent"] = jax.ShapeDtypeStruct(spec["latent"].shape, jnp.float32)
    return specs

  @property
  def concat_channels(self) -> int:
    return self.codec.latent_channels

  def read_records(self, split):
    """Videos only when no bucket takes stills (images are no unusable files here)."""
    records = super().read_records(split)
    if any(b.is_image for b in self.buckets):
      return records
    videos = [r for r in records.records if not r.get("image")]
    if len(videos) < len(records.records):
      logging.info(
          "%d still images left out: no 1-frame bucket.", len(records.records) - len(videos)
      )
    return dataclasses.replace(records, records=videos)

  def lowres_inputs(self, clips_uint8: np.ndarray) -> np.ndarray:
    """What the model is conditioned on for high-resolution clips [B, T, H, W, 3]:
    each degraded to H/f x W/f, then bilinearly upsampled back, uint8 [B, T, H, W, 3]."""
    u = self.config.upsample
    height, width = clips_uint8.shape[2:4]
    return np.stack(
        [
            degrade.resize_video(
                degrade.degrade(clip, self.factor, u.degrade, u.seed), height, width
            )
            for clip in clips_uint8
        ]
    )

  def encode_examples(self, pixels_uint8, arrays=None):
    """{"latent", "lowres_latent"}: [B, T, H/8, W/8, C] of the clips and of their
    degraded, re-upsampled inputs."""
    return {
        **super().encode_examples(pixels_uint8, arrays),
        "lowres_latent": self.encode_pixels(self.lowres_inputs(pixels_uint8)),
    }

  def latent_fingerprint(self):
    u = self.config.upsample
    return {
        **super().latent_fingerprint(),
        "upsample": {"factor": u.factor, "seed": u.seed, "degrade": u.degrade.to_dict()},
    }

  # ---------------------------------------------------------------- model
  def condition_dropout(self):
    return {
        "text": self.config.flow.text_drop_prob,
        "lowres": self.config.upsample.lowres_drop_prob,
    }

  def concat_condition(self, params, conditions, keep):
    """The standardised low-res latents [B, T, h, w, C]; zeros where dropped."""
    del params
    lowres = self.stats().standardise(conditions["lowres_latent"])
    if "lowres" in keep:
      lowres = jnp.where(keep["lowres"][:, None, None, None, None], lowres, 0.0)
    return lowres

  def guided_model_fn(self, x, t, use_condition, lowres, tokens, text_kept, params, frozen):
    """Guidance over the text; the low-res video conditions both halves. Rows whose
    `text_kept` is False (no prompt) read the null text in both."""
    conditions = {**tokens, "lowres_latent": lowres}
    return self.velocity(params, frozen, x, t, conditions, {"text": use_condition & text_kept})

  def integrate(self, velocity_fn, noise, times, method, step_callback, args):
    """MultiDiffusion over windows of upsample.window frames (args: lowres latents
    [B, T, ...], tokens, text_kept, then the model variables)."""
    lowres, tokens, text_kept, *variables = args
    u = self.config.upsample
    return multidiffusion.sample(
        velocity_fn,
        noise,
        times,
        window=u.window,
        overlap=u.overlap,
        weighting="average",
        method=method,
        aligned=(lowres,),
        per_example=(tokens, text_kept),
        args=tuple(variables),
        step_callback=step_callback,
        windows_per_call=u.get("windows_per_call", 0),  # runs saved before the key: 0
    )

  # ------------------------------------------------------------- sampling
  def output_size(self, height: int, width: int, name: str = "the video") -> tuple[int, int]:
    """(H, W) of an upsampled h x w video, with a clear error when the TAE and patch
    cannot take it."""
    height, width = height * self.factor, width * self.factor
    multiple = self.codec.spatial_factor * self.config.model.patch_size[1]
    if height % multiple or width % multiple:
      raise ValueError(
          f"{name} upsampled {self.factor}x is {height}x{width}, which is not a multiple of "
          f"{multiple} (TAE {self.codec.spatial_factor}x times patch "
          f"{self.config.model.patch_size[1]}); crop or resize it to multiples of "
          f"{multiple // np.gcd(multiple, self.factor)} pixels first."
      )
    m = self.config.model
    patches = (height // multiple, width // multiple)
    if patches[0] > m.max_height or patches[1] > m.max_width:
      raise ValueError(
          f"{name} upsampled is {height}x{width} = {patches[0]}x{patches[1]} patches; the "
          f"model's positional tables hold {m.max_height}x{m.max_width}. Use a smaller "
          "video, or a model with larger tables (model.max_height / max_width)."
      )
    return height, width

  def upsample_videos(self, params, frozen, lowres, prompts, **sampler) -> np.ndarray:
    """uint8 [B, T, H f, W f, 3] of low-res videos uint8 [B, T, H, W, 3]; prompts ""
    condition on no text. `sampler`: num_steps, schedule, cfg_scale, seed, method,
    step_callback."""
    b, t, h, w, _ = lowres.shape
    height, width = self.output_size(h, w)
    inputs = np.stack([degrade.resize_video(v, height, width) for v in lowres])
    lowres_latent = jnp.asarray(self.codec.encode(inputs))
    tokens = {k: jnp.asarray(v) for k, v in self.text.tokenize(list(prompts)).items()}
    text_kept = jnp.asarray([bool(p.strip()) for p in prompts])
    latents = self.sample_latents(
        (lowres_latent, tokens, text_kept, params, frozen),
        self.codec.latent_shape(t, height, width),
        num_examples=b,
        **sampler,
    )
    return self.codec.decode(latents, t)

  def _requested_videos(self, request) -> list[Sample]:
    """The request's videos: chained samples (`request.videos`) and files (`inputs`),
    with one prompt for all, one per file, or none."""
    videos = list(request.videos)
    if request.prompts and len(request.prompts) not in (1, len(request.inputs)):
      raise ValueError(
          f"Give one --prompt for all {len(request.inputs)} videos, one per video, or none; "
          f"got {len(request.prompts)}."
      )
    for i, path in enumerate(request.inputs):
      frames, _, fps = read_video(path)
      prompt = request.prompts[min(i, len(request.prompts) - 1)] if request.prompts else ""
      prompt = with_fps_tag(prompt, fps, len(frames)) if prompt.strip() else ""
      stem = os.path.splitext(os.path.basename(path))[0]
      videos.append(Sample(stem, prompt, frames, fps))
    if not videos:
      raise ValueError(
          "The upsampler needs videos: pass --video=IN.mp4 (or --upsampler=U after a text-to-video run)."
      )
    for v in videos:
      self.output_size(
          *v.video.shape[1:3], name=f"Video {v.name!r} ({v.video.shape[1]}x{v.video.shape[2]})"
      )
    return videos

  def generate(self, params, frozen, request):
    """Each video upsampled (<name>_x<f>), at its own length, size and frame rate."""
    settings = self.sampler_settings(request, self.config.flow)
    out = []
    for i, v in enumerate(self._requested_videos(request)):
      video = self.upsample_videos(
          params,
          frozen,
          v.video[None],
          [v.prompt],
          seed=request.seed + i,
          step_callback=request.progress and (lambda i, n: request.progress(1)),
          **settings,
      )[0]
      out.append(Sample(f"{v.name}_x{self.factor}", v.prompt, video, v.fps))
    return out

  def preview(self, params, frozen, request):
    """The first requested video upsampled; with none (`mgjax.inspect`), the first
    held-out clip degraded and upsampled: bicubic | upsampler | truth, [T, H, 3W, 3]."""
    if request.inputs or request.videos:
      return self.generate(params, frozen, request)[0]
    truth, captions = self.eval_clips(num_clips=1)
    lowres = degrade.degrade(truth[0], self.factor, self.config.upsample.degrade, request.seed)
    settings = self.sampler_settings(request, self.config.flow)
    up = self.upsample_videos(params, frozen, lowres[None], captions, seed=request.seed, **settings)
    bicubic = degrade.resize_video(lowres, *truth.shape[2:4], "bicubic")
    return Sample(
        "preview", captions[0], np.concatenate([bicubic, up[0], truth[0]], axis=2), self.fps
    )

  def sampling_steps(self, request):
    return self.sampler_settings(request, self.config.flow)["num_steps"] * (
        len(request.inputs) + len(request.videos)
    )

  # ----------------------------------------------------------- evaluation
  def eval_clips(self, num_clips: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(uint8 [N, T, H, W, 3], tagged captions) of the first eval.num_clips held-out
    videos, eval.num_frames long (several windows) at the first video bucket's size."""
    e = self.config.eval
    num_clips = num_clips or e.num_clips
    bucket = next(b for b in self.buckets if not b.is_image)
    spec = self.bucket_spec(dataclasses.replace(bucket, num_frames=e.num_frames))
    records = [r for r in self.read_records("eval").records if r.get("video")]
    clips, captions, rng = [], [], np.random.default_rng(0)
    for record in records:
      if len(clips) == num_clips:
        break
      try:
        pixels, fps = load_pixels(record, spec, rng)
      except MediaDecodeError as err:
        logging.warning("Evaluation skips %s (%s).", err.path, err.kind)
        continue
      clips.append(pixels)
      captions.append(tagged_caption(record["caption"], fps))
    if not clips:
      raise ValueError(
          f"No held-out video of {e.num_frames} frames to evaluate the upsampler on (split "
          '"eval"); lower eval.num_frames or set train.eval_every=-1.'
      )
    return np.stack(clips), captions

  def evaluate(self, params, frozen, step):
    """PSNR / SSIM (frames in 0..255) of the upsampled held-out clips against the
    truth, next to bilinear and bicubic upsampling of the same degraded inputs and
    the TAE's reconstruction of the truth (the model's ceiling); seam figures."""
    e, u = self.config.eval, self.config.upsample
    truth, captions = self.eval_clips()  # [N, T, H, W, 3]
    n, t, height, width, _ = truth.shape
    lowres = np.stack([degrade.degrade(c, self.factor, u.degrade, e.seed) for c in truth])
    outputs = {
        "upsampler": self.upsample_videos(
            params,
            frozen,
            lowres,
            captions,
            num_steps=e.num_steps,
            schedule=e.schedule,
            method=e.method,
            cfg_scale=e.cfg_scale,
            seed=e.seed,
        ),
        **{
            m: np.stack([degrade.resize_video(v, height, width, m) for v in lowres])
            for m in BASELINES
        },
        "tae": self.codec.decode(self.codec.encode(truth), t),
    }
    results = {}
    for name, video in outputs.items():
      results[f"psnr_{name}"] = float(metrics.psnr(video, truth, 255.0).mean())
      results[f"ssim_{name}"] = float(metrics.ssim(video, truth, 255.0).mean())
    seams = seam_consistency(outputs["upsampler"], truth, u.window, u.overlap)
    results.update(seams)
    if jax.process_index() == 0:
      print(
          f"Upsampler at step {step} on {n} held-out clips of {t} frames, "
          f"{height // self.factor}x{width // self.factor} -> {height}x{width} (degraded "
          "inputs): PSNR "
          + ", ".join(f"{k} {results[f'psnr_{k}']:.2f} dB" for k in outputs)
          + "; SSIM "
          + ", ".join(f"{k} {results[f'ssim_{k}']:.3f}" for k in outputs)
          + f"; vs bicubic {results['psnr_upsampler'] - results['psnr_bicubic']:+.2f} dB; "
          f"frame-change error at window seams {seams['seam_error']:.2f} vs elsewhere "
          f"{seams['nonseam_error']:.2f} (ratio {seams['seam_ratio']:.2f})",
          flush=True,
      )
      self.write_comparisons(step, outputs, truth, captions)
    return results

  def write_comparisons(self, step, outputs, truth, captions):
    """Side by side per clip: bicubic | upsampler | truth, as .mp4."""
    rows = [
        Sample(f"clip_{i:02d}", captions[i], np.concatenate([b, up, gt], axis=2), self.fps)
        for i, (b, up, gt) in enumerate(zip(outputs["bicubic"], outputs["upsampler"], truth))
    ]
    write_samples(rows, self.eval_dir(step), max_media=self.config.eval.num_videos_to_write)


def seam_consistency(video: np.ndarray, truth: np.ndarray, window: int, overlap: int) -> dict:
  """How much more the frame-to-frame change of `video` departs from the truth's at
  window seams than elsewhere: mean |(v[t+1] - v[t]) - (g[t+1] - g[t])| (0..255
  units) over the transitions where a window starts or ends, over the others, and
  their ratio (1: seams are invisible; a seam that jumps shows well above 1)."""
  v = np.diff(np.asarray(video, np.float32), axis=1)  # [N, T-1, H, W, 3]
  g = np.diff(np.asarray(truth, np.float32), axis=1)
  error = np.abs(v - g).mean(axis=(0, 2, 3, 4))  # [T-1]
  seams = multidiffusion.seam_transitions(video.shape[1], window, overlap)
  other = np.setdiff1d(np.arange(len(error)), seams)
  seam_error = float(error[seams].mean()) if len(seams) else float("nan")
  nonseam_error = float(error[other].mean()) if len(other) else float("nan")
  return {
      "seam_error": seam_error,
      "nonseam_error": nonseam_error,
      "seam_ratio": seam_error / max(nonseam_error, 1e-6),
  }
