"""The toy latent flow task (tests/toy_task.py) as a config file, for tests that start
the trainer as a command: --config=tests/configs/toy.py:<num_steps>."""

from tests.toy_task import toy_config


def get_config(arg: str = "6"):
  return toy_config(int(arg))
