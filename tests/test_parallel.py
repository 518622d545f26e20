"""Every mesh layout computes the single-device train step, with the intended shardings.

The tiny video DiT (text cross-attention included) takes one full optimizer step on 8
fake CPU devices under FSDP, tensor, sequence and context parallelism and their
mixtures; loss, gradient norm and every updated parameter must equal the
one-device step, and the parameters, optimizer state and batch must carry the
shardings the logical rules promise.
"""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.context_parallel_memory import step_temp_bytes
from mgjax import configs, flow, optim
from mgjax import train as train_lib
from mgjax.kernels.attention import reference
from mgjax.models.dit import VideoDiT
from mgjax.models.dit_blocks import ACTIVATION_AXES, MLP_AXES, QKV_AXES
from mgjax.parallel import attention as mesh_attention
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib
from mgjax.tasks.base import Task

BATCH, FRAMES, SIZE, CHANNELS = 8, 4, 8, 16  # latents [8, 4, 8, 8, 16]: 64 tokens each
TEXT_LENGTH, TEXT_DIM = 12, 32


def tiny_dit(context_attention="all_gather", attention_implementation="auto", remat="full"):
  # 8 heads so that tensor=8 splits them; remat + scan as in the large configs.
  return VideoDiT(
      num_layers=2,
      embed_dim=64,
      mlp_dim=128,
      num_heads=8,
      max_frames=8,
      max_height=8,
      max_width=8,
      remat_policy=remat,
      context_attention=context_attention,
      attention_implementation=attention_implementation,
  )


class DiTFlowTask(Task):
  """The DiT's flow-matching loss on given latents and text embeddings."""

  def __init__(self, config, model):
    super().__init__(config, "")
    self.dit = model

  def batch_specs(self):
    return {"video": {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in make_batch().items()}}

  def init(self, rng):
    batch = make_batch()
    variables = self.dit.init(
        rng,
        batch["latent"][:1],
        jnp.zeros((1,)),
        {"ul2": (batch["text"][:1], batch["text_mask"][:1])},
    )
    return {"dit": variables["params"]}, {}

  def loss(self, params, frozen, batch, rng, step):
    t, x_t, target = flow.training_example(rng, batch["latent"], 1e-5, 0.0, 1.0)
    text = {"ul2": (batch["text"], batch["text_mask"])}
    velocity = self.dit.apply({"params": params["dit"]}, x_t, t, text)
    return flow.velocity_loss(velocity, target), {}

  def train_batches(self, start_step, rows_of):
    raise NotImplementedError

  def evaluate(self, params, frozen, step):
    raise NotImplementedError


def make_batch():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, TEXT_LENGTH + 1, BATCH)
  return {
      "latent": rng.standard_normal((BATCH, FRAMES, SIZE, SIZE, CHANNELS)).astype(np.float32),
      "text": rng.standard_normal((BATCH, TEXT_LENGTH, TEXT_DIM)).astype(np.float32),
      "text_mask": np.arange(TEXT_LENGTH)[None] < lengths[:, None],
  }


def run_config(mesh_sizes, sequence_parallel=False, context_attention="all_gather"):
  config = configs.base_config()
  config.mesh.update({**dict(data=1, fsdp=1, context=1, tensor=1), **mesh_sizes})
  config.parallel.update(sequence_parallel=sequence_parallel, context_attention=context_attention)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=1)
  return config


