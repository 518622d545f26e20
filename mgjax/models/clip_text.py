"""The CLIP text transformer (OpenAI CLIP / MetaCLIP text tower) in Flax Linen.

Movie Gen conditions its video model on, among others, a MetaCLIP text encoder
whose context is stretched from CLIP's 77 tokens to 256 so that long prompts are
not truncated. This module provides

  * `CLIPTextConfig`: the tower's hyper-parameters, read from a transformers
    config.json (a `CLIPTextModel` one or a full `CLIPModel` one);
  * `CLIPTextEncoder`: the network, numerically matching transformers'
    `CLIPTextModel` (last_hidden_state and pooler_output);
  * `extend_positions`: grows the learned position table (77 -> 256) without
    changing what the encoder computes for prompts that fit the old table.

This module reads no files: `mgjax.text.hf_import.load_clip_text` imports the
weights of a Hugging Face-format directory. Its transformer block
(`CLIPEncoderLayer`, with `CLIPAttention` and `CLIPMLP`) is shared with the CLIP
vision tower (mgjax/models/clip_vision.py): both towers use the same pre-LN block,
and only the text tower masks its attention.

The network, one pre-LN block per layer:

    x = token_embedding[ids] + position_embedding[:L]
    x = x + OutProj(Attention(LN1(x)))          causal and padding-masked
    x = x + FC2(act(FC1(LN2(x))))               act: quick_gelu for CLIP
    last_hidden = LN_final(x)
    pooled = last_hidden[EOS position]

Every parameter carries logical axis names so the encoder shards like the rest of
mgjax; parameters are float32 and the compute dtype is `config.dtype`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgjax.models.attention import attention
from mgjax.models.layers import dense, logical_init

if TYPE_CHECKING:  # the vision tower imports this module; only type checkers go back
  from mgjax.models.clip_vision import CLIPVisionConfig

ACTIVATIONS = {
    # OpenAI's cheap sigmoid approximation of GELU, used by CLIP and MetaCLIP.
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}

# transformers: before its PR #24773 CLIP configs said eos_token_id=2, and the
# EOS was found as the largest id in the row (it is the largest in CLIP's BPE
# vocabulary). transformers keeps that rule for such configs; so do we.
LEGACY_EOS_TOKEN_ID = 2

# Long-CLIP (Zhang et al., 2024) found only CLIP's first ~20 positions well
# trained; `extend_positions` stretches the rows after them into the new rows.
LONG_CLIP_KEPT_ROWS = 20

# transformers' CLIPTextConfig defaults, for keys a config.json leaves out.
_HF_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Hyper-parameters of a CLIP text tower (names follow mgjax, not transformers)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  max_position_embeddings: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407
  dtype: str = "float32"  # compute dtype; parameters stay float32

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
          f"Unsupported hidden_act {self.hidden_act!r}; CLIPTextEncoder "
          f"supports {sorted(ACTIVATIONS)}."
      )
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads "
          f"(num_attention_heads) {self.num_heads}."
      )
    if self.max_position_embeddings < 1:
      raise ValueError(
          f"max_position_embeddings must be positive; got " f"{self.max_position_embeddings}."
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> CLIPTextConfig:
    """From a transformers config.json dict: a CLIPTextConfig, or a CLIPModel config
    (whose "text_config" is used). Keys it leaves out take transformers' defaults."""
    text = hf.get("text_config") or hf.get("text_config_dict") or hf
    values = {**_HF_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    eos = values["eos_token_id"]
    if isinstance(eos, (list, tuple)):
      if len(eos) != 1:
        raise ValueError(
            f"Unsupported eos_token_id {eos!r} in config.json: CLIP pools at " f"one EOS token id."
        )
      eos = eos[0]
    if not isinstance(eos, int):
      raise ValueError(f"Unsupported eos_token_id {eos!r} in config.json; expected an int.")
    if values["hidden_act"] not in ACTIVATIONS:
      raise ValueError(
          f"Unsupported hidden_act {values['hidden_act']!r} in config.json; "
          f"CLIPTextEncoder supports {sorted(ACTIVATIONS)}."
      )
    return cls(
        vocab_size=int(values["vocab_size"]),
        hidden_size=int(values["hidden_size"]),
        intermediate_size=int(values["intermediate_size"]),
        num_layers=int(values["num_hidden_layers"]),
        num_heads=int(values["num_attention_heads"]),
        max_position_embeddings=int(values["max_position_embeddings"]),
        hidden_act=values["hidden_act"],
        layer_norm_eps=float(values["layer_norm_eps"]),
        eos_token_id=eos,
        dtype=dtype,
    )


def layer_norm(config: CLIPTextConfig | CLIPVisionConfig, name: str) -> nn.LayerNorm:
  """A CLIP LayerNorm: scale and bias in float32, computed in `config.dtype`."""
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps,
      dtype=jnp.dtype(config.dtype),
      param_dtype=jnp.float32,
      scale_init=logical_init(nn.initializers.ones, ("norm",)),
      bias_init=logical_init(nn.initializers.zeros, ("norm",)),
      name=name,
  )


