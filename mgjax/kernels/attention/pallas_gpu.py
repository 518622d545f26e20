"""Flash attention for NVIDIA GPUs as Pallas kernels (Triton lowering), forward and backward.

Same semantics as `reference.attention`: query [B, Q, N, D], key and value [B, K, N, D],
bidirectional, masked by segment ids (query i sees key j only where the ids are equal), a
query with no key to attend to gets zeros and lse = -inf.

Why a kernel: the reference materialises the [B, N, Q, K] logits; these kernels keep one
[block_q, block_k] tile of them in registers/SRAM at a time (FlashAttention-2):

  forward  grid (B, N, Q blocks), loop over K blocks with an online softmax (running max
           m and running sum l, float32), writes out and lse = m + log(l).
  backward two kernels, each owning what it writes so nothing needs atomics:
           dK/dV: grid (B, N, K blocks), loop over Q blocks;
           dQ:    grid (B, N, Q blocks), loop over K blocks.
           Both recompute p = exp(s - lse) from the saved lse and use the precomputed
           delta = rowsum(dO * O) - dlse.

The lse cotangent folds into delta because d lse / d s = p, the same p that scales the
output path: ds = p * (dO.v - rowsum(dO*O)) + p * dlse = p * (dp - delta). That is what makes
the lse usable (and differentiable) when ring context parallelism merges partial results.

The kernels work in base 2: logits are scaled by scale * log2(e) so that every
exponential is one exp2 (a single hardware instruction; exp lowers to a longer libdevice
routine), and lse is converted back to natural units at the edges.

Triton needs power-of-two tiles (>= 16), so the wrapper pads Q and K up to whole blocks (and
D up to a power of two); padded keys are masked by position, padded query rows are dropped
(forward) or given lse = +inf so that they contribute nothing (backward).

`interpret=True` runs the very same kernels through Pallas' interpreter, which is how the
tests check them on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_NEG_INF = float("-inf")
_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Tile sizes and Triton launch parameters of one kernel (forward, dK/dV or dQ).
  Blocks are powers of two >= 16 and shrink for short sequences;
  num_warps=None means 4 for head dims <= 64, else 8. `benchmarks/attention.py --sweep`
  times candidates on the device at hand."""

  block_q: int = 64
  block_k: int = 64
  num_warps: int | None = None
  num_stages: int = 2

  def __post_init__(self):
    for block in (self.block_q, self.block_k):
      if block < 16 or block & (block - 1):
        raise ValueError(f"Block sizes must be powers of two >= 16, got {block}.")

  def params(self, d_pad: int) -> plgpu.CompilerParams:
    num_warps = self.num_warps or (4 if d_pad <= 64 else 8)
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=self.num_stages)