def two_steps(config, devices, attention_implementation="auto", remat="full"):
  """(state after two steps, their metrics, state shardings, mesh, compiled step).

  Two, because warmup makes the first step's learning rate 0."""
  task = DiTFlowTask(
      config, tiny_dit(config.parallel.context_attention, attention_implementation, remat)
  )
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), devices)
  rules = sharding_lib.rules_for(config)
  optimizer, _ = optim.make_optimizer(config.optimizer, 10)
  init, abstract, shardings = train_lib.create_state(task, optimizer, config, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = init()
  step_fns = train_lib.compile_steps(task, optimizer, mesh, rules, abstract, shardings)
  ((compiled, batch_shardings, _),) = step_fns.values()
  batch = sharding_lib.host_batch_to_global(make_batch(), batch_shardings)
  metrics = []
  for _ in range(2):
    state, step_metrics = compiled(state, batch)
    metrics.append(jax.device_get(step_metrics))
  return state, jax.tree.map(lambda *m: np.stack(m), *metrics), shardings, mesh, compiled


@functools.cache
def reference_step():
  config = run_config({})
  state, metrics, *_ = two_steps(config, jax.devices()[:1])
  params = jax.device_get(state.params)
  init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)  # as train.make_init_fn
  initial = nn.meta.unbox(DiTFlowTask(config, tiny_dit()).init(init_rng)[0])
  moved = max(
      np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial))
  )
  assert moved > 1e-4  # the comparisons below are of weights that really changed
  return params, metrics


def leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


# name: (mesh, sequence_parallel, context_attention, {param path: spec}, HLO collective)
LAYOUTS = {
    "fsdp8": (
        dict(fsdp=8),
        False,
        "all_gather",
        {
            "dit/layers/self_attention/query/kernel": P(None, "fsdp"),
            "dit/layers/mlp/up/kernel": P(None, "fsdp", None),
        },
        None,
    ),
    "tensor8": (
        dict(tensor=8),
        False,
        "all_gather",
        {
            "dit/layers/self_attention/query/kernel": P(None, None, "tensor"),
            "dit/layers/mlp/up/kernel": P(None, None, "tensor"),
            "dit/layers/mlp/down/kernel": P(None, "tensor", None),
        },
        "all-reduce",
    ),
    "fsdp2_tensor4": (
        dict(fsdp=2, tensor=4),
        False,
        "all_gather",
        {"dit/layers/mlp/up/kernel": P(None, "fsdp", "tensor")},
        "all-reduce",
    ),
    "fsdp2_tensor4_sp": (
        dict(fsdp=2, tensor=4),
        True,
        "all_gather",
        {"dit/layers/mlp/up/kernel": P(None, "fsdp", "tensor")},
        "all-gather",
    ),
    "context8": (
        dict(context=8),
        False,
        "all_gather",
        {"dit/layers/self_attention/query/kernel": P()},
        "all-gather",
    ),
    "context8_ring": (
        dict(context=8),
        False,
        "ring",
        {"dit/layers/self_attention/query/kernel": P()},
        "collective-permute",
    ),
    "fsdp2_context2_tensor2": (
        dict(fsdp=2, context=2, tensor=2),
        False,
        "all_gather",
        {"dit/layers/self_attention/query/kernel": P(None, "fsdp", "tensor")},
        "all-gather",
    ),
    "data2_fsdp4": (
        dict(data=2, fsdp=4),
        False,
        "all_gather",
        {"dit/layers/mlp/up/kernel": P(None, "fsdp", None)},
        None,
    ),
    "fsdp4_tensor2": (
        dict(fsdp=4, tensor=2),
        False,
        "all_gather",
        {"dit/layers/mlp/up/kernel": P(None, "fsdp", "tensor")},
        None,
    ),
}


@functools.cache
def layout_step(name):
  mesh_sizes, sequence_parallel, mode, _, _ = LAYOUTS[name]
  return two_steps(run_config(mesh_sizes, sequence_parallel, mode), jax.devices()[:8])


def collectives(compiled, op):
  return len(re.findall(rf"= \S+ {op}\(", compiled.as_text()))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_train_step_matches_single_device(name):
  expected_specs, collective = LAYOUTS[name][3:]
  state, metrics, shardings, mesh, compiled = layout_step(name)
  ref_params, ref_metrics = reference_step()

  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=2e-4)
  params = jax.device_get(state.params)
  for (path, got), want in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_params)
  ):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))

  for path, spec in expected_specs.items():
    param = leaf(state.params, path)
    want = NamedSharding(mesh, spec)
    assert param.sharding.is_equivalent_to(want, param.ndim), (path, param.sharding)
    # Adam's moments are sharded exactly like their parameter.
    moment = leaf(state.opt_state[1][0].mu, path)  # (clip, (adam, ...), schedule)
    assert moment.sharding.is_equivalent_to(want, moment.ndim), (path, moment.sharding)
  latent_sharding = compiled.input_shardings[0][1]["latent"]
  assert latent_sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 5)
  if collective:
    assert collectives(compiled, collective) > 0


