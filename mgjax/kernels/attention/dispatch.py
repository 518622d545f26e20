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
  auto        tpu -> pallas_tpu; cpu -> xla; gpu -> cudnn for unmasked half-precision
              calls with head dim <= 128 and no lse, else pallas_gpu. From the H100
              table in docs/benchmarks.md: unmasked, cuDNN is 1.2-1.3x faster than
              pallas_gpu forward and ~1.5x forward+backward at 4K-73K tokens; with
              segment ids (jax gives cuDNN a bias), pallas_gpu is 1.2x (key-padded
              self-attention) to 2x (cross-attention to padded text) faster in
              forward+backward. pallas_gpu also serves what cuDNN cannot: the lse
              for ring context parallelism, fp32, head dims over 128.

On CPU the Pallas kernels run in interpret mode (their GPU or TPU semantics,
executed by the interpreter), which is how the test suite proves them; slow, but
exact enough to compare against `xla`.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib

import jax
import jax.numpy as jnp

from mgjax.kernels.attention import reference

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_gpu", "pallas_tpu")
# Modules holding each Pallas kernel's `flash_attention`, imported on first use.
_PALLAS_MODULES = {
    "pallas_gpu": "mgjax.kernels.attention.pallas_gpu",
    "pallas_tpu": "mgjax.kernels.attention.pallas_tpu",
}


# The platform the kernels are built for: the default backend, unless a caller
# compiles ahead of time for another (mgjax.aot: a TPU topology from a CPU machine).
_TARGET = contextvars.ContextVar("attention_target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str):
  """Within: `auto` chooses, and Pallas kernels compile (not interpret), for
  `platform` ("tpu", "gpu", "cpu") whatever the default backend is."""
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def _platform() -> str:
  return _TARGET.get() or jax.default_backend()


def resolve(
    implementation: str, query: jax.Array, return_lse: bool = False, masked: bool = False
) -> str:
  """The concrete implementation `implementation` stands for on this platform and shape
  (`masked`: segment ids are given)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"Unknown attention implementation {implementation!r}; use one of " f"{IMPLEMENTATIONS}."
    )
  if implementation != "auto":
    return implementation
  platform = _platform()
  if platform == "tpu":
    return "pallas_tpu"
  if platform == "gpu":
    return "cudnn" if _cudnn_is_fastest(query, return_lse, masked) else "pallas_gpu"
  return "xla"


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    implementation: str = "auto",
):
  """Bidirectional softmax attention: query [B, Q, N, D], key/value [B, K, N, D] ->
  out [B, Q, N, D] (and lse [B, N, Q] float32 with `return_lse`).

  Query i attends to key j only where q_segment_ids[b, i] == kv_segment_ids[b, j]
  (both [B, Q] / [B, K] int32, or both None); rows with no key give zeros.
  """
  name = resolve(implementation, query, return_lse, masked=q_segment_ids is not None)
  kwargs = dict(
      q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale, return_lse=return_lse
  )
  if name == "xla":
    return reference.attention(query, key, value, **kwargs)
  if name == "cudnn":
    return _cudnn(query, key, value, **kwargs)
  kernel = importlib.import_module(_PALLAS_MODULES[name]).flash_attention
  return kernel(query, key, value, interpret=_platform() == "cpu", **kwargs)


def _cudnn_is_fastest(query, return_lse: bool, masked: bool) -> bool:
  """cuDNN runs the call (half precision, head dim <= 128 and a multiple of 8, no lse)
  and wins it: only unmasked, by the measurements quoted above."""
  return (
      query.dtype in (jnp.bfloat16, jnp.float16)
      and query.shape[-1] <= 128
      and query.shape[-1] % 8 == 0
      and not return_lse
      and not masked
  )


def _cudnn(query, key, value, *, q_segment_ids, kv_segment_ids, scale, return_lse):
  if return_lse:
    raise ValueError(
        "The cudnn attention gives no differentiable log-sum-exp; use "
        "implementation='pallas_gpu' (or 'xla') where lse is needed."
    )
  mask = reference.segment_mask(q_segment_ids, kv_segment_ids)  # [B, 1, Q, K] or None
  return jax.nn.dot_product_attention(
      query, key, value, mask=mask, scale=scale, implementation="cudnn"
  )
