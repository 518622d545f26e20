"""Will it fit, and what will it cost? Compiles the real train step for a TPU topology
ahead of time, on this (CPU-only) machine.

    python -m mgjax.aot --config=experiments/t2v.py:30b --topology=v5p-256 \
        --config.mesh.tensor=4 --config.mesh.context=2 \
        --config.parallel.sequence_parallel=True --config.data.precompute_text=True \
        --buckets=video:256:768:768:16 [--json=report.json]

The step is the trainer's own (`mgjax.train.train_step`, the state and batch
shardings of `create_state` and the logical rules), jitted for the topology's devices
from `jax.experimental.topologies` with the Pallas TPU attention; it needs the `tpu`
extra (libtpu matching jax). Printed per batch shape: per-chip argument / temporary /
output bytes against the chip's HBM, compile time, XLA's FLOPs and the analytic model
FLOPs, and the step time and MFU if the compiled FLOPs ran at --peak_fraction of the
chip's peak. XLA's cost analysis counts a scanned loop's body once, so the FLOPs of a
scanned model are rebuilt from two small unrolled compiles (1 and 2 layers: body and
the rest) as rest + num_layers x body; it counts nothing inside Pallas kernels, so
the attention kernels' FLOPs are read off the compiled program: each call's operand
shapes times the matmuls that kernel does (`KERNEL_MATMULS`), which counts the
backward kernels' recomputation of the scores, the forward's recomputation under
remat and the padding of short sequences to whole blocks. Model FLOPs (and so MFU)
count none of that: 12 x D x S x S' per layer.

A latent flow config needs its codec's config for the latent shape: --tae_config
when given, else the codec workdir's saved config, else the codec stage's
train_config, else the paper's TAE / audio VAE (`Task.for_shapes`). No file of a run
is needed and none is written; the latent statistics are 0 / 1, which changes no cost.

Text encoders need no weights either. One with neither `path` nor `model` is built
from `text.architectures.<name>` (HF config keys; the big t2v configs hold the
paper's UL2, MetaCLIP and ByT5 there) with random weights: memory and FLOPs do not
depend on the values. Frozen encoders then run inside the step (forward only; their
weights are arguments) unless `--config.data.precompute_text=True`, which compiles
the step a run with the encoders' paths trains: their embeddings [B, L, D] are batch
inputs, as Movie Gen precomputes them, and their weights stay in the state (the
trainer keeps them for sampling). The report names which encoders ran in the step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mgjax import checkpoint as checkpoint_lib
from mgjax import configs, optim
from mgjax import train as train_lib
from mgjax.kernels import attention
from mgjax.models.dit import VideoDiT
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib
from mgjax.tasks import get_task_class
from mgjax.train_state import path_names

# Per chip: HBM bytes and dense bf16 peak FLOP/s (vendor figures).
CHIPS = {
    "v5p": (95 * 2**30, 459e12),
    "v5e": (16 * 2**30, 197e12),
    "v4": (32 * 2**30, 275e12),
    "v6e": (32 * 2**30, 918e12),
}
# "v5p-N" names count TensorCores (2 per v5p / v4 chip); their chip grids.
_V5P_GRIDS = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
    6144: "16x16x24",
}


def topology_name(name: str) -> str:
  """ "v5p-1024" (TensorCores) or "v5p:8x8x8" (chip grid) -> "v5p:8x8x8"."""
  if ":" in name:
    return name
  kind, _, cores = name.partition("-")
  if kind in ("v5p", "v4") and cores.isdigit() and int(cores) // 2 in _V5P_GRIDS:
    return f"{kind}:{_V5P_GRIDS[int(cores) // 2]}"
  raise ValueError(
      f"Unknown topology {name!r}; give the chip grid, e.g. v5p:4x4x4, or "
      f"v5p-N with N in {[2 * c for c in _V5P_GRIDS]}."
  )


@dataclasses.dataclass
class BucketReport:
  """One compiled batch shape; bytes are per chip, FLOPs per step for all chips."""

  bucket: str
  tokens_per_example: int
  global_batch: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  hbm_bytes: int
  compile_seconds: float
  xla_flops_counted: float  # as XLA reports it (scanned body once), all chips
  xla_flops: float  # scan-corrected, + the attention kernels', all chips;
  # nan: not counted (--nocount_flops on a scanned stack)
  model_flops: float  # analytic, no recompute, all chips
  attention_flops: float  # analytic attention (model FLOPs), all chips
  kernel_flops: float  # run by the Pallas attention kernels (XLA counts none)
  step_seconds: float  # xla_flops / (chips x peak x peak_fraction)
  mfu: float  # model_flops / (step_seconds x chips x peak)
  text_in_step: tuple[str, ...] = ()  # encoders run inside the step
  text_precomputed: tuple[str, ...] = ()  # encoders whose embeddings are inputs

  @property
  def total_bytes(self) -> int:
    """What the step holds at its peak: arguments (donated ones reused for outputs),
    temporaries and outputs."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

  @property
  def headroom(self) -> float:
    return 1.0 - self.total_bytes / self.hbm_bytes