def test_sequence_parallelism_replaces_all_reduces():
  """Under sequence parallelism the activations after the tensor-parallel matmuls
  stay split over `tensor`, so most all-reduces become gathers and scatters."""
  plain, parallel = layout_step("fsdp2_tensor4")[4], layout_step("fsdp2_tensor4_sp")[4]
  assert collectives(parallel, "all-reduce") < collectives(plain, "all-reduce") / 2
  assert collectives(parallel, "all-gather") > collectives(plain, "all-gather")


def test_activation_shardings_follow_the_rules():
  """seq -> context (x tensor with sequence parallelism); attention and MLP tokens
  -> context only, heads and hidden units -> tensor; no constraint off the mesh."""
  x = jnp.zeros((8, 64, 32))
  assert sharding_lib.constrain(x, ACTIVATION_AXES) is x  # no mesh: untouched
  for sequence_parallel, seq in ((False, "context"), (True, ("context", "tensor"))):
    config = run_config(dict(fsdp=2, context=2, tensor=2), sequence_parallel)
    mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:8])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.rules_for(config)):
      specs = {
          names: sharding_lib.activation_spec(names, shape)
          for names, shape in (
              (ACTIVATION_AXES, (8, 64, 32)),
              (QKV_AXES, (8, 64, 4, 8)),
              (MLP_AXES, (8, 64, 96)),
          )
      }
    assert specs[ACTIVATION_AXES] == P(("data", "fsdp"), seq, None)
    assert specs[QKV_AXES] == P(("data", "fsdp"), "context", "tensor", None)
    assert specs[MLP_AXES] == P(("data", "fsdp"), "context", "tensor")


@pytest.mark.parametrize("mode", mesh_attention.MODES)
def test_context_parallel_attention_equals_plain_attention(mode):
  """Forward and gradients of the all-gather and ring variants on a context=4 mesh."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 32, 4, 8)), jnp.float32) for _ in range(3))
  config = run_config(dict(context=4, fsdp=2))
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:8])

  def loss(attention_fn, q, k, v):
    return jnp.sum(jnp.sin(attention_fn(q, k, v)))

  plain = jax.value_and_grad(functools.partial(loss, reference.attention), argnums=(0, 1, 2))(
      q, k, v
  )
  parallel_fn = functools.partial(mesh_attention.self_attention, mode=mode)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.rules_for(config)):
    lowered = jax.jit(
        jax.value_and_grad(functools.partial(loss, parallel_fn), argnums=(0, 1, 2))
    ).lower(q, k, v)
    parallel = lowered.compile()(q, k, v)
  for got, want in zip(jax.tree.leaves(parallel), jax.tree.leaves(plain)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  hlo = lowered.as_text()
  if mode == "all_gather":  # dK and dV leave through a reduce-scatter
    assert "all_gather" in hlo and "reduce_scatter" in hlo
  else:
    assert "collective_permute" in hlo


def test_fsdp_parameter_and_optimizer_bytes_per_device():
  config = run_config(dict(fsdp=8))
  state, *_ = two_steps(config, jax.devices()[:8])
  tree = (state.params, state.opt_state)
  total = sum(x.nbytes for x in jax.tree.leaves(tree))
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
  replicated = sum(x.nbytes for x in jax.tree.leaves(tree) if x.sharding.is_fully_replicated)
  assert replicated < 0.05 * total, (replicated, total)  # norms, biases, counters only
  assert per_device <= total / 8 + replicated, (per_device, total)


@pytest.mark.parametrize(
    "sizes, message",
    [
        (dict(fsdp=3), "has 3 devices but 8"),
        (dict(fsdp=-1, tensor=3), "not divisible by the product 3"),
        (dict(fsdp=-1, context=-1), "At most one mesh axis may be -1"),
        (dict(pipeline=2), "Unknown mesh axes"),
    ],
)
def test_bad_mesh_sizes_are_rejected(sizes, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.make_mesh(sizes, jax.devices()[:8])


def test_dcn_mesh_needs_matching_slices():
  with pytest.raises(ValueError, match="asks for 3 slices"):
    mesh_lib.make_mesh(dict(fsdp=-1), jax.devices()[:8], dcn_sizes=dict(data=3))
  with pytest.raises(ValueError, match="no -1"):
    mesh_lib.make_mesh(dict(fsdp=-1), jax.devices()[:8], dcn_sizes=dict(data=-1))


@pytest.mark.parametrize("mode", mesh_attention.MODES)
def test_step_memory_falls_as_context_grows(mode):
  """XLA's per-device temporaries of a 1024-token step (benchmarks/ prints larger)."""
  temp = [step_temp_bytes(context, frames=16, size=16, mode=mode) for context in (1, 2, 4)]
  assert temp[1] < 0.7 * temp[0] and temp[2] < 0.7 * temp[1], temp


