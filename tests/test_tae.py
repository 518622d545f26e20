"""TAE shapes, length handling, images, and parameter annotations."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax.models.tae import TAE, frame_counts
from mgjax.models.tae_blocks import (
    depth_to_space,
    downsample_shortcut,
    space_to_depth,
    upsample_shortcut,
)
from tests.tiny_models import perturb, tiny_tae

H = W = 16


@pytest.fixture(scope="module", params=[False, True], ids=["paper", "shortcuts"])
def model_and_params(request):
  model = tiny_tae(residual_shortcuts=request.param)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, H, W, 3)))
  return model, perturb(variables, 0.05)


@pytest.mark.parametrize("num_frames", [1, 8, 17, 32, 80])
def test_encode_decode_shapes(model_and_params, num_frames):
  model, variables = model_and_params
  video = jax.random.uniform(jax.random.key(num_frames), (2, num_frames, H, W, 3), minval=-1)
  # Jitted: one program per length compiles faster than the model's ops one by one.
  mean, logvar = jax.jit(functools.partial(model.apply, method=TAE.encode))(variables, video)
  expected = (2, math.ceil(num_frames / 8), H // 8, W // 8, 8)
  assert mean.shape == expected and logvar.shape == expected
  decode = jax.jit(functools.partial(model.apply, method=TAE.decode), static_argnums=2)
  decoded = decode(variables, mean, num_frames)
  assert decoded.shape == video.shape
  assert bool(jnp.all(jnp.isfinite(decoded)))


@pytest.mark.parametrize("temporal,num_frames", [(True, 1), (True, 5), (True, 8), (False, 3)])
def test_space_to_depth_round_trips(temporal, num_frames):
  x = jax.random.normal(jax.random.key(0), (2, num_frames, 4, 6, 3))
  folded = space_to_depth(x, temporal)
  assert folded.shape == (
      2,
      -(-num_frames // 2) if temporal else num_frames,
      2,
      3,
      3 * (8 if temporal else 4),
  )
  np.testing.assert_array_equal(depth_to_space(folded, temporal, num_frames), x)


def test_shortcuts_pool_positions_and_mirror_each_other():
  """Down: each output channel averages one input channel over a block of positions.

  Up then repeats those averages back, so down(up(y)) == y exactly.
  """
  x = jax.random.normal(jax.random.key(1), (1, 4, 4, 4, 2))
  down = downsample_shortcut(x, out_channels=4, temporal=True)  # [1, 2, 2, 2, 4]
  # Channel 0 <- input channel 0, frame 0 of each pair, 2x2 spatial mean.
  np.testing.assert_allclose(down[0, 0, 0, 0, 0], x[0, 0, :2, :2, 0].mean(), rtol=1e-6)
  np.testing.assert_allclose(down[0, 0, 0, 0, 1], x[0, 1, :2, :2, 0].mean(), rtol=1e-6)
  y = jax.random.normal(jax.random.key(2), (1, 2, 2, 2, 4))
  up = upsample_shortcut(y, out_channels=2, temporal=True, num_frames=4)
  assert up.shape == (1, 4, 4, 4, 2)
  np.testing.assert_allclose(downsample_shortcut(up, 4, True), y, rtol=1e-6)


def test_frame_counts_follow_ceil_halving():
  assert frame_counts(17, (True, True, True)) == [17, 9, 5, 3]
  assert frame_counts(80, (True, False, True)) == [80, 40, 40, 20]


def test_image_is_a_one_frame_video(model_and_params):
  """A still encodes alone, and equals the first frame of a clip that holds it still."""
  model, variables = model_and_params
  image = jax.random.uniform(jax.random.key(3), (1, 1, H, W, 3), minval=-1)
  mean_image, _ = model.apply(variables, image, method=TAE.encode)
  still_clip = jnp.repeat(image, 8, axis=1)
  mean_clip, _ = model.apply(variables, still_clip, method=TAE.encode)
  # Replicate padding makes a static clip look like one frame to every temporal layer.
  np.testing.assert_allclose(mean_image, mean_clip, atol=2e-5)


def test_fresh_inflation_is_per_frame():
  """Identity temporal convs and zero temporal attention: frames do not interact."""
  model = tiny_tae()
  video = jax.random.uniform(jax.random.key(1), (1, 8, H, W, 3), minval=-1)
  variables = model.init(jax.random.key(0), video)
  out = model.apply(variables, video)[0]
  changed = video.at[:, 7].set(0.0)
  out_changed = model.apply(variables, changed)[0]
  # Every output frame comes from the one latent frame; the encoder's stride-2 convs
  # subsample frames, so only the frames it reads can matter. Frame 7 is never read.
  np.testing.assert_allclose(out, out_changed, atol=1e-6)


def test_sampling_uses_the_variance(model_and_params):
  model, variables = model_and_params
  video = jnp.zeros((1, 8, H, W, 3))
  _, mean, logvar, latent = model.apply(variables, video, rng=jax.random.key(0))
  assert not np.allclose(latent, mean)
  _, _, _, latent_mean = model.apply(variables, video)
  np.testing.assert_array_equal(latent_mean, mean)


def test_rejects_sizes_not_divisible_by_8(model_and_params):
  model, variables = model_and_params
  with pytest.raises(ValueError, match="divisible by 8.*12x16"):
    model.apply(variables, jnp.zeros((1, 8, 12, 16, 3)), method=TAE.encode)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    model.apply(variables, jnp.zeros((1, 16, 16, 3)), method=TAE.encode)


def test_decode_rejects_mismatched_length(model_and_params):
  model, variables = model_and_params
  with pytest.raises(ValueError, match="cannot decode to 40 frames"):
    model.apply(variables, jnp.zeros((1, 3, 2, 2, 8)), 40, method=TAE.decode)


def test_every_parameter_has_logical_axes():
  model = tiny_tae()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, H, W, 3)))
  leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape)


def test_paper_config_compresses_8x_with_16_channels():
  from experiments.tae import get_config
  from mgjax.tasks.tae import make_tae

  model = make_tae(get_config("paper").model)
  video = jax.ShapeDtypeStruct((1, 32, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), video)
  mean, _ = jax.eval_shape(lambda v, x: model.apply(v, x, method=TAE.encode), variables, video)
  assert mean.shape == (1, 4, 32, 32, 16)
  num_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables)))
  # An SD-style image VAE (~84M) plus a temporal conv after every conv.
  # 114.1M; exact, so a change to the architecture changes this figure knowingly.
  assert num_params == 114_062_049, num_params
