"""The one attention function every mgjax model calls.

A fused kernel can later replace the reference implementation behind this
signature without touching model code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """Softmax attention, bidirectional unless the mask says otherwise, in float32.

  Args:
    query: [B, Q, N, D]
    key:   [B, K, N, D]
    value: [B, K, N, D]
    mask:  optional bool, broadcastable to [B, N, Q, K]; False entries are ignored.
           A query row with no valid key returns zeros rather than NaN.
    bias:  optional additive logits, broadcastable to [B, N, Q, K] (T5's relative
           position bias).
    scale: logit scale; default 1 / sqrt(D). T5 uses 1.0 (its init absorbs it).

  Returns:
    [B, Q, N, D] in the dtype of `query`.
  """
  if scale is None:
    scale = query.shape[-1] ** -0.5
  logits = (
      jnp.einsum("bqnd,bknd->bnqk", query.astype(jnp.float32), key.astype(jnp.float32)) * scale
  )  # [B, N, Q, K]
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
    row_has_key = jnp.any(mask, axis=-1, keepdims=True)
    logits = jnp.where(row_has_key, logits, 0.0)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    weights = jnp.where(row_has_key, weights, 0.0)
  out = jnp.einsum("bnqk,bknd->bqnd", weights, value.astype(jnp.float32))
  return out.astype(query.dtype)
