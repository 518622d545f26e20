"""Weights of the TAE's perceptual network (`mgjax/models/perceptual.py`) as `.npz`.

The file's keys are the flattened parameter paths, e.g. "stage_0/conv/kernel",
"lin_0/kernel". No pretrained network ships with mgjax: a user converts one into this
layout with `save_perceptual_params` and names the file in
`config.loss.perceptual_params`; the TAE task reads it on the host after init
(`TAETask.pretrained_weights`), never under jit, so the weights are not compiled in.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from mgjax.models.perceptual import Params, default_perceptual_template


def flatten_params(params: Params) -> dict[str, Any]:
  """Param tree -> {"stage_0/conv/kernel": leaf}, with partitioning boxes removed."""
  # Take `.value` rather than `nn.meta.unbox`, which would add sharding
  # constraints when called under a mesh; here only the raw values matter.
  unboxed = jax.tree.map(
      lambda leaf: leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf,
      params,
      is_leaf=lambda leaf: isinstance(leaf, nn.meta.AxisMetadata),
  )
  return traverse_util.flatten_dict(unboxed, sep="/")


def save_perceptual_params(path: str, params: Params) -> None:
  """Writes a param tree to `.npz` under the flattened key names `load_perceptual_params` reads."""
  np.savez(path, **{key: np.asarray(value) for key, value in flatten_params(params).items()})


def load_perceptual_params(path: str, template: Params | None = None) -> Params:
  """Reads an `.npz` of weights into a param tree shaped like `template`.

  `template` is a params tree of the network the weights are for (arrays or
  `jax.ShapeDtypeStruct`s, boxed or not, e.g. `jax.eval_shape(net.init, ...)["params"]`);
  it defaults to the default `PerceptualNetwork`. The file must hold exactly
  the template's flattened keys with matching shapes; otherwise a ValueError
  names the file and every missing key, unexpected key and shape mismatch.
  Returns plain (unboxed) host numpy arrays cast to the template's dtypes.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Perceptual network weights {path} (config.loss.perceptual_params) do not "
        "exist; give an .npz written by save_perceptual_params, or '' for random "
        "features."
    )
  if template is None:
    template = default_perceptual_template()
  expected = flatten_params(template)
  with np.load(path) as archive:
    stored = {key: archive[key] for key in archive.files}

  problems = []
  missing = sorted(set(expected) - set(stored))
  unexpected = sorted(set(stored) - set(expected))
  if missing:
    problems.append(f"missing keys: {missing}")
  if unexpected:
    problems.append(f"unexpected keys: {unexpected}")
  for key in sorted(set(expected) & set(stored)):
    if tuple(stored[key].shape) != tuple(expected[key].shape):
      problems.append(
          f"shape mismatch for {key!r}: file has {tuple(stored[key].shape)}, "
          f"network expects {tuple(expected[key].shape)}"
      )
  if problems:
    raise ValueError(f"cannot load perceptual params from {path}: " + "; ".join(problems))

  loaded = {key: np.asarray(stored[key], dtype=expected[key].dtype) for key in expected}
  return traverse_util.unflatten_dict(loaded, sep="/")
