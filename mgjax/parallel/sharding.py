"""Logical axis names -> mesh shardings.

Model code names logical axes only (`batch`, `embed`, `conv_out`, ...). The config
owns `logical_axis_rules`, a list of (logical name, mesh axis or axes or None), which
this module applies. A mesh axis that does not divide a dimension is dropped for that
array (it stays replicated along that axis) so that small layers, such as a 3-channel
output convolution, never block a mesh shape; such drops are logged once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

# The batch of every input is split over replicas and FSDP shards.
BATCH_AXES = ("data", "fsdp")


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from ConfigDict) into tuples."""
  normalised = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"A logical axis rule is (logical_name, mesh_axes); got {rule!r}.")
    name, target = rule
    if isinstance(target, list):
      target = tuple(target)
    normalised.append((str(name), target))
  return tuple(normalised)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not evenly divide their dimension."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, size = [], 1
    for axis in axes_tuple:
      if dim % (size * mesh.shape[axis]) == 0:
        kept.append(axis)
        size *= mesh.shape[axis]
      else:
        logging.log_first_n(
            logging.INFO, "Mesh axis %r (size %d) does not divide dim %d; replicating.",
            8, axis, mesh.shape[axis], dim)
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*fitted)


def logical_to_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings for a tree of (possibly logically boxed) abstract arrays.

  `abstract_tree` comes from `jax.eval_shape` of an init function whose params are
  wrapped by `nn.with_logical_partitioning`; unboxed leaves are replicated.
  """
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  shapes = jax.tree.map(lambda x: x.shape, strip_boxes(abstract_tree))
  def to_sharding(spec, shape):
    return NamedSharding(mesh, _fit_spec(spec, shape, mesh))
  return jax.tree.map(to_sharding, mesh_specs, shapes,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def strip_boxes(tree: Any) -> Any:
  """Removes logical-partitioning boxes without applying sharding constraints.

  (`nn.meta.unbox` constrains each value to its sharding, which only works on
  concrete or traced arrays, not on the ShapeDtypeStructs of `jax.eval_shape`.)
  """
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
