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

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax.data import sources
from mgjax.data.examples import ExampleSpec, LoadExample
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.records import Records
from mgjax.data.video import read_clip, write_video
from mgjax.eval.metrics import psnr, ssim
from mgjax.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss
from mgjax.models.perceptual import PerceptualNetwork, perceptual_distance
from mgjax.models.tae import TAE
from mgjax.models.tae_losses import kl_divergence, latent_norm_ratio, outlier_penalty
from mgjax.tasks.base import Task
from mgjax.tasks.outputs import Sample
from mgjax.tasks.perceptual_weights import load_perceptual_params


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


def hold_out(records: Records, fraction: float) -> tuple[Records, list[dict]]:
  """(records without the held-out videos, the held-out video records).

  `fraction` of the video records (rounded, at least one, never all of them) is held
  out, chosen by a hash of each file's name: the same on every process and every run,
  whatever the manifest's order or folder. Nothing is held out from fewer than two
  videos. Every record of a held-out file is removed, images included.
  """
  videos = [r for r in records.records if r.get("video")]
  if len(videos) < 2:
    return records, []
  count = min(max(1, round(fraction * len(videos))), len(videos) - 1)
  rank = lambda r: (hashlib.sha1(os.path.basename(r["video"]).encode()).hexdigest(), r["video"])
  held = sorted(videos, key=rank)[:count]
  paths = {r["video"] for r in held}
  kept = [r for r in records.records if r.get("video") not in paths]
  return Records(kept, records.skipped), held


