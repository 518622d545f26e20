"""Latent regularisers of the temporal autoencoder.

The outlier penalty loss (OPL) targets "latent dots": a few spatial positions
whose latent vector has a huge norm, which the decoder turns into bright spots.
It penalises every position whose distance from the latent mean exceeds r times
the norm of the per-channel standard deviation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over all latent elements: [B]."""
  per_element = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return per_element.reshape(per_element.shape[0], -1).mean(axis=1)


def outlier_penalty(latent: jax.Array, r: float = 3.0) -> jax.Array:
  """mean_ij max(||X_ij - mean(X)|| - r ||std(X)||, 0) per example: [B].

  Args:
    latent: [B, T, H, W, C]; i, j run over all (t, h, w) positions of an example,
      mean(X) and std(X) are per-channel statistics over those positions.
    r: how many standard-deviation norms a position may sit from the mean for free.
  """
  b, c = latent.shape[0], latent.shape[-1]
  x = latent.reshape(b, -1, c).astype(jnp.float32)  # [B, P, C]
  mean = x.mean(axis=1, keepdims=True)  # [B, 1, C]
  std_norm = jnp.linalg.norm(x.std(axis=1), axis=-1)  # [B]
  distance = jnp.linalg.norm(x - mean, axis=-1)  # [B, P]
  return jnp.maximum(distance - r * std_norm[:, None], 0.0).mean(axis=1)


def latent_norm_ratio(latent: jax.Array) -> jax.Array:
  """max / mean of the per-position latent norms, per example: [B].

  The OPL figure of merit: latent dots make this ratio large.
  """
  b, c = latent.shape[0], latent.shape[-1]
  norms = jnp.linalg.norm(latent.reshape(b, -1, c).astype(jnp.float32), axis=-1)  # [B, P]
  return norms.max(axis=1) / jnp.maximum(norms.mean(axis=1), 1e-12)
