"""Training the temporal autoencoder through the one trainer.

Loss = reconstruction (L1 or L2 on pixels)
     + kl_weight * KL(posterior || N(0, 1))
     + opl_weight * OPL(latent mean)                from opl_start_step on
     + perceptual_weight * LPIPS-style distance     (frozen feature net)
     + adversarial_weight * hinge generator loss    from adversarial_start_step on
     + hinge discriminator loss                     (same steps)

The discriminator trains in the same step as the autoencoder: each term stops the
gradient into the parameters it must not move, so one gradient of the sum updates
both networks correctly.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax.data import shapes
from mgjax.data.clips import ClipLoader, ClipSpec, prefetch_batches, read_manifest
from mgjax.data.video import read_clip, write_video
from mgjax.eval.metrics import psnr, ssim
from mgjax.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss
from mgjax.models.perceptual import (PerceptualNetwork, load_perceptual_params,
                                     perceptual_distance)
from mgjax.models.tae import TAE
from mgjax.models.tae_losses import kl_divergence, latent_norm_ratio, outlier_penalty
from mgjax.parallel import distributed
from mgjax.tasks.base import Task


def to_signed(video_uint8: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(video: jax.Array) -> jax.Array:
  """float [-1, 1] -> uint8, rounding like a video encoder input would."""
  return jnp.clip(jnp.round((video + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def make_tae(model_config) -> TAE:
  kwargs = model_config.to_dict()
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  kwargs["channel_multipliers"] = tuple(kwargs["channel_multipliers"])
  kwargs["temporal_downsample"] = tuple(kwargs["temporal_downsample"])
  return TAE(**kwargs)


def prepare_manifest(data_config, workdir: str) -> str:
  """Path of the manifest to train on; makes the shapes data set if it is absent."""
  data_dir = data_config.dir or os.path.join(workdir, "shapes")
  if data_config.name == "shapes":
    s = data_config.shapes
    return distributed.first_process_first("shapes", lambda: shapes.ensure_dataset(
        data_dir, num_videos=s.num_videos, seed=s.seed, fps=s.fps, num_frames=s.num_frames,
        height=s.height, width=s.width, num_images=s.num_images))
  if data_config.name == "manifest":
    return os.path.join(data_dir, "manifest.jsonl")
  raise ValueError(f"Unknown data.name {data_config.name!r}; use 'shapes' or 'manifest'.")


class TAETask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.model = make_tae(config.model)
    loss = config.loss
    self.discriminator = (PatchDiscriminator3D(**loss.discriminator.to_dict())
                          if loss.adversarial_weight > 0 else None)
    self.perceptual = (PerceptualNetwork() if loss.perceptual_weight > 0 else None)
    data = config.data
    self.clip_spec = ClipSpec(num_frames=data.num_frames, height=data.height,
                              width=data.width, fps=data.fps or None,
                              resize=tuple(data.resize) if data.resize else None)
    self._loaders = {}
    self._eval_clips = None

  @functools.cached_property
  def manifest(self) -> str:
    """Made on first use, so restoring a TAE for inference never writes data."""
    return prepare_manifest(self.config.data, self.workdir)

  # ------------------------------------------------------------------ model
  def batch_specs(self):
    """Clip batches, plus image batches (1-frame videos) when data.image_fraction > 0."""
    c = self.config
    specs = {"video": {"video": jax.ShapeDtypeStruct(
        (c.train.batch_size, c.data.num_frames, c.data.height, c.data.width, 3), jnp.uint8)}}
    if c.data.image_fraction > 0:
      specs["image"] = {"video": jax.ShapeDtypeStruct(
          (c.data.image_batch_size, 1, c.data.height, c.data.width, 3), jnp.uint8)}
    return specs

  def init(self, rng):
    video = jnp.zeros((1,) + self.batch_specs()["video"]["video"].shape[1:], jnp.float32)
    tae_rng, disc_rng, perceptual_rng = jax.random.split(rng, 3)
    params = {"tae": self.model.init(tae_rng, video)["params"]}
    frozen = {}
    if self.discriminator is not None:
      params["disc"] = self.discriminator.init(disc_rng, video)["params"]
    if self.perceptual is not None:
      frames = video[:, 0]
      path = self.config.loss.perceptual_params
      if path:
        template = jax.eval_shape(self.perceptual.init, perceptual_rng, frames, frames)
        frozen["perceptual"] = load_perceptual_params(path, template["params"])
      else:
        frozen["perceptual"] = self.perceptual.init(perceptual_rng, frames, frames)["params"]
    return params, frozen

  def loss(self, params, frozen, batch, rng, step):
    cfg = self.config.loss
    x = to_signed(batch["video"])  # [B, T, H, W, 3]
    recon, mean, logvar, _ = self.model.apply({"params": params["tae"]}, x, rng=rng)
    error = recon - x
    if cfg.reconstruction == "l1":
      reconstruction = jnp.abs(error).mean()
    elif cfg.reconstruction == "l2":
      reconstruction = jnp.square(error).mean()
    else:
      raise ValueError(f"loss.reconstruction must be 'l1' or 'l2'; got {cfg.reconstruction!r}")
    kl = kl_divergence(mean, logvar).mean()
    opl = outlier_penalty(mean, cfg.opl_r).mean()
    opl_on = (step >= cfg.opl_start_step).astype(jnp.float32)
    total = reconstruction + cfg.kl_weight * kl + cfg.opl_weight * opl_on * opl
    metrics = {"reconstruction": reconstruction, "kl": kl, "opl": opl,
               "latent_norm_ratio": latent_norm_ratio(mean).mean(),
               "psnr": psnr(jnp.clip(recon, -1, 1), x).mean()}
    if self.perceptual is not None:
      perceptual = perceptual_distance(self.perceptual, frozen["perceptual"], recon, x).mean()
      total += cfg.perceptual_weight * perceptual
      metrics["perceptual"] = perceptual
    if self.discriminator is not None:
      adversarial_on = (step >= cfg.adversarial_start_step).astype(jnp.float32)
      disc_apply = lambda p, v: self.discriminator.apply({"params": p}, v)
      g_loss = hinge_g_loss(disc_apply(jax.lax.stop_gradient(params["disc"]), recon))
      d_loss = hinge_d_loss(disc_apply(params["disc"], x),
                            disc_apply(params["disc"], jax.lax.stop_gradient(recon)))
      total += adversarial_on * (cfg.adversarial_weight * g_loss + d_loss)
      metrics.update(generator_adversarial=g_loss, discriminator=d_loss)
    return total, metrics

  # ------------------------------------------------------------------- data
  def train_batches(self, start_step):
    """Clip batches, or with probability data.image_fraction a batch of single frames.

    Images (1-frame videos) train the spatial layers at a fraction of a clip's cost;
    the paper's TAE likewise trains on images and videos. The choice is a function of
    (seed, step), so resumed runs see the same sequence.
    """
    data, seed = self.config.data, self.config.seed
    records = read_manifest(self.manifest, split="train")
    make = lambda spec, batch_size: ClipLoader(
        records, spec, batch_size, seed=seed, num_workers=data.num_workers,
        max_skip_fraction=data.max_skip_fraction)
    self._loaders = {"video": make(self.clip_spec, self.config.train.batch_size)}
    if data.image_fraction > 0:
      image_spec = dataclasses.replace(self.clip_spec, num_frames=1)
      self._loaders["image"] = make(image_spec, data.image_batch_size)

    def batch(step):
      is_image = np.random.default_rng([seed, step, 1]).random() < data.image_fraction
      return self._loaders["image" if is_image else "video"].batch(step)

    return prefetch_batches(batch, start_step)

  def data_metrics(self):
    skipped = collections.Counter()
    for loader in self._loaders.values():
      skipped.update(loader.skipped)
    return {f"data/skipped_{kind}": count for kind, count in skipped.items()}

  # ------------------------------------------------------------------- eval
  def eval_clips(self) -> np.ndarray:
    """Held-out clips, decoded once: uint8 [N, T, H, W, 3]."""
    if self._eval_clips is None:
      e = self.config.eval
      records = read_manifest(self.manifest, split="eval")[:e.num_clips]
      if not records:
        raise ValueError(f"{self.manifest} has no 'eval' split records to evaluate on.")
      size = (e.height, e.width) if e.height else None
      self._eval_clips = np.stack([
          read_clip(r["video"], e.num_frames, fps=self.config.data.fps or None, size=size)
          for r in records])
    return self._eval_clips

  def evaluate(self, params, frozen, step):
    del frozen
    clips = self.eval_clips()
    reconstruct = jax.jit(self.reconstruct)
    outputs, scores = [], {"psnr": [], "ssim": [], "latent_norm_ratio": []}
    batch_size = self.config.eval.batch_size
    for start in range(0, len(clips), batch_size):
      video = jnp.asarray(clips[start:start + batch_size])
      recon_uint8, latent = reconstruct(params["tae"], video)
      x, y = to_signed(video), to_signed(recon_uint8)
      scores["psnr"].append(np.asarray(psnr(y, x)))
      scores["ssim"].append(np.asarray(ssim(y, x)))
      scores["latent_norm_ratio"].append(np.asarray(latent_norm_ratio(latent)))
      outputs.append(np.asarray(recon_uint8))
    self.write_side_by_side(clips, np.concatenate(outputs), step)
    return {k: float(np.concatenate(v).mean()) for k, v in scores.items()}

  def reconstruct(self, tae_params, video_uint8):
    """Posterior-mean reconstruction: uint8 [B, T, H, W, 3], and the latent mean."""
    x = to_signed(video_uint8)
    mean, _ = self.model.apply({"params": tae_params}, x, method=TAE.encode)
    recon = self.model.apply({"params": tae_params}, mean, x.shape[1], method=TAE.decode)
    return to_uint8(recon), mean

  def write_side_by_side(self, originals, reconstructions, step):
    """Writes input | reconstruction videos to workdir/eval/step_<step>/."""
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(self.workdir, "eval", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    fps = self.config.data.fps or 16
    for i in range(min(self.config.eval.num_videos_to_write, len(originals))):
      pair = np.concatenate([originals[i], reconstructions[i]], axis=2)  # [T, H, 2W, 3]
      write_video(os.path.join(out_dir, f"reconstruction_{i:02d}.mp4"), pair, fps=fps)
    logging.info("Wrote reconstructions to %s", out_dir)
