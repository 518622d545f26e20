"""Audio VAE: latent rate and shapes of both configs, length arithmetic, the strided
conv identity, losses and metrics, bad and resampled input, and a short training run
through the trainer that must raise the held-out SNR well above the untrained model's."""

import collections
import json
import math
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import audio_vae as audio_vae_config
from mgjax import train as train_lib
from mgjax.data import audio as audio_lib
from mgjax.data import shapes_audio
from mgjax.data.pipeline import all_rows
from mgjax.data.video import MediaDecodeError
from mgjax.models import audio_vae_losses as losses
from mgjax.models.audio_vae import AudioVAE, Downsample, Upsample
from mgjax.models.tae_losses import kl_divergence
from mgjax.tasks.audio_vae import (
    AudioVAETask,
    LoadAudioCrop,
    WaveformCache,
    bouncing_clips,
    make_audio_vae,
    reconstruction_scores,
)
from mgjax.tasks.codecs import AudioVAECodec
from tests.devices import on_one_device

RATE = 16_000


@pytest.fixture(scope="module")
def tiny():
  """The tiny config's hop (640 at 16 kHz) with one residual unit per level and
  narrow stacks: the same code paths, a fraction of the compile time."""
  model = AudioVAE(
      sample_rate=RATE,
      strides=(4, 4, 5, 8),
      encoder_channels=(4, 8, 8, 8, 16),
      decoder_channels=(16, 8, 8, 8, 4),
      latent_channels=16,
      dilations=(1,),
      linear_bypass=True,
  )
  boxed = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1280, 1)))
  return model, boxed


def encode(model, variables, x):
  """Jitted (one compile instead of one per op) AudioVAE.encode."""
  return jax.jit(lambda v, x: model.apply(v, x, method=AudioVAE.encode))(variables, x)


def decode(model, variables, z, num_samples=None):
  return jax.jit(lambda v, z: model.apply(v, z, num_samples, method=AudioVAE.decode))(variables, z)


def test_tiny_config_is_25_hz_by_16_channels():
  model = make_audio_vae(audio_vae_config.get_config("tiny").model)
  assert (model.sample_rate, model.hop, model.latent_rate) == (16_000, 640, 25.0)
  waveform = jax.ShapeDtypeStruct((2, RATE, 1), jnp.float32)  # 1 s
  variables = jax.eval_shape(model.init, jax.random.key(0), waveform)
  mean, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=AudioVAE.encode), variables, waveform
  )
  assert mean.shape == (2, 25, 16)
  num_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables)))
  # The architecture's exact count: a change to it must change this figure knowingly.
  assert num_params == 650_642, num_params


def test_fresh_model_round_trips_quietly_with_a_narrow_posterior(tiny):
  model, boxed = tiny
  variables = nn.meta.unbox(boxed)
  waveform = 0.3 * jax.random.normal(jax.random.key(1), (2, RATE, 1))  # 1 s
  mean, logvar = encode(model, variables, waveform)
  assert mean.shape == logvar.shape == (2, 25, 16)
  # The posterior starts narrow: std e^-5, far below the means.
  assert float(jnp.exp(0.5 * logvar).max()) < 0.02 < float(mean.std())
  recon = decode(model, variables, mean, RATE)
  assert recon.shape == (2, RATE, 1) and float(jnp.abs(recon).max()) < 1.0
  # Untrained, the output is noise at about the input's level, not a saturated tanh.
  assert float(jnp.sqrt(jnp.mean(recon**2))) < 0.6
  assert float(jnp.mean(jnp.abs(recon) > 0.99)) < 0.01
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(
      isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim for x in leaves
  )


