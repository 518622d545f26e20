"""MultiDiffusion over time: one ODE for a clip longer than the model's window.

A model trained on windows of W frames samples a clip of any length T as one
solve: at every velocity evaluation the clip is cut into overlapping windows
(stride W - overlap, the last window aligned to the clip's end), the model runs on
all of them as one batch, and the windowed velocities are blended back into one
[B, T, ...] velocity with per-frame weights that sum to one. Neighbouring windows
see the same x on their overlap at every step, so they agree there and no seam
forms. Two weightings:

  "average"   every window covering a frame counts the same (MultiDiffusion's
              average of the overlapping velocities; the spatial upsampler's);
  "triangle"  triangle weights peaking at each window's centre, normalised per
              frame (audio extension: frames near a window's edge, which see
              the least context, count the least).

The window model is

    velocity_fn(x_t [B', W, ...], t [B'], *aligned, *per_example, *args) -> v [B', W, ...]

with B' = B * num_windows (example-major): `aligned` are pytrees of arrays on the
clip's time axis [B, T, ...] (each window gets its slice: masked context, video
features, a low-resolution video's latents), `per_example` pytrees of [B, ...]
(each window gets its example's: text tokens), `args` anything else, unchanged
(model variables: jit arguments, not constants of the compiled step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mgjax import flow

WEIGHTINGS = ("average", "triangle")
WindowVelocityFn = Callable[..., jax.Array]


def check_window(num_frames: int, window: int, overlap: int) -> None:
  if int(num_frames) < 1:
    raise ValueError(f"Need at least one frame to generate; got {num_frames}.")
  if int(window) < 1:
    raise ValueError(f"The window must be >= 1 frame; got {window}.")
  if not 0 <= int(overlap) < int(window):
    raise ValueError(
        f"The window overlap must be in [0, window) = [0, {window}); got "
        f"{overlap}. Windows must advance by at least one frame."
    )


def window_starts(num_frames: int, window: int, overlap: int) -> tuple[int, ...]:
  """First frame of each window: 0, stride, 2 stride, ... and the last one aligned
  to the end (T - window), stride = window - overlap. One window if T <= window."""
  check_window(num_frames, window, overlap)
  if num_frames <= window:
    return (0,)
  stride = window - overlap
  starts = list(range(0, num_frames - window + 1, stride))
  if starts[-1] != num_frames - window:
    starts.append(num_frames - window)
  return tuple(starts)


def seam_transitions(num_frames: int, window: int, overlap: int) -> np.ndarray:
  """Frame transitions t -> t + 1 (as t) where a window starts (t + 1) or ends (t)
  inside the clip: where a seam would show if windows were not blended."""
  starts = window_starts(num_frames, window, overlap)
  edges = {s - 1 for s in starts if s > 0} | {
      s + window - 1 for s in starts if s + window < num_frames
  }
  return np.array(sorted(edges), np.int64)


def triangle_window(length: int) -> np.ndarray:
  """Triangle weights [W] peaking at the centre, 1/W (never 0) at both ends."""
  i = np.arange(length, dtype=np.float64)
  return 1.0 - np.abs((2.0 * i + 1.0) / length - 1.0)


def blend_plan(
    num_frames: int, window: int, overlap: int, weighting: str = "triangle"
) -> tuple[np.ndarray, np.ndarray]:
  """(frame index [N, W'] int32, blend weight [N, W'] float32) of the N windows.

  W' = min(window, T). The weights (`WEIGHTINGS`) are divided by their sum at each
  frame, so the weights of every frame add up to 1.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"Unknown window weighting {weighting!r}; use one of {WEIGHTINGS}.")
  starts = window_starts(num_frames, window, overlap)
  length = min(window, num_frames)
  index = np.asarray(starts)[:, None] + np.arange(length)[None]  # [N, W']
  shape = triangle_window(length) if weighting == "triangle" else np.ones(length)
  weight = np.broadcast_to(shape, index.shape)
  total = np.zeros(num_frames)
  np.add.at(total, index, weight)
  return index.astype(np.int32), (weight / total[index]).astype(np.float32)


