"""The "audio" task (Movie Gen Audio through the one trainer) and `mgjax.sample --task=v2a`.

Unit tests build the task on a small config without any VAE (the loss reads only
the latent statistics); the end-to-end tests train a 2-step VAE and a few-step DiT
through `python -m mgjax.train` on a few shapes clips, then sample sound for videos.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mgjax import audio_longform, configs
from mgjax.data import audio as audio_lib
from mgjax.data import shapes_audio
from mgjax.data import video as video_lib
from mgjax.tasks import audio as audio_task
from mgjax.tasks import get_task_class
from mgjax.tasks.codecs import ChannelStats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {  # a tiny audio DiT, video encoder and data set: seconds per step on CPU
    "model.num_layers": 1,
    "model.embed_dim": 32,
    "model.mlp_dim": 64,
    "model.num_heads": 2,
    "video_encoder.features": 16,
    "video_encoder.channels": (8, 8),
    "video_encoder.num_groups": 4,
    "train.batch_size": 8,
}


def small_config(**extra):
  config = configs.load_config("experiments/audio.py:tiny")
  with config.unlocked():
    for key, value in {**SMALL, **extra}.items():
      node = config
      *path, last = key.split(".")
      for part in path:
        node = node[part]
      node[last] = value
  return config


def make_task(tmp_path, **extra):
  """The task on 2-example batches (no mesh here), with unit latent statistics."""
  config = small_config(**{"train.batch_size": 2, **extra})
  stats = ChannelStats.identity(config.model.latent_channels)  # no VAE needed
  task = get_task_class("audio")(config, str(tmp_path), stats=stats)
  params, frozen = nn.meta.unbox(task.init(jax.random.key(0)))
  return task, params, frozen


def random_batch(task, seed=0):
  spec = task.batch_specs()["clip"]
  rng = np.random.default_rng(seed)
  tokens = task.text.tokenize([f"a red circle bounces {seed}"] * spec["latent"].shape[0])
  return {
      "latent": rng.standard_normal(spec["latent"].shape).astype(np.float32),
      "frames": rng.integers(0, 256, spec["frames"].shape, dtype=np.uint8),
      **tokens,
  }


def perturbed(params, scale=0.05):
  """Params with noise on every leaf, so zero-initialised output layers say something."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(
      tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  )


# ------------------------------------------------------------------ unit tests


def test_registered_and_batch_shapes_and_initial_loss(tmp_path):
  task, params, frozen = make_task(tmp_path)
  spec = task.batch_specs()["clip"]
  assert spec["latent"].shape == (2, 50, 16) and spec["latent"].dtype == jnp.float32
  assert spec["frames"].shape == (2, 32, 32, 32, 3) and spec["frames"].dtype == jnp.uint8
  assert spec["t5_ids"].shape == (2, 96) and spec["t5_mask"].dtype == jnp.bool_
  assert set(params) == {"dit", "text", "video_encoder"} and "video_encoder" not in frozen
  batch = random_batch(task)
  loss, metrics = jax.jit(task.loss)(params, frozen, batch, jax.random.key(1), 0)
  # The output layer starts at zero, so the loss is E|x1 - x0|^2 = 1 + 1 per element.
  assert np.isfinite(float(loss)) and abs(float(loss) - 2.0) < 0.25, float(loss)
  assert 0.0 <= float(metrics["context_fraction"]) < 0.7


