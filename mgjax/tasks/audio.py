"""Video/text-to-audio flow matching on audio VAE latents: the Movie Gen Audio task.

Stages (each skipped when already done in the workdir):
  1. the audio VAE of `vae.train_config` is trained in `vae.workdir` (default
     <workdir>/audio_vae) on the same data, unless a finished run is there -- a
     declared stage (`stages()`), run by the trainer;
  2. `prepare()`: the shapes_audio clips are made in `data.dir` (default
     <workdir>/shapes_audio);
  3. every training clip is decoded once and its sound encoded to VAE latent means
     (posterior means, 25 Hz) into <workdir>/audio_latents/train.npz, together with
     its frames (uint8, at data.fps, data.frame_size) and caption
     (mgjax/data/av_clips.py). Precomputing, not encoding on the fly: on the tiny
     CPU run decoding two files per example per step would cost more than the step.
     Latents are standardised per channel with the training set's statistics
     (audio_latents/stats.json, which sampling reads back). The cache is keyed by
     the VAE's weights and the manifest's content, not by where they live.

Loss (mgjax/flow.py): t ~ logit-normal(t_mean, t_std), X_t = t X1 + (1 - (1 -
sigma_min) t) X0, MSE against X1 - (1 - sigma_min) X0. Per example and on its own:
  * the video is dropped with flow.video_drop_prob and the text with
    flow.text_drop_prob (the model's learned null video embedding / no text tokens),
    the null conditions classifier-free guidance samples with;
  * with probability context.prob the clip's own (clean) latent is given as masked
    audio context, except for one random contiguous span of [min_fraction,
    max_fraction] of the clip, which is hidden and must be generated.
The loss is over the frames the model must generate only (context mask 0; every
frame for examples without context): a given frame's velocity is known from the
context, so counting it would reward copying and dilute the gradient of the frames
that matter (Voicebox does the same). The per-frame video encoder
(mgjax/models/video_features.py) trains jointly (video_encoder.trainable) and the
tiny text encoder with it (text.encoders.*.trainable).

Evaluation: the first eval.num_prompts usable "eval"-split clips (held-out colour x
shape x motion triples) get audio sampled from their video and caption (the
config's solver, steps and CFG; long clips through mgjax.audio_longform), decoded
with the VAE and written as .wav and muxed .mp4 (the clip's own video stream) under
workdir/samples/step_N. On shapes audio it prints and returns
  sync_score       bounces with a detected onset within +-40 ms (one latent frame),
                   over all bounces of the clips (shapes_audio.sync_score);
  tone_accuracy    clips whose dominant pitch names the caption's colour;
  false_onsets_per_silent_clip  onsets per clip that has no bounce;
  false_onset_rate onsets near no bounce / all onsets, over all clips;
  chance_sync_score  the sync the same onsets would get at random times.
The held-out split holds few bounces, so with eval.num_bouncing_clips the same scores
(bouncing_*) are also taken on that many fresh clips that all bounce
(<workdir>/shapes_audio_bouncing, seed shapes_audio.BOUNCING_SEED: never trained on).
Bad input: clips whose audio or video cannot be decoded are skipped and counted by
kind (data/skipped_clips_<kind>), in training data and in evaluation alike.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import configs
from mgjax.audio_longform import sample_long
from mgjax.data import av_clips, shapes_audio
from mgjax.data import video as video_lib
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.sources import loader_options
from mgjax.models.audio_dit import AudioDiT, align_video_features, window_model_fn
from mgjax.models.video_features import VideoFeatureEncoder
from mgjax.parallel import distributed
from mgjax.tasks import audio_vae as audio_vae_task
from mgjax.tasks.codecs import AudioVAECodec, ChannelStats
from mgjax.tasks.latent_flow import LatentFlowTask
from mgjax.tasks.outputs import Sample, write_samples
from mgjax.text.conditioning import TextConditioner

AUDIO_SOURCES = ("shapes_audio", "manifest")


class AudioTask(LatentFlowTask):
  codec_class = AudioVAECodec
  codec_section = "vae"
  codec_default_dir = "audio_vae"
  codec_stage_name = "audio VAE"
  default_codec_config = "experiments/audio_vae.py:paper"
  stats_dir = "audio_latents"
  num_batched_guidance_args = 4  # context, context mask, aligned video, per-example text
  uses_frame_mask = True

  def __init__(self, config, workdir, **codec_and_stats):
    super().__init__(config, workdir, **codec_and_stats)
    self.dit = AudioDiT.from_config(
        config.model, context_attention=configs.parallel_settings(config)["context_attention"]
    )
    self.video_encoder = VideoFeatureEncoder.from_config(config.video_encoder)
    self.text = TextConditioner(config.text)
    self.batch_size = config.data.batch_size or config.train.batch_size
    self.video_fps = float(config.model.video_fps)
    if float(config.data.fps) != self.video_fps:
      raise ValueError(
          f"data.fps={config.data.fps} must equal model.video_fps="
          f"{config.model.video_fps}: the video features are read at that rate."
      )
    self.frame_size = tuple(int(s) for s in config.data.frame_size)
    self.num_frames = int(round(config.data.clip_seconds * config.model.latent_rate))
    if self.num_frames > config.model.max_frames:
      raise ValueError(
          f"data.clip_seconds={config.data.clip_seconds} is {self.num_frames} "
          f"latent frames, more than model.max_frames={config.model.max_frames}."
      )
    self.num_video_frames = int(round(config.data.clip_seconds * self.video_fps))
    self._skipped: collections.Counter = collections.Counter()
    self._cache: dict[str, dict] = {}

  # ----------------------------------------------------------------- stages
  def configure_codec_stage(self, config):
    """The audio VAE trains on the same shapes_audio set (directory and parameters)."""
    data = self.config.data
    config.data.name = data.name
    config.data.dir = self.data_dir
    if data.name == "shapes_audio":
      params = shapes_audio_params(data, config.model.sample_rate)
      for key in ("sample_rate", "motion", "motion_share"):
        params.pop(key, None)
      config.data.shapes_audio.update(params, bouncing_share=data.bouncing_share)

  def prepare(self):
    """Data set and cached latents (the VAE is a declared stage: vae.train_config)."""
    self.check_codec()  # a missing VAE fails here with the fix, before any data work
    distributed.first_process_first("audio_latents", lambda: self.clips("train"))
    self.stats()

  @property
  def data_dir(self) -> str:
    return self.config.data.dir or os.path.join(self.workdir, "shapes_audio")

  def manifest(self) -> str:
    data = self.config.data
    if data.name == "shapes_audio":
      s = data.shapes
      if s.get("paths", "random") != "random":
        raise ValueError(
            f"data.shapes.paths={s.paths!r}: the shapes_audio set draws "
            "paths='random' only; set --config.data.shapes.paths=random."
        )
      return distributed.first_process_first(
          "shapes_audio",
          lambda: shapes_audio.ensure_dataset(
              self.data_dir, **shapes_audio_params(data, self.sample_rate)
          ),
      )
    return audio_vae_task.manifest_path(data, self.workdir, self.sample_rate)  # manifest

  def check_codec(self):
    """The VAE's latents must be the ones the DiT is configured for."""
    codec, model = self.codec, self.config.model
    if codec.latent_channels != model.latent_channels or codec.latent_rate != model.latent_rate:
      raise ValueError(
          f"The audio VAE in {self.codec_workdir} makes {codec.latent_channels} channels at "
          f"{codec.latent_rate} Hz; model.latent_channels/latent_rate say "
          f"{model.latent_channels} at {model.latent_rate}. Make them match."
      )
    if codec.sample_rate != self.config.data.audio.sample_rate:
      raise ValueError(
          f"The audio VAE runs at {codec.sample_rate} Hz but "
          f"data.audio.sample_rate is {self.config.data.audio.sample_rate}."
      )

  @property
  def sample_rate(self) -> int:
    return int(self.config.data.audio.sample_rate)

  def clip_args(self) -> dict:
    return dict(
        clip_seconds=float(self.config.data.clip_seconds),
        fps=self.video_fps,
        size=self.frame_size,
        sample_rate=self.sample_rate,
        channels=int(self.config.data.audio.channels),
    )

  def clips(self, split: str) -> dict:
    """The cached clips of a split (made on first use); counts its skipped clips."""
    if split not in self._cache:
      self.check_codec()
      fingerprint = {
          "vae": self.codec.fingerprint(),
          "manifest_sha256": file_sha256(self.manifest()),
          **{k: list(v) if isinstance(v, tuple) else v for k, v in self.clip_args().items()},
      }
      records = av_clips.read_records(self.manifest(), split)
      path = os.path.join(self.workdir, "audio_latents", f"{split}.npz")
      self._cache[split] = av_clips.cache_clips(
          path, records, fingerprint, lambda w: self.codec.encode(w), **self.clip_args()
      )
      self._skipped.update(json.loads(str(self._cache[split]["skipped"])))
    return self._cache[split]

  def compute_stats(self) -> ChannelStats:
    """Per-channel statistics of the training clips' latents."""
    latent = self.clips("train")["latent"]  # [N, T, C]
    mean, std = latent.mean(axis=(0, 1)), np.maximum(latent.std(axis=(0, 1)), 1e-6)
    return ChannelStats(np.asarray(mean, np.float32), np.asarray(std, np.float32))

  # ----------------------------------------------------------------- shapes
  def batch_specs(self):
    """latent [B, T, C], frames uint8 [B, Tv, H, W, 3], text ids/mask [B, L]."""
    b = self.batch_size
    return {
        "clip": {
            "latent": jax.ShapeDtypeStruct(
                (b, self.num_frames, self.config.model.latent_channels), jnp.float32
            ),
            "frames": jax.ShapeDtypeStruct(
                (b, self.num_video_frames) + self.frame_size + (3,), jnp.uint8
            ),
            **self.text.token_specs(b),
        }
    }

  def batch_tokens(self, batch) -> int:
    return int(np.prod(batch["latent"].shape[:2]))

  def check_mesh(self, mesh):
    super().check_mesh(mesh)
    if self.num_frames % mesh.shape["context"]:
      raise ValueError(
          f"Mesh axis context={mesh.shape['context']} does not divide the "
          f"{self.num_frames} latent frames of a clip."
      )

  # ------------------------------------------------------------------ model
  def init(self, rng):
    """params {dit, text, video_encoder}; frozen {text, video_encoder} when frozen."""
    dit_rng, video_rng, text_rng = jax.random.split(rng, 3)
    trainable_text, frozen_text = self.text.init(text_rng)
    spec = self.batch_specs()["clip"]
    frames = jnp.zeros((1,) + spec["frames"].shape[1:], jnp.uint8)
    video_params = self.video_encoder.init(video_rng, frames)["params"]
    features = jnp.zeros((1, self.num_video_frames, self.config.video_encoder.features))
    latent = jnp.zeros((1,) + spec["latent"].shape[1:])
    dit_params = self.dit.init(
        dit_rng,
        latent,
        jnp.zeros((1,)),
        latent,
        jnp.zeros(latent.shape[:2] + (1,)),
        features,
        self.text.example_inputs(),
        video_fps=self.video_fps,
    )["params"]
    params, frozen = {"dit": dit_params, "text": trainable_text}, {"text": frozen_text}
    (params if self.config.video_encoder.trainable else frozen)["video_encoder"] = video_params
    return params, frozen

  def video_features(self, params, frozen, frames):
    """uint8 frames [B, Tv, H, W, 3] -> features [B, Tv, Fv] at data.fps."""
    video_params = params.get("video_encoder", frozen.get("video_encoder"))
    return self.video_encoder.apply({"params": video_params}, frames)

  def condition_dropout(self):
    f = self.config.flow
    return {"video": f.video_drop_prob, "text": f.text_drop_prob}

  def frame_mask(self, rng, x1, batch):
    """With probability context.prob the clip's own (clean) latent is the context
    except one hidden span, and only the hidden frames are in the loss."""
    del batch
    context_mask = span_context_mask(rng, x1.shape[0], x1.shape[1], self.config.context)
    extra = {"context": x1, "context_mask": context_mask}
    return 1.0 - context_mask, extra, {"context_fraction": context_mask.mean()}

  def velocity(self, params, frozen, x_t, t, conditions, keep):
    """DiT velocity [B, T, C] for standardised latents, from the clip's frames, its
    text tokens and the audio context in `conditions`."""
    features = self.video_features(params, frozen, conditions["frames"])  # [B, Tv, Fv]
    text = self.text.embed(params["text"], frozen["text"], conditions)
    return self.dit.apply(
        {"params": params["dit"]},
        x_t,
        t,
        conditions["context"],
        conditions["context_mask"],
        features,
        text,
        keep_video=keep.get("video"),
        keep_text=keep.get("text"),
        video_fps=self.video_fps,
    )

  # ------------------------------------------------------------------- data
  def train_batches(self, start_step, rows_of):
    clips = self.clips("train")
    latent, frames, captions = clips["latent"], clips["frames"], clips["caption"]

    def load(index, rng):
      del rng
      i = int(index)
      return {"latent": latent[i], "frames": frames[i], "caption": str(captions[i]), "skipped": []}

    finish = lambda batch: {
        "latent": batch["latent"],
        "frames": batch["frames"],
        **self.text.tokenize(batch["caption"]),
    }
    stream = Stream("clip", len(latent), load, self.batch_size)
    skipped = collections.Counter(
        {f"clips_{k}": v for k, v in json.loads(str(clips["skipped"])).items()}
    )
    return DataIterator(
        [stream],
        loader_options(self.config.data, self.config.seed),
        finish,
        rows_of=rows_of,
        skipped_records=skipped,
        num_records=len(latent) + sum(skipped.values()),
        start=start_step,
    )

  def data_metrics(self):
    metrics = {
        f"data/truncated_prompts_{name}": count for name, count in self.text.num_truncated.items()
    }
    metrics.update({f"data/skipped_clips_{k}": float(v) for k, v in self._skipped.items()})
    return metrics

  # --------------------------------------------------------------- sampling
  @functools.cached_property
  def guided_model_fn(self):
    """The DiT as the window model of `mgjax.audio_longform` (models/audio_dit.py)."""
    return window_model_fn(self.dit)

  def integrate(self, velocity_fn, noise, times, method, step_callback, args):
    """Any length: clips longer than longform.window_frames go through `sample_long`
    (longform.method, window, overlap); shorter ones are one window."""
    aligned, per_example, variables = args
    lf = self.config.longform
    return sample_long(
        lf.method,
        velocity_fn,
        noise,
        times,
        window=int(lf.window_frames),
        overlap=int(lf.overlap_frames),
        method=method,
        aligned=aligned,
        per_example=per_example,
        args=(variables,),
        step_callback=step_callback,
    )

  @functools.cached_property
  def _conditions(self):
    """jit: (params, frozen, frames, tokens, T) -> (aligned video [B, T, Fv], text)."""

    def conditions(params, frozen, frames, tokens, num_frames):
      features = self.video_features(params, frozen, frames)  # [B, Tv, Fv]
      aligned = align_video_features(
          features, self.video_fps, float(self.config.model.latent_rate), num_frames
      )
      return aligned, self.text.embed(params["text"], frozen["text"], tokens)

    return jax.jit(conditions, static_argnums=4)

  def sample_audio_latents(
      self, params, frozen, frames: np.ndarray, captions: list[str], num_frames: int, **sampler
  ) -> jax.Array:
    """Latents [B, num_frames, C] (VAE scale) for uint8 frames [B, Tv, H, W, 3] and
    captions ("" = the null text of training); any length (see `integrate`). `sampler`:
    num_steps, cfg_scale, seed, method (midpoint), schedule, step_callback."""
    tokens = {k: jnp.asarray(v) for k, v in self.text.tokenize(captions).items()}
    aligned, text = self._conditions(params, frozen, jnp.asarray(frames), tokens, int(num_frames))
    # An empty caption is the null text condition of training (no text tokens).
    empty = jnp.asarray([not c.strip() for c in captions])[:, None]  # [B, 1]
    text = {name: (emb, mask & ~empty) for name, (emb, mask) in text.items()}
    return self.sample_latents(
        ({"video": aligned}, {"text": text}, {"params": params["dit"]}),
        (int(num_frames), self.config.model.latent_channels),
        num_examples=len(frames),
        **{"method": "midpoint", "schedule": "linear", **sampler},
    )

  def generate_audio(
      self, params, frozen, frames: np.ndarray, captions: list[str], num_samples: int, **kwargs
  ) -> np.ndarray:
    """Waveforms float32 [B, num_samples, C] at the VAE's rate for the videos' frames
    (keyword arguments: `sample_audio_latents`')."""
    num_frames, _ = self.codec.latent_shape(num_samples)
    latents = self.sample_audio_latents(params, frozen, frames, captions, num_frames, **kwargs)
    return np.asarray(self.codec.decode(latents, num_frames * self.codec.hop))[:, :num_samples]

  def generate(self, params, frozen, request):
    """Sound for each video of `request.inputs` (any codec, size, frame rate and
    length), with the one prompt of the request as its text ("" or none: video only);
    each Sample is muxed onto its video."""
    if not request.inputs:
      raise ValueError("The audio task makes sound for videos: pass --video=IN.mp4.")
    if len(request.prompts) > 1:
      raise ValueError("Give at most one --prompt (the sound's description) for the videos.")
    prompt = request.prompts[0] if request.prompts else ""
    settings = self.sampler_settings(request, self.config.flow)
    samples = []
    for i, path in enumerate(request.inputs):
      frames, num_samples = self.read_video(path)
      wave = self.generate_audio(
          params,
          frozen,
          frames[None],
          [prompt],
          num_samples,
          seed=request.seed + i,
          step_callback=request.progress and (lambda i, n: request.progress(1)),
          **settings,
      )[0]
      stem = os.path.splitext(os.path.basename(path))[0]
      samples.append(
          Sample(stem, prompt, audio=wave, sample_rate=self.sample_rate, source_video=path)
      )
    return samples

  def read_video(self, path: str) -> tuple[np.ndarray, int]:
    """(uint8 frames [Tv, H, W, 3] at the model's frame rate and size covering every
    latent frame, samples of sound to make) for a video file."""
    frames, duration, _ = video_lib.read_video(path, self.video_fps, self.frame_size)
    num_samples = int(round(duration * self.sample_rate))
    latent_frames, _ = self.codec.latent_shape(num_samples)
    # The last latent frame may start after the last whole video frame: repeat it.
    needed = int(math.ceil(latent_frames / self.config.model.latent_rate * self.video_fps))
    if needed > len(frames):
      frames = np.concatenate([frames, np.repeat(frames[-1:], needed - len(frames), axis=0)])
    return frames, num_samples

  def sampling_steps(self, request) -> int:
    return self.sampler_settings(request, self.config.flow)["num_steps"] * len(request.inputs)

  # ------------------------------------------------------------------- eval
  def eval_clips(self, name: str = "eval") -> tuple[np.ndarray, list[dict]]:
    """(frames [N, Tv, H, W, 3], records) of an evaluation set, decoded once; its
    unusable clips are counted. "eval": the first eval.num_prompts usable held-out
    clips; "bouncing": the eval.num_bouncing_clips fresh bouncing clips (`bouncing_manifest`)."""
    if name not in self._cache:
      if name == "eval":
        records = av_clips.read_records(self.manifest(), "eval")
        limit = self.config.eval.num_prompts
      else:
        records, limit = self.bouncing_records(), None
      clips, kept, skipped = av_clips.load_clips(records, limit, **self.clip_args())
      self._skipped.update({f"{name}_{k}": v for k, v in skipped.items()})
      if not kept and name == "eval":
        raise ValueError(
            f'{self.manifest()} has no usable "split": "eval" clips to '
            'evaluate on; mark some lines "split": "eval".'
        )
      if not kept:
        raise ValueError(f"None of the clips in {self.bouncing_manifest()} could be decoded.")
      self._cache[name] = {"frames": np.stack([c[0] for c in clips]), "records": kept}
    return self._cache[name]["frames"], self._cache[name]["records"]

  def bouncing_manifest(self) -> str:
    """eval.num_bouncing_clips fresh shapes clips that all bounce, in
    <workdir>/shapes_audio_bouncing (made once; seed shapes_audio.BOUNCING_SEED, so never
    trained on): the held-out split holds too few bounces for a sync figure."""
    params = dict(
        shapes_audio_params(self.config.data, self.sample_rate),
        num_videos=int(self.config.eval.num_bouncing_clips),
        seed=shapes_audio.BOUNCING_SEED,
        motion="bouncing",
        motion_share=1.0,
    )
    out_dir = os.path.join(self.workdir, "shapes_audio_bouncing")
    return distributed.first_process_first(
        "shapes_audio_bouncing", lambda: shapes_audio.ensure_dataset(out_dir, **params)
    )

  def bouncing_records(self) -> list[dict]:
    """The records of `bouncing_manifest`, of both splits (none was trained on)."""
    manifest = self.bouncing_manifest()
    return [r for split in ("train", "eval") for r in av_clips.read_records(manifest, split)]

  def sample_clips(self, params, frozen, frames, records) -> np.ndarray:
    """Generated sound [N, S, C] for clips' frames and captions (eval.* solver)."""
    e = self.config.eval
    num_samples = av_clips.clip_lengths(
        self.config.data.clip_seconds, self.video_fps, self.sample_rate
    )[1]
    waves = []
    for i in range(0, len(frames), e.batch_size):
      waves.append(
          self.generate_audio(
              params,
              frozen,
              frames[i : i + e.batch_size],
              [r.get("caption", "") for r in records[i : i + e.batch_size]],
              num_samples,
              num_steps=e.num_steps,
              cfg_scale=e.cfg_scale,
              seed=e.seed + i,
              method=e.method,
          )
      )
    return np.concatenate(waves)

  def evaluate(self, params, frozen, step):
    frames, records = self.eval_clips()
    waves = self.sample_clips(params, frozen, frames, records)  # [N, S, C]
    self.write_samples(waves, records, step)
    results = shapes_scores(waves, records, self.sample_rate)
    if results and jax.process_index() == 0:
      print(
          f"Video-to-audio at step {step} on {len(records)} held-out clips: sync "
          f"{100 * results['sync_score']:.1f}% of {int(results['num_bounces'])} bounces "
          f"within 40 ms, tone colour {100 * results['tone_accuracy']:.1f}%, false onsets "
          f"{results['false_onsets_per_silent_clip']:.2f} per bounce-free clip "
          f"({100 * results['false_onset_rate']:.1f}% of all onsets)",
          flush=True,
      )
    if (
        results
        and self.config.data.name == "shapes_audio"
        and self.config.eval.get("num_bouncing_clips", 0)
    ):
      frames, records = self.eval_clips("bouncing")
      bouncing = shapes_scores(
          self.sample_clips(params, frozen, frames, records), records, self.sample_rate
      )
      results.update(
          {
              f"bouncing_{k}": v
              for k, v in bouncing.items()
              if k
              in (
                  "sync_score",
                  "num_bounces",
                  "chance_sync_score",
                  "tone_accuracy",
                  "false_onset_rate",
              )
          }
      )
      if jax.process_index() == 0:
        print(
            f"  on {len(records)} fresh bouncing clips: sync "
            f"{100 * bouncing['sync_score']:.1f}% of {int(bouncing['num_bounces'])} bounces "
            f"(onsets at random times: {100 * bouncing['chance_sync_score']:.1f}%), "
            f"tone colour {100 * bouncing['tone_accuracy']:.1f}%, "
            f"{100 * bouncing['false_onset_rate']:.1f}% of onsets false",
            flush=True,
        )
    return results

  def write_samples(self, waves, records, step):
    """step_N/NN.wav and NN.mp4 (the held-out clip's video with the generated sound)
    for the first eval.num_to_write clips, the captions of all, on process 0."""
    if jax.process_index() != 0:
      return
    samples = [
        Sample(
            f"{i:02d}",
            r.get("caption", ""),
            audio=wave,
            sample_rate=self.sample_rate,
            source_video=r["video_path"],
        )
        for i, (wave, r) in enumerate(zip(waves, records))
    ]
    out_dir = self.eval_dir(step)
    write_samples(samples, out_dir, "captions.txt", max_media=self.config.eval.num_to_write)
    logging.info("Wrote audio samples to %s", out_dir)