def test_paper_config_is_48k_to_25_hz_by_128_channels():
  model = make_audio_vae(audio_vae_config.get_config("paper").model)
  assert model.sample_rate == 48_000 and model.hop == 1920
  assert model.latent_rate == 25.0
  waveform = jax.ShapeDtypeStruct((1, 48_000, 1), jnp.float32)  # 1 s
  variables = jax.eval_shape(model.init, jax.random.key(0), waveform)
  mean, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, method=AudioVAE.encode), variables, waveform
  )
  assert mean.shape == (1, 25, 128)
  num_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables)))
  print(f"paper audio VAE: {num_params / 1e6:.1f}M parameters")
  # DAC's 44 kHz codec is ~76M; one more stride level and a wider top: ~100M.
  assert num_params == 102_629_762, num_params  # exact: see the tiny config's test


@pytest.mark.parametrize("num_samples", [1, 641, 2000])
def test_any_length_pads_to_whole_frames_and_crops_back(tiny, num_samples):
  model, boxed = tiny
  variables = nn.meta.unbox(boxed)
  x = 0.2 * jax.random.normal(jax.random.key(num_samples), (1, num_samples, 1))
  mean, _ = encode(model, variables, x)
  frames = math.ceil(num_samples / 640)
  assert mean.shape == (1, frames, 16) and model.latent_frames(num_samples) == frames
  # Encoding pads the end with zeros: the same as encoding the zero-padded clip.
  padded = jnp.pad(x, ((0, 0), (0, frames * 640 - num_samples), (0, 0)))
  np.testing.assert_allclose(encode(model, variables, padded)[0], mean, atol=1e-6)
  assert decode(model, variables, mean).shape == (1, frames * 640, 1)
  recon = decode(model, variables, mean, num_samples)
  assert recon.shape == (1, num_samples, 1)


def test_decode_refuses_a_length_its_frames_do_not_hold(tiny):
  model, boxed = tiny
  variables = nn.meta.unbox(boxed)
  with pytest.raises(ValueError, match="3 latent frames cannot decode to 1921 samples"):
    decode(model, variables, jnp.zeros((1, 3, 16)), 1921)
  with pytest.raises(ValueError, match=r"\[B, T, C=1\]"):
    encode(model, variables, jnp.zeros((1, 640)))


