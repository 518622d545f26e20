"""The upsampler's CPU demo: shapes clips 32 -> 64 px, scored against bicubic.

    python -m mgjax.train --config=experiments/upsampler_shapes.py --workdir=workdir/upsampler

One command: makes the shapes videos (W/shapes), trains the tiny TAE on them (W/tae;
pass --config.tae.workdir=workdir/demo/tae to reuse the text-to-video demo's and
skip it), encodes every 64 px training clip and its degraded 32 px input frame by
frame (W/latents), trains the tiny upsampler, then upsamples held-out 32-frame clips
(three windows of 14 frames, 4 overlapping) and prints PSNR/SSIM against bilinear
and bicubic upsampling of the same degraded inputs, the TAE's own ceiling, and the
frame-change error at window seams against elsewhere. Side-by-side videos (bicubic |
upsampler | truth) go to W/samples/step_N. Then, on your own 32 px video or on the
text-to-video demo's samples (64 -> 128 px):

    python -m mgjax.sample --task=upsample --workdir=workdir/upsampler --video=IN.mp4 --out=DIR
    python -m mgjax.sample --workdir=workdir/demo --upsampler=workdir/upsampler \
        --prompt="a red circle moves to the left on a striped background"

Figures and times: docs/benchmarks.md "Spatial upsampler".
"""

import os

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"experiments/upsampler_shapes.py takes no argument; got {arg!r}.")
  config = configs.load_config(os.path.join(HERE, "upsampler.py") + ":tiny")
  with config.unlocked():
    # Frames of 32 px encode at ~31 dB with the 4x TAE (27 with the 8x one): the
    # codec's reconstruction is the upsampler's ceiling, so it must clear bicubic.
    config.tae.update(train_config=os.path.join(HERE, "tae.py") + ":tiny4x", train_steps=600)
    config.data.update(name="shapes", fps=16.0, buckets=(("video", 14, 32, 32, 8),))
    config.data.shapes.update(
        num_videos=512, num_images=8, num_frames=32, height=32, width=32, paths="lanes"
    )
    config.train.update(num_steps=3000, eval_every=3000, checkpoint_every=500)
  return config
