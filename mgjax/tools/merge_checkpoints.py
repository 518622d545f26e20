"""Weighted average of the model weights of several runs (Movie Gen averages the
weights of fine-tuning runs):

    python -m mgjax.tools.merge_checkpoints --inputs=RUN_A,RUN_B,RUN_C \
        [--weights=2,1,1] [--steps=4000,4000,3500] --out=MERGED

Each input is a training workdir (its config.json and latest complete checkpoint,
or the step given). Before loading any weights, the parameter trees are compared
(paths, shapes, dtypes) and a mismatch is refused naming the first differing
parameter. The params (and EMA params, when every run kept them) are averaged in
float32 and cast back; everything else - config, step, frozen weights, optimizer state,
RNG - is the first input's. OUT becomes a workdir that sampling, evaluation,
`mgjax.inspect` and fine-tuning (a further `mgjax.train --workdir=OUT`) open like any
other; OUT/merge.json records the inputs, steps and weights.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
from absl import app, flags

from mgjax import checkpoint as checkpoint_lib
from mgjax import cli
from mgjax import train as train_lib
from mgjax.train_state import path_names

AVERAGED = ("params", "ema_params")


def _leaf_descriptions(metadata, prefix: str) -> dict[str, tuple]:
  """{"params/dit/..": (shape, dtype)} for the `prefix` subtree of a state's metadata."""
  subtree = metadata.get(prefix) if hasattr(metadata, "get") else getattr(metadata, prefix)
  leaves = jax.tree_util.tree_flatten_with_path(subtree or {})[0]
  return {
      "/".join([prefix, *path_names(path)]): (tuple(leaf.shape), str(leaf.dtype))
      for path, leaf in leaves
  }


def first_difference(a: dict[str, tuple], b: dict[str, tuple]) -> str | None:
  """A description of the first parameter (in path order) where two trees differ."""
  for path in sorted(set(a) | set(b)):
    if path not in a:
      return f"{path} is only in the second"
    if path not in b:
      return f"{path} is only in the first"
    if a[path] != b[path]:
      return f"{path}: shape/dtype {a[path]} vs {b[path]}"
  return None


def _resolve_step(workdir: str, step: int | None) -> int:
  checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
  steps = checkpointer.all_steps()
  checkpointer.close()
  if not steps:
    raise ValueError(f"{workdir} has no complete checkpoint; give training workdirs.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"{workdir} has no checkpoint at step {step}; it has {steps}.")
  return step


def check_compatible(inputs: list[str], steps: list[int]) -> list[str]:
  """Raises ValueError naming the first differing parameter; returns which of
  AVERAGED every input holds (ema_params only when all kept an EMA)."""
  trees = []
  for workdir, step in zip(inputs, steps):
    checkpointer = checkpoint_lib.Checkpointer(workdir, read_only=True)
    metadata = checkpointer.state_metadata(step)
    checkpointer.close()
    trees.append({name: _leaf_descriptions(metadata, name) for name in AVERAGED})
  for workdir, tree in zip(inputs[1:], trees[1:]):
    difference = first_difference(trees[0]["params"], tree["params"])
    if difference:
      raise ValueError(
          f"Cannot merge {inputs[0]} and {workdir}: their parameters differ "
          f"at {difference}. Merge runs of the same model config only."
      )
  names = ["params"]
  if all(tree["ema_params"] for tree in trees):
    if any(first_difference(trees[0]["ema_params"], t["ema_params"]) for t in trees[1:]):
      raise ValueError(
          "The runs' EMA parameter trees differ; merge runs of the same " "model config only."
      )
    names.append("ema_params")
  return names


def merge(
    inputs: list[str],
    out: str,
    weights: list[float] | None = None,
    steps: list[int | None] | None = None,
) -> str:
  """Writes the merged workdir `out`; returns its checkpoint directory."""
  if len(inputs) < 2:
    raise ValueError("Give at least two --inputs to merge.")
  weights = list(weights) if weights else [1.0] * len(inputs)
  steps = list(steps) if steps else [None] * len(inputs)
  if len(weights) != len(inputs) or len(steps) != len(inputs):
    raise ValueError(
        f"{len(inputs)} inputs but {len(weights)} weights and {len(steps)} "
        "steps; give one per input."
    )
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise ValueError(f"Weights must be >= 0 with a positive sum, got {weights}.")
  if os.path.exists(os.path.join(out, "checkpoints")):
    raise ValueError(f"{out} already holds checkpoints; choose a new --out.")
  steps = [_resolve_step(workdir, step) for workdir, step in zip(inputs, steps)]
  names = check_compatible(inputs, steps)

  # One run in memory at a time beside the float32 running sums.
  config, _, first = train_lib.restore_train_state(inputs[0], steps[0])
  sums = {
      name: jax.tree.map(lambda x: weights[0] * x.astype(jnp.float32), getattr(first, name))
      for name in names
  }
  for workdir, step, weight in zip(inputs[1:], steps[1:], weights[1:]):
    state = train_lib.restore_train_state(workdir, step)[2]
    sums = {
        name: jax.tree.map(
            lambda total, x: total + weight * x.astype(jnp.float32),  # noqa: B023 (called now)
            sums[name],
            getattr(state, name),
        )
        for name in names
    }
    del state
  total_weight = float(sum(weights))
  merged = first.replace(
      **{
          name: jax.tree.map(
              lambda total, x: (total / total_weight).astype(x.dtype),
              sums[name],
              getattr(first, name),
          )
          for name in names
      }
  )

  os.makedirs(out, exist_ok=True)
  shutil.copyfile(os.path.join(inputs[0], "config.json"), os.path.join(out, "config.json"))
  checkpointer = checkpoint_lib.Checkpointer(out)
  checkpointer.save(steps[0], merged, config, force=True)
  checkpointer.wait()
  checkpointer.close()
  with open(os.path.join(out, "merge.json"), "w") as f:
    json.dump(
        dict(
            inputs=[os.path.abspath(i) for i in inputs],
            steps=steps,
            weights=weights,
            averaged=names,
        ),
        f,
        indent=2,
    )
  return checkpointer.directory


def main():
  inputs = flags.DEFINE_list("inputs", None, "Training workdirs to merge (2 or more).")
  weights = flags.DEFINE_list("weights", None, "One weight per input (default: equal).")
  steps = flags.DEFINE_list(
      "steps", None, "One checkpoint step per input (default: " "each one's latest)."
  )
  out = flags.DEFINE_string("out", None, "Workdir to write the merged checkpoint to.")

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not inputs.value or not out.value:
      raise app.UsageError("--inputs=A,B[,...] and --out=DIR are required.")
    directory = merge(  # a ValueError (bad inputs) is reported by cli.run
        inputs.value,
        out.value,
        [float(w) for w in weights.value] if weights.value else None,
        [int(s) for s in steps.value] if steps.value else None,
    )
    print(f"Merged {len(inputs.value)} runs into {directory}")

  cli.run(run, "mgjax.tools.merge_checkpoints")


if __name__ == "__main__":
  main()
