"""Video/text-to-audio flow-matching transformer configs (Movie Gen Audio): tiny | 13b.

    python -m mgjax.train --config=experiments/audio.py:tiny --workdir=W
    python -m mgjax.train --config=experiments/audio.py:13b --workdir=gs://.../audio_13b \
        --config.vae.workdir=gs://.../audio_vae --config.text.encoders.t5.path=/ckpt/t5 \
        --config.mesh.fsdp=-1 --config.mesh.tensor=8

`tiny` runs on CPU: 4 layers, width 128, on 2,048 synthetic shapes clips with sound
(mgjax/data/shapes_audio.py; 2 s clips, frames at 32 px, half the clips made to
bounce), with the tiny audio VAE trained first on them in <workdir>/audio_vae (1,500
steps; it keeps the clicks: 99.5% of 203 held-out bounces); 5,000 DiT steps of 16
clips. The video encoder keeps where the shape is (its last 4 x 4 grid flattened)
and lets each frame's feature see its neighbours (temporal_kernel 3). The bounce
frame is a sub-pixel cue (~0.75 px of motion per frame): with 256 clips the encoder
learnt its training clips by heart and found a third of fresh bounces
(benchmarks/audio_bounce_probe.py), hence 2,048. Measured (benchmarks/audio_v2a.py,
docs/benchmarks.md "Movie Gen Audio"): sync 88.2% of the 68 bounces of the 40 fresh
bouncing clips the trainer scores (the same onsets at random times: 7.6%; the VAE's
reconstructions: 100%), 16% of the onsets near no bounce; 69.5% of the 203 bounces
of the held-out clips (colour/shape/motion combinations never trained on; chance
6.6%); tone colour 100%. 3,000 steps gave 77.9% and 62.1%.
Sound for a video: `python -m mgjax.sample --task=v2a --workdir=W --video=IN.mp4
--out=OUT`. `13b` is the paper's transformer: 36 DiT layers, width 4608,
FFN 18432, 36 heads of 128, one shared modulation MLP (9 vectors per block: self-
attention, cross-attention and MLP each get shift, scale and gate) plus a learned
[9, 4608] table per block; midpoint solver, 64 steps, CFG 3.

Size (from `jax.eval_shape` of the model, the text projection of a 4096-wide T5
encoder and a 1024-wide video feature projection included; tests/test_audio_dit.py
checks it): 13b 12,515,521,664 parameters (12.52B). The per-frame video encoder
(mgjax/models/video_features.py) comes on top: tiny 89,536 (its 4 x 4 grid flattened),
13b 2,080,256.

Model inputs (mgjax/models/audio_dit.py): noisy latent [B, T, 128] at 25 Hz, masked
audio context + its mask channel-concatenated, per-frame video features resampled
from the video's 16 fps to 25 Hz and added, T5 tokens through cross-attention.
Positions are a learned table of `max_frames` rows: 13b trains on windows of
`longform.window_frames` = 250 frames (10 s); longer audio is made by
`mgjax.audio_longform` over such windows (`longform` section).

Choices not fixed by the paper text we follow: the window and overlap lengths, the
drop probabilities, the context-masking mix, the T5 size (XXL's encoder, 4096
wide, as for UL2 in experiments/t2v.py), and the video encoder (a small conv net
trained jointly: the paper's pretrained image features cannot be loaded here).
"""

import importlib.util
import os

