"""Building blocks of the video diffusion transformer (LLaMa3 block + conditioning).

One `DiTBlock` is a LLaMa3 decoder layer made bidirectional and conditioned:

    x = x + pos                                     positional embedding, every layer
    x = x + gate_a * SelfAttn(mod(RMSNorm(x), shift_a, scale_a))
    x = x + CrossAttn(RMSNorm(x), text)             not modulated
    x = x + gate_f * SwiGLU(mod(RMSNorm(x), shift_f, scale_f))

The six modulation vectors come from the flow time. Everything that could move x
at init is zero-initialised (the modulation, hence the gates, and the
cross-attention output), so a fresh block is the identity plus the positional
embedding, and a deep stack starts stable.

Tensors worth saving for the backward pass are tagged with `checkpoint_name` so a
remat policy (see `REMAT_POLICIES`) can keep them by name.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mgjax.models.layers import dense, logical_init
from mgjax.parallel import attention as mesh_attention
from mgjax.parallel.sharding import constrain

# Logical names of activations. The residual stream's "seq" is split over `context`
# (and `tensor` under sequence parallelism); inside attention and the MLP the tokens
# are "attn_seq" (`context` only), where `tensor` splits heads and MLP hidden units.
ACTIVATION_AXES = ("batch", "seq", "embed")
QKV_AXES = mesh_attention.QKV_AXES
TEXT_KV_AXES = mesh_attention.TEXT_KV_AXES
MLP_AXES = ("batch", "attn_seq", "mlp")

# How adaLN conditioning reaches each block:
#   "shared":    one Dense(silu(t_emb)) -> 6 x D for all blocks, plus a learned
#                [6, D] table per block (adaLN-single, PixArt-alpha). Costs 6D params
#                per block; at 30B size this is what keeps the model near 30B.
#   "per_block": each block owns a Dense(D -> 6D) on silu(t_emb) (DiT adaLN-Zero).
#                Costs 6 D^2 per block: +10.9B parameters at 30B size.
MODULATIONS = ("shared", "per_block")
NUM_MODULATION_VECTORS = 6

# Names the remat policies below can save; see `remat_policy`. Cross-attention's
# text K/V are [B, L, D] per layer, tiny next to the video tokens, so they are kept
# whenever the self-attention projections are.
QKV_NAMES = ("query_proj", "key_proj", "value_proj", "cross_key_proj", "cross_value_proj")
REMAT_POLICIES = {
    "none": None,  # no remat: keep every activation
    "full": "nothing",  # save only the block input; recompute the rest
    "save_dots": "dots",  # save weight matmul outputs (not attention scores)
    "save_qkv_proj": QKV_NAMES,
    "save_qkv_attention": QKV_NAMES + ("attention_out",),
    "save_attention_mlp": QKV_NAMES + ("attention_out", "mlp_hidden"),
}


def remat_policy(name: str):
  """The jax.checkpoint policy for a config's `remat_policy` name ("none" -> None)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {name!r}; use one of {sorted(REMAT_POLICIES)}.")
  spec = REMAT_POLICIES[name]
  if spec is None:
    return None
  if spec == "nothing":
    return jax.checkpoint_policies.nothing_saveable
  if spec == "dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return jax.checkpoint_policies.save_only_these_names(*spec)


