"""The tiny TAE run of tests/test_train.py as a config file, for tests that start the
trainer as a command: --config=tests/configs/tae_tiny.py:<num_steps>."""

from tests.test_train import tiny_config


def get_config(arg: str = "6"):
  return tiny_config(int(arg))
