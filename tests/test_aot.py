"""Ahead-of-time compilation of the real train step for a TPU topology on CPU
(mgjax/aot.py; needs the `tpu` extra's libtpu)."""

import subprocess
import sys

import pytest

from mgjax import aot
from tests.configs import t2v_aot
from tests.test_train import ROOT

pytest.importorskip("libtpu")


def test_compiles_for_v5p_and_counts_memory_and_flops():
  report, = aot.compile_report(t2v_aot.get_config("fit"), "v5p-8")  # 4 chips
  assert report.bucket == "video" and report.global_batch == 8
  assert report.tokens_per_example == 4 * 4 * 4  # latent 4 x 8 x 8 (8x TAE), patch 1x2x2
  assert report.argument_bytes > 0 and report.temp_bytes > 0 and report.output_bytes > 0
  assert 0 < report.total_bytes < report.hbm_bytes and report.headroom > 0.99
  assert report.compile_seconds > 0
  # XLA counts the scanned layer once; rebuilt from unrolled compiles, the FLOPs
  # outside the attention kernels match the analytic weight matmuls.
  matmuls = report.model_flops - report.attention_flops
  compiled_matmuls = report.xla_flops - report.attention_flops
  assert report.xla_flops_counted < 0.8 * compiled_matmuls
  assert abs(compiled_matmuls / matmuls - 1) < 0.1, (compiled_matmuls, matmuls)
  assert 0 < report.mfu <= 0.5 * 1.1  # at most the assumed peak fraction


def test_topology_names():
  assert aot.topology_name("v5p-1024") == "v5p:8x8x8"
  assert aot.topology_name("v5p:2x2x1") == "v5p:2x2x1"
  with pytest.raises(ValueError, match="v5p:4x4x4"):
    aot.topology_name("v5p-12")


def test_a_layout_that_does_not_fit_is_reported_in_one_message():
  command = [sys.executable, "-m", "mgjax.aot", "--config=tests/configs/t2v_aot.py:overflow",
             "--topology=v5p-8", "--nocount_flops"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 1, result.stderr[-3000:]
  message = result.stdout + result.stderr
  assert "Traceback" not in message
  assert "DOES NOT FIT" in message or "does not fit v5p-8" in message, message[-3000:]
