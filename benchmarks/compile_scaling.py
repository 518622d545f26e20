"""Compile time of the train step against depth: with scanned layers it should hardly
grow (the issue's bar: 48 layers within 1.5x of 4).

    python benchmarks/compile_scaling.py                      # tiny width, CPU
    python benchmarks/compile_scaling.py --config=experiments/t2v.py:1b --topology=v5p:2x2x1

Compiles (never runs) `mgjax.train.train_step` of the config's first bucket, as
`mgjax.aot` does, at each --layers count with model.scan_layers on (and, with
--unrolled, off too), on this machine's devices or a TPU topology (needs libtpu),
and prints the seconds and the ratio to the first count.
"""

from __future__ import annotations

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mgjax import aot

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/t2v.py", "Config.")
_LAYERS = flags.DEFINE_list("layers", ["4", "48"], "Layer counts.")
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU topology (default: local devices).")
_UNROLLED = flags.DEFINE_bool("unrolled", False, "Also time unrolled layers.")


def compile_seconds(config, layers: int, scan: bool, devices) -> float:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(num_layers=layers, scan_layers=scan)
  config.data.buckets = config.data.buckets[-1:]  # one (video) batch shape
  tae = aot.codec_config_of("experiments/tae.py:paper")
  ((_, seconds, _),) = aot._compiled_steps(config, devices, tae)[1].values()
  return seconds


def main(argv):
  del argv
  import jax  # noqa: PLC0415

  devices = jax.devices()[:1]
  if _TOPOLOGY.value:
    from jax.experimental import topologies  # noqa: PLC0415

    devices = topologies.get_topology_desc(aot.topology_name(_TOPOLOGY.value), "tpu").devices
  counts = [int(n) for n in _LAYERS.value]
  print(
      f"Train step compile time, {devices[0].device_kind} x {len(devices)}, "
      f"width {_CONFIG.value.model.embed_dim}"
  )
  for scan in ([True, False] if _UNROLLED.value else [True]):
    times = [compile_seconds(_CONFIG.value, n, scan, devices) for n in counts]
    label = "scanned" if scan else "unrolled"
    print(
        "  "
        + ", ".join(f"{n} layers {t:.1f} s" for n, t in zip(counts, times))
        + f" ({label}): {counts[-1]} / {counts[0]} layers = {times[-1] / times[0]:.2f}x"
    )


if __name__ == "__main__":
  app.run(main)