def blended_velocity(
    velocity_fn: WindowVelocityFn,
    x: jax.Array,
    t: jax.Array,
    aligned: tuple = (),
    per_example: tuple = (),
    args: tuple = (),
    *,
    window: int,
    overlap: int,
    weighting: str = "triangle",
    windows_per_call: int = 0,
) -> jax.Array:
  """The full-length velocity [B, T, ...] at x [B, T, ...]: windowed velocities
  blended. All windows run as one batch of B * N (example-major), or, with
  `windows_per_call` = k > 0, k windows at a time in a loop (`lax.map`), which bounds
  the memory of a long clip at k windows' activations."""
  b, num_frames = x.shape[:2]
  index, weight = blend_plan(num_frames, window, overlap, weighting)  # [N, W]
  n = index.shape[0]
  if 0 < windows_per_call < n:
    by_window = lambda a: jnp.moveaxis(a[:, index], 1, 0)  # [N, B, W, ...]
    v = jax.lax.map(
        lambda xs: velocity_fn(xs[0], t, *xs[1], *per_example, *args),
        (by_window(x), jax.tree.map(by_window, tuple(aligned))),
        batch_size=windows_per_call,
    )  # [N, B, W, ...]
    v = jnp.moveaxis(v, 0, 1).astype(jnp.float32)  # [B, N, W, ...]
  else:
    windows = lambda a: a[:, index].reshape((b * n,) + index.shape[1:] + a.shape[2:])
    repeat = lambda a: jnp.repeat(a, n, axis=0)
    v = velocity_fn(
        windows(x),
        repeat(t),
        *jax.tree.map(windows, tuple(aligned)),
        *jax.tree.map(repeat, tuple(per_example)),
        *args,
    )  # [B * N, W, ...]
    v = v.reshape((b, n) + v.shape[1:]).astype(jnp.float32)
  w = jnp.asarray(weight).reshape(weight.shape + (1,) * (v.ndim - 3))
  out = jnp.zeros((b, num_frames) + v.shape[3:], jnp.float32).at[:, index].add(v * w[None])
  return out.astype(x.dtype)  # [B, T, ...]


@functools.lru_cache(maxsize=32)
def windowed(
    velocity_fn: WindowVelocityFn,
    window: int,
    overlap: int,
    num_aligned: int,
    num_per_example: int,
    weighting: str = "triangle",
    windows_per_call: int = 0,
):
  """velocity(x, t, *aligned, *per_example, *args) of the whole clip; one function
  object per (model, window, ...), so flow.solve's compiled step is reused."""

  def velocity(x, t, *rest):
    aligned = rest[:num_aligned]
    per_example = rest[num_aligned : num_aligned + num_per_example]
    args = rest[num_aligned + num_per_example :]
    return blended_velocity(
        velocity_fn,
        x,
        t,
        aligned,
        per_example,
        args,
        window=window,
        overlap=overlap,
        weighting=weighting,
        windows_per_call=windows_per_call,
    )

  return velocity


def sample(
    velocity_fn: WindowVelocityFn,
    noise: jax.Array,
    schedule,
    *,
    window: int,
    overlap: int,
    weighting: str = "triangle",
    method: str = "euler",
    aligned: tuple = (),
    per_example: tuple = (),
    args: tuple = (),
    step_callback: Callable[[int, int], None] | None = None,
    windows_per_call: int = 0,
) -> jax.Array:
  """Solves the whole clip from noise [B, T, ...] with blended window velocities;
  `schedule` are the times of `flow.make_schedule`. Returns [B, T, ...]."""
  check_window(noise.shape[1], window, overlap)
  step_fn = windowed(
      velocity_fn,
      int(window),
      int(overlap),
      len(aligned),
      len(per_example),
      weighting,
      int(windows_per_call),
  )
  return flow.solve(
      step_fn,
      noise,
      schedule,
      method,
      step_callback=step_callback,
      args=tuple(aligned) + tuple(per_example) + tuple(args),
  )
