"""mgjax's Pallas TPU flash attention against the XLA reference.

On CPU the kernels run in Pallas' TPU interpret mode (TPU memory spaces and grid
semantics simulated; scratch starts as NaN, so a read before a write shows up). Shapes
are small because the interpreter is slow, but odd (not multiples of the 128 blocks),
span several blocks, and cover key padding, packed segments and a query row with no key.

The last test compiles the kernels ahead of time for a TPU v5p topology on this CPU
machine (needs libtpu, e.g. `pip install "jax[tpu]"`; skipped without it), at the
73,728-token sequence length the models train at, which proves they fit in VMEM/SMEM.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from mgjax.kernels.attention import attention, pallas_tpu, reference

# random_seed shuffles the order of the "parallel" grid dimensions, as a TPU may.
_INTERPRET = pltpu.InterpretParams(random_seed=0)
_TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}  # max |error| / max |reference|


def _segment_ids(kind: str, batch: int, q_len: int, kv_len: int):
  """(q ids [B, Q], kv ids [B, K]) int32, or (None, None)."""
  if kind == "none":
    return None, None
  if kind == "key_padding":  # batch b keeps its first kv_len - b * (kv_len // 3) keys
    valid = kv_len - (kv_len // 3) * np.arange(batch)[:, None]
    return (
        np.ones((batch, q_len), np.int32),
        (np.arange(kv_len)[None, :] < valid).astype(np.int32),
    )
  assert kind == "packed"  # three packed sequences, then padding; a query of segment 9
  q_ids = np.repeat([1, 2, 3], [q_len // 3, q_len // 3, q_len - 2 * (q_len // 3)])
  kv_ids = np.repeat([1, 2, 3, 0], [kv_len // 4] * 3 + [kv_len - 3 * (kv_len // 4)])
  q_ids = np.stack([q_ids, q_ids[::-1]])[:batch].astype(np.int32)
  kv_ids = np.stack([kv_ids, np.roll(kv_ids, 17)])[:batch].astype(np.int32)
  q_ids[0, 5] = 9  # no key has segment 9: zeros, lse = -inf, no NaN
  return q_ids, kv_ids


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, what
  assert not np.isnan(actual).any(), f"{what}: NaN"
  scale = max(float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)), 1.0)
  np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected), err_msg=what)
  finite = np.isfinite(expected)
  error = float(np.abs(actual[finite] - expected[finite]).max(initial=0.0))
  assert error <= tol * scale, f"{what}: max error {error:.3g} > {tol:g} * {scale:.3g}"


def _forward_and_vjp(fn, query, key, value, cotangent, **kwargs):
  """fn's outputs and (dq, dk, dv) for `cotangent`, as one jitted program."""

  def run(q, k, v, ct):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kwargs), q, k, v)
    return out, vjp(ct)

  return jax.jit(run)(query, key, value, cotangent)


def _kernel(q, k, v, **kwargs):
  return pallas_tpu.flash_attention(q, k, v, interpret=_INTERPRET, **kwargs)


@pytest.mark.parametrize(
    "dtype, head_dim, q_len, kv_len, mask, return_lse",
    [
        (jnp.float32, 64, 37, 200, "none", True),
        (jnp.float32, 128, 200, 37, "key_padding", False),
        (jnp.float32, 64, 130, 300, "packed", True),
        (jnp.bfloat16, 128, 37, 200, "packed", True),
        (jnp.bfloat16, 64, 200, 150, "key_padding", False),
    ],
)
def test_matches_reference(dtype, head_dim, q_len, kv_len, mask, return_lse):
  batch, heads = 2, 3
  rng = np.random.default_rng(q_len * kv_len + head_dim)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  query, key, value = (
      normal(batch, q_len, heads, head_dim),
      normal(batch, kv_len, heads, head_dim),
      normal(batch, kv_len, heads, head_dim),
  )
  cotangent = normal(batch, q_len, heads, head_dim)
  if return_lse:  # the lse is differentiable too: give it a cotangent of its own
    cotangent = (cotangent, jnp.asarray(rng.standard_normal((batch, heads, q_len)), jnp.float32))
  q_ids, kv_ids = _segment_ids(mask, batch, q_len, kv_len)
  kwargs = dict(q_segment_ids=q_ids, kv_segment_ids=kv_ids, return_lse=return_lse)

  got, got_grads = _forward_and_vjp(_kernel, query, key, value, cotangent, **kwargs)
  want, want_grads = _forward_and_vjp(reference.attention, query, key, value, cotangent, **kwargs)
  tol = _TOL[dtype]
  out, want_out = (got[0], want[0]) if return_lse else (got, want)
  assert out.dtype == dtype
  _assert_close(out, want_out, tol, "out")
  if return_lse:
    assert got[1].dtype == jnp.float32
    _assert_close(got[1], want[1], 1e-5, "lse")  # float32 logits even from bf16 inputs
  for name, g, r, x in zip("qkv", got_grads, want_grads, (query, key, value)):
    assert g.dtype == x.dtype, name
    _assert_close(g, r, tol, f"d{name}")

  if mask == "packed":  # the query with no key: exact zeros, lse -inf, zero gradient
    assert not np.asarray(out[0, 5], np.float32).any()
    assert np.isneginf(np.asarray(got[1][0, :, 5])).all()
    assert not np.asarray(got_grads[0][0, 5], np.float32).any()