def test_condition_dropout_really_drops(tmp_path):
  task, params, frozen = make_task(tmp_path)
  params = perturbed(params)
  a, b = random_batch(task, 0), random_batch(task, 1)
  x = jax.random.normal(jax.random.key(2), a["latent"].shape)
  t = jnp.full((x.shape[0],), 0.5)
  no_context = jnp.zeros(x.shape[:2] + (1,))

  @jax.jit
  def v(params, frozen, x, t, context, context_mask, frames, text, keep_video, keep_text):
    conditions = {"context": context, "context_mask": context_mask, "frames": frames, **text}
    return task.velocity(params, frozen, x, t, conditions, {"video": keep_video, "text": keep_text})

  drop, keep = jnp.zeros(x.shape[0], bool), jnp.ones(x.shape[0], bool)
  text_a = {k: a[k] for k in ("t5_ids", "t5_mask")}
  text_b = {k: b[k] for k in ("t5_ids", "t5_mask")}
  # Video dropped: the frames do not matter; kept: they do.
  same = v(params, frozen, x, t, x, no_context, a["frames"], text_a, drop, keep)
  other = v(params, frozen, x, t, x, no_context, b["frames"], text_a, drop, keep)
  np.testing.assert_array_equal(same, other)
  seen = v(params, frozen, x, t, x, no_context, b["frames"], text_a, keep, keep)
  assert float(jnp.abs(seen - same).max()) > 1e-4
  # Text dropped: the tokens do not matter; kept: they do.
  same = v(params, frozen, x, t, x, no_context, a["frames"], text_a, keep, drop)
  other = v(params, frozen, x, t, x, no_context, a["frames"], text_b, keep, drop)
  np.testing.assert_allclose(same, other, atol=1e-6)
  seen = v(params, frozen, x, t, x, no_context, a["frames"], text_b, keep, keep)
  assert float(jnp.abs(seen - same).max()) > 1e-4
  # Through the loss: with video_drop_prob=1 the loss ignores the frames.
  loss = lambda task, batch: float(
      jax.jit(task.loss)(params, frozen, batch, jax.random.key(3), 0)[0]
  )
  swapped = dict(a, frames=b["frames"])
  dropping, _, _ = make_task(tmp_path, **{"flow.video_drop_prob": 1.0})
  assert loss(dropping, a) == loss(dropping, swapped)
  assert loss(task, a) != loss(task, swapped)


def test_context_mask_spans(tmp_path):
  section = small_config().context  # prob 0.5, hidden span 30%..100% of the clip
  mask = np.asarray(audio_task.span_context_mask(jax.random.key(0), 4000, 50, section))[..., 0]
  has = mask.any(axis=1)
  assert abs(has.mean() - section.prob) < 0.03
  hidden = (1 - mask[has]).sum(axis=1)
  assert hidden.min() >= 15 and hidden.max() <= 49  # some context is always given
  # The hidden frames are one contiguous span.
  edges = np.abs(np.diff(1 - mask[has], axis=1)).sum(axis=1)
  assert edges.max() <= 2


def test_loss_counts_only_generated_frames(tmp_path):
  """With every example given context, changing the target on given frames (the
  latent there) moves the context input but not which frames are scored."""
  task, params, frozen = make_task(
      tmp_path, **{"context.prob": 1.0, "context.min_fraction": 0.3, "context.max_fraction": 0.3}
  )
  batch = random_batch(task)
  rng = jax.random.key(4)
  mask = np.asarray(
      audio_task.span_context_mask(jax.random.split(rng, 4)[3], 2, 50, task.config.context)
  )  # the loss's own draw
  hidden = 1 - mask
  # Zero-init output: the loss is the mean target^2 over the hidden frames only.
  x1 = batch["latent"]
  noise_rng = jax.random.split(jax.random.split(rng, 4)[0])[0]
  x0 = np.asarray(jax.random.normal(noise_rng, x1.shape))
  target = x1 - (1 - 1e-5) * x0
  expected = float((target**2 * hidden).sum() / (hidden.sum() * x1.shape[-1]))
  loss, _ = jax.jit(task.loss)(params, frozen, batch, rng, 0)
  assert abs(float(loss) - expected) < 1e-4, (float(loss), expected)


