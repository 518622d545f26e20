"""Configs load through the real command-line path and reject bad keys."""

import os
import subprocess
import sys

import pytest

from experiments import tae as tae_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(*args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "mgjax.train", *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )


def test_unknown_config_key_is_rejected_by_name(tmp_path):
  result = run_train(
      "--config=experiments/tae.py:tiny", f"--workdir={tmp_path}", "--config.train.num_stepz=5"
  )
  assert result.returncode != 0
  assert "num_stepz" in result.stderr and "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing ran


def test_wrongly_typed_override_is_rejected(tmp_path):
  result = run_train(
      "--config=experiments/tae.py:tiny", f"--workdir={tmp_path}", "--config.train.num_steps=many"
  )
  assert result.returncode != 0
  assert "num_steps" in result.stderr and "Traceback" not in result.stderr


def test_unknown_size_names_the_choices():
  with pytest.raises(ValueError, match="tiny, :tiny4x or :paper"):
    tae_config.get_config("huge")


def test_configs_are_complete_and_distinct():
  tiny, paper = tae_config.get_config("tiny"), tae_config.get_config("paper")
  assert tiny.task == paper.task == "tae"
  assert paper.model.latent_channels == 16 and paper.loss.opl_weight == 1e5
  assert paper.loss.opl_r == 3.0
  assert tiny.model.base_channels < paper.model.base_channels
  tiny4x = tae_config.get_config("tiny4x").model  # 3 levels: 4x in height and width
  assert len(tiny4x.channel_multipliers) == 3 == len(tiny4x.temporal_downsample) + 1
  # Each config's docstring holds its launch command.
  assert "python -m mgjax.train --config=experiments/tae.py:tiny" in tae_config.__doc__
