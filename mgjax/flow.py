"""Flow matching as in Movie Gen: the training path, its target, and the samplers.

Movie Gen trains its video transformer to predict the velocity of a straight path
from Gaussian noise to data, and samples by integrating that velocity with an ODE
solver. Keeping the path, the timestep distribution, the inference schedules and
the solvers here, as small pure functions, lets the training task and the sampler
share one definition of time and so cannot drift apart.

Convention: t = 0 is pure noise X0 ~ N(0, I) and t = 1 is data X1. The path is

    X_t = t * X1 + (1 - (1 - sigma_min) * t) * X0,     V = dX_t/dt = X1 - (1 - sigma_min) * X0

so the path ends at X1 + sigma_min * X0, a sliver of noise that keeps the
conditional flow well defined at t = 1.

Inference uses the linear-quadratic schedule: the first half of the steps are the
first steps of a fine linear schedule (where the flow bends most, near noise), and
the second half cover the rest of the way with quadratically growing strides, so
50 steps emulate a 250-step linear solve.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MIN = 1e-5

# velocity_fn(x [B, ...], t [B]) -> v [B, ...]
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
# model_fn(x [B', ...], t [B'], use_condition bool [B']) -> v [B', ...]
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- path


def _per_example(t: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes t [B] (or a scalar) to broadcast over x [B, ...]."""
  t = jnp.asarray(t)
  if t.ndim == 0:
    return t
  if t.ndim != 1 or t.shape[0] != x.shape[0]:
    raise ValueError(
        f"t must be a scalar or have shape [B] = [{x.shape[0]}] to match the "
        f"batch of x {tuple(x.shape)}; got t of shape {tuple(t.shape)}."
    )
  return t.reshape((-1,) + (1,) * (x.ndim - 1))  # [B, 1, ..., 1]


def interpolate(
    x0: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float = SIGMA_MIN
) -> jax.Array:
  """X_t = t * X1 + (1 - (1 - sigma_min) * t) * X0, with t [B] per example."""
  if x0.shape != x1.shape:
    raise ValueError(
        f"x0 and x1 must have the same shape; got {tuple(x0.shape)} and " f"{tuple(x1.shape)}."
    )
  t = _per_example(t, x1)  # [B, 1, ..., 1]
  return t * x1 + (1 - (1 - sigma_min) * t) * x0  # [B, ...]


def velocity_target(x0: jax.Array, x1: jax.Array, sigma_min: float = SIGMA_MIN) -> jax.Array:
  """V = dX_t/dt = X1 - (1 - sigma_min) * X0; constant along each example's path."""
  return x1 - (1 - sigma_min) * x0  # [B, ...]


def _check_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")


