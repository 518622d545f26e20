"""One attention entry point that picks an implementation per platform and shape.

    out = attention(q, k, v, kv_segment_ids=..., implementation="auto")

Implementations, all with the layout [B, S, N, D] and segment-id masking (see
`reference.py`):

  xla         the float32 reference; any platform, any shape.
  cudnn       `jax.nn.dot_product_attention(implementation="cudnn")`: NVIDIA GPUs,
              bf16/fp16, head dim <= 128; no log-sum-exp output (jax returns it
              in the output dtype with its gradient stopped).
  pallas_gpu  mgjax's Pallas (Triton) flash attention: forward + backward kernels.
  pallas_tpu  mgjax's Pallas Mosaic TPU flash attention.
  auto        tpu -> pallas_tpu; gpu -> cudnn where it applies (and no lse is
              asked for), else pallas_gpu;
              cpu -> xla. The GPU rule is not yet measured: run
              `benchmarks/attention.py` on the device and revise it from the table.

On CPU the Pallas kernels run in interpret mode (their GPU or TPU semantics,
executed by the interpreter), which is how the test suite proves them; slow, but
exact enough to compare against `xla`.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

from mgjax.kernels.attention import reference

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_gpu", "pallas_tpu")
# Modules holding each Pallas kernel's `flash_attention`, imported on first use.
_PALLAS_MODULES = {"pallas_gpu": "mgjax.kernels.attention.pallas_gpu",
                   "pallas_tpu": "mgjax.kernels.attention.pallas_tpu"}


def resolve(implementation: str, query: jax.Array, return_lse: bool = False) -> str:
  """The concrete implementation `implementation` stands for on this platform."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; use one of "
                     f"{IMPLEMENTATIONS}.")
  if implementation != "auto":
    return implementation
  platform = jax.default_backend()
  if platform == "tpu":
    return "pallas_tpu"
  if platform == "gpu":
    cudnn_ok = (query.dtype in (jnp.bfloat16, jnp.float16) and query.shape[-1] <= 128
                and not return_lse)
    return "cudnn" if cudnn_ok else "pallas_gpu"
  return "xla"


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
              q_segment_ids: jax.Array | None = None,
              kv_segment_ids: jax.Array | None = None, scale: float | None = None,
              return_lse: bool = False, implementation: str = "auto"):
  """Bidirectional softmax attention: query [B, Q, N, D], key/value [B, K, N, D] ->
  out [B, Q, N, D] (and lse [B, N, Q] float32 with `return_lse`).

  Query i attends to key j only where q_segment_ids[b, i] == kv_segment_ids[b, j]
  (both [B, Q] / [B, K] int32, or both None); rows with no key give zeros.
  """
  name = resolve(implementation, query, return_lse)
  kwargs = dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale,
                return_lse=return_lse)
  if name == "xla":
    return reference.attention(query, key, value, **kwargs)
  if name == "cudnn":
    return _cudnn(query, key, value, **kwargs)
  kernel = importlib.import_module(_PALLAS_MODULES[name]).flash_attention
  return kernel(query, key, value, interpret=jax.default_backend() == "cpu", **kwargs)


def _cudnn(query, key, value, *, q_segment_ids, kv_segment_ids, scale, return_lse):
  if return_lse:
    raise ValueError("The cudnn attention gives no differentiable log-sum-exp; use "
                     "implementation='pallas_gpu' (or 'xla') where lse is needed.")
  mask = reference.segment_mask(q_segment_ids, kv_segment_ids)  # [B, 1, Q, K] or None
  return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale,
                                      implementation="cudnn")