# Defaults measured on an H100 with benchmarks/attention.py --sweep (docs/benchmarks.md).
FORWARD_TILING = Tiling(block_q=128, block_k=128, num_warps=8, num_stages=3)
DKV_TILING = Tiling(block_q=64, block_k=64, num_warps=4, num_stages=2)
DQ_TILING = Tiling(block_q=128, block_k=64, num_warps=8, num_stages=3)


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static (hashable) part of a call: a nondiff argument of the custom VJP."""

  scale: float
  forward: Tiling
  dkv: Tiling
  dq: Tiling
  interpret: bool


def _tile(length: int, block: int) -> tuple[int, int]:
  """(block, padded length): the block shrinks for short sequences but stays a power of
  two >= 16 (Triton's rule); the length pads up to a whole number of blocks."""
  block = min(block, max(16, pl.next_power_of_2(length)))
  return block, pl.cdiv(length, block) * block


def _pad(x: jax.Array | None, axis: int, size: int, value=0) -> jax.Array | None:
  """Pads `axis` of x at the end up to `size` (None passes through)."""
  if x is None or x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _mask(q_ids, kv_ids, kv_start, block_k: int, kv_len: int | None):
  """bool [block_q, block_k] or [1, block_k] (True = attend), or None for no mask.

  q_ids [block_q] / kv_ids [block_k] are the tiles' segment ids (or None); `kv_len` is
  the unpadded key length when keys were padded (None when they were not)."""
  mask = None
  if q_ids is not None:
    mask = q_ids[:, None] == kv_ids[None, :]  # [block_q, block_k]
  if kv_len is not None:
    in_range = (kv_start + jnp.arange(block_k))[None, :] < kv_len  # [1, block_k]
    mask = in_range if mask is None else jnp.logical_and(mask, in_range)
  return mask


def _logits(q, k, scale, mask):
  """Masked logits in base 2, s [block_q, block_k] float32 = q.k * scale * log2(e);
  masked entries are -inf."""
  s = plgpu.dot(q, k, trans_b=True) * (scale * _LOG2E)  # [block_q, block_k]
  return s if mask is None else jnp.where(mask, s, _NEG_INF)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(
    q_ref,
    k_ref,
    v_ref,
    q_ids_ref,
    kv_ids_ref,
    o_ref,
    lse_ref,
    *,
    scale: float,
    block_k: int,
    kv_len: int | None,
):
  """One (batch, head, query block): loops over all key blocks with an online softmax.

  q_ref [block_q, D], k_ref/v_ref [K_pad, D], q_ids_ref [block_q], kv_ids_ref [K_pad],
  o_ref [block_q, D], lse_ref [block_q]."""
  block_q, head_dim = q_ref.shape
  q = q_ref[...]
  q_ids = None if q_ids_ref is None else q_ids_ref[...]

  def body(j, carry):
    acc, m, l = carry  # [block_q, D], [block_q], [block_q]
    start = pl.multiple_of(j * block_k, block_k)
    kv_slice = pl.ds(start, block_k)
    kv_ids = None if kv_ids_ref is None else kv_ids_ref[kv_slice]
    s = _logits(q, k_ref[kv_slice, :], scale, _mask(q_ids, kv_ids, start, block_k, kv_len))
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))  # [block_q]
    # A row that has seen only masked keys keeps m = -inf; shift by 0 instead so that
    # exp(-inf - (-inf)) never makes a NaN (its p and correction are then exactly 0).
    m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)
    correction = jnp.exp2(m - m_safe)  # [block_q]; 0 on the first live block
    p = jnp.exp2(s - m_safe[:, None])  # [block_q, block_k]
    l = correction * l + jnp.sum(p, axis=-1)
    v = v_ref[kv_slice, :]
    acc = correction[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, l

  init = (
      jnp.zeros((block_q, head_dim), jnp.float32),
      jnp.full((block_q,), _NEG_INF, jnp.float32),
      jnp.zeros((block_q,), jnp.float32),
  )
  acc, m, l = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  has_key = l > 0.0  # [block_q]; False only for rows whose every key is masked
  o_ref[...] = (acc / jnp.where(has_key, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse = (m + jnp.log2(jnp.where(has_key, l, 1.0))) / _LOG2E  # natural units
  lse_ref[...] = jnp.where(has_key, lse, _NEG_INF)


# Block specs for a grid (batch b, head h, block i). `blocked`: the block follows grid
# axis 2; otherwise it is the whole (padded) sequence, which the kernel loops over.
def _seq_spec(block: int, d_pad: int, blocked: bool) -> pl.BlockSpec:
  """For q / k / v / out / dO [B, L, N, D] -> a [block, D] tile."""
  return pl.BlockSpec((None, block, None, d_pad), lambda b, h, i: (b, i if blocked else 0, h, 0))


def _row_spec(block: int, blocked: bool) -> pl.BlockSpec:
  """For per-query-row values (lse, delta) [B, N, Q] -> a [block] tile."""
  return pl.BlockSpec((None, None, block), lambda b, h, i: (b, h, i if blocked else 0))


def _ids_spec(block: int, blocked: bool, has_ids: bool) -> pl.BlockSpec | None:
  """For segment ids [B, L] -> a [block] tile; None when there are no ids."""
  if not has_ids:
    return None
  return pl.BlockSpec((None, block), lambda b, h, i: (b, i if blocked else 0))


def _forward(q, k, v, q_ids, kv_ids, cfg: _Config):
  """out [B, Q, N, D] (q's dtype), lse [B, N, Q] float32."""
  batch, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  block_q, q_pad = _tile(q_len, cfg.forward.block_q)
  block_k, kv_pad = _tile(kv_len, cfg.forward.block_k)
  d_pad = max(16, pl.next_power_of_2(head_dim))
  q = _pad(_pad(q, 1, q_pad), 3, d_pad)  # [B, Q_pad, N, D_pad]
  k = _pad(_pad(k, 1, kv_pad), 3, d_pad)  # [B, K_pad, N, D_pad]
  v = _pad(_pad(v, 1, kv_pad), 3, d_pad)
  q_ids, kv_ids = _pad(q_ids, 1, q_pad), _pad(kv_ids, 1, kv_pad)

  has_ids = q_ids is not None
  q_spec = _seq_spec(block_q, d_pad, True)
  kv_spec = _seq_spec(kv_pad, d_pad, False)
  kernel = functools.partial(
      _fwd_kernel, scale=cfg.scale, block_k=block_k, kv_len=kv_len if kv_pad != kv_len else None
  )
  out, lse = pl.pallas_call(
      kernel,
      grid=(batch, heads, q_pad // block_q),
      in_specs=[
          q_spec,
          kv_spec,
          kv_spec,
          _ids_spec(block_q, True, has_ids),
          _ids_spec(kv_pad, False, has_ids),
      ],
      out_specs=[q_spec, _row_spec(block_q, True)],
      out_shape=[
          jax.ShapeDtypeStruct(q.shape, q.dtype),
          jax.ShapeDtypeStruct((batch, heads, q_pad), jnp.float32),
      ],
      compiler_params=cfg.forward.params(d_pad),
      interpret=cfg.interpret,
      name="flash_attention_fwd",
  )(q, k, v, q_ids, kv_ids)
  return out[:, :q_len, :, :head_dim], lse[:, :, :q_len]


# ---------------------------------------------------------------------------- backward


def _dkv_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    q_ids_ref,
    kv_ids_ref,
    dk_ref,
    dv_ref,
    *,
    scale: float,
    block_q: int,
    kv_len: int | None,
):
  """One (batch, head, key block): dK and dV, looping over all query blocks.

  q_ref/do_ref [Q_pad, D], lse_ref/delta_ref/q_ids_ref [Q_pad], k_ref/v_ref/dk_ref/dv_ref
  [block_k, D], kv_ids_ref [block_k]. lse (base 2) is +inf on rows that must contribute
  nothing."""
  block_k, head_dim = k_ref.shape
  kv_start = pl.program_id(2) * block_k
  k, v = k_ref[...], v_ref[...]
  kv_ids = None if kv_ids_ref is None else kv_ids_ref[...]

  def body(i, carry):
    dk, dv = carry  # [block_k, D] each
    q_slice = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    q, do = q_ref[q_slice, :], do_ref[q_slice, :]  # [block_q, D]
    q_ids = None if q_ids_ref is None else q_ids_ref[q_slice]
    s = _logits(q, k, scale, _mask(q_ids, kv_ids, kv_start, block_k, kv_len))
    p = jnp.exp2(s - lse_ref[q_slice][:, None])  # [block_q, block_k]
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    dp = plgpu.dot(do, v, trans_b=True)  # [block_q, block_k]
    ds = p * (dp - delta_ref[q_slice][:, None])  # d loss / d (q.k * scale)
    dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
    return dk, dv

  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)  # scale once here, not per logit
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    lse_ref,
    delta_ref,
    q_ids_ref,
    kv_ids_ref,
    dq_ref,
    *,
    scale: float,
    block_k: int,
    kv_len: int | None,
):
  """One (batch, head, query block): dQ, looping over all key blocks.

  q_ref/do_ref/dq_ref [block_q, D], lse_ref/delta_ref/q_ids_ref [block_q],
  k_ref/v_ref [K_pad, D], kv_ids_ref [K_pad]."""
  block_q, head_dim = q_ref.shape
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]  # [block_q, 1]
  q_ids = None if q_ids_ref is None else q_ids_ref[...]

  def body(j, dq):  # dq [block_q, D]
    start = pl.multiple_of(j * block_k, block_k)
    kv_slice = pl.ds(start, block_k)
    k = k_ref[kv_slice, :]
    kv_ids = None if kv_ids_ref is None else kv_ids_ref[kv_slice]
    s = _logits(q, k, scale, _mask(q_ids, kv_ids, start, block_k, kv_len))
    p = jnp.exp2(s - lse)  # [block_q, block_k]
    dp = plgpu.dot(do, v_ref[kv_slice, :], trans_b=True)
    ds = p * (dp - delta)  # d loss / d (q.k * scale)
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(
      0, k_ref.shape[0] // block_k, body, jnp.zeros((block_q, head_dim), jnp.float32)
  )
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)  # scale once here, not per logit