def sample_t(rng: jax.Array, batch_size: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """Logit-normal timesteps: sigmoid(N(mean, std^2)), float32 [B], strictly inside (0, 1).

  The density peaks at t = sigmoid(mean) and thins towards both ends, where the
  velocity is easiest to predict. Draws are clipped one float32 ulp inside (0, 1)
  so a large `std` cannot round a sample onto an endpoint.
  """
  _check_batch_size(batch_size)
  if not std >= 0:
    raise ValueError(f"std of the logit-normal must be >= 0; got {std!r}.")
  logits = mean + std * jax.random.normal(rng, (batch_size,), jnp.float32)  # [B]
  eps = float(np.finfo(np.float32).epsneg)  # 1 - eps is the largest float32 below 1
  return jnp.clip(jax.nn.sigmoid(logits), eps, 1.0 - eps)  # [B]


def training_example(
    rng: jax.Array,
    x1: jax.Array,
    sigma_min: float = SIGMA_MIN,
    t_mean: float = 0.0,
    t_std: float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws noise and t for data x1 [B, ...]; returns (t [B], x_t [B, ...], target [B, ...]).

  The model is trained to predict `target` from (x_t, t); see `velocity_loss`.
  """
  if not jnp.issubdtype(x1.dtype, jnp.floating):
    raise ValueError(
        f"x1 must be a floating-point array; got dtype {x1.dtype}. "
        "Cast the latents to float32 or bfloat16 first."
    )
  noise_rng, t_rng = jax.random.split(rng)
  x0 = jax.random.normal(noise_rng, x1.shape, x1.dtype)  # [B, ...]
  t = sample_t(t_rng, x1.shape[0], t_mean, t_std)  # [B]
  x_t = interpolate(x0, x1, t, sigma_min).astype(x1.dtype)  # [B, ...]
  return t, x_t, velocity_target(x0, x1, sigma_min)


def drop_condition(
    rng: jax.Array, keep_mask_shape_or_batch: int | tuple[int, ...], drop_prob: float
) -> jax.Array:
  """Classifier-free guidance dropout: bool "keep the text" mask, False w.p. drop_prob.

  `keep_mask_shape_or_batch` is a batch size B (mask [B]) or a full mask shape.
  `drop_prob` is a hyperparameter and must be a concrete number.
  """
  if not 0.0 <= float(drop_prob) <= 1.0:
    raise ValueError(f"drop_prob must be in [0, 1]; got {drop_prob!r}.")
  shape = keep_mask_shape_or_batch
  if isinstance(shape, numbers.Integral):
    _check_batch_size(shape)
    shape = (int(shape),)
  # uniform in [0, 1): drop_prob = 0 keeps everything, drop_prob = 1 keeps nothing.
  return jax.random.uniform(rng, tuple(shape)) >= drop_prob  # [B]


def velocity_loss(
    pred: jax.Array,
    target: jax.Array,
    weight: jax.Array | None = None,
    frame_mask: jax.Array | None = None,
) -> jax.Array:
  """Mean squared error, float32 scalar.

  Without `weight` it is the mean over all elements. With a per-example weight or
  mask [B] it is the weighted mean of the per-example MSEs, sum(w * mse) / sum(w),
  so a 0/1 mask averages over the kept examples only (and gives 0 when none are).
  With a `frame_mask` broadcastable to pred ([B, T, 1] for [B, T, C]; 1 = in the
  loss) it is the mean over the masked-in elements only: frames the model is given
  (e.g. audio context) add nothing to the loss nor to its denominator.
  """
  if pred.shape != target.shape:
    raise ValueError(
        f"pred and target must have the same shape; got {tuple(pred.shape)} "
        f"and {tuple(target.shape)}."
    )
  squared = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))  # [B, ...]
  if frame_mask is not None:
    if weight is not None:
      raise ValueError("Pass a per-example weight or a frame mask, not both.")
    counted = jnp.broadcast_to(frame_mask, squared.shape).sum()
    return (squared * frame_mask).sum() / jnp.maximum(counted, 1.0)
  if weight is None:
    return jnp.mean(squared)
  weight = jnp.asarray(weight, jnp.float32)
  if weight.shape != pred.shape[:1]:
    raise ValueError(
        f"weight must have shape [B] = [{pred.shape[0]}] (one per example); "
        f"got {tuple(weight.shape)}."
    )
  per_example = jnp.mean(squared.reshape(squared.shape[0], -1), axis=1)  # [B]
  total = jnp.sum(weight)
  return jnp.sum(weight * per_example) / jnp.where(total > 0, total, 1.0)  # 0 if all masked


# ------------------------------------------------------------------------ schedules


def _check_steps(name: str, value: int) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an int >= 1; got {value!r}.")


def linear_schedule(num_steps: int) -> np.ndarray:
  """num_steps + 1 evenly spaced times from 0.0 to 1.0 inclusive, float32."""
  _check_steps("num_steps", num_steps)
  return (np.arange(num_steps + 1, dtype=np.float64) / num_steps).astype(np.float32)


def linear_quadratic_schedule(num_steps: int = 50, emulated_linear_steps: int = 250) -> np.ndarray:
  """Movie Gen's linear-quadratic schedule: num_steps + 1 times from 0.0 to 1.0, float32.

  With k = num_steps // 2 and h = 1 / emulated_linear_steps, the first k steps are
  exactly those of `linear_schedule(emulated_linear_steps)`: t_i = i * h. The other
  m = num_steps - k steps follow a quadratic in the step index j = i - k,

      t_{k+j} = k * h + h * j + b * j^2,     b = (1 - k * h - m * h) / m^2,

  which starts at the join with the linear slope h (continuous in value and in
  spacing), so strides grow h + b, h + 3b, ... and the last time is exactly 1.0.
  b >= 0 needs emulated_linear_steps >= num_steps; with equality it is the plain
  linear schedule.
  """
  _check_steps("num_steps", num_steps)
  _check_steps("emulated_linear_steps", emulated_linear_steps)
  k = num_steps // 2
  if k >= emulated_linear_steps:
    raise ValueError(
        f"The linear part num_steps // 2 = {k} must be shorter than "
        f"emulated_linear_steps = {emulated_linear_steps}; raise "
        "emulated_linear_steps or lower num_steps."
    )
  if emulated_linear_steps < num_steps:
    raise ValueError(
        f"emulated_linear_steps = {emulated_linear_steps} must be >= num_steps "
        f"= {num_steps} (the schedule emulates a finer linear one); raise it to "
        f"at least {num_steps}."
    )
  h = 1.0 / emulated_linear_steps
  m = num_steps - k
  linear = np.arange(k + 1, dtype=np.float64) / emulated_linear_steps  # [k + 1], t_0..t_k
  j = np.arange(1, m + 1, dtype=np.float64)  # [m]
  b = (1.0 - k * h - m * h) / m**2
  quadratic = k / emulated_linear_steps + h * j + b * j**2  # [m], t_{k+1}..t_n
  times = np.concatenate([linear, quadratic]).astype(np.float32)  # [num_steps + 1]
  times[-1] = 1.0
  return times


SCHEDULES = ("linear", "linear_quadratic")


def make_schedule(name: str, num_steps: int, emulated_linear_steps: int = 250) -> np.ndarray:
  """The schedule `name` ("linear" or "linear_quadratic") with num_steps steps."""
  if name == "linear":
    return linear_schedule(num_steps)
  if name == "linear_quadratic":
    return linear_quadratic_schedule(num_steps, emulated_linear_steps)
  raise ValueError(f"Unknown schedule {name!r}; valid names are {list(SCHEDULES)}.")


# -------------------------------------------------------------------------- solvers


def _times(x: jax.Array, t: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, jnp.float32)  # [B]


def euler_step(
    velocity_fn: VelocityFn, x: jax.Array, t: jax.Array, t_next: jax.Array, *args
) -> jax.Array:
  """One explicit Euler step of dx/dt = v(x, t) from t to t_next (scalars).

  `args` are passed on to velocity_fn(x, t, *args) (e.g. model parameters).
  """
  dt = jnp.asarray(t_next, jnp.float32) - t
  v = velocity_fn(x, _times(x, t), *args)  # [B, ...]
  return x + (dt * v).astype(x.dtype)


def midpoint_step(
    velocity_fn: VelocityFn, x: jax.Array, t: jax.Array, t_next: jax.Array, *args
) -> jax.Array:
  """One explicit midpoint (second-order Runge-Kutta) step: two velocity evaluations."""
  dt = jnp.asarray(t_next, jnp.float32) - t
  v = velocity_fn(x, _times(x, t), *args)  # [B, ...]
  x_mid = x + (0.5 * dt * v).astype(x.dtype)
  v_mid = velocity_fn(x_mid, _times(x, t + 0.5 * dt), *args)  # [B, ...]
  return x + (dt * v_mid).astype(x.dtype)


SOLVERS = {"euler": euler_step, "midpoint": midpoint_step}


@functools.lru_cache(maxsize=16)
def _jitted_step(velocity_fn: VelocityFn, method: str):
  """One compiled step per (velocity_fn, method): repeated solves reuse it."""
  return jax.jit(functools.partial(SOLVERS[method], velocity_fn))


def solve(
    velocity_fn: VelocityFn,
    x0: jax.Array,
    schedule,
    method: str = "euler",
    step_callback: Callable[[int, int], None] | None = None,
    args: tuple = (),
) -> jax.Array:
  """Integrates dx/dt = velocity_fn(x, t) from schedule[0] to schedule[-1].

  Starts from x0 [B, ...] (noise for sampling). The step is jitted once per call,
  with velocity_fn and the method fixed and the two times passed as float32
  arrays, so every interval reuses one compiled step. `step_callback(i, num_steps)`
  is called after each step with i = the number of steps done (1..num_steps),
  e.g. to advance a progress bar. `args` (e.g. parameters and text embeddings) are
  passed to velocity_fn(x, t, *args) as jit arguments, so large arrays are not baked
  into the compiled step as constants.
  """
  if method not in SOLVERS:
    raise ValueError(f"Unknown method {method!r}; valid methods are {list(SOLVERS)}.")
  times = np.asarray(schedule, np.float32)
  if times.ndim != 1 or times.shape[0] < 2:
    raise ValueError(
        "schedule must be a 1-D array of at least 2 times (num_steps + 1); "
        f"got shape {times.shape}. Use make_schedule()."
    )
  step = _jitted_step(velocity_fn, method)
  num_steps = times.shape[0] - 1
  x = x0
  for i in range(num_steps):
    x = step(x, times[i], times[i + 1], *args)
    if step_callback is not None:
      step_callback(i + 1, num_steps)
  return x


# --------------------------------------------------------- classifier-free guidance


def guided_velocity(v_cond: jax.Array, v_uncond: jax.Array, scale: float) -> jax.Array:
  """v_uncond + scale * (v_cond - v_uncond): 1 is conditional, 0 unconditional."""
  return v_uncond + scale * (v_cond - v_uncond)


def cfg_velocity_fn(model_fn: ModelFn, scale: float, num_batched_args: int = 0) -> VelocityFn:
  """Wraps model_fn(x, t, use_condition [B'], *args) into a guided velocity_fn(x, t, *args).

  Both halves run in ONE forward pass on the doubled batch [x; x] with
  use_condition = [True] * B + [False] * B; the first `num_batched_args` args are
  per-example pytrees (conditions [B, ...]) and are doubled with x, the rest (model
  variables) pass unchanged. With scale == 1 guidance is the conditional velocity
  alone, so the unconditional half is skipped. Every guided task samples through
  this one function.
  """
  if not isinstance(scale, numbers.Real):
    raise ValueError(
        f"scale must be a Python number (it decides the batch layout); "
        f"got {type(scale).__name__}."
    )

  if scale == 1.0:

    def conditional(x: jax.Array, t: jax.Array, *args) -> jax.Array:
      return model_fn(x, t, jnp.ones((x.shape[0],), bool), *args)

    return conditional

  def guided(x: jax.Array, t: jax.Array, *args) -> jax.Array:
    batch = x.shape[0]
    double = lambda tree: jax.tree.map(lambda a: jnp.concatenate([a, a]), tree)
    use_condition = jnp.arange(2 * batch) < batch  # [2B]: conditional first
    batched, shared = args[:num_batched_args], args[num_batched_args:]
    v = model_fn(double(x), double(t), use_condition, *double(batched), *shared)  # [2B, ...]
    return guided_velocity(v[:batch], v[batch:], scale)  # [B, ...]

  return guided


def nested_cfg_velocity_fn(
    model_fn: ModelFn, scales: Sequence[float], num_batched_args: int = 0
) -> VelocityFn:
  """Guidance over several conditions, each with its own scale.

  model_fn(x, t, num_kept [B'] int32, *args) reads the first `num_kept` conditions
  of an ordered list (0: none). With scales (s_1, ..., s_K):

      v = v_0 + sum_k s_k (v_k - v_{k-1})

  where v_k keeps the first k conditions: each scale pushes along what its condition
  adds to those before it (a reference image, then the text on top of it, as
  image-and-text guidance does). All K + 1 passes run as one batch [(K + 1) B]; with
  every scale 1 this is the fully conditioned velocity alone. `num_batched_args` as
  in `cfg_velocity_fn`.
  """
  scales = tuple(scales)
  if not scales or not all(isinstance(s, numbers.Real) for s in scales):
    raise ValueError(f"scales must be Python numbers, one per condition; got {scales!r}.")
  levels = len(scales) + 1

  if all(s == 1.0 for s in scales):

    def conditional(x: jax.Array, t: jax.Array, *args) -> jax.Array:
      return model_fn(x, t, jnp.full((x.shape[0],), len(scales), jnp.int32), *args)

    return conditional

  def guided(x: jax.Array, t: jax.Array, *args) -> jax.Array:
    batch = x.shape[0]
    repeat = lambda tree: jax.tree.map(lambda a: jnp.concatenate([a] * levels), tree)
    num_kept = jnp.repeat(jnp.arange(levels, dtype=jnp.int32), batch)  # [(K + 1) B]
    batched, shared = args[:num_batched_args], args[num_batched_args:]
    v = model_fn(repeat(x), repeat(t), num_kept, *repeat(batched), *shared)
    v = v.reshape((levels, batch) + v.shape[1:])  # [K + 1, B, ...]
    out = v[0]
    for k, scale in enumerate(scales, start=1):
      out = out + scale * (v[k] - v[k - 1])
    return out

  return guided
