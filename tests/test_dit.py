"""Video DiT: sizes, token counts, conditioning, scan/loop parity, annotations, tables."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import t2v as t2v_config
from mgjax.configs import DEFAULT_LOGICAL_AXIS_RULES
from mgjax.models.dit import (
    VideoDiT,
    latent_shape,
    loop_to_scan_params,
    num_tokens,
    patchify,
    scan_to_loop_params,
    unpatchify,
)
from mgjax.models.dit_blocks import REMAT_POLICIES
from mgjax.models.positional import TABLE_AXES, interpolate_rows, resize_positional_tables
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib

C = 16  # latent channels
TEXT_DIM = 24


def small_dit(**overrides) -> VideoDiT:
  """Two layers, width 32, 2 heads: a few tens of thousands of parameters."""
  kwargs = dict(
      num_layers=2, embed_dim=32, mlp_dim=64, num_heads=2, max_frames=4, max_height=8, max_width=8
  )
  kwargs.update(overrides)
  return VideoDiT(**kwargs)


def inputs(b=2, t=3, h=6, w=10, text_len=5, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (b, t, h, w, C))
  times = jax.random.uniform(keys[1], (b,))
  text = jax.random.normal(keys[2], (b, text_len, TEXT_DIM))
  mask = jnp.arange(text_len)[None, :] < jnp.array([text_len - 2] + [text_len] * (b - 1))[:, None]
  return x, times, text, mask  # first example: last 2 text tokens masked out


def random_variables(model, *args, seed: int = 0, scale: float = 0.15):
  """Trained-like variables: no zero-initialised layer hides an input.

  Shapes come from `jax.eval_shape(model.init)`; values are NumPy noise (norm scales
  around 1), because compiling the real init costs seconds of CPU per model.
  """
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = scale * rng.standard_normal(leaf.shape)
    is_scale = getattr(path[-1], "key", None) == "scale"
    return jnp.asarray(noise + 1.0 if is_scale else noise, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.meta.unbox(tree)))


@pytest.fixture(scope="module")
def trained_like():
  """A small DiT with random params, so no zero-init layer hides an input.

  Returns (model, variables, jitted apply); tests share the jitted apply so each
  input shape compiles once.
  """
  model = small_dit()
  x, t, text, mask = inputs()
  variables = random_variables(model, x, t, text, mask)
  return model, variables, jax.jit(model.apply)


UL2_WIDTH = 4096  # the widest of the paper's text encoders


def abstract_init(model, text_dim):
  x = jax.ShapeDtypeStruct((1, 1, 2, 2, C), jnp.float32)
  return jax.eval_shape(
      model.init,
      jax.random.key(0),
      x,
      jax.ShapeDtypeStruct((1,), jnp.float32),
      jax.ShapeDtypeStruct((1, 1, text_dim), jnp.float32),
  )


def test_30b_parameter_count_without_allocating():
  config = t2v_config.get_config("30b").model
  shapes = abstract_init(VideoDiT.from_config(config), UL2_WIDTH)
  total = num_params(shapes)
  text_projection = num_params(shapes["params"]["text_projection_text"])
  print(
      f"30b VideoDiT: {total:,} parameters, including the {UL2_WIDTH}-wide text "
      f"projection ({text_projection:,})"
  )
  assert 28e9 <= total <= 31e9
  layer = num_params(
      jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
          nn.meta.unbox(shapes["params"]["layers"]),
      )
  )
  d, f = 6144, 16384
  # Self- and cross-attention, SwiGLU, 3 RMSNorms, 4 QK-norms, the adaLN table.
  assert layer == 8 * d * d + 3 * d * f + 3 * d + 4 * 128 + 6 * d


def test_token_count_of_a_768px_256_frame_video():
  assert latent_shape(256, 768, 768) == (32, 96, 96)
  assert num_tokens(256, 768, 768) == 73_728
  assert num_tokens(1, 256, 256) == 256  # an image: 1 latent frame of 16 x 16 patches
  assert num_tokens(17, 256, 256) == 3 * 256  # ceil(17 / 8) latent frames
  with pytest.raises(ValueError, match="770x768"):
    num_tokens(8, 770, 768)


def test_patchify_round_trips():
  x = np.random.default_rng(0).standard_normal((2, 3, 6, 10, 4))  # NumPy: no compiles
  tokens = patchify(x, (1, 2, 2))
  assert tokens.shape == (2, 3 * 3 * 5, 16)
  np.testing.assert_array_equal(tokens[0, 0], x[0, 0, :2, :2].reshape(-1))
  np.testing.assert_array_equal(unpatchify(tokens, (3, 3, 5), (1, 2, 2)), x)


@pytest.mark.parametrize("frames,h,w", [(1, 4, 4), (3, 6, 10)])
def test_forward_shape_and_finite(trained_like, frames, h, w):
  _, params, apply = trained_like
  x, t, text, mask = inputs(t=frames, h=h, w=w)
  out = apply(params, x, t, text, mask)
  assert out.shape == (2, frames, h, w, C) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.std(out)) > 0


def flow_loss_grad(model):
  """jit(grad) of a flow-style squared error to the inputs, returning (grads, output)."""
  x, t, text, mask = inputs()

  def loss(params):
    out = model.apply({"params": params}, x, t, text, mask)
    return jnp.sum((out - x) ** 2), out

  return jax.jit(jax.grad(loss, has_aux=True))


@pytest.fixture(scope="module")
def scanned_remat():
  """Scanned, remat'd small DiT and its loss gradient, shared so it compiles once."""
  model = small_dit(scan_layers=True, remat_policy="save_qkv_proj")
  return model, flow_loss_grad(model)