class CLIPTextEmbeddings(nn.Module):
  """Token embedding plus a learned absolute position embedding.

  The position table has `max_position_embeddings` rows and a row per position
  is all the model knows about order beyond the causal mask, so a longer input
  is refused here rather than silently reading past the table.
  """

  config: CLIPTextConfig

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:  # ids [B, L] -> [B, L, D]
    cfg = self.config
    length = ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(
          f"CLIPTextEncoder got {length} tokens but max_position_embeddings is "
          f"{cfg.max_position_embeddings}; truncate the prompt or grow the position table "
          f"with extend_positions(params, config, {length}) (or "
          f"mgjax.text.hf_import.load_clip_text(directory, max_length={length}))."
      )
    init = nn.initializers.normal(0.02)
    tokens = nn.Embed(
        cfg.vocab_size,
        cfg.hidden_size,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.float32,
        embedding_init=logical_init(init, ("vocab", "embed")),
        name="token_embedding",
    )(
        ids
    )  # [B, L, D]
    table = self.param(
        "position_embedding",
        logical_init(init, ("text_pos", "embed")),
        (cfg.max_position_embeddings, cfg.hidden_size),
        jnp.float32,
    )  # [P, D]
    return tokens + table[:length].astype(tokens.dtype)[None]  # [B, L, D]


class CLIPAttention(nn.Module):
  """Multi-head self-attention with biased q/k/v/out projections (as in CLIP).

  `config` is a `CLIPTextConfig` or a `clip_vision.CLIPVisionConfig`.
  """

  config: CLIPTextConfig | CLIPVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    # x: [B, L, D]; mask: bool [B, 1, L, L], True where a query may attend to a key;
    # None attends everywhere (the vision tower).
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads = (cfg.num_heads, cfg.head_dim)
    proj = lambda name: dense(
        heads, ("embed", "heads", "kv"), name, dtype, jnp.float32, use_bias=True
    )
    q = proj("q_proj")(x)  # [B, L, N, Dh]
    k = proj("k_proj")(x)  # [B, L, N, Dh]
    v = proj("v_proj")(x)  # [B, L, N, Dh]
    out = attention(q, k, v, mask=mask)  # [B, L, N, Dh], scale 1/sqrt(Dh) as in CLIP
    return dense(
        cfg.hidden_size,
        ("heads", "kv", "embed"),
        "out_proj",
        dtype,
        jnp.float32,
        use_bias=True,
        num_inputs=2,
    )(
        out
    )  # [B, L, D]


class CLIPMLP(nn.Module):
  """fc2(act(fc1(x))): the two-layer feed-forward of every CLIP block.

  `config` is a `CLIPTextConfig` or a `clip_vision.CLIPVisionConfig`.
  """

  config: CLIPTextConfig | CLIPVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D]
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = dense(cfg.intermediate_size, ("embed", "mlp"), "fc1", dtype, jnp.float32, use_bias=True)(
        x
    )  # [B, L, F]
    h = ACTIVATIONS[cfg.hidden_act](h)
    return dense(cfg.hidden_size, ("mlp", "embed"), "fc2", dtype, jnp.float32, use_bias=True)(
        h
    )  # [B, L, D]


class CLIPEncoderLayer(nn.Module):
  """One pre-LN transformer block: x + Attn(LN1(x)), then x + MLP(LN2(x)).

  Shared by both CLIP towers: `config` is a `CLIPTextConfig` or a
  `clip_vision.CLIPVisionConfig`.
  """

  config: CLIPTextConfig | CLIPVisionConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    # x: [B, L, D]; mask: bool [B, 1, L, L], or None for full bidirectional attention
    x = x + CLIPAttention(self.config, name="self_attn")(
        layer_norm(self.config, "layer_norm1")(x), mask
    )
    return x + CLIPMLP(self.config, name="mlp")(layer_norm(self.config, "layer_norm2")(x))


