"""Reconstruction quality metrics (PSNR, SSIM) for videos and images in [-1, 1].

Both metrics are written in `jnp` so they can run inside a jitted eval step next
to the autoencoder, instead of pulling reconstructions back to the host.

Shape convention: inputs are channels-last `[B, ..., H, W, C]` (for example
videos `[B, T, H, W, C]` or images `[B, H, W, C]`). Each metric is computed
independently on every frame `[H, W, C]` and the per-frame values are averaged
over every axis except the leading batch axis, so the result is `[B]`.
Per-frame averaging is how video reconstruction quality is usually reported; it
weights every frame equally regardless of its content.
"""

import jax
import jax.numpy as jnp

# Data range of videos in [-1, 1].
DEFAULT_MAX_VALUE = 2.0

# Wang et al. 2004 constants; identical to skimage's `structural_similarity`
# with `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`.
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_frames(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Checks shapes and flattens `[B, ..., H, W, C]` into frames `[N, H, W, C]`."""
  if x.shape != y.shape:
    raise ValueError(f"metric inputs must have equal shapes, got {x.shape} and {y.shape}")
  if x.ndim < 4:
    raise ValueError(
        f"metric inputs must be [B, ..., H, W, C] with a leading batch axis, got shape {x.shape}"
    )
  x, y = jnp.asarray(x), jnp.asarray(y)
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)  # ints -> float32
  height, width, channels = x.shape[-3:]
  x = jnp.asarray(x, dtype).reshape(-1, height, width, channels)
  y = jnp.asarray(y, dtype).reshape(-1, height, width, channels)
  return x, y


def _mean_per_example(per_frame: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Reshapes per-frame values `[N]` to `shape[:-3]` and averages all but the batch axis."""
  per_frame = per_frame.reshape(shape[:-3])  # [B, ...]
  return per_frame.reshape(shape[0], -1).mean(axis=1)  # [B]


def psnr(x: jax.Array, y: jax.Array, max_value: float = DEFAULT_MAX_VALUE) -> jax.Array:
  """Peak signal-to-noise ratio in dB, `[B, ..., H, W, C]` -> `[B]`.

  For every frame, `PSNR = 10 * log10(max_value**2 / MSE)` with the MSE taken
  over that frame's `H, W, C`; the frame PSNRs are then averaged over all axes
  except the leading batch axis. `max_value` is the data range (2.0 for [-1, 1]).

  No epsilon is added: a frame reproduced exactly has MSE 0 and PSNR `+inf`,
  so an example containing such a frame also averages to `+inf`. This keeps
  the number exact for every non-identical frame rather than silently capping.
  """
  shape = x.shape
  x, y = _as_frames(x, y)  # [N, H, W, C]
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))  # [N]
  per_frame = 10.0 * jnp.log10(max_value**2 / mse)  # [N]
  return _mean_per_example(per_frame, shape)


def gaussian_window_1d(size: int, sigma: float = SSIM_SIGMA) -> jax.Array:
  """Normalised, centred Gaussian taps `[size]` (what scipy's `gaussian_filter` uses)."""
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  return taps / jnp.sum(taps)


def ssim_window_shape(height: int, width: int) -> tuple[int, int]:
  """Window size per axis: 11, or for frames smaller than 11 the largest odd size that fits.

  skimage refuses frames smaller than the window. Here the window shrinks
  independently per axis to the largest odd length <= the frame size (odd so it
  stays centred), keeping sigma = 1.5 and renormalising the truncated taps.
  Frames of at least 11x11 are unaffected and match skimage exactly.
  """

  def fit(size: int) -> int:
    if size >= SSIM_WINDOW_SIZE:
      return SSIM_WINDOW_SIZE
    return size if size % 2 == 1 else size - 1

  return fit(height), fit(width)


def ssim(x: jax.Array, y: jax.Array, max_value: float = DEFAULT_MAX_VALUE) -> jax.Array:
  """Structural similarity (Wang et al. 2004), `[B, ..., H, W, C]` -> `[B]`.

  Local means, variances and covariance come from an 11x11 Gaussian window
  (sigma 1.5) applied with "valid" filtering, i.e. only where the window fits
  inside the frame; population (not sample) covariance is used, and
  `C1 = (0.01 * max_value)**2`, `C2 = (0.03 * max_value)**2`. The SSIM map is
  averaged over the valid positions and the channels of each frame (this
  equals skimage's `structural_similarity(..., channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=max_value)`), then averaged over all axes except the batch axis.
  Frames smaller than 11 pixels along an axis use a shrunken window, see
  `ssim_window_shape`.
  """
  shape = x.shape
  x, y = _as_frames(x, y)  # [N, H, W, C]
  _, height, width, channels = x.shape
  window_h, window_w = ssim_window_shape(height, width)
  window = jnp.outer(gaussian_window_1d(window_h), gaussian_window_1d(window_w))  # [wh, ww]
  window = window.astype(x.dtype)

  # All five local statistics in one depthwise convolution.
  moments = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)  # [N, H, W, 5C]
  num_maps = moments.shape[-1]
  kernel = jnp.broadcast_to(window[:, :, None, None], (window_h, window_w, 1, num_maps))
  filtered = jax.lax.conv_general_dilated(
      moments,
      kernel,
      window_strides=(1, 1),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=num_maps,
      precision=jax.lax.Precision.HIGHEST,
  )  # [N, H', W', 5C]
  mu_x, mu_y, mean_xx, mean_yy, mean_xy = jnp.split(filtered, 5, axis=-1)  # each [N, H', W', C]
  var_x = mean_xx - mu_x * mu_x
  var_y = mean_yy - mu_y * mu_y
  cov_xy = mean_xy - mu_x * mu_y

  c1 = (SSIM_K1 * max_value) ** 2
  c2 = (SSIM_K2 * max_value) ** 2
  numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
  denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  ssim_map = numerator / denominator  # [N, H', W', C]
  per_frame = jnp.mean(ssim_map, axis=(1, 2, 3))  # [N]
  return _mean_per_example(per_frame, shape)
