"""Attention on a device mesh: each device runs the kernel on its own shard.

The attention kernels (mgjax/kernels/attention) are per-device programs; GSPMD
cannot split a Pallas call, and would gather its inputs onto every device. So under
a mesh both attentions of the DiT run inside a `shard_map` whose specs come from
the logical rules: batch over (data, fsdp), heads over tensor, tokens over context.

Self-attention with the tokens split over `context` (context parallelism) needs
the rest of the sequence:

* "all_gather" (Movie Gen's choice): K and V are all-gathered along the sequence,
  each device attends its S / c queries to all S keys, and the backward pass turns
  the gather into a reduce-scatter of dK and dV. A device holds the full K and V of
  one layer, never the S x S scores of more than its queries.
* "ring": K and V blocks travel around the ring (`ppermute`, c - 1 hops) and each
  device merges the partial results of its queries over every block exactly
  through their log-sum-exps; no device holds more than one remote block, and XLA
  overlaps each hop with the previous block's compute.

Cross-attention needs nothing more: every device holds the whole (short) text.
Without a mesh both are the kernel called directly. (`check_vma=False`: Pallas
calls do not declare how their outputs vary over mesh axes; the specs say it.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from mgjax.kernels import attention as kernels
from mgjax.parallel import sharding

MODES = ("all_gather", "ring")
# Logical names of [B, S, N, D] queries, keys and values inside attention.
QKV_AXES = ("batch", "attn_seq", "heads", "kv")
TEXT_KV_AXES = ("batch", "text_seq", "heads", "kv")  # text is never context-sharded


def self_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mode: str = "all_gather",
    implementation: str = "auto",
) -> jax.Array:
  """Bidirectional self-attention [B, S, N, D] x3 -> [B, S, N, D]; context-parallel
  (`mode`) when the current mesh splits the sequence."""
  if mode not in MODES:
    raise ValueError(f"Unknown context_attention {mode!r}; use one of {MODES}.")
  spec = sharding.activation_spec(QKV_AXES, query.shape)
  if spec is None:
    return kernels.attention(query, key, value, implementation=implementation)
  seq_axes = spec[1]
  if seq_axes is None:
    local = functools.partial(kernels.attention, implementation=implementation)
  else:
    axes = (seq_axes,) if isinstance(seq_axes, str) else tuple(seq_axes)
    if mode == "all_gather":
      local = functools.partial(_gathered, axes=axes, implementation=implementation)
    else:
      size = math.prod(jax.sharding.get_abstract_mesh().shape[a] for a in axes)
      local = functools.partial(_ring, axes=axes, size=size, implementation=implementation)
  return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
      query, key, value
  )


def cross_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    kv_valid: jax.Array | None = None,
    *,
    implementation: str = "auto",
) -> jax.Array:
  """Video queries [B, S, N, D] to text keys/values [B, L, N, D]; `kv_valid` bool
  [B, L] marks real text tokens (a row without any, e.g. a dropped caption, gets 0)."""
  if kv_valid is None:
    kv_valid = jnp.ones(key.shape[:2], bool)
  q_ids = jnp.ones(query.shape[:2], jnp.int32)  # [B, S]
  kv_ids = kv_valid.astype(jnp.int32)  # [B, L]: padding (0) matches no query

  def local(query, key, value, q_ids, kv_ids):
    return kernels.attention(
        query, key, value, q_segment_ids=q_ids, kv_segment_ids=kv_ids, implementation=implementation
    )

  q_spec = sharding.activation_spec(QKV_AXES, query.shape)
  if q_spec is None:
    return local(query, key, value, q_ids, kv_ids)
  kv_spec = sharding.activation_spec(TEXT_KV_AXES, key.shape)
  ids_specs = (PartitionSpec(*q_spec[:2]), PartitionSpec(*kv_spec[:2]))
  return jax.shard_map(
      local, in_specs=(q_spec, kv_spec, kv_spec) + ids_specs, out_specs=q_spec, check_vma=False
  )(query, key, value, q_ids, kv_ids)


def _gathered(query, key, value, *, axes, implementation):
  """Local queries [B, S/c, N, D] against the all-gathered keys and values."""
  key = jax.lax.all_gather(key, axes, axis=1, tiled=True)  # [B, S, N, D]
  value = jax.lax.all_gather(value, axes, axis=1, tiled=True)
  return kernels.attention(query, key, value, implementation=implementation)


def _ring(query, key, value, *, axes, size, implementation):
  """Local queries against every K/V block as the blocks pass around the ring."""
  perm = [(i, (i + 1) % size) for i in range(size)]
  to_bqn1 = lambda x: jnp.transpose(x, (0, 2, 1))[..., None]  # [B, N, Q] -> [B, Q, N, 1]
  out, lse = kernels.attention(query, key, value, return_lse=True, implementation=implementation)
  out = out.astype(jnp.float32)
  for _ in range(size - 1):
    key = jax.lax.ppermute(key, axes, perm)
    value = jax.lax.ppermute(value, axes, perm)
    block_out, block_lse = kernels.attention(
        query, key, value, return_lse=True, implementation=implementation
    )
    merged = jnp.logaddexp(lse, block_lse)  # [B, N, Q]
    out = out * to_bqn1(jnp.exp(lse - merged)) + block_out.astype(jnp.float32) * to_bqn1(
        jnp.exp(block_lse - merged)
    )
    lse = merged
  return out.astype(query.dtype)
