"""The tests' 8 fake CPU devices (tests/conftest.py), and one when that is enough."""

import contextlib

import jax
import pytest

from mgjax.parallel import mesh as mesh_lib


@contextlib.contextmanager
def on_one_device():
  """Trains, restores and samples on a mesh of the first device. For tests of what a
  run computes rather than how it is sharded (the trainer's sharding is tested on all
  8, tests/test_parallel.py and the text-to-video fixture): on 2 cores an 8-device
  program of a tiny model compiles and runs about twice as long."""
  mesh_of = mesh_lib.mesh_from_config
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(mesh_lib, "mesh_from_config", lambda c, _=None: mesh_of(c, jax.devices()[:1]))
    yield
