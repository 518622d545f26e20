"""The dispatcher's `auto` rule per platform and shape (see dispatch.py)."""

import jax
import jax.numpy as jnp
import pytest

from mgjax.kernels.attention import dispatch


def _array(length: int, dtype=jnp.bfloat16, head_dim: int = 128):
  return jax.ShapeDtypeStruct((1, length, 4, head_dim), dtype)


@pytest.mark.parametrize(
    "query, return_lse, masked, expected",
    [
        (_array(4096), False, False, "cudnn"),
        (_array(1001), False, False, "cudnn"),
        (_array(4096), False, True, "pallas_gpu"),  # segment ids: cuDNN's bias path is slower
        (_array(4096), True, False, "pallas_gpu"),  # lse for ring attention
        (_array(4096, jnp.float32), False, False, "pallas_gpu"),
        (_array(4096, head_dim=256), False, False, "pallas_gpu"),
    ],
)
def test_auto_on_gpu(monkeypatch, query, return_lse, masked, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert dispatch.resolve("auto", query, return_lse, masked) == expected


@pytest.mark.parametrize("platform, expected", [("tpu", "pallas_tpu"), ("cpu", "xla")])
def test_auto_elsewhere(monkeypatch, platform, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  assert dispatch.resolve("auto", _array(4096)) == expected


def test_explicit_choice_is_kept_and_unknown_rejected():
  assert dispatch.resolve("pallas_gpu", _array(16)) == "pallas_gpu"
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    dispatch.resolve("flash", _array(16))
