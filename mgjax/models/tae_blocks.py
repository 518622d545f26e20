"""Building blocks of the temporal autoencoder, inflated from a 2D image AE.

Every 2D convolution is followed by a 1D temporal convolution, and every spatial
attention by a temporal one. Temporal layers pad by replicating the first and last
frame symmetrically, so a clip's ends are treated like its middle and a 1-frame
video (an image) passes through without inventing frames.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgjax.models.attention import attention
from mgjax.models.layers import FrameGroupNorm, identity_temporal_init, logical_init
from mgjax.parallel.sharding import constrain

CONV2D_AXES = (None, None, "conv_in", "conv_out")
CONV_T_AXES = (None, None, None, "conv_in", "conv_out")
ACTIVATION_AXES = ("batch", "frames", "height", "width", "channels")


class Conv2Plus1D(nn.Module):
  """k x k spatial conv on each frame, then a k x 1 x 1 temporal conv.

  `spatial_stride=2` halves H and W (padding bottom/right by one, as image AEs do);
  `temporal_stride=2` turns T frames into ceil(T / 2).
  """

  features: int
  kernel_size: int = 3
  spatial_stride: int = 1
  temporal_stride: int = 1
  temporal: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    k = self.kernel_size
    frames = x.reshape(b * t, h, w, c)
    if self.spatial_stride == 1:
      padding = "SAME"
    else:
      padding = ((0, 1), (0, 1)) if k == 3 else "SAME"
    frames = nn.Conv(
        self.features,
        (k, k),
        strides=self.spatial_stride,
        padding=padding,
        dtype=self.dtype,
        name="spatial",
        kernel_init=logical_init(nn.initializers.lecun_normal(), CONV2D_AXES),
        bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
    )(frames)
    y = frames.reshape(b, t, *frames.shape[1:])  # [B, T, H', W', F]
    if not self.temporal:
      return y
    # Symmetric replicate padding keeps ceil(T / stride) output frames.
    y = jnp.pad(y, ((0, 0), (k // 2, k // 2), (0, 0), (0, 0), (0, 0)), mode="edge")
    kernel = self.param(
        "temporal_kernel",
        logical_init(identity_temporal_init, CONV_T_AXES),
        (k, 1, 1, self.features, self.features),
        jnp.float32,
    )
    bias = self.param(
        "temporal_bias",
        logical_init(nn.initializers.zeros, ("conv_out",)),
        (self.features,),
        jnp.float32,
    )
    # A k x 1 x 1 conv as k shifted matmuls: XLA:CPU runs these ~2x faster than a 3D
    # convolution in the backward pass, and it is the same op on accelerators.
    s = self.temporal_stride
    out_frames = (y.shape[1] - k) // s + 1
    y = y.astype(self.dtype)
    out = sum(
        jnp.einsum(
            "bthwc,cd->bthwd",
            y[:, i : i + s * (out_frames - 1) + 1 : s],
            kernel[i, 0, 0].astype(self.dtype),
        )
        for i in range(k)
    )
    return out + bias.astype(self.dtype)  # [B, ceil(T / s), H', W', F]


class ResBlock(nn.Module):
  """Pre-norm residual block of two (2+1)D convolutions."""

  features: int
  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C] -> [B, T, H, W, F]
    h = nn.silu(FrameGroupNorm(self.num_groups, dtype=self.dtype)(x))
    h = Conv2Plus1D(self.features, dtype=self.dtype)(h)
    h = nn.silu(FrameGroupNorm(self.num_groups, dtype=self.dtype)(h))
    h = Conv2Plus1D(self.features, dtype=self.dtype)(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(
          self.features,
          dtype=self.dtype,
          name="skip",
          kernel_init=logical_init(nn.initializers.lecun_normal(), ("conv_in", "conv_out")),
          bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
      )(x)
    return constrain(x + h, ACTIVATION_AXES)


class SelfAttention(nn.Module):
  """Pre-norm residual self-attention over the middle axis of [N, L, C]."""

  num_heads: int = 1
  num_groups: int = 32
  zero_init_output: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, norm_input: jax.Array) -> jax.Array:
    # x, norm_input: [N, L, C]; norm_input is x already group-normalised per frame.
    n, length, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"{c} channels are not divisible by {self.num_heads} heads.")
    qkv = nn.Dense(
        3 * c,
        dtype=self.dtype,
        name="qkv",
        kernel_init=logical_init(nn.initializers.lecun_normal(), ("conv_in", "conv_out")),
        bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
    )(norm_input)
    q, k, v = jnp.split(
        qkv.reshape(n, length, 3 * self.num_heads, c // self.num_heads), 3, axis=2
    )  # each [N, L, heads, C / heads]
    out = attention(q, k, v).reshape(n, length, c)
    out_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
    out = nn.Dense(
        c,
        dtype=self.dtype,
        name="out",
        kernel_init=logical_init(out_init, ("conv_in", "conv_out")),
        bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
    )(out)
    return x + out


class SpatioTemporalAttention(nn.Module):
  """Spatial attention within each frame, then temporal attention at each pixel.

  The temporal attention's output projection starts at zero, so the inflated block
  initially equals the image AE's spatial attention.
  """

  num_heads: int = 1
  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    normed = FrameGroupNorm(self.num_groups, dtype=self.dtype, name="spatial_norm")(x)
    x = SelfAttention(self.num_heads, self.num_groups, dtype=self.dtype, name="spatial")(
        x.reshape(b * t, h * w, c), normed.reshape(b * t, h * w, c)
    ).reshape(b, t, h, w, c)
    normed = FrameGroupNorm(self.num_groups, dtype=self.dtype, name="temporal_norm")(x)
    to_time = lambda a: a.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
    x = SelfAttention(
        self.num_heads, self.num_groups, zero_init_output=True, dtype=self.dtype, name="temporal"
    )(to_time(x), to_time(normed))
    return x.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4)


def upsample_nearest(x: jax.Array, temporal: bool, num_frames: int) -> jax.Array:
  """Nearest-neighbour x2 in H and W (and T when `temporal`), keeping `num_frames`.

  Extra frames made by the temporal x2 (from a padded odd length) are discarded.
  """
  x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # [B, T, 2H, 2W, C]
  if temporal:
    x = jnp.repeat(x, 2, axis=1)[:, :num_frames]  # [B, num_frames, 2H, 2W, C]
  return x


def space_to_depth(x: jax.Array, temporal: bool) -> jax.Array:
  """Folds each 2x2 (2x2x2 when `temporal`) block of positions into channels.

  [B, T, H, W, C] -> [B, ceil(T/2) or T, H/2, W/2, C * f] with f = 8 or 4. Channel
  c * f + (dt, dy, dx) holds channel c at that offset, so averaging consecutive
  channel groups pools positions before it mixes channels. An odd T repeats its last
  frame, so a 1-frame video folds to itself.
  """
  b, t, h, w, c = x.shape
  st = 2 if temporal else 1
  if temporal and t % 2:
    x = jnp.concatenate([x, x[:, -1:]], axis=1)
    t += 1
  x = x.reshape(b, t // st, st, h // 2, 2, w // 2, 2, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, T', H', W', C, st, 2, 2]
  return x.reshape(b, t // st, h // 2, w // 2, c * st * 4)


def depth_to_space(x: jax.Array, temporal: bool, num_frames: int) -> jax.Array:
  """Inverse of `space_to_depth`, keeping the first `num_frames` frames."""
  b, t, h, w, cf = x.shape
  st = 2 if temporal else 1
  c = cf // (st * 4)
  x = x.reshape(b, t, h, w, c, st, 2, 2).transpose(0, 1, 5, 2, 6, 3, 7, 4)
  return x.reshape(b, t * st, 2 * h, 2 * w, c)[:, :num_frames]


def average_channel_groups(x: jax.Array, out_channels: int) -> jax.Array:
  """[..., C] -> [..., out_channels]: the mean of each run of C / out_channels channels."""
  c = x.shape[-1]
  if c % out_channels:
    raise ValueError(f"Cannot average {c} channels into {out_channels} equal groups.")
  return x.reshape(*x.shape[:-1], out_channels, c // out_channels).mean(-1)


def repeat_channels(x: jax.Array, out_channels: int) -> jax.Array:
  """[..., C] -> [..., out_channels]: each channel repeated out_channels / C times."""
  c = x.shape[-1]
  if out_channels % c:
    raise ValueError(f"Cannot repeat {c} channels into {out_channels}.")
  return jnp.repeat(x, out_channels // c, axis=-1)


def downsample_shortcut(x: jax.Array, out_channels: int, temporal: bool) -> jax.Array:
  """Parameter-free path around a downsampling conv (residual autoencoding).

  Space-to-depth then channel-group averaging: a high-compression autoencoder whose
  every resolution change has such a shortcut starts out as (and keeps) a
  well-conditioned linear patch code, and trains far faster than one that must learn
  to carry detail through every strided conv.
  """
  return average_channel_groups(space_to_depth(x, temporal), out_channels)


def upsample_shortcut(
    x: jax.Array, out_channels: int, temporal: bool, num_frames: int
) -> jax.Array:
  """The decoder's mirror of `downsample_shortcut`: channel repeat, depth-to-space."""
  f = 8 if temporal else 4
  return depth_to_space(repeat_channels(x, out_channels * f), temporal, num_frames)