def codec_config_of(spec: str) -> ml_collections.ConfigDict | None:
  """The codec run config `spec` ("file.py:arg") names, or None: the task's own (its
  codec run's saved config, its stage's train_config, else the paper's)."""
  return configs.load_config(spec) if spec else None


def fill_text_architectures(config: ml_collections.ConfigDict) -> list[str]:
  """Gives every text encoder with neither a path nor a model the architecture of
  `text.architectures.<name>` (randomly initialised: a compile needs no weights);
  returns their names. Encoders without one are left for the task to refuse."""
  text = config.get("text")
  if text is None or not text.get("architectures"):
    return []
  filled = []
  for name, spec in text.encoders.items():
    if not spec.path and not spec.get("model") and name in text.architectures:
      spec.model = ml_collections.ConfigDict(text.architectures[name].to_dict())
      filled.append(name)
  return filled


def precompute_frozen_text(task, config) -> None:
  """Under data.precompute_text the trainer feeds the embeddings of frozen encoders
  whose weights come from a path (mgjax/tasks/t2v.py `precomputed_text`); here no
  encoder has its weights, so every frozen one counts as such and the compiled step
  is the one a run with the paths would compile."""
  data = config.get("data")
  if data is None or not data.get("precompute_text") or data.get("encode_on_the_fly"):
    return
  if not hasattr(type(task), "precomputed_text"):  # on the class: no getter runs
    raise ValueError(
        f"data.precompute_text: the {config.task!r} task has no precomputed "
        "text inputs; leave it False."
    )
  task.precomputed_text = [e.name for e in task.text.encoders if not e.trainable]