def test_zero_init_output_and_final_layer_gradient(scanned_remat):
  """The output starts at exactly 0, yet the final layer gets a gradient."""
  model, grad_fn = scanned_remat
  x, t, text, mask = inputs()
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x, t, text, mask)["params"])
  grads, out = grad_fn(params)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)
  assert float(jnp.abs(grads["final"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["final_adaln"]["kernel"]).max()) == 0  # behind a zero kernel


def test_tiny_config_builds_the_model():
  config = t2v_config.get_config("tiny").model
  model = VideoDiT.from_config(config)
  assert (model.num_layers, model.embed_dim, model.dtype) == (4, 128, jnp.float32)
  x = jnp.zeros((1, 2, 4, 6, config.latent_channels))
  text = jnp.zeros((1, 3, 64))
  out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x, jnp.zeros(1), text)
  assert out.shape == x.shape
  assert variables["params"]["layers"]["mlp"]["gate"]["kernel"].value.shape == (4, 128, 384)
  # out_channels decouples the output from extra conditioning input channels (editing).
  wide = jax.eval_shape(
      model.clone(out_channels=8).init_with_output,
      jax.random.key(0),
      jnp.zeros((1, 1, 4, 4, 2 * C)),
      jnp.zeros(1),
      text,
  )[0]
  assert wide.shape == (1, 1, 4, 4, 8)


def test_output_depends_on_text_and_time(trained_like):
  _, params, apply = trained_like
  x, t, text, mask = inputs()
  base = apply(params, x, t, text, mask)
  other_text = apply(params, x, t, text + 1.0, mask)
  other_time = apply(params, x, 1.0 - t, text, mask)
  for changed in (other_text, other_time):
    per_example = jnp.abs(changed - base).max(axis=(1, 2, 3, 4))
    assert bool(jnp.all(per_example > 1e-3))


def test_masked_text_tokens_have_no_effect(trained_like):
  _, params, apply = trained_like
  x, t, text, mask = inputs()
  garbage = jax.random.normal(jax.random.key(9), text.shape) * 100
  scrambled = jnp.where(mask[..., None], text, garbage)
  full = apply(params, x, t, text, mask)
  np.testing.assert_allclose(apply(params, x, t, scrambled, mask), full, rtol=0, atol=1e-6)
  # Dropping the masked tokens altogether gives the same result too.
  short = apply(params, x, t, text[:, :3], mask[:, :3])
  np.testing.assert_allclose(short[0], full[0], atol=1e-5)


