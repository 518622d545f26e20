"""Attention throughput per implementation: forward and forward+backward TFLOP/s.

    python benchmarks/attention.py                       # on a GPU or TPU
    python benchmarks/attention.py --lengths=4096,16384 --heads=8 --nosweep

Three steps, each printed:
  1. check: every kernel of this platform against the xla reference on random inputs
     with key padding and odd lengths (relative L2 error of out, dq, dk, dv); stops if
     one is off, so that no wrong kernel gets timed.
  2. sweep (GPU): times candidate tilings of the Pallas GPU kernel at --sweep_length,
     the forward ones forward-only, then the backward ones in forward+backward, and
     keeps the fastest of each for step 3 (the defaults in pallas_gpu.py come from it).
  3. table: `mgjax.kernels.attention.attention` for every implementation of this
     platform (xla, and cudnn + pallas_gpu on NVIDIA GPUs, pallas_tpu on TPUs) at
     head dim 128, bf16, one sequence per length, with the device name; then the
     --masked shapes (cross-attention to padded text, key-padded self-attention).

FLOPs follow the FlashAttention-2 convention: forward 4 * B * N * S^2 * D, backward
2.5x the forward. xla materialises the S x S scores, so it is timed only up to
--xla_max_length. On CPU the Pallas kernels would run in interpret mode, so only xla
is timed there. --out writes all figures as JSON.
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mgjax.kernels import attention as kernels

_LENGTHS = flags.DEFINE_list(
    "lengths", ["4096", "8192", "16384", "32768", "73728"], "Sequence lengths (tokens)."
)
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed samples per setting (median).")
_SWEEP = flags.DEFINE_bool("sweep", True, "Time candidate Pallas GPU tilings first.")
_SWEEP_LENGTH = flags.DEFINE_integer("sweep_length", 16384, "Tokens for the sweep.")
_XLA_MAX_LENGTH = flags.DEFINE_integer("xla_max_length", 16384, "Longest sequence timed with xla.")
_MASKED = flags.DEFINE_list(
    "masked",
    ["16384:256:200", "73728:256:200", "16384:16384:15000"],
    "Masked shapes query:keys:valid_keys (keys past valid_keys padded out by segment ids):"
    " the DiT's text cross-attention and key-padded self-attention.",
)
_OUT = flags.DEFINE_string("out", None, "Write the figures here as JSON.")

# Candidate tilings (block_q, block_k, num_warps, num_stages) of the Pallas GPU kernels.
_CANDIDATES = {
    "forward": [
        (128, 128, 8, 3),
        (128, 64, 8, 3),
        (128, 64, 8, 4),
        (64, 64, 4, 3),
        (64, 128, 4, 3),
        (256, 64, 8, 3),
    ],
    "dkv": [
        (64, 64, 4, 2),
        (64, 64, 4, 3),
        (32, 128, 4, 3),
        (32, 64, 4, 3),
        (128, 64, 8, 2),
        (64, 128, 4, 2),
    ],
    "dq": [(128, 64, 8, 3), (64, 64, 4, 2), (128, 32, 4, 3), (128, 64, 4, 3), (128, 128, 8, 2)],
}


def implementations() -> list[str]:
  platform = jax.default_backend()
  return {"gpu": ["xla", "cudnn", "pallas_gpu"], "tpu": ["xla", "pallas_tpu"]}.get(
      platform, ["xla"]
  )


def median_seconds(fn, *args, repeats: int) -> float:
  """Median seconds of one call. Each sample times enough back-to-back calls to last
  ~20 ms, so that dispatch overhead stays out of short kernels' figures."""
  jax.block_until_ready(fn(*args))  # compile and warm up
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  calls = max(1, int(0.02 / (time.perf_counter() - start)))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    samples.append((time.perf_counter() - start) / calls)
  return float(np.median(samples))


def _inputs(q_len: int, kv_len: int, heads: int, head_dim: int, dtype=jnp.bfloat16):
  """q, k, v, d_out: random [1, length, heads, head_dim] (fresh per shape)."""
  keys = jax.random.split(jax.random.key(q_len * 7 + kv_len), 4)
  return tuple(
      jax.random.normal(key, (1, n, heads, head_dim), dtype)
      for key, n in zip(keys, (q_len, kv_len, kv_len, q_len))
  )


def _forward_backward(forward):
  def run(q, k, v, d_out):
    out, vjp = jax.vjp(forward, q, k, v)
    return vjp(d_out)

  return run


def measure(
    forward,
    length: int,
    heads: int,
    head_dim: int,
    repeats: int,
    *,
    kv_length: int | None = None,
    valid_keys: int | None = None,
    forward_only: bool = False,
    backward_only: bool = False,
) -> tuple[float, float]:
  """(forward, forward+backward) TFLOP/s of forward(q, k, v), q [1, length, heads, D],
  k/v [1, kv_length (default length), heads, D]; with `valid_keys` the keys past it are
  masked out by segment ids (FLOPs still count all keys). The figure not asked for is
  nan."""
  kv_length = kv_length or length
  q, k, v, d_out = _inputs(length, kv_length, heads, head_dim)
  if valid_keys is not None:
    forward = functools.partial(
        forward,
        q_segment_ids=jnp.ones((1, length), jnp.int32),
        kv_segment_ids=(jnp.arange(kv_length) < valid_keys).astype(jnp.int32)[None],
    )
  flops = 4.0 * heads * length * kv_length * head_dim
  fwd = both = float("nan")
  if not backward_only:
    fwd = flops / median_seconds(jax.jit(forward), q, k, v, repeats=repeats) / 1e12
  if not forward_only:
    seconds = median_seconds(jax.jit(_forward_backward(forward)), q, k, v, d_out, repeats=repeats)
    both = 3.5 * flops / seconds / 1e12
  return fwd, both


def _relative_error(actual, expected) -> float:
  actual, expected = (np.asarray(x, np.float64) for x in (actual, expected))
  if not np.isfinite(actual).all():
    return float("inf")
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def check(names: list[str], tolerance: float = 2e-2) -> dict:
  """Relative L2 errors of out, dq, dk, dv against xla, bf16 and fp32, head dims 64 and
  128, ~1000 query / ~777 key tokens with key padding. An implementation that fails to
  run is reported (error string); one that runs but is off by more than `tolerance`
  stops the benchmark."""
  errors = {}
  for name in (n for n in names if n != "xla"):
    for dtype, head_dim in ((jnp.bfloat16, 128), (jnp.bfloat16, 64), (jnp.float32, 64)):
      if name == "cudnn" and dtype == jnp.float32:
        continue  # cuDNN's flash attention is half precision only
      label = f"{name} {jnp.dtype(dtype).name} d{head_dim}"
      # cuDNN takes only lengths that are multiples of 64; the kernels get odd ones.
      q_len, kv_len = (1024, 768) if name == "cudnn" else (1000, 777)
      keys = jax.random.split(jax.random.key(1), 4)
      q = jax.random.normal(keys[0], (2, q_len, 4, head_dim), dtype)
      k, v = (jax.random.normal(key, (2, kv_len, 4, head_dim), dtype) for key in keys[1:3])
      d_out = jax.random.normal(keys[3], q.shape, dtype)
      q_ids = jnp.ones((2, q_len), jnp.int32)
      kv_ids = (jnp.arange(kv_len)[None, :] < jnp.array([[kv_len], [500]])).astype(jnp.int32)
      results = {}
      try:
        for impl in (name, "xla"):
          forward = functools.partial(
              kernels.attention, q_segment_ids=q_ids, kv_segment_ids=kv_ids, implementation=impl
          )
          out, vjp = jax.vjp(forward, q, k, v)
          results[impl] = (out, *vjp(d_out))
      except Exception as e:  # noqa: BLE001 - reported, and the implementation skipped
        errors[label] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"check {label:24s} failed: {errors[label]}", flush=True)
        continue
      worst = max(_relative_error(a, b) for a, b in zip(results[name], results["xla"]))
      errors[label] = worst
      print(f"check {label:24s} max relative L2 error of out/dq/dk/dv: {worst:.2e}", flush=True)
      if not worst <= tolerance:
        raise AssertionError(f"{label} differs from xla by {worst:.2e} > {tolerance}.")
  return errors


def _runs(name: str, errors: dict) -> bool:
  """False if the check could not run `name` at head dim 128 (bf16): no sweep then."""
  return not isinstance(errors.get(f"{name} bfloat16 d128", 0.0), str)


