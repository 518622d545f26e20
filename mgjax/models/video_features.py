"""Per-frame video features for the audio model: frames [B, Tv, H, W, 3] -> [B, Tv, Fv].

Movie Gen Audio adds one feature vector per video frame to the audio tokens (after
frame-rate alignment, mgjax/models/audio_dit.py). The paper reads them off a large
pretrained image encoder; no weights can be loaded here, so this is a small
convolutional net that is trained jointly with the audio transformer (or frozen,
`trainable=False`, e.g. once its weights come from a trained run).

    frame uint8 [0, 255] or float [-1, 1] --> len(channels) x (3x3 conv stride 2,
    GroupNorm, SiLU) --> pool --> Dense --> LayerNorm --> [Fv]
    (temporal_kernel > 0: + a residual conv over time, kernel temporal_kernel)

`pooling`: "mean" over H, W (what the features are about, not where: a large
encoder's choice), or "flatten": the last grid whole, so the feature also says where
things are -- on the shapes clips a bounce is the frame where the shape touches the
frame's edge, which a position-free mean barely sees.

Each frame is encoded on its own, so a feature never depends on the clip's length
or on far-away frames. With `temporal_kernel` = k (odd) a feature also sees the k // 2
frames either side (zero-padded at the clip's ends): on the shapes clips the bounce
is the frame where the shape is nearest the wall, which only a comparison with the
neighbouring frames tells apart from the frames just before and after it.

`trainable=False` stops gradients at the output. The trainer then also keeps the
encoder's parameters out of the optimizer (its `frozen` tree); the stop-gradient
makes sure a frozen encoder is never updated even if they end up in the trained tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgjax.models.layers import logical_init

CONV_AXES = (None, None, "conv_in", "conv_out")
POOLINGS = ("mean", "flatten")


class VideoFeatureEncoder(nn.Module):
  """Tiny per-frame image encoder.

  Attributes:
    features: Fv, the width of each frame's feature vector.
    channels: conv widths, one stride-2 stage each (H and W halve per stage).
    num_groups: GroupNorm groups (capped at each stage's width).
    trainable: False: the output carries no gradient (a frozen encoder).
  """

  features: int = 64
  channels: Sequence[int] = (16, 32, 64)
  num_groups: int = 8
  trainable: bool = True
  pooling: str = "mean"
  temporal_kernel: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, section: Any) -> VideoFeatureEncoder:
    """Builds the encoder from a `config.video_encoder` section."""
    values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    keys = {
        "features",
        "channels",
        "num_groups",
        "trainable",
        "pooling",
        "temporal_kernel",
        "dtype",
    }
    unknown = set(values) - keys
    if unknown:
      raise ValueError(
          f"Unknown keys {sorted(unknown)} in video_encoder; the keys are "
          f"{', '.join(sorted(keys))}."
      )
    if values.get("pooling", "mean") not in POOLINGS:
      raise ValueError(f"video_encoder.pooling={values['pooling']!r}; use one of {POOLINGS}.")
    kernel = values.get("temporal_kernel", 0)
    if kernel < 0 or (kernel and kernel % 2 == 0):
      raise ValueError(f"video_encoder.temporal_kernel={kernel}; use 0 (off) or an odd size.")
    if "channels" in values:
      values["channels"] = tuple(values["channels"])
    if "dtype" in values:
      values["dtype"] = jnp.dtype(values["dtype"])
    return cls(**values)

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    """uint8 [0, 255] or float [-1, 1] frames [B, Tv, H, W, 3] -> float32 [B, Tv, Fv]."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(
          f"VideoFeatureEncoder expects RGB frames [B, Tv, H, W, 3]; got shape " f"{frames.shape}."
      )
    if not self.channels:
      raise ValueError("video_encoder.channels is empty; give at least one conv width.")
    b, tv, h, w, _ = frames.shape
    x = frames.reshape(b * tv, h, w, 3)  # every frame on its own
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.float32) / 127.5 - 1.0  # uint8 [0, 255] -> [-1, 1]
    x = x.astype(self.dtype)
    for i, width in enumerate(self.channels):
      x = nn.Conv(
          width,
          (3, 3),
          strides=2,
          padding="SAME",
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"conv_{i}",
          kernel_init=logical_init(nn.initializers.lecun_normal(), CONV_AXES),
          bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
      )(x)
      groups = min(self.num_groups, width)
      if width % groups:
        raise ValueError(
            f"video_encoder: conv width {width} is not divisible by "
            f"{groups} GroupNorm groups; change channels or num_groups."
        )
      x = nn.GroupNorm(
          num_groups=groups,
          epsilon=1e-6,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"norm_{i}",
          scale_init=logical_init(nn.initializers.ones, ("norm",)),
          bias_init=logical_init(nn.initializers.zeros, ("norm",)),
      )(x)
      x = nn.silu(x)  # [B * Tv, H / 2^(i+1), W / 2^(i+1), width]
    if self.pooling == "flatten":
      pooled = x.reshape(x.shape[0], -1)  # [B * Tv, H' W' C]
    else:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # [B * Tv, C]
    out = nn.Dense(
        self.features,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="out",
        kernel_init=logical_init(nn.initializers.lecun_normal(), ("conv_out", "video_feature")),
        bias_init=logical_init(nn.initializers.zeros, ("video_feature",)),
    )(pooled)
    out = nn.LayerNorm(
        epsilon=1e-6,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="out_norm",
        scale_init=logical_init(nn.initializers.ones, ("norm",)),
        bias_init=logical_init(nn.initializers.zeros, ("norm",)),
    )(out)
    out = out.reshape(b, tv, self.features)  # [B, Tv, Fv]
    if self.temporal_kernel:
      out = out + nn.Conv(
          self.features,
          (self.temporal_kernel,),
          padding="SAME",
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name="temporal",
          kernel_init=logical_init(nn.initializers.zeros, (None, "video_feature", "conv_out")),
          bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
      )(out)
    out = out.astype(jnp.float32)
    return out if self.trainable else jax.lax.stop_gradient(out)
