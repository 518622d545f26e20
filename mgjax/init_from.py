"""Weights that replace a fresh state's: pretrained encoders, or another run's model.

Both are read on the host after the state is initialised, then placed shard by
shard, so they never become constants of a compiled program:

  `with_pretrained`  the task's `pretrained_weights()` (e.g. frozen text encoders
                     read from Hugging Face directories);
  `init_from_run`    `train.init_from`: a fine-tuning run (upsampler, PT2V, edit, SFT)
                     starts from another run's weights (its EMA when it kept one).
                     Parameters the new model adds (extra input channels, new
                     embeddings) keep their own (zero) init; positional tables are
                     fitted to the new sizes; any other parameter whose shape
                     differs is refused, naming it.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mgjax import runs
from mgjax.models import positional
from mgjax.train_state import TrainState


def replace_leaves(tree, new, shardings, path: str = "", what: str = "Pretrained weight"):
  """`tree` with the leaves `new` names replaced, each placed with its sharding."""
  if not isinstance(new, dict):
    expected = tuple(tree.shape)
    if tuple(np.shape(new)) != expected:
      raise ValueError(f"{what} {path} has shape {np.shape(new)}; the model expects {expected}.")
    value = np.asarray(new, tree.dtype)  # the same on every host: each takes its shards
    return jax.make_array_from_callback(value.shape, shardings, lambda index: value[index])
  missing = set(new) - set(tree)
  if missing:
    raise ValueError(f"{what}s {sorted(missing)} under {path or '/'} are not in the model.")
  out = dict(tree)
  for key, value in new.items():
    out[key] = replace_leaves(tree[key], value, shardings[key], f"{path}/{key}", what)
  return out


def with_pretrained(state: TrainState, task, shardings: TrainState) -> TrainState:
  """A fresh state with the task's pretrained weights in place (e.g. frozen text
  encoders); pretrained trainable weights start the EMA too."""
  pretrained = task.pretrained_weights()
  if not jax.tree.leaves(pretrained):
    return state
  params, frozen = pretrained.get("params", {}), pretrained.get("frozen", {})
  return _with_params(state, params, shardings).replace(
      frozen=replace_leaves(state.frozen, frozen, shardings.frozen)
  )


def _with_params(state: TrainState, params: dict, shardings: TrainState, what=None) -> TrainState:
  """`params` replace the state's (and its EMA's, when kept)."""
  kwargs = {} if what is None else {"what": what}
  replaced = state.replace(params=replace_leaves(state.params, params, shardings.params, **kwargs))
  if state.ema_params and jax.tree.leaves(params):
    replaced = replaced.replace(
        ema_params=replace_leaves(state.ema_params, params, shardings.ema_params, **kwargs)
    )
  return replaced


def parse_subtrees(spec: str) -> dict[str, str]:
  """ "dest:source,..." -> {dest path: source path}; a lone "name" maps to itself."""
  mapping = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    dest, _, source = item.partition(":")
    mapping[dest.strip().strip("/")] = (source or dest).strip().strip("/")
  return mapping


def _subtree(tree, path: str, run: str):
  for key in filter(None, path.split("/")):
    if not isinstance(tree, dict) or key not in tree:
      names = sorted(tree) if isinstance(tree, dict) else []
      raise ValueError(
          f"train.init_from: {run} has no params subtree {path!r} (at {key!r}: "
          f"there are {names})."
      )
    tree = tree[key]
  return tree


def _matching(dest, source, path: str, unused: list[str]):
  """The leaves of `source` that `dest` has, by name; a shape that differs is refused."""
  if not isinstance(source, dict):
    if isinstance(dest, dict) or tuple(np.shape(source)) != tuple(dest.shape):
      theirs = "a subtree" if isinstance(dest, dict) else tuple(dest.shape)
      raise ValueError(
          f"train.init_from: parameter {path} has shape {tuple(np.shape(source))} in the "
          f"source run but {theirs} here; map only subtrees whose shapes agree "
          "(train.init_from.subtrees), or give the new weights their own name."
      )
    return source
  if not isinstance(dest, dict):
    raise ValueError(f"train.init_from: {path} is a subtree in the source run, a parameter here.")
  if path.endswith("/" + positional.MODULE_NAME):
    source = _resized_tables(dest, source, path)
  out = {}
  for key, value in source.items():
    if key in dest:
      out[key] = _matching(dest[key], value, f"{path}/{key}", unused)
    else:
      unused.append(f"{path}/{key}")
  return out


def _resized_tables(dest, source, path: str):
  """A positional module's tables fitted to this model's sizes: grown by
  interpolation (the tables grow between stages: 256 px -> 768 px), cut to their
  first rows when smaller (what a shorter or smaller video reads anyway: a 32-frame
  table into a 14-frame window). Widths must agree."""
  sizes = {
      name: dest[name].shape[0]
      for name in positional.TABLE_NAMES
      if name in source and name in dest and np.shape(source[name])[0] != dest[name].shape[0]
  }
  if not sizes:
    return source
  logging.info(
      "train.init_from: positional tables %s fitted to %s rows.",
      path,
      ", ".join(f"{n} {np.shape(source[n])[0]} -> {k}" for n, k in sizes.items()),
  )
  fitted = dict(source)
  grow = {n: k for n, k in sizes.items() if k > np.shape(source[n])[0]}
  for name in set(sizes) - set(grow):
    fitted[name] = np.asarray(source[name])[: sizes[name]]
  if grow:
    wrapped = {positional.MODULE_NAME: fitted}
    fitted = jax.device_get(positional.resize_positional_tables(wrapped, grow))
    fitted = fitted[positional.MODULE_NAME]
  return fitted


def _to_host(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _merged(a, b):
  """Two nested dicts as one (an encoder is trainable in one, frozen in the other)."""
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return a
  return {**b, **{k: _merged(v, b[k]) if k in b else v for k, v in a.items()}}


def init_from_run(
    state: TrainState, section, shardings: TrainState, workdir: str | None = None
) -> TrainState:
  """A fresh state whose params (and EMA) start from the run `workdir` (default
  `section.workdir`) at `section.step` (0: its latest), for the subtrees
  `section.subtrees` names. Without `subtrees`, the source's trainable and frozen
  weights both count, and fill this run's trainable and frozen ones by name: an
  encoder frozen in one stage and trained in the next keeps its weights."""
  workdir = section.workdir if workdir is None else workdir
  if not workdir:
    return state
  _, _, params, frozen = runs.restore_weights(workdir, section.step or None)
  explicit = parse_subtrees(section.subtrees)
  source = _to_host(params if explicit else _merged(params, frozen))
  new, unused = _matched_subtrees(state.params, source, explicit, workdir)
  if not explicit and any(k in source for k in state.frozen):
    frozen_new, frozen_unused = _matched_subtrees(state.frozen, source, {}, workdir)
    unused = sorted(set(unused) & set(frozen_unused))
    state = state.replace(frozen=replace_leaves(state.frozen, frozen_new, shardings.frozen))
  if unused:
    logging.warning(
        "train.init_from: %d source parameters have no place here: %s",
        len(unused),
        ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""),
    )
  logging.info("Initialised %s from %s", ", ".join(sorted(new)), workdir)
  return _with_params(state, new, shardings, what="train.init_from weight")


def _matched_subtrees(dest_tree, source, mapping, workdir):
  """({dest path: matching source leaves} as a nested dict, source paths not used)
  for `mapping` ({dest: source} paths; {} pairs every top-level subtree the two
  share)."""
  mapping, unused = mapping or {k: k for k in dest_tree if k in source}, []
  if not mapping:
    raise ValueError(
        f"train.init_from: {workdir} shares no top-level subtree with this model "
        f"({sorted(source)} vs {sorted(dest_tree)}); name them in "
        "train.init_from.subtrees as dest:source."
    )
  new = {}
  for dest, src in mapping.items():
    values = _matching(
        _subtree(dest_tree, dest, "this model"), _subtree(source, src, workdir), f"/{dest}", unused
    )
    target = new
    *parents, leaf = dest.split("/")
    for key in parents:
      target = target.setdefault(key, {})
    target[leaf] = values
  return new, unused
