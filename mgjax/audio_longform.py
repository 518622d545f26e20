"""Audio longer than the model was trained on, from windows of the trained length.

Movie Gen Audio extends audio by masked prediction in two ways, both here as pure
functions over a window model:

* multi-diffusion (`multidiffusion_sample`): the whole clip is one ODE. At every
  solver evaluation the model runs on overlapping windows of `window` frames
  (stride window - overlap, the last window aligned to the clip's end), and the
  windowed velocities are blended into one full-length velocity with triangle
  weights normalised by their sum at each frame. Neighbouring windows agree on
  their overlap at every step, so no seam forms; one solve costs the model
  ~T / (window - overlap) window evaluations per step, run as one batch.
* segment-level autoregression (`autoregressive_sample`): window 1 is generated
  on its own; every next window is generated with the frames already made inside
  it (the previous window's last `overlap` frames; more for the end-aligned last
  window) as the masked audio context, and the overlap is stitched with a linear
  crossfade from the old frames to the new ones.

Both return exactly the requested number of frames. A clip no longer than one
window is one window of its own length (plain sampling).

The window model is

    velocity_fn(x_t [B', W, C], t [B'], context [B', W, C], context_mask [B', W, 1],
                aligned, per_example, *args) -> v [B', W, C]

where `aligned` is a pytree of arrays on the audio latent time axis [B, T, ...]
(e.g. video features resampled to the latent rate: each window gets its slice),
`per_example` a pytree of per-example arrays [B, ...] (e.g. text embeddings: each
window gets its example's), and `args` anything else, passed unchanged (model
variables: jit arguments, not constants baked into the compiled step). For
multi-diffusion B' = B * num_windows (example-major); for autoregression B' = B.
`mgjax.models.audio_dit.window_model_fn` makes one from an AudioDiT, guided by
`mgjax.flow.cfg_velocity_fn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mgjax import flow, multidiffusion

STRATEGIES = ("multidiffusion", "autoregressive")
WindowVelocityFn = Callable[..., jax.Array]


# ---------------------------------------------------------------------- windows

# The geometry is MultiDiffusion's (mgjax/multidiffusion.py); audio blends with
# triangle weights.
window_starts = multidiffusion.window_starts
triangle_window = multidiffusion.triangle_window
blend_plan = multidiffusion.blend_plan
_check_window = multidiffusion.check_window


def _full_context(noise, context, context_mask):
  """Context and mask over the whole clip: zeros (nothing given) when None."""
  if context is None:
    if context_mask is not None:
      raise ValueError("context_mask given without context; pass both or neither.")
    return jnp.zeros_like(noise), jnp.zeros(noise.shape[:2] + (1,), noise.dtype)
  if context.shape != noise.shape or context_mask is None:
    raise ValueError(
        f"context must be [B, T, C] = {noise.shape} with context_mask "
        f"[B, T, 1]; got {context.shape} and "
        f"{None if context_mask is None else context_mask.shape}."
    )
  if context_mask.shape == noise.shape[:2]:
    context_mask = context_mask[..., None]
  return context.astype(noise.dtype), context_mask.astype(noise.dtype)


# -------------------------------------------------------------- multi-diffusion


def multidiffusion_velocity(
    velocity_fn: WindowVelocityFn,
    x: jax.Array,
    t: jax.Array,
    context: jax.Array,
    context_mask: jax.Array,
    aligned: Any,
    per_example: Any,
    *args,
    window: int,
    overlap: int,
) -> jax.Array:
  """The full-length velocity [B, T, C] at x [B, T, C]: windowed velocities blended
  with triangle weights; all windows run as one batch of B * N (example-major)."""
  return multidiffusion.blended_velocity(
      velocity_fn,
      x,
      t,
      (context, context_mask, aligned),
      (per_example,),
      args,
      window=window,
      overlap=overlap,
  )


def multidiffusion_sample(
    velocity_fn: WindowVelocityFn,
    noise: jax.Array,
    schedule,
    *,
    window: int,
    overlap: int,
    method: str = "midpoint",
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
    aligned: Any = None,
    per_example: Any = None,
    args: tuple = (),
    step_callback: Callable[[int, int], None] | None = None,
) -> jax.Array:
  """Solves the full clip from noise [B, T, C] with blended window velocities.

  `schedule` are the times of `flow.make_schedule`; `method` a flow solver
  ("euler" | "midpoint"). `context`/`context_mask` (whole clip, optional) are the
  masked audio context, sliced per window. Returns [B, T, C].
  """
  context, context_mask = _full_context(noise, context, context_mask)
  return multidiffusion.sample(
      velocity_fn,
      noise,
      schedule,
      window=window,
      overlap=overlap,
      method=method,
      aligned=(context, context_mask, aligned),
      per_example=(per_example,),
      args=tuple(args),
      step_callback=step_callback,
  )


# --------------------------------------------------- segment-level autoregression


def crossfade(old: jax.Array, new: jax.Array) -> jax.Array:
  """Linear crossfade over the time axis of [B, G, C]: from mostly `old` to mostly
  `new`, new's weight (i + 1) / (G + 1) at frame i."""
  g = old.shape[1]
  ramp = jnp.asarray((np.arange(g) + 1.0) / (g + 1.0), jnp.float32)[None, :, None]
  mixed = (1.0 - ramp) * old.astype(jnp.float32) + ramp * new.astype(jnp.float32)
  return mixed.astype(old.dtype)


