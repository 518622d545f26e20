"""LPIPS-style perceptual distance for the temporal autoencoder.

Pixel losses treat every error alike; a perceptual distance compares images in
the feature space of a conv network, where texture and structure matter more
than exact pixel values. The computation follows LPIPS (Zhang et al. 2018):
features from several conv stages are unit-normalised along channels at every
position, their squared difference is weighted per channel by a 1x1 "lin" conv,
averaged over space and summed over stages.

No pretrained network can be downloaded in this project, so the weights are
whatever the caller supplies: random initialisation by default, or arrays the
caller loaded (`mgjax/tasks/perceptual_weights.py` reads and writes them as `.npz`;
this module does no file I/O).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV2D_KERNEL_AXES = (None, None, "conv_in", "conv_out")
BIAS_AXES = ("conv_out",)

# Added under the square root when unit-normalising features. Small enough not
# to change non-degenerate features, large enough that an all-zero feature
# vector gets a finite gradient instead of 0 / 0.
FEATURE_NORM_EPS = 1e-10

Params = Any


def unit_normalize_channels(features: jax.Array) -> jax.Array:
  """Scales every feature vector `[..., C]` to unit L2 norm along channels."""
  squared_norm = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  return features * jax.lax.rsqrt(squared_norm + FEATURE_NORM_EPS)


class PerceptualStage(nn.Module):
  """One feature stage: 3x3 conv (stride 2 after the first stage) + LeakyReLU."""

  features: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
        features=self.features,
        kernel_size=(3, 3),
        strides=(self.stride, self.stride),
        padding="SAME",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), CONV2D_KERNEL_AXES
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), BIAS_AXES),
        name="conv",
    )(
        x
    )  # [N, H / stride, W / stride, features]
    return nn.leaky_relu(x, 0.2)


class PerceptualNetwork(nn.Module):
  """Frames `x, y` `[N, H, W, 3]` in [-1, 1] -> perceptual distance `[N]`.

  Attributes:
    stage_channels: output features of each stage; every stage after the first
      halves the resolution.
    use_linear_weights: weight each stage's per-channel squared differences with
      a learned 1x1 conv (LPIPS "lin" layers, initialised to ones so the default
      is the plain channel sum). Keep these weights non-negative when training
      them, as LPIPS does, so the distance stays non-negative.
  """

  stage_channels: Sequence[int] = (32, 64, 128)
  use_linear_weights: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4:
      raise ValueError(
          f"expected two frame batches [N, H, W, C] of equal shape, got {x.shape} and {y.shape}"
      )
    num_frames = x.shape[0]
    # One pass over both inputs so each conv runs once.
    h = jnp.concatenate([x, y], axis=0)  # [2N, H, W, 3]
    distance = jnp.zeros((num_frames,), h.dtype)
    for i, features in enumerate(self.stage_channels):
      h = PerceptualStage(features, stride=1 if i == 0 else 2, name=f"stage_{i}")(
          h
      )  # [2N, H_i, W_i, C_i]
      normalized = unit_normalize_channels(h)
      squared_diff = jnp.square(
          normalized[:num_frames] - normalized[num_frames:]
      )  # [N, H_i, W_i, C_i]
      if self.use_linear_weights:
        per_position = nn.Conv(
            features=1,
            kernel_size=(1, 1),
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.ones_init(), CONV2D_KERNEL_AXES
            ),
            name=f"lin_{i}",
        )(squared_diff)[
            ..., 0
        ]  # [N, H_i, W_i]
      else:
        per_position = jnp.sum(squared_diff, axis=-1)  # [N, H_i, W_i]
      distance = distance + jnp.mean(per_position, axis=(1, 2))  # [N]
    return distance


def perceptual_distance(
    apply_fn_or_module: nn.Module | Callable[..., jax.Array],
    params: Params,
    x: jax.Array,
    y: jax.Array,
) -> jax.Array:
  """Perceptual distance per example, videos `[B, T, H, W, 3]` (or images `[B, H, W, 3]`) -> `[B]`.

  Frames are scored independently (T is folded into the batch) and the frame
  distances are averaged over T. `apply_fn_or_module` is a `PerceptualNetwork`
  (or any module with the same call signature), or its `apply` function;
  `params` is its "params" collection, e.g. from
  `mgjax.tasks.perceptual_weights.load_perceptual_params`.
  """
  apply_fn = (
      apply_fn_or_module.apply if isinstance(apply_fn_or_module, nn.Module) else apply_fn_or_module
  )
  if x.shape != y.shape:
    raise ValueError(
        f"perceptual_distance inputs must have equal shapes, got {x.shape} and {y.shape}"
    )
  if x.ndim == 4:
    x, y = x[:, None], y[:, None]
  if x.ndim != 5:
    raise ValueError(f"expected videos [B, T, H, W, C] or images [B, H, W, C], got shape {x.shape}")
  batch, frames = x.shape[:2]
  frames_x = x.reshape((batch * frames,) + x.shape[2:])  # [B*T, H, W, C]
  frames_y = y.reshape((batch * frames,) + y.shape[2:])  # [B*T, H, W, C]
  per_frame = apply_fn({"params": params}, frames_x, frames_y)  # [B*T]
  return per_frame.reshape(batch, frames).mean(axis=1)  # [B]


def default_perceptual_template() -> Params:
  """Abstract (shape/dtype only) params of the default `PerceptualNetwork`."""
  frames = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(PerceptualNetwork().init, jax.random.key(0), frames, frames)
  return variables["params"]