def text_inputs(task) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(encoders run inside the step, encoders whose embeddings are batch inputs)."""
  encoders = task.text.encoders if hasattr(task, "text") else []
  precomputed = tuple(getattr(task, "precomputed_text", ()))
  return tuple(e.name for e in encoders if e.name not in precomputed), precomputed


def _compiled_steps(config, devices, codec_config=None):
  """(task, {bucket: (compiled step, compile seconds, batch spec)}) for the config on
  `devices`, compiled as the trainer compiles it."""
  task = get_task_class(config.task).for_shapes(config, codec_config=codec_config)
  precompute_frozen_text(task, config)
  mesh = mesh_lib.mesh_from_config(config, devices)
  task.check_mesh(mesh)
  rules = sharding_lib.rules_for(config)
  optimizer, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  # The init is traced too: outside target_platform its Pallas kernels would be traced
  # for the TPU interpreter, whose callbacks remat (model.remat_policy) refuses.
  with attention.target_platform(devices[0].platform):
    _, abstract, shardings = train_lib.create_state(task, optimizer, config, mesh)
  step = train_lib.jit_train_step(task, optimizer, mesh, shardings, config.train.ema_decay)
  state = checkpoint_lib.abstract_with_shardings(abstract, shardings)
  compiled = {}
  for name, spec in task.batch_specs().items():
    batch = train_lib.abstract_batch(name, spec, mesh)
    start = time.perf_counter()
    with (
        jax.set_mesh(mesh),
        nn.logical_axis_rules(rules),
        attention.target_platform(devices[0].platform),
    ):
      executable = step.lower(state, batch).compile()
    compiled[name] = (executable, time.perf_counter() - start, spec)
  return task, compiled


def _flops(executable) -> float:
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


# The Pallas TPU attention kernels (mgjax/kernels/attention/pallas_tpu.py, by their
# pallas_call names) and the Q x K-sized matmuls each does, 2 x B x N x Q x K x D FLOPs
# apiece on its q [B, N, Q, D] and k [B, N, K, D] operands: forward s = QK^T, o = PV;
# dK/dV s^T, dp^T, dV, dK; dQ s^T, dp^T, dQ (both backward kernels recompute s, dp).
KERNEL_MATMULS = {
    "flash_attention_fwd": 2,
    "flash_attention_bwd_dkv": 4,
    "flash_attention_bwd_dq": 3,
}
_KERNEL_OP = re.compile(r'op_name="[^"]*?(' + "|".join(KERNEL_MATMULS) + r")/pallas_call")
_SHAPE = re.compile(r"\[([\d,]+)\]")


def kernel_flops(executable) -> float:
  """FLOPs the Pallas attention kernels of a compiled step run, per chip, from each
  call's operand shapes in the optimised HLO (padded, as the kernel runs them; a
  scanned body's calls appear once, as in XLA's count). Other Pallas calls are logged
  as uncounted."""
  total, unknown = 0.0, 0
  for line in executable.as_text().splitlines():
    if 'custom_call_target="tpu_custom_call"' not in line:
      continue
    kernel = _KERNEL_OP.search(line)
    if not kernel or "operand_layout_constraints={" not in line:
      unknown += 1
      continue
    operands = line.split("operand_layout_constraints={", 1)[1]
    (batch, heads, q_len, dim), k_shape = (
        tuple(int(d) for d in shape.split(",")) for shape in _SHAPE.findall(operands)[:2]
    )
    total += 2.0 * KERNEL_MATMULS[kernel.group(1)] * batch * heads * q_len * k_shape[2] * dim
  if unknown:
    logging.warning(
        "%d Pallas calls other than the attention kernels: their FLOPs are " "not counted.", unknown
    )
  return total


def _step_flops(executable) -> tuple[float, float]:
  """(XLA-counted, attention-kernel) FLOPs of a compiled step, per chip."""
  return _flops(executable), kernel_flops(executable)


def _unrolled_layer_flops(
    config, devices, codec_config=None
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
  """{bucket: (per-layer FLOPs, FLOPs outside the layers)}, each (XLA-counted,
  attention-kernel), from 1- and 2-layer unrolled compiles of the same config (per
  chip)."""
  flops = []
  for layers in (1, 2):
    small = ml_collections.ConfigDict(config.to_dict())
    small.model.update(num_layers=layers, scan_layers=False)
    flops.append(
        {
            name: _step_flops(c[0])
            for name, c in _compiled_steps(small, devices, codec_config)[1].items()
        }
    )
  return {
      name: (
          tuple(b - a for a, b in zip(flops[0][name], flops[1][name])),
          tuple(2 * a - b for a, b in zip(flops[0][name], flops[1][name])),
      )
      for name in flops[0]
  }


def _kernel_sizes(tree) -> dict[str, int]:
  """{"a/b/kernel": size} of a parameter tree's matmul weights."""
  sizes = {
      "/".join(path_names(path)): math.prod(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  return {path: size for path, size in sizes.items() if path.endswith("/kernel")}


def model_flops(config, task, spec) -> tuple[float, float]:
  """Analytic (weight matmul, attention) FLOPs of one step of a video DiT task (t2v and
  its variants), all chips; nan for other tasks. No recompute and no elementwise work: what MFU counts. Weight matmuls
  are 2 (forward) + 4 (backward) x weights x the tokens they multiply:
    video tokens: the DiT's patch embedding, its layers' kernels (but the
      cross-attention keys and values) and final projection;
    text tokens: cross-attention keys/values, text projections, trainable encoders
      (6x) and frozen ones (2x: forward only; embeddings counted as weights) unless
      their embeddings are precomputed inputs (0x);
    attention scores: 12 x D x S x (S + text tokens) per layer and example."""
  if not isinstance(getattr(task, "dit", None), VideoDiT):
    return float("nan"), float("nan")
  batch = next(iter(spec.values())).shape[0]
  tokens = task.batch_tokens(spec) // batch  # video tokens per example
  params, frozen = (
      nn.meta.unbox(tree) for tree in jax.eval_shape(lambda: task.init(jax.random.key(0)))
  )
  lengths = {name: e.max_length for name, e in config.text.encoders.items()}
  text_tokens = sum(lengths.values())
  per_video_token = per_text_token = 0
  for path, size in _kernel_sizes(params["dit"]).items():
    if path.startswith("text_projection_"):
      per_text_token += size * lengths[path.split("/")[0].removeprefix("text_projection_")]
    elif "cross_attention/key/" in path or "cross_attention/value/" in path:
      per_text_token += size * text_tokens
    elif path.startswith(("layers", "patch_embed", "concat_embed", "final/")):
      per_video_token += size * tokens
  precomputed = set(getattr(task, "precomputed_text", ()))
  for trees, factor in ((params["text"], 6.0), (frozen["text"], 2.0)):
    for name, tree in trees.items():
      if name not in precomputed:
        per_text_token += factor / 6.0 * train_lib.count_params(tree) * lengths[name]
  m = config.model
  attention = m.num_layers * 12.0 * m.embed_dim * tokens * (tokens + text_tokens)
  return batch * 6.0 * (per_video_token + per_text_token), batch * attention


def compile_report(
    config: ml_collections.ConfigDict,
    topology: str,
    tae_config: str = "",
    peak_fraction: float = 0.5,
    count_flops: bool = True,
) -> list[BucketReport]:
  """Compiles every batch shape of `config` for `topology`; see the module doc."""
  # Compile-only: no chip is claimed, so other processes may use libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415 - needs libtpu

  name = topology_name(topology)
  kind = name.split(":")[0]
  if kind not in CHIPS:
    raise ValueError(f"No HBM/peak figures for {kind!r}; known: {sorted(CHIPS)}.")
  hbm, peak = CHIPS[kind]
  devices = topologies.get_topology_desc(name, "tpu").devices
  config = ml_collections.ConfigDict(config.to_dict())
  if "attention_implementation" in config.model:
    config.model.attention_implementation = "pallas_tpu"
  fill_text_architectures(config)
  codec_config = codec_config_of(tae_config)
  task, compiled = _compiled_steps(config, devices, codec_config)
  in_step, precomputed = text_inputs(task)
  layers = (
      _unrolled_layer_flops(config, devices, codec_config)
      if count_flops and config.model.get("scan_layers")
      else {}
  )
  reports = []
  for bucket, (executable, seconds, spec) in compiled.items():
    memory = executable.memory_analysis()
    counted = _flops(executable) * len(devices)
    with attention.target_platform(devices[0].platform):  # traces the init
      matmuls, attention_flops = model_flops(config, task, spec)
    analytic = matmuls + attention_flops
    if bucket in layers:
      body, rest = layers[bucket]
      xla, kernels = ((r + config.model.num_layers * b) * len(devices) for b, r in zip(body, rest))
    elif not config.model.get("scan_layers"):
      xla, kernels = counted, kernel_flops(executable) * len(devices)
    else:  # --nocount_flops on a scanned stack: its count would be one layer's
      xla = kernels = float("nan")
    total = xla + kernels
    step_seconds = total / (len(devices) * peak * peak_fraction)
    batch = next(iter(spec.values())).shape[0]
    reports.append(
        BucketReport(
            bucket=bucket,
            global_batch=batch,
            tokens_per_example=task.batch_tokens(spec) // batch,
            argument_bytes=memory.argument_size_in_bytes,
            temp_bytes=memory.temp_size_in_bytes,
            output_bytes=memory.output_size_in_bytes,
            alias_bytes=memory.alias_size_in_bytes,
            hbm_bytes=hbm,
            compile_seconds=seconds,
            xla_flops_counted=counted,
            xla_flops=total,
            model_flops=analytic,
            attention_flops=attention_flops,
            kernel_flops=kernels,
            step_seconds=step_seconds,
            mfu=analytic / (step_seconds * len(devices) * peak),
            text_in_step=in_step,
            text_precomputed=precomputed,
        )
    )
  return reports


def format_report(reports: list[BucketReport], topology: str, peak_fraction: float) -> str:
  gib = 2**30
  lines = [
      f"Topology {topology_name(topology)}; step time and MFU if XLA's FLOPs ran at "
      f"{peak_fraction:.0%} of peak."
  ]
  for r in reports:
    fits = "fits" if r.headroom >= 0 else "DOES NOT FIT"
    lines += [
        f"[{r.bucket}] {r.global_batch} examples x {r.tokens_per_example:,} tokens",
        f"  per chip: arguments {r.argument_bytes / gib:.2f} GiB, temporaries "
        f"{r.temp_bytes / gib:.2f} GiB, outputs {r.output_bytes / gib:.2f} GiB "
        f"(donated {r.alias_bytes / gib:.2f}) = {r.total_bytes / gib:.2f} of "
        f"{r.hbm_bytes / gib:.0f} GiB HBM: {fits}, headroom {r.headroom:.0%}",
    ]
    model = f"model {r.model_flops:.3e} (attention {r.attention_flops:.3e})"
    if math.isnan(r.xla_flops):
      lines.append(
          f"  compile {r.compile_seconds:.1f} s; FLOPs per step not counted "
          f"(--nocount_flops: XLA counts a scanned layer once), {model}"
      )
    else:
      lines += [
          f"  compile {r.compile_seconds:.1f} s; FLOPs per step: {r.xla_flops:.3e} compiled "
          f"(XLA counted {r.xla_flops_counted:.3e}: scanned body once, no attention "
          f"kernels; the kernels {r.kernel_flops:.3e}), {model}",
          f"  estimated step {r.step_seconds:.2f} s, MFU {r.mfu:.1%}",
      ]
    if r.text_in_step or r.text_precomputed:
      lines.append(
          f"  text encoders in the step: {', '.join(r.text_in_step) or 'none'}; "
          f"embeddings as inputs: {', '.join(r.text_precomputed) or 'none'}"
      )
  return "\n".join(lines)


def parse_bucket(text: str) -> tuple:
  """ "video:256:768:768:16" -> ("video", 256, 768, 768, 16)."""
  name, *sizes = text.split(":")
  if len(sizes) != 4 or not all(s.isdigit() for s in sizes):
    raise app.UsageError(f"Bucket {text!r}: give name:frames:height:width:global_batch.")
  return (name, *map(int, sizes))


def main():
  config_flag = config_flags.DEFINE_config_file(
      "config", None, "Experiment config file.", lock_config=True
  )
  topology = flags.DEFINE_string(
      "topology", "v5p:2x2x1", "TPU topology: v5p-N (N " "TensorCores) or v5p:AxBxC (chips)."
  )
  tae_config = flags.DEFINE_string(
      "tae_config",
      "",
      "Codec (TAE / audio VAE) config for latent shapes; default the run's own (its codec "
      "workdir's config, its stage's train_config, else the paper's).",
  )
  peak_fraction = flags.DEFINE_float(
      "peak_fraction", 0.5, "Share of peak FLOP/s the " "compiled FLOPs are assumed to run at."
  )
  count_flops = flags.DEFINE_bool(
      "count_flops",
      True,
      "Rebuild a scanned model's FLOPs "
      "from 1- and 2-layer unrolled compiles; without, a "
      "scanned model's FLOPs, step time and MFU are not "
      "reported (NaN in --json): memory only.",
  )
  json_path = flags.DEFINE_string("json", None, "Also write the report here as JSON.")
  buckets = flags.DEFINE_list(
      "buckets",
      None,
      "Replace data.buckets by these batch "
      "shapes, name:frames:height:width:global_batch each, e.g. "
      "video:256:768:768:16 (73,728 tokens with the paper's TAE).",
  )

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_flag.value
    if buckets.value:
      config = ml_collections.ConfigDict(config.to_dict())
      config.data.buckets = tuple(parse_bucket(b) for b in buckets.value)
    try:
      reports = compile_report(
          config, topology.value, tae_config.value, peak_fraction.value, count_flops.value
      )
    except jax.errors.JaxRuntimeError as e:  # user errors: reported by cli.run
      if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
        raise
      first = next((l for l in str(e).splitlines() if "memory" in l.lower()), str(e))
      sys.stderr.write(
          f"mgjax.aot: the step does not fit {topology.value}: {first.strip()}"
          "\nShard more (fsdp, tensor, context), remat more "
          "(model.remat_policy), or use a smaller batch.\n"
      )
      sys.exit(1)
    print(format_report(reports, topology.value, peak_fraction.value))
    if json_path.value:
      with open(json_path.value, "w") as f:
        json.dump(
            [
                dict(dataclasses.asdict(r), total_bytes=r.total_bytes, headroom=r.headroom)
                for r in reports
            ],
            f,
            indent=1,
        )
    sys.exit(0 if all(r.headroom >= 0 for r in reports) else 1)

  from mgjax import cli  # only the command line needs it

  cli.run(run, "mgjax.aot")


if __name__ == "__main__":
  main()
