"""A training run's files, read back: its configs, its progress and its weights.

A run is a workdir: `config.json` (the config of its latest start), `configs/` (the
config of every start, oldest first: a run resumed with other `--config.*` overrides
keeps both), `checkpoints/` (Orbax, `mgjax/checkpoint.py`) and `metrics.jsonl`. The
trainer writes them; everything else -- sampling, inspection, a later stage that
needs this run's model (a TAE for a text-to-video run, a T2V run to fine-tune from)
-- reads them through this module, so no task imports the trainer.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from mgjax import checkpoint as checkpoint_lib
from mgjax import optim
from mgjax.parallel import mesh as mesh_lib
from mgjax.tasks import get_task_class
from mgjax.train_state import create_state

CONFIG_FILE = "config.json"
HISTORY_DIR = "configs"


class NoRunError(FileNotFoundError):
  """The workdir holds no run (no config.json): named with the command to make one."""


def record_config(workdir: str, config: ml_collections.ConfigDict, start_step: int) -> str:
  """Writes the config of this start: configs/<n>_step_<start>.json and config.json
  (the latest, which sampling and inspection read). Returns the history file's path.
  Process 0 only; each write is atomic."""
  history = os.path.join(workdir, HISTORY_DIR)
  os.makedirs(history, exist_ok=True)
  n = len([f for f in os.listdir(history) if f.endswith(".json")])
  text = config.to_json(indent=2)
  path = os.path.join(history, f"{n:03d}_step_{start_step}.json")
  for target in (path, os.path.join(workdir, CONFIG_FILE)):
    with open(target + ".tmp", "w") as f:
      f.write(text)
    os.replace(target + ".tmp", target)
  return path


def config_history(workdir: str) -> list[str]:
  """Paths of the configs of every start of the run, oldest first."""
  history = os.path.join(workdir, HISTORY_DIR)
  if not os.path.isdir(history):
    return []
  return [os.path.join(history, f) for f in sorted(os.listdir(history)) if f.endswith(".json")]


def has_run(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, CONFIG_FILE))


def read_config(workdir: str, hint: str = "") -> ml_collections.ConfigDict:
  """The config of the run's latest start; NoRunError (with `hint`, e.g. the command
  that trains such a run) when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise NoRunError(
        f"No trained run in {workdir}: {path} is missing." + (f" {hint}" if hint else "")
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def latest_step(workdir: str) -> int | None:
  """The step of the run's latest complete checkpoint; None when it has none."""
  if not has_run(workdir) or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  checkpointer.close()
  return step


def is_finished(workdir: str, num_steps: int) -> bool:
  """True when the run in `workdir` has a complete checkpoint at num_steps or later."""
  step = latest_step(workdir)
  return step is not None and step >= num_steps


def _open_run(workdir: str, step: int | None):
  """(config, task, abstract state with the target shardings, checkpointer, step) of
  a run, on a mesh of all local devices, as the trainer builds it from the run's
  latest config."""
  config = read_config(workdir)
  task = get_task_class(config.task)(config, workdir)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  mesh = mesh_lib.mesh_from_config(config)
  _, abstract_state, shardings = create_state(task, optimizer, config, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {checkpointer.directory}.")
  abstract = checkpoint_lib.abstract_with_shardings(abstract_state, shardings)
  return config, task, abstract, checkpointer, step


def restore_train_state(workdir: str, step: int | None = None):
  """(config, task, state) of a run's latest (or the given) complete checkpoint, the
  whole train state, for inspection and for merging checkpoints."""
  config, task, abstract, checkpointer, step = _open_run(workdir, step)
  state = checkpointer.restore(step, abstract)
  checkpointer.close()
  return config, task, state


def restore_weights(workdir: str, step: int | None = None):
  """(config, task, params, frozen) to run a trained model with: the EMA when the run
  kept one, restored alone (no optimizer state)."""
  config, task, abstract, checkpointer, step = _open_run(workdir, step)
  name = "ema_params" if jax.tree.leaves(abstract.ema_params) else "params"
  entries = checkpointer.restore_entries(
      step, {name: getattr(abstract, name), "frozen": abstract.frozen}
  )
  checkpointer.close()
  return config, task, entries[name], entries["frozen"]


def restore_params(workdir: str, step: int | None = None):
  """The weights to run a trained model with (the EMA when the run kept one)."""
  return restore_weights(workdir, step)[2]