class TAETask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.model = make_tae(config.model)
    loss = config.loss
    self.discriminator = (
        PatchDiscriminator3D(**loss.discriminator.to_dict())
        if loss.adversarial_weight > 0
        else None
    )
    self.perceptual = PerceptualNetwork() if loss.perceptual_weight > 0 else None
    data = config.data
    self.clip_spec = ExampleSpec(
        num_frames=data.num_frames,
        height=data.height,
        width=data.width,
        fps=data.fps or None,
        min_fps=data.min_fps,
        scale_to=tuple(data.scale_to) if data.scale_to else None,
    )
    self._eval_clips = None
    self._splits = None  # (train Records, eval video records), read once
    self.held_out = False  # whether the eval videos are held-out training videos
    self._warned_no_eval = False

  # ------------------------------------------------------------------ model
  def batch_specs(self):
    """Clip batches, plus image batches (1-frame videos) when data.image_fraction > 0."""
    c = self.config
    specs = {
        "video": {
            "video": jax.ShapeDtypeStruct(
                (c.train.batch_size, c.data.num_frames, c.data.height, c.data.width, 3), jnp.uint8
            )
        }
    }
    if c.data.image_fraction > 0:
      specs["image"] = {
          "video": jax.ShapeDtypeStruct(
              (c.data.image_batch_size, 1, c.data.height, c.data.width, 3), jnp.uint8
          )
      }
    return specs

  def init(self, rng):
    video = jnp.zeros((1,) + self.batch_specs()["video"]["video"].shape[1:], jnp.float32)
    tae_rng, disc_rng, perceptual_rng = jax.random.split(rng, 3)
    params = {"tae": self.model.init(tae_rng, video)["params"]}
    frozen = {}
    if self.discriminator is not None:
      params["disc"] = self.discriminator.init(disc_rng, video)["params"]
    if self.perceptual is not None:
      # Random features; a loss.perceptual_params file replaces them on the host
      # after init (`pretrained_weights`), so no weight is compiled into init.
      frames = video[:, 0]
      frozen["perceptual"] = self.perceptual.init(perceptual_rng, frames, frames)["params"]
    return params, frozen

  def pretrained_weights(self):
    """The perceptual network's weights from loss.perceptual_params, when given."""
    path = self.config.loss.perceptual_params
    if self.perceptual is None or not path:
      return {}
    frames = jax.ShapeDtypeStruct(
        (1, self.config.data.height, self.config.data.width, 3), jnp.float32
    )
    template = jax.eval_shape(self.perceptual.init, jax.random.key(0), frames, frames)
    return {"frozen": {"perceptual": load_perceptual_params(path, template["params"])}}

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
    metrics = {
        "reconstruction": reconstruction,
        "kl": kl,
        "opl": opl,
        "latent_norm_ratio": latent_norm_ratio(mean).mean(),
        "psnr": psnr(jnp.clip(recon, -1, 1), x).mean(),
    }
    if self.perceptual is not None:
      perceptual = perceptual_distance(self.perceptual, frozen["perceptual"], recon, x).mean()
      total += cfg.perceptual_weight * perceptual
      metrics["perceptual"] = perceptual
    if self.discriminator is not None:
      adversarial_on = (step >= cfg.adversarial_start_step).astype(jnp.float32)
      disc_apply = lambda p, v: self.discriminator.apply({"params": p}, v)
      g_loss = hinge_g_loss(disc_apply(jax.lax.stop_gradient(params["disc"]), recon))
      d_loss = hinge_d_loss(
          disc_apply(params["disc"], x), disc_apply(params["disc"], jax.lax.stop_gradient(recon))
      )
      total += adversarial_on * (cfg.adversarial_weight * g_loss + d_loss)
      metrics.update(generator_adversarial=g_loss, discriminator=d_loss)
    return total, metrics

  # ------------------------------------------------------------------- data
  def train_batches(self, start_step, rows_of):
    """Clip batches and, for a data.image_fraction share of steps, single frames.

    Images (1-frame videos) train the spatial layers at a fraction of a clip's cost;
    the paper's TAE likewise trains on images and videos. Stills come from the image
    records and from random frames of the videos.
    """
    data = self.config.data
    records, _ = self.splits()  # without the videos held out for evaluation
    videos = [r for r in records.records if r.get("video")]
    streams = [
        Stream(
            "video",
            len(videos),
            LoadExample(videos, self.clip_spec),
            self.config.train.batch_size,
            1.0 - data.image_fraction,
        )
    ]
    if data.image_fraction > 0:
      still = dataclasses.replace(self.clip_spec, num_frames=1)
      streams.append(
          Stream(
              "image",
              len(records.records),
              LoadExample(records.records, still),
              data.image_batch_size,
              data.image_fraction,
          )
      )
    return DataIterator(
        streams,
        sources.loader_options(data, self.config.seed),
        lambda batch: {"video": batch["pixels"]},
        rows_of=rows_of,
        skipped_records=records.skipped,
        num_records=len(records.records) + sum(records.skipped.values()),
        start=start_step,
    )

  # ----------------------------------------------------------------- splits
  def prepare(self):
    """Checks the inputs before the model is built: the perceptual weights file, and
    that there are videos to evaluate on; without any, warns that evaluation is
    skipped (rather than failing in the last evaluation, after all the training)."""
    path = self.config.loss.perceptual_params
    if self.perceptual is not None and path and not os.path.exists(path):
      raise FileNotFoundError(
          f"loss.perceptual_params={path!r} does not exist; give an .npz written by "
          "mgjax.tasks.perceptual_weights.save_perceptual_params, or '' for random "
          "perceptual features."
      )
    if self.perceptual is None and path:
      logging.warning(
          "loss.perceptual_params=%r is not used: loss.perceptual_weight=0 turns the "
          "perceptual loss off.",
          path,
      )
    train, eval_videos = self.splits()
    if not eval_videos:
      self._warn_no_eval()
    elif self.held_out:
      logging.info(
          "Evaluating on %d of the training videos, held out from training "
          "(data.eval_holdout_fraction=%g); %d training records remain.",
          len(eval_videos),
          self.config.data.eval_holdout_fraction,
          len(train.records),
      )

  def splits(self) -> tuple[Records, list[dict]]:
    """(training records, eval video records), read once.

    The eval records are the 'eval' split's videos. When there are none and
    data.eval_holdout_fraction > 0, that share of the training videos is held out
    (`hold_out`): evaluated on and never trained on.
    """
    if self._splits is None:
      data = self.config.data
      fraction = float(data.get("eval_holdout_fraction", 0.0))
      if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.eval_holdout_fraction={fraction} must be in [0, 1).")
      train = sources.read_records(data, self.workdir, "train")
      eval_videos = [
          r for r in sources.read_records(data, self.workdir, "eval").records if r.get("video")
      ]
      self.held_out = not eval_videos and fraction > 0
      if self.held_out:
        train, eval_videos = hold_out(train, fraction)
      self._splits = (train, eval_videos)
    return self._splits

  def _no_eval_message(self) -> str:
    data = self.config.data
    if data.get("eval_holdout_fraction", 0.0) > 0:
      return (
          f"data.name={data.name!r} has no 'eval' split videos and too few training "
          "videos to hold some out (data.eval_holdout_fraction); add videos, or give "
          'some manifest records "split": "eval".'
      )
    return (
        f"data.name={data.name!r} has no 'eval' split videos to evaluate on; give some "
        'manifest records "split": "eval", or hold out a share of the training videos '
        "with --config.data.eval_holdout_fraction=0.05."
    )

  def _warn_no_eval(self):
    if not self._warned_no_eval:
      logging.warning("%s Evaluation is skipped.", self._no_eval_message())
      self._warned_no_eval = True

  # ------------------------------------------------------------------- eval
  def eval_clips(self) -> np.ndarray:
    """Held-out clips, decoded once: uint8 [N, T, H, W, 3]."""
    if self._eval_clips is None:
      e = self.config.eval
      records = self.splits()[1][: e.num_clips]
      if not records:
        raise ValueError(self._no_eval_message())
      size = (e.height, e.width) if e.height else None
      self._eval_clips = np.stack(
          [
              read_clip(r["video"], e.num_frames, fps=self.config.data.fps or None, size=size)
              for r in records
          ]
      )
    return self._eval_clips

  def evaluate(self, params, frozen, step):
    del frozen
    if not self.splits()[1]:
      self._warn_no_eval()
      return {}
    clips = self.eval_clips()
    reconstruct = jax.jit(self.reconstruct)
    outputs, scores = [], {"psnr": [], "ssim": [], "latent_norm_ratio": []}
    batch_size = self.config.eval.batch_size
    for start in range(0, len(clips), batch_size):
      video = jnp.asarray(clips[start : start + batch_size])
      recon_uint8, latent = reconstruct(params["tae"], video)
      x, y = to_signed(video), to_signed(recon_uint8)
      scores["psnr"].append(np.asarray(psnr(y, x)))
      scores["ssim"].append(np.asarray(ssim(y, x)))
      scores["latent_norm_ratio"].append(np.asarray(latent_norm_ratio(latent)))
      outputs.append(np.asarray(recon_uint8))
    self.write_side_by_side(clips, np.concatenate(outputs), step)
    return {k: float(np.concatenate(v).mean()) for k, v in scores.items()}

  def preview(self, params, frozen, request):
    """The first held-out clip next to its reconstruction: [T, H, 2W, 3]."""
    del frozen
    if request.prompts:
      raise ValueError(
          "A TAE run reconstructs a held-out clip and takes no prompt; call "
          "sample_video() without one."
      )
    clip = self.eval_clips()[:1]  # [1, T, H, W, 3]
    reconstruction, _ = jax.jit(self.reconstruct)(params["tae"], clip)
    pair = np.concatenate([clip[0], np.asarray(reconstruction)[0]], axis=2)
    return Sample("reconstruction", video=pair, fps=self.config.data.fps or 16)

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
