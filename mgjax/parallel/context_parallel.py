"""Context parallelism: self-attention over a sequence split on the `context` axis.

Under a mesh whose `context` axis splits the tokens (rule `attn_seq -> context`),
each device holds S / c queries, keys and values. Everything but attention is
per-token, so only attention needs the rest of the sequence:

* "all_gather" (Movie Gen's choice): K and V are all-gathered along the sequence
  inside a `shard_map`, each device attends its S / c queries to all S keys, and
  the backward pass turns the gather into a reduce-scatter of dK and dV. Memory per
  device holds the full K and V of one layer, never the S x S scores of more than
  its queries.
* "ring": K and V blocks travel around the ring (`ppermute`, c - 1 hops) and each
  device merges the partial softmax of its queries over every block with running
  log-sum-exp statistics; no device ever holds more than one remote block, and
  XLA overlaps each hop with the previous block's compute.

Both equal plain attention up to float rounding. Without a mesh, or with a
`context` axis of 1, `attention` below is the plain one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mgjax.models.attention import attention as plain_attention
from mgjax.parallel import sharding

MODES = ("all_gather", "ring")
# Logical names of [B, S, N, D] queries, keys and values inside attention.
QKV_AXES = ("batch", "attn_seq", "heads", "kv")


def attention(query: jax.Array, key: jax.Array, value: jax.Array,
              mask: jax.Array | None = None, *, mode: str = "all_gather") -> jax.Array:
  """Self-attention [B, S, N, D] x3 -> [B, S, N, D], context-parallel when the
  current mesh splits the sequence; `mask` (bool, broadcastable to [B, N, S, S])
  is only supported without context parallelism."""
  if mode not in MODES:
    raise ValueError(f"Unknown context_attention {mode!r}; use one of {MODES}.")
  spec = sharding.activation_spec(QKV_AXES, query.shape)
  seq_axes = None if spec is None else spec[1]
  if seq_axes is None:
    return plain_attention(query, key, value, mask)
  if mask is not None:
    raise NotImplementedError("Context-parallel attention takes no mask; the video DiT's "
                              "self-attention is full. Set mesh.context=1 for masked models.")
  axes = (seq_axes,) if isinstance(seq_axes, str) else tuple(seq_axes)
  mesh = jax.sharding.get_abstract_mesh()
  size = math.prod(mesh.shape[a] for a in axes)
  local = (functools.partial(_gathered, axes=axes) if mode == "all_gather"
           else functools.partial(_ring, axes=axes, size=size))
  return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec)(query, key, value)


def _gathered(query, key, value, *, axes):
  """Local queries [B, S/c, N, D] against the all-gathered keys and values."""
  key = jax.lax.all_gather(key, axes, axis=1, tiled=True)  # [B, S, N, D]
  value = jax.lax.all_gather(value, axes, axis=1, tiled=True)
  return plain_attention(query, key, value)


def _block(query, key, value):
  """Unnormalised attention of queries to one key block, with its softmax statistics:
  out [B, Q, N, D], row max and row sum [B, N, Q] (float32)."""
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("bqnd,bknd->bnqk", query.astype(jnp.float32),
                      key.astype(jnp.float32)) * scale  # [B, N, Q, K]
  row_max = jnp.max(logits, axis=-1)
  weights = jnp.exp(logits - row_max[..., None])
  out = jnp.einsum("bnqk,bknd->bqnd", weights, value.astype(jnp.float32))
  return out, row_max, jnp.sum(weights, axis=-1)


def _ring(query, key, value, *, axes, size):
  """Local queries against every K/V block as the blocks pass around the ring."""
  perm = [(i, (i + 1) % size) for i in range(size)]
  to_bqn1 = lambda x: jnp.transpose(x, (0, 2, 1))[..., None]  # [B, N, Q] -> [B, Q, N, 1]
  out, row_max, row_sum = _block(query, key, value)
  for _ in range(size - 1):
    key = jax.lax.ppermute(key, axes, perm)
    value = jax.lax.ppermute(value, axes, perm)
    block_out, block_max, block_sum = _block(query, key, value)
    new_max = jnp.maximum(row_max, block_max)
    old_scale, new_scale = jnp.exp(row_max - new_max), jnp.exp(block_max - new_max)
    out = out * to_bqn1(old_scale) + block_out * to_bqn1(new_scale)
    row_sum = row_sum * old_scale + block_sum * new_scale
    row_max = new_max
  return (out / to_bqn1(row_sum)).astype(query.dtype)