def _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, d_lse, cfg: _Config):
  """dq, dk, dv in the input dtypes."""
  batch, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  (block_q_dkv, _), (block_q_dq, _) = (_tile(q_len, t.block_q) for t in (cfg.dkv, cfg.dq))
  (block_k_dkv, _), (block_k_dq, _) = (_tile(kv_len, t.block_k) for t in (cfg.dkv, cfg.dq))
  # One padding for both kernels: whole blocks of the larger (power-of-two) block.
  q_pad = _tile(q_len, max(block_q_dkv, block_q_dq))[1]
  kv_pad = _tile(kv_len, max(block_k_dkv, block_k_dq))[1]
  d_pad = max(16, pl.next_power_of_2(head_dim))

  delta = (
      jnp.einsum("bqnd,bqnd->bnq", out.astype(jnp.float32), d_out.astype(jnp.float32)) - d_lse
  )  # [B, N, Q]
  # The kernels take lse in base 2. exp2(s - lse) must be 0 on rows with no key
  # (lse = -inf) and on padded rows: +inf does it.
  lse = _pad(jnp.where(lse == _NEG_INF, jnp.inf, lse * _LOG2E), 2, q_pad, jnp.inf)
  delta = _pad(delta, 2, q_pad)
  q, do = (_pad(_pad(x, 1, q_pad), 3, d_pad) for x in (q, d_out))  # [B, Q_pad, N, D_pad]
  k, v = (_pad(_pad(x, 1, kv_pad), 3, d_pad) for x in (k, v))  # [B, K_pad, N, D_pad]
  q_ids, kv_ids = _pad(q_ids, 1, q_pad), _pad(kv_ids, 1, kv_pad)
  has_ids = q_ids is not None
  masked_len = kv_len if kv_pad != kv_len else None
  operands = (q, k, v, do, lse, delta, q_ids, kv_ids)

  # dK/dV: grid axis 2 walks key blocks and queries are whole; dQ: the other way round.
  dkv_specs = [
      _seq_spec(q_pad, d_pad, False),
      _seq_spec(block_k_dkv, d_pad, True),
      _seq_spec(block_k_dkv, d_pad, True),
      _seq_spec(q_pad, d_pad, False),
      _row_spec(q_pad, False),
      _row_spec(q_pad, False),
      _ids_spec(q_pad, False, has_ids),
      _ids_spec(block_k_dkv, True, has_ids),
  ]
  dq_specs = [
      _seq_spec(block_q_dq, d_pad, True),
      _seq_spec(kv_pad, d_pad, False),
      _seq_spec(kv_pad, d_pad, False),
      _seq_spec(block_q_dq, d_pad, True),
      _row_spec(block_q_dq, True),
      _row_spec(block_q_dq, True),
      _ids_spec(block_q_dq, True, has_ids),
      _ids_spec(kv_pad, False, has_ids),
  ]

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=cfg.scale, block_q=block_q_dkv, kv_len=masked_len),
      grid=(batch, heads, kv_pad // block_k_dkv),
      in_specs=dkv_specs,
      out_specs=[dkv_specs[1], dkv_specs[2]],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=cfg.dkv.params(d_pad),
      interpret=cfg.interpret,
      name="flash_attention_bwd_dkv",
  )(*operands)

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=cfg.scale, block_k=block_k_dq, kv_len=masked_len),
      grid=(batch, heads, q_pad // block_q_dq),
      in_specs=dq_specs,
      out_specs=dq_specs[0],
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=cfg.dq.params(d_pad),
      interpret=cfg.interpret,
      name="flash_attention_bwd_dq",
  )(*operands)
  return (dq[:, :q_len, :, :head_dim], dk[:, :kv_len, :, :head_dim], dv[:, :kv_len, :, :head_dim])


