"""Device mesh from config.

The mesh always has the four named axes of mgjax, in this order:

  data     pure replicas (gradients all-reduced)
  fsdp     batch + parameter/optimizer-state sharding
  context  the sequence through attention (K/V gathered)
  tensor   attention heads / MLP hidden

An axis of size 1 costs nothing, so model code can always name all four.

Sharding mode: every axis is `AxisType.Auto`. jax 0.10 defaults `make_mesh` to
`Explicit` axes, where each op's output sharding is part of its type; mgjax instead
lets GSPMD propagate shardings from the jit in/out shardings and from the logical
activation constraints in the model, the style MaxText and big_vision use. It keeps
model code free of per-op sharding arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "context", "tensor")
AXIS_TYPES = (AxisType.Auto,) * len(MESH_AXES)


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills the one `-1` axis so the product equals `num_devices`.

  Raises a ValueError naming the axes when the sizes cannot cover the devices.
  """
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}.")
  resolved = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
  fill = [axis for axis, size in resolved.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"At most one mesh axis may be -1; got {fill}.")
  bad = [axis for axis, size in resolved.items() if size == 0 or size < -1]
  if bad:
    raise ValueError(f"Mesh axis sizes must be positive or -1; bad: {bad}.")
  known = math.prod(size for size in resolved.values() if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f"Cannot fill mesh axis {fill[0]!r}: {num_devices} devices are not divisible "
          f"by the product {known} of the other axes {resolved}."
      )
    resolved[fill[0]] = num_devices // known
  if math.prod(resolved.values()) != num_devices:
    raise ValueError(
        f"Mesh {resolved} has {math.prod(resolved.values())} devices but "
        f"{num_devices} are available; set one axis to -1 to fill."
    )
  return resolved


def resolve_dcn_sizes(dcn_sizes: Mapping[str, int] | None) -> dict[str, int]:
  """Per-axis slice (node) counts of a multi-slice mesh; every size explicit."""
  dcn_sizes = dict(dcn_sizes or {})
  unknown = set(dcn_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown dcn_mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}.")
  resolved = {axis: int(dcn_sizes.get(axis, 1)) for axis in MESH_AXES}
  bad = [axis for axis, size in resolved.items() if size < 1]
  if bad:
    raise ValueError(f"dcn_mesh sizes must be positive (no -1); bad: {bad}.")
  return resolved


def device_grid(
    sizes: Mapping[str, int],
    devices: Sequence[jax.Device],
    dcn_sizes: Mapping[str, int] | None = None,
) -> np.ndarray:
  """The devices arranged as the (data, fsdp, context, tensor) mesh array.

  `sizes` lay out the devices of one slice (TPU) or node (GPU), whose links are
  fast (ICI, NVLink); `dcn_sizes` (default all 1) repeat that layout across slices
  or nodes over the data-centre network, so that axis `a` spans
  sizes[a] x dcn_sizes[a] devices with the slow hops on the outside. Put only `data`
  (or `fsdp`) across slices: their collectives are one all-reduce or all-gather per
  step, which DCN bandwidth can carry.
  """
  devices = list(devices)
  dcn = resolve_dcn_sizes(dcn_sizes)
  num_slices = math.prod(dcn.values())
  if len(devices) % num_slices:
    raise ValueError(
        f"dcn_mesh {dcn} asks for {num_slices} slices, which do not divide the "
        f"{len(devices)} devices."
    )
  resolved = resolve_axis_sizes(sizes, len(devices) // num_slices)
  shape = tuple(resolved[axis] for axis in MESH_AXES)
  if num_slices > 1:
    # A slice is a TPU slice where devices know theirs, else one process (a GPU node).
    return mesh_utils.create_hybrid_device_mesh(
        shape,
        tuple(dcn[axis] for axis in MESH_AXES),
        devices,
        process_is_granule=not hasattr(devices[0], "slice_index"),
    )
  if devices == list(jax.devices()):  # lets jax pick a topology-aware order
    return jax.make_mesh(shape, MESH_AXES, axis_types=AXIS_TYPES).devices
  return np.asarray(devices).reshape(shape)


def make_mesh(
    sizes: Mapping[str, int],
    devices: Sequence[jax.Device] | None = None,
    dcn_sizes: Mapping[str, int] | None = None,
) -> Mesh:
  """The (data, fsdp, context, tensor) mesh over `devices` (default: all), Auto axes."""
  devices = list(devices if devices is not None else jax.devices())
  return Mesh(device_grid(sizes, devices, dcn_sizes), MESH_AXES, axis_types=AXIS_TYPES)


def mesh_from_config(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a run's config (`mesh`, and `dcn_mesh` when present)."""
  dcn = config.get("dcn_mesh")
  return make_mesh(config.mesh.to_dict(), devices, dcn.to_dict() if dcn else None)
