"""Text-to-image/video flow matching on TAE latents: the Movie Gen transformer's task.

The DiT learns the velocity from noise to TAE latents, conditioned on the prompt
(every text encoder of `config.text`, mgjax/text/conditioning.py) and the flow time.
Latents of the training data are computed once with a trained TAE
(`config.tae.workdir`) and cached in <workdir>/latents; each batch comes from one
aspect-ratio x duration bucket (`mgjax/data/buckets.py`), images being 1-frame
latents in the same model. Latents are standardised per channel with statistics of
the training set, stored beside the cache so sampling can undo it.
"""

from __future__ import annotations

import collections
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mgjax import configs, flow
from mgjax.checkpoint import Checkpointer
from mgjax.data import latents as latents_lib
from mgjax.data.buckets import Bucket, buckets_from_config
from mgjax.data.clips import read_manifest
from mgjax.data.shapes import IMAGES_MANIFEST
from mgjax.data.video import write_video
from mgjax.models.dit import VideoDiT
from mgjax.models.tae import TAE
from mgjax.models.tae_tiling import tiled_decode
from mgjax.parallel import distributed
from mgjax.tasks.base import Task
from mgjax.tasks.tae import make_tae, prepare_manifest, to_signed, to_uint8
from mgjax.text.conditioning import TextConditioner


