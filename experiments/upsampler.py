"""Spatial upsampler configs (2x, video to video): tiny | 7b.

    python -m mgjax.train --config=experiments/upsampler.py:tiny --workdir=U \
        --config.tae.workdir=TAE --config.data.name=manifest --config.data.dir=DIR
    python -m mgjax.train --config=experiments/upsampler.py:7b --workdir=gs://.../up_7b \
        --config.train.init_from.workdir=T2I_RUN --config.mesh.fsdp=-1 \
        --config.tae.workdir=TAE --config.data.dir=HD_VIDEOS
    python -m mgjax.sample --task=upsample --workdir=U --video=IN.mp4 --out=DIR

The task (mgjax/tasks/upsample.py): clips of the data set at the target resolution,
degraded twice over and bilinearly re-upsampled as the condition, both encoded frame
by frame with the TAE, the condition concatenated to the noisy latent along channels
(zero-initialised weights); sampling: 20 linear steps, MultiDiffusion over windows
of 14 frames with 4 of overlap. The CPU demo is experiments/upsampler_shapes.py.

`7b` is the paper's 7B: the video transformer at 34 layers, width 3584, FFN 9728
(about 8/3, a multiple of 256), 28 heads of 128 -- 7.18B parameters from
`jax.eval_shape` with the 4096-wide text projection (tests/test_upsample.py) --
trained on 14-frame clips at 24 fps of 1080p video (1088 = 1080 rounded up to the
TAE x patch multiple of 16; crop the output to 1080). It starts from a text-to-image
run of the same shape (`train.init_from`; positional tables of another size are
fitted on load). Its compile for a TPU slice, without weights:

    python -m mgjax.aot --config=experiments/upsampler.py:7b --topology=v5p-128 \
        --config.mesh.tensor=4 --config.mesh.context=2 \
        --config.parallel.sequence_parallel=True --config.data.precompute_text=True \
        --buckets=video:14:1088:1920:32

(figures in docs/benchmarks.md "Spatial upsampler").
"""

import ml_collections

from experiments import t2v
from mgjax.data import degrade

SIZES = ("tiny", "7b")
TRANSFORMER_7B = dict(num_layers=34, embed_dim=3584, mlp_dim=9728, num_heads=28)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in SIZES:
    raise ValueError(
        f"Unknown upsampler size {arg!r}; use experiments/upsampler.py:<size> with size one "
        f"of {', '.join(SIZES)}."
    )
  config = t2v.get_config("tiny" if arg == "tiny" else "30b")
  config.task = "upsample"
  config.upsample = ml_collections.ConfigDict(
      dict(
          factor=2,  # output / input resolution
          window=14,  # frames per window at sampling (and per training clip)
          overlap=4,  # frames shared by neighbouring windows, blended (MultiDiffusion)
          # Windows the model runs at once when sampling; 0: all (fastest). Set it to
          # bound memory on long HD videos: a 256-frame clip is 26 windows.
          windows_per_call=0,
          lowres_drop_prob=0.0,  # drop the low-res condition (guidance is over the text)
          seed=0,  # of the degradations (each clip's draw also depends on its pixels)
          degrade=degrade.default_config(),
      )
  )
  # ~20 steps suffice: the low-res video fixes nearly everything. Guidance 1 (none)
  # by default: one pass per step.
  config.flow.update(sample_steps=20, schedule="linear", cfg_scale=1.0)
  config.eval = ml_collections.ConfigDict(
      dict(
          num_clips=8,  # held-out videos (split "eval")
          num_frames=32,  # per clip: several windows, so seams are measured
          num_steps=20,
          schedule="linear",
          method="euler",
          cfg_scale=1.0,
          seed=0,
          num_videos_to_write=4,
      )
  )
  # Upsampled videos and their windows are decoded frame by frame (no tiling).
  config.sample = ml_collections.ConfigDict(dict(tile_frames=0, tile_overlap=0))

  if arg == "tiny":
    # Positional tables: 14 frames (the window), 16 x 16 patches (up to 256 px out).
    config.model.update(max_frames=14, max_height=16, max_width=16)
    config.data.buckets = (("video", 14, 64, 64, 8),)
    config.train.update(num_steps=2000, eval_every=1000, checkpoint_every=500)
  else:
    config.model.update(TRANSFORMER_7B, remat_policy="save_dots")
    # 14 frames; 1088 x 1920 px -> 68 x 120 patches; portrait too.
    config.model.update(max_frames=14, max_height=120, max_width=120)
    config.data.update(fps=24.0, buckets=(("video_16x9", 14, 1088, 1920, 1),))
    config.optimizer.update(learning_rate=5e-5, warmup_steps=1000)
    config.train.update(num_steps=50_000, eval_every=5000)
    config.upsample.windows_per_call = 1
  return config
