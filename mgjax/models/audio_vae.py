"""DAC-style audio VAE: waveforms [B, T, C] <-> latents [B, T / hop, latent_channels].

The Movie Gen audio model works on the latents of a "DAC-VAE": a 1D convolutional
autoencoder in the style of the Descript Audio Codec (DAC), with a Gaussian
bottleneck instead of DAC's residual vector quantiser. The paper's maps 48 kHz
audio to 25 latent frames per second of 128 channels (hop 1920).

Architecture (DAC, Kumar et al. 2023):

  encoder  conv k7 (C -> c0)
           per stride s_i:  3 residual units (dilations 1, 3, 9) at c_i,
                            Snake, stride-s_i conv (kernel 2 s_i) c_i -> c_{i+1}
           Snake, conv k3 -> 2 x latent_channels (mean, log-variance)
  decoder  conv k7 (latent -> d0)
           per stride (reversed):  Snake, transposed conv (kernel 2 s, stride s)
                                   d_i -> d_{i+1}, 3 residual units at d_{i+1}
           Snake, conv k7 -> C, tanh
  residual unit:  x + conv k1(Snake(conv k7, dilation d(Snake(x))))

Snake (x + sin^2(a x) / a, a learned per channel) is DAC's periodic activation, which
suits waveforms. Every conv is weight-normalised (weight = g v / |v|, as DAC does),
which keeps training stable without normalisation layers.

The strided and transposed convs are computed without strided convolution ops: a
stride-s conv with kernel 2s is a fold of s samples into channels ([B, T, C] ->
[B, T/s, sC]) followed by a 2-tap conv at the lower rate, and the transposed conv
is a 2-tap conv to s x channels followed by the inverse unfold (sub-pixel / phase
split). Both are exactly those linear maps (centred: output frame n of the
downsampler sees samples [n s - s/2, n s + 3s/2)), and run as dense matmuls.

`linear_bypass` (off in the paper config, on in `tiny`): one more stride-hop conv
from the waveform onto the latent mean and its transposed mirror from the latent
onto the decoder's output, beside the deep stacks. The shapes sound (steady tones)
has a good linear code (per frame, the cos/sin weights of each pitch), so the tiny
model starts from a linear codec and its deep path learns the rest, as the TAE's
residual shortcuts let the tiny TAE do.

Length arithmetic: `encode` zero-pads the end of a waveform to a whole number of
latent frames, so T samples give ceil(T / hop) frames; `decode` returns
T_latent x hop samples, or exactly `num_samples` (cropped from the end) when given,
so any length round-trips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgjax.models.layers import logical_init
from mgjax.parallel.sharding import constrain

LOGVAR_RANGE = (-30.0, 20.0)
# The posterior starts narrow (std e^-5 ~ 0.007): with log-variance 0 the sampling
# noise would swamp the young encoder's small means, and the decoder would learn to
# ignore the latent (posterior collapse) before the encoder learned anything.
LOGVAR_INIT = -10.0
RESIDUAL_INIT_SCALE = 0.1
OUTPUT_INIT_SCALE = 0.1
CONV_AXES = (None, "conv_in", "conv_out")
ACTIVATION_AXES = ("batch", "frames", "channels")


class Snake(nn.Module):
  """x + sin^2(alpha x) / alpha, alpha learned per channel (init 1)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, C]
    alpha = self.param(
        "alpha", logical_init(nn.initializers.ones, ("channels",)), (x.shape[-1],), jnp.float32
    ).astype(x.dtype)
    return x + jnp.square(jnp.sin(alpha * x)) / (alpha + 1e-9)


