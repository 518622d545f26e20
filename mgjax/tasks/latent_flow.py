"""The base of every family that trains a flow model on a codec's latents.

T2V, audio, and the post-trained variants (upsampler, personalization, editing)
share all of this; a subclass supplies its conditions and its velocity function:

  codec          the first-stage model (`codec_class` from `config.<codec_section>.workdir`,
                 default <workdir>/<codec_default_dir>), trained first as a declared
                 stage when `config.<codec_section>.train_config` names its config;
  statistics     per-channel (mean, std) of the training latents, in
                 <workdir>/<stats_dir>/stats.json: the flow runs on standardised latents;
  loss           X_t = t X1 + (1 - (1 - sigma_min) t) X0, t ~ logit-normal(t_mean,
                 t_std), MSE against X1 - (1 - sigma_min) X0 (mgjax/flow.py); each
                 condition of `condition_dropout()` dropped on its own (the null
                 conditions guidance samples with); `frame_mask` can take frames out
                 of the loss (frames given as context);
  guidance       `flow.cfg_velocity_fn` over `guided_model_fn`, one compiled function
                 per scale;
  sampling       `sample_latents`: noise -> the config's schedule -> `integrate` (an
                 ODE solve; long-form samplers override it) -> latents at codec scale.

The random stream of the loss is split once into 1 + len(conditions) (+ 1 with a
frame mask) keys -- path, each condition's dropout, the mask -- so a subclass's
losses do not depend on how the base is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ClassVar

import jax
import ml_collections
from absl import logging

from mgjax import configs, flow, runs
from mgjax import recipe as recipe_lib
from mgjax.tasks.base import Stage, Task
from mgjax.tasks.codecs import ChannelStats, LatentCodec


class LatentFlowTask(Task):
  codec_class: ClassVar[type[LatentCodec]]
  codec_section: ClassVar[
      str
  ]  # config section of the codec run: workdir, train_config, train_steps
  codec_default_dir: ClassVar[str]  # its workdir under ours when the section names none
  codec_stage_name: ClassVar[str]  # for the logs
  default_codec_config: ClassVar[str]  # shapes for `for_shapes` when nothing else says
  stats_dir: ClassVar[str] = "latents"  # <workdir>/<stats_dir>/stats.json
  num_batched_guidance_args: ClassVar[int] = 1  # leading args of guided_model_fn per example
  uses_frame_mask: ClassVar[bool] = False

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      codec: LatentCodec | None = None,
      stats: ChannelStats | None = None,
  ):
    super().__init__(config, workdir)
    self._codec = codec
    self._stats = stats
    self._guided: dict[float, flow.VelocityFn] = {}

  @classmethod
  def for_shapes(cls, config, codec_config: ml_collections.ConfigDict | None = None, **kwargs):
    """Shapes from `codec_config` (a run config), else the codec run's saved config
    when it exists, else the stage's train_config, else `default_codec_config`;
    statistics 0 / 1, which change no cost."""
    del kwargs
    section = config[cls.codec_section]
    if codec_config is None:
      if section.workdir and runs.has_run(section.workdir):
        codec_config = runs.read_config(section.workdir)
      else:
        codec_config = configs.load_config(section.train_config or cls.default_codec_config)
    codec = cls.codec_class.abstract(codec_config)
    return cls(config, "", codec=codec, stats=ChannelStats.identity(codec.latent_channels))

  def check_mesh(self, mesh):
    """`tensor` must split the transformer's heads and MLP width (model.num_heads,
    model.mlp_dim); subclasses add their sequence checks."""
    model, tensor = self.config.get("model", {}), mesh.shape["tensor"]
    if "num_heads" not in model:  # not a transformer of heads and MLPs
      return
    for name, size in (("num_heads", model.num_heads), ("mlp_dim", model.mlp_dim)):
      if size % tensor:
        raise ValueError(
            f"Mesh axis tensor={tensor} does not divide model.{name}={size}; "
            f"use a tensor size that divides {name}."
        )

  # ----------------------------------------------------------------- codec
  @property
  def codec_workdir(self) -> str:
    return self.config[self.codec_section].workdir or os.path.join(
        self.workdir, self.codec_default_dir
    )

  @property
  def codec(self) -> LatentCodec:
    """The trained codec (its config now, its weights on first encode/decode)."""
    if self._codec is None:
      try:
        self._codec = self.codec_class.from_workdir(self.codec_workdir)
      except runs.NoRunError:
        hint, section = self.codec_class.train_hint, self.codec_section
        raise FileNotFoundError(
            f"No trained {self.codec_stage_name} in {self.codec_workdir} (config.{section}."
            f"workdir). Train one with `python -m mgjax.train --config={hint} --workdir="
            f"{self.codec_workdir}`, or set --config.{section}.train_config={hint} to train "
            "it first."
        ) from None
    return self._codec

  def stages(self) -> list[Stage]:
    """The codec's run (when `train_config` names it), then train.recipe's stages."""
    recipe = recipe_lib.recipe_stages(
        self.config, self.workdir, self.codec_section, self.codec_workdir
    )
    section = self.config[self.codec_section]
    if not section.train_config:
      return recipe
    config = configs.load_config(section.train_config)
    with config.unlocked():
      config.train.num_steps = section.train_steps or config.train.num_steps
      self.configure_codec_stage(config)
    return [Stage(self.codec_stage_name, self.codec_workdir, config)] + recipe

  def configure_codec_stage(self, config: ml_collections.ConfigDict) -> None:
    """Edits the codec run's config (unlocked) before it trains, e.g. the same data."""
    del config

  # ------------------------------------------------------------ statistics
  def stats(self) -> ChannelStats:
    """Per-channel latent statistics of the training set, saved for sampling; made
    again when the codec that made them changed (a new TAE re-encodes the latents)."""
    if self._stats is None:
      path = os.path.join(self.workdir, self.stats_dir, "stats.json")
      saved = ChannelStats.load(path) if os.path.exists(path) else None
      codec = self.codec.fingerprint()
      if saved is not None and saved.codec not in (None, codec):
        logging.warning("Latent statistics in %s are of another codec; computing them again.",
                        path)  # fmt: skip
        saved = None
      if saved is None:
        stats = self.compute_stats()
        saved = ChannelStats(stats.mean, stats.std, codec)
        if jax.process_index() == 0:
          saved.save(path)
      self._stats = saved
    return self._stats

  def compute_stats(self) -> ChannelStats:
    """Statistics of the training latents (the subclass knows where they are)."""
    raise NotImplementedError

  # ------------------------------------------------------------------ loss
  def condition_dropout(self) -> dict[str, float]:
    """{condition: drop probability}, in the order their dropout keys are drawn."""
    return {}

  def frame_mask(self, rng: jax.Array, x1: jax.Array, batch) -> tuple[jax.Array, dict, dict]:
    """(loss mask broadcastable to x1, 1 = in the loss; extra conditions for
    `velocity`; metrics) of standardised latents x1 and their batch, when
    `uses_frame_mask`."""
    raise NotImplementedError

  def velocity(self, params, frozen, x_t, t, conditions: dict, keep: dict) -> jax.Array:
    """The model's velocity for standardised latents x_t [B, ...] at times t [B];
    `conditions` is the batch (plus `frame_mask`'s extras), `keep` {condition: bool
    [B]} (False: that condition's null)."""
    raise NotImplementedError

  def loss(self, params, frozen, batch, rng, step):
    del step
    f = self.config.flow
    x1 = self.stats().standardise(batch["latent"])  # [B, ...]
    drops = self.condition_dropout()
    rngs = jax.random.split(rng, 1 + len(drops) + int(self.uses_frame_mask))
    keep = {
        name: flow.drop_condition(key, x1.shape[0], prob)  # [B]
        for (name, prob), key in zip(drops.items(), rngs[1:])
    }
    conditions, mask, metrics = dict(batch), None, {}
    if self.uses_frame_mask:
      mask, extra, metrics = self.frame_mask(rngs[-1], x1, batch)
      conditions.update(extra)
    t, x_t, target = flow.training_example(rngs[0], x1, f.sigma_min, f.t_mean, f.t_std)
    prediction = self.velocity(params, frozen, x_t, t, conditions, keep)
    loss = flow.velocity_loss(prediction, target, frame_mask=mask)
    return loss, {"velocity_mse": loss, **metrics}

  # -------------------------------------------------------------- sampling
  def guided_model_fn(self, x, t, use_condition, *args) -> jax.Array:
    """model_fn of `flow.cfg_velocity_fn`: the first `num_batched_guidance_args` args
    are per-example conditions, the rest model variables."""
    raise NotImplementedError

  def guided_velocity(self, cfg_scale: float) -> flow.VelocityFn:
    """velocity_fn(x, t, *args) with guidance; one per scale, so sampling again reuses
    the compiled step."""
    cfg_scale = float(cfg_scale)
    if cfg_scale not in self._guided:
      self._guided[cfg_scale] = flow.cfg_velocity_fn(
          self.guided_model_fn, cfg_scale, self.num_batched_guidance_args
      )
    return self._guided[cfg_scale]

  def integrate(self, velocity_fn, noise, times, method, step_callback, args) -> jax.Array:
    """Noise -> standardised latents; long-form samplers override this."""
    return flow.solve(velocity_fn, noise, times, method, step_callback, args=args)

  def sample_latents(
      self,
      args: tuple,
      latent_shape: tuple[int, ...],
      *,
      num_examples: int,
      num_steps: int,
      schedule: str,
      cfg_scale: float,
      seed: int,
      method: str = "euler",
      step_callback: Callable[[int, int], None] | None = None,
  ) -> jax.Array:
    """Latents [N, *latent_shape] at codec scale, integrated from noise with guidance;
    `args` are guided_model_fn's (conditions first, then variables)."""
    stats = self.stats()  # host constants: loaded (or computed) before any tracing
    noise = jax.random.normal(jax.random.key(seed), (num_examples,) + tuple(latent_shape))
    times = flow.make_schedule(
        schedule, num_steps, self.config.flow.get("emulated_linear_steps", 250)
    )
    z = self.integrate(self.guided_velocity(cfg_scale), noise, times, method, step_callback, args)
    return stats.unstandardise(z)

  def eval_dir(self, step: int) -> str:
    """Where evaluation at `step` writes its samples."""
    return os.path.join(self.workdir, "samples", f"step_{step}")

  def sampler_settings(self, request, defaults) -> dict:
    """num_steps / schedule / method / cfg_scale of a request, the unset ones from
    `defaults` (a config section with sample_steps or num_steps, schedule, method,
    cfg_scale)."""
    steps = defaults.get("sample_steps", defaults.get("num_steps"))
    return dict(
        num_steps=request.num_steps or steps,
        schedule=request.schedule or defaults.get("schedule", "linear"),
        method=request.method or defaults.get("method", "euler"),
        cfg_scale=defaults.cfg_scale if request.cfg_scale is None else request.cfg_scale,
    )