# ---------------------------------------------------------------------- helpers


def span_context_mask(rng, batch: int, num_frames: int, section) -> jax.Array:
  """float [B, T, 1]: 1 = frame given as context. With probability section.prob an
  example gets context everywhere except one hidden span of round(U(min_fraction,
  max_fraction) T) frames at a uniform start; otherwise nothing is given."""
  has_rng, len_rng, start_rng = jax.random.split(rng, 3)
  has = jax.random.uniform(has_rng, (batch,)) < section.prob  # [B]
  fraction = jax.random.uniform(
      len_rng, (batch,), minval=section.min_fraction, maxval=section.max_fraction
  )
  length = jnp.clip(jnp.round(fraction * num_frames).astype(jnp.int32), 1, num_frames)
  start = jnp.floor(jax.random.uniform(start_rng, (batch,)) * (num_frames - length + 1)).astype(
      jnp.int32
  )
  i = jnp.arange(num_frames)[None]  # [1, T]
  hidden = (i >= start[:, None]) & (i < (start + length)[:, None])  # [B, T]
  return (has[:, None] & ~hidden).astype(jnp.float32)[..., None]


def shapes_audio_params(data, sample_rate: int) -> dict:
  """ensure_dataset keyword arguments of the shapes_audio set of a data section."""
  return shapes_audio.dataset_args(
      data.shapes, sample_rate, data.get("eval_fraction", 0.15), data.get("bouncing_share", 0.0)
  )