class Conv1D(nn.Module):
  """Weight-normalised 1D conv, "same" zero padding: [B, T, Cin] -> [B, T, F].

  With `valid=True` no padding is added: T - dilation (k - 1) outputs.
  """

  features: int
  kernel_size: int
  dilation: int = 1
  valid: bool = False
  weight_norm: bool = True
  init_scale: float = 1.0  # weight std relative to LeCun init (variance 1 / fan_in)
  bias_init: Callable = nn.initializers.zeros
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    init = nn.initializers.variance_scaling(self.init_scale**2, "fan_in", "truncated_normal")
    kernel = self.param(
        "kernel", logical_init(init, CONV_AXES), (k, cin, self.features), jnp.float32
    )  # [k, Cin, F]
    if self.weight_norm:
      # g starts at |v|, so the initial weight is v itself.
      scale = self.param(
          "scale",
          logical_init(
              lambda _, shape, dtype: jnp.linalg.norm(
                  kernel.reshape(-1, self.features), axis=0
              ).astype(dtype),
              ("conv_out",),
          ),
          (self.features,),
          jnp.float32,
      )
      norm = jnp.linalg.norm(kernel.reshape(-1, self.features), axis=0)  # [F]
      kernel = kernel * (scale / jnp.maximum(norm, 1e-12))
    bias = self.param(
        "bias", logical_init(self.bias_init, ("conv_out",)), (self.features,), jnp.float32
    )
    span = self.dilation * (k - 1)
    padding = [(0, 0)] if self.valid else [(span // 2, span - span // 2)]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        window_strides=(1,),
        padding=padding,
        rhs_dilation=(self.dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    return y + bias.astype(self.dtype)


class ResidualUnit(nn.Module):
  """x + conv k1(Snake(dilated conv k7(Snake(x)))): [B, T, C] -> [B, T, C].

  The branch's last conv starts at RESIDUAL_INIT_SCALE of the LeCun scale: with
  full-size branches the variance doubles per unit and a stack of 12-15 units
  saturates the output tanh before the first step.
  """

  dilation: int
  kernel_size: int = 7
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = Conv1D(
        c,
        self.kernel_size,
        self.dilation,
        weight_norm=self.weight_norm,
        dtype=self.dtype,
        name="conv_dilated",
    )(Snake(name="snake_0")(x))
    h = Conv1D(
        c,
        1,
        weight_norm=self.weight_norm,
        init_scale=RESIDUAL_INIT_SCALE,
        dtype=self.dtype,
        name="conv_1x1",
    )(Snake(name="snake_1")(h))
    return constrain(x + h, ACTIVATION_AXES)


class Downsample(nn.Module):
  """Stride-s conv with kernel 2s, centred: [B, T, C] -> [B, T / s, F] (T % s == 0)."""

  features: int
  stride: int
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, c = x.shape
    s = self.stride
    if t % s:
      raise ValueError(f"Downsample: {t} samples are not a multiple of the stride {s}.")
    x = jnp.pad(x, ((0, 0), (s // 2, s - s // 2), (0, 0)))  # [B, T + s, C]
    folded = x.reshape(b, t // s + 1, s * c)  # [B, T/s + 1, sC]
    return Conv1D(
        self.features, 2, valid=True, weight_norm=self.weight_norm, dtype=self.dtype, name="conv"
    )(
        folded
    )  # [B, T/s, F]


class Upsample(nn.Module):
  """Transposed conv, kernel 2s, stride s, centred: [B, N, C] -> [B, N s, F].

  The mirror of `Downsample`: frame boundaries between input frames j - 1 and j
  produce the s samples around j s - s/2.
  """

  features: int
  stride: int
  weight_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, _ = x.shape
    s = self.stride
    x = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))  # [B, N + 2, C]
    phases = Conv1D(
        s * self.features,
        2,
        valid=True,
        weight_norm=self.weight_norm,
        dtype=self.dtype,
        name="conv",
    )(
        x
    )  # [B, N + 1, sF]
    y = phases.reshape(b, (n + 1) * s, self.features)  # [B, (N + 1) s, F]
    return y[:, s // 2 : s // 2 + n * s]  # [B, N s, F]


class Encoder(nn.Module):
  channels: Sequence[int]  # len(strides) + 1: width at each rate, full rate first
  strides: Sequence[int]
  latent_channels: int
  dilations: Sequence[int] = (1, 3, 9)
  kernel_size: int = 7
  weight_norm: bool = True
  linear_bypass: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # x: [B, T, C_audio], T % prod(strides) == 0 -> moments [B, T / hop, 2 L]
    wn, dt = self.weight_norm, self.dtype
    h = Conv1D(self.channels[0], self.kernel_size, weight_norm=wn, dtype=dt, name="conv_in")(x)
    for level, stride in enumerate(self.strides):
      for i, dilation in enumerate(self.dilations):
        h = ResidualUnit(dilation, self.kernel_size, wn, dt, name=f"block_{level}_res_{i}")(h)
      h = Snake(name=f"block_{level}_snake")(h)
      h = Downsample(self.channels[level + 1], stride, wn, dt, name=f"block_{level}_down")(h)
    h = Snake(name="snake_out")(h)
    latent = self.latent_channels
    moments_bias = lambda _, shape, dtype: jnp.concatenate(
        [jnp.zeros((latent,), dtype), jnp.full((latent,), LOGVAR_INIT, dtype)]
    )
    moments = Conv1D(
        2 * latent, 3, weight_norm=wn, bias_init=moments_bias, dtype=dt, name="conv_out"
    )(h)
    if self.linear_bypass:  # onto the mean only; the log-variance is the deep path's
      mean, logvar = jnp.split(moments, 2, axis=-1)
      mean = mean + Downsample(
          self.latent_channels, math.prod(self.strides), wn, dt, name="bypass"
      )(x)
      moments = jnp.concatenate([mean, logvar], axis=-1)
    return moments


class Decoder(nn.Module):
  channels: Sequence[int]  # len(strides) + 1: width at each rate, latent rate first
  strides: Sequence[int]  # encoder order; applied reversed
  audio_channels: int
  dilations: Sequence[int] = (1, 3, 9)
  kernel_size: int = 7
  weight_norm: bool = True
  linear_bypass: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    # z: [B, N, L] -> waveform [B, N hop, C_audio] in (-1, 1)
    wn, dt = self.weight_norm, self.dtype
    h = Conv1D(self.channels[0], self.kernel_size, weight_norm=wn, dtype=dt, name="conv_in")(z)
    for level, stride in enumerate(reversed(self.strides)):
      h = Snake(name=f"block_{level}_snake")(h)
      h = Upsample(self.channels[level + 1], stride, wn, dt, name=f"block_{level}_up")(h)
      for i, dilation in enumerate(self.dilations):
        h = ResidualUnit(dilation, self.kernel_size, wn, dt, name=f"block_{level}_res_{i}")(h)
    h = Snake(name="snake_out")(h)
    # Small at init, so the untrained decoder outputs quiet noise, not a saturated tanh.
    out = Conv1D(
        self.audio_channels,
        self.kernel_size,
        weight_norm=wn,
        init_scale=OUTPUT_INIT_SCALE,
        dtype=dt,
        name="conv_out",
    )(h)
    if self.linear_bypass:
      out = out + Upsample(self.audio_channels, math.prod(self.strides), wn, dt, name="bypass")(z)
    return jnp.tanh(out.astype(jnp.float32))


class AudioVAE(nn.Module):
  """Waveform VAE; see the module docstring. Waveforms are float [-1, 1] [B, T, C]."""

  sample_rate: int
  strides: Sequence[int]
  encoder_channels: Sequence[int]  # len(strides) + 1, full rate first
  decoder_channels: Sequence[int]  # len(strides) + 1, latent rate first
  latent_channels: int
  audio_channels: int = 1
  dilations: Sequence[int] = (1, 3, 9)
  kernel_size: int = 7
  weight_norm: bool = True
  linear_bypass: bool = False  # see the module docstring
  dtype: jnp.dtype = jnp.float32

  @property
  def hop(self) -> int:
    """Waveform samples per latent frame."""
    return math.prod(self.strides)

  @property
  def latent_rate(self) -> float:
    """Latent frames per second."""
    return self.sample_rate / self.hop

  def latent_frames(self, num_samples: int) -> int:
    """ceil(num_samples / hop): encode zero-pads the last partial frame."""
    return -(-num_samples // self.hop)

  def setup(self):
    for name, widths in (
        ("encoder_channels", self.encoder_channels),
        ("decoder_channels", self.decoder_channels),
    ):
      if len(widths) != len(self.strides) + 1:
        raise ValueError(
            f"AudioVAE: {name} has {len(widths)} entries; it needs one per "
            f"rate, len(strides) + 1 = {len(self.strides) + 1}."
        )
    if any(s < 1 for s in self.strides):
      raise ValueError(f"AudioVAE: strides {tuple(self.strides)} must all be >= 1.")
    self.encoder = Encoder(
        self.encoder_channels,
        self.strides,
        self.latent_channels,
        self.dilations,
        self.kernel_size,
        self.weight_norm,
        self.linear_bypass,
        self.dtype,
    )
    self.decoder = Decoder(
        self.decoder_channels,
        self.strides,
        self.audio_channels,
        self.dilations,
        self.kernel_size,
        self.weight_norm,
        self.linear_bypass,
        self.dtype,
    )

  def encode(self, waveform: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, C] -> (mean, logvar), each [B, ceil(T / hop), latent_channels]."""
    if waveform.ndim != 3 or waveform.shape[-1] != self.audio_channels:
      raise ValueError(
          f"AudioVAE.encode takes waveforms [B, T, C={self.audio_channels}]; "
          f"got shape {waveform.shape}. Add the channel axis (x[..., None]) "
          "or convert the channel count (mgjax.data.audio.convert_channels)."
      )
    t = waveform.shape[1]
    padded = jnp.pad(waveform, ((0, 0), (0, self.latent_frames(t) * self.hop - t), (0, 0)))
    moments = self.encoder(padded).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latent: jax.Array, num_samples: int | None = None) -> jax.Array:
    """[B, N, latent_channels] -> [B, N hop, C], or [B, num_samples, C] when given."""
    if latent.ndim != 3 or latent.shape[-1] != self.latent_channels:
      raise ValueError(
          f"AudioVAE.decode takes latents [B, N, {self.latent_channels}]; got "
          f"shape {latent.shape}."
      )
    n = latent.shape[1]
    waveform = self.decoder(latent)  # [B, N hop, C]
    if num_samples is None:
      return waveform
    if not (n - 1) * self.hop < num_samples <= n * self.hop:
      raise ValueError(
          f"{n} latent frames cannot decode to {num_samples} samples; they "
          f"hold {(n - 1) * self.hop + 1} to {n * self.hop} (hop {self.hop})."
      )
    return waveform[:, :num_samples]

  def __call__(self, waveform: jax.Array, rng: jax.Array | None = None):
    """(reconstruction [B, T, C], mean, logvar, latent): the latent is a posterior
    sample when `rng` is given, else the mean."""
    mean, logvar = self.encode(waveform)
    latent = mean
    if rng is not None:
      latent = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(latent, waveform.shape[1]), mean, logvar, latent
