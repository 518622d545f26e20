"""The training state: everything a checkpoint must hold to resume exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: number of updates applied
  params: Any           # trainable parameters
  frozen: Any           # parameters the loss uses but does not train
  opt_state: Any
  rng: jax.Array        # uint32[2] raw key; step s uses fold_in(rng, s)
  ema_params: Any = None  # exponential moving average of params; {} when off

  def eval_params(self):
    """The weights to evaluate and sample with: the EMA when it is kept."""
    return self.ema_params if self.ema_params else self.params
