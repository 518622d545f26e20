"""Factorized learnable positional embedding for video tokens, and table resizing.

Movie Gen gives each latent patch a position (frame, row, column) and embeds it as
the sum of three learned rows, one from each of a frames, a height and a width
table. Factorizing keeps the tables tiny (max_frames + max_height + max_width rows
instead of their product) and lets one model run at any size that fits the tables:
a token at (t, i, j) always reads rows t, i and j, whatever the clip's size.

Between training stages (256px -> 768px) the tables grow with
`resize_positional_tables`, which stretches them by linear interpolation so that a
larger grid sees the same smooth positional field the smaller one learned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgjax.models.layers import logical_init

# Submodule name of the embedding inside a model, and its table names by axis.
MODULE_NAME = "pos_embed"
TABLE_NAMES = ("frames", "height", "width")
TABLE_AXES = {
    "frames": ("pos_t", "embed"),
    "height": ("pos_h", "embed"),
    "width": ("pos_w", "embed"),
}


class FactorizedPositionalEmbedding(nn.Module):
  """Sums one learned row per axis: emb[t, i, j] = F[t] + H[i] + W[j].

  Attributes:
    features: model width D.
    max_frames / max_height / max_width: table sizes, in latent patches.
  """

  features: int
  max_frames: int
  max_height: int
  max_width: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, grid: Sequence[int]) -> jax.Array:
    """Embeddings of a (frames, height, width) grid of patches -> [T * h * w, D]."""
    sizes = dict(zip(TABLE_NAMES, (self.max_frames, self.max_height, self.max_width)))
    too_big = {name: (n, sizes[name]) for name, n in zip(TABLE_NAMES, grid) if n > sizes[name]}
    if too_big:
      detail = ", ".join(f"{name} {n} > max_{name} {limit}" for name, (n, limit) in too_big.items())
      raise ValueError(
          f"Video of {tuple(grid)} patches (frames, height, width) exceeds the "
          f"positional tables: {detail}. Raise the model's max sizes and grow trained "
          f"tables with mgjax.models.positional.resize_positional_tables."
      )
    init = nn.initializers.normal(stddev=0.02)
    tables = [
        self.param(
            name,
            logical_init(init, TABLE_AXES[name]),
            (sizes[name], self.features),
            self.param_dtype,
        )
        for name in TABLE_NAMES
    ]
    t, h, w = grid
    frames, rows, cols = (table[:n] for table, n in zip(tables, grid))
    emb = frames[:, None, None] + rows[None, :, None] + cols[None, None, :]  # [T, h, w, D]
    return emb.reshape(t * h * w, self.features)


def interpolate_rows(table: jax.Array, size: int) -> jax.Array:
  """Linearly stretches a [n, D] table to [size, D], treating rows as cell centres.

  Row r of the old table covers the interval [r, r + 1) of an axis of length n; a new
  row samples the old field at its own cell centre. Ends are clamped, so the first
  and last rows are kept exactly, and for an integer factor k every old row r
  reappears exactly at new row k * r + (k - 1) / 2 when k is odd. This is the
  "same image, finer patches" view that a resolution change calls for.
  """
  n = table.shape[0]
  if size < n:
    raise ValueError(
        f"resize_positional_tables only grows tables; {n} rows -> {size}. "
        f"A smaller video already uses just the first rows."
    )
  if size == n:
    return table
  centres = (np.arange(size) + 0.5) * n / size - 0.5  # old-row coordinates
  centres = np.clip(centres, 0.0, n - 1)
  lower = np.floor(centres).astype(np.int32)
  upper = np.minimum(lower + 1, n - 1)
  frac = jnp.asarray(centres - lower, jnp.float32)[:, None]  # [size, 1]
  values = table.astype(jnp.float32)
  resized = (1.0 - frac) * values[lower] + frac * values[upper]  # [size, D]
  return resized.astype(table.dtype)


def _is_positional_module(tree: Any) -> bool:
  return isinstance(tree, Mapping) and set(TABLE_NAMES) <= set(tree)


def resize_positional_tables(params: Any, new_sizes: Mapping[str, int] | Sequence[int]):
  """Returns `params` with every positional table grown to `new_sizes` rows.

  Args:
    params: a model's params (or {"params": ...} variables), boxed or plain; every
      `pos_embed` module found in it is resized, so a DiT nested in a larger model
      works too. Boxes (logical axis names) are kept.
    new_sizes: {"frames": n, "height": n, "width": n} (omit an axis to keep it) or a
      (frames, height, width) tuple, in latent patches. Time is usually kept: a
      longer clip at the same frame rate is more frames, not finer ones.

  The model that consumes the result needs the same max sizes in its config.
  """
  if not isinstance(new_sizes, Mapping):
    new_sizes = dict(zip(TABLE_NAMES, new_sizes))
  unknown = set(new_sizes) - set(TABLE_NAMES)
  if unknown:
    raise ValueError(f"Unknown positional tables {sorted(unknown)}; use {TABLE_NAMES}.")
  found = []

  def resize_module(module: Mapping[str, Any]) -> dict[str, Any]:
    resized = dict(module)
    for name, size in new_sizes.items():
      table = module[name]
      if isinstance(table, nn.meta.AxisMetadata):
        resized[name] = table.replace_boxed(interpolate_rows(table.unbox(), size))
      else:
        resized[name] = interpolate_rows(table, size)
    return resized

  def walk(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    rebuilt = {}
    for key, value in tree.items():
      if key == MODULE_NAME and _is_positional_module(value):
        found.append(key)
        rebuilt[key] = resize_module(value)
      else:
        rebuilt[key] = walk(value)
    return rebuilt

  out = walk(params)
  if not found:
    raise ValueError(f"No {MODULE_NAME!r} module with tables {TABLE_NAMES} in the params.")
  return out