def shapes_scores(waves: np.ndarray, records: list[dict], sample_rate: int) -> dict:
  """Sync, tone-colour and false-onset scores of generated sound; {} off shapes data.

  chance_sync_score: the sync score the same number of onsets per clip would get at
  random times -- what clicking often, not in time, earns.
  """
  if not any("bounce_times" in r for r in records):
    return {}
  hits = bounces = onsets = false = silent_clips = silent_onsets = tone_right = chance = 0
  for wave, record in zip(waves, records):
    length = wave.shape[0] / sample_rate
    truth = [t for t in record["bounce_times"] if t < length]
    score = shapes_audio.sync_score(shapes_audio.detect_onsets(wave, sample_rate), truth)
    # The hit rate the clip's onsets would get at uniformly random times.
    window = min(1.0, 2 * shapes_audio.SYNC_TOLERANCE_S / length)
    chance += len(truth) * (1 - (1 - window) ** score.num_onsets)
    hits, bounces = hits + score.num_hits, bounces + score.num_bounces
    onsets, false = onsets + score.num_onsets, false + score.num_false_onsets
    if not truth:
      silent_clips, silent_onsets = silent_clips + 1, silent_onsets + score.num_onsets
    tone_right += shapes_audio.color_from_tone(wave, sample_rate) == record["attributes"]["color"]
  return {
      "sync_score": hits / bounces if bounces else 1.0,
      "num_bounces": float(bounces),
      "chance_sync_score": chance / bounces if bounces else 0.0,
      "tone_accuracy": tone_right / len(records),
      "false_onsets_per_silent_clip": silent_onsets / silent_clips if silent_clips else 0.0,
      "false_onset_rate": false / onsets if onsets else 0.0,
  }


def file_sha256(path: str) -> str:
  """Digest of a file's bytes (a manifest: what the clips are, not where it lives)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