def test_dcn_mesh_puts_slices_outermost():
  """Two 4-device processes (GPU nodes): dcn data=2 makes each data row one node;
  dcn fsdp=2 splits fsdp with the node as its outer part."""

  @dataclasses.dataclass(frozen=True)
  class Device:
    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"

  devices = [Device(i, i // 4) for i in range(8)]
  grid = mesh_lib.device_grid(dict(fsdp=-1), devices, dict(data=2))
  assert grid.shape == (2, 4, 1, 1)
  assert [{d.process_index for d in row.ravel()} for row in grid] == [{0}, {1}]
  grid = mesh_lib.device_grid(dict(fsdp=2, tensor=2), devices, dict(fsdp=2))
  assert grid.shape == (1, 4, 1, 2)
  assert [[d.process_index for d in row] for row in grid[0, :, 0]] == [
      [0, 0],
      [0, 0],
      [1, 1],
      [1, 1],
  ]


@pytest.mark.parametrize(
    "implementation, mesh, mode, remat",
    [
        ("pallas_gpu", {}, "all_gather", "full"),
        ("pallas_gpu", dict(fsdp=2, context=2, tensor=2), "ring", "full"),
    ],
)
def test_dit_trains_with_the_pallas_kernels_like_xla(implementation, mesh, mode, remat):
  """The whole tiny DiT (self- and cross-attention, masks from text padding) through
  the Pallas kernels, run in interpret mode on CPU; on a mesh each device runs the
  kernel on its shard and the ring merges the kernel's log-sum-exps."""
  devices = jax.devices()[: max(1, int(np.prod(list(mesh.values()) or [1])))]
  state, metrics, *_ = two_steps(
      run_config(mesh, context_attention=mode), devices, implementation, remat
  )
  ref_params, ref_metrics = reference_step()
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-4)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-3)
  for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_dit_trains_with_the_tpu_kernel_like_xla():
  """pallas_tpu (TPU interpret mode) in the whole tiny DiT, off the mesh: gradients at
  init and the loss after one SGD step equal xla's. (The TPU interpreter runs kernels
  through host callbacks, which remat cannot replay: no remat here, as in the tiny
  configs; under shard_map the interpreter is too slow for the suite.)"""
  # Two examples: the interpreter runs every kernel grid cell on the host, its time
  # grows with the batch.
  batch = {k: v[:2] for k, v in make_batch().items()}
  config, rng = run_config({}), jax.random.key(1)
  results = {}
  for implementation in ("xla", "pallas_tpu"):
    task = DiTFlowTask(config, tiny_dit(attention_implementation=implementation, remat="none"))
    params = nn.meta.unbox(task.init(jax.random.key(0))[0])
    loss_and_grads = jax.jit(
        jax.value_and_grad(lambda p, task=task: task.loss(p, {}, batch, rng, 0)[0])
    )
    _, grads = loss_and_grads(params)
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    results[implementation] = (loss_and_grads(stepped)[0], grads)
  (loss, grads), (want_loss, want_grads) = results["pallas_tpu"], results["xla"]
  np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-3)
