"""Audio DiT: frame-rate alignment, conditioning, null conditions, masked context,
scan/loop parity, annotations, the video feature encoder and the 13b size."""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax import configs, flow
from mgjax.configs import DEFAULT_LOGICAL_AXIS_RULES
from mgjax.models.audio_dit import (
    AudioDiT,
    align_video_features,
    num_params,
    video_positions,
    window_model_fn,
)
from mgjax.models.dit import loop_to_scan_params, scan_to_loop_params
from mgjax.models.video_features import VideoFeatureEncoder
from mgjax.parallel import mesh as mesh_lib
from mgjax.parallel import sharding as sharding_lib

C = 8  # latent channels
T = 25  # latent frames: 1 s at 25 Hz
TV = 16  # video frames: 1 s at 16 fps
FV = 12  # video feature width
TEXT_DIM = 24
ZERO_INIT = ("final", "final_adaln", "adaln_shared", "adaln_table")


def small_model(**overrides) -> AudioDiT:
  kwargs = dict(
      num_layers=2,
      embed_dim=32,
      mlp_dim=64,
      num_heads=2,
      max_frames=40,
      latent_rate=25.0,
      video_fps=16.0,
  )
  kwargs.update(overrides)
  return AudioDiT(**kwargs)


def inputs(b=2, seed=0):
  """(x, t, context, mask, video, text, text_mask): the first example has its first
  10 frames as context and its last 2 text tokens masked out."""
  k = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(k[0], (b, T, C))
  t = jax.random.uniform(k[1], (b,))
  context = jax.random.normal(k[2], (b, T, C))
  mask = jnp.zeros((b, T, 1)).at[0, :10].set(1.0)
  video = jax.random.normal(k[3], (b, TV, FV))
  text = jax.random.normal(k[4], (b, 5, TEXT_DIM))
  text_mask = jnp.ones((b, 5), bool).at[0, 3:].set(False)
  return x, t, context, mask, video, text, text_mask


def keep_all(b=2):
  return dict(keep_video=jnp.ones(b, bool), keep_text=jnp.ones(b, bool))


