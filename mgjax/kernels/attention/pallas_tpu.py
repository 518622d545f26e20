"""Flash attention for TPUs as Pallas Mosaic kernels, forward and backward.

Same semantics as `reference.attention`: query [B, Q, N, D], key and value [B, K, N, D],
bidirectional, masked by segment ids (query i sees key j only where the ids are equal), a
query with no key to attend to gets zeros and lse = -inf.

Why a kernel: the reference materialises the [B, N, Q, K] logits in HBM; these kernels keep
one [block_q, block_k] tile of them in VMEM at a time (FlashAttention-2):

  forward  grid (B, N, Q blocks, K blocks), K innermost and sequential ("arbitrary"): an
           online softmax whose running max m, running sum l and output accumulator live
           in float32 VMEM scratch across the K steps; the last step writes out and
           lse = m + log(l).
  backward two kernels, each owning what it writes (TPU grids have no atomics):
           dK/dV: grid (B, N, K blocks, Q blocks), Q innermost;
           dQ:    grid (B, N, Q blocks, K blocks), K innermost.
           Both recompute p = exp(s - lse) from the saved lse and use the precomputed
           delta = rowsum(dO * O) - dlse.

The lse cotangent folds into delta because d lse / d s = p, the same p that scales the
output path: ds = p * (dO.v - rowsum(dO*O)) + p * dlse = p * (dp - delta). That is what
makes the lse usable (and differentiable) when ring context parallelism merges partials.

TPU layout choices (a vreg is 8 sublanes x 128 lanes; a block's last two dims must be
multiples of (8, 128) or the full array dims):
  * Q and K pad up to whole blocks that are multiples of 128, so every logits tile is
    lane-dense; padded keys are masked by position, padded query rows are dropped.
  * Per-query-row values the forward carries (m, l) are [block_q, 128] with all lanes
    equal, so they load and store as whole vregs; the lse leaves the forward as a row
    [1, block_q] (one transpose per Q block) so that it is stored compactly, [B, N, 1, Q].
  * The backward kernels compute the logits transposed, s^T = K Q^T [block_k, block_q],
    so the saved lse and delta rows broadcast over it as they are, with no relayout.
  * Segment ids go in as lane- or sublane-broadcast int32 arrays ([B, S, 128] where a
    tile needs them as a column, [B, 8, S] where it needs a row), as TPU kernels do.

`interpret=True` runs the very same kernels in Pallas' TPU interpret mode on CPU
(`pltpu.InterpretParams`: TPU memory spaces and grid semantics simulated, scratch filled
with NaN until written), which is how the tests check them without a TPU.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_LANES = 128  # last dim of a TPU vreg
_SUBLANES = 8  # second-to-last dim of a TPU vreg
_NEG_INF = float("-inf")
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_PARALLEL_LAST_SEQUENTIAL = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
)


class _Config(NamedTuple):
  """The static (hashable) part of a call: a nondiff argument of the custom VJP."""

  scale: float
  block_q: int
  block_k: int
  kv_len: int | None  # unpadded key length when keys were padded, else None
  interpret: Any  # False or a pltpu.InterpretParams


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _tile(length: int, block: int) -> tuple[int, int]:
  """(block, padded length): blocks are multiples of 128 (lane-dense tiles), shrink to
  the padded length for short sequences, and the length pads to whole blocks."""
  if block <= 0 or block % _LANES:
    raise ValueError(f"Block sizes must be positive multiples of {_LANES}, got {block}.")
  block = min(block, _round_up(length, _LANES))
  return block, _round_up(length, block)


def _pad(x: jax.Array | None, axis: int, size: int) -> jax.Array | None:
  """Zero-pads `axis` of x at the end up to `size` (None passes through)."""
  if x is None or x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _as_column(ids: jax.Array) -> jax.Array:
  """[B, S] -> [B, S, 128]: each id repeated along the lanes (read as a column)."""
  return jnp.broadcast_to(ids[:, :, None], (*ids.shape, _LANES))


def _as_row(ids: jax.Array) -> jax.Array:
  """[B, S] -> [B, 8, S]: each id repeated along the sublanes (read as a row)."""
  return jnp.broadcast_to(ids[:, None, :], (ids.shape[0], _SUBLANES, ids.shape[1]))


def _out(shape, dtype, like: jax.Array) -> jax.ShapeDtypeStruct:
  """A pallas_call output's type. Inside `jax.shard_map` (check_vma) it must say over
  which mesh axes it varies: those of the inputs, which `_vary_alike` made agree."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)


