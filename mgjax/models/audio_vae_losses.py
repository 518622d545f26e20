"""Reconstruction losses and quality metrics of the audio VAE.

Training loss (mgjax/tasks/audio_vae.py) =
    stft_weight * multi-scale STFT loss   (L1 of log10 magnitudes + L1 of magnitudes,
                                           averaged over window sizes)
  + waveform_weight * L1(waveform)
  + onset_weight * onset loss             (RMS over frames of the difference of the
                                           spectral-flux onset envelopes, in dB: what
                                           the shapes click detector measures)
  + kl_weight * KL(posterior || N(0, 1))  (mgjax.models.tae_losses.kl_divergence)

The STFT windows are given in seconds (16/32/64 ms: 256/512/1024 samples at 16 kHz,
768/1536/3072 at 48 kHz; experiments/audio_vae.py adds 8 ms for transients), so a
config means the same time-frequency resolution at every sample rate. DAC also trains with multi-scale mel losses and
adversarial (multi-period + multi-band STFT discriminator) feature-matching terms;
those are NOT included here: the tiny CPU model must train in minutes, and the
waveform L1 keeps the phase (and so the SNR) right without them.

Metrics: `snr_db` (waveform signal-to-noise ratio) and `spectral_distance_db`
(mean absolute difference of STFT magnitudes in dB, floored at -60 dBFS, the
silence level of mgjax.data.audio, averaged over the same window sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_WINDOWS_S = (0.016, 0.032, 0.064)
# The training loss compares log10(|X| + LOG_EPS): below -60 dBFS (the distance's
# floor) differences barely count, yet a missing sound still has a gradient; a
# clamp, log10(max(|X|, eps)), would give none to bins the model leaves silent, and
# it never learned the bounce clicks.
LOG_EPS = 1e-3
MAGNITUDE_EPS = 1e-8
ONSET_EPS = 1e-4  # -80 dBFS: shapes_audio.ONSET_FLOOR_DB
DISTANCE_FLOOR_DB = -60.0


def window_samples(windows_s: Sequence[float], sample_rate: int) -> tuple[int, ...]:
  """STFT sizes in samples (even, >= 16) for windows given in seconds."""
  sizes = tuple(max(16, 2 * int(round(w * sample_rate / 2))) for w in windows_s)
  if not sizes:
    raise ValueError("At least one STFT window is needed (loss.stft_windows_s).")
  return sizes


def stft_magnitude(waveform: jax.Array, window: int) -> jax.Array:
  """Hann STFT magnitudes, hop window/4, centred frames: [B, T, C] -> [B, C, N, F].

  Zero-padded by window/2 at both ends, so every sample is covered by four frames.
  Scaled so a full-scale sine reads ~1.0 in its peak bin (0 dBFS).
  """
  x = jnp.moveaxis(waveform.astype(jnp.float32), 1, -1)  # [B, C, T]
  hop = window // 4
  x = jnp.pad(x, ((0, 0), (0, 0), (window // 2, window // 2)))
  count = 1 + (x.shape[-1] - window) // hop
  index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]  # [N, W]
  taper = jnp.asarray(np.hanning(window + 1)[:-1], jnp.float32)  # periodic Hann
  frames = x[..., index] * taper  # [B, C, N, W]
  spectrum = jnp.fft.rfft(frames, axis=-1) * (2.0 / taper.sum())  # [B, C, N, F]
  # |X| with a tiny floor inside the root: finite gradients at |X| = 0 too.
  return jnp.sqrt(jnp.square(spectrum.real) + jnp.square(spectrum.imag) + MAGNITUDE_EPS**2)


def multiscale_stft_loss(
    recon: jax.Array, target: jax.Array, windows: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
  """(L1 of log10 magnitudes, L1 of magnitudes), each [B] and averaged over windows.

  Zero for identical inputs; the log term weighs quiet bins (decays, clicks over a
  tone) like loud ones, the linear one keeps the loud partials exact.
  """
  log_l1, mag_l1 = [], []
  for window in windows:
    r, t = stft_magnitude(recon, window), stft_magnitude(target, window)
    log_diff = jnp.log10(r + LOG_EPS) - jnp.log10(t + LOG_EPS)
    log_l1.append(jnp.abs(log_diff).mean(axis=(1, 2, 3)))
    mag_l1.append(jnp.abs(r - t).mean(axis=(1, 2, 3)))
  return sum(log_l1) / len(windows), sum(mag_l1) / len(windows)


def onset_envelope(waveform: jax.Array, window: int) -> jax.Array:
  """Spectral flux in dB per STFT frame (hop window/4): [B, T, C] -> [B, C, N - 1].

  The differentiable counterpart of shapes_audio.onset_strength (the click detector):
  the mean over frequency bins of the positive rise of the dB magnitude from the
  previous frame, with magnitudes softly floored at ONSET_EPS (-80 dBFS, the
  detector's floor), so noise below it barely rises.
  """
  db = 20 * jnp.log10(stft_magnitude(waveform, window) + ONSET_EPS)  # [B, C, N, F]
  return jax.nn.relu(db[:, :, 1:] - db[:, :, :-1]).mean(axis=-1)


def onset_loss(recon: jax.Array, target: jax.Array, windows: Sequence[int]) -> jax.Array:
  """Root-mean-square difference (dB) of the onset envelopes of recon and target over
  frames, averaged over windows: [B]. Zero for identical inputs.

  It asks for a click's rise in the frame where the target rises -- not spread over
  the frames before it, the pre-echo that the STFT and waveform terms tolerate -- and
  for no rise where the target has none. Squared, so the few frames that decide a
  detection (a missing 20 dB rise, an 8 dB pre-echo) outweigh the many frames of
  sub-dB flicker; the root keeps each example's gradient at the scale of its error.
  """
  terms = []
  for window in windows:
    diff = onset_envelope(recon, window) - onset_envelope(target, window)  # [B, C, N]
    terms.append(jnp.sqrt(jnp.square(diff).mean(axis=(1, 2)) + 1e-6))
  return sum(terms) / len(terms)


def waveform_l1(recon: jax.Array, target: jax.Array) -> jax.Array:
  """Mean |recon - target| per example: [B]."""
  return jnp.abs(recon - target).reshape(recon.shape[0], -1).mean(axis=1)


def snr_db(recon, target) -> np.ndarray:
  """10 log10(|target|^2 / |target - recon|^2) per example, [B, T, C] -> [B] (dB).

  Numpy on the host (float64): an exact reconstruction gives +inf; a silent target
  is floored at 1e-20 energy instead of giving NaN.
  """
  target = np.asarray(target, np.float64).reshape(len(target), -1)
  error = target - np.asarray(recon, np.float64).reshape(len(target), -1)
  signal = np.maximum(np.sum(target**2, axis=1), 1e-20)
  noise = np.sum(error**2, axis=1)
  with np.errstate(divide="ignore"):
    return 10 * np.log10(signal / noise)


def spectral_distance_db(
    recon, target, windows: Sequence[int], floor_db: float = DISTANCE_FLOOR_DB
) -> np.ndarray:
  """Mean |dB(recon) - dB(target)| over the active STFT bins, averaged over windows,
  per example: [B] (dB).

  Magnitudes are in dBFS (full-scale sine = 0 dB) floored at floor_db. A bin is
  active when either signal is above the floor; bins silent in both are left out,
  else they would dominate the mean (a tone fills a few percent of the bins) and a
  silent reconstruction would score well.
  """
  recon, target = jnp.asarray(recon, jnp.float32), jnp.asarray(target, jnp.float32)
  distances = []
  for window in windows:
    r = 20 * jnp.log10(jnp.maximum(stft_magnitude(recon, window), 1e-12))
    t = 20 * jnp.log10(jnp.maximum(stft_magnitude(target, window), 1e-12))
    diff = jnp.abs(jnp.maximum(r, floor_db) - jnp.maximum(t, floor_db))
    active = (jnp.maximum(r, t) > floor_db).astype(jnp.float32)
    mean = (diff * active).sum(axis=(1, 2, 3)) / jnp.maximum(active.sum(axis=(1, 2, 3)), 1)
    distances.append(np.asarray(mean, np.float64))
  return sum(distances) / len(windows)