class T2VTask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if config.train.batch_size:
      raise ValueError("The t2v task takes its batch sizes from data.buckets (name, frames, "
                       "height, width, batch_size); leave train.batch_size at 0.")
    self.dit = VideoDiT.from_config(
        config.model, context_attention=configs.parallel_settings(config)["context_attention"])
    self.text = TextConditioner(config.text)
    self.buckets = buckets_from_config(config.data.buckets)
    self.tae_workdir = config.tae.workdir or os.path.join(workdir, "tae")
    self._tae_params = None
    self._latent_sets: dict[str, dict[str, latents_lib.LatentSet]] = {}
    self._stats: tuple[np.ndarray, np.ndarray] | None = None
    self._guided: dict[float, flow.VelocityFn] = {}

  def prepare(self):
    """Before the DiT: trains the TAE when `tae.train_config` names one and the TAE in
    `tae.workdir` is missing or unfinished, then encodes (or loads) the training
    latents and their statistics, which the compiled loss holds as constants."""
    self.pretrained_text  # a missing or mismatched encoder fails here, not after the TAE
    if self.config.tae.train_config:
      train_tae(self.config.tae, self.tae_workdir, self.config.data,
                self.config.data.dir or os.path.join(self.workdir, "shapes"))
    self.tae_config  # raises early, naming the fix, when there is no trained TAE
    self.stats()

  @functools.cached_property
  def tae_config(self):
    path = os.path.join(self.tae_workdir, "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"No trained TAE in {self.tae_workdir} (config.tae.workdir). Train one with "
          f"`python -m mgjax.train --config=experiments/tae.py:tiny --workdir="
          f"{self.tae_workdir}`, or set --config.tae.train_config=experiments/tae.py:tiny "
          "to train it first.")
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))

  @functools.cached_property
  def tae(self) -> TAE:
    return make_tae(self.tae_config.model)

  # ------------------------------------------------------------------ shapes
  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """Latent [T', h, w, C] of a pixel clip, with a clear error for bad sizes."""
    f = self.tae.spatial_factor
    patch = tuple(self.config.model.patch_size)
    if height % (f * patch[1]) or width % (f * patch[2]):
      raise ValueError(f"Height and width must be multiples of {f * patch[1]} (TAE {f}x times "
                       f"patch {patch[1]}); got {height}x{width}.")
    return (self.tae.latent_frames(num_frames), height // f, width // f,
            self.tae_config.model.latent_channels)

  def batch_specs(self):
    """Per bucket: latent [B, T', h, w, C] and every text encoder's <name>_ids/_mask."""
    specs = {}
    for b in self.buckets:
      specs[b.name] = {
          "latent": jax.ShapeDtypeStruct(
              (b.batch_size,) + self.latent_shape(b.num_frames, b.height, b.width), jnp.float32),
          **self.text.token_specs(b.batch_size)}
    return specs

  def batch_tokens(self, batch) -> int:
    """Transformer tokens in a batch, for tokens/s."""
    b, t, h, w, _ = batch["latent"].shape
    pt, ph, pw = self.config.model.patch_size
    return b * (t // pt) * (h // ph) * (w // pw)

  def check_mesh(self, mesh):
    """`tensor` must split heads and MLP width; `context` (x `tensor` under sequence
    parallelism) every bucket's token count."""
    model, tensor = self.config.model, mesh.shape["tensor"]
    for name, size in (("num_heads", model.num_heads), ("mlp_dim", model.mlp_dim)):
      if size % tensor:
        raise ValueError(f"Mesh axis tensor={tensor} does not divide model.{name}={size}; "
                         f"use a tensor size that divides {name}.")
    sequence_parallel = configs.parallel_settings(self.config)["sequence_parallel"]
    split = mesh.shape["context"] * (tensor if sequence_parallel else 1)
    for name, spec in self.batch_specs().items():
      tokens = self.batch_tokens(spec) // spec["latent"].shape[0]
      if tokens % split:
        axes = "context x tensor (sequence_parallel)" if sequence_parallel else "context"
        raise ValueError(f"Mesh axes {axes} = {split} do not divide the {tokens} tokens of "
                         f"bucket {name!r}; pick sizes that divide every bucket's tokens.")

  # ------------------------------------------------------------------- model
  def init(self, rng):
    """params {dit, text: trainable encoders}, frozen {text: frozen encoders}; encoders
    with a path are random here and replaced by `pretrained_weights`."""
    dit_rng, text_rng = jax.random.split(rng)
    trainable_text, frozen_text = self.text.init(text_rng)
    spec = next(iter(self.batch_specs().values()))
    latent = jnp.zeros((1,) + spec["latent"].shape[1:])
    dit_params = self.dit.init(dit_rng, latent, jnp.zeros((1,)),
                               self.text.example_inputs())["params"]
    return {"dit": dit_params, "text": trainable_text}, {"text": frozen_text}

  @functools.cached_property
  def pretrained_text(self) -> tuple[dict, dict]:
    """(trainable, frozen) {encoder: host params} read from the encoders' paths."""
    return self.text.pretrained()

  def pretrained_weights(self):
    trainable, frozen = self.pretrained_text
    return {"params": {"text": trainable}, "frozen": {"text": frozen}}

  def velocity(self, params, frozen, x, t, tokens, keep=None):
    """DiT velocity [B, T', h, w, C] for standardised latents x, conditioned on the text
    tokens {<name>_ids, <name>_mask}; rows with keep False get the null condition."""
    text = self.text.embed(params["text"], frozen["text"], tokens, keep)
    return self.dit.apply({"params": params["dit"]}, x, t, text)

  def loss(self, params, frozen, batch, rng, step):
    del step
    f = self.config.flow
    mean, std = (jnp.asarray(s) for s in self.stats())
    x1 = (batch["latent"] - mean) / std  # [B, T', h, w, C]
    path_rng, drop_rng = jax.random.split(rng)
    keep = flow.drop_condition(drop_rng, x1.shape[0], f.text_drop_prob)  # [B]
    t, x_t, target = flow.training_example(path_rng, x1, f.sigma_min, f.t_mean, f.t_std)
    prediction = self.velocity(params, frozen, x_t, t, batch, keep)
    loss = flow.velocity_loss(prediction, target)
    return loss, {"velocity_mse": loss}

  # -------------------------------------------------------------------- data
  def tae_params(self):
    if self._tae_params is None:
      from mgjax.train import restore_params  # the trainer imports tasks lazily
      self._tae_params = restore_params(self.tae_workdir)["tae"]
    return self._tae_params

  @functools.cached_property
  def _encode(self):
    return jax.jit(lambda p, v: self.tae.apply({"params": p}, to_signed(v),
                                               method=TAE.encode)[0])

  @functools.cached_property
  def _decode(self):
    return jax.jit(lambda p, z: self.tae.apply({"params": p}, z, method=TAE.decode))

  def encode_pixels(self, pixels_uint8: np.ndarray) -> np.ndarray:
    """Posterior-mean latents of uint8 [B, T, H, W, 3] videos."""
    return np.asarray(self._encode(self.tae_params(), pixels_uint8))

  def latent_sets(self, split: str) -> dict[str, latents_lib.LatentSet]:
    """{bucket name: latents} of a split, encoded once and cached on disk and here."""
    if split not in self._latent_sets:
      data = self.config.data
      manifest = prepare_manifest(data, self.workdir)
      records = read_manifest(manifest, split=split)
      images = os.path.join(os.path.dirname(manifest), IMAGES_MANIFEST)
      if os.path.exists(images):
        records += read_manifest(images, split=split)
      if not records and split != "train":
        logging.warning("The manifest has no %r records (\"split\": %r); nothing to sample "
                        "for evaluation.", split, split)
        self._latent_sets[split] = {}
        return {}
      step = Checkpointer(self.tae_workdir, read_only=True).latest_step()
      fingerprint = f"{os.path.abspath(self.tae_workdir)}@{step}"
      self._latent_sets[split] = distributed.first_process_first(
          f"latents_{split}", lambda: latents_lib.cached_latents(
              os.path.join(self.workdir, "latents"), split, records, self.buckets,
              data.fps or None, fingerprint, self.encode_pixels))
    return self._latent_sets[split]

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel latent (mean, std) of the training set, saved for sampling."""
    if self._stats is None:
      path = os.path.join(self.workdir, "latents", "stats.json")
      if os.path.exists(path):
        with open(path) as f:
          saved = json.load(f)
        self._stats = (np.asarray(saved["mean"], np.float32),
                       np.asarray(saved["std"], np.float32))
      else:
        self._stats = latents_lib.channel_stats(self.latent_sets("train"))
        if jax.process_index() == 0:
          with open(path, "w") as f:
            json.dump({"mean": self._stats[0].tolist(), "std": self._stats[1].tolist()}, f)
    return self._stats

  def train_batches(self, start_step):
    sets = self.latent_sets("train")
    self.stats()
    seed, data = self.config.seed, self.config.data
    buckets = [b for b in self.buckets if b.name in sets]
    weights = bucket_weights(buckets, sets, data.image_fraction)
    by_name = {b.name: b for b in buckets}
    logging.info("Training buckets: %s", ", ".join(
        f"{b.name} ({len(sets[b.name].captions)} examples, p={w:.2f})"
        for b, w in zip(buckets, weights)))

    def batch(step):
      name = latents_lib.choose_bucket(step, seed, [b.name for b in buckets], weights)
      latent_set = sets[name]
      index = latents_lib.sample_indices(step, seed, len(latent_set.captions),
                                         by_name[name].batch_size)
      return {"latent": latent_set.latents[index],
              **self.text.tokenize([latent_set.captions[i] for i in index])}

    step = start_step
    while True:
      yield batch(step)
      step += 1

  def data_metrics(self):
    skipped = collections.Counter()
    for latent_set in self._latent_sets.get("train", {}).values():
      skipped.update(latent_set.skipped)
    metrics = {f"data/skipped_{kind}": n for kind, n in skipped.items()}
    for name, count in self.text.num_truncated.items():
      metrics[f"data/truncated_prompts_{name}"] = count
    return metrics

  # ---------------------------------------------------------------- sampling
  def sample_latents(self, params, frozen, prompts: list[str], latent_shape, *, num_steps: int,
                     schedule: str, cfg_scale: float, seed: int, method: str = "euler",
                     step_callback=None) -> np.ndarray:
    """Standardised latents [N, T', h, w, C] for prompts, integrated from noise."""
    for i, prompt in enumerate(prompts):
      if not prompt.strip():
        raise ValueError(f"Prompt {i} is empty; give every video a description.")
    tokens = {k: jnp.asarray(v) for k, v in self.text.tokenize(prompts).items()}
    noise = jax.random.normal(jax.random.key(seed), (len(prompts),) + tuple(latent_shape))
    times = flow.make_schedule(schedule, num_steps, self.config.flow.emulated_linear_steps)

    return np.asarray(flow.solve(self.guided_velocity(float(cfg_scale)), noise, times, method,
                                 step_callback,
                                 args=(params, frozen, tokens)))

  def guided_velocity(self, cfg_scale: float):
    """velocity_fn(x, t, params, frozen, tokens) with guidance; one per scale, so
    sampling again reuses the compiled step."""
    if cfg_scale not in self._guided:

      def model_fn(x, t, use_condition, params, frozen, tokens):
        repeat = x.shape[0] // next(iter(tokens.values())).shape[0]
        tokens = {k: jnp.concatenate([v] * repeat) for k, v in tokens.items()}
        return self.velocity(params, frozen, x, t, tokens, use_condition)

      self._guided[cfg_scale] = flow.cfg_velocity_fn(model_fn, cfg_scale)
    return self._guided[cfg_scale]

  def decode_latents(self, latents: np.ndarray, num_frames: int) -> np.ndarray:
    """Standardised latents -> uint8 videos [N, num_frames, H, W, 3]; tiled when long."""
    mean, std = self.stats()
    z = jnp.asarray(latents) * std + mean
    tiling = self.config.sample
    decode = functools.partial(self._decode, self.tae_params())
    if num_frames > tiling.tile_frames:
      video = tiled_decode(decode, z, num_frames, tiling.tile_frames, tiling.tile_overlap,
                           self.tae.temporal_factor)
    else:
      video = decode(z)[:, :num_frames]
    return np.asarray(to_uint8(video))

  def generate(self, params, frozen, prompts: list[str], num_frames: int, height: int,
               width: int, **sample_kwargs) -> np.ndarray:
    """uint8 videos [N, num_frames, height, width, 3] for the prompts."""
    shape = self.latent_shape(num_frames, height, width)
    latents = self.sample_latents(params, frozen, prompts, shape, **sample_kwargs)
    return self.decode_latents(latents, num_frames)

  # -------------------------------------------------------------------- eval
  def evaluate(self, params, frozen, step):
    """Samples the first eval.num_prompts_per_bucket held-out captions of every bucket;
    on shapes data, scores them.

    shapes_color/shape/motion are per-attribute accuracies (motion on videos only);
    shapes_score is the share of all attribute checks that are right, and
    shapes_color_motion the share of the colour and motion checks (the demo's target;
    shape is the hardest attribute at 64 px and 8x compression).
    """
    from mgjax.eval import shapes as shapes_eval
    e = self.config.eval
    by_name = {b.name: b for b in self.buckets}
    hits, counts, details, writes = (collections.Counter(), collections.Counter(), [], [])
    for name, latent_set in self.latent_sets("eval").items():
      bucket, prompts = by_name[name], latent_set.captions[:e.num_prompts_per_bucket]
      videos = self.generate(params, frozen, prompts, bucket.num_frames, bucket.height,
                             bucket.width, num_steps=e.num_steps, schedule=e.schedule,
                             method=e.method, cfg_scale=e.cfg_scale, seed=e.seed)
      writes.append((name, prompts, videos))
      if self.config.data.name != "shapes":
        continue
      report = shapes_eval.score(list(videos), [strip_fps_tag(p) for p in prompts])
      for key, n in report["counts"].items():
        if n:
          hits[key] += report[key] * n
          counts[key] += n
      details += [dict(d, bucket=name) for d in report["details"]]
    self.write_samples(writes, step, details)
    results = {f"shapes_{key}": hits[key] / counts[key] for key in counts}
    if counts:
      results["shapes_score"] = sum(hits.values()) / sum(counts.values())
      color_motion = ("color", "motion")
      results["shapes_color_motion"] = (sum(hits[k] for k in color_motion) /
                                        max(sum(counts[k] for k in color_motion), 1))
      if jax.process_index() == 0:
        print(f"Prompt following at step {step} on {len(details)} held-out prompts "
              f"({sum(counts.values())} attribute checks): "
              + ", ".join(f"{k} {100 * results[f'shapes_{k}']:.1f}%" for k in counts)
              + f"; colour and motion {100 * results['shapes_color_motion']:.1f}%"
              + f"; all attributes {100 * results['shapes_score']:.1f}%", flush=True)
    return results

  def write_samples(self, writes, step, details):
    """Videos (the first eval.num_videos_to_write per bucket), prompts and checker
    readings to <workdir>/samples/step_N."""
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(self.workdir, "samples", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    fps = self.config.data.fps or 16
    for name, prompts, videos in writes:
      for i, video in enumerate(videos[:self.config.eval.num_videos_to_write]):
        write_video(os.path.join(out_dir, f"{name}_{i:02d}.mp4"), video, fps=fps)
      with open(os.path.join(out_dir, f"{name}_prompts.txt"), "w") as f:
        f.write("\n".join(prompts) + "\n")
    if details:
      with open(os.path.join(out_dir, "shapes_checker.jsonl"), "w") as f:
        f.writelines(json.dumps(d, default=str) + "\n" for d in details)
    logging.info("Wrote samples to %s", out_dir)


def strip_fps_tag(prompt: str) -> str:
  head, _, rest = prompt.partition(" ")
  return rest if head.startswith("FPS-") else prompt


def bucket_weights(buckets: list[Bucket], sets, image_fraction: float) -> list[float]:
  """Probability of each bucket per step: images get `image_fraction` in total (when
  there are image buckets), and buckets of a kind share by their number of examples."""
  sizes = np.array([len(sets[b.name].captions) for b in buckets], np.float64)
  is_image = np.array([b.is_image for b in buckets])
  if not is_image.any() or is_image.all():
    return list(sizes / sizes.sum())
  weights = np.where(is_image, image_fraction * sizes / sizes[is_image].sum(),
                     (1 - image_fraction) * sizes / sizes[~is_image].sum())
  return list(weights)


def train_tae(tae_section, tae_workdir: str, data_config, data_dir: str):
  """Trains (or finishes training) the TAE of `tae.train_config` on the same data."""
  tae_config = configs.load_config(tae_section.train_config)
  with tae_config.unlocked():
    tae_config.train.num_steps = tae_section.train_steps or tae_config.train.num_steps
    tae_config.data.name = data_config.name
    tae_config.data.dir = data_dir
    tae_config.data.shapes = data_config.shapes
  done = (Checkpointer(tae_workdir, read_only=True).latest_step()
          if os.path.exists(os.path.join(tae_workdir, "config.json")) else None)
  if done is None or done < tae_config.train.num_steps:
    from mgjax.train import train  # the trainer imports tasks lazily
    logging.info("Stage 1: training the TAE in %s", tae_workdir)
    train(tae_config, tae_workdir)
