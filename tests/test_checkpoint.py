"""Checkpoints: the keep policy, restoring onto another mesh, and merging runs."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mgjax import checkpoint as checkpoint_lib
from mgjax import optim
from mgjax import train as train_lib
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib
from mgjax.tasks import get_task_class
from mgjax.tools import merge_checkpoints
from tests.test_parallel import DiTFlowTask, run_config, tiny_dit
from tests.test_train import ROOT, tiny_config


def test_keeps_the_latest_n_and_every_kth(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, keep_every=4)
  config = ml_collections.ConfigDict(dict(seed=0))
  for step in range(1, 10):
    checkpointer.save(step, {"w": jnp.full((3,), float(step))}, config)
  checkpointer.wait()
  assert checkpointer.all_steps() == [4, 8, 9]  # latest 2: 8, 9; multiples of 4: 4, 8
  restored = checkpointer.restore(4, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], [4.0, 4.0, 4.0])
  checkpointer.close()


def dit_state(mesh_sizes, seed=0):
  """(state, abstract state, shardings) of the tiny DiT's train state on a mesh of the
  8 fake devices."""
  config = run_config(mesh_sizes)
  config.seed = seed
  task = DiTFlowTask(config, tiny_dit())
  optimizer, _ = optim.make_optimizer(config.optimizer, 10)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices())
  init, abstract, shardings = train_lib.create_state(task, optimizer, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.rules_for(config)):
    state = init()
  return state, abstract, shardings, config


def test_restores_onto_another_mesh(tmp_path):
  """Saved under fsdp=8, restored under fsdp=2 x tensor=4: equal values, new shardings."""
  state, _, shardings8, config = dit_state(dict(fsdp=8))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  checkpointer.save(7, state, config, force=True)
  checkpointer.wait()
  _, abstract, shardings24, _ = dit_state(dict(fsdp=2, tensor=4))
  restored = checkpointer.restore(7, checkpoint_lib.abstract_with_shardings(abstract, shardings24))
  checkpointer.close()
  resharded = 0
  for saved, loaded, old, new in zip(
      jax.tree.leaves(state),
      jax.tree.leaves(restored),
      jax.tree.leaves(shardings8),
      jax.tree.leaves(shardings24),
  ):
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(saved))
    assert loaded.sharding == new
    resharded += old != new and "tensor" in str(new.spec)
  assert resharded > 10  # the attention and MLP kernels now split over `tensor`


def save_run(workdir, seed, base_channels=8):
  """A tiny TAE run's workdir as the trainer leaves it (config.json, a checkpoint of
  the initial state at step 5); seeds give different weights."""
  config = tiny_config(5)
  config.seed = seed
  config.model.base_channels = base_channels
  task = get_task_class(config.task)(config, workdir)
  optimizer, _ = optim.make_optimizer(config.optimizer, 5)
  mesh = mesh_lib.mesh_from_config(config)
  init, _, _ = train_lib.create_state(task, optimizer, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.rules_for(config)):
    state = init()
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  checkpointer.save(5, state, config, force=True)
  checkpointer.wait()
  checkpointer.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: (workdir, state)}: two runs of one model (seeds 0, 1), one of another."""
  root = tmp_path_factory.mktemp("runs")
  specs = dict(a=dict(seed=0), b=dict(seed=1), wider=dict(seed=0, base_channels=16))
  return {
      name: (str(root / name), save_run(str(root / name), **spec)) for name, spec in specs.items()
  }


def test_merge_averages_parameters_with_weights(runs, tmp_path):
  (a, first), (b, second) = runs["a"], runs["b"]
  out = str(tmp_path / "merged")
  merge_checkpoints.merge([a, b], out, [3.0, 1.0])
  merged = train_lib.restore_train_state(out)[2]  # opened as sampling opens a run
  expected = jax.tree.map(lambda x, y: (3 * x + y) / 4, first.params, second.params)
  assert int(merged.step) == 0 and merged.params.keys() == first.params.keys()
  for got, want in zip(jax.tree.leaves(merged.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  kernel = max(jax.tree.leaves(first.params), key=np.size)
  assert not np.allclose(max(jax.tree.leaves(merged.params), key=np.size), kernel)
  with open(os.path.join(out, "merge.json")) as f:
    assert json.load(f)["weights"] == [3.0, 1.0]


def test_merge_refuses_other_models_naming_the_parameter(runs, tmp_path):
  command = [
      sys.executable,
      "-m",
      "mgjax.tools.merge_checkpoints",
      f"--inputs={runs['a'][0]},{runs['wider'][0]}",
      f"--out={tmp_path / 'm'}",
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert re.search(r"parameters differ at params/\S+: shape/dtype \(\(\d+", result.stderr)
  assert not os.path.exists(tmp_path / "m" / "checkpoints")


def test_merge_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="at least two"):
    merge_checkpoints.merge([str(tmp_path)], str(tmp_path / "m"))
  with pytest.raises(ValueError, match="no complete checkpoint"):
    merge_checkpoints.merge([str(tmp_path / "x"), str(tmp_path / "y")], str(tmp_path / "m"))
  with pytest.raises(ValueError, match="2 inputs but 3 weights"):
    merge_checkpoints.merge(["a", "b"], str(tmp_path / "m"), [1, 2, 3])
