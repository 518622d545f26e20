"""Quality figures of a trained TAE: held-out PSNR/SSIM, tiled vs untiled decode.

    python benchmarks/tae_quality.py --workdir=workdir/tae_tiny

Prints the evaluation the trainer runs, then decodes long (default 80-frame) shapes
clips both in one piece and in 32-frame tiles with a 16-frame overlap, and reports
how far the tiled result is from the untiled one, frame by frame distance to the
nearest tile edge, and the largest frame-to-frame jump excess at tile edges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mgjax.data import shapes
from mgjax.eval.metrics import psnr
from mgjax.models.tae import TAE
from mgjax.models.tae_tiling import tiled_decode, tiled_encode
from mgjax.tasks.tae import to_signed
from mgjax.train import restore_train_state

_WORKDIR = flags.DEFINE_string("workdir", None, "A TAE training workdir.", required=True)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 80, "Length of the long clips.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 4, "How many long clips to decode.")
_TILE = flags.DEFINE_integer("tile_frames", 32, "Decoder tile length in frames.")
_OVERLAP = flags.DEFINE_integer("overlap_frames", 16, "Decoder tile overlap in frames.")


def main(argv):
  del argv
  config, task, state = restore_train_state(_WORKDIR.value)
  params = {"params": state.params["tae"]}
  print(
      f"step {int(state.step)}: held-out",
      task.evaluate(state.params, state.frozen, int(state.step)),
  )
  model = task.model
  encode = jax.jit(lambda x: model.apply(params, x, method=TAE.encode)[0])
  decode = jax.jit(lambda z: model.apply(params, z, method=TAE.decode))
  s = config.data.shapes
  rng = np.random.default_rng(1234)
  clips = np.stack(
      [
          shapes.render_clip(shapes.sample_spec(rng), _NUM_FRAMES.value, s.height, s.width)
          for _ in range(_NUM_CLIPS.value)
      ]
  )
  video = to_signed(jnp.asarray(clips))  # [N, T, H, W, 3]
  latent = encode(video)
  full = jnp.clip(decode(latent), -1, 1)
  tiled = jnp.clip(
      tiled_decode(
          decode, latent, _NUM_FRAMES.value, _TILE.value, _OVERLAP.value, model.temporal_factor
      ),
      -1,
      1,
  )
  tiled_latent = tiled_encode(encode, video, _TILE.value, model.temporal_factor)
  tiled_both = jnp.clip(
      tiled_decode(
          decode,
          tiled_latent,
          _NUM_FRAMES.value,
          _TILE.value,
          _OVERLAP.value,
          model.temporal_factor,
      ),
      -1,
      1,
  )
  print(
      f"{_NUM_FRAMES.value}-frame clips, PSNR vs input: untiled "
      f"{float(psnr(full, video).mean()):.2f} dB, tiled decode "
      f"{float(psnr(tiled, video).mean()):.2f} dB, tiled encode+decode "
      f"{float(psnr(tiled_both, video).mean()):.2f} dB"
  )
  print(
      f"tiled vs untiled decode: PSNR {float(psnr(tiled, full).mean()):.2f} dB, "
      f"max abs difference {float(jnp.abs(tiled - full).max()):.4f} (range [-1, 1])"
  )
  jumps = lambda v: np.asarray(jnp.abs(jnp.diff(v, axis=1)).mean(axis=(0, 2, 3, 4)))
  excess = jumps(tiled) - jumps(full)
  print(
      f"largest frame-to-frame jump excess of tiled over untiled: {excess.max():.4f} "
      f"(mean untiled jump {jumps(full).mean():.4f})"
  )


if __name__ == "__main__":
  app.run(main)