def _vary_alike(*xs):
  """Casts each array (None passes through) to vary over every mesh axis any of them
  varies over. XLA ops get this implicitly inside `shard_map`; a pallas_call does not,
  and the custom VJP needs it so that each cotangent has its primal's type (the cast's
  transpose sums the cotangent of an input that was invariant)."""
  varying = lambda x: jax.typeof(x).mat.varying
  axes = frozenset().union(*(varying(x) for x in xs if x is not None))
  return [
      x
      if x is None or not axes - varying(x)
      else lax.pcast(x, tuple(axes - varying(x)), to="varying")
      for x in xs
  ]


def _mask(row_ids, col_ids, key_axis: int, key_start, shape, kv_len: int | None):
  """bool `shape` (True = attend) or None for no mask.

  row_ids [rows, 1] and col_ids [1, cols] are the tile's segment ids (or both None);
  keys run along `key_axis` starting at `key_start`, and those at or past `kv_len`
  (the unpadded length; None if keys were not padded) are padding."""
  mask = None
  if row_ids is not None:
    mask = row_ids == col_ids
  if kv_len is not None:
    in_range = key_start + lax.broadcasted_iota(jnp.int32, shape, key_axis) < kv_len
    mask = in_range if mask is None else mask & in_range
  return mask


# ---------------------------------------------------------------------------- forward


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, cfg: _Config, masked: bool):
  """One (batch, head, Q block, K block) step. q [bq, D], k/v [bk, D]; out [bq, D],
  lse [1, bq]; scratch m/l [bq, 128] (lanes equal), acc [bq, D], all float32."""
  q_ids = kv_ids = None
  if masked:
    q_ids_ref, kv_ids_ref, *refs = refs  # [bq, 128] lanes equal, [8, bk] sublanes equal
    q_ids, kv_ids = q_ids_ref[:, :1], kv_ids_ref[:1, :]  # [bq, 1], [1, bk]
  o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  kv_step = pl.program_id(3)

  @pl.when(kv_step == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, _NEG_INF, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s = (
      lax.dot_general(q_ref[...], k_ref[...], _NT, preferred_element_type=jnp.float32) * cfg.scale
  )  # [bq, bk]
  mask = _mask(q_ids, kv_ids, 1, kv_step * cfg.block_k, s.shape, cfg.kv_len)
  if mask is not None:
    s = jnp.where(mask, s, _NEG_INF)

  m_prev, l_prev = m_ref[...], l_ref[...]  # [bq, 128]
  m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
  # A row that has seen no key yet keeps m = -inf; shifting by 0 instead keeps
  # exp(-inf - -inf) = NaN out: its p and alpha are then exp(-inf) = 0.
  m_shift = jnp.where(m_next == _NEG_INF, 0.0, m_next)
  alpha = jnp.exp(m_prev - m_shift)  # [bq, 128]
  p = jnp.exp(s - m_shift[:, :1])  # [bq, bk]
  m_ref[...] = m_next
  l_ref[...] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
  pv = jnp.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
  acc_ref[...] = alpha[:, :1] * acc_ref[...] + pv  # [bq, D]

  @pl.when(kv_step == pl.num_programs(3) - 1)
  def _finish():
    l = l_ref[...]
    empty = l == 0.0  # rows with no key: zeros, lse = -inf
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc_ref[...] / l_safe[:, :1]).astype(o_ref.dtype)
    lse = jnp.where(empty, _NEG_INF, m_ref[...] + jnp.log(l_safe))  # [bq, 128]
    lse_ref[...] = lse.T[:1, :]  # [1, bq]


