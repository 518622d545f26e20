"""Per-device memory of a long-sequence DiT training step as context parallelism grows.

    python benchmarks/context_parallel_memory.py --frames=32 --size=32

Compiles (never runs) the forward + backward pass of a small video DiT on one clip of
latents [1, frames, size, size, 16] (frames x size/2 x size/2 tokens) on meshes
with context = 1, 2, 4, 8 (fake CPU devices unless real ones are there), and prints
XLA's per-device temporary memory from `compiled.memory_analysis()`. Attention's
S/c x S scores and the per-token activations shrink with c; the gathered K and V
(all_gather) or one travelling block (ring) are what is left.
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from mgjax import configs  # noqa: E402
from mgjax.models.dit import VideoDiT  # noqa: E402
from mgjax.parallel import mesh as mesh_lib  # noqa: E402
from mgjax.parallel import sharding as sharding_lib  # noqa: E402

CHANNELS, TEXT_LENGTH, TEXT_DIM = 16, 32, 64


def step_temp_bytes(
    context: int,
    frames: int,
    size: int,
    mode: str = "all_gather",
    embed_dim: int = 128,
    num_heads: int = 4,
) -> int:
  """Per-device temporary bytes of the compiled loss + gradient step at `context`."""
  model = VideoDiT(
      num_layers=2,
      embed_dim=embed_dim,
      mlp_dim=2 * embed_dim,
      num_heads=num_heads,
      max_frames=frames,
      max_height=size // 2,
      max_width=size // 2,
      remat_policy="full",
      context_attention=mode,
  )
  mesh = mesh_lib.make_mesh(
      dict(data=1, fsdp=1, context=context, tensor=1), jax.devices()[:context]
  )
  rules = sharding_lib.rules_from_config(configs.DEFAULT_LOGICAL_AXIS_RULES)
  latent = jax.ShapeDtypeStruct((1, frames, size, size, CHANNELS), jnp.float32)
  text = jax.ShapeDtypeStruct((1, TEXT_LENGTH, TEXT_DIM), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)

  def loss(params, x, t, text):
    velocity = model.apply({"params": params}, x, t, text)
    return jnp.mean((velocity - x) ** 2)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(
        lambda x, t, text: model.init(jax.random.key(0), x, t, text)["params"], latent, t, text
    )
    shardings = sharding_lib.logical_to_shardings(boxed, mesh, rules)
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        sharding_lib.strip_boxes(boxed),
        shardings,
    )
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, latent, t, text).compile()
  return compiled.memory_analysis().temp_size_in_bytes


_FRAMES = flags.DEFINE_integer("frames", 32, "Latent frames of the clip.")
_SIZE = flags.DEFINE_integer("size", 32, "Latent height and width.")


def main(argv):
  del argv
  frames, size = _FRAMES.value, _SIZE.value
  tokens = frames * (size // 2) ** 2
  print(f"DiT step on {tokens} tokens, per-device temporary memory (MiB):")
  print(f"{'context':>8} {'all_gather':>11} {'ring':>8}")
  for context in (1, 2, 4, 8):
    if context > jax.device_count():
      break
    row = [step_temp_bytes(context, frames, size, mode) / 2**20 for mode in ("all_gather", "ring")]
    print(f"{context:>8} {row[0]:>11.1f} {row[1]:>8.1f}")


if __name__ == "__main__":
  app.run(main)
