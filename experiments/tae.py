"""Temporal autoencoder (TAE) configs.

    python -m mgjax.train --config=experiments/tae.py:tiny --workdir=/tmp/tae_tiny
    python -m mgjax.train --config=experiments/tae.py:paper --workdir=gs://.../tae \
        --config.data.name=manifest --config.data.dir=/data/videos

`tiny` trains on the synthetic shapes videos (made in <workdir>/shapes if absent) on
CPU in minutes; `tiny4x` is the same at 4x in height and width, for frame-wise
encoding of small frames (the upsampler demo, experiments/upsampler_shapes.py). `paper` is the paper-size TAE: 8x compression in T, H and W to 16
latent channels, OPL (r=3, weight 1e5) switched on late in training.
"""

import ml_collections

from mgjax import configs


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in ("tiny", "tiny4x", "paper"):
    raise ValueError(f"Unknown TAE size {arg!r}; use experiments/tae.py:tiny, :tiny4x or :paper.")
  config = configs.base_config()
  config.task = "tae"

  config.model = ml_collections.ConfigDict(
      dict(
          base_channels=128,
          channel_multipliers=(1, 2, 4, 4),
          num_res_blocks=2,
          latent_channels=16,
          temporal_downsample=(True, True, True),
          mid_attention=True,
          attention_heads=1,
          num_groups=32,
          residual_shortcuts=False,  # True: space-to-depth paths around resolution changes
          remat=False,
          dtype="float32",
      )
  )

  config.loss = ml_collections.ConfigDict(
      dict(
          reconstruction="l1",
          kl_weight=1e-6,
          opl_weight=1e5,
          opl_r=3.0,
          opl_start_step=0,
          perceptual_weight=0.0,  # needs pretrained features; none ship with mgjax
          perceptual_params="",  # .npz of PerceptualNetwork weights (tasks/perceptual_weights.py)
          adversarial_weight=0.0,
          adversarial_start_step=0,
          discriminator=ml_collections.ConfigDict(
              dict(channels=(64, 128, 256), temporal_strides=(1, 2, 2), norm_groups=32)
          ),
      )
  )

  # Sources and pipeline knobs: mgjax/configs.py `data_config`.
  config.data = configs.data_config(
      shapes=ml_collections.ConfigDict(
          dict(num_videos=256, seed=0, fps=16, num_frames=32, height=64, width=64, num_images=8)
      ),
      num_frames=8,  # frames per training clip
      image_fraction=0.0,  # share of steps that train on single frames (images)
      image_batch_size=64,
      fps=0.0,  # the file's own frame rate (at least min_fps)
      min_fps=0.0,
      scale_to=(),  # (h, w) to scale-to-cover frames to before cropping; (): none
      height=64,  # training crop
      width=64,
      # A data set with no "eval" split videos: evaluate on this share of the training
      # videos, held out from training (chosen by file name). 0: skip evaluation.
      eval_holdout_fraction=0.0,
  )

  config.eval = ml_collections.ConfigDict(
      dict(num_clips=16, num_frames=32, height=0, width=0, batch_size=4, num_videos_to_write=4)
  )

  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 500
  config.train.num_steps = 300_000
  config.train.batch_size = 64
  config.train.eval_every = 5000
  config.train.checkpoint_every = 5000

  if arg in ("tiny", "tiny4x"):
    config.model.update(
        base_channels=16,
        channel_multipliers=(1, 2, 4, 8),
        num_res_blocks=1,
        num_groups=8,
        residual_shortcuts=True,
    )
    config.loss.update(opl_weight=1.0, opl_start_step=0)
    config.loss.discriminator.update(channels=(16, 32), temporal_strides=(1, 2), norm_groups=8)
    # Most steps are cheap single frames (the spatial AE); clip steps learn time.
    config.data.update(num_frames=8, height=32, width=32, image_fraction=0.75, image_batch_size=16)
    config.optimizer.update(learning_rate=2e-3, warmup_steps=50)
    config.train.update(
        num_steps=1800, batch_size=8, log_every=100, eval_every=600, checkpoint_every=600
    )
  if arg == "tiny4x":
    # 4x in height and width (3 levels), for frame-wise use on small frames (the
    # upsampler's demo): after 600 steps the 8x TAE's 32 px frames decode at ~27 dB,
    # below bicubic upsampling of degraded 16 px frames (28.9 dB); this one at 33.9.
    # Mostly single frames, which is how the upsampler encodes.
    config.model.update(channel_multipliers=(1, 2, 4), temporal_downsample=(True, True))
    config.data.image_fraction = 0.9
  return config
