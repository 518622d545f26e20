"""Temporal autoencoder (TAE): an image VAE inflated to video.

Pixels [B, T, H, W, 3] in [-1, 1] map to latents [B, ceil(T/8), H/8, W/8, C] and
back. Each downsampling level halves H and W and, where `temporal_downsample` says
so, halves T with a stride-2 temporal conv (ceil for odd lengths). The decoder
upsamples by nearest repeat + conv and discards the spurious frames an odd length
produced, so any clip length round-trips and an image is a 1-frame video.

The latent is a diagonal Gaussian (mean, log-variance); training samples it and
adds a KL term, inference uses the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgjax.models.layers import FrameGroupNorm
from mgjax.models.tae_blocks import (
    Conv2Plus1D,
    ResBlock,
    SpatioTemporalAttention,
    average_channel_groups,
    downsample_shortcut,
    repeat_channels,
    upsample_nearest,
    upsample_shortcut,
)

LOGVAR_RANGE = (-30.0, 20.0)


def frame_counts(num_frames: int, temporal_downsample: Sequence[bool]) -> list[int]:
  """Frames at each level: [T, ceil(T/2), ...] following the temporal strides."""
  counts = [num_frames]
  for halves in temporal_downsample:
    counts.append(math.ceil(counts[-1] / 2) if halves else counts[-1])
  return counts


class Encoder(nn.Module):
  channels: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  temporal_downsample: Sequence[bool]
  mid_attention: bool = True
  attention_heads: int = 1
  num_groups: int = 32
  residual_shortcuts: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # x: [B, T, H, W, 3] -> moments [B, T', H/2^L, W/2^L, 2C]
    block = nn.remat(ResBlock) if self.remat else ResBlock
    h = Conv2Plus1D(self.channels[0], dtype=self.dtype, name="conv_in")(x)
    for level, features in enumerate(self.channels):
      for i in range(self.num_res_blocks):
        h = block(features, self.num_groups, self.dtype, name=f"down_{level}_res_{i}")(h)
      if level < len(self.channels) - 1:
        temporal = self.temporal_downsample[level]
        # With shortcuts the channel change happens here, so the shortcut keeps
        # half (or a quarter, with temporal) of the folded positions' detail.
        out = self.channels[level + 1] if self.residual_shortcuts else features
        down = Conv2Plus1D(
            out,
            spatial_stride=2,
            temporal_stride=2 if temporal else 1,
            dtype=self.dtype,
            name=f"down_{level}_downsample",
        )(h)
        if self.residual_shortcuts:
          down = down + downsample_shortcut(h, out, temporal)
        h = down
    top = self.channels[-1]
    h = block(top, self.num_groups, self.dtype, name="mid_res_0")(h)
    if self.mid_attention:
      h = SpatioTemporalAttention(
          self.attention_heads, self.num_groups, self.dtype, name="mid_attention"
      )(h)
    h = block(top, self.num_groups, self.dtype, name="mid_res_1")(h)
    out = nn.silu(FrameGroupNorm(self.num_groups, dtype=self.dtype, name="norm_out")(h))
    moments = Conv2Plus1D(2 * self.latent_channels, dtype=self.dtype, name="conv_out")(out)
    if self.residual_shortcuts:  # Onto the mean only; the log-variance is learned.
      mean, logvar = jnp.split(moments, 2, axis=-1)
      mean = mean + average_channel_groups(h, self.latent_channels)
      moments = jnp.concatenate([mean, logvar], axis=-1)
    return moments


class Decoder(nn.Module):
  channels: Sequence[int]
  num_res_blocks: int
  temporal_downsample: Sequence[bool]
  out_channels: int = 3
  mid_attention: bool = True
  attention_heads: int = 1
  num_groups: int = 32
  residual_shortcuts: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, num_frames: int) -> jax.Array:
    # z: [B, T', h, w, C] -> [B, num_frames, h * 2^L, w * 2^L, 3]
    block = nn.remat(ResBlock) if self.remat else ResBlock
    counts = frame_counts(num_frames, self.temporal_downsample)
    if counts[-1] != z.shape[1]:
      raise ValueError(
          f"{z.shape[1]} latent frames cannot decode to {num_frames} frames; "
          f"{num_frames} frames encode to {counts[-1]} latent frames."
      )
    top = self.channels[-1]
    h = Conv2Plus1D(top, dtype=self.dtype, name="conv_in")(z)
    if self.residual_shortcuts:
      h = h + repeat_channels(z, top)
    h = block(top, self.num_groups, self.dtype, name="mid_res_0")(h)
    if self.mid_attention:
      h = SpatioTemporalAttention(
          self.attention_heads, self.num_groups, self.dtype, name="mid_attention"
      )(h)
    h = block(top, self.num_groups, self.dtype, name="mid_res_1")(h)
    for level in reversed(range(len(self.channels))):
      features = self.channels[level]
      for i in range(self.num_res_blocks + 1):
        h = block(features, self.num_groups, self.dtype, name=f"up_{level}_res_{i}")(h)
      if level > 0:
        temporal = self.temporal_downsample[level - 1]
        out = self.channels[level - 1] if self.residual_shortcuts else features
        up = Conv2Plus1D(out, dtype=self.dtype, name=f"up_{level}_upsample")(
            upsample_nearest(h, temporal, counts[level - 1])
        )
        if self.residual_shortcuts:
          up = up + upsample_shortcut(h, out, temporal, counts[level - 1])
        h = up
    h = nn.silu(FrameGroupNorm(self.num_groups, dtype=self.dtype, name="norm_out")(h))
    return Conv2Plus1D(self.out_channels, dtype=self.dtype, name="conv_out")(h)


class TAE(nn.Module):
  """Video VAE with 2^L spatial and 2^(#temporal levels) temporal compression.

  Attributes:
    base_channels: channels of the first level; level i has base * multipliers[i].
    channel_multipliers: one per level; L = len - 1 downsamplings.
    temporal_downsample: for each of the L downsamplings, whether it also halves T.
    residual_shortcuts: adds parameter-free space-to-depth / depth-to-space paths
      around every resolution change and the latent (residual autoencoding, as in
      deep-compression AEs). Not in the paper's TAE; it makes small high-compression
      models train several times faster.
  """

  base_channels: int = 128
  channel_multipliers: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  latent_channels: int = 16
  temporal_downsample: Sequence[bool] = (True, True, True)
  mid_attention: bool = True
  attention_heads: int = 1
  num_groups: int = 32
  residual_shortcuts: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
      raise ValueError(
          f"temporal_downsample has {len(self.temporal_downsample)} entries; it needs one "
          f"per downsampling level ({len(self.channel_multipliers) - 1})."
      )
    channels = [self.base_channels * m for m in self.channel_multipliers]
    common = dict(
        channels=channels,
        num_res_blocks=self.num_res_blocks,
        temporal_downsample=tuple(self.temporal_downsample),
        mid_attention=self.mid_attention,
        attention_heads=self.attention_heads,
        num_groups=self.num_groups,
        residual_shortcuts=self.residual_shortcuts,
        remat=self.remat,
        dtype=self.dtype,
    )
    self.encoder = Encoder(latent_channels=self.latent_channels, **common)
    self.decoder = Decoder(**common)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.channel_multipliers) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temporal_downsample)

  def latent_frames(self, num_frames: int) -> int:
    return frame_counts(num_frames, self.temporal_downsample)[-1]

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, H, W, 3] in [-1, 1] -> (mean, logvar), each [B, T', H/f, W/f, C]."""
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"TAE.encode expects [B, T, H, W, 3] videos; got shape {x.shape}.")
    f = self.spatial_factor
    if x.shape[2] % f or x.shape[3] % f:
      raise ValueError(
          f"TAE needs height and width divisible by {f}; got "
          f"{x.shape[2]}x{x.shape[3]}. Resize or crop the input."
      )
    moments = self.encoder(x)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array, num_frames: int | None = None) -> jax.Array:
    """[B, T', h, w, C] -> [B, num_frames, h*f, w*f, 3]; default T' * temporal factor."""
    if num_frames is None:
      num_frames = z.shape[1] * self.temporal_factor
    return self.decoder(z, num_frames).astype(jnp.float32)

  def __call__(self, x: jax.Array, rng: jax.Array | None = None):
    """Reconstructs x; samples the posterior when `rng` is given, else uses the mean.

    Returns (reconstruction [B, T, H, W, 3], mean, logvar, latent).
    """
    mean, logvar = self.encode(x)
    latent = mean
    if rng is not None:
      latent = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decode(latent, x.shape[1]), mean, logvar, latent
