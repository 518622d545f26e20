"""PSNR / SSIM checks: known values, identities, and agreement with an independent scipy SSIM."""

import math

import jax
import numpy as np
import pytest
from scipy import ndimage

from mgjax.eval.metrics import psnr, ssim, ssim_window_shape


def reference_ssim_frame(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
  """SSIM of one frame `[H, W, C]`, written the way skimage does it, in float64.

  Gaussian filtering of the full frame with scipy (sigma 1.5, radius 5, i.e. an
  11-tap window, or the shrunken radius for small frames), then cropping the
  border where the window sticks out, which leaves exactly the "valid" region.
  """
  height, width, channels = x.shape
  window_h, window_w = ssim_window_shape(height, width)
  radius = ((window_h - 1) // 2, (window_w - 1) // 2)

  def blur(image):
    return ndimage.gaussian_filter(image, sigma=1.5, radius=radius, mode="reflect")

  c1 = (0.01 * data_range) ** 2
  c2 = (0.03 * data_range) ** 2
  crop = (slice(radius[0], height - radius[0]), slice(radius[1], width - radius[1]))
  per_channel = []
  for c in range(channels):
    a = x[..., c].astype(np.float64)
    b = y[..., c].astype(np.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    per_channel.append(ssim_map[crop].mean())
  return float(np.mean(per_channel))


def random_video(rng: np.random.Generator, shape) -> np.ndarray:
  """Smooth-ish random content in [-1, 1] so SSIM is far from both 0 and 1."""
  noise = rng.normal(size=shape)
  smooth = ndimage.gaussian_filter(noise, sigma=(0, 0, 2, 2, 0))
  smooth = smooth / np.abs(smooth).max()
  return np.clip(smooth, -1, 1).astype(np.float32)


def test_psnr_of_constant_offset():
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.5, 0.5, size=(2, 3, 8, 8, 3)).astype(np.float32)
  for c in (0.01, 0.1, 0.5):
    got = np.asarray(psnr(x, x + c))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, 10 * math.log10(4 / c**2), rtol=1e-4)


def test_psnr_averages_frames_per_example():
  x = np.zeros((2, 2, 4, 4, 1), np.float32)
  y = x.copy()
  y[:, 0] += 0.1
  y[:, 1] += 0.2
  y[1] += 0.3  # second example: offsets 0.4 and 0.5
  expected = [
      np.mean([10 * math.log10(4 / 0.1**2), 10 * math.log10(4 / 0.2**2)]),
      np.mean([10 * math.log10(4 / 0.4**2), 10 * math.log10(4 / 0.5**2)]),
  ]
  np.testing.assert_allclose(np.asarray(psnr(x, y)), expected, rtol=1e-4)


def test_psnr_identical_is_inf():
  x = np.random.default_rng(1).uniform(-1, 1, size=(2, 4, 4, 3)).astype(np.float32)
  got = np.asarray(psnr(x, x))
  assert np.all(np.isposinf(got))


def test_psnr_custom_max_value():
  x = np.zeros((1, 4, 4, 1), np.float32)
  np.testing.assert_allclose(np.asarray(psnr(x, x + 0.1, max_value=1.0)), 20.0, rtol=1e-4)


def test_ssim_identical_is_one():
  x = random_video(np.random.default_rng(2), (2, 3, 16, 16, 3))
  np.testing.assert_allclose(np.asarray(ssim(x, x)), 1.0, atol=1e-6)


def test_ssim_decreases_with_noise():
  rng = np.random.default_rng(3)
  x = random_video(rng, (1, 2, 24, 24, 3))
  noise = rng.normal(size=x.shape).astype(np.float32)
  scores = [
      float(ssim(x, np.clip(x + sigma * noise, -1, 1))[0])
      for sigma in (0.0, 0.02, 0.05, 0.1, 0.3, 1.0)
  ]
  assert scores[0] == pytest.approx(1.0, abs=1e-6)
  assert all(a > b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize(
    "shape",
    [
        (2, 2, 16, 20, 3),  # full 11x11 window
        (1, 3, 11, 11, 1),  # window exactly fits: one valid position
        (3, 32, 24, 3),  # images [B, H, W, C]
        (2, 2, 8, 7, 3),  # small frame: 7x7 window
        (1, 2, 4, 16, 2),  # small along one axis only: 3x11 window
    ],
)
def test_ssim_matches_scipy_reference(shape):
  rng = np.random.default_rng(sum(shape))
  x = random_video(rng, shape if len(shape) == 5 else (shape[0], 1) + shape[1:]).reshape(shape)
  y = np.clip(x + 0.2 * rng.normal(size=shape), -1, 1).astype(np.float32)

  got = np.asarray(jax.jit(ssim)(x, y))

  height, width, channels = shape[-3:]
  frames_x = x.reshape(shape[0], -1, height, width, channels)
  frames_y = y.reshape(shape[0], -1, height, width, channels)
  expected = [
      np.mean([reference_ssim_frame(fx, fy) for fx, fy in zip(frames_x[b], frames_y[b])])
      for b in range(shape[0])
  ]
  assert got.shape == (shape[0],)
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert np.all(got < 0.99)  # the noise must actually lower the score


def test_small_frame_window_sizes():
  assert ssim_window_shape(64, 64) == (11, 11)
  assert ssim_window_shape(11, 12) == (11, 11)
  assert ssim_window_shape(8, 7) == (7, 7)
  assert ssim_window_shape(1, 2) == (1, 1)


def test_metrics_reject_mismatched_shapes():
  with pytest.raises(ValueError):
    psnr(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 5, 3)))
  with pytest.raises(ValueError):
    ssim(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
