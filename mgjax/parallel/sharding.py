"""Logical axis names -> mesh shardings.

Model code names logical axes only (`batch`, `embed`, `conv_out`, ...). The config
owns `logical_axis_rules`, a list of (logical name, mesh axis or axes or None), which
this module applies. A mesh axis that does not divide a dimension is dropped for that
array (it stays replicated along that axis) so that small layers, such as a 3-channel
output convolution, never block a mesh shape; such drops are logged once. Tasks
reject meshes that would leave their big dimensions (heads, MLP, tokens) unsplit.

Activations are constrained with `constrain(x, names)`, the one helper model code
calls: outside a mesh (plain `apply` on one device) it does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mgjax.configs import parallel_settings

Rules = Sequence[tuple[str, Any]]

# The batch of every input is split over replicas and FSDP shards.
BATCH_AXES = ("data", "fsdp")


# The residual-stream sequence axis; sequence parallelism also shards it over `tensor`.
SEQUENCE_AXIS = "seq"


def rules_from_config(
    rules: Sequence[Sequence[Any]], sequence_parallel: bool = False
) -> tuple[tuple[str, Any], ...]:
  """Normalises config rules (lists from ConfigDict) into tuples.

  With `sequence_parallel`, the `seq` rule gains the `tensor` axis: activations
  between the tensor-parallel matmuls (norms, residual adds, modulation) are then
  split along the sequence over `tensor` instead of replicated, and XLA turns each
  all-reduce after a row-parallel matmul into a reduce-scatter plus an all-gather
  before the next column-parallel one.
  """
  normalised = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"A logical axis rule is (logical_name, mesh_axes); got {rule!r}.")
    name, target = rule
    if isinstance(target, list):
      target = tuple(target)
    if sequence_parallel and name == SEQUENCE_AXIS:
      axes = () if target is None else (target,) if isinstance(target, str) else target
      target = tuple(axes) + (() if "tensor" in axes else ("tensor",))
    normalised.append((str(name), target))
  return tuple(normalised)


def rules_for(config) -> tuple[tuple[str, Any], ...]:
  """The logical axis rules of a run's config, sequence parallelism applied."""
  return rules_from_config(
      config.logical_axis_rules, parallel_settings(config)["sequence_parallel"]
  )


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh) -> PartitionSpec:
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
            logging.INFO,
            "Mesh axis %r (size %d) does not divide dim %d; replicating.",
            8,
            axis,
            mesh.shape[axis],
            dim,
        )
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*fitted)


def activation_spec(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
  """Mesh spec of an activation with logical `names`, under the current mesh and rules
  (`jax.set_mesh` + `nn.logical_axis_rules`); None when neither is set."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return None
  return _fit_spec(nn.logical_to_mesh_axes(tuple(names), rules), shape, mesh)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains activation x to the sharding its logical axis names give; a no-op
  outside a mesh. `names` has one entry (a logical name or None) per dimension."""
  if len(names) != x.ndim:
    raise ValueError(
        f"constrain: {len(names)} logical names {tuple(names)} for an array " f"of shape {x.shape}."
    )
  spec = activation_spec(names, x.shape)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


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

  return jax.tree.map(
      to_sharding, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )


def strip_boxes(tree: Any) -> Any:
  """Removes logical-partitioning boxes without applying sharding constraints.

  (`nn.meta.unbox` constrains each value to its sharding, which only works on
  concrete or traced arrays, not on the ShapeDtypeStructs of `jax.eval_shape`.)
  """
  return jax.tree.map(
      lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
      tree,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis over (data, fsdp); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_rows(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> slice:
  """The rows (leading axis) of a global array that this process's devices hold."""
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    rows = index[0] if index else slice(None)
    starts.append(rows.start or 0)
    stops.append(shape[0] if rows.stop is None else rows.stop)
  return slice(min(starts), max(stops))


def host_batch_to_global(host_batch: dict, shardings: dict, global_rows: int | None = None) -> dict:
  """Global arrays from host batches.

  With `global_rows`, `host_batch` holds only this process's rows of a batch of
  `global_rows` rows (the rows `process_rows` names: each process reads its own
  share of the data). Without it, every process built the whole batch
  (deterministic by step) and hands over only the rows its own devices hold.
  """
  out = {}
  for key, value in host_batch.items():
    if global_rows is None:
      local = value[process_rows(shardings[key], value.shape)]
      global_shape = value.shape
    else:
      local, global_shape = value, (global_rows,) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(shardings[key], local, global_shape)
  return out