def eos_positions(ids: jax.Array, eos_token_id: int) -> jax.Array:
  """Where each row's pooled feature is read: ids [B, L] -> [B] int.

  transformers' rule, kept so pooled outputs match it: the first position holding
  `eos_token_id`, except for legacy configs (eos_token_id == 2), where it is the
  position of the largest id (CLIP's EOS is the last entry of its vocabulary).
  A row without an EOS pools position 0, as in transformers.
  """
  if eos_token_id == LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(ids, axis=-1)
  return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextEncoder(nn.Module):
  """CLIP text tower: (ids [B, L] int32, mask [B, L] bool) -> (last_hidden [B, L, D],
  pooled [B, D]).

  Outputs match transformers' `CLIPTextModel` last_hidden_state (after the final
  LayerNorm) and pooler_output. Attention is causal, as CLIP was trained, and
  additionally ignores keys where `mask` is False; with right padding (CLIP's
  tokenizers pad on the right) real tokens never see a pad, so their outputs do
  not depend on how much padding a batch carries. Outputs at pad positions are
  whatever the network computes there, as in transformers; callers mask them.
  """

  config: CLIPTextConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    length = ids.shape[1]
    x = CLIPTextEmbeddings(cfg, name="embeddings")(ids)  # [B, L, D]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))  # [L, L], query x key
    attend = causal[None, None] & mask.astype(bool)[:, None, None, :]  # [B, 1, L, L]
    for i in range(cfg.num_layers):
      x = CLIPEncoderLayer(cfg, name=f"layers_{i}")(x, attend)
    last_hidden = layer_norm(cfg, "final_layer_norm")(x)  # [B, L, D]
    pooled = last_hidden[jnp.arange(ids.shape[0]), eos_positions(ids, cfg.eos_token_id)]
    return last_hidden, pooled  # [B, L, D], [B, D]


def extend_positions(
    params, config: CLIPTextConfig, new_length: int, kept_rows: int = LONG_CLIP_KEPT_ROWS
) -> tuple[dict, CLIPTextConfig]:
  """Grows the position table to `new_length` rows; returns (params, config).

  Rows [0, old) are kept bit for bit, so every prompt that fitted before (<= old
  tokens) is encoded exactly as before: extending can never hurt the model on
  what it was trained on, and fine-tuning starts from the pretrained encoder.

  The new rows [old, new_length) are the table's tail, rows [kept_rows, old),
  stretched by linear interpolation to fill them. This follows Long-CLIP, which
  keeps CLIP's first ~20 (well-trained) rows and interpolates the rest: an
  interpolated row lies between two learned rows, so it has the norm and
  statistics the network expects (unlike random or extrapolated rows) and
  neighbouring new positions stay similar to each other, as learned ones are.
  Long-CLIP rewrites rows [kept_rows, old) in place; we cannot without changing
  short prompts, so the stretched copy goes after them instead, and the head
  rows, which carry position-specific behaviour (the start token at 0, the
  first words), are never reused for far positions. The price: a far position
  starts out looking like a mid-prompt one (position 100 of 256 resembles ~27
  of 77); the causal mask still orders tokens, and fine-tuning on long prompts
  pulls the new rows apart, as it does in Long-CLIP.

  Only grows: `new_length` below the current length raises, equal returns the
  inputs unchanged. Works on plain or logically boxed parameter trees.
  """
  old = config.max_position_embeddings
  if new_length < old:
    raise ValueError(
        f"extend_positions only grows the position table: new_length "
        f"{new_length} < max_position_embeddings {old}."
    )
  if new_length == old:
    return params, config
  params = _mutable_copy(params)
  boxed = params["embeddings"]["position_embedding"]
  table = np.asarray(nn.unbox(boxed), dtype=np.float32)  # [old, D]
  start = kept_rows if old - 1 > kept_rows else 0
  source = np.linspace(start, old - 1, new_length - old)  # fractional rows of the tail
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, old - 1)
  frac = (source - lower)[:, None].astype(np.float32)
  new_rows = (1.0 - frac) * table[lower] + frac * table[upper]  # [new - old, D]
  grown = jnp.asarray(np.concatenate([table, new_rows], axis=0))  # [new, D]
  params["embeddings"]["position_embedding"] = (
      boxed.replace_boxed(grown) if isinstance(boxed, nn.meta.AxisMetadata) else grown
  )
  return params, dataclasses.replace(config, max_position_embeddings=new_length)


def _mutable_copy(tree):
  """A copy of a (possibly frozen) nested parameter dict whose dicts can be edited."""
  if isinstance(tree, Mapping):
    return {k: _mutable_copy(v) for k, v in tree.items()}
  return tree
