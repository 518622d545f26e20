"""Orbax checkpoints of the whole training state, saved asynchronously.

A checkpoint holds the train state (params, frozen params, optimizer state, EMA
params, step, RNG), the input pipeline's state (`DataIterator.get_state()`, JSON) and
the config as JSON. Orbax writes each step into a temporary directory and renames it
when complete, so a process killed mid-save leaves nothing that `latest_step()` would
pick up. Restoring takes the abstract state with the target shardings, so a
checkpoint loads onto whatever mesh the current run uses.

Kept: the latest `keep` checkpoints, plus every one whose step is a multiple of
`keep_every` (e.g. keep=3, keep_every=10_000: a rolling window for resuming and a
permanent trail for evaluation).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def _handlers() -> dict:
  """The handler of each item, so that a manager opened later (read-only) can read
  metadata and restore without being told."""
  return dict(
      state=ocp.StandardCheckpointHandler(),
      config=ocp.JsonCheckpointHandler(),
      data=ocp.JsonCheckpointHandler(),
  )


def _preservation(keep: int | None, keep_every: int):
  policies = [checkpoint_managers.LatestN(n=keep)]
  if keep_every:
    policies.append(checkpoint_managers.EveryNSteps(interval_steps=keep_every))
  return checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:

  def __init__(
      self,
      workdir: str,
      save_every: int = 1,
      keep: int | None = None,
      keep_every: int = 0,
      async_save: bool = True,
      read_only: bool = False,
  ):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(save_every, 1),
        create=not read_only,
        preservation_policy=_preservation(keep, keep_every),
        enable_async_checkpointing=async_save,
        read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(
      self,
      step: int,
      state: Any,
      config: ml_collections.ConfigDict,
      data_state: dict | None = None,
      force: bool = False,
  ) -> bool:
    """Starts an async save when `step` is due (or `force`); returns whether it did."""
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """Restores the state at `step` with the shardings of `abstract_state`."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    return restored["state"]

  def restore_entries(self, step: int, abstract_entries: dict[str, Any]) -> dict[str, Any]:
    """Some of the saved state's entries alone, e.g. {"ema_params": ..., "frozen": ...}
    (abstract, with their target shardings): sampling needs neither the optimizer
    state nor the raw weights beside the EMA, three times the memory of one copy."""
    entries = {name: tree for name, tree in abstract_entries.items() if jax.tree.leaves(tree)}
    path = os.path.join(self.directory, str(step), "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
          path,
          args=ocp.args.PyTreeRestore(
              item=entries,
              restore_args=ocp.checkpoint_utils.construct_restore_args(entries),
              partial_restore=True,
          ),
      )
    return {name: restored.get(name, tree) for name, tree in abstract_entries.items()}

  def all_steps(self) -> list[int]:
    """The complete checkpoints' steps, ascending."""
    return sorted(self.manager.all_steps())

  def state_metadata(self, step: int) -> Any:
    """The saved state's tree of ArrayMetadata (shape, dtype, ...), read without
    loading any array."""
    return self.manager.item_metadata(step)["state"]

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        "config"
    ]

  def restore_data(self, step: int) -> dict | None:
    """The input pipeline's state saved at `step`, or None when it has none."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for `Checkpointer.restore`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )
