"""The one mgjax trainer: config -> mesh -> state -> loop.

    python -m mgjax.train --config=experiments/tae.py:tiny --workdir=/tmp/tae

Every model family plugs in as a task (`mgjax/tasks/`); this file holds no model
code. A run resumes automatically from the latest complete checkpoint in --workdir.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from mgjax import checkpoint as checkpoint_lib
from mgjax import cli, optim, recipe, runs
from mgjax.init_from import init_from_run, with_pretrained
from mgjax.parallel import distributed
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib
from mgjax.preemption import PreemptionWatch, StopRequested
from mgjax.tasks import get_task_class
from mgjax.tasks.base import Stage, Task
from mgjax.train_state import TrainState, create_state, make_init_fn  # noqa: F401 (the API)

# A run's files, read back (kept here too: the trainer's API before mgjax.runs).
restore_train_state, restore_params = runs.restore_train_state, runs.restore_params

# ----------------------------------------------------------------------------- step


def train_step(
    state: TrainState, batch, *, task: Task, optimizer, ema_decay: float = 0.0
) -> tuple[TrainState, dict]:
  """One optimizer update. Pure: the same state and batch give the same result."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, rng, state.step)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree.map(lambda p, u: p + u.astype(p.dtype), state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  ema_params = state.ema_params
  if ema_decay:
    ema_params = jax.tree.map(lambda e, p: e + (1 - ema_decay) * (p - e), ema_params, params)
  if isinstance(opt_state, optax.ApplyIfFiniteState):  # optimizer.skip_non_finite > 0
    # A skipped update left params unchanged; the EMA must not move towards them either.
    ema_params = jax.tree.map(
        lambda new, old: jnp.where(opt_state.last_finite, new, old), ema_params, state.ema_params
    )
    metrics.update(
        skipped_updates=opt_state.total_notfinite, non_finite_in_a_row=opt_state.notfinite_count
    )
  return (
      state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params),
      metrics,
  )


# ---------------------------------------------------------------------------- state


def batch_signature(batch) -> tuple:
  """Hashable (key, shape, dtype) description of a batch, host or abstract."""
  return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


def jit_train_step(task: Task, optimizer, mesh, state_shardings, ema_decay: float = 0.0):
  """The trainer's step, jitted: the state is donated, the new state keeps its
  shardings and the metrics are replicated."""
  return jax.jit(
      functools.partial(train_step, task=task, optimizer=optimizer, ema_decay=ema_decay),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,),
  )


def abstract_batch(name: str, spec: dict, mesh) -> dict:
  """The batch `spec` as abstract arrays split over (data, fsdp); a batch size the
  mesh cannot split is refused, naming the multiple to use."""
  batch_shards = math.prod(mesh.shape[a] for a in sharding_lib.BATCH_AXES)
  for key, value in spec.items():
    if value.shape[0] % batch_shards:
      raise ValueError(
          f"Batch {name!r} has {value.shape[0]} examples ({key}), which does "
          f"not split over the mesh's {batch_shards} data x fsdp shards; use a "
          f"batch size that is a multiple of {batch_shards}."
      )
  return {
      k: jax.ShapeDtypeStruct(
          v.shape, v.dtype, sharding=sharding_lib.batch_sharding(mesh, len(v.shape))
      )
      for k, v in spec.items()
  }


def compile_steps(
    task: Task, optimizer, mesh, rules, abstract_state, state_shardings, ema_decay: float = 0.0
):
  """AOT-compiles the train step once per batch shape the task declares.

  Returns {signature of this process's rows of the batch: (compiled step, batch
  shardings, global rows)}; the memory of each compiled step is logged before
  training starts.
  """
  step_fn = jit_train_step(task, optimizer, mesh, state_shardings, ema_decay)
  state = checkpoint_lib.abstract_with_shardings(abstract_state, state_shardings)
  compiled_steps = {}
  for name, spec in task.batch_specs().items():
    batch = abstract_batch(name, spec, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = step_fn.lower(state, batch).compile()
    log_memory(name, compiled)
    global_rows = next(iter(spec.values())).shape[0]
    rows = batch_rows(mesh)(global_rows)
    local_spec = {
        k: jax.ShapeDtypeStruct((rows.stop - rows.start,) + v.shape[1:], v.dtype)
        for k, v in spec.items()
    }
    shardings = {k: v.sharding for k, v in batch.items()}
    compiled_steps[batch_signature(local_spec)] = (compiled, shardings, global_rows)
  return compiled_steps


def batch_rows(mesh) -> Callable[[int], slice]:
  """batch size -> the rows of a global batch this process's devices hold (and so
  the rows its input pipeline reads)."""
  sharding = sharding_lib.batch_sharding(mesh, 1)
  return lambda batch_size: sharding_lib.process_rows(sharding, (batch_size,))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- loop


class MetricsWriter:
  """Writes metrics to workdir/metrics.jsonl (one JSON object per logged step) and
  to TensorBoard event files in workdir/tensorboard; only process 0 writes."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if self.tensorboard is None:
      return
    values = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **values}) + "\n")
    for name, value in values.items():
      self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self):
    if self.tensorboard is not None:
      self.tensorboard.close()


def check_finite(metrics: dict, step: int, last_checkpoint: int | None, skip_limit: int = 0):
  """Stops the run on a non-finite loss, unless the optimizer skipped that update and
  no more than `skip_limit` in a row (optimizer.skip_non_finite)."""
  loss = float(metrics["loss"])
  if np.isfinite(loss):
    return
  in_a_row = int(metrics.get("non_finite_in_a_row", 0))
  if skip_limit and in_a_row <= skip_limit:
    logging.warning(
        "Loss is %s at step %d: update skipped (%d in a row, %d allowed).",
        loss,
        step,
        in_a_row,
        skip_limit,
    )
    return
  raise FloatingPointError(
      f"Loss is {loss} at step {step}. Last complete checkpoint: "
      f"{last_checkpoint if last_checkpoint is not None else 'none'}. Lower the "
      "learning rate or check the data; the run resumes from that checkpoint. To skip "
      "isolated bad updates instead, set --config.optimizer.skip_non_finite=N (at most "
      "N in a row)."
  )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until config.train.num_steps; returns the last evaluation metrics."""
  # ------------------------------------------------------------------- config
  os.makedirs(workdir, exist_ok=True)
  jax.config.update("jax_threefry_partitionable", True)
  task = get_task_class(config.task)(config, workdir)
  run_stages(task.stages())
  task.prepare()
  num_steps = config.train.num_steps

  # --------------------------------------------------------------------- mesh
  mesh = mesh_lib.mesh_from_config(config)
  logging.info("Mesh: %s", dict(mesh.shape))
  task.check_mesh(mesh)
  rules = sharding_lib.rules_for(config)

  # -------------------------------------------------------------------- state
  optimizer, schedule = optim.make_optimizer(config.optimizer, num_steps)
  init, abstract_state, state_shardings = create_state(task, optimizer, config, mesh)
  logging.info(
      "Trainable parameters: %s; frozen: %s",
      f"{count_params(abstract_state.params):,}",
      f"{count_params(abstract_state.frozen):,}",
  )

  # --------------------------------------------------------------- checkpoint
  checkpointer = checkpoint_lib.Checkpointer(
      workdir,
      config.train.checkpoint_every,
      config.train.keep_checkpoints,
      config.train.keep_checkpoints_every,
  )
  start_step = checkpointer.latest_step()
  if start_step is not None:
    logging.info("Resuming from step %d in %s", start_step, checkpointer.directory)
    state = checkpointer.restore(
        start_step, checkpoint_lib.abstract_with_shardings(abstract_state, state_shardings)
    )
  else:
    start_step = 0
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = init()
    state = with_pretrained(state, task, state_shardings)
    source = recipe.init_from_workdir(config, workdir)
    state = init_from_run(state, config.train.init_from, state_shardings, source)
  if jax.process_index() == 0:
    runs.record_config(workdir, config, start_step)

  # --------------------------------------------------------------------- step
  step_fns = compile_steps(
      task, optimizer, mesh, rules, abstract_state, state_shardings, config.train.ema_decay
  )

  # --------------------------------------------------------------------- loop
  writer = MetricsWriter(workdir)
  eval_metrics: dict = {}
  last_log_time, last_log_step, tokens = time.time(), start_step, 0
  batches = task.train_batches(start_step, batch_rows(mesh))
  data_state = checkpointer.restore_data(start_step) if start_step else None
  if data_state is not None:
    batches.set_state(data_state)
  progress = tqdm.tqdm(
      total=num_steps,
      initial=start_step,
      unit="step",
      dynamic_ncols=True,
      disable=not config.train.progress_bar or jax.process_index() != 0,
  )
  preemption = PreemptionWatch()
  try:
    for step in range(start_step, num_steps):
      host_batch = next(batches)
      signature = batch_signature(host_batch)
      if signature not in step_fns:
        raise ValueError(
            f"Batch {signature} at step {step} matches none of the shapes the "
            f"task declared in batch_specs(): {list(step_fns)}."
        )
      compiled, shardings, global_rows = step_fns[signature]
      local_rows = signature[0][1][0]
      tokens += task.batch_tokens(host_batch) * global_rows // local_rows
      batch = sharding_lib.host_batch_to_global(host_batch, shardings, global_rows)
      state, metrics = compiled(state, batch)
      progress.update()
      done = step + 1
      is_last = done == num_steps
      preempted = preemption.reached(done)
      should_save = done % config.train.checkpoint_every == 0 or is_last or preempted
      should_log = done % config.train.log_every == 0 or is_last
      if should_save or should_log:  # never log or checkpoint a non-finite state
        metrics = jax.device_get(metrics)
        check_finite(metrics, done, checkpointer.latest_step(), config.optimizer.skip_non_finite)
      if should_log:
        elapsed = time.time() - last_log_time
        metrics["steps_per_second"] = (done - last_log_step) / max(elapsed, 1e-9)
        if tokens:
          metrics["tokens_per_second"] = tokens / max(elapsed, 1e-9)
        metrics["learning_rate"] = schedule(done - 1)
        metrics.update(batches.metrics())
        metrics.update(task.data_metrics())
        writer.write(done, metrics)
        logging.info(
            "step %d/%d %s",
            done,
            num_steps,
            " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())),
        )
        last_log_time, last_log_step, tokens = time.time(), done, 0
        progress.set_postfix(loss=f"{float(metrics['loss']):.4g}")
      if should_save:
        checkpointer.save(done, state, config, data_state=batches.get_state(), force=True)
        logging.info("Saving checkpoint at step %d", done)
      if preempted:
        logging.warning(
            "Stopped at step %d on request (SIGTERM); its checkpoint is "
            "saved. Rerun the same command to resume.",
            done,
        )
        break
      eval_every = config.train.eval_every
      if eval_every >= 0 and ((eval_every and done % eval_every == 0) or is_last):
        eval_metrics = task.evaluate(*evaluation_copy(state), done)
        if not eval_metrics:  # nothing to evaluate (e.g. no held-out data)
          continue
        writer.write(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
        logging.info(
            "eval step %d: %s",
            done,
            " ".join(f"{k}={v:.4g}" for k, v in sorted(eval_metrics.items())),
        )
  finally:  # also when the run stops on an error: the saves in flight complete
    batches.close()
    preemption.close()
    progress.close()
    writer.close()
    checkpointer.wait()
    checkpointer.close()
  return eval_metrics


def run_stages(stages: list[Stage]) -> None:
  """Trains (or finishes) every earlier run a task declared, in order; a stage that
  stops short (preempted) stops the whole run with StopRequested, so nothing starts
  on its unfinished output. A finished stage is not touched."""
  for stage in stages:
    num_steps = stage.config.train.num_steps
    if runs.is_finished(stage.workdir, num_steps):
      continue
    logging.info("Stage %s: training in %s", stage.name, stage.workdir)
    train(stage.config, stage.workdir)
    if not runs.is_finished(stage.workdir, num_steps):
      raise StopRequested(
          f"The {stage.name} stage in {stage.workdir} stopped at step "
          f"{runs.latest_step(stage.workdir)} of {num_steps} on request. Rerun the same "
          "command to resume."
      )


def evaluation_copy(state: TrainState):
  """(params, frozen) for `task.evaluate`, which runs on the host's own devices.

  In a single-process run these are the state's (sharded) arrays. Across processes,
  every process gets a whole copy on its first local device, gathered from the
  shards, and evaluates on its own (process 0 writes): fine for the model sizes one
  device can hold; set train.eval_every=0 for larger ones and sample from a
  checkpoint instead.
  """
  params, frozen = state.eval_params(), state.frozen
  if jax.process_count() == 1:
    return params, frozen
  device = jax.local_devices()[0]
  gathered = multihost_utils.process_allgather((params, frozen), tiled=True)
  return jax.device_put(gathered, device)


def log_memory(name: str, compiled):
  analysis = compiled.memory_analysis()
  if analysis is None:
    return
  gib = 1 / 2**30
  logging.info(
      "Compiled train step for %r batches, per device: arguments %.3f GiB, "
      "temporaries %.3f GiB, outputs %.3f GiB",
      name,
      analysis.argument_size_in_bytes * gib,
      analysis.temp_size_in_bytes * gib,
      analysis.output_size_in_bytes * gib,
  )


def main():
  """Command line: defines the flags here so importing this module defines none."""
  config_flag = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file.", lock_config=True
  )
  workdir_flag = flags.DEFINE_string(
      "workdir", None, "Directory for checkpoints, " "metrics and outputs; an existing one resumes."
  )
  coordinator = flags.DEFINE_string(
      "coordinator_address",
      "",
      "host:port of process 0 in a multi-process run; see "
      "mgjax/parallel/distributed.py for the environment and cluster alternatives.",
  )
  num_processes = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
  process_id = flags.DEFINE_integer("process_id", -1, "This process's index.")

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if config_flag.value is None or workdir_flag.value is None:
      raise app.UsageError(
          "Both --config and --workdir are required, e.g. "
          "--config=experiments/tae.py:tiny --workdir=/tmp/tae"
      )
    distributed.initialize(coordinator.value, num_processes.value, process_id.value)
    try:
      train(config_flag.value, workdir_flag.value)
    except StopRequested as e:  # an earlier stage was preempted: a clean stop
      logging.warning("%s", e)

  cli.run(run, "mgjax.train", flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad --config override in one line, no traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\", "").split())
    sys.stderr.write(
        f"Invalid command line: {message}\nFix the flag; every config field "
        "is listed in the config file (--config=FILE:ARG).\n"
    )
    sys.exit(2)


if __name__ == "__main__":
  main()
