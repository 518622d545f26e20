"""Checks for the autoencoder's optional auxiliary losses: adversarial (PatchGAN) and perceptual."""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from mgjax.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss
from mgjax.models.perceptual import PerceptualNetwork, perceptual_distance
from mgjax.tasks.perceptual_weights import load_perceptual_params, save_perceptual_params

SMALL_DISCRIMINATOR = dict(channels=(8, 16), norm_groups=4)
SMALL_PERCEPTUAL = dict(stage_channels=(8, 16, 16))
VIDEO_SHAPE = (2, 2, 16, 16, 3)  # [B, T, H, W, C]

# Compiling random initialisers and eager ops is slow on CPU, so test data comes
# from numpy, networks are initialised and applied under jit, and parameters are
# shared where possible: the discriminator's parameter shapes depend on neither
# the clip length nor the temporal strides.


def smooth_videos(seed, shape=VIDEO_SHAPE):
  """Low-frequency content in [-1, 1] built in numpy: a stand-in for real frames."""
  rng = np.random.default_rng(seed)
  *lead, height, width, channels = shape
  coarse = rng.uniform(-1, 1, size=(*lead, 4, 4, channels))
  upsampled = coarse.repeat(height // 4, axis=-3).repeat(width // 4, axis=-2)
  smooth = ndimage.uniform_filter(upsampled, size=(1,) * len(lead) + (3, 3, 1), mode="nearest")
  return jnp.asarray(smooth, jnp.float32)


def gaussian_noise(seed, shape=VIDEO_SHAPE):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------- discriminator


@pytest.fixture(scope="module")
def discriminator_params():
  disc = PatchDiscriminator3D(**SMALL_DISCRIMINATOR)
  return jax.jit(disc.init)(jax.random.key(1), jnp.zeros((1, 1, 16, 16, 3)))["params"]


@pytest.mark.parametrize(
    "frames, temporal_strides, expected_shape",
    [
        (1, None, (2, 1, 4, 4, 1)),
        (1, (2, 2), (2, 1, 4, 4, 1)),
        (8, None, (2, 8, 4, 4, 1)),
        (8, (2, 1), (2, 4, 4, 4, 1)),
        (8, (2, 2), (2, 2, 4, 4, 1)),
    ],
)
def test_discriminator_output_shape(discriminator_params, frames, temporal_strides, expected_shape):
  disc = PatchDiscriminator3D(temporal_strides=temporal_strides, **SMALL_DISCRIMINATOR)
  video = smooth_videos(0, (2, frames, 16, 16, 3))
  logits = disc.apply({"params": discriminator_params}, video)
  assert logits.shape == expected_shape
  assert np.all(np.isfinite(np.asarray(logits)))


def test_discriminator_params_are_logically_partitioned(discriminator_params):
  params = discriminator_params
  assert params["down_0"]["kernel"].names == (None, None, None, "conv_in", "conv_out")
  assert params["down_0"]["bias"].names == ("conv_out",)
  assert params["down_1_norm"]["scale"].names == ("norm",)
  assert params["logits"]["kernel"].value.shape == (3, 4, 4, 32, 1)


def test_discriminator_without_norm_and_config_errors():
  video = jnp.zeros((1, 2, 16, 16, 3))
  key = jax.random.key(0)
  disc = PatchDiscriminator3D(channels=(8, 16), norm_groups=None)
  params = jax.eval_shape(disc.init, key, video)["params"]
  assert not any("norm" in name for name in params)
  with pytest.raises(ValueError, match="temporal_strides"):
    jax.eval_shape(
        PatchDiscriminator3D(channels=(8, 16), temporal_strides=(2,), norm_groups=None).init,
        key,
        video,
    )
  with pytest.raises(ValueError, match="norm_groups"):
    jax.eval_shape(PatchDiscriminator3D(channels=(8, 12), norm_groups=8).init, key, video)


def test_hinge_losses_on_hand_made_logits():
  real = jnp.full((2, 1, 3, 3, 1), 2.0)
  fake = jnp.full((2, 1, 3, 3, 1), -2.0)
  assert float(hinge_d_loss(real, fake)) == 0.0
  assert float(hinge_d_loss(jnp.zeros(4), jnp.zeros(4))) == 1.0
  # real at 0.5 -> relu(0.5) = 0.5; fake at 0.0 -> relu(1.0) = 1.0; average 0.75.
  assert float(hinge_d_loss(jnp.full(4, 0.5), jnp.zeros(4))) == pytest.approx(0.75)
  # Fully wrong: real -1 -> 2, fake +3 -> 4; average 3.
  assert float(hinge_d_loss(jnp.full(4, -1.0), jnp.full(4, 3.0))) == pytest.approx(3.0)
  assert float(hinge_g_loss(jnp.array([1.0, -3.0]))) == pytest.approx(1.0)
  assert float(hinge_g_loss(fake)) == pytest.approx(2.0)


def test_discriminator_training_lowers_d_loss(discriminator_params):
  disc = PatchDiscriminator3D(temporal_strides=(2, 1), **SMALL_DISCRIMINATOR)
  real = smooth_videos(0, (4, 4, 16, 16, 3))
  fake = jnp.clip(gaussian_noise(1, real.shape), -1, 1)
  params = discriminator_params
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  def d_loss(p):
    return hinge_d_loss(disc.apply({"params": p}, real), disc.apply({"params": p}, fake))

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(d_loss)(p)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  losses = []
  for _ in range(6):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))  # loss before this step's update
  initial, final = losses[0], losses[-1]
  assert np.isfinite(final)
  assert final < initial - 0.05, (initial, final)