def _forward(q, k, v, q_ids, kv_ids, cfg: _Config):
  """q [B, N, Qp, D], k/v [B, N, Kp, D], ids [B, Qp] / [B, Kp] or None ->
  out [B, N, Qp, D] (q's dtype), lse [B, N, 1, Qp] float32."""
  batch, heads, q_len, dim = q.shape
  kv_len = k.shape[2]
  bq, bk = cfg.block_q, cfg.block_k
  masked = q_ids is not None
  q_spec = pl.BlockSpec((None, None, bq, dim), lambda b, n, i, j: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, dim), lambda b, n, i, j: (b, n, j, 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, n, i, j: (b, n, 0, i))
  in_specs, args = [q_spec, kv_spec, kv_spec], [q, k, v]
  if masked:
    in_specs += [
        pl.BlockSpec((None, bq, _LANES), lambda b, n, i, j: (b, i, 0)),
        pl.BlockSpec((None, _SUBLANES, bk), lambda b, n, i, j: (b, 0, j)),
    ]
    args += [_as_column(q_ids), _as_row(kv_ids)]
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg, masked=masked),
      grid=(batch, heads, q_len // bq, kv_len // bk),
      in_specs=in_specs,
      out_specs=[q_spec, row_spec],
      out_shape=[_out(q.shape, q.dtype, q), _out((batch, heads, 1, q_len), jnp.float32, q)],
      scratch_shapes=[
          pltpu.VMEM((bq, _LANES), jnp.float32),
          pltpu.VMEM((bq, _LANES), jnp.float32),
          pltpu.VMEM((bq, dim), jnp.float32),
      ],
      compiler_params=_PARALLEL_LAST_SEQUENTIAL,
      interpret=cfg.interpret,
      name="flash_attention_fwd",
  )(*args)


# --------------------------------------------------------------------------- backward


def _transposed_p_ds(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids, kv_start, cfg: _Config):
  """p^T and ds^T [bk, bq] (float32) for one tile, recomputed from the saved lse.

  Transposed (keys on sublanes, queries on lanes) so that the lse and delta rows [1, bq]
  broadcast over the tile directly. Masked logits are -inf, so p = exp(-inf) = 0 there;
  rows with no key come in with lse 0 (not -inf), which keeps that exp NaN-free."""
  s_t = (
      lax.dot_general(k_ref[...], q_ref[...], _NT, preferred_element_type=jnp.float32) * cfg.scale
  )  # [bk, bq]
  kv_ids, q_ids = ids if ids is not None else (None, None)
  mask = _mask(kv_ids, q_ids, 0, kv_start, s_t.shape, cfg.kv_len)
  if mask is not None:
    s_t = jnp.where(mask, s_t, _NEG_INF)
  p_t = jnp.exp(s_t - lse_ref[...])
  dp_t = lax.dot_general(
      v_ref[...], do_ref[...].astype(v_ref.dtype), _NT, preferred_element_type=jnp.float32
  )  # [bk, bq]
  return p_t, p_t * (dp_t - delta_ref[...])


