"""Long-form audio: window geometry, exact reproduction of a known signal across
window boundaries, seam continuity (which naive concatenation fails), and the real
tiny AudioDiT through both strategies (on a one-window clip, plain integration).

Two analytic window models stand in for a trained one:

* `exact_velocity`: the flow-matching velocity towards ONE known target, given to
  each window as its slice of an `aligned` array. Its paths are straight, so any
  solver lands on target + sigma_min * noise: a window misplaced by one frame, or
  blend weights that do not sum to one, show up as errors far above 1e-3.
* `gaussian_velocity`: the exact flow-matching velocity of a stationary Gaussian
  process (random-phase sinusoids of periods 16 and 24 frames, plus a little white
  noise), conditioned on the masked audio context by Gaussian conditioning. It knows
  no absolute position, so independently generated windows have unrelated phases
  and naive concatenation makes a jump at every seam; a method that carries the
  signal across windows (blending, or context) does not.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax import audio_longform as lf
from mgjax import flow
from mgjax.models.audio_dit import AudioDiT, align_video_features, window_model_fn

SIGMA = flow.SIGMA_MIN
PERIODS = (16.0, 24.0)  # frames
WHITE = 1e-3  # white-noise variance of the Gaussian process
STRATEGIES = ("multidiffusion", "autoregressive")


def exact_velocity(x, t, context, context_mask, aligned, per_example):
  """Velocity at x [B, W, C] of the straight path from noise to `aligned` (the target)."""
  del context, context_mask, per_example
  t = t[:, None, None]
  x0 = (x - t * aligned) / (1.0 - (1.0 - SIGMA) * t)
  return aligned - (1.0 - SIGMA) * x0


def process_covariance(length: int) -> np.ndarray:
  """[W, W] covariance over time of the stationary process (variance 1 + WHITE)."""
  lag = np.arange(length)[:, None] - np.arange(length)[None]
  cov = sum(0.5 * np.cos(2 * np.pi * lag / p) for p in PERIODS)
  return (cov + WHITE * np.eye(length)).astype(np.float32)


def gaussian_velocity(x, t, context, context_mask, aligned, per_example):
  """E[X1 - (1 - sigma) X0 | X_t = x] for X1 ~ the process given the context frames."""
  del aligned, per_example
  w = x.shape[1]
  cov = jnp.asarray(process_covariance(w))[None]  # [1, W, W]
  m = context_mask[..., 0]  # [B, W], 1 = observed
  eye = jnp.eye(w)[None]
  # A = M K M + (I - M): K's observed block, the identity elsewhere.
  a = m[:, :, None] * cov * m[:, None, :] + eye * (1.0 - m)[:, None, :]
  gain = jnp.swapaxes(jnp.linalg.solve(a, jnp.swapaxes(cov * m[:, None, :], 1, 2)), 1, 2)
  mean = gain @ (m[..., None] * context)  # [B, W, C]: K_xo K_oo^-1 c
  cond_cov = cov - gain @ (m[:, :, None] * cov)  # K - K_xo K_oo^-1 K_ox
  lam, q = jnp.linalg.eigh(0.5 * (cond_cov + jnp.swapaxes(cond_cov, 1, 2)))
  lam = jnp.maximum(lam, 0.0)  # [B, W]
  t = t[:, None]
  s = 1.0 - (1.0 - SIGMA) * t
  coef = (t * lam - (1.0 - SIGMA) * s) / (t * t * lam + s * s)  # [B, W]
  y = jnp.swapaxes(q, 1, 2) @ (x - t[..., None] * mean)
  return mean + q @ (coef[..., None] * y)


def smooth_target(b, num_frames, c, seed=0):
  """A known continuous signal [B, T, C]: a sinusoid per channel, random phase."""
  rng = np.random.default_rng(seed)
  j = np.arange(num_frames)[None, :, None]
  period = rng.uniform(10, 40, (1, 1, c))
  phase = rng.uniform(0, 2 * np.pi, (b, 1, c))
  return jnp.asarray(np.sin(2 * np.pi * j / period + phase), jnp.float32)


# ------------------------------------------------------------------ windows


def test_window_geometry():
  assert lf.window_starts(100, 32, 8) == (0, 24, 48, 68)  # last one aligned to the end
  assert lf.window_starts(96, 32, 8) == (0, 24, 48, 64)
  assert lf.window_starts(72, 32, 8) == (0, 24, 40)
  assert lf.window_starts(32, 32, 8) == (0,)
  assert lf.window_starts(20, 32, 8) == (0,)  # shorter than a window: one short window
  assert lf.window_starts(64, 32, 0) == (0, 32)
  tri = lf.triangle_window(8)
  np.testing.assert_allclose(tri, tri[::-1])
  assert tri.min() == pytest.approx(1 / 8) and tri.max() == pytest.approx(7 / 8)
  index, weight = lf.blend_plan(100, 32, 8)
  assert index.shape == weight.shape == (4, 32) and index[-1, -1] == 99
  total = np.zeros(100)
  np.add.at(total, index, weight)
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)
  np.testing.assert_allclose(weight[0, :24], 1.0)  # frames only window 0 covers
  with pytest.raises(ValueError, match=r"overlap must be in \[0, window\)"):
    lf.window_starts(100, 32, 32)
  with pytest.raises(ValueError, match="Unknown long-form method"):
    lf.sample_long("stitch", exact_velocity, jnp.zeros((1, 40, 2)), [0.0, 1.0], window=8, overlap=2)
  with pytest.raises(ValueError, match="overlap >= 1"):
    lf.autoregressive_sample(exact_velocity, jnp.zeros((1, 40, 2)), [0.0, 1.0], window=8, overlap=0)


def test_crossfade_ramps_linearly():
  old, new = jnp.zeros((1, 4, 1)), jnp.ones((1, 4, 1))
  np.testing.assert_allclose(lf.crossfade(old, new)[0, :, 0], [0.2, 0.4, 0.6, 0.8])


# ------------------------------------------------- known continuous target


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_methods_reproduce_a_known_signal_across_windows(strategy):
  b, num_frames, c, window, overlap = 2, 101, 3, 32, 8  # 4 windows, last one end-aligned
  target = smooth_target(b, num_frames, c)
  noise = jax.random.normal(jax.random.key(0), target.shape)
  out = lf.sample_long(
      strategy,
      exact_velocity,
      noise,
      flow.linear_schedule(4),
      window=window,
      overlap=overlap,
      method="midpoint",
      aligned=target,
  )
  assert out.shape == (b, num_frames, c)
  np.testing.assert_allclose(out, target, atol=2e-3)
  # With T == window both are plain sampling of one window.
  one = lf.sample_long(
      strategy,
      exact_velocity,
      noise[:, :window],
      flow.linear_schedule(4),
      window=window,
      overlap=overlap,
      aligned=target[:, :window],
  )
  plain = flow.solve(
      lambda x, t: exact_velocity(x, t, None, None, target[:, :window], None),
      noise[:, :window],
      flow.linear_schedule(4),
      "midpoint",
  )
  np.testing.assert_allclose(one, plain, rtol=1e-5, atol=1e-5)


def test_multidiffusion_velocity_blends_disagreeing_windows_by_weight():
  """Windows that each return their own start index: the blend is the weighted
  average of those constants, frame by frame."""

  def start_of_window(x, t, context, context_mask, aligned, per_example):
    return jnp.broadcast_to(aligned[:, :1], x.shape)  # every frame: the window's first

  frames = jnp.arange(40, dtype=jnp.float32)[None, :, None]  # [1, T, 1]
  x = jnp.zeros((1, 40, 1))
  zeros = jnp.zeros((1, 40, 1))
  v = lf.multidiffusion_velocity(
      start_of_window, x, jnp.zeros(1), zeros, zeros, frames, None, window=16, overlap=6
  )
  index, weight = lf.blend_plan(40, 16, 6)
  expected = np.zeros(40)
  np.add.at(expected, index, weight * index[:, :1])
  np.testing.assert_allclose(v[0, :, 0], expected, rtol=1e-6)
  assert v[0, 0, 0] == 0 and v[0, -1, 0] == index[-1, 0]


# ------------------------------------------------------------------ seams


def seam_measures(x: np.ndarray, boundaries, guard: int = 3, segment: int = 16):
  """(jump, high band, energy) ratios at the worst boundary, over all B x C series.

  jump: RMS frame-to-frame difference across a boundary / RMS difference at frames
    at least `guard` away from every boundary.
  high band: power above 1/6 cycle per frame (no signal there: periods >= 16) in a
    Hann-windowed `segment` centred on the boundary / the median over all segments.
  energy: mean power of the 8 frames after a boundary / of the 8 before (as a
    ratio >= 1, the larger way round).
  """
  diffs = np.diff(x, axis=1)  # diffs[:, j] = x[j + 1] - x[j]
  steps = np.arange(diffs.shape[1]) + 1  # the frame each difference arrives at
  interior = np.all(np.abs(steps[:, None] - np.asarray(boundaries)[None]) >= guard, axis=1)
  typical = np.sqrt(np.mean(diffs[:, interior] ** 2))
  jump = max(np.sqrt(np.mean(diffs[:, b - 1] ** 2)) for b in boundaries) / typical

  hann = np.hanning(segment)[None, :, None]
  high = np.fft.rfftfreq(segment) > 1 / 6

  def band_power(centre):
    seg = x[:, centre - segment // 2 : centre + segment // 2]
    seg = (seg - seg.mean(axis=1, keepdims=True)) * hann
    return np.mean(np.abs(np.fft.rfft(seg, axis=1)[:, high]) ** 2)

  centres = range(segment // 2, x.shape[1] - segment // 2 + 1)
  reference = np.median([band_power(c) for c in centres])
  band = max(band_power(b) for b in boundaries) / reference

  power = lambda seg: np.mean(seg**2)
  energy = max(
      max(
          power(x[:, b : b + 8]) / power(x[:, b - 8 : b]),
          power(x[:, b - 8 : b]) / power(x[:, b : b + 8]),
      )
      for b in boundaries
  )
  return jump, band, energy


JUMP_LIMIT = 2.0  # a seam's frame step at most 2x the typical step inside windows
BAND_LIMIT = 2.0  # and at most 2x the typical high-frequency power
ENERGY_LIMIT = 2.0


def continuous(measures) -> bool:
  jump, band, energy = measures
  return jump <= JUMP_LIMIT and band <= BAND_LIMIT and energy <= ENERGY_LIMIT


@pytest.fixture(scope="module")
def extension():
  """A 3x-window extension: shapes, noise and schedule shared by the seam tests."""
  b, window, overlap, c = 4, 32, 8, 16
  noise = jax.random.normal(jax.random.key(1), (b, 3 * window, c))
  return noise, window, overlap, flow.linear_schedule(16)


def edges(num_frames, window, overlap):
  """Every window start and end strictly inside the clip."""
  starts = lf.window_starts(num_frames, window, overlap)
  return sorted(
      {s for s in starts if s > 0} | {s + window for s in starts if s + window < num_frames}
  )


def test_naive_concatenation_fails_the_seam_check(extension):
  noise, window, _, schedule = extension
  pieces = [
      flow.solve(
          lambda x, t: gaussian_velocity(
              x, t, jnp.zeros_like(x), jnp.zeros(x.shape[:2] + (1,)), None, None
          ),
          noise[:, s : s + window],
          schedule,
          "midpoint",
      )
      for s in range(0, noise.shape[1], window)
  ]
  naive = np.asarray(jnp.concatenate(pieces, axis=1))
  jump, band, energy = seam_measures(naive, [window, 2 * window])
  print(f"naive concatenation: jump {jump:.2f}, high band {band:.2f}, energy {energy:.2f}")
  assert not continuous((jump, band, energy))
  # Measured: jump 4.3 (independent phases: sqrt(2 var / E[step^2]) = 4.2 expected),
  # high band 152, energy 1.3; the continuous methods measure ~1.0, ~1.1-1.4, ~1.2.
  assert jump > 1.5 * JUMP_LIMIT and band > 10 * BAND_LIMIT
  # Inside each window the process itself is smooth: the check is about seams.
  inside = seam_measures(naive[:, :window], [window // 2])
  assert continuous(inside)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_extension_is_continuous_at_every_window_boundary(extension, strategy):
  noise, window, overlap, schedule = extension
  out = lf.sample_long(
      strategy,
      gaussian_velocity,
      noise,
      schedule,
      window=window,
      overlap=overlap,
      method="midpoint",
  )
  out = np.asarray(out)
  assert out.shape == noise.shape and np.all(np.isfinite(out))
  boundaries = edges(noise.shape[1], window, overlap)
  assert boundaries == [24, 32, 48, 56, 64, 80]
  jump, band, energy = seam_measures(out, boundaries)
  print(f"{strategy}: jump {jump:.2f}, high band {band:.2f}, energy {energy:.2f}")
  assert continuous((jump, band, energy)), (jump, band, energy)
  # The output is the process, not a flattened blend: unit variance, and neighbouring
  # frames correlated as a sinusoid of period >= 16 makes them.
  assert 0.5 < float(np.var(out)) < 2.0
  lag1 = np.mean(out[:, 1:] * out[:, :-1]) / np.mean(out**2)
  assert lag1 > 0.9
  if strategy == "autoregressive":
    # Window 2 continues window 1 from its context: the overlap frames stay what
    # window 1 made (a crossfade of two unrelated windows would blur them, and a
    # model blind to its context measures 1.2 / 2.8 / 1.5 above: the band check fails).
    first = flow.solve(
        lambda x, t: gaussian_velocity(
            x, t, jnp.zeros_like(x), jnp.zeros(x.shape[:2] + (1,)), None, None
        ),
        noise[:, :window],
        schedule,
        "midpoint",
    )
    np.testing.assert_allclose(out[:, :window], first, atol=1e-2)  # measured 4e-5; blind 3.1


def test_autoregression_continues_the_given_context(extension):
  """With a given prefix as context, window 1 continues it: the first frames are the
  prefix, and there is no seam between prefix and generated audio."""
  noise, window, overlap, schedule = extension
  prefix = np.asarray(
      lf.sample_long(
          "multidiffusion",
          gaussian_velocity,
          noise[:, :window],
          schedule,
          window=window,
          overlap=overlap,
      )
  )
  context = jnp.zeros_like(noise).at[:, :12].set(prefix[:, :12])
  mask = jnp.zeros(noise.shape[:2] + (1,)).at[:, :12].set(1.0)
  out = np.asarray(
      lf.autoregressive_sample(
          gaussian_velocity,
          jax.random.normal(jax.random.key(5), noise.shape),
          schedule,
          window=window,
          overlap=overlap,
          context=context,
          context_mask=mask,
      )
  )
  np.testing.assert_allclose(out[:, :12], prefix[:, :12], atol=0.05)
  assert continuous(seam_measures(out, [12] + edges(noise.shape[1], window, overlap)))


# ----------------------------------------------------------- real tiny model


def test_real_tiny_audio_dit_through_both_methods():
  model = AudioDiT(
      num_layers=2,
      embed_dim=32,
      mlp_dim=64,
      num_heads=2,
      max_frames=16,
      latent_rate=25.0,
      video_fps=16.0,
  )
  b, num_frames, c, window, overlap = 2, 40, 4, 16, 4
  keys = jax.random.split(jax.random.key(0), 4)
  noise = jax.random.normal(keys[0], (b, num_frames, c))
  video = jax.random.normal(keys[1], (b, 26, 6))  # 1.6 s at 16 fps
  text = {"t5": (jax.random.normal(keys[2], (b, 5, 8)), jnp.ones((b, 5), bool))}
  aligned = {"video": align_video_features(video, 16.0, 25.0, num_frames)}  # [B, 40, 6]
  # Random values for every parameter (shapes from eval_shape: no init to compile), so
  # no zero-initialised layer makes the output 0.
  init = functools.partial(model.init, video_fps=25.0)  # a Python float, not traced
  abstract = nn.meta.unbox(
      jax.eval_shape(
          init,
          keys[3],
          noise[:, :window],
          jnp.zeros(b),
          None,
          None,
          aligned["video"][:, :window],
          text,
      )
  )
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), abstract
  )
  velocity_fn = flow.cfg_velocity_fn(window_model_fn(model), 3.0, 4)
  context = jnp.zeros_like(noise).at[:, :5].set(1.0)
  mask = jnp.zeros((b, num_frames, 1)).at[:, :5].set(1.0)
  for strategy in STRATEGIES:
    out = lf.sample_long(
        strategy,
        velocity_fn,
        noise,
        flow.linear_schedule(2),
        window=window,
        overlap=overlap,
        method="midpoint",
        context=context,
        context_mask=mask,
        aligned=aligned,
        per_example={"text": text},
        args=(variables,),
    )
    assert out.shape == noise.shape, strategy
    assert bool(jnp.all(jnp.isfinite(out))), strategy
    assert float(jnp.abs(out - noise).mean()) > 1e-2, strategy  # the model moved it
  # A clip one window long: both methods are the plain integration of the guided model
  # (windows sliced from the real arrays, blend weights one, context passed through).
  inputs = (
      context[:, :window],
      mask[:, :window],
      {"video": aligned["video"][:, :window]},
      {"text": text},
  )
  schedule = flow.linear_schedule(2)
  plain = flow.solve(
      velocity_fn, noise[:, :window], schedule, method="midpoint", args=(*inputs, variables)
  )
  assert float(jnp.abs(plain - noise[:, :window]).mean()) > 1e-2
  for strategy in STRATEGIES:
    out = lf.sample_long(
        strategy,
        velocity_fn,
        noise[:, :window],
        schedule,
        window=window,
        overlap=overlap,
        method="midpoint",
        context=inputs[0],
        context_mask=inputs[1],
        aligned=inputs[2],
        per_example=inputs[3],
        args=(variables,),
    )
    np.testing.assert_allclose(out, plain, atol=1e-5, err_msg=strategy)