def test_several_text_encoders_each_projected():
  model = small_dit()
  x, t, text, mask = inputs()
  clip = jax.random.normal(jax.random.key(3), (2, 4, 12))
  encoders = {"ul2": (text, mask), "clip": clip}
  params = random_variables(model, x, t, encoders)
  apply = jax.jit(model.apply)
  assert {"text_projection_clip", "text_projection_ul2"} <= set(params["params"])
  assert params["params"]["text_projection_clip"]["dense"]["kernel"].shape == (12, 32)
  out = apply(params, x, t, encoders)
  np.testing.assert_array_equal(out, apply(params, x, t, {"clip": clip, "ul2": (text, mask)}))
  assert (
      float(jnp.abs(out - apply(params, x, t, {"ul2": (text, mask), "clip": clip + 1})).max())
      > 1e-3
  )
  with pytest.raises(ValueError, match="text_mask"):
    model.apply(params, x, t, encoders, mask)


def scan_and_loop_params(scanned, looped):
  """Random scanned params and the same values mapped to the looped layout."""
  x, t, text, mask = inputs()
  params = random_variables(scanned, x, t, text, mask)["params"]
  loop_params = scan_to_loop_params(params, 2)
  assert set(loop_params) >= {"layers_0", "layers_1"} and "layers" not in loop_params
  # The mapped tree is exactly what the looped model initialises, and maps back.
  fresh = jax.eval_shape(looped.init, jax.random.key(1), x, t, text, mask)["params"]
  assert jax.tree.structure(nn.meta.unbox(fresh)) == jax.tree.structure(loop_params)
  jax.tree.map(np.testing.assert_array_equal, loop_to_scan_params(loop_params, 2), params)
  return params, loop_params


def test_scan_with_remat_equals_loop_with_gradients(scanned_remat):
  scanned, scanned_grad = scanned_remat
  looped = small_dit(scan_layers=False)
  params, loop_params = scan_and_loop_params(scanned, looped)
  grads_scan, out_scan = scanned_grad(params)
  grads_loop, out_loop = flow_loss_grad(looped)(loop_params)
  np.testing.assert_allclose(out_loop, out_scan, rtol=1e-5, atol=1e-4)
  assert float(jnp.abs(out_scan).max()) > 1e-2
  close = lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max())
  )
  jax.tree.map(close, scan_to_loop_params(grads_scan, 2), grads_loop)


def test_scan_equals_loop_with_per_block_modulation():
  scanned = small_dit(modulation="per_block", scan_layers=True, remat_policy="full")
  looped = small_dit(modulation="per_block", scan_layers=False)
  params, loop_params = scan_and_loop_params(scanned, looped)
  x, t, text, mask = inputs()
  out_scan = jax.jit(scanned.apply)({"params": params}, x, t, text, mask)
  out_loop = jax.jit(looped.apply)({"params": loop_params}, x, t, text, mask)
  np.testing.assert_allclose(out_loop, out_scan, rtol=1e-5, atol=1e-4)
  assert float(jnp.abs(out_scan).max()) > 1e-2


def test_unknown_remat_policy_is_rejected():
  x, t, text, mask = inputs()
  with pytest.raises(ValueError, match="save_qkv_proj"):
    jax.eval_shape(small_dit(remat_policy="some").init, jax.random.key(0), x, t, text, mask)
  assert {"none", "full", "save_dots", "save_qkv_proj"} <= set(REMAT_POLICIES)


@pytest.mark.parametrize("scan_layers,modulation", [(True, "shared"), (False, "per_block")])
def test_every_param_has_logical_axes(scan_layers, modulation):
  model = small_dit(scan_layers=scan_layers, modulation=modulation)
  x, t, text, mask = inputs()
  params = jax.eval_shape(model.init, jax.random.key(0), x, t, text, mask)["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) > 20
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape), leaf
  if scan_layers:
    assert params["layers"]["self_attention"]["query"]["kernel"].names == (
        "layers",
        "embed",
        "heads",
        "kv",
    )


def test_shards_and_runs_under_default_rules(trained_like):
  """Init traces, params get mesh shardings and activation constraints hold on 2x2x2."""
  model, variables, apply = trained_like
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=2, context=2, tensor=2), jax.devices()[:8])
  x, t, text, mask = inputs()
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_LOGICAL_AXIS_RULES):
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, text, mask)
  shardings = sharding_lib.logical_to_shardings(abstract, mesh, DEFAULT_LOGICAL_AXIS_RULES)
  layers = shardings["params"]["layers"]
  assert tuple(layers["mlp"]["gate"]["kernel"].spec) == (None, "fsdp", "tensor")
  assert tuple(layers["self_attention"]["query"]["kernel"].spec) == (None, "fsdp", "tensor", None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_LOGICAL_AXIS_RULES):
    sharded = jax.device_put(variables, shardings)
    out = jax.jit(model.apply)(sharded, x, t, text, mask)
  np.testing.assert_allclose(out, apply(variables, x, t, text, mask), rtol=1e-4, atol=1e-5)


