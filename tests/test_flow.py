"""Flow matching: the path and its target, t sampling, schedules, solvers and CFG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax import flow


def _pair(seed=0, shape=(2, 3, 4, 4, 5)):
  k0, k1 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k0, shape), jax.random.normal(k1, shape)  # [B, T, H, W, C]


# ----------------------------------------------------------------------------- path


def test_path_endpoints():
  x0, x1 = _pair()
  np.testing.assert_allclose(flow.interpolate(x0, x1, jnp.zeros(2)), x0, rtol=0, atol=0)
  np.testing.assert_allclose(
      flow.interpolate(x0, x1, jnp.ones(2)), x1 + flow.SIGMA_MIN * x0, rtol=1e-6, atol=1e-7
  )
  # Per example: example 0 at noise, example 1 at data.
  mixed = flow.interpolate(x0, x1, jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(mixed[0], x0[0], atol=0)
  np.testing.assert_allclose(mixed[1], x1[1] + flow.SIGMA_MIN * x0[1], rtol=1e-6, atol=1e-7)


def test_interpolate_broadcasts_t_per_example():
  x0, x1 = _pair()
  t = jnp.array([0.25, 0.75])
  out = flow.interpolate(x0, x1, t, sigma_min=0.1)
  for b in range(2):
    expected = t[b] * x1[b] + (1 - 0.9 * t[b]) * x0[b]
    np.testing.assert_allclose(out[b], expected, rtol=1e-6, atol=1e-6)


def test_target_is_the_time_derivative_of_the_path():
  x0, x1 = _pair(1)
  t = jnp.array([0.3, 0.8])
  _, dxdt = jax.jvp(lambda t: flow.interpolate(x0, x1, t), (t,), (jnp.ones(2),))
  np.testing.assert_allclose(dxdt, flow.velocity_target(x0, x1), rtol=1e-6, atol=1e-6)
  # A finite difference agrees too (the path is linear in t, so it is exact up to rounding).
  dt = 1e-2
  fd = (flow.interpolate(x0, x1, t + dt) - flow.interpolate(x0, x1, t - dt)) / (2 * dt)
  np.testing.assert_allclose(fd, flow.velocity_target(x0, x1), atol=1e-4)


def test_logit_normal_t_statistics():
  t = flow.sample_t(jax.random.key(0), 100_000)
  assert t.shape == (100_000,) and t.dtype == jnp.float32
  t = np.asarray(t, np.float64)
  assert t.min() > 0 and t.max() < 1
  assert abs(np.median(t) - 0.5) < 0.01
  logit = np.log(t) - np.log1p(-t)
  assert abs(logit.mean()) < 0.02 and abs(logit.std() - 1) < 0.02
  shifted = np.asarray(flow.sample_t(jax.random.key(1), 100_000, mean=1.0, std=0.5), np.float64)
  logit = np.log(shifted) - np.log1p(-shifted)
  assert abs(logit.mean() - 1.0) < 0.01 and abs(logit.std() - 0.5) < 0.01
  # A huge std cannot round a draw onto an endpoint.
  wide = flow.sample_t(jax.random.key(2), 10_000, std=100.0)
  assert float(wide.min()) > 0 and float(wide.max()) < 1


def test_training_example_is_consistent_and_deterministic():
  x1 = jax.random.normal(jax.random.key(3), (64, 2, 4, 4, 8))  # [B, T, H, W, C]
  t, x_t, target = flow.training_example(jax.random.key(4), x1)
  assert t.shape == (64,) and x_t.shape == x1.shape and target.shape == x1.shape
  # Recover the noise from the target; x_t must lie on that noise's path.
  x0 = (x1 - target) / (1 - flow.SIGMA_MIN)
  np.testing.assert_allclose(x_t, flow.interpolate(x0, x1, t), atol=1e-5)
  assert abs(float(x0.mean())) < 0.05 and abs(float(x0.std()) - 1) < 0.05
  again = flow.training_example(jax.random.key(4), x1)
  other = flow.training_example(jax.random.key(5), x1)
  np.testing.assert_array_equal(again[1], x_t)
  assert not np.allclose(other[1], x_t)


def test_drop_condition_rate():
  keep = flow.drop_condition(jax.random.key(0), 100_000, 0.1)
  assert keep.shape == (100_000,) and keep.dtype == jnp.bool_
  assert abs(float(keep.mean()) - 0.9) < 0.005
  assert bool(flow.drop_condition(jax.random.key(1), 1000, 0.0).all())
  assert not bool(flow.drop_condition(jax.random.key(1), 1000, 1.0).any())
  assert flow.drop_condition(jax.random.key(2), (4, 3), 0.5).shape == (4, 3)


def test_velocity_loss():
  pred = jnp.array([[1.0, 3.0], [0.0, 0.0]])
  target = jnp.array([[0.0, 1.0], [0.0, 2.0]])
  loss = flow.velocity_loss(pred, target)  # squared errors 1, 4, 0, 4
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, 9 / 4, rtol=1e-6)
  np.testing.assert_allclose(flow.velocity_loss(pred, target, jnp.array([1.0, 0.0])), 2.5)
  np.testing.assert_allclose(
      flow.velocity_loss(pred, target, jnp.array([1.0, 3.0])), (2.5 + 3 * 2.0) / 4, rtol=1e-6
  )
  np.testing.assert_allclose(flow.velocity_loss(pred, target, jnp.ones(2)), loss, rtol=1e-6)
  assert float(flow.velocity_loss(pred, target, jnp.zeros(2))) == 0.0
  bf16 = flow.velocity_loss(pred.astype(jnp.bfloat16), target.astype(jnp.bfloat16))
  assert bf16.dtype == jnp.float32


# ------------------------------------------------------------------------ schedules


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 10, 50, 100])
def test_schedules_run_from_zero_to_one_strictly_increasing(num_steps):
  schedules = [
      flow.linear_schedule(num_steps),
      flow.linear_quadratic_schedule(num_steps, max(num_steps, 250)),
      flow.linear_quadratic_schedule(num_steps, num_steps),
      flow.make_schedule("linear_quadratic", num_steps, 4 * num_steps),
  ]
  for times in schedules:
    assert isinstance(times, np.ndarray) and times.dtype == np.float32
    assert times.shape == (num_steps + 1,)
    assert times[0] == 0.0 and times[-1] == 1.0
    assert np.all(np.diff(times) > 0)
  np.testing.assert_array_equal(
      flow.make_schedule("linear", num_steps), flow.linear_schedule(num_steps)
  )


def test_linear_quadratic_matches_linear_250_then_grows_quadratically():
  lq = flow.linear_quadratic_schedule()  # 50 steps emulating 250
  linear = flow.linear_schedule(250)
  assert lq.shape == (51,)
  np.testing.assert_array_equal(lq[:26], linear[:26])  # t_0..t_25, 25 linear steps
  assert lq[25] == np.float32(0.1) and lq[26] > linear[26]
  steps = np.diff(lq.astype(np.float64))
  np.testing.assert_allclose(steps[:25], 1 / 250, rtol=1e-5)
  # Strides grow by a constant second difference after the join (positions quadratic)...
  second = np.diff(steps[25:])
  np.testing.assert_allclose(second, second.mean(), atol=1e-6)
  assert second.mean() > 0
  # ...starting from the linear stride: the first quadratic stride is h + b = 0.004 + 0.00128.
  np.testing.assert_allclose(steps[25], 0.004 + 0.8 / 625, rtol=1e-4)
  # With as many emulated steps as real ones it is the linear schedule.
  np.testing.assert_allclose(
      flow.linear_quadratic_schedule(20, 20), flow.linear_schedule(20), atol=1e-7
  )


# -------------------------------------------------------------------------- solvers


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_constant_field_is_integrated_exactly(method):
  x0, x1 = _pair(2)
  velocity = lambda x, t: x1 - x0
  out = flow.solve(velocity, x0, flow.linear_quadratic_schedule(10, 40), method)
  np.testing.assert_allclose(out, x1, atol=1e-5)


def _exponential_error(method, num_steps, rate=1.0):
  """dx/dt = rate * x from t = 0 to 1; exact x(1) = x(0) * exp(rate)."""
  x0 = jnp.ones((1, 3)) * jnp.array([1.0, -2.0, 0.5])
  out = flow.solve(lambda x, t: rate * x, x0, flow.linear_schedule(num_steps), method)
  return float(jnp.max(jnp.abs(out - x0 * np.exp(rate))))


def test_midpoint_is_second_order_and_euler_first_order():
  euler = [_exponential_error("euler", n) for n in (20, 40)]
  midpoint = [_exponential_error("midpoint", n) for n in (20, 40)]
  assert midpoint[0] < euler[0] / 20
  assert 1.8 < euler[0] / euler[1] < 2.2  # error ~ dt
  assert 3.5 < midpoint[0] / midpoint[1] < 4.5  # error ~ dt^2


def test_single_steps_match_their_formulas():
  x = jnp.array([[1.0, 2.0]])
  velocity = lambda x, t: x * t[:, None] + 1.0  # t arrives as [B]
  np.testing.assert_allclose(
      flow.euler_step(velocity, x, 0.5, 0.7), x + 0.2 * (0.5 * x + 1), rtol=1e-6
  )
  x_mid = x + 0.1 * (0.5 * x + 1)
  np.testing.assert_allclose(
      flow.midpoint_step(velocity, x, 0.5, 0.7), x + 0.2 * (0.6 * x_mid + 1), rtol=1e-6
  )


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_solve_with_the_true_velocity_maps_noise_to_data(method):
  """For fixed data x1 the field that transports x0 along its path is
  v(x, t) = x1 - (1 - s) * x0(x, t), with x0(x, t) = (x - t x1) / (1 - (1 - s) t)."""
  x0, x1 = _pair(3)
  s = flow.SIGMA_MIN

  def velocity(x, t):
    t = t.reshape(-1, 1, 1, 1, 1)
    return x1 - (1 - s) * (x - t * x1) / (1 - (1 - s) * t)

  out = flow.solve(velocity, x0, flow.make_schedule("linear_quadratic", 50), method)
  np.testing.assert_allclose(out, x1 + s * x0, atol=1e-4)


def test_solve_compiles_the_step_once_and_reports_progress():
  traces, progress = [], []

  def velocity(x, t):
    traces.append(t.shape)  # runs only while tracing
    return -x

  flow.solve(
      velocity,
      jnp.ones((2, 3)),
      flow.linear_quadratic_schedule(12, 60),
      "midpoint",
      step_callback=lambda i, n: progress.append((i, n)),
  )
  assert traces == [(2,), (2,)]  # one trace of the step, two evaluations inside it
  assert progress == [(i, 12) for i in range(1, 13)]


def test_solve_passes_args_as_arguments_not_constants():
  """Parameters reach the velocity as traced jit arguments (not baked-in constants)."""
  seen = []

  def velocity(x, t, rate):
    seen.append(isinstance(rate, jax.core.Tracer))
    return rate * x

  out = flow.solve(
      velocity, jnp.ones((2, 3)), flow.linear_schedule(10), "euler", args=(jnp.float32(-1.0),)
  )
  assert seen == [True]
  np.testing.assert_allclose(out, np.full((2, 3), 0.9**10), rtol=1e-5)
  guided = flow.cfg_velocity_fn(lambda x, t, use, rate: rate * x, 3.0)
  np.testing.assert_allclose(guided(jnp.ones((1, 2)), jnp.zeros(1), 2.0), 2.0 * np.ones((1, 2)))


# --------------------------------------------------------- classifier-free guidance


def _toy_model(calls):
  """v = x * t + (2 if conditioned else -1): conditional and unconditional differ."""

  def model_fn(x, t, use_condition):
    calls.append((x.shape[0], np.asarray(use_condition).tolist()))
    bias = jnp.where(use_condition, 2.0, -1.0).reshape(-1, 1, 1)  # [B', 1, 1]
    return x * t.reshape(-1, 1, 1) + bias

  return model_fn


def test_guided_velocity_scales():
  v_cond, v_uncond = jnp.array([3.0, -1.0]), jnp.array([1.0, 1.0])
  np.testing.assert_allclose(flow.guided_velocity(v_cond, v_uncond, 1.0), v_cond)
  np.testing.assert_allclose(flow.guided_velocity(v_cond, v_uncond, 0.0), v_uncond)
  np.testing.assert_allclose(flow.guided_velocity(v_cond, v_uncond, 7.5), [16.0, -14.0])


@pytest.mark.parametrize("scale", [0.0, 1.0, 6.0])
def test_batched_cfg_equals_separate_calls(scale):
  x = jax.random.normal(jax.random.key(0), (3, 2, 4))
  t = jnp.array([0.1, 0.5, 0.9])
  calls = []
  model_fn = _toy_model(calls)
  v = flow.cfg_velocity_fn(model_fn, scale)(x, t)
  v_cond = model_fn(x, t, jnp.ones(3, bool))
  v_uncond = model_fn(x, t, jnp.zeros(3, bool))
  np.testing.assert_allclose(v, flow.guided_velocity(v_cond, v_uncond, scale), rtol=1e-6)
  if scale == 1.0:
    np.testing.assert_allclose(v, v_cond, rtol=1e-6)
    assert calls[0] == (3, [True] * 3)  # the unconditional half is skipped
  else:
    assert calls[0] == (6, [True] * 3 + [False] * 3)  # one forward on the doubled batch
  if scale == 0.0:
    np.testing.assert_allclose(v, v_uncond, rtol=1e-6)


def test_cfg_velocity_fn_runs_inside_solve():
  x0 = jnp.ones((2, 1, 1))
  out = flow.solve(
      flow.cfg_velocity_fn(
          lambda x, t, c: jnp.where(c, 1.0, 0.0)[:, None, None] * jnp.ones_like(x), 3.0
      ),
      x0,
      flow.linear_schedule(4),
  )
  np.testing.assert_allclose(out, x0 + 3.0, rtol=1e-6)  # guided velocity 0 + 3 * (1 - 0)


# ---------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: flow.drop_condition(jax.random.key(0), 4, 1.5), "drop_prob must be in"),
        (lambda: flow.drop_condition(jax.random.key(0), 4, -0.1), "drop_prob must be in"),
        (lambda: flow.sample_t(jax.random.key(0), 0), "batch_size must be a positive int"),
        (lambda: flow.sample_t(jax.random.key(0), 4, std=-1.0), "std"),
        (lambda: flow.linear_schedule(0), "num_steps must be an int >= 1"),
        (lambda: flow.linear_schedule(2.5), "num_steps must be an int >= 1"),
        (lambda: flow.linear_quadratic_schedule(50, 40), "emulated_linear_steps = 40 must be >="),
        (lambda: flow.linear_quadratic_schedule(50, 25), "num_steps // 2 = 25 must be shorter"),
        (lambda: flow.linear_quadratic_schedule(10, 0), "emulated_linear_steps must be an int"),
        (
            lambda: flow.make_schedule("cosine", 10),
            r"valid names are \['linear', " r"'linear_quadratic'\]",
        ),
        (
            lambda: flow.solve(lambda x, t: x, jnp.ones((1, 2)), flow.linear_schedule(2), "rk4"),
            r"valid methods are \['euler', 'midpoint'\]",
        ),
        (lambda: flow.solve(lambda x, t: x, jnp.ones((1, 2)), [0.0], "euler"), "at least 2 times"),
        (
            lambda: flow.interpolate(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(3)),
            r"shape \[B\] = \[2\]",
        ),
        (lambda: flow.interpolate(jnp.ones((2, 3)), jnp.ones((2, 4)), jnp.ones(2)), "same shape"),
        (
            lambda: flow.velocity_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones(3)),
            r"weight must have shape \[B\] = \[2\]",
        ),
        (
            lambda: flow.training_example(jax.random.key(0), jnp.ones((2, 3), jnp.int32)),
            "floating-point",
        ),
        (
            lambda: flow.cfg_velocity_fn(lambda x, t, c: x, jnp.array(2.0)),
            "scale must be a Python number",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