def rms_norm(name: str, dtype, param_dtype, *, use_scale: bool = True) -> nn.RMSNorm:
  return nn.RMSNorm(
      epsilon=1e-6,
      dtype=dtype,
      param_dtype=param_dtype,
      use_scale=use_scale,
      scale_init=logical_init(nn.initializers.ones, ("norm",)),
      name=name,
  )


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x * (1 + scale) + shift, with per-example [B, D] vectors over [B, S, D] tokens."""
  return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of flow time t in [0, 1] -> [B, dim] (float32).

  t is scaled by 1000 first, so the frequencies span the range diffusion models
  were tuned for (integer timesteps 0..1000); raw t in [0, 1] would leave most
  channels nearly constant.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]  # [B, half]
  emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nn.Module):
  """t [B] -> sinusoid -> Dense -> SiLU -> Dense -> [B, D]."""

  features: int
  frequency_dim: int = 256
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = timestep_embedding(t, self.frequency_dim).astype(self.dtype)  # [B, F]
    emb = dense(
        self.features, ("freq", "embed"), "hidden", self.dtype, self.param_dtype, use_bias=True
    )(emb)
    return dense(
        self.features, ("mlp", "embed"), "out", self.dtype, self.param_dtype, use_bias=True
    )(
        nn.silu(emb)
    )  # [B, D]


class TextProjection(nn.Module):
  """One text encoder's embeddings [B, L, D_text] -> model width [B, L, D].

  Dense then LayerNorm, so encoders of different scale (UL2, CLIP, ByT5) arrive at
  the cross-attention on a common footing.
  """

  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, text: jax.Array) -> jax.Array:
    x = dense(
        self.features, ("vocab", "embed"), "dense", self.dtype, self.param_dtype, use_bias=True
    )(text.astype(self.dtype))
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        scale_init=logical_init(nn.initializers.ones, ("norm",)),
        bias_init=logical_init(nn.initializers.zeros, ("norm",)),
        name="norm",
    )(
        x
    )  # [B, L, D]


class Attention(nn.Module):
  """Multi-head attention (no GQA) with per-head RMSNorm on queries and keys.

  Self-attention when `context` is None; cross-attention to `context` otherwise.
  QK-norm bounds the attention logits, which keeps bf16 training of large video
  models from the logit growth that otherwise shows up as loss spikes. The kernel
  is `attention_implementation` (mgjax/kernels/attention: auto, xla, cudnn,
  pallas_gpu, pallas_tpu), run per device under a mesh; self-attention is
  context-parallel when the mesh splits the tokens (`context_attention`: "all_gather"
  or "ring", mgjax/parallel/attention.py).
  """

  num_heads: int
  qk_norm: bool = True
  zero_init_output: bool = False
  context_attention: str = "all_gather"
  attention_implementation: str = "auto"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, context: jax.Array | None = None, context_valid: jax.Array | None = None
  ) -> jax.Array:
    # x: [B, S, D]; context: [B, L, D] or None; context_valid: bool [B, L] or None.
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"Model width {d} is not divisible by {self.num_heads} heads.")
    heads = (self.num_heads, d // self.num_heads)
    cross = context is not None
    source = context if cross else x
    kv_axes = TEXT_KV_AXES if cross else QKV_AXES
    proj = lambda name: dense(heads, ("embed", "heads", "kv"), name, self.dtype, self.param_dtype)
    q = proj("query")(x)  # [B, S, N, Dh]
    k = proj("key")(source)  # [B, L, N, Dh]
    v = proj("value")(source)  # [B, L, N, Dh]
    if self.qk_norm:
      q = rms_norm("query_norm", self.dtype, self.param_dtype)(q)
      k = rms_norm("key_norm", self.dtype, self.param_dtype)(k)
    prefix = "cross_" if cross else ""
    q = checkpoint_name(constrain(q, QKV_AXES), prefix + "query_proj")
    k = checkpoint_name(constrain(k, kv_axes), prefix + "key_proj")
    v = checkpoint_name(constrain(v, kv_axes), prefix + "value_proj")
    if cross:
      out = mesh_attention.cross_attention(
          q, k, v, context_valid, implementation=self.attention_implementation
      )
    else:
      out = mesh_attention.self_attention(
          q, k, v, mode=self.context_attention, implementation=self.attention_implementation
      )  # [B, S, N, Dh]
    out = checkpoint_name(constrain(out, QKV_AXES), prefix + "attention_out")
    return dense(
        d,
        ("heads", "kv", "embed"),
        "out",
        self.dtype,
        self.param_dtype,
        zero=self.zero_init_output,
        num_inputs=2,
    )(
        out
    )  # [B, S, D]


class SwiGLU(nn.Module):
  """LLaMa feed-forward: W_out(silu(W_gate x) * W_up x), hidden width `mlp_dim`."""

  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, S, D]
    gate = dense(self.mlp_dim, ("embed", "mlp"), "gate", self.dtype, self.param_dtype)(x)
    up = dense(self.mlp_dim, ("embed", "mlp"), "up", self.dtype, self.param_dtype)(x)
    hidden = constrain(nn.silu(gate) * up, MLP_AXES)
    hidden = checkpoint_name(hidden, "mlp_hidden")  # [B, S, F]
    return dense(x.shape[-1], ("mlp", "embed"), "down", self.dtype, self.param_dtype)(hidden)


class DiTBlock(nn.Module):
  """One conditioned LLaMa3 layer; returns (x, None) so nn.scan can stack it.

  Call with x [B, S, D], pos [S, D], modulation (silu(t_emb) [B, D] for
  "per_block", shared [B, 6, D] for "shared"), text [B, L, D], text_valid
  bool [B, L].
  """

  num_heads: int
  mlp_dim: int
  modulation: str = "shared"
  qk_norm: bool = True
  context_attention: str = "all_gather"
  attention_implementation: str = "auto"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, modulation, text, text_valid):
    d = x.shape[-1]
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = constrain(x + pos.astype(x.dtype), ACTIVATION_AXES)  # [B, S, D]

    if self.modulation == "per_block":
      mod = dense(
          (NUM_MODULATION_VECTORS, d),
          ("embed", "modulation", "mlp"),
          "adaln",
          zero=True,
          use_bias=True,
          **common,
      )(
          modulation
      )  # [B, 6, D]
    elif self.modulation == "shared":
      table = self.param(
          "adaln_table",
          logical_init(nn.initializers.zeros, ("modulation", "embed")),
          (NUM_MODULATION_VECTORS, d),
          self.param_dtype,
      )
      mod = modulation + table.astype(modulation.dtype)  # [B, 6, D]
    else:
      raise ValueError(f"Unknown modulation {self.modulation!r}; use one of {MODULATIONS}.")
    mod = mod.astype(self.dtype)
    shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (
        mod[:, i] for i in range(NUM_MODULATION_VECTORS)
    )  # each [B, D]

    h = modulate(rms_norm("attention_norm", **common)(x), shift_a, scale_a)
    attention_kwargs = dict(attention_implementation=self.attention_implementation, **common)
    h = Attention(
        self.num_heads,
        self.qk_norm,
        context_attention=self.context_attention,
        name="self_attention",
        **attention_kwargs,
    )(h)
    x = x + gate_a[:, None] * h

    h = rms_norm("cross_attention_norm", **common)(x)
    x = x + Attention(
        self.num_heads,
        self.qk_norm,
        zero_init_output=True,
        name="cross_attention",
        **attention_kwargs,
    )(h, text, text_valid)

    h = modulate(rms_norm("mlp_norm", **common)(x), shift_f, scale_f)
    x = x + gate_f[:, None] * SwiGLU(self.mlp_dim, name="mlp", **common)(h)
    return constrain(x, ACTIVATION_AXES), None
