"""AdamW with linear warmup, cosine or constant decay, global-norm clipping, and
optionally skipping updates whose gradient is not finite."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  peak, warmup = config.learning_rate, config.warmup_steps
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
        [max(warmup, 1)],
    )
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0,
        peak,
        warmup_steps=max(warmup, 1),
        decay_steps=max(num_steps, warmup + 1),
        end_value=peak * config.final_learning_rate_fraction,
    )
  raise ValueError(
      f"Unknown optimizer.schedule {config.schedule!r}; " "use 'cosine' or 'constant'."
  )


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int):
  """Returns (optax transformation, learning-rate schedule)."""
  schedule = learning_rate_schedule(config, num_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(
      optax.adamw(
          schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask
      )
  )
  optimizer = optax.chain(*parts)
  if config.skip_non_finite:  # drop updates with a NaN/Inf gradient, up to N in a row
    optimizer = optax.apply_if_finite(optimizer, config.skip_non_finite)
  return optimizer, schedule