def perturb_zero_init(params, seed=1, scale=0.3):
  """Fresh params with every zero-initialised layer (output layer, modulation) given
  random values: the one perturbation that makes each input visible at the output."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = {getattr(p, "key", None) for p in path}
    if names & set(ZERO_INIT):
      return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(draw, params)


@pytest.fixture(scope="module")
def model_and_params():
  """(model, real init params, perturbed params, jitted apply) shared by the tests,
  so the apply compiles once per input shape."""
  model = small_model()
  x, t, context, mask, video, text, text_mask = inputs()
  params = nn.meta.unbox(
      jax.jit(model.init)(
          jax.random.key(0), x, t, context, mask, video, text, text_mask, **keep_all()
      )
  )
  return model, params, perturb_zero_init(params), jax.jit(model.apply)


# ------------------------------------------------------------------ alignment


def test_video_features_at_16fps_resample_to_25hz():
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.standard_normal((2, 32, 3)), jnp.float32)  # 2 s at 16 fps
  out = np.asarray(align_video_features(features, 16.0, 25.0, 50))  # 2 s at 25 Hz
  assert out.shape == (2, 50, 3)
  # Both grids meet every second: latent frame 25 k is video frame 16 k, exactly.
  np.testing.assert_array_equal(out[:, 0], features[:, 0])
  np.testing.assert_array_equal(out[:, 25], features[:, 16])
  # In between: latent frame 1 (0.04 s) is 0.64 of the way from video frame 0 to 1.
  np.testing.assert_allclose(
      out[:, 1], 0.36 * features[:, 0] + 0.64 * features[:, 1], rtol=1e-6, atol=1e-6
  )
  # A feature linear in time comes out linear in time, at the latent frames' times.
  seconds_video = np.arange(32) / 16.0
  ramp = jnp.asarray(np.stack([3.0 * seconds_video - 1.0] * 3, -1)[None], jnp.float32)
  resampled = np.asarray(align_video_features(ramp, 16.0, 25.0, 48))[0, :, 0]
  np.testing.assert_allclose(resampled, 3.0 * np.arange(48) / 25.0 - 1.0, atol=1e-5)
  # Audio past the last video frame (up to one frame) holds the last frame.
  np.testing.assert_array_equal(out[:, 49], features[:, 31])
  assert video_positions(50, 16.0, 25.0, 32)[-1] == 31.0
  # Equal rates pass features through.
  np.testing.assert_array_equal(align_video_features(features, 25.0, 25.0, 32), features)


def test_video_shorter_than_audio_is_rejected():
  with pytest.raises(ValueError, match="outlast 16 video frames"):
    video_positions(50, 16.0, 25.0, 16)  # 2 s of audio, 1 s of video


# ------------------------------------------------------------------ the model


def test_zero_output_at_init_and_final_layer_gradient(model_and_params):
  model, params, _, apply = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  out = apply(params, x, t, context, mask, video, text, text_mask, **keep_all())
  assert out.shape == (2, T, C) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)

  def loss(p):
    v = model.apply({"params": p}, x, t, context, mask, video, text, text_mask)
    return jnp.mean((v - 1.0) ** 2)

  grads = jax.jit(jax.grad(loss))(params["params"])
  assert float(jnp.abs(grads["final"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["adaln_shared"]["kernel"]).max()) == 0  # behind zero gates


def _changed(a, b):
  return np.asarray(jnp.abs(a - b).max(axis=(1, 2)))  # per example


def test_every_condition_reaches_the_output(model_and_params):
  _, _, params, apply = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  run = lambda **kw: apply(
      params,
      *[
          kw.get(n, v)
          for n, v in zip(
              ("x", "t", "context", "mask", "video", "text", "text_mask"),
              (x, t, context, mask, video, text, text_mask),
          )
      ],
      **keep_all(),
  )
  base = run()
  assert float(jnp.abs(base).max()) > 1e-2
  assert np.all(_changed(run(video=video + 1.0), base) > 1e-3)
  assert np.all(_changed(run(text=text + 1.0), base) > 1e-3)
  assert np.all(_changed(run(t=1.0 - t), base) > 1e-3)
  # Context reaches the output where it is given (example 0's first 10 frames).
  assert _changed(run(context=context + 1.0), base)[0] > 1e-3
  # The mask itself is an input: marking frames as given changes the output.
  assert np.all(_changed(run(mask=jnp.ones_like(mask)), base) > 1e-3)


def test_dropped_conditions_do_not_reach_the_output(model_and_params):
  _, _, params, apply = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  keep = jnp.array([True, False])  # example 1 loses its condition
  for name in ("keep_video", "keep_text"):
    flags = {**keep_all(), name: keep}
    base = apply(params, x, t, context, mask, video, text, text_mask, **flags)
    other = (video * -3.0 + 2.0, text) if name == "keep_video" else (video, text * -3.0 + 2.0)
    changed = apply(params, x, t, context, mask, *other, text_mask, **flags)
    np.testing.assert_array_equal(changed[1], base[1])  # dropped: not a bit of difference
    assert _changed(changed, base)[0] > 1e-3  # kept: still conditioned
  # Dropping text is the same as giving no valid text token at all.
  none_valid = jnp.zeros_like(text_mask)
  dropped = apply(
      params,
      x,
      t,
      context,
      mask,
      video,
      text,
      text_mask,
      keep_video=jnp.ones(2, bool),
      keep_text=jnp.zeros(2, bool),
  )
  np.testing.assert_array_equal(
      dropped, apply(params, x, t, context, mask, video, text, none_valid, **keep_all())
  )


def test_masked_context_frames_do_not_leak(model_and_params):
  _, _, params, apply = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  base = apply(params, x, t, context, mask, video, text, text_mask, **keep_all())
  garbage = jax.random.normal(jax.random.key(7), context.shape) * 100
  leaked = jnp.where(mask > 0, context, garbage)  # only frames with mask 0 differ
  np.testing.assert_array_equal(
      apply(params, x, t, leaked, mask, video, text, text_mask, **keep_all()), base
  )
  # No context at all equals a context that is masked out everywhere.
  no_mask = jnp.zeros_like(mask)
  np.testing.assert_array_equal(
      apply(params, x, t, None, None, video, text, text_mask, **keep_all()),
      apply(params, x, t, garbage, no_mask, video, text, text_mask, **keep_all()),
  )


def test_scan_with_remat_equals_loop():
  scanned = small_model(
      scan_layers=True, remat_policy="save_qkv_proj", modulate_cross_attention=False
  )
  looped = small_model(scan_layers=False, modulate_cross_attention=False)
  args = inputs()
  rng = np.random.default_rng(3)
  abstract = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), *args))
  params = jax.tree.map(
      lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), abstract
  )["params"]
  loop_params = scan_to_loop_params(params, 2)
  fresh = jax.eval_shape(looped.init, jax.random.key(0), *args)["params"]
  assert jax.tree.structure(nn.meta.unbox(fresh)) == jax.tree.structure(loop_params)
  jax.tree.map(np.testing.assert_array_equal, loop_to_scan_params(loop_params, 2), params)
  out_scan = jax.jit(scanned.apply)({"params": params}, *args)
  out_loop = jax.jit(looped.apply)({"params": loop_params}, *args)
  assert float(jnp.abs(out_scan).max()) > 1e-2
  np.testing.assert_allclose(out_loop, out_scan, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_param_has_logical_axes(scan_layers):
  model = small_model(scan_layers=scan_layers)
  params = jax.eval_shape(model.init, jax.random.key(0), *inputs())["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) > 20
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape), leaf
  if scan_layers:
    assert params["layers"]["mlp"]["up"]["kernel"].names == ("layers", "embed", "mlp")
    assert params["layers"]["adaln_table"].value.shape == (2, 9, 32)


def test_shards_and_runs_under_default_rules(model_and_params):
  """Params get mesh shardings and the activation constraints hold on a 2x2x2 mesh."""
  model, _, params, apply = model_and_params
  args = inputs()
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=2, context=2, tensor=2), jax.devices()[:8])
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_LOGICAL_AXIS_RULES):
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args, **keep_all())
  shardings = sharding_lib.logical_to_shardings(abstract, mesh, DEFAULT_LOGICAL_AXIS_RULES)
  layers = shardings["params"]["layers"]
  assert tuple(layers["mlp"]["up"]["kernel"].spec) == (None, "fsdp", "tensor")
  assert tuple(layers["cross_attention"]["query"]["kernel"].spec) == (None, "fsdp", "tensor", None)
  x = jnp.zeros((2, 24, C))  # 24 frames: divisible by the context axis
  video, text, text_mask = args[4], args[5], args[6]
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_LOGICAL_AXIS_RULES):
    sharded = jax.device_put(params, shardings)
    out = jax.jit(model.apply)(sharded, x, args[1], None, None, video, text, text_mask)
  np.testing.assert_allclose(
      out, apply(params, x, args[1], None, None, video, text, text_mask), rtol=1e-4, atol=1e-5
  )
  assert float(jnp.abs(out).max()) > 1e-2


def test_bad_inputs_raise_clear_errors(model_and_params):
  model, params, _, _ = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  shape = lambda *a, **kw: jax.eval_shape(model.apply, params, *a, **kw)
  long_x = jnp.zeros((2, 41, C))
  with pytest.raises(ValueError, match="max_frames 40.*audio_longform"):
    shape(long_x, t, None, None, jnp.zeros((2, 30, FV)), text, text_mask)
  with pytest.raises(ValueError, match="context_mask must be"):
    shape(x, t, context, mask[:, :5], video, text, text_mask)
  with pytest.raises(ValueError, match="video_features=None"):
    shape(x, t, context, mask, None, text, text_mask)
  with pytest.raises(ValueError, match="keep_video must be bool"):
    shape(x, t, context, mask, video, text, text_mask, keep_video=jnp.ones(3, bool))


def test_guided_window_model_is_the_cfg_formula(model_and_params):
  model, _, params, apply = model_and_params
  x, t, context, mask, video, text, text_mask = inputs()
  aligned = {"video": align_video_features(video, 16.0, 25.0, T)}
  # Text as TextConditioner.embed gives it: {encoder: (emb, mask)}; "text" is the
  # name a single array gets, so the parameters are the same.
  per_example = {"text": {"text": (text, text_mask)}}
  cond = apply(params, x, t, context, mask, video, text, text_mask, **keep_all())
  uncond = apply(
      params,
      x,
      t,
      context,
      mask,
      video,
      text,
      text_mask,
      keep_video=jnp.zeros(2, bool),
      keep_text=jnp.zeros(2, bool),
  )
  guided = jax.jit(flow.cfg_velocity_fn(window_model_fn(model), 3.0, 4))(
      x, t, context, mask, aligned, per_example, params
  )
  np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)
  plain = flow.cfg_velocity_fn(window_model_fn(model), 1.0, 4)(
      x, t, context, mask, aligned, per_example, params
  )
  np.testing.assert_allclose(plain, cond, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(cond - uncond).max()) > 1e-2  # the two halves differ


# ------------------------------------------------------------ video features


def test_video_feature_encoder_per_frame_and_frozen():
  encoder = VideoFeatureEncoder(features=FV, channels=(8, 16), num_groups=4)
  frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3)), jnp.uint8)
  params = jax.jit(encoder.init)(jax.random.key(0), frames)
  apply = jax.jit(encoder.apply)
  out = apply(params, frames)
  assert out.shape == (2, 3, FV) and out.dtype == jnp.float32
  # Frames are encoded on their own: changing frame 1 changes only feature 1.
  changed = apply(params, frames.at[:, 1].set(255 - frames[:, 1]))
  np.testing.assert_array_equal(changed[:, [0, 2]], out[:, [0, 2]])
  assert float(jnp.abs(changed[:, 1] - out[:, 1]).max()) > 1e-3
  # uint8 [0, 255] and float [-1, 1] frames are the same input.
  as_float = frames.astype(jnp.float32) / 127.5 - 1.0
  np.testing.assert_allclose(apply(params, as_float), out, rtol=1e-5, atol=1e-5)

  def grad_norm(module):
    loss = lambda p: jnp.sum(module.apply(p, as_float) ** 2)
    return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(params)))

  assert grad_norm(encoder) > 0
  assert grad_norm(encoder.clone(trainable=False)) == 0
  with pytest.raises(ValueError, match="RGB frames"):
    encoder.init(jax.random.key(0), frames[..., :1])


def test_flatten_pooling_keeps_where_a_shape_is():
  """A square moved within a plain frame: "flatten" features tell the places apart,
  "mean" ones (position-free but for the zero padding at the edges) much less."""
  frames = np.zeros((1, 2, 16, 16, 3), np.uint8)
  frames[0, 0, 2:6, 2:6] = 255  # upper left
  frames[0, 1, 6:10, 6:10] = 255  # the middle
  frames = jnp.asarray(frames)
  gap = {}
  for pooling in ("mean", "flatten"):
    encoder = VideoFeatureEncoder(features=FV, channels=(8, 16), num_groups=4, pooling=pooling)
    params = encoder.init(jax.random.key(0), frames)
    out = np.asarray(encoder.apply(params, frames))[0]  # [2, FV], layer-normed
    gap[pooling] = float(np.abs(out[0] - out[1]).mean())
  assert gap["flatten"] > 2 * gap["mean"], gap
  with pytest.raises(ValueError, match="pooling='max'"):
    VideoFeatureEncoder.from_config({"pooling": "max"})


def test_temporal_kernel_sees_the_neighbour_frames_only():
  """temporal_kernel=3: a frame's feature depends on it and the frames either side,
  and at init (zero kernel) it is the per-frame feature."""
  frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 5, 16, 16, 3)), jnp.uint8)
  encoder = VideoFeatureEncoder(features=FV, channels=(8, 16), num_groups=4, temporal_kernel=3)
  params = encoder.init(jax.random.key(0), frames)
  per_frame = encoder.clone(temporal_kernel=0)
  plain = {"params": {k: v for k, v in params["params"].items() if k != "temporal"}}
  np.testing.assert_allclose(
      encoder.apply(params, frames), per_frame.apply(plain, frames), atol=1e-6
  )
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  change = np.abs(
      np.asarray(encoder.apply(params, frames.at[:, 2].set(0)) - encoder.apply(params, frames))
  ).max(
      axis=(0, 2)
  )  # [5]
  assert change[0] == 0 and change[4] == 0 and change[1:4].min() > 1e-3, change
  with pytest.raises(ValueError, match="temporal_kernel=2"):
    VideoFeatureEncoder.from_config({"temporal_kernel": 2})


# ------------------------------------------------------------------- configs


def test_13b_parameter_count_without_allocating():
  config = configs.load_config("experiments/audio.py:13b")
  model = AudioDiT.from_config(config.model)
  s = jax.ShapeDtypeStruct
  shapes = jax.eval_shape(
      model.init,
      jax.random.key(0),
      s((1, 250, 128), jnp.float32),
      s((1,), jnp.float32),
      s((1, 250, 128), jnp.float32),
      s((1, 250, 1), jnp.float32),
      s((1, 160, 1024), jnp.float32),
      s((1, 8, 4096), jnp.float32),
  )
  total = num_params(shapes)
  print(f"13b AudioDiT: {total:,} parameters (4096-wide T5, 1024-wide video features)")
  assert total == 12_515_521_664  # the figure in experiments/audio.py's docstring
  assert 12e9 <= total <= 14.5e9
  d, f = 4608, 18432
  layer = num_params(
      jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
          nn.meta.unbox(shapes["params"]["layers"]),
      )
  )
  # Self- and cross-attention, GELU MLP with biases, 4 QK-norms, the [9, D] table.
  assert layer == 8 * d * d + 2 * d * f + f + d + 4 * 128 + 9 * d
  assert model.num_layers * layer > 0.97 * total
  assert "12,515,521,664" in open("experiments/audio.py").read()


def test_configs_build_the_models():
  for size in ("tiny", "13b"):
    config = configs.load_config(f"experiments/audio.py:{size}")
    assert config.task == "audio"
    assert config.flow.sample_steps == 64 and config.flow.method == "midpoint"
    assert config.flow.cfg_scale == 3.0 and config.flow.sigma_min == 1e-5
    assert config.longform.method in ("multidiffusion", "autoregressive")
    assert config.longform.window_frames == round(
        config.longform.window_seconds * config.model.latent_rate
    )
    assert config.longform.window_frames <= config.model.max_frames
    assert list(config.text.encoders) == ["t5"] and config.text.encoders.t5.kind == "t5"
    VideoFeatureEncoder.from_config(config.video_encoder)
  big = configs.load_config("experiments/audio.py:13b").model
  assert (big.num_layers, big.embed_dim, big.mlp_dim, big.num_heads) == (36, 4608, 18432, 36)
  tiny = configs.load_config("experiments/audio.py:tiny")
  assert tiny.vae.train_config.endswith("experiments/audio_vae.py:tiny")
  assert tiny.text.encoders.t5.model.d_model == 64  # t2v's tiny UL2-shaped encoder
  model = AudioDiT.from_config(tiny.model)
  assert (model.num_layers, model.embed_dim, model.dtype) == (4, 128, jnp.float32)
  frames = tiny.model.max_frames
  x = jnp.zeros((1, frames, tiny.model.latent_channels))
  out = jax.eval_shape(
      model.init_with_output,
      jax.random.key(0),
      x,
      jnp.zeros(1),
      None,
      None,
      jnp.zeros((1, 32, tiny.video_encoder.features)),
      jnp.zeros((1, 4, 64)),
  )[0]
  assert out.shape == x.shape
  with pytest.raises(ValueError, match="tiny, 13b"):
    configs.load_config("experiments/audio.py:7b")


def test_tiny_config_matches_the_tiny_audio_vae():
  """The latents the tiny model reads are the ones the tiny VAE makes."""
  tiny = configs.load_config("experiments/audio.py:tiny")
  path = tiny.vae.train_config.partition(":")[0]
  if not os.path.exists(path):
    pytest.skip(f"{path} (the audio VAE config) is not in this checkout yet")
  vae = configs.load_config(tiny.vae.train_config).model
  assert vae.latent_channels == tiny.model.latent_channels
  assert vae.sample_rate == tiny.data.audio.sample_rate
  assert vae.sample_rate / math.prod(vae.strides) == tiny.model.latent_rate