import ml_collections

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_t2v():
  """experiments/t2v.py by path (its text-encoder helpers), wherever we run from."""
  spec = importlib.util.spec_from_file_location(
      "mgjax_experiments_t2v", os.path.join(HERE, "t2v.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


t2v = _load_t2v()

SIZES = ("tiny", "13b")

# name: (num_layers, embed_dim, mlp_dim, num_heads)
TRANSFORMER_SHAPES = {
    "tiny": (4, 128, 512, 4),
    "13b": (36, 4608, 18432, 36),
}

# T5 v1.1 XXL's encoder as Hugging Face config keys (what text.encoders.t5.path should
# hold): the shape weight-free tools compile when no path is given.
T5_XXL_ARCHITECTURE = dict(
    model_type="t5",
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in SIZES:
    raise ValueError(
        f"Unknown audio size {arg!r}; use experiments/audio.py:<size> with "
        f"size one of {', '.join(SIZES)}."
    )
  config = configs.base_config()
  config.task = "audio"

  num_layers, embed_dim, mlp_dim, num_heads = TRANSFORMER_SHAPES[arg]
  config.model = ml_collections.ConfigDict(
      dict(
          num_layers=num_layers,
          embed_dim=embed_dim,
          mlp_dim=mlp_dim,
          num_heads=num_heads,
          latent_channels=128,  # audio VAE latent channels (model input and output)
          latent_rate=25.0,  # audio VAE latent frames per second
          max_frames=250,  # positional table rows: the training window, in frames
          video_fps=16.0,  # frame rate of the video features (data.fps)
          use_video=True,
          modulate_cross_attention=True,  # 9 shared modulation vectors per block (else 6)
          qk_norm=True,
          attention_implementation="auto",  # mgjax/kernels/attention: xla|cudnn|pallas_gpu|pallas_tpu
          scan_layers=True,
          remat_policy="full",  # see mgjax.models.dit_blocks.REMAT_POLICIES
          dtype="bfloat16",
          param_dtype="float32",
      )
  )

  # Per-frame video features (mgjax/models/video_features.py): frames -> [B, Tv, Fv].
  config.video_encoder = ml_collections.ConfigDict(
      dict(
          features=1024,
          channels=(64, 128, 256, 512),
          num_groups=32,
          pooling="mean",  # | "flatten": keep where things are (the tiny default)
          temporal_kernel=0,  # > 0 (odd): each feature also sees its neighbour frames
          trainable=True,  # False: frozen (outputs carry no gradient)
          dtype="bfloat16",
      )
  )

  config.flow = ml_collections.ConfigDict(
      dict(
          sigma_min=1e-5,  # X_t = t X1 + (1 - (1 - sigma_min) t) X0
          t_mean=0.0,  # t ~ logit-normal(t_mean, t_std)
          t_std=1.0,
          video_drop_prob=0.1,  # each condition dropped on its own (CFG null conditions)
          text_drop_prob=0.1,
          sample_steps=64,
          schedule="linear",
          method="midpoint",
          cfg_scale=3.0,
      )
  )

  # Masked audio context in training (Voicebox-style masked prediction, which the
  # long-form extension relies on): an example gets a context with probability
  # `prob`; then a random contiguous span of [min_fraction, max_fraction] of the clip
  # is hidden and predicted, the rest is given (context_mask 1) and not in the loss.
  config.context = ml_collections.ConfigDict(dict(prob=0.5, min_fraction=0.3, max_fraction=1.0))

  # The audio VAE whose latents the model learns.
  # `workdir` holds a trained VAE (default <workdir>/audio_vae); with `train_config`
  # set the trainer first trains that VAE there for `train_steps` (0: its own number).
  config.vae = ml_collections.ConfigDict(dict(workdir="", train_config="", train_steps=0))

  # One T5 encoder for the prompt (mgjax/text/conditioning.py documents the keys).
  config.text = ml_collections.ConfigDict(
      dict(encoders=ml_collections.ConfigDict(dict(t5=t2v.text_encoder("t5", max_length=256))))
  )

  # Video with sound. `shapes_audio`: the synthetic clips of mgjax/data/shapes_audio.py
  # (a tone per colour, a click per bounce), made in `dir` if absent.
  config.data = configs.data_config(
      name="shapes_audio",
      audio=ml_collections.ConfigDict(dict(sample_rate=48_000, channels=1)),
      clip_seconds=10.0,  # training window (= model.max_frames / latent_rate)
      frame_size=(256, 256),  # (height, width) frames are resized to for the video encoder
      bouncing_share=0.0,  # shapes_audio: > 0 gives this share of the clips a bounce
      batch_size=0,  # 0: train.batch_size
  )

  # Long audio from windows of the trained length (mgjax/audio_longform.py).
  config.longform = ml_collections.ConfigDict(
      dict(
          method="multidiffusion",  # "multidiffusion" | "autoregressive"
          window_seconds=10.0,
          window_frames=250,  # = window_seconds * latent_rate
          overlap_frames=50,  # 2 s; autoregression: the context of each next window
      )
  )

  config.eval = ml_collections.ConfigDict(
      dict(
          num_prompts=8,  # held-out clips to sample and score
          num_bouncing_clips=0,  # shapes_audio: + this many fresh bouncing clips for sync
          num_steps=64,
          method="midpoint",
          cfg_scale=3.0,
          seed=0,
          batch_size=8,
          num_to_write=8,
      )
  )

  config.optimizer.update(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.1)
  config.train.update(
      num_steps=100_000, batch_size=256, eval_every=5000, checkpoint_every=1000, ema_decay=0.9999
  )

  if arg == "tiny":
    # 2 s clips (32 frames at 16 fps): 50 latent frames at 25 Hz.
    config.model.update(latent_channels=16, max_frames=50, remat_policy="none", dtype="float32")
    config.video_encoder.update(
        features=64,
        channels=(16, 32, 64),
        num_groups=8,
        pooling="flatten",
        temporal_kernel=3,
        dtype="float32",
    )
    config.vae.update(train_config=os.path.join(HERE, "audio_vae.py") + ":tiny")
    tiny_t5 = t2v.tiny_text_encoders()["ul2"]
    config.text.encoders = ml_collections.ConfigDict(dict(t5=tiny_t5))
    config.data.update(clip_seconds=2.0, bouncing_share=0.5)
    config.data.audio.sample_rate = 16_000
    config.data.update(frame_size=(32, 32))  # the 64 px clips at half size: 4x cheaper frames
    config.data.shapes.update(num_videos=2048, num_frames=32, fps=16, paths="random")
    config.longform.update(window_seconds=2.0, window_frames=50, overlap_frames=10)
    config.eval.update(num_prompts=8, num_bouncing_clips=40, num_steps=16, num_to_write=4)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=50, weight_decay=0.0)
    config.train.update(
        num_steps=5000,
        batch_size=16,
        log_every=100,
        eval_every=1000,
        checkpoint_every=300,
        ema_decay=0.98,
    )
  else:
    # Read only by weight-free tools (mgjax.aot); training needs text.encoders.t5.path.
    config.text.architectures = ml_collections.ConfigDict(dict(t5=T5_XXL_ARCHITECTURE))
  return config
