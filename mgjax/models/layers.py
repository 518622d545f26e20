"""Small building blocks shared by mgjax models, with logical-axis annotations."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def logical_init(init_fn, names: Sequence[str | None]):
  """An initializer whose parameter carries logical axis names for sharding."""
  return nn.with_logical_partitioning(init_fn, tuple(names))


def identity_temporal_init(key, shape, dtype=jnp.float32):
  """Kernel [k, 1, 1, C, C] whose centre tap is the identity.

  A temporal convolution initialised this way passes each frame through unchanged,
  so a freshly inflated video autoencoder starts out as a per-frame image one.
  """
  del key
  k, kh, kw, cin, cout = shape
  if cin != cout or kh != 1 or kw != 1:
    raise ValueError(f"identity_temporal_init needs a [k, 1, 1, C, C] kernel; got {shape}.")
  kernel = jnp.zeros(shape, dtype)
  return kernel.at[k // 2, 0, 0].set(jnp.eye(cin, dtype=dtype))


class FrameGroupNorm(nn.Module):
  """GroupNorm over (H, W, C-group) of each frame separately.

  Statistics never mix frames, so a frame's output does not depend on how long the
  clip is. This keeps images (1-frame videos) and tiled decoding consistent with
  full-clip processing.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    groups = min(self.num_groups, c)
    if c % groups:
      raise ValueError(f"FrameGroupNorm: {c} channels are not divisible by {groups} groups.")
    y = nn.GroupNorm(num_groups=groups, epsilon=self.epsilon, dtype=self.dtype,
                     scale_init=logical_init(nn.initializers.ones, ("norm",)),
                     bias_init=logical_init(nn.initializers.zeros, ("norm",)))(
                         x.reshape(b * t, h, w, c))
    return y.reshape(b, t, h, w, c)