# --------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, cfg):
  return _forward(q, k, v, q_ids, kv_ids, cfg)


def _flash_fwd(q, k, v, q_ids, kv_ids, cfg):
  out, lse = _forward(q, k, v, q_ids, kv_ids, cfg)
  return (out, lse), (q, k, v, q_ids, kv_ids, out, lse)


def _flash_bwd(cfg, residuals, cotangents):
  q, k, v, q_ids, kv_ids, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv = _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, d_lse, cfg)
  return dq, dk, dv, None, None  # segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(
    jax.jit,
    static_argnames=("scale", "return_lse", "tiling", "dkv_tiling", "dq_tiling", "interpret"),
)
def flash_attention(
    query,
    key,
    value,
    *,
    q_segment_ids=None,
    kv_segment_ids=None,
    scale=None,
    return_lse=False,
    tiling: Tiling = FORWARD_TILING,
    dkv_tiling: Tiling = DKV_TILING,
    dq_tiling: Tiling = DQ_TILING,
    interpret=False,
):
  """Softmax attention, out [B, Q, N, D] in query's dtype; with `return_lse` also
  lse [B, N, Q] float32 (differentiable). Matches `reference.attention`.

  query [B, Q, N, D], key/value [B, K, N, D]; q_segment_ids [B, Q] / kv_segment_ids [B, K]
  int32 (both or neither) restrict query i to keys j with equal ids. `tiling`,
  `dkv_tiling` and `dq_tiling` set the forward, dK/dV and dQ kernels' tiles. `interpret=True` runs the
  kernels in Pallas' interpreter (any backend, e.g. CPU tests) instead of Triton."""
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Give both q_segment_ids and kv_segment_ids, or neither.")
  if (
      query.ndim != 4
      or key.shape != value.shape
      or key.shape[0] != query.shape[0]
      or key.shape[2:] != query.shape[2:]
  ):
    raise ValueError(
        f"Expected query [B, Q, N, D] and key/value [B, K, N, D], got "
        f"{query.shape}, {key.shape}, {value.shape}."
    )
  if q_segment_ids is not None:
    q_segment_ids = q_segment_ids.astype(jnp.int32)
    kv_segment_ids = kv_segment_ids.astype(jnp.int32)
  if scale is None:
    scale = query.shape[-1] ** -0.5
  cfg = _Config(
      scale=float(scale), forward=tiling, dkv=dkv_tiling, dq=dq_tiling, interpret=interpret
  )
  out, lse = _flash(query, key, value, q_segment_ids, kv_segment_ids, cfg)
  return (out, lse) if return_lse else out