def _bwd_specs(dim: int, masked: bool, q_axis: int, kv_axis: int, bq: int, bk: int):
  """BlockSpecs of (q, k, v, do, lse, delta[, kv ids column, q ids row]); the grid is
  (B, N, *) with the Q block index at grid axis `q_axis` and the K block at `kv_axis`."""
  pick = lambda idx, axis: idx[axis - 2]
  q_spec = pl.BlockSpec((None, None, bq, dim), lambda b, n, *ij: (b, n, pick(ij, q_axis), 0))
  kv_spec = pl.BlockSpec((None, None, bk, dim), lambda b, n, *ij: (b, n, pick(ij, kv_axis), 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, n, *ij: (b, n, 0, pick(ij, q_axis)))
  specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
  if masked:
    specs += [
        pl.BlockSpec((None, bk, _LANES), lambda b, n, *ij: (b, pick(ij, kv_axis), 0)),
        pl.BlockSpec((None, _SUBLANES, bq), lambda b, n, *ij: (b, 0, pick(ij, q_axis))),
    ]
  return specs, q_spec, kv_spec


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Config, masked: bool):
  """One (batch, head, K block, Q block) step: accumulates dK, dV [bk, D] in float32
  scratch over the Q blocks and writes them at the last."""
  ids = None
  if masked:
    kv_ids_ref, q_ids_ref, *refs = refs
    ids = (kv_ids_ref[:, :1], q_ids_ref[:1, :])  # [bk, 1], [1, bq]
  dk_ref, dv_ref, dk_acc, dv_acc = refs
  kv_block, q_step = pl.program_id(2), pl.program_id(3)

  @pl.when(q_step == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  p_t, ds_t = _transposed_p_ds(
      q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids, kv_block * cfg.block_k, cfg
  )
  dv_acc[...] += jnp.dot(
      p_t.astype(do_ref.dtype), do_ref[...], preferred_element_type=jnp.float32
  )  # p^T dO  [bk, D]
  dk_acc[...] += jnp.dot(
      ds_t.astype(q_ref.dtype), q_ref[...], preferred_element_type=jnp.float32
  )  # ds^T Q  [bk, D]

  @pl.when(q_step == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = (dk_acc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Config, masked: bool):
  """One (batch, head, Q block, K block) step: accumulates dQ [bq, D] in float32 scratch
  over the K blocks and writes it at the last."""
  ids = None
  if masked:
    kv_ids_ref, q_ids_ref, *refs = refs
    ids = (kv_ids_ref[:, :1], q_ids_ref[:1, :])
  dq_ref, dq_acc = refs
  kv_step = pl.program_id(3)

  @pl.when(kv_step == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  _, ds_t = _transposed_p_ds(
      q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids, kv_step * cfg.block_k, cfg
  )
  dq_acc[...] += lax.dot_general(
      ds_t.astype(k_ref.dtype), k_ref[...], _TN, preferred_element_type=jnp.float32
  )  # ds K  [bq, D]

  @pl.when(kv_step == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_acc[...] * cfg.scale).astype(dq_ref.dtype)


def _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, d_lse, cfg: _Config):
  """Kernel-layout arrays as in `_forward`, plus d_out [B, N, Qp, D] and d_lse
  [B, N, 1, Qp] -> dq, dk, dv in the layouts and dtypes of q, k, v."""
  batch, heads, q_len, dim = q.shape
  kv_len = k.shape[2]
  bq, bk = cfg.block_q, cfg.block_k
  empty = lse == _NEG_INF  # [B, N, 1, Qp]
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  delta = jnp.where(empty, 0.0, delta[:, :, None, :] - d_lse)  # p = 0 there anyway
  lse = jnp.where(empty, 0.0, lse)
  masked = q_ids is not None
  args = [q, k, v, d_out, lse, delta]
  if masked:
    args += [_as_column(kv_ids), _as_row(q_ids)]

  specs, _, kv_spec = _bwd_specs(dim, masked, q_axis=3, kv_axis=2, bq=bq, bk=bk)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, masked=masked),
      grid=(batch, heads, kv_len // bk, q_len // bq),
      in_specs=specs,
      out_specs=[kv_spec, kv_spec],
      out_shape=[_out(k.shape, k.dtype, q), _out(v.shape, v.dtype, q)],
      scratch_shapes=[pltpu.VMEM((bk, dim), jnp.float32), pltpu.VMEM((bk, dim), jnp.float32)],
      compiler_params=_PARALLEL_LAST_SEQUENTIAL,
      interpret=cfg.interpret,
      name="flash_attention_bwd_dkv",
  )(*args)

  specs, q_spec, _ = _bwd_specs(dim, masked, q_axis=2, kv_axis=3, bq=bq, bk=bk)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, masked=masked),
      grid=(batch, heads, q_len // bq, kv_len // bk),
      in_specs=specs,
      out_specs=q_spec,
      out_shape=_out(q.shape, q.dtype, q),
      scratch_shapes=[pltpu.VMEM((bq, dim), jnp.float32)],
      compiler_params=_PARALLEL_LAST_SEQUENTIAL,
      interpret=cfg.interpret,
      name="flash_attention_bwd_dq",
  )(*args)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_ids, kv_ids, cfg: _Config):
  return _forward(q, k, v, q_ids, kv_ids, cfg)


