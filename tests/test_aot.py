"""Ahead-of-time compilation of the real train step for a TPU topology on CPU
(mgjax/aot.py; needs the `tpu` extra's libtpu)."""

import math
import subprocess
import sys

import jax
import pytest

from mgjax import aot, configs
from mgjax.text.conditioning import TextConditioner
from tests.configs import t2v_aot
from tests.test_train import ROOT

pytest.importorskip("libtpu")


def test_compiles_for_v5p_and_counts_memory_and_flops():
  (report,) = aot.compile_report(t2v_aot.get_config("fit"), "v5p-8")  # 4 chips
  assert report.bucket == "video" and report.global_batch == 8
  assert report.tokens_per_example == 4 * 4 * 4  # latent 4 x 8 x 8 (8x TAE), patch 1x2x2
  assert report.argument_bytes > 0 and report.temp_bytes > 0 and report.output_bytes > 0
  assert 0 < report.total_bytes < report.hbm_bytes and report.headroom > 0.99
  assert report.compile_seconds > 0
  # XLA counts the scanned layer once; rebuilt from unrolled compiles, the FLOPs
  # outside the attention kernels match the analytic weight matmuls.
  matmuls = report.model_flops - report.attention_flops
  compiled_matmuls = report.xla_flops - report.kernel_flops
  # The kernels: backward recomputation, no remat here, and 64 video / 96 text tokens
  # padded to 128-token blocks: 18 matmul-units of 128 x 128 per layer where the model
  # counts 12 of 64 x (64 + 96).
  assert report.kernel_flops == pytest.approx(
      report.attention_flops * (18 * 128 * (128 + 128)) / (12 * 64 * (64 + 96))
  )
  assert report.xla_flops_counted < 0.8 * compiled_matmuls
  assert abs(compiled_matmuls / matmuls - 1) < 0.1, (compiled_matmuls, matmuls)
  assert 0 < report.mfu <= 0.5 * 1.1  # at most the assumed peak fraction
  assert report.text_in_step == ("ul2",) and report.text_precomputed == ()


def test_big_configs_name_the_paper_text_encoders_for_weight_free_compiles():
  """Training a big config without the encoders' weights is refused; aot builds each
  missing one from text.architectures at the paper's size, and a given path wins."""
  config = configs.load_config("experiments/t2v.py:1b")
  with pytest.raises(ValueError, match="'byt5' has neither a path nor a model"):
    TextConditioner(config.text)
  assert aot.fill_text_architectures(config) == ["byt5", "metaclip", "ul2"]
  text = TextConditioner(config.text)
  _, frozen = jax.eval_shape(text.init, jax.random.key(0))  # nothing allocated
  sizes = {
      name: sum(math.prod(a.shape) for a in jax.tree.leaves(tree)) for name, tree in frozen.items()
  }
  assert sizes == {"ul2": 8_721_797_632, "metaclip": 353_167_360, "byt5": 217_657_472}
  assert {e.name: e.width for e in text.encoders} == {"ul2": 4096, "metaclip": 1024, "byt5": 1472}
  with_path = configs.load_config("experiments/t2v.py:30b")
  with_path.text.encoders.ul2.path = "/ckpt/ul2"
  assert aot.fill_text_architectures(with_path) == ["byt5", "metaclip"]
  assert not with_path.text.encoders.ul2.model


def test_compiles_the_1b_config_with_precomputed_text_for_v5p_8():
  """experiments/t2v.py:1b at its width (2048, MLP 5632, 16 heads of 128) with its
  three text encoders' widths, their embeddings as step inputs, on 4 v5p chips. One
  compile of a 1b-width step takes ~65 s on this 2-core machine, so it is the only
  one: one unrolled layer instead of 16 scanned (XLA then counts every FLOP but the
  attention kernels', no scan correction needed) and 1-layer text encoders (their
  depth only adds frozen weights to the state; the test above checks their sizes)."""
  config = configs.load_config("experiments/t2v.py:1b")
  config.data.buckets = (aot.parse_bucket("video:16:128:128:4"),)
  config.data.precompute_text = True
  config.model.update(num_layers=1, scan_layers=False)
  for name, layers in (
      ("ul2", "num_layers"),
      ("byt5", "num_layers"),
      ("metaclip", "num_hidden_layers"),
  ):
    config.text.architectures[name][layers] = 1
  (report,) = aot.compile_report(config, "v5p-8")
  assert report.tokens_per_example == 2 * 8 * 8  # latent 2 x 16 x 16, patch 1x2x2
  assert report.text_in_step == () and report.text_precomputed == ("byt5", "metaclip", "ul2")
  assert report.argument_bytes > 0 and report.temp_bytes > 0 and report.output_bytes > 0
  assert 0 < report.total_bytes < report.hbm_bytes
  # The donated state comes back in place; what is left of the arguments is this
  # chip's quarter of the batch: latent [4, 2, 16, 16, 16] and embeddings [4, L, D]
  # (float32) with masks [4, L] of UL2, MetaCLIP and ByT5.
  batch_bytes = (
      4 * 2 * 16 * 16 * 16 * 4
      + 4 * (256 * 4096 + 256 * 1024 + 128 * 1472) * 4
      + 4 * (256 + 256 + 128)
  )
  assert abs((report.argument_bytes - report.alias_bytes) / (batch_bytes / 4) - 1) < 0.1
  assert report.xla_flops == pytest.approx(report.xla_flops_counted + report.kernel_flops)
  # save_dots recomputes the attention forward (a kernel output is not a dot): 22
  # matmul-units per attention where the model counts 12 (128 and 640 tokens, no padding).
  assert report.kernel_flops == pytest.approx(report.attention_flops * 22 / 12)
  assert abs(report.xla_flops / report.model_flops - 1) < 0.1, (
      report.xla_flops,
      report.model_flops,
  )
  assert 0 < report.mfu <= 0.5 * 1.1


def test_uncounted_flops_are_not_reported_as_a_step_time():
  """--nocount_flops on a scanned stack: XLA's count is one layer's, so no step time."""
  nan = float("nan")
  report = aot.BucketReport(
      bucket="video",
      tokens_per_example=64,
      global_batch=8,
      argument_bytes=2**30,
      temp_bytes=2**30,
      output_bytes=2**30,
      alias_bytes=2**30,
      hbm_bytes=95 * 2**30,
      compile_seconds=1.0,
      xla_flops_counted=1e9,
      xla_flops=nan,
      model_flops=4e9,
      attention_flops=1e9,
      kernel_flops=nan,
      step_seconds=nan,
      mfu=nan,
  )
  text = aot.format_report([report], "v5p-8", 0.5)
  assert "FLOPs per step not counted" in text and "headroom 98%" in text
  assert "estimated step" not in text and "MFU" not in text.split("\n", 1)[1]


def test_topology_names():
  assert aot.topology_name("v5p-1024") == "v5p:8x8x8"
  assert aot.topology_name("v5p:2x2x1") == "v5p:2x2x1"
  with pytest.raises(ValueError, match="v5p:4x4x4"):
    aot.topology_name("v5p-12")


def test_a_layout_that_does_not_fit_is_reported_in_one_message():
  command = [
      sys.executable,
      "-m",
      "mgjax.aot",
      "--config=tests/configs/t2v_aot.py:overflow",
      "--topology=v5p-8",
      "--nocount_flops",
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 1, result.stderr[-3000:]
  message = result.stdout + result.stderr
  assert "Traceback" not in message
  assert "DOES NOT FIT" in message or "does not fit v5p-8" in message, message[-3000:]
