"""The Pallas GPU flash attention against the XLA reference, run in interpret mode on CPU.

Outputs, lse and the gradients dq, dk, dv (via jax.vjp with random cotangents, one on the
lse too when it is returned) must match `reference.attention`. Small block sizes (16, 32)
keep the interpreted grids small while still spanning several blocks in Q and K; the
lengths are odd so that the wrapper's padding and padded-key masking are exercised.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax.kernels.attention import reference
from mgjax.kernels.attention.pallas_gpu import Tiling, flash_attention

# Relative to the largest reference magnitude (and elementwise): fp32 kernels only differ
# in summation order; bf16 ones round p and dS to bf16 before the matmuls.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _segment_ids(kind: str, batch: int, q_len: int, kv_len: int, seed: int = 0):
  """(q_ids [B, Q], kv_ids [B, K]) or (None, None); deterministic in `seed`."""
  rng = np.random.default_rng(seed)
  if kind == "none":
    return None, None
  if kind == "key_padding":  # keys past each example's length get id 0, queries id 1
    lengths = [kv_len, kv_len - 17]
    kv = np.stack([(np.arange(kv_len) < n).astype(np.int32) for n in lengths[:batch]])
    return jnp.ones((batch, q_len), jnp.int32), jnp.asarray(kv)
  if kind in ("packed", "empty_row"):  # sorted segments 1..3 (other cuts for keys), key padding 0
    q = np.sort(rng.integers(1, 4, size=(batch, q_len)), axis=1).astype(np.int32)
    kv = np.sort(rng.integers(1, 4, size=(batch, kv_len)), axis=1).astype(np.int32)
    kv[:, -5:] = 0
    if kind == "empty_row":
      q[0, 2] = 9  # no key has id 9
      kv[1, :] = np.where(kv[1, :] == 3, 0, kv[1, :])  # segment 3 of example 1 has no keys
    return jnp.asarray(q), jnp.asarray(kv)
  raise ValueError(kind)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(fn, q, k, v, cotangent):
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(cotangent)


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert np.isfinite(actual).all(), f"{what}: non-finite values"
  scale = max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def _check(
    dtype,
    head_dim,
    q_len,
    kv_len,
    ids,
    return_lse,
    block_q,
    block_k,
    *,
    batch=2,
    heads=3,
    scale=None,
    seed=0,
):
  """Compares out (and lse) and dq, dk, dv of the kernel with the reference; returns the
  kernel's (out, lse or None, grads) for further checks."""
  rng = np.random.default_rng(seed)
  q, k, v = (
      jnp.asarray(rng.normal(size=(batch, n, heads, head_dim)), dtype)
      for n in (q_len, kv_len, kv_len)
  )
  q_ids, kv_ids = _segment_ids(ids, batch, q_len, kv_len, seed)
  d_out = jnp.asarray(rng.normal(size=q.shape), dtype)
  d_lse = jnp.asarray(rng.normal(size=(batch, heads, q_len)), jnp.float32)
  cotangent = (d_out, d_lse) if return_lse else d_out
  kwargs = dict(q_segment_ids=q_ids, kv_segment_ids=kv_ids, scale=scale, return_lse=return_lse)
  # Each kernel gets its own tiling (the dQ kernel a smaller one), so that the
  # backward's shared padding to the larger block is exercised too.
  kernel = functools.partial(
      flash_attention,
      tiling=Tiling(block_q, block_k),
      dkv_tiling=Tiling(block_k, block_q),
      dq_tiling=Tiling(16, 16),
      interpret=True,
      **kwargs,
  )
  out, grads = _value_and_grads(kernel, q, k, v, cotangent)
  ref_out, ref_grads = _value_and_grads(
      functools.partial(reference.attention, **kwargs), q, k, v, cotangent
  )
  tol = TOL[dtype]
  lse = None
  if return_lse:
    (out, lse), (ref_out, ref_lse) = out, ref_out
    assert lse.shape == (batch, heads, q_len) and lse.dtype == jnp.float32
    empty = np.isneginf(np.asarray(ref_lse))
    np.testing.assert_array_equal(np.isneginf(np.asarray(lse)), empty)
    _assert_close(np.where(empty, 0.0, lse), np.where(empty, 0.0, ref_lse), tol, "lse")
  assert out.shape == q.shape and out.dtype == dtype
  _assert_close(out, ref_out, tol, "out")
  for name, g, ref_g, x in zip(("dq", "dk", "dv"), grads, ref_grads, (q, k, v)):
    assert g.shape == x.shape and g.dtype == x.dtype, name
    _assert_close(g, ref_g, tol, name)
  return out, lse, grads


@pytest.mark.parametrize(
    "dtype, head_dim, q_len, kv_len, ids, return_lse, block_q, block_k",
    [
        (jnp.float32, 64, 37, 53, "none", True, 16, 16),  # 3 x 4 blocks
        (jnp.float32, 128, 37, 53, "key_padding", True, 32, 16),
        (jnp.float32, 64, 53, 37, "packed", False, 16, 32),
        (jnp.bfloat16, 64, 37, 53, "key_padding", True, 16, 16),
        (jnp.bfloat16, 128, 53, 37, "packed", True, 32, 32),
        (jnp.float32, 64, 5, 3, "none", True, 64, 64),  # blocks shrink to 16
    ],
)
def test_matches_reference(dtype, head_dim, q_len, kv_len, ids, return_lse, block_q, block_k):
  _check(dtype, head_dim, q_len, kv_len, ids, return_lse, block_q, block_k)


def test_explicit_scale():
  _check(jnp.float32, 64, 20, 40, "packed", True, 16, 16, batch=1, heads=2, scale=0.3)


def test_row_without_keys_is_zero_with_finite_grads():
  q_len, kv_len = 37, 53
  out, lse, grads = _check(jnp.float32, 64, q_len, kv_len, "empty_row", True, 16, 16)
  q_ids, kv_ids = _segment_ids("empty_row", 2, q_len, kv_len)
  empty = ~np.any(np.asarray(q_ids)[:, :, None] == np.asarray(kv_ids)[:, None, :], axis=-1)
  assert empty[0, 2] and empty[1].any()  # [B, Q]; the case really has empty rows
  b, i = np.nonzero(empty)
  np.testing.assert_array_equal(np.asarray(out)[b, i], 0.0)
  assert np.isneginf(np.asarray(lse)[b, :, i]).all()
  np.testing.assert_array_equal(np.asarray(grads[0])[b, i], 0.0)  # dq of an empty row
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()


def test_needs_both_segment_ids():
  x = jnp.zeros((1, 16, 1, 64), jnp.float32)
  with pytest.raises(ValueError, match="both"):
    flash_attention(x, x, x, q_segment_ids=jnp.ones((1, 16), jnp.int32), interpret=True)


@pytest.mark.parametrize("block", [8, 48])
def test_tiling_rejects_blocks_triton_cannot_tile(block):
  with pytest.raises(ValueError, match="powers of two >= 16"):
    Tiling(block_q=block)