def test_shapes_scores_and_their_chance_level():
  """The clip's own sound: every bounce heard, nothing false; a click every 60 ms:
  every bounce "heard" too, but the chance level says so and most onsets are false."""
  rate = 16_000
  spec = shapes_audio.clip_spec(shapes_audio.BOUNCING_SEED, 0, "bouncing")
  record = {
      "bounce_times": shapes_audio.bounce_times(spec, 32, 16).tolist(),
      "attributes": spec.attributes,
  }
  own = shapes_audio.render_audio(spec, 32, 16, rate)  # [S, 1]
  spray = shapes_audio.tone(spec.color, own.shape[0], rate)
  burst = shapes_audio.click(rate)
  for start in range(0, own.shape[0] - len(burst), rate * 6 // 100):
    spray[start : start + len(burst)] += burst
  good = audio_task.shapes_scores(own[None], [record], rate)
  assert good["sync_score"] == 1.0 and good["false_onset_rate"] == 0.0
  assert good["tone_accuracy"] == 1.0 and good["chance_sync_score"] < 0.2
  sprayed = audio_task.shapes_scores(spray[None, :, None], [record], rate)
  assert sprayed["sync_score"] == 1.0 and sprayed["chance_sync_score"] > 0.6
  assert sprayed["false_onset_rate"] > 0.5


# ------------------------------------------------------------- end to end


def run(args, env=None, timeout=900):
  return subprocess.run(
      [sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
  )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step audio DiT on 24 shapes clips (3 held out) (one train clip's video broken), after a
  2-step audio VAE, through the real command line."""
  workdir = str(tmp_path_factory.mktemp("audio_run"))
  config = small_config()
  params = audio_task.shapes_audio_params(config.data, 16_000)
  params["num_videos"] = 24
  manifest = shapes_audio.ensure_dataset(os.path.join(workdir, "shapes_audio"), **params)
  records = shapes_audio.read_manifest(manifest)
  broken = next(r for r in records if r["split"] == "train")
  with open(os.path.join(workdir, "shapes_audio", broken["video"]), "wb"):
    pass  # an empty .mp4: the clip must be skipped and counted
  overrides = [f"--config.{k}={str(v).replace(' ', '')}" for k, v in SMALL.items()]
  result = run(
      [
          "-m",
          "mgjax.train",
          "--config=experiments/audio.py:tiny",
          f"--workdir={workdir}",
          "--config.vae.train_steps=2",
          "--config.data.shapes.num_videos=24",
          "--config.train.num_steps=4",
          "--config.train.log_every=2",
          "--config.train.checkpoint_every=4",
          "--config.train.progress_bar=False",
          "--config.optimizer.warmup_steps=1",
          "--config.eval.num_prompts=2",
          "--config.eval.num_bouncing_clips=2",
          "--config.eval.num_steps=2",
          "--config.eval.batch_size=2",
          "--config.eval.num_to_write=1",
      ]
      + overrides
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, records, result


def test_training_runs_every_stage_and_counts_bad_clips(trained):
  workdir, records, result = trained
  assert os.path.exists(os.path.join(workdir, "audio_vae", "config.json"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines] == [2, 4]
  assert all(np.isfinite(l["loss"]) for l in train_lines)
  assert train_lines[-1]["data/skipped_clips_video_empty"] == 1.0
  eval_line = next(l for l in lines if "eval/sync_score" in l)
  assert 0.0 <= eval_line["eval/sync_score"] <= 1.0
  assert 0.0 <= eval_line["eval/tone_accuracy"] <= 1.0
  held_out = min(2, sum(r["split"] == "eval" for r in records))  # eval.num_prompts=2
  assert held_out and f"Video-to-audio at step 4 on {held_out} held-out clips" in result.stdout
  # Sync is also scored on fresh clips that all bounce (the held-out split has few bounces).
  bouncing = shapes_audio.read_manifest(
      os.path.join(workdir, "shapes_audio_bouncing", "manifest.jsonl")
  )
  assert len(bouncing) == 2 and all(r["bounce_times"] for r in bouncing)
  num_bounces = sum(len(r["bounce_times"]) for r in bouncing)
  assert eval_line["eval/bouncing_num_bounces"] == num_bounces
  assert 0.0 <= eval_line["eval/bouncing_sync_score"] <= 1.0
  assert "on 2 fresh bouncing clips: sync" in result.stdout
  wave = audio_lib.read_audio(os.path.join(workdir, "samples", "step_4", "00.mp4"))
  assert abs(wave.shape[0] / 16_000 - 2.0) < 0.04


def test_v2a_writes_wav_and_muxed_mp4_of_the_videos_duration(trained, tmp_path):
  workdir, records, _ = trained
  video = os.path.join(workdir, "shapes_audio", records[-1]["video"])
  out = str(tmp_path / "out")
  result = run(
      [
          "-m",
          "mgjax.sample",
          "--task=v2a",
          f"--workdir={workdir}",
          f"--video={video}",
          "--prompt=a red circle bounces",
          f"--out={out}",
          "--num_steps=2",
      ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  stem = os.path.splitext(os.path.basename(video))[0]
  wav = audio_lib.read_audio(os.path.join(out, stem + ".wav"))
  assert audio_lib.probe_audio(os.path.join(out, stem + ".wav")).sample_rate == 16_000
  duration = video_lib.probe(video).duration
  assert abs(wav.shape[0] / 16_000 - duration) <= 0.04  # +- one 25 Hz latent frame
  muxed = audio_lib.read_audio(os.path.join(out, stem + ".mp4"), sample_rate=16_000)
  assert abs(muxed.shape[0] / 16_000 - duration) <= 0.04
  # AAC keeps the waveform (not silence): the muxed sound matches the .wav.
  n = min(len(wav), len(muxed))
  assert np.corrcoef(wav[:n, 0], muxed[:n, 0])[0, 1] > 0.9


def test_v2a_long_video_goes_through_sample_long(trained, tmp_path, monkeypatch):
  """A video 3x the trained window: multi-diffusion over 4 windows, 6 s of sound."""
  from mgjax import sample as sample_lib
  from mgjax.tasks.outputs import SampleRequest

  workdir, records, _ = trained
  clips = [
      video_lib.read_clip(os.path.join(workdir, "shapes_audio", r["video"]), 32, fps=16)
      for r in records[1:4]
  ]
  long_video = str(tmp_path / "long.mp4")
  video_lib.write_video(long_video, np.concatenate(clips), fps=16)  # 96 frames, 6 s
  calls = []
  real = audio_task.sample_long

  def spy(strategy, velocity_fn, noise, schedule, **kwargs):
    calls.append((strategy, noise.shape, kwargs["window"], kwargs["overlap"]))
    return real(strategy, velocity_fn, noise, schedule, **kwargs)

  monkeypatch.setattr(audio_task, "sample_long", spy)
  wav_path, mp4_path = sample_lib.sample(
      workdir, SampleRequest(inputs=[long_video], num_steps=2), str(tmp_path / "o")
  )
  ((strategy, shape, window, overlap),) = calls
  assert strategy == "multidiffusion" and shape[1] == 150 and (window, overlap) == (50, 10)
  assert len(audio_longform.window_starts(shape[1], window, overlap)) == 4
  wav = audio_lib.read_audio(wav_path)
  assert abs(wav.shape[0] / 16_000 - 6.0) <= 0.04
  assert abs(audio_lib.read_audio(mp4_path, sample_rate=16_000).shape[0] / 16_000 - 6.0) <= 0.04


@pytest.mark.parametrize("kind", ["missing", "empty", "undecodable"])
def test_v2a_bad_video_is_a_clear_error(tmp_path, kind):
  """The video is read before any weights: a run's config.json is enough here."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(small_config().to_json())
  video = str(tmp_path / f"{kind}.mp4")
  if kind == "empty":
    open(video, "wb").close()
  elif kind == "undecodable":
    with open(video, "w") as f:
      f.write("not a video\n" * 100)
  result = run(
      [
          "-m",
          "mgjax.sample",
          "--task=v2a",
          f"--workdir={workdir}",
          f"--video={video}",
          f"--out={tmp_path / 'o'}",
      ],
      timeout=120,
  )
  assert result.returncode == 2
  assert video in result.stderr and f"({kind})" in result.stderr
  assert "--video" in result.stderr and "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "o")
