"""The training state: everything a checkpoint must hold to resume exactly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mgjax.parallel import sharding as sharding_lib


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


def make_init_fn(task, optimizer, seed: int, ema: bool = False):
  """A function () -> logically boxed TrainState, for eval_shape and jit."""

  def init_boxed():
    rng = jax.random.key(seed)
    params, frozen = task.init(jax.random.fold_in(rng, 0))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.fold_in(rng, 1)),
        ema_params=params if ema else {},
    )

  return init_boxed


def create_state(task, optimizer, config, mesh):
  """Initialises the state already sharded: eval_shape -> shardings -> jit(init)."""
  init_boxed = make_init_fn(task, optimizer, config.seed, ema=config.train.ema_decay > 0)
  rules = sharding_lib.rules_for(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init_boxed)
  shardings = sharding_lib.logical_to_shardings(abstract_boxed, mesh, rules)
  init = jax.jit(lambda: nn.meta.unbox(init_boxed()), out_shardings=shardings)
  return init, sharding_lib.strip_boxes(abstract_boxed), shardings
