"""Audio VAE (DAC-style, Movie Gen Audio's latent space) configs.

    python -m mgjax.train --config=experiments/audio_vae.py:tiny --workdir=/tmp/avae
    python benchmarks/audio_vae_quality.py --workdir=/tmp/avae
    python -m mgjax.train --config=experiments/audio_vae.py:paper --workdir=gs://.../avae \
        --config.data.name=manifest --config.data.dir=/data/audio

`paper`: 48 kHz mono -> 25 latent frames per second x 128 channels (hop 1920 =
2 x 4 x 5 x 6 x 8), DAC widths (encoder 64 -> 1024 channels, decoder 1536 -> 48).

`tiny`: 16 kHz, hop 640 (4 x 4 x 5 x 8), so a latent frame is 40 ms like the paper's,
16 latent channels, ~0.65M parameters; trains on the synthetic shapes sound (made in
<workdir>/shapes_audio if absent) on 2 CPU cores in 1,500 steps. Half its crops are
placed over a bounce and an onset term (the click detector's spectral flux, made
differentiable: mgjax/models/audio_vae_losses.py) asks for each click's rise where
the input has it: without them the model learns the tones and drops the 25 ms clicks.
Bar for the tiny run on the held-out clips and 24 fresh bouncing clips
(benchmarks/audio_vae_quality.py, docs/benchmarks.md "Audio VAE"): SNR >= 20 dB
(measured 24.6 held-out), spectral distance <= 4 dB (3.0), every tone's pitch names
its colour (100%), >= 90% of the clicks detected within 40 ms with no more than 0.1
false onsets per clip (100% of 39, 0.00).
"""

import ml_collections

from mgjax import configs

SIZES = ("tiny", "paper")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in SIZES:
    raise ValueError(
        f"Unknown audio VAE size {arg!r}; use experiments/audio_vae.py:tiny or " ":paper."
    )
  config = configs.base_config()
  config.task = "audio_vae"

  config.model = ml_collections.ConfigDict(
      dict(
          sample_rate=48_000,
          audio_channels=1,
          strides=(2, 4, 5, 6, 8),  # hop 1920: 25 Hz at 48 kHz
          encoder_channels=(64, 128, 256, 512, 1024, 1024),  # per rate, full rate first
          decoder_channels=(1536, 768, 384, 192, 96, 48),  # per rate, latent rate first
          latent_channels=128,
          dilations=(1, 3, 9),
          kernel_size=7,
          weight_norm=True,
          linear_bypass=False,  # True: a linear hop-stride path around each deep stack
          dtype="float32",
      )
  )

  config.loss = ml_collections.ConfigDict(
      dict(
          stft_windows_s=(0.008, 0.016, 0.032, 0.064),  # 128..1024 samples at 16 kHz
          log_magnitude_weight=1.0,
          magnitude_weight=1.0,
          waveform_weight=1.0,
          kl_weight=1e-4,
          onset_windows_s=(0.02,),  # shapes_audio's click detector: 20 ms, hop 5 ms
          onset_weight=0.0,  # x RMS (dB) of spectral-flux onset envelope differences
      )
  )

  # Sources and pipeline knobs: mgjax/configs.py `data_config` and mgjax/tasks/audio_vae.py.
  config.data = configs.data_config(
      name="shapes_audio",  # | "manifest": data.dir/manifest.jsonl of audio/video paths
      dir="",  # default: <workdir>/shapes_audio
      shapes_audio=ml_collections.ConfigDict(
          dict(
              num_videos=256,
              seed=0,
              fps=16,
              num_frames=32,
              height=64,
              width=64,
              eval_fraction=0.15,
              bouncing_share=0.0,
          )
      ),  # > 0: this share of the clips bounce (more clicks)
      crop_seconds=1.0,  # a whole number of latent frames
      skip_silent=True,  # silent files are skipped and counted
      decoded_cache_mb=512,  # decoded waveforms kept in memory (per host), LRU
      bounce_crop_fraction=0.0,  # share of crops placed over a manifest "bounce_times"
      end_crop_fraction=0.0,  # share of crops ending at the file's end
  )

  config.eval = ml_collections.ConfigDict(
      dict(num_clips=16, seconds=2.0, batch_size=4, num_wavs_to_write=4, num_bouncing_clips=8)
  )  # shapes_audio: clicks scored on fresh bouncing clips too

  config.optimizer.update(learning_rate=1e-4, warmup_steps=1000, b1=0.8, b2=0.99)
  config.train.update(num_steps=400_000, batch_size=32, eval_every=10_000, checkpoint_every=10_000)

  if arg == "tiny":
    config.model.update(
        sample_rate=16_000,
        strides=(4, 4, 5, 8),
        encoder_channels=(8, 16, 32, 64, 128),
        decoder_channels=(128, 64, 32, 16, 8),
        latent_channels=16,
        linear_bypass=True,
    )
    # SNR is the tiny model's bar: a heavier waveform term makes it learn the phase
    # within its few hundred steps (1.0: the tone's pitch but SNR ~0 dB at 200 steps).
    config.loss.update(waveform_weight=10.0, onset_weight=0.5)
    # The audio DiT's data set (experiments/audio.py:tiny), whose stage 1 this is.
    config.data.shapes_audio.update(num_videos=256, bouncing_share=0.5)
    config.data.update(crop_seconds=0.48, bounce_crop_fraction=0.5, end_crop_fraction=0.05)
    config.optimizer.update(learning_rate=3e-3, warmup_steps=50)
    config.train.update(
        num_steps=1500, batch_size=8, log_every=50, eval_every=500, checkpoint_every=300
    )
  return config