def test_dispatcher_runs_it_in_interpret_mode_on_cpu():
  rng = np.random.default_rng(0)
  query, key, value = (
      jnp.asarray(rng.standard_normal((1, 9, 2, 64)), jnp.float32) for _ in range(3)
  )
  _assert_close(
      attention(query, key, value, implementation="pallas_tpu"),
      reference.attention(query, key, value),
      1e-5,
      "out",
  )


def test_inside_shard_map_with_replicated_segment_ids():
  """As mgjax.parallel calls it: per-device heads inside `jax.shard_map` (check_vma on),
  segment ids invariant across the mesh while q, k, v vary."""
  mesh = jax.make_mesh((2,), ("heads",), devices=jax.devices()[:2])
  spec = P(None, None, "heads", None)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  rng = np.random.default_rng(1)
  query, key, value = (
      put(rng.standard_normal((1, s, 2, 64)).astype(np.float32), spec) for s in (20, 30, 30)
  )
  q_ids = put(np.ones((1, 20), np.int32), P())
  kv_ids = put((np.arange(30) < 25).astype(np.int32)[None], P())

  def loss(fn, q, k, v, q_ids, kv_ids):
    sharded = jax.shard_map(
        lambda q, k, v, qi, ki: fn(q, k, v, q_segment_ids=qi, kv_segment_ids=ki),
        mesh=mesh,
        in_specs=(spec, spec, spec, P(), P()),
        out_specs=spec,
    )
    return jnp.sum(jnp.sin(sharded(q, k, v, q_ids, kv_ids)))

  grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3)), static_argnums=0)
  got = grad(_kernel, query, key, value, q_ids, kv_ids)
  want = grad(reference.attention, query, key, value, q_ids, kv_ids)
  _assert_close(got[0], want[0], 1e-5, "loss")
  for name, g, r in zip("qkv", got[1], want[1]):
    _assert_close(g, r, 1e-5, f"d{name}")


def test_rejects_blocks_off_the_lane_width():
  x = jnp.zeros((1, 8, 1, 64))
  with pytest.raises(ValueError, match="multiples of 128"):
    pallas_tpu.flash_attention(x, x, x, block_q=64, interpret=True)


# ------------------------------------------------------------- AOT compile for TPU v5p

AOT_TOKENS = 73_728  # e.g. 18 latent frames x 64 x 64 patches


def test_compiles_ahead_of_time_for_tpu_v5p():
  """Lowers and compiles forward and forward+backward for a v5p 2x2x1 slice (4 chips)
  without TPU hardware: libtpu's compile-only topology gives the devices, each of which
  runs the kernels on one head of a 73,728-token sequence (heads sharded over chips)."""
  pytest.importorskip("libtpu")
  from jax.experimental import topologies

  topology = topologies.get_topology_desc("v5p:2x2x1", "tpu")
  mesh = topologies.make_mesh(topology, (len(topology.devices),), ("heads",))
  spec = P(None, None, "heads", None)  # [B, S, N, D]
  ids = jax.ShapeDtypeStruct((1, AOT_TOKENS), jnp.int32, sharding=NamedSharding(mesh, P()))
  qkv = jax.ShapeDtypeStruct(
      (1, AOT_TOKENS, mesh.shape["heads"], 128), jnp.bfloat16, sharding=NamedSharding(mesh, spec)
  )

  @jax.shard_map(
      mesh=mesh, in_specs=(spec, spec, spec, P(), P()), out_specs=(spec, P(None, "heads", None))
  )
  def per_chip(q, k, v, q_ids, kv_ids):
    return pallas_tpu.flash_attention(
        q, k, v, q_segment_ids=q_ids, kv_segment_ids=kv_ids, return_lse=True
    )

  def loss(q, k, v, q_ids, kv_ids):
    out, lse = per_chip(q, k, v, q_ids, kv_ids)
    return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(lse)

  start = time.perf_counter()
  forward = jax.jit(per_chip).lower(qkv, qkv, qkv, ids, ids).compile().as_text()
  both = (
      jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      .lower(qkv, qkv, qkv, ids, ids)
      .compile()
      .as_text()
  )
  print(
      f"AOT compile (fwd, fwd+bwd) for {topology.devices[0].device_kind}: "
      f"{time.perf_counter() - start:.1f} s"
  )
  assert "flash_attention_fwd" in forward
  for kernel in ("flash_attention_fwd", "flash_attention_bwd_dkv", "flash_attention_bwd_dq"):
    assert kernel in both, kernel

  # The compile is a real VMEM check: a kernel asking for 128 MiB of VMEM fails it.
  # (So do these kernels with 8192 x 8192 tiles, but compiling those takes ~90 s.)
  def greedy(x_ref, o_ref, scratch_ref):
    scratch_ref[:8] = x_ref[...]
    o_ref[...] = scratch_ref[:8]

  small = jax.ShapeDtypeStruct(
      (8, 128), jnp.float32, sharding=SingleDeviceSharding(topology.devices[0])
  )
  too_big = pl.pallas_call(
      greedy,
      out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      scratch_shapes=[pltpu.VMEM((256 * 1024, 128), jnp.float32)],
  )
  with pytest.raises(Exception, match="(?i)exceed memory|out of memory"):
    jax.jit(too_big).lower(small).compile()
