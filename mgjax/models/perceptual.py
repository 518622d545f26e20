"""LPIPS-style perceptual distance for the temporal autoencoder.

Pixel losses treat every error alike; a perceptual distance compares images in
the feature space of a conv network, where texture and structure matter more
than exact pixel values. The computation follows LPIPS (Zhang et al. 2018):
features from several conv stages are unit-normalised along channels at every
position, their squared difference is weighted per channel by a 1x1 "lin" conv,
averaged over space and summed over stages.

No pretrained network can be downloaded in this project, so the weights are
whatever the caller supplies: random initialisation by default, or arrays
loaded from an `.npz` file with `load_perceptual_params` (keys are the flattened
parameter paths, e.g. "stage_0/conv/kernel", "lin_0/kernel").
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

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
  `params` is its "params" collection, e.g. from `load_perceptual_params`.
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


def _flatten(params: Params) -> dict[str, Any]:
  """Param tree -> {"stage_0/conv/kernel": leaf}, with partitioning boxes removed."""
  # Take `.value` rather than `nn.meta.unbox`, which would add sharding
  # constraints when called under a mesh; here only the raw values matter.
  unboxed = jax.tree.map(
      lambda leaf: leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf,
      params,
      is_leaf=lambda leaf: isinstance(leaf, nn.meta.AxisMetadata),
  )
  return traverse_util.flatten_dict(unboxed, sep="/")


def save_perceptual_params(path: str, params: Params) -> None:
  """Writes a param tree to `.npz` under the flattened key names `load_perceptual_params` reads."""
  np.savez(path, **{key: np.asarray(value) for key, value in _flatten(params).items()})


def default_perceptual_template() -> Params:
  """Abstract (shape/dtype only) params of the default `PerceptualNetwork`."""
  frames = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(PerceptualNetwork().init, jax.random.key(0), frames, frames)
  return variables["params"]


def load_perceptual_params(path: str, template: Params | None = None) -> Params:
  """Reads an `.npz` of weights into a param tree shaped like `template`.

  `template` is a params tree of the network the weights are for (arrays or
  `jax.ShapeDtypeStruct`s, boxed or not, e.g. `jax.eval_shape(net.init, ...)["params"]`);
  it defaults to the default `PerceptualNetwork`. The file must hold exactly
  the template's flattened keys with matching shapes; otherwise a ValueError
  names the file and every missing key, unexpected key and shape mismatch.
  Returns plain (unboxed) arrays cast to the template's dtypes.
  """
  if template is None:
    template = default_perceptual_template()
  expected = _flatten(template)
  with np.load(path) as archive:
    stored = {key: archive[key] for key in archive.files}

  problems = []
  missing = sorted(set(expected) - set(stored))
  unexpected = sorted(set(stored) - set(expected))
  if missing:
    problems.append(f"missing keys: {missing}")
  if unexpected:
    problems.append(f"unexpected keys: {unexpected}")
  for key in sorted(set(expected) & set(stored)):
    if tuple(stored[key].shape) != tuple(expected[key].shape):
      problems.append(
          f"shape mismatch for {key!r}: file has {tuple(stored[key].shape)}, "
          f"network expects {tuple(expected[key].shape)}"
      )
  if problems:
    raise ValueError(f"cannot load perceptual params from {path}: " + "; ".join(problems))

  loaded = {key: jnp.asarray(stored[key], dtype=expected[key].dtype) for key in expected}
  return traverse_util.unflatten_dict(loaded, sep="/")
