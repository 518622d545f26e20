"""The training state: everything a checkpoint must hold to resume exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any  # trainable parameters
  frozen: Any  # parameters the loss uses but does not train
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; step s uses fold_in(rng, s)
  ema_params: Any = None  # exponential moving average of params; {} when off

  def eval_params(self):
    """The weights to evaluate and sample with: the EMA when it is kept."""
    return self.ema_params if self.ema_params else self.params


def path_names(path) -> list[str]:
  """A pytree key path as names, e.g. ["params", "dit", "final", "kernel"]: for
  parameter tables, checks and messages."""
  names = []
  for key in path:  # DictKey, GetAttrKey, SequenceKey
    attribute = next((a for a in ("key", "name", "idx") if hasattr(key, a)), None)
    names.append(str(getattr(key, attribute)) if attribute else str(key))
  return names
