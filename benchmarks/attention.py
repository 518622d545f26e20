"""Attention throughput per implementation: forward and forward+backward TFLOP/s.

    python benchmarks/attention.py                       # on a GPU or TPU
    python benchmarks/attention.py --lengths=4096,16384 --heads=8

Times `mgjax.kernels.attention.attention` for every implementation that exists on
this platform (xla, and cudnn + pallas_gpu on NVIDIA GPUs, pallas_tpu on TPUs) at
head dim 128, bf16, one sequence of each length, and prints one table with the
device name. FLOPs follow the FlashAttention-2 convention: forward 4 * B * N * S^2 * D,
backward 2.5x the forward. An implementation that runs out of memory (the xla
reference materialises the S x S scores) prints "OOM". On CPU the Pallas kernels
would run in interpret mode, so only xla is timed there.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mgjax.kernels import attention as kernels

_LENGTHS = flags.DEFINE_list("lengths", ["4096", "8192", "16384", "32768", "73728"],
                             "Sequence lengths (tokens).")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per setting (median).")


def implementations() -> list[str]:
  platform = jax.default_backend()
  return {"gpu": ["xla", "cudnn", "pallas_gpu"], "tpu": ["xla", "pallas_tpu"]}.get(
      platform, ["xla"])


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(implementation: str, length: int, heads: int, head_dim: int,
            repeats: int) -> tuple[float, float]:
  """(forward, forward+backward) TFLOP/s of one [1, length, heads, head_dim] call."""
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (1, length, heads, head_dim), jnp.bfloat16)
             for key in keys)

  def forward(q, k, v):
    return kernels.attention(q, k, v, implementation=implementation)

  def forward_backward(q, k, v):
    out, vjp = jax.vjp(forward, q, k, v)
    return vjp(out)

  flops = 4.0 * heads * length * length * head_dim
  t_forward = median_seconds(jax.jit(forward), q, k, v, repeats=repeats)
  t_both = median_seconds(jax.jit(forward_backward), q, k, v, repeats=repeats)
  return flops / t_forward / 1e12, 3.5 * flops / t_both / 1e12


def main(argv):
  del argv
  names = implementations()
  device = jax.devices()[0]
  print(f"Attention, bf16, head dim {_HEAD_DIM.value}, {_HEADS.value} heads, batch 1, "
        f"on {device.device_kind} ({jax.default_backend()}); TFLOP/s forward / fwd+bwd")
  print(f"{'tokens':>8} " + " ".join(f"{name:>21}" for name in names))
  for length in map(int, _LENGTHS.value):
    cells = []
    for name in names:
      try:
        fwd, both = measure(name, length, _HEADS.value, _HEAD_DIM.value, _REPEATS.value)
        cells.append(f"{fwd:9.1f} / {both:9.1f}")
      except Exception as e:  # noqa: BLE001 - an OOM or unsupported shape is a result too
        cells.append("OOM" if "RESOURCE_EXHAUSTED" in str(e) or "memory" in str(e).lower()
                     else type(e).__name__)
    print(f"{length:>8} " + " ".join(f"{cell:>21}" for cell in cells), flush=True)


if __name__ == "__main__":
  app.run(main)
