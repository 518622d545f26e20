"""Tiled TAE encode/decode against the untiled model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax.models.tae import TAE
from mgjax.models.tae_tiling import blend_weights, tile_starts, tiled_decode, tiled_encode
from tests.tiny_models import perturb, tiny_tae

NUM_FRAMES = 80


@pytest.fixture(scope="module")
def setup():
  model = tiny_tae()
  video = jax.random.uniform(jax.random.key(1), (1, NUM_FRAMES, 16, 16, 3), minval=-1)
  fresh = model.init(jax.random.key(0), video[:, :8])
  return model, video, fresh


def coders(model, variables):
  encode = jax.jit(lambda x: model.apply(variables, x, method=TAE.encode)[0])
  decode = jax.jit(lambda z: model.apply(variables, z, method=TAE.decode))
  return encode, decode


def frame_jumps(video):
  """Mean |frame t+1 - frame t| for each t: [T - 1]."""
  return np.asarray(jnp.abs(jnp.diff(video, axis=1)).mean(axis=(0, 2, 3, 4)))


def test_tile_layout():
  assert tile_starts(10, 4, 2) == [0, 2, 4, 6]
  assert tile_starts(11, 4, 2) == [0, 2, 4, 6, 7]
  assert tile_starts(3, 4, 2) == [0]
  weights = blend_weights(32, 16, first=False, last=False)
  np.testing.assert_allclose(weights[:16] + weights[16:], 1.0)  # ramps cross-fade to 1


def test_frame_local_decoder_tiles_exactly(setup):
  """A freshly inflated TAE treats frames independently, so tiling must be exact:
  this checks the tile offsets and that blend weights sum to one everywhere."""
  model, video, fresh = setup
  encode, decode = coders(model, fresh)
  latent = encode(video)
  np.testing.assert_allclose(tiled_encode(encode, video), latent, atol=1e-5)
  full = decode(latent)
  tiled = tiled_decode(decode, latent, NUM_FRAMES, tile_frames=32, overlap_frames=16)
  assert tiled.shape == full.shape
  np.testing.assert_allclose(tiled, full, atol=1e-5)
  # A length that is not a multiple of 8 trims the spurious frames.
  odd = tiled_decode(decode, latent[:, :9], 70)
  assert odd.shape[1] == 70


def test_blended_tiles_show_no_seam(setup):
  """With temporal mixing, tiles differ from the full decode; the linear blend must
  hide where tiles meet, unlike butting tiles together with no overlap."""
  model, video, fresh = setup
  encode, decode = coders(model, perturb(fresh, 0.03))
  latent = encode(video)
  full_jumps = frame_jumps(decode(latent))
  blended = tiled_decode(decode, latent, NUM_FRAMES, tile_frames=32, overlap_frames=16)
  butted = tiled_decode(decode, latent, NUM_FRAMES, tile_frames=32, overlap_frames=0)
  blended_excess = frame_jumps(blended) - full_jumps
  butted_excess = frame_jumps(butted) - full_jumps
  # Butted tiles [0, 32) and [32, 64) jump at frame 31 -> 32 (the last tile is
  # shifted back to [48, 80) and so overlaps); the blend removes the jump.
  seam = butted_excess[31]
  assert seam > 0.5 * full_jumps.mean()
  assert blended_excess.max() < 0.25 * seam
  assert blended_excess.max() < 0.5 * full_jumps.mean()
