"""KL and outlier penalty (OPL) of the TAE latent."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mgjax.models.tae import TAE
from mgjax.models.tae_losses import kl_divergence, latent_norm_ratio, outlier_penalty
from tests.tiny_models import perturb, tiny_tae


def test_kl_matches_closed_form():
  mean = jnp.array([[0.0, 1.0], [2.0, -1.0]])
  logvar = jnp.array([[0.0, 0.0], [np.log(4.0), np.log(0.25)]])
  expected_row0 = (0.0 + 0.5) / 2  # 0.5 * (1 + 1 - 1 - 0) for the second element
  expected_row1 = (0.5 * (4 + 4 - 1 - np.log(4)) + 0.5 * (1 + 0.25 - 1 - np.log(0.25))) / 2
  np.testing.assert_allclose(kl_divergence(mean, logvar), [expected_row0, expected_row1], rtol=1e-6)


def test_opl_is_zero_without_outliers_and_positive_with_a_dot():
  latent = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 16))
  assert float(jnp.max(outlier_penalty(latent))) == 0.0
  dotted = latent.at[1, 1, 4, 4].set(100.0)  # one high-norm "latent dot"
  penalty = outlier_penalty(dotted)
  assert float(penalty[0]) == 0.0 and float(penalty[1]) > 0.1
  # The norm ratio, OPL's figure of merit, exposes the dot too.
  ratios = latent_norm_ratio(dotted)
  assert float(ratios[1]) > 5 * float(ratios[0])


def test_opl_value_for_a_known_configuration():
  """One position at distance d from the mean of the rest; others tightly clustered."""
  latent = jnp.zeros((1, 1, 2, 2, 2)).at[0, 0, 0, 0].set(jnp.array([4.0, 0.0]))
  x = latent.reshape(4, 2)
  mean, std_norm = x.mean(0), jnp.linalg.norm(x.std(0))
  expected = jnp.maximum(jnp.linalg.norm(x - mean, axis=1) - 1.0 * std_norm, 0).mean()
  np.testing.assert_allclose(outlier_penalty(latent, r=1.0), [expected], rtol=1e-6)
  assert float(expected) > 0


def test_training_with_opl_lowers_the_latent_norm_ratio():
  """Plant a latent dot by training one latent position's norm up, then train on:
  with OPL the max/mean latent norm ratio falls, with reconstruction alone it stays."""
  model = tiny_tae(mid_attention=False)
  video = jax.random.uniform(jax.random.key(1), (2, 8, 32, 32, 3), minval=-1)
  params = perturb(model.init(jax.random.key(0), video), 0.02)["params"]
  optimizer = optax.adam(2e-3)
  encode = jax.jit(lambda p: model.apply({"params": p}, video, method=TAE.encode)[0])

  def loss(p, plant_weight, opl_weight):
    """Reconstruction, minus the planted position's norm, plus OPL: the weights pick
    the phase, so one compiled step serves all three."""
    reconstruction, latent = model.apply({"params": p}, video)[:2]  # latent [B, 1, 4, 4, C]
    planted = jnp.linalg.norm(latent[:, :, 1, 2], axis=-1).mean()
    return (
        jnp.abs(reconstruction - video).mean()
        - plant_weight * planted
        + opl_weight * outlier_penalty(latent).mean()
    )

  @jax.jit
  def step(params, opt_state, plant_weight, opl_weight):
    grads = jax.grad(loss)(params, plant_weight, opl_weight)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  def train(params, steps, plant_weight=0.0, opl_weight=0.0):
    opt_state = optimizer.init(params)
    for _ in range(steps):
      params, opt_state = step(params, opt_state, plant_weight, opl_weight)
    return params

  ratio = lambda p: float(latent_norm_ratio(encode(p)).mean())
  dotted = train(params, 15, plant_weight=1.0)
  start = ratio(dotted)
  with_opl = train(dotted, 30, opl_weight=10.0)
  without_opl = train(dotted, 30)
  print(
      f"latent max/mean norm ratio: planted {start:.2f}; after 30 steps with OPL "
      f"{ratio(with_opl):.2f}, without {ratio(without_opl):.2f}"
  )
  assert float(outlier_penalty(encode(dotted)).mean()) > 0
  assert ratio(with_opl) < 0.6 * start
  assert ratio(with_opl) < 0.9 * ratio(without_opl)