def test_bad_sizes_raise_clear_errors(trained_like):
  model, variables, _ = trained_like
  _, t, text, mask = inputs()
  apply = lambda x: jax.eval_shape(model.apply, variables, x, t, text, mask)
  with pytest.raises(ValueError, match=r"\(2, 3, 7, 10, 16\).*\(1, 2, 2\)"):
    apply(jnp.zeros((2, 3, 7, 10, C)))
  with pytest.raises(ValueError, match="height 9 > max_height 8"):
    apply(jnp.zeros((2, 3, 18, 10, C)))
  with pytest.raises(ValueError, match="frames 5 > max_frames 4"):
    apply(jnp.zeros((2, 5, 6, 10, C)))


def test_interpolation_keeps_ends_and_matching_rows():
  table = jax.random.normal(jax.random.key(0), (16, 8))
  grown = interpolate_rows(table, 48)  # 256px -> 768px: every old cell becomes 3
  assert grown.shape == (48, 8)
  np.testing.assert_allclose(grown[0], table[0], rtol=1e-6)
  np.testing.assert_allclose(grown[-1], table[-1], rtol=1e-6)
  np.testing.assert_allclose(grown[1::3], table, rtol=1e-6)  # cell centres coincide
  # In between, values are convex blends of their neighbours.
  np.testing.assert_allclose(grown[2], (2 * table[0] + table[1]) / 3, rtol=1e-5, atol=1e-6)
  odd = interpolate_rows(table, 23)  # a non-integer factor keeps the ends too
  np.testing.assert_allclose(odd[0], table[0], rtol=1e-6)
  np.testing.assert_allclose(odd[-1], table[-1], rtol=1e-6)
  np.testing.assert_array_equal(interpolate_rows(table, 16), table)
  with pytest.raises(ValueError, match="only grows"):
    interpolate_rows(table, 8)


def test_resized_tables_run_a_larger_model(trained_like):
  model, variables, _ = trained_like
  bigger = model.clone(max_height=24, max_width=16)
  resized = resize_positional_tables(variables, {"height": 24, "width": 16})
  tables = resized["params"]["pos_embed"]
  assert tables["height"].shape == (24, 32) and tables["width"].shape == (16, 32)
  np.testing.assert_array_equal(tables["frames"], variables["params"]["pos_embed"]["frames"])
  np.testing.assert_allclose(
      tables["height"][1::3], variables["params"]["pos_embed"]["height"], rtol=1e-6
  )
  x, t, text, mask = inputs(h=40, w=30)  # 20 x 15 patches: too big for the old tables
  out = jax.jit(bigger.apply)(resized, x, t, text, mask)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # Boxed params keep their logical names through the resize.
  boxed = {
      "params": {
          "pos_embed": {
              name: nn.LogicallyPartitioned(table, TABLE_AXES[name])
              for name, table in variables["params"]["pos_embed"].items()
          }
      }
  }
  grown = resize_positional_tables(boxed, (6, 8, 8))["params"]["pos_embed"]["frames"]
  assert isinstance(grown, nn.LogicallyPartitioned) and grown.names == ("pos_t", "embed")
  assert grown.value.shape == (6, 32)


def test_configs():
  for size in t2v_config.SIZES:
    config = t2v_config.get_config(size)
    assert config.task == "t2v" and config.model.latent_channels == 16
    assert config.model.embed_dim % config.model.num_heads == 0
    assert config.flow.sigma_min == 1e-5 and config.flow.cfg_scale == 7.5
  big = t2v_config.get_config("30b").model
  assert (big.num_layers, big.embed_dim, big.mlp_dim, big.num_heads) == (48, 6144, 16384, 48)
  with pytest.raises(ValueError, match="tiny, 1b, 5b, 30b"):
    t2v_config.get_config("7b")
  assert "python -m mgjax.train --config=experiments/t2v.py:tiny" in t2v_config.__doc__
