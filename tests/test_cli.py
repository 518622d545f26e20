"""The shared command line (mgjax/cli.py): user errors as one message with exit status
2 (the traceback only with --traceback), and third-party INFO logging kept quiet."""

import logging
import os
import subprocess
import sys

import orbax.checkpoint
import pytest
from absl import logging as absl_logging

from mgjax import checkpoint as checkpoint_lib
from mgjax import cli
from mgjax.data.pipeline import DataQualityError
from mgjax.data.video import VideoDecodeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORBAX_FILE = orbax.checkpoint.__file__
MGJAX_FILE = os.path.join(ROOT, "mgjax", "tasks", "tae.py")


def merge_missing(tmp_path, *extra):
  """mgjax.tools.merge_checkpoints on two workdirs that do not exist (fails before
  loading anything)."""
  return subprocess.run(
      [
          sys.executable,
          "-m",
          "mgjax.tools.merge_checkpoints",
          f"--inputs={tmp_path / 'run_a'},{tmp_path / 'run_b'}",
          f"--out={tmp_path / 'merged'}",
          *extra,
      ],
      cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_user_error_prints_the_message_alone_and_exits_2(tmp_path):
  result = merge_missing(tmp_path)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  assert (
      f"mgjax.tools.merge_checkpoints: {tmp_path / 'run_a'} has no complete checkpoint"
      in result.stderr
  )
  assert "--traceback" in result.stderr  # says how to see more


def test_traceback_flag_shows_the_traceback(tmp_path):
  result = merge_missing(tmp_path, "--traceback")
  assert result.returncode not in (0, 2), result.stderr
  assert "Traceback (most recent call last)" in result.stderr
  assert "ValueError: " in result.stderr and "has no complete checkpoint" in result.stderr


def test_bad_flag_is_one_message(tmp_path):
  result = merge_missing(tmp_path, "--no_such_flag=1")
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  assert "mgjax.tools.merge_checkpoints: invalid command line:" in result.stderr
  assert "no_such_flag" in result.stderr


def test_user_errors_are_the_input_errors():
  user = cli.user_error_types()
  for error in (
      ValueError("bad config"),
      FileNotFoundError("no run"),
      FloatingPointError("loss is nan"),
      VideoDecodeError("/d/a.mp4", "truncated", "moov atom not found"),
      DataQualityError("too many bad files"),
  ):
    assert isinstance(error, user), error
  assert not isinstance(RuntimeError("a bug"), user)
  assert not isinstance(KeyError("a bug"), user)
  message = cli.format_error("mgjax.train", ValueError("first line\nsecond line"))
  assert message.startswith("mgjax.train: first line\n  second line\n")


def _record(path: str, level: int, message: str) -> logging.LogRecord:
  """An absl.logging call as if made in the file `path`."""
  return absl_logging.get_absl_logger().makeRecord("absl", level, path, 1, message, (), None)


@pytest.fixture
def restored_logging():
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  yield
  cli.setup_logging(verbose=True)  # removes the filters, restores the levels
  absl_logger.setLevel(level)


def test_setup_logging_keeps_our_info_and_third_party_warnings(restored_logging, caplog, tmp_path):
  del restored_logging
  caplog.set_level(logging.INFO)
  absl_logger = absl_logging.get_absl_logger()

  cli.setup_logging(verbose=False)
  assert logging.getLogger("orbax").getEffectiveLevel() == logging.WARNING
  assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() == logging.WARNING
  assert logging.getLogger("grain").getEffectiveLevel() == logging.WARNING
  absl_logger.handle(_record(ORBAX_FILE, logging.INFO, "orbax option struct"))
  absl_logger.handle(_record(ORBAX_FILE, logging.WARNING, "orbax warning"))
  absl_logger.handle(_record(MGJAX_FILE, logging.INFO, "mgjax step line"))
  logging.getLogger("mgjax.test").info("mgjax python logger line")
  logging.getLogger("jax._src.xla_bridge").info("jax backend line")
  # A real Orbax manager logs its options at INFO through absl.
  checkpoint_lib.Checkpointer(str(tmp_path / "quiet")).close()
  messages = [r.getMessage() for r in caplog.records]
  assert "mgjax step line" in messages and "mgjax python logger line" in messages
  assert "orbax warning" in messages
  assert "orbax option struct" not in messages and "jax backend line" not in messages
  third_party_info = [
      r for r in caplog.records if r.levelno < logging.WARNING and "site-packages" in r.pathname
  ]
  assert not third_party_info, [r.getMessage()[:80] for r in third_party_info]

  caplog.clear()
  cli.setup_logging(verbose=True)
  assert logging.getLogger("orbax").getEffectiveLevel() <= logging.INFO
  absl_logger.handle(_record(ORBAX_FILE, logging.INFO, "orbax option struct"))
  checkpoint_lib.Checkpointer(str(tmp_path / "verbose")).close()
  messages = [r.getMessage() for r in caplog.records]
  assert "orbax option struct" in messages
  assert any(
      r.levelno == logging.INFO and os.sep + "orbax" + os.sep in r.pathname for r in caplog.records
  )