def autoregressive_sample(
    velocity_fn: WindowVelocityFn,
    noise: jax.Array,
    schedule,
    *,
    window: int,
    overlap: int,
    method: str = "midpoint",
    context: jax.Array | None = None,
    context_mask: jax.Array | None = None,
    aligned: Any = None,
    per_example: Any = None,
    args: tuple = (),
    step_callback: Callable[[int, int], None] | None = None,
) -> jax.Array:
  """Generates window after window, each conditioned on the frames before it.

  Window k (frames [s_k, s_k + W)) starts from noise[:, s_k : s_k + W]; the frames
  of it already generated become its masked context (on top of any given
  `context`), and are crossfaded with the new window's version of them. The full
  solve runs once per window; `step_callback(i, total)` counts all steps.
  Returns [B, T, C].
  """
  num_frames = noise.shape[1]
  _check_window(num_frames, window, overlap)
  if overlap < 1 and num_frames > window:
    raise ValueError(
        "Autoregressive extension needs overlap >= 1: the overlap frames are "
        "the context each next window continues from."
    )
  context, context_mask = _full_context(noise, context, context_mask)
  starts = window_starts(num_frames, window, overlap)
  length = min(window, num_frames)
  num_steps = len(np.asarray(schedule)) - 1
  out = None  # [B, end, C], frames generated so far
  for k, start in enumerate(starts):
    stop = start + length
    ctx, mask = context[:, start:stop], context_mask[:, start:stop]
    done = 0 if out is None else out.shape[1] - start  # generated frames in this window
    if done:
      ctx = ctx.at[:, :done].set(out[:, start:])
      mask = mask.at[:, :done].set(1)
    window_aligned = jax.tree.map(lambda a: a[:, start:stop], aligned)  # noqa: B023 (called now)
    callback = None
    if step_callback is not None:
      callback = lambda i, n, k=k: step_callback(k * num_steps + i, len(starts) * n)
    new = flow.solve(
        velocity_fn,
        noise[:, start:stop],
        schedule,
        method,
        step_callback=callback,
        args=(ctx, mask, window_aligned, per_example) + tuple(args),
    )
    if out is None:
      out = new
    else:
      stitched = crossfade(out[:, start:], new[:, :done])
      out = jnp.concatenate([out[:, :start], stitched, new[:, done:]], axis=1)
  return out


SAMPLERS = {"multidiffusion": multidiffusion_sample, "autoregressive": autoregressive_sample}


def sample_long(
    strategy: str, velocity_fn: WindowVelocityFn, noise: jax.Array, schedule, **kwargs
) -> jax.Array:
  """`strategy` ("multidiffusion" | "autoregressive", config.longform.method) with the
  keyword arguments of `multidiffusion_sample`."""
  if strategy not in SAMPLERS:
    raise ValueError(f"Unknown long-form method {strategy!r}; use one of {STRATEGIES}.")
  return SAMPLERS[strategy](velocity_fn, noise, schedule, **kwargs)
