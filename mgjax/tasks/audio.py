"""Video/text-to-audio flow matching on audio VAE latents: the Movie Gen Audio task.

Stages of `prepare()` (each skipped when already done in the workdir):
  1. the audio VAE of `vae.train_config` is trained in `vae.workdir` (default
     <workdir>/audio_vae) on the same data, unless a finished run is there;
  2. the shapes_audio clips are made in `data.dir` (default <workdir>/shapes_audio);
  3. every training clip is decoded once and its sound encoded to VAE latent means
     (posterior means, 25 Hz) into <workdir>/audio_latents/train.npz, together with
     its frames (uint8, at data.fps, data.frame_size) and caption
     (mgjax/data/av_clips.py). Precomputing, not encoding on the fly: on the tiny
     CPU run decoding two files per example per step would cost more than the step.
     Latents are standardised per channel with the training set's statistics
     (audio_latents/stats.json, which sampling reads back).

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
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import configs, flow
from mgjax.audio_longform import sample_long
from mgjax.checkpoint import Checkpointer
from mgjax.data import audio as audio_lib
from mgjax.data import av_clips, shapes_audio
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.sources import loader_options
from mgjax.models.audio_dit import AudioDiT, align_video_features, guided_velocity_fn
from mgjax.models.video_features import VideoFeatureEncoder
from mgjax.parallel import distributed
from mgjax.preemption import StopRequested
from mgjax.tasks.base import Task
from mgjax.text.conditioning import TextConditioner

AUDIO_SOURCES = ("shapes_audio", "manifest")


class AudioTask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.dit = AudioDiT.from_config(
        config.model, context_attention=configs.parallel_settings(config)["context_attention"]
    )
    self.video_encoder = VideoFeatureEncoder.from_config(config.video_encoder)
    self.text = TextConditioner(config.text)
    self.vae_workdir = config.vae.workdir or os.path.join(workdir, "audio_vae")
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
    self._stats = None
    self._guided = {}

  # ----------------------------------------------------------------- stages
  def prepare(self):
    """VAE (trained first when vae.train_config is set), data set, cached latents."""
    if self.config.vae.train_config:
      train_vae(self.config.vae, self.vae_workdir, self.config.data, self.data_dir)
    self.codec  # a missing VAE fails here with the fix, before any data work
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
    if data.name == "manifest":
      if not data.dir:
        raise ValueError(
            "data.name='manifest' needs data.dir, the folder holding "
            'manifest.jsonl (one {"video": path, "caption": ...} per line).'
        )
      return os.path.join(data.dir, "manifest.jsonl")
    raise ValueError(f"The audio task reads data.name in {AUDIO_SOURCES}; got {data.name!r}.")

  @functools.cached_property
  def codec(self):
    from mgjax.tasks.audio_vae import AudioVAECodec  # the trainer imports tasks lazily

    codec = AudioVAECodec.from_workdir(self.vae_workdir)
    model = self.config.model
    if codec.latent_channels != model.latent_channels or codec.latent_rate != model.latent_rate:
      raise ValueError(
          f"The audio VAE in {self.vae_workdir} makes {codec.latent_channels} channels at "
          f"{codec.latent_rate} Hz; model.latent_channels/latent_rate say "
          f"{model.latent_channels} at {model.latent_rate}. Make them match."
      )
    if codec.sample_rate != self.config.data.audio.sample_rate:
      raise ValueError(
          f"The audio VAE runs at {codec.sample_rate} Hz but "
          f"data.audio.sample_rate is {self.config.data.audio.sample_rate}."
      )
    return codec

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
      step = Checkpointer(self.vae_workdir, read_only=True).latest_step()
      fingerprint = {
          "vae": f"{os.path.abspath(self.vae_workdir)}@{step}",
          "manifest": os.path.abspath(self.manifest()),
          **{k: list(v) if isinstance(v, tuple) else v for k, v in self.clip_args().items()},
      }
      records = av_clips.read_records(self.manifest(), split)
      path = os.path.join(self.workdir, "audio_latents", f"{split}.npz")
      self._cache[split] = av_clips.cache_clips(
          path, records, fingerprint, lambda w: self.codec.encode(w), **self.clip_args()
      )
      self._skipped.update(json.loads(str(self._cache[split]["skipped"])))
    return self._cache[split]

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel latent (mean, std) of the training clips, saved for sampling."""
    if self._stats is None:
      path = os.path.join(self.workdir, "audio_latents", "stats.json")
      if os.path.exists(path):
        with open(path) as f:
          saved = json.load(f)
      else:
        latent = self.clips("train")["latent"]  # [N, T, C]
        saved = {
            "mean": latent.mean(axis=(0, 1)).tolist(),
            "std": np.maximum(latent.std(axis=(0, 1)), 1e-6).tolist(),
        }
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(path), exist_ok=True)
          with open(path, "w") as f:
            json.dump(saved, f)
      self._stats = (np.asarray(saved["mean"], np.float32), np.asarray(saved["std"], np.float32))
    return self._stats

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
    model, tensor = self.config.model, mesh.shape["tensor"]
    for name, size in (("num_heads", model.num_heads), ("mlp_dim", model.mlp_dim)):
      if size % tensor:
        raise ValueError(
            f"Mesh axis tensor={tensor} does not divide model.{name}={size}; "
            f"use a tensor size that divides {name}."
        )
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

  def velocity(
      self,
      params,
      frozen,
      x_t,
      t,
      context,
      context_mask,
      frames,
      tokens,
      keep_video=None,
      keep_text=None,
  ):
    """DiT velocity [B, T, C] for standardised latents."""
    features = self.video_features(params, frozen, frames)  # [B, Tv, Fv]
    text = self.text.embed(params["text"], frozen["text"], tokens)
    return self.dit.apply(
        {"params": params["dit"]},
        x_t,
        t,
        context,
        context_mask,
        features,
        text,
        keep_video=keep_video,
        keep_text=keep_text,
        video_fps=self.video_fps,
    )

  def loss(self, params, frozen, batch, rng, step):
    del step
    f = self.config.flow
    mean, std = (jnp.asarray(s) for s in self.stats())
    x1 = (batch["latent"] - mean) / std  # [B, T, C]
    b = x1.shape[0]
    path_rng, video_rng, text_rng, context_rng = jax.random.split(rng, 4)
    keep_video = flow.drop_condition(video_rng, b, f.video_drop_prob)  # [B]
    keep_text = flow.drop_condition(text_rng, b, f.text_drop_prob)  # [B]
    context_mask = span_context_mask(context_rng, b, x1.shape[1], self.config.context)
    t, x_t, target = flow.training_example(path_rng, x1, f.sigma_min, f.t_mean, f.t_std)
    prediction = self.velocity(
        params, frozen, x_t, t, x1, context_mask, batch["frames"], batch, keep_video, keep_text
    )
    generated = 1.0 - context_mask  # [B, T, 1]: the frames in the loss
    squared = jnp.square(prediction - target) * generated  # [B, T, C]
    loss = squared.sum() / jnp.maximum(generated.sum() * x1.shape[-1], 1.0)
    return loss, {"velocity_mse": loss, "context_fraction": context_mask.mean()}

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
  def guided_velocity(self, cfg_scale: float):
    """One window velocity function per scale, so repeated sampling reuses its step."""
    if cfg_scale not in self._guided:
      self._guided[cfg_scale] = guided_velocity_fn(self.dit, float(cfg_scale))
    return self._guided[cfg_scale]

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

  def sample_latents(
      self,
      params,
      frozen,
      frames: np.ndarray,
      captions: list[str],
      num_frames: int,
      *,
      num_steps: int,
      cfg_scale: float,
      seed: int,
      method: str = "midpoint",
      schedule: str = "linear",
      step_callback=None,
  ) -> np.ndarray:
    """Latents [B, num_frames, C] (VAE scale) for uint8 frames [B, Tv, H, W, 3].

    Any length: clips longer than longform.window_frames go through
    `sample_long` (longform.method, window, overlap); shorter ones are one window.
    """
    tokens = {k: jnp.asarray(v) for k, v in self.text.tokenize(captions).items()}
    aligned, text = self._conditions(params, frozen, jnp.asarray(frames), tokens, int(num_frames))
    # An empty caption is the null text condition of training (no text tokens).
    empty = jnp.asarray([not c.strip() for c in captions])[:, None]  # [B, 1]
    text = {name: (emb, mask & ~empty) for name, (emb, mask) in text.items()}
    c = self.config.model.latent_channels
    noise = jax.random.normal(jax.random.key(seed), (len(frames), int(num_frames), c))
    lf = self.config.longform
    times = flow.make_schedule(schedule, num_steps)
    z = sample_long(
        lf.method,
        self.guided_velocity(float(cfg_scale)),
        noise,
        times,
        window=int(lf.window_frames),
        overlap=int(lf.overlap_frames),
        method=method,
        aligned={"video": aligned},
        per_example={"text": text},
        args=({"params": params["dit"]},),
        step_callback=step_callback,
    )
    mean, std = self.stats()
    return np.asarray(z) * std + mean

  def generate(
      self,
      params,
      frozen,
      frames: np.ndarray,
      captions: list[str],
      num_samples: int,
      **sample_kwargs,
  ) -> np.ndarray:
    """Waveforms float32 [B, num_samples, C] at the VAE's rate for the videos' frames."""
    hop = self.codec.hop
    num_frames = -(-int(num_samples) // hop)
    latents = self.sample_latents(params, frozen, frames, captions, num_frames, **sample_kwargs)
    return np.asarray(self.codec.decode(latents, num_frames * hop))[:, :num_samples]

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
          self.generate(
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
    """step_N/NN.wav and NN.mp4 (the held-out clip's video with the generated sound)."""
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(self.workdir, "samples", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    for i, (wave, record) in enumerate(zip(waves, records)):
      if i < self.config.eval.num_to_write:
        audio_lib.write_wav(os.path.join(out_dir, f"{i:02d}.wav"), wave, self.sample_rate)
        audio_lib.mux_audio(
            record["video_path"], wave, self.sample_rate, os.path.join(out_dir, f"{i:02d}.mp4")
        )
      lines.append(f"{i:02d} {record.get('caption', '')}")
    with open(os.path.join(out_dir, "captions.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
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
  s = data.shapes
  return dict(
      num_videos=s.num_videos,
      seed=s.seed,
      sample_rate=sample_rate,
      fps=s.fps,
      num_frames=s.num_frames,
      height=s.height,
      width=s.width,
      eval_fraction=data.get("eval_fraction", 0.15),
      **shapes_audio.bouncing_args(data.get("bouncing_share", 0.0)),
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


def train_vae(vae_section, vae_workdir: str, data_config, data_dir: str):
  """Trains (or finishes training) the audio VAE of `vae.train_config` on the same
  shapes_audio set (same directory and parameters) as the audio DiT."""
  vae_config = configs.load_config(vae_section.train_config)
  with vae_config.unlocked():
    vae_config.train.num_steps = vae_section.train_steps or vae_config.train.num_steps
    vae_config.data.name = data_config.name
    vae_config.data.dir = data_dir
    if data_config.name == "shapes_audio":
      params = shapes_audio_params(data_config, vae_config.model.sample_rate)
      for key in ("sample_rate", "motion", "motion_share"):
        params.pop(key, None)
      vae_config.data.shapes_audio.update(params, bouncing_share=data_config.bouncing_share)
  done = (
      Checkpointer(vae_workdir, read_only=True).latest_step()
      if os.path.exists(os.path.join(vae_workdir, "config.json"))
      else None
  )
  if done is None or done < vae_config.train.num_steps:
    from mgjax.train import train  # the trainer imports tasks lazily

    logging.info("Stage 1: training the audio VAE in %s", vae_workdir)
    train(vae_config, vae_workdir)
    done = Checkpointer(vae_workdir, read_only=True).latest_step()
    if done is None or done < vae_config.train.num_steps:  # stopped on SIGTERM
      raise StopRequested(
          f"The audio VAE stage in {vae_workdir} stopped at step {done} of "
          f"{vae_config.train.num_steps} on request. Rerun the same "
          "command to resume."
      )