def test_downsample_is_a_centred_strided_conv_with_kernel_2s():
  s, c, f = 5, 3, 4
  x = jax.random.normal(jax.random.key(0), (2, 40, c))
  module = Downsample(f, s, weight_norm=False)
  variables = module.init(jax.random.key(1), x)
  params = nn.meta.unbox(variables)["params"]["conv"]
  kernel = params["kernel"].reshape(2 * s, c, f)  # [2 taps x s samples] -> [2s]
  expected = (
      jax.lax.conv_general_dilated(
          x, kernel, (s,), [(s // 2, s - s // 2)], dimension_numbers=("NWC", "WIO", "NWC")
      )
      + params["bias"]
  )
  np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_upsample_is_the_transposed_strided_conv():
  """Up(., W) is the adjoint of Down(., W) with the same sample-domain kernel."""
  s, c, f, frames = 4, 3, 2, 6
  down = Downsample(f, s, weight_norm=False)
  up = Upsample(c, s, weight_norm=False)
  x = jax.random.normal(jax.random.key(0), (1, frames * s, c))
  z = jax.random.normal(jax.random.key(1), (1, frames, f))
  down_vars = nn.meta.unbox(down.init(jax.random.key(2), x))
  w = down_vars["params"]["conv"]["kernel"].reshape(2, s, c, f)  # [tap, phase, C, F]
  down_vars["params"]["conv"]["bias"] = jnp.zeros((f,))
  # The same linear map, transposed: Upsample's kernel [tap, F, phase x C].
  up_kernel = jnp.flip(w, axis=0).transpose(0, 3, 1, 2).reshape(2, f, s * c)
  up_vars = {"params": {"conv": {"kernel": up_kernel, "bias": jnp.zeros((s * c,))}}}
  lhs = jnp.vdot(down.apply(down_vars, x), z)  # <Down x, z>
  rhs = jnp.vdot(x, up.apply(up_vars, z))  # <x, Up z>
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


# ------------------------------------------------------------------ losses, metrics


def tone(freq=440.0, seconds=0.5, amplitude=0.5):
  t = np.arange(int(seconds * RATE)) / RATE
  return (amplitude * np.sin(2 * np.pi * freq * t))[None, :, None].astype(np.float32)


def test_stft_windows_scale_with_the_sample_rate_and_read_a_sine_at_its_level():
  assert losses.window_samples(losses.DEFAULT_WINDOWS_S, 16_000) == (256, 512, 1024)
  assert losses.window_samples(losses.DEFAULT_WINDOWS_S, 48_000) == (768, 1536, 3072)
  magnitude = losses.stft_magnitude(jnp.asarray(tone(1000.0, amplitude=1.0)), 512)
  assert magnitude.shape == (1, 1, 1 + 8000 // 128, 257)
  np.testing.assert_allclose(float(magnitude[0, 0, 10:-10].max()), 1.0, atol=0.02)


def test_losses_are_zero_for_identical_inputs_and_positive_otherwise():
  x = jnp.asarray(tone())
  y = jnp.asarray(tone(460.0))
  windows = (256, 512, 1024)
  log_l1, mag_l1 = losses.multiscale_stft_loss(x, x, windows)
  assert float(log_l1[0]) == 0.0 and float(mag_l1[0]) == 0.0
  assert float(losses.waveform_l1(x, x)[0]) == 0.0
  log_l1, mag_l1 = losses.multiscale_stft_loss(y, x, windows)
  assert float(log_l1[0]) > 0.01 and float(mag_l1[0]) > 1e-3
  assert float(losses.waveform_l1(y, x)[0]) > 0.1
  zeros = jnp.zeros((1, 4, 8))
  assert float(kl_divergence(zeros, zeros)[0]) == 0.0
  assert float(kl_divergence(zeros + 0.5, zeros - 1.0)[0]) > 0.1


def test_snr_and_spectral_distance():
  x = tone()
  assert losses.snr_db(x, x)[0] == np.inf
  np.testing.assert_allclose(losses.snr_db(np.zeros_like(x), x), [0.0], atol=1e-9)
  noise = np.random.default_rng(0).standard_normal(x.shape)
  noise *= np.sqrt(np.sum(x**2) / np.sum(noise**2)) / 10  # 10x lower amplitude
  np.testing.assert_allclose(losses.snr_db(x + noise, x), [20.0], atol=1e-6)
  windows = (256, 512, 1024)
  assert losses.spectral_distance_db(x, x, windows)[0] == 0.0
  # Half the amplitude is -6.02 dB in every bin above the floor (less near it).
  half = losses.spectral_distance_db(x / 2, x, windows)[0]
  assert 5.0 < half < 6.1, half
  # Silence against a tone: the tone's bins sit far above the -60 dB floor.
  assert losses.spectral_distance_db(np.zeros_like(x), x, windows)[0] > 15


def clicks(seconds, times):
  """The shapes click at each time (s), nothing else: float32 [S]."""
  x = np.zeros(int(round(seconds * RATE)), np.float32)
  burst = shapes_audio.click(RATE)
  for t in times:
    start = int(round(t * RATE))
    x[start : start + len(burst)] += burst[: len(x) - start]
  return x


def clicked(seconds=0.5, times=(0.25,)):
  """A shapes-like sound: a 440 Hz tone at 0.25 plus the clicks: [1, S, 1]."""
  return tone(440.0, seconds, amplitude=0.25) + clicks(seconds, times)[None, :, None]


def test_onset_loss_wants_the_click_in_its_frame():
  """The onset envelope reads what the click detector reads (a > 15 dB rise at a click,
  ~0 on a steady tone); the loss is ~0 for the input itself and large for a missing
  click, one 60 ms early (the pre-echo of the first tiny VAE) or one whose energy rises
  over 30 ms instead of at once."""
  x = clicked()
  window = losses.window_samples((shapes_audio.ONSET_WINDOW_S,), RATE)[0]
  envelope = np.asarray(losses.onset_envelope(jnp.asarray(x), window))[0, 0]
  detector = shapes_audio.onset_strength(x[0], RATE)[0]
  assert envelope.max() > 15 and abs(envelope.max() - detector.max()) < 4, (
      envelope.max(),
      detector.max(),
  )
  steady = tone(amplitude=0.25)
  # Away from the ends: the STFT's zero padding makes the clip's first frames rise.
  assert np.asarray(losses.onset_envelope(jnp.asarray(steady), window))[0, 0, 4:-4].max() < 1
  t = np.arange(x.shape[1]) / RATE - 0.22  # a 30 ms attack, then the decay
  shape = np.where(t < 0, 0.0, np.where(t < 0.03, t / 0.03, np.exp(-(t - 0.03) / 0.004)))
  noise = np.random.default_rng(0).uniform(-1, 1, x.shape[1]) * shape
  burst = clicks(0.5, (0.25,))
  noise *= np.sqrt(np.sum(burst**2) / np.sum(noise**2))  # the click's energy
  candidates = {
      "none": steady,
      "early": clicked(times=(0.19,)),
      "slow attack": steady + noise[None, :, None].astype(np.float32),
  }
  windows = (window,)
  assert float(losses.onset_loss(jnp.asarray(x), jnp.asarray(x), windows)[0]) < 0.01
  for name, y in candidates.items():
    value = float(losses.onset_loss(jnp.asarray(y), jnp.asarray(x), windows)[0])
    assert value > 1.0, (name, value)


def test_click_scores_count_only_clicks_at_the_bounces():
  """The click figures the bar is measured with: perfect on the inputs, 0% for the
  tone alone and for clicks 60 ms early (then counted as false onsets)."""
  config = audio_vae_config.get_config("tiny")
  clips, records = bouncing_clips(config.data.shapes_audio, RATE, 3, 640)
  assert clips.shape == (3, 2 * RATE, 1) and all(r["bounce_times"] for r in records)
  tones = np.stack(
      [shapes_audio.tone(r["attributes"]["color"], clips.shape[1], RATE)[:, None] for r in records]
  )
  early = np.stack(
      [
          t + clicks(2.0, [max(0.0, b - 0.06) for b in r["bounce_times"]])[:, None]
          for t, r in zip(tones, records)
      ]
  )
  n = np.full(3, clips.shape[1])
  windows = (256,)
  perfect = reconstruction_scores(clips, clips, n, records, RATE, windows)
  assert perfect["onset_hit_rate"] == 1.0 and perfect["false_onsets_per_clip"] == 0.0
  assert perfect["tone_accuracy"] == 1.0
  no_clicks = reconstruction_scores(clips, tones, n, records, RATE, windows)
  assert no_clicks["onset_hit_rate"] == 0.0 and no_clicks["tone_accuracy"] == 1.0
  shifted = reconstruction_scores(clips, early, n, records, RATE, windows)
  assert shifted["onset_hit_rate"] == 0.0 and shifted["false_onsets_per_clip"] >= 1.0


def test_bounce_and_end_crops(tmp_path):
  """bounce_fraction=1: every crop, even of a record drawn without bounces, holds a
  click of a record with "bounce_times"; end_fraction=1: crops end at the file end."""
  audio_lib.write_wav(str(tmp_path / "bounce.wav"), clicked(2.0, (0.5, 1.5))[0], RATE)
  audio_lib.write_wav(str(tmp_path / "tone.wav"), tone(seconds=2.0, amplitude=0.25)[0], RATE)
  records = [
      {"path": str(tmp_path / "tone.wav")},
      {"path": str(tmp_path / "bounce.wav"), "bounce_times": [0.5, 1.5]},
  ]
  crop = 7680
  load = LoadAudioCrop(records, crop, RATE, 1, False, bounce_fraction=1.0)
  for seed in range(12):
    audio = load(0, np.random.default_rng(seed))["audio"][:, 0]
    assert audio.shape == (crop,)
    loudest = int(np.argmax(np.abs(audio)))
    assert np.abs(audio).max() > 0.4, seed  # the click (tone alone: 0.25)
    assert loudest < 0.75 * crop + 0.025 * RATE, seed  # with room after it
  uniform = LoadAudioCrop(records, crop, RATE, 1, False)
  assert (
      max(np.abs(uniform(0, np.random.default_rng(s))["audio"]).max() for s in range(5)) < 0.3
  )  # the tone record stays itself
  at_end = LoadAudioCrop(records, crop, RATE, 1, False, end_fraction=1.0)
  np.testing.assert_allclose(
      at_end(1, np.random.default_rng(0))["audio"],
      audio_lib.read_audio(str(tmp_path / "bounce.wav"))[-crop:],
  )


# ----------------------------------------------------------------------- config, data


def test_bad_config_args_are_refused():
  with pytest.raises(ValueError, match="Unknown audio VAE size 'huge'.*:tiny or :paper"):
    audio_vae_config.get_config("huge")
  config = audio_vae_config.get_config("tiny")
  config.data.crop_seconds = 0.5
  with pytest.raises(ValueError, match=r"data.crop_seconds=0.5 s is 8000 samples.*0.04 s"):
    AudioVAETask(config, "/tmp/unused")


def test_bad_and_silent_files_are_counted_and_skipped_others_converted(tmp_path):
  """A 22.05 kHz stereo .wav is read at 16 kHz mono; a corrupt, a silent and an empty
  file, a bad JSON line and a line without a path are skipped and counted."""
  d = tmp_path / "data"
  d.mkdir()
  t = np.arange(22_050) / 22_050
  stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1)  # 1 s at 22.05 kHz
  audio_lib.write_wav(str(d / "tone.wav"), stereo, 22_050)
  audio_lib.write_wav(str(d / "quiet.wav"), np.zeros((16_000, 1)), 16_000)
  (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
  (d / "empty.wav").write_bytes(b"")
  lines = [
      json.dumps({"audio": name}) for name in ("tone.wav", "quiet.wav", "corrupt.wav", "empty.wav")
  ]
  lines += [
      "{not json",
      json.dumps({"caption": "no path"}),
      json.dumps({"audio": "tone.wav", "split": "eval"}),
  ]
  (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
  config = audio_vae_config.get_config("tiny")
  config.data.update(name="manifest", dir=str(d), max_skip_fraction=0.9, num_threads=1)
  config.train.batch_size = 4
  task = AudioVAETask(config, str(tmp_path / "work"))
  batches = task.train_batches(0, all_rows)
  for _ in range(3):
    batch = next(batches)
    assert batch["audio"].shape == (4, 7680, 1)
    # Every example is the 300 Hz tone (nothing else is usable), resampled to 16 kHz.
    peak = np.argmax(np.abs(np.fft.rfft(batch["audio"][0, :, 0])))
    assert abs(peak * RATE / 7680 - 300) < 3
  metrics = batches.metrics()
  batches.close()
  assert metrics["data/skipped_bad_json"] == 1 and metrics["data/skipped_no_media"] == 1
  assert metrics["data/skipped_silent"] == 1
  assert metrics["data/skipped_undecodable"] == 1 and metrics["data/skipped_empty"] == 1
  assert 0 < metrics["data/skipped_fraction"] < 0.9


def test_waveform_cache_decodes_each_file_once_remembers_errors_and_evicts():
  reads = collections.Counter()

  def read(path):
    reads[path] += 1
    if path == "bad":
      raise MediaDecodeError(path, "empty", "no samples")
    return np.zeros((1000, 1), np.float32)  # 4,000 bytes

  cache = WaveformCache(max_bytes=10_000)
  assert cache.get("a", read) is cache.get("a", read)
  for _ in range(2):
    with pytest.raises(MediaDecodeError, match="no samples"):
      cache.get("bad", read)
  assert reads == {"a": 1, "bad": 1}
  cache.get("b", read)
  cache.get("c", read)  # 12,000 bytes: "a", the least recently used, goes
  cache.get("a", read)
  assert reads["a"] == 2 and cache.bytes <= 10_000
  assert pickle.loads(pickle.dumps(cache)).entries == {}  # a loader process starts empty


# -------------------------------------------------------------------------- training


@on_one_device()  # what it computes; tests/test_audio_task.py shards it over 8
def test_training_through_the_trainer_raises_snr(tmp_path):
  """A short run of the tiny config (fewer clips and steps, shorter crops) on the
  shapes sound made in the workdir; eval SNR must beat the untrained model's by 10 dB."""
  config = audio_vae_config.get_config("tiny")
  # Without the click-focused parts (extra bouncing clips, bounce crops, onset term):
  # they slow the tone's first few hundred steps and pay off by ~1,000
  # (benchmarks/audio_vae_quality.py); tests/test_audio_task.py's fixture runs them
  # through the trainer, test_onset_loss_* and test_bounce_and_end_crops test them.
  config.data.shapes_audio.update(num_videos=32, bouncing_share=0.0)
  config.data.update(
      crop_seconds=0.16, num_threads=2, bounce_crop_fraction=0.0, end_crop_fraction=0.0
  )
  config.loss.onset_weight = 0.0
  # 3 fresh bouncing clips too (the held-out ones hold no bounce), the eval clips' shape:
  # one compiled reconstruction for both.
  config.eval.update(
      num_clips=3, seconds=2.0, batch_size=3, num_wavs_to_write=1, num_bouncing_clips=3
  )
  config.train.update(
      num_steps=100,
      batch_size=8,
      log_every=50,
      eval_every=0,
      checkpoint_every=100,
      progress_bar=False,
  )
  # 5e-3 instead of the tiny config's 3e-3: +14 dB in 100 steps (150 at 3e-3: +12 dB).
  config.optimizer.update(learning_rate=5e-3, warmup_steps=20)
  workdir = str(tmp_path / "avae")
  untrained_task = AudioVAETask(config, workdir)
  params, _ = untrained_task.init(jax.random.key(config.seed))
  untrained_task.manifest()  # makes the data set
  untrained = untrained_task.evaluate(nn.meta.unbox(params), {}, 0)
  trained = train_lib.train(config, workdir)
  print("untrained", untrained, "trained", trained)
  assert untrained["snr_db"] < 0
  assert trained["snr_db"] > untrained["snr_db"] + 10
  assert trained["spectral_distance_db"] < untrained["spectral_distance_db"] - 5
  assert trained["tone_accuracy"] == 1.0
  # Clicks take ~1,000 steps (benchmarks/audio_vae_quality.py measures them); here the
  # fresh bouncing clips are reconstructed as well as the held-out ones.
  assert trained["bouncing_snr_db"] > untrained["bouncing_snr_db"] + 10
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [r["step"] for r in logged if "loss" in r] == [50, 100]
  out = os.path.join(workdir, "eval", "step_100")
  recon = audio_lib.read_audio(os.path.join(out, "reconstruction_00.wav"))
  assert recon.shape == (2 * RATE, 1)
  # The codec the audio DiT loads reproduces the evaluation's reconstruction.
  codec = AudioVAECodec.from_workdir(workdir)
  assert (codec.sample_rate, codec.hop, codec.latent_rate, codec.latent_channels) == (
      RATE,
      640,
      25.0,
      16,
  )
  clip = audio_lib.read_audio(os.path.join(out, "input_00.wav"))[None]  # [1, T, 1]
  latent = codec.encode(clip)
  assert latent.shape == (1, 50, 16)
  decoded = np.asarray(codec.decode(latent, clip.shape[1]))
  np.testing.assert_allclose(decoded[0], recon, atol=2 / 32768)  # 16-bit rounding
