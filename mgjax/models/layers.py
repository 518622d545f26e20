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
    y = nn.GroupNorm(
        num_groups=groups,
        epsilon=self.epsilon,
        dtype=self.dtype,
        scale_init=logical_init(nn.initializers.ones, ("norm",)),
        bias_init=logical_init(nn.initializers.zeros, ("norm",)),
    )(x.reshape(b * t, h, w, c))
    return y.reshape(b, t, h, w, c)


class Projection(nn.Module):
  """x @ W contracting x's last `num_inputs` axes into `features` (int or tuple).

  Like nn.DenseGeneral, but the kernel is created at its full rank: DenseGeneral
  initialises a flattened 2-D kernel and reshapes it, and a 3-D logical name box on
  that 2-D value fails as soon as logical axis rules are active (init under a mesh).

  Attributes:
    axes: logical name of every kernel dimension: the contracted inputs, then outputs.
  """

  features: int | tuple[int, ...]
  axes: tuple[str, ...]
  num_inputs: int = 1
  use_bias: bool = False
  zero_init: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_shape = self.features if isinstance(self.features, tuple) else (self.features,)
    in_shape = x.shape[x.ndim - self.num_inputs :]
    n_in, n_out = len(in_shape), len(out_shape)
    if len(self.axes) != n_in + n_out:
      raise ValueError(
          f"Projection {self.name}: {len(self.axes)} axis names {self.axes} for "
          f"a kernel of rank {n_in + n_out}."
      )
    init = (
        nn.initializers.zeros
        if self.zero_init
        else nn.initializers.lecun_normal(
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out))
        )
    )
    kernel = self.param(
        "kernel", logical_init(init, self.axes), in_shape + out_shape, self.param_dtype
    )
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
    if self.use_bias:
      bias = self.param(
          "bias", logical_init(nn.initializers.zeros, self.axes[n_in:]), out_shape, self.param_dtype
      )
      y = y + bias.astype(self.dtype)
    return y


def dense(
    features,
    axes,
    name: str,
    dtype,
    param_dtype,
    *,
    zero: bool = False,
    use_bias: bool = False,
    num_inputs: int = 1,
) -> Projection:
  """A `Projection` whose kernel dims are named `axes` (inputs, then outputs)."""
  return Projection(
      features,
      tuple(axes),
      num_inputs=num_inputs,
      use_bias=use_bias,
      zero_init=zero,
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )
