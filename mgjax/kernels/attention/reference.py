"""The XLA reference every attention kernel is tested against.

Layout (mgjax's): query [B, Q, N, D], key and value [B, K, N, D]. Masking is by
segment ids, which covers key padding and packed sequences alike: query i attends to
key j only where q_segment_ids[b, i] == kv_segment_ids[b, j]. Give padded keys an id
no query has (e.g. 0 with queries at 1). A query with no key to attend to gets zeros
and a log-sum-exp of -inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_mask(
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
) -> jax.Array | None:
  """bool [B, 1, Q, K] (True = attend) from segment ids [B, Q] and [B, K]; None if both are None."""
  if q_segment_ids is None and kv_segment_ids is None:
    return None
  if q_segment_ids is None or kv_segment_ids is None:
    raise ValueError("Give both q_segment_ids and kv_segment_ids, or neither.")
  return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
  """Softmax attention in float32: out [B, Q, N, D] (query's dtype) and, with
  `return_lse`, the log-sum-exp of each query row's scaled logits, lse [B, N, Q]."""
  if scale is None:
    scale = query.shape[-1] ** -0.5
  logits = (
      jnp.einsum("bqnd,bknd->bnqk", query.astype(jnp.float32), key.astype(jnp.float32)) * scale
  )  # [B, N, Q, K]
  mask = segment_mask(q_segment_ids, kv_segment_ids)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, N, Q]; -inf for rows with no key
  weights = jnp.where(jnp.isfinite(lse)[..., None], jnp.exp(logits - lse[..., None]), 0.0)
  out = jnp.einsum("bnqk,bknd->bqnd", weights, value.astype(jnp.float32)).astype(query.dtype)
  return (out, lse) if return_lse else out