# ---------------------------------------------------------------- perceptual


class Perceptual(NamedTuple):
  net: PerceptualNetwork
  init: Callable
  params: Any
  distance: Callable  # jitted perceptual_distance(net, params, x, y)


@pytest.fixture(scope="module")
def perceptual():
  net = PerceptualNetwork(**SMALL_PERCEPTUAL)
  frames = jnp.zeros((1, 16, 16, 3))
  init = jax.jit(lambda key: net.init(key, frames, frames)["params"])
  distance = jax.jit(lambda params, x, y: perceptual_distance(net, params, x, y))
  return Perceptual(net, init, init(jax.random.key(0)), distance)


def test_perceptual_distance_zero_for_identical_inputs(perceptual):
  x = smooth_videos(1)
  distance = perceptual.distance(perceptual.params, x, x)
  assert distance.shape == (2,)
  np.testing.assert_allclose(np.asarray(distance), 0.0, atol=1e-7)


def test_perceptual_distance_positive_and_grows_with_noise(perceptual):
  x = smooth_videos(2)
  noise = gaussian_noise(3)
  distances = [
      np.asarray(perceptual.distance(perceptual.params, x, jnp.clip(x + sigma * noise, -1, 1)))
      for sigma in (0.05, 0.2, 0.5)
  ]
  assert np.all(distances[0] > 0)
  assert np.all(distances[1] > distances[0]) and np.all(distances[2] > distances[1]), distances


def test_perceptual_distance_accepts_apply_fn_images_and_averages_frames(perceptual):
  x, y = smooth_videos(4), smooth_videos(5)
  video = np.asarray(perceptual.distance(perceptual.params, x, y))
  # Images [B, H, W, C] through the apply function instead of the module.
  per_frame = [
      np.asarray(perceptual_distance(perceptual.net.apply, perceptual.params, x[:, t], y[:, t]))
      for t in range(2)
  ]
  np.testing.assert_allclose(video, np.mean(per_frame, axis=0), rtol=1e-5)


def test_perceptual_distance_gradients_finite(perceptual):
  net, params = perceptual.net, perceptual.params
  x, y = smooth_videos(6), smooth_videos(7)
  grad_fn = jax.jit(
      jax.grad(lambda a, b: perceptual_distance(net, params, a, b).sum(), argnums=(0, 1))
  )
  grad_x, grad_y = grad_fn(x, y)
  assert np.all(np.isfinite(np.asarray(grad_x))) and np.all(np.isfinite(np.asarray(grad_y)))
  assert float(jnp.abs(grad_x).sum()) > 0
  # At x == y the distance is at its minimum; the gradient must still be finite.
  grad_same, _ = grad_fn(y, y)
  assert np.all(np.isfinite(np.asarray(grad_same)))


def test_perceptual_without_linear_weights_equals_ones_weights(perceptual):
  plain = PerceptualNetwork(use_linear_weights=False, **SMALL_PERCEPTUAL)
  plain_params = {
      name: value for name, value in perceptual.params.items() if not name.startswith("lin_")
  }
  x, y = smooth_videos(8), smooth_videos(9)
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda p: perceptual_distance(plain, p, x, y))(plain_params)),
      np.asarray(perceptual.distance(perceptual.params, x, y)),
      rtol=1e-5,
  )


def test_perceptual_params_npz_round_trip(perceptual, tmp_path):
  params = perceptual.params
  path = tmp_path / "perceptual.npz"
  save_perceptual_params(str(path), params)
  with np.load(path) as archive:
    assert "stage_0/conv/kernel" in archive.files and "lin_2/kernel" in archive.files

  fresh = perceptual.init(jax.random.key(99))
  loaded = load_perceptual_params(str(path), template=fresh)
  original = nn.meta.unbox(params)
  assert jax.tree.structure(loaded) == jax.tree.structure(original)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(original)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  x = smooth_videos(10)
  np.testing.assert_array_equal(
      np.asarray(perceptual.distance(loaded, x, -x)), np.asarray(perceptual.distance(params, x, -x))
  )


def test_default_template_loads_default_network(tmp_path):
  net = PerceptualNetwork()
  frames = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  shapes = nn.meta.unbox(jax.eval_shape(net.init, jax.random.key(0), frames, frames)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  path = tmp_path / "default.npz"
  save_perceptual_params(str(path), params)
  loaded = load_perceptual_params(str(path))
  np.testing.assert_array_equal(
      np.asarray(loaded["stage_1"]["conv"]["kernel"]), params["stage_1"]["conv"]["kernel"]
  )


def test_perceptual_load_reports_missing_key_and_shape_mismatch(perceptual, tmp_path):
  flat = {
      "stage_0/conv/kernel": np.zeros((3, 3, 3, 8), np.float32),
      "stage_0/conv/bias": np.zeros((7,), np.float32),  # wrong shape
      "stage_9/conv/kernel": np.zeros((1,), np.float32),  # not in the network
  }
  path = tmp_path / "broken.npz"
  np.savez(path, **flat)
  with pytest.raises(ValueError) as excinfo:
    load_perceptual_params(str(path), template=perceptual.params)
  message = str(excinfo.value)
  assert str(path) in message
  assert (
      "missing keys" in message and "stage_1/conv/kernel" in message and "lin_0/kernel" in message
  )
  assert "unexpected keys" in message and "stage_9/conv/kernel" in message
  assert "stage_0/conv/bias" in message and "(7,)" in message and "(8,)" in message
