"""Small model configurations shared by tests."""

import flax.linen as nn
import jax

from mgjax.models.tae import TAE


def tiny_tae(**overrides) -> TAE:
  """8x in T, H, W; 8 latent channels; a few thousand parameters per layer."""
  kwargs = dict(
      base_channels=8,
      channel_multipliers=(1, 2, 2, 2),
      num_res_blocks=1,
      latent_channels=8,
      temporal_downsample=(True, True, True),
      num_groups=4,
  )
  kwargs.update(overrides)
  return TAE(**kwargs)


def perturb(params, scale: float, seed: int = 0):
  """params + scale * N(0, 1) noise: moves identity/zero-initialised layers off init."""
  leaves, treedef = jax.tree.flatten(nn.meta.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      treedef,
      [leaf + scale * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)],
  )