def sweep(length: int, heads: int, head_dim: int, repeats: int):
  """Times candidate tilings of each Pallas GPU kernel in turn (forward: forward-only;
  dK/dV, then dQ: forward+backward), the others at their best so far. Returns
  ({"tiling"|"dkv_tiling"|"dq_tiling": best Tiling}, rows)."""
  from mgjax.kernels.attention import pallas_gpu  # noqa: PLC0415 - GPU only

  best = dict(
      tiling=pallas_gpu.FORWARD_TILING,
      dkv_tiling=pallas_gpu.DKV_TILING,
      dq_tiling=pallas_gpu.DQ_TILING,
  )
  rows = []
  for stage, candidates in _CANDIDATES.items():
    argument = "tiling" if stage == "forward" else f"{stage}_tiling"
    best_score = -1.0
    for candidate in candidates:
      try:
        tiling = pallas_gpu.Tiling(*candidate)
        forward = functools.partial(pallas_gpu.flash_attention, **{**best, argument: tiling})
        fwd, both = measure(
            forward,
            length,
            heads,
            head_dim,
            repeats,
            forward_only=stage == "forward",
            backward_only=stage != "forward",
        )
      except Exception as e:  # noqa: BLE001 - a tiling that does not compile is a result
        fwd = both = float("nan")
        print(f"sweep {stage} {candidate}: {type(e).__name__}: {str(e)[:200]}")
      rows.append(dict(stage=stage, tiling=candidate, forward=fwd, forward_backward=both))
      print(
          f"sweep {stage:7s} q{candidate[0]:<4d} k{candidate[1]:<4d} warps "
          f"{candidate[2]} stages {candidate[3]}: {fwd:7.1f} / {both:7.1f} TFLOP/s",
          flush=True,
      )
      score = fwd if stage == "forward" else both
      if score > best_score:
        best_score, best[argument] = score, tiling
  return best, rows


def main(argv):
  del argv
  device = jax.devices()[0]
  report = dict(
      device=device.device_kind, jax=jax.__version__, heads=_HEADS.value, head_dim=_HEAD_DIM.value
  )

  def save():
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump(report, f, indent=1)

  # "auto" too: on a GPU the check's masked inputs route it to pallas_gpu.
  report["check"] = check(implementations() + (["auto"] if jax.default_backend() != "cpu" else []))
  save()
  names = implementations()
  timed = {name: functools.partial(kernels.attention, implementation=name) for name in names}
  if "pallas_gpu" in names and _runs("pallas_gpu", report["check"]) and _SWEEP.value:
    best, report["sweep"] = sweep(
        _SWEEP_LENGTH.value, _HEADS.value, _HEAD_DIM.value, _REPEATS.value
    )
    report["best_tilings"] = {name: str(tiling) for name, tiling in best.items()}
    print(f"best: {report['best_tilings']}")
    save()
    from mgjax.kernels.attention import pallas_gpu  # noqa: PLC0415 - GPU only

    timed["pallas_gpu"] = functools.partial(pallas_gpu.flash_attention, **best)

  print(
      f"Attention, bf16, head dim {_HEAD_DIM.value}, {_HEADS.value} heads, batch 1, "
      f"on {device.device_kind} ({jax.default_backend()}, jax {jax.__version__}); "
      f"TFLOP/s forward / fwd+bwd"
  )
  shapes = [(n, n, None) for n in map(int, _LENGTHS.value)]
  shapes += [tuple(int(x) for x in shape.split(":")) for shape in _MASKED.value]
  report["table"] = []
  print(f"{'query':>7} {'keys':>7} {'valid':>7} " + " ".join(f"{n:>21}" for n in timed))
  for q_len, kv_len, valid_keys in shapes:
    cells = []
    for name, forward in timed.items():
      if name == "xla" and q_len * kv_len > _XLA_MAX_LENGTH.value**2:
        cells.append("-")
        continue
      try:
        fwd, both = measure(
            forward,
            q_len,
            _HEADS.value,
            _HEAD_DIM.value,
            _REPEATS.value,
            kv_length=kv_len,
            valid_keys=valid_keys,
        )
        cells.append(f"{fwd:9.1f} / {both:9.1f}")
        report["table"].append(
            dict(
                query=q_len,
                keys=kv_len,
                valid_keys=valid_keys,
                implementation=name,
                forward=fwd,
                forward_backward=both,
            )
        )
      except Exception as e:  # noqa: BLE001 - an OOM or unsupported shape is a result too
        cells.append(
            "OOM"
            if "RESOURCE_EXHAUSTED" in str(e) or "memory" in str(e).lower()
            else type(e).__name__
        )
    print(
        f"{q_len:>7} {kv_len:>7} {valid_keys or '-':>7} "
        + " ".join(f"{cell:>21}" for cell in cells),
        flush=True,
    )
    save()


if __name__ == "__main__":
  app.run(main)