def _flash_fwd(q, k, v, q_ids, kv_ids, cfg: _Config):
  out, lse = _forward(q, k, v, q_ids, kv_ids, cfg)
  return (out, lse), (q, k, v, q_ids, kv_ids, out, lse)


def _flash_bwd(cfg: _Config, residuals, cotangents):
  q, k, v, q_ids, kv_ids, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv = _backward(q, k, v, q_ids, kv_ids, out, lse, d_out, d_lse, cfg)
  return dq, dk, dv, None, None  # segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------- wrapper


def flash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    block_q: int = 128,
    block_k: int = 128,
    interpret: Any = False,
):
  """Bidirectional flash attention on TPU: query [B, Q, N, D], key/value [B, K, N, D] ->
  out [B, Q, N, D] (query's dtype) and, with `return_lse`, lse [B, N, Q] float32 (the
  log-sum-exp of each query row's scaled logits; -inf for rows with no key).

  Query i attends key j only where q_segment_ids[b, i] == kv_segment_ids[b, j] ([B, Q]
  and [B, K] int32, both or neither). Differentiable in query, key, value (and through
  the lse). block_q / block_k are tile sizes, multiples of 128. `interpret=True` (or a
  `pltpu.InterpretParams`) runs the kernels in TPU interpret mode, e.g. on CPU.
  """
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Give both q_segment_ids and kv_segment_ids, or neither.")
  if not query.dtype == key.dtype == value.dtype:
    raise ValueError(
        f"query, key and value need one dtype, got {query.dtype}, " f"{key.dtype}, {value.dtype}."
    )
  (_, q_len, _, dim), kv_len = query.shape, key.shape[1]
  if scale is None:
    scale = dim**-0.5
  bq, q_padded = _tile(q_len, block_q)
  bk, kv_padded = _tile(kv_len, block_k)
  if interpret is True:
    interpret = pltpu.InterpretParams()
  cfg = _Config(
      scale=float(scale),
      block_q=bq,
      block_k=bk,
      kv_len=kv_len if kv_padded != kv_len else None,
      interpret=interpret,
  )

  to_kernel = lambda x, length: _pad(jnp.swapaxes(x, 1, 2), 2, length)  # [B, N, S, D]
  q_ids = kv_ids = None
  if q_segment_ids is not None:
    q_ids = _pad(jnp.asarray(q_segment_ids, jnp.int32), 1, q_padded)  # [B, Qp]
    kv_ids = _pad(jnp.asarray(kv_segment_ids, jnp.int32), 1, kv_padded)  # [B, Kp]
  args = _vary_alike(
      to_kernel(query, q_padded),
      to_kernel(key, kv_padded),
      to_kernel(value, kv_padded),
      q_ids,
      kv_ids,
  )
  out, lse = _flash(*args, cfg)
  out = jnp.swapaxes(out[:, :, :q_len], 1, 2)  # [B, Q, N, D]
  return (out, lse[:, :, 0, :q_len]) if return_lse else out
