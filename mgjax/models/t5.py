"""T5-family text encoders (T5 v1.0, T5 v1.1, UL2, ByT5, mT5, UMT5).

Movie Gen conditions on frozen pretrained text encoders (UL2, ByT5, MetaCLIP); the
T5-family ones share one encoder architecture that differs only in a few switches:

    x = embed(ids)                                      no scaling, no positions
    per layer:
      x = x + Attn(RMSNorm(x), bias = relpos(buckets))  no 1/sqrt(d) logit scale
      x = x + FFN(RMSNorm(x))                           relu, or gated gelu/silu
    out = RMSNorm(x)

  - T5 v1.0:            FFN wi -> relu -> wo.
  - T5 v1.1/UL2/ByT5/mT5: gated FFN act(wi_0 x) * wi_1 x -> wo (gelu_new or silu).
  - All of the above share one relative-position bias table, owned by layer 0;
    UMT5 gives every layer its own (`per_layer_position_bias`).

`T5Encoder` reproduces transformers' `T5EncoderModel` / `UMT5EncoderModel`
`last_hidden_state` (parity tests in tests/test_t5.py). This module reads no
files: `mgjax.text.hf_import.load_t5_encoder` turns a directory written by their
`save_pretrained` (bare encoder or full seq2seq model) into a params tree for it.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgjax.models.attention import attention
from mgjax.models.layers import dense, logical_init

# transformers' ACT2FN names -> functions. "gelu_new" is the tanh approximation T5
# v1.1 was trained with; plain "gelu" is the exact erf form.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
DTYPES = ("float32", "bfloat16", "float16")
# model_type -> (per-layer relative bias, default feed_forward_proj) for the
# transformers configs this module understands.
HF_MODEL_TYPES = {"t5": (False, "relu"), "mt5": (False, "gated-gelu"), "umt5": (True, "gated-gelu")}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and flavour of a T5-family encoder.

  Attributes:
    per_layer_position_bias: False for T5/UL2/ByT5/mT5 (one bias table, owned by
      layer 0 and reused by every layer); True for UMT5 (one table per layer).
    dtype: compute dtype of the matmuls; parameters and the residual stream stay
      float32.
  """

  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dense_act_fn: str = "relu"
  is_gated_act: bool = False
  layer_norm_epsilon: float = 1e-6
  per_layer_position_bias: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
      value = getattr(self, key)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"T5Config.{key} must be a positive int; got {value!r}.")
    buckets = self.relative_attention_num_buckets
    if buckets < 4 or buckets % 2:
      raise ValueError(
          f"T5Config.relative_attention_num_buckets must be even and >= 4 (half "
          f"per direction, half of those exact); got {buckets}."
      )
    if self.relative_attention_max_distance <= buckets // 4:
      raise ValueError(
          f"T5Config.relative_attention_max_distance must exceed "
          f"relative_attention_num_buckets // 4 = {buckets // 4}; got "
          f"{self.relative_attention_max_distance}."
      )
    if self.dense_act_fn not in ACTIVATIONS:
      raise ValueError(
          f"T5Config.dense_act_fn {self.dense_act_fn!r} is not supported; use one "
          f"of {sorted(ACTIVATIONS)}."
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"T5Config.dtype {self.dtype!r} is not supported; use one of {DTYPES}.")

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> T5Config:
    """The config of a transformers T5/mT5/UMT5 config.json dict.

    The FFN flavour comes from `feed_forward_proj` ("relu", "gated-gelu",
    "gated-silu", ...), as transformers derives it; "gated-gelu" means gelu_new.
    """
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
      raise ValueError(
          f"config.json model_type {model_type!r} is not a T5-family encoder; "
          f"supported: {sorted(HF_MODEL_TYPES)}."
      )
    per_layer_bias, default_proj = HF_MODEL_TYPES[model_type]

    def required(key):
      if key not in hf:
        raise ValueError(f"config.json of model_type {model_type!r} has no {key!r}.")
      return hf[key]

    proj = hf.get("feed_forward_proj", default_proj)
    parts = proj.split("-") if isinstance(proj, str) else []
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(
          f"config.json feed_forward_proj {proj!r} is not of the form " f"'ACT' or 'gated-ACT'."
      )
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in ACTIVATIONS:
      raise ValueError(
          f"config.json feed_forward_proj {proj!r}: activation {act!r} is not "
          f"supported; use one of {sorted(ACTIVATIONS)}."
      )
    return cls(
        vocab_size=required("vocab_size"),
        d_model=required("d_model"),
        d_kv=required("d_kv"),
        d_ff=required("d_ff"),
        num_layers=required("num_layers"),
        num_heads=required("num_heads"),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dense_act_fn=act,
        is_gated_act=len(parts) == 2,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        per_layer_position_bias=per_layer_bias,
        dtype=dtype,
    )


def relative_position_bucket(
    relative_position: np.ndarray, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bidirectional T5 bucket of each relative position (key index - query index).

  Half the buckets are for keys after the query, half for keys before it. Within a
  direction, the first half are exact distances 0..max_exact-1; the rest cover
  max_exact..max_distance logarithmically, and everything farther shares the last.
  Computed in float32 like Mesh TensorFlow and transformers so bucket edges agree.

  Args:
    relative_position: int array, any shape.
  Returns:
    int32 array of the same shape, values in [0, num_buckets).
  """
  relative_position = np.asarray(relative_position, np.int64)
  per_direction = num_buckets // 2
  max_exact = per_direction // 2
  direction = np.where(relative_position > 0, per_direction, 0)
  distance = np.abs(relative_position)
  # Clamped to max_exact so the log never sees 0; those entries take the exact branch.
  ratio = np.maximum(distance, max_exact).astype(np.float32) / np.float32(max_exact)
  log_fraction = np.log(ratio) / np.float32(math.log(max_distance / max_exact))
  far = max_exact + (log_fraction * np.float32(per_direction - max_exact)).astype(np.int64)
  far = np.minimum(far, per_direction - 1)
  return (direction + np.where(distance < max_exact, distance, far)).astype(np.int32)


class T5LayerNorm(nn.Module):
  """x / rms(x) * scale: no mean subtraction, no bias, statistics in float32.

  T5's RMS norm; computing it in float32 keeps bf16 encoders from drifting.
  """

  epsilon: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D]
    scale = self.param(
        "scale", logical_init(nn.initializers.ones, ("norm",)), (x.shape[-1],), jnp.float32
    )
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(variance + self.epsilon) * scale).astype(self.dtype)


class RelativePositionBias(nn.Module):
  """Learned per-head logit bias for each relative-position bucket: [1, N, L, L]."""

  config: T5Config

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    cfg = self.config
    table = self.param(
        "embedding",
        logical_init(nn.initializers.normal(cfg.d_model**-0.5), ("relpos_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads),
        jnp.float32,
    )  # [buckets, N]
    # Positions are static, so the bucket map is a host constant, not traced work.
    positions = np.arange(length)
    buckets = relative_position_bucket(
        positions[None, :] - positions[:, None],
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
    )  # [Q, K]
    bias = jnp.take(table, jnp.asarray(buckets), axis=0)  # [Q, K, N]
    return jnp.transpose(bias, (2, 0, 1))[None]  # [1, N, Q, K]


class T5SelfAttention(nn.Module):
  """Multi-head self-attention with an additive position bias and unscaled logits.

  T5 folds the 1/sqrt(d_kv) into its query initialisation, so logits use scale 1.
  """

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads = (cfg.num_heads, cfg.d_kv)
    q = dense(heads, ("embed", "heads", "kv"), "query", dtype, jnp.float32)(x)  # [B, L, N, Dk]
    k = dense(heads, ("embed", "heads", "kv"), "key", dtype, jnp.float32)(x)
    v = dense(heads, ("embed", "heads", "kv"), "value", dtype, jnp.float32)(x)
    out = attention(q, k, v, mask=mask[:, None, None, :], bias=bias, scale=1.0)  # [B, L, N, Dk]
    return dense(cfg.d_model, ("heads", "kv", "embed"), "out", dtype, jnp.float32, num_inputs=2)(
        out
    )  # [B, L, D]


class T5FeedForward(nn.Module):
  """wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) for the gated (v1.1 and later) models."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D]
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    act = ACTIVATIONS[cfg.dense_act_fn]
    if cfg.is_gated_act:
      h = act(dense(cfg.d_ff, ("embed", "mlp"), "wi_0", dtype, jnp.float32)(x)) * dense(
          cfg.d_ff, ("embed", "mlp"), "wi_1", dtype, jnp.float32
      )(x)
    else:
      h = act(dense(cfg.d_ff, ("embed", "mlp"), "wi", dtype, jnp.float32)(x))  # [B, L, F]
    return dense(cfg.d_model, ("mlp", "embed"), "wo", dtype, jnp.float32)(h)  # [B, L, D]


class T5Layer(nn.Module):
  """Pre-norm residual block: self-attention, then feed-forward.

  Takes the shared position bias from the encoder, or (UMT5) computes its own.
  """

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if bias is None:
      bias = RelativePositionBias(cfg, name="relpos_bias")(x.shape[1])
    h = T5LayerNorm(cfg.layer_norm_epsilon, dtype, name="attn_norm")(x)
    x = x + T5SelfAttention(cfg, name="attn")(h, mask, bias).astype(jnp.float32)
    h = T5LayerNorm(cfg.layer_norm_epsilon, dtype, name="mlp_norm")(x)
    return x + T5FeedForward(cfg, name="mlp")(h).astype(jnp.float32)


class T5Encoder(nn.Module):
  """ids [B, L] int32, mask [B, L] bool -> final-normed hidden states [B, L, d_model].

  Padding (mask False) is hidden from every key; padded query rows still get
  values, which callers should ignore. The residual stream is float32; the output
  is in config.dtype.
  """

  config: T5Config

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    x = nn.Embed(
        cfg.vocab_size,
        cfg.d_model,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        embedding_init=logical_init(nn.initializers.normal(1.0), ("vocab", "embed")),
        name="token_embed",
    )(
        ids
    )  # [B, L, D]
    mask = mask.astype(bool)
    shared_bias = None
    if not cfg.per_layer_position_bias:
      shared_bias = RelativePositionBias(cfg, name="relpos_bias")(ids.shape[1])  # [1, N, L, L]
    for i in range(cfg.num_layers):
      x = T5Layer(cfg, name=f"layer_{i}")(x, mask, shared_bias)
    return T5LayerNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="final_norm")(x)
