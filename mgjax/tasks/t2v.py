"""Text-to-image/video flow matching on TAE latents: the Movie Gen transformer's task.

The DiT learns the velocity from noise to TAE latents, conditioned on the prompt
(every text encoder of `config.text`, mgjax/text/conditioning.py) and the flow time.
Latents of the training data are computed once with a trained TAE
(`config.tae.workdir`) into ArrayRecord shards (`data.latents_dir`, default
<workdir>/latents; `python -m mgjax.precompute` makes them ahead of time, on
many processes), or with `data.encode_on_the_fly` on every batch. Each batch comes
from one aspect-ratio x duration bucket (`mgjax/data/buckets.py`), images being
1-frame latents in the same model. Latents are standardised per channel with
statistics of the training set, saved in <workdir>/latents/stats.json so sampling
can undo it. The TAE is a declared stage (`tae.train_config`), the latents, loss,
guidance and sampler come from the latent flow base (mgjax/tasks/latent_flow.py).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax import configs
from mgjax.data import latent_shards, sources
from mgjax.data.buckets import Bucket, buckets_from_config, group_by_bucket
from mgjax.data.examples import LoadExample, load_pixels, tagged_caption
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.records import Records
from mgjax.data.video import MediaDecodeError
from mgjax.models.dit import VideoDiT
from mgjax.parallel import distributed
from mgjax.tasks.codecs import ChannelStats, TAECodec
from mgjax.tasks.latent_flow import LatentFlowTask
from mgjax.tasks.outputs import Sample, slug, write_samples
from mgjax.text.conditioning import TextConditioner


class T2VTask(LatentFlowTask):
  codec_class = TAECodec
  codec_section = "tae"
  codec_default_dir = "tae"
  codec_stage_name = "TAE"
  default_codec_config = "experiments/tae.py:paper"

  def __init__(self, config, workdir, **codec_and_stats):
    super().__init__(config, workdir, **codec_and_stats)
    if config.train.batch_size:
      raise ValueError(
          "The t2v task takes its batch sizes from data.buckets (name, frames, "
          "height, width, batch_size); leave train.batch_size at 0."
      )
    self.dit = VideoDiT.from_config(
        config.model, context_attention=configs.parallel_settings(config)["context_attention"]
    )
    self.text = TextConditioner(config.text)
    self.buckets = buckets_from_config(config.data.buckets)
    self._records_by_bucket: dict[str, tuple[dict[str, list[dict]], Records]] = {}

  def stages(self):
    """The TAE of `tae.train_config`, when set; a missing or mismatched text encoder
    fails first, not after the TAE."""
    self.pretrained_text
    return super().stages()

  def configure_codec_stage(self, config):
    """The TAE trains on this run's data set."""
    data = self.config.data
    config.data.name = data.name
    config.data.dir = data.dir or os.path.join(self.workdir, "shapes")
    config.data.shapes = data.shapes

  def prepare(self):
    """Encodes (or loads) the training latents and their statistics, which the
    compiled loss holds as constants."""
    self.codec  # raises early, naming the fix, when there is no trained TAE
    if not self.config.data.encode_on_the_fly:
      distributed.first_process_first("latents", lambda: self.precompute_latents("train"))
    self.stats()

  # ------------------------------------------------------------------ shapes
  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """Latent [T', h, w, C] of a pixel clip, with a clear error for bad sizes."""
    f = self.codec.spatial_factor
    patch = tuple(self.config.model.patch_size)
    if height % (f * patch[1]) or width % (f * patch[2]):
      raise ValueError(
          f"Height and width must be multiples of {f * patch[1]} (TAE {f}x times "
          f"patch {patch[1]}); got {height}x{width}."
      )
    return self.codec.latent_shape(num_frames, height, width)

  def batch_specs(self):
    """Per bucket: latent [B, T', h, w, C] and every text encoder's <name>_ids/_mask."""
    specs = {}
    for b in self.buckets:
      specs[b.name] = {
          "latent": jax.ShapeDtypeStruct(
              (b.batch_size,) + self.latent_shape(b.num_frames, b.height, b.width), jnp.float32
          ),
          **self.text.token_specs(b.batch_size, self.precomputed_text),
      }
    return specs

  def batch_tokens(self, batch) -> int:
    """Transformer tokens in a batch, for tokens/s."""
    b, t, h, w, _ = batch["latent"].shape
    pt, ph, pw = self.config.model.patch_size
    return b * (t // pt) * (h // ph) * (w // pw)

  def check_mesh(self, mesh):
    """`tensor` must split heads and MLP width; `context` (x `tensor` under sequence
    parallelism) every bucket's token count."""
    super().check_mesh(mesh)
    tensor = mesh.shape["tensor"]
    sequence_parallel = configs.parallel_settings(self.config)["sequence_parallel"]
    split = mesh.shape["context"] * (tensor if sequence_parallel else 1)
    for name, spec in self.batch_specs().items():
      tokens = self.batch_tokens(spec) // spec["latent"].shape[0]
      if tokens % split:
        axes = "context x tensor (sequence_parallel)" if sequence_parallel else "context"
        raise ValueError(
            f"Mesh axes {axes} = {split} do not divide the {tokens} tokens of "
            f"bucket {name!r}; pick sizes that divide every bucket's tokens."
        )

  # ------------------------------------------------------------------- model
  def init(self, rng):
    """params {dit, text: trainable encoders}, frozen {text: frozen encoders}; encoders
    with a path are random here and replaced by `pretrained_weights`."""
    dit_rng, text_rng = jax.random.split(rng)
    trainable_text, frozen_text = self.text.init(text_rng)
    spec = next(iter(self.batch_specs().values()))
    latent = jnp.zeros((1,) + spec["latent"].shape[1:])  # [1, T', h, w, C]
    dit_params = self.dit.init(
        dit_rng,
        latent,
        jnp.zeros((1,)),
        self.example_conditions(),
        **self.dit_example_inputs(latent),
    )["params"]
    return {"dit": dit_params, "text": trainable_text}, {"text": frozen_text}

  @functools.cached_property
  def pretrained_text(self) -> tuple[dict, dict]:
    """(trainable, frozen) {encoder: host params} read from the encoders' paths."""
    return self.text.pretrained()

  def pretrained_weights(self):
    trainable, frozen = self.pretrained_text
    return {"params": {"text": trainable}, "frozen": {"text": frozen}}

  def condition_dropout(self):
    return {"text": self.config.flow.text_drop_prob}

  def velocity(self, params, frozen, x_t, t, conditions, keep):
    """DiT velocity [B, T', h, w, C] for standardised latents, conditioned on the text
    tokens {<name>_ids, <name>_mask} in `conditions`; rows with keep False get the
    null text."""
    text = self.text.embed(params["text"], frozen["text"], conditions, keep.get("text"))
    concat = self.concat_condition(params, conditions, keep)
    return self.dit.apply({"params": params["dit"]}, x_t, t, text, concat=concat)

  def example_conditions(self) -> dict[str, tuple[jax.Array, jax.Array]]:
    """What the DiT cross-attends to, zeros of its shapes ({name: (emb, mask)}), to
    initialise it: every text encoder's tokens (PT2V adds the reference's)."""
    return self.text.example_inputs()

  concat_channels = 0  # C_c of `concat_condition`; 0: none

  def dit_example_inputs(self, latent: jax.Array) -> dict[str, jax.Array]:
    """The DiT's inputs beyond x, t and text, zeros for `latent` [1, T', h, w, C], to
    initialise it: the concatenated channels here (the edit task adds its task)."""
    if not self.concat_channels:
      return {}
    return {"concat": jnp.zeros(latent.shape[:-1] + (self.concat_channels,))}

  def concat_condition(self, params, conditions, keep) -> jax.Array | None:
    """Channels concatenated to the noisy latent [B, T', h, w, C_c] (variants that
    condition on a video: upsampler, edit), from the batch and `keep`; None here."""
    del params, conditions, keep
    return None

  # -------------------------------------------------------------------- data
  def encode_pixels(self, pixels_uint8: np.ndarray) -> np.ndarray:
    """Posterior-mean latents of uint8 [B, T, H, W, 3] videos, float32."""
    return np.asarray(self.codec.encode(pixels_uint8), np.float32)

  # (record, pixels) -> per-example arrays handed to `encode_examples` (PT2V: the
  # reference image, stored as it is; edit: the source video, encoded); None: none.
  record_arrays = None

  def encode_examples(
      self, pixels_uint8: np.ndarray, arrays: dict[str, np.ndarray] | None = None
  ) -> dict[str, np.ndarray]:
    """What a batch of training clips is stored and trained as: {"latent": [B, ...]}
    and `record_arrays`' [B, ...] as they are (variants add their conditions, e.g.
    the upsampler's low-resolution latents)."""
    return {"latent": self.encode_pixels(pixels_uint8), **(arrays or {})}

  def latent_fingerprint(self) -> dict:
    """What made the stored training examples: redone when it changes."""
    data = self.config.data
    return {
        "tae": self.codec.fingerprint(),
        "buckets": [list(dataclasses.astuple(b)) for b in self.buckets],
        "data": {
            k: data[k].to_dict() if hasattr(data[k], "to_dict") else data[k]
            for k in ("name", "dir", "shapes", "tfds", "fps", "min_fps")
        },
        "text": {name: self.config.text.encoders[name].to_dict() for name in self.precomputed_text},
    }

  @functools.cached_property
  def precomputed_text(self) -> list[str]:
    """Text encoders whose embeddings the latent shards hold (data.precompute_text)."""
    data = self.config.data
    if not data.precompute_text or data.encode_on_the_fly:
      return []
    if not self.text.precomputable:
      logging.warning(
          "data.precompute_text is set but no text encoder is frozen with "
          "weights from a path; every encoder runs in the train step."
      )
    return self.text.precomputable

  def embed_text(self, captions: list[str]) -> dict[str, np.ndarray]:
    """{<name>_emb [B, L, D], <name>_mask [B, L]} of the precomputed encoders."""
    tokens = self.text.tokenize(captions)
    out = {}
    for name, (emb, mask) in self._embed_frozen(self.pretrained_text[1], tokens).items():
      out[f"{name}_emb"], out[f"{name}_mask"] = np.asarray(emb, np.float32), np.asarray(mask)
    return out

  @functools.cached_property
  def _embed_frozen(self):
    names = self.precomputed_text
    return jax.jit(lambda frozen, tokens: self.text.embed({}, frozen, tokens, names=names))

  @property
  def latents_dir(self) -> str:
    return self.config.data.latents_dir or os.path.join(self.workdir, "latents")

  def records_by_bucket(self, split: str) -> tuple[dict[str, list[dict]], Records]:
    """({bucket: records}, all records with everything skipped so far counted); read
    and probed once per split (statistics, training and every evaluation use them)."""
    if split not in self._records_by_bucket:
      data = self.config.data
      records = self.read_records(split)
      groups, skipped = group_by_bucket(
          records.records, self.buckets, data.fps or None, data.min_fps, data.num_threads
      )
      self._records_by_bucket[split] = groups, Records(records.records, records.skipped + skipped)
    return self._records_by_bucket[split]

  def read_records(self, split: str) -> Records:
    """The data set's records of a split (mgjax/data/sources.py)."""
    return sources.read_records(self.config.data, self.workdir, split)

  def bucket_spec(self, bucket: Bucket, random_clip: bool = False):
    data = self.config.data
    return latent_shards.bucket_spec(bucket, data.fps or None, data.min_fps, random_clip)

  def precompute_latents(self, split: str, process_index: int = 0, process_count: int = 1):
    """Encodes a split into ArrayRecord shards in `latents_dir`; resumes unfinished work.

    Latents from a different TAE checkpoint, data set or bucket table are redone.
    """
    data = self.config.data
    if process_index == 0:
      latent_shards.check_fingerprint(self.latents_dir, self.latent_fingerprint())
    groups, records = self.records_by_bucket(split)
    skipped_path = os.path.join(self.latents_dir, split, "records_skipped.json")
    if process_index == 0:
      os.makedirs(os.path.dirname(skipped_path), exist_ok=True)
      with open(skipped_path, "w") as f:
        json.dump({"skipped": dict(records.skipped), "records": len(records.records)}, f)
    for bucket in self.buckets:
      if groups[bucket.name]:
        latent_shards.write_bucket(
            self.latents_dir,
            split,
            bucket,
            groups[bucket.name],
            self.bucket_spec(bucket),
            self.encode_examples,
            embed_text=self.embed_text if self.precomputed_text else None,
            record_arrays=self.record_arrays,
            shard_size=data.shard_size,
            num_threads=data.num_threads,
            process_index=process_index,
            process_count=process_count,
        )
    if process_index == 0:  # a re-encode replaces the old shards only once complete
      latent_shards.commit_staged(self.latents_dir)

  def latent_shards(self, split: str) -> dict[str, latent_shards.LatentShards]:
    """{bucket: its precomputed examples}, for the buckets that have any."""
    sets = {
        b.name: latent_shards.LatentShards(self.latents_dir, split, b.name) for b in self.buckets
    }
    sets = {name: s for name, s in sets.items() if len(s)}
    if not sets:
      raise ValueError(
          f"No precomputed {split} latents in {self.latents_dir}; make them with "
          "`python -m mgjax.precompute --config=... --out=DIR` and set "
          "data.latents_dir=DIR, or leave data.latents_dir empty."
      )
    return sets

  def compute_stats(self) -> ChannelStats:
    """Per-channel latent statistics of the training shards (or, encoding on the fly,
    of the first data.stats_examples examples of each bucket)."""
    if self.config.data.encode_on_the_fly:
      return ChannelStats(*self._stats_on_the_fly())
    return ChannelStats(*latent_shards.channel_stats(list(self.latent_shards("train").values())))

  def _stats_on_the_fly(self) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the first data.stats_examples readable examples of each bucket."""
    groups, _ = self.records_by_bucket("train")
    sums, rng = latent_shards.ChannelSums(), np.random.default_rng(0)
    for bucket in self.buckets:
      examples = []
      for record in groups[bucket.name]:
        if len(examples) == self.config.data.stats_examples:
          break
        try:
          examples.append((load_pixels(record, self.bucket_spec(bucket), rng)[0], ""))
        except MediaDecodeError:
          continue
      for encoded, _ in latent_shards.encode_in_batches(examples, self.encode_examples, 8):
        sums.add(encoded["latent"])
    return sums.mean_std()

  def train_batches(self, start_step, rows_of):
    data = self.config.data
    self.stats()
    if data.encode_on_the_fly:
      groups, records = self.records_by_bucket("train")
      loads = {
          b.name: (
              len(groups[b.name]),
              LoadExample(groups[b.name], self.bucket_spec(b, data.random_clip_start)),
          )
          for b in self.buckets
          if groups[b.name]
      }
      finish = lambda batch: {
          **self.encode_examples(batch["pixels"]),
          **self.text.tokenize(batch["caption"]),
      }
      skipped, num_records = records.skipped, len(records.records) + sum(records.skipped.values())
    else:
      sets = self.latent_shards("train")
      loads = {name: (len(s), latent_shards.ReadLatent(s)) for name, s in sets.items()}
      finish = lambda batch: {
          **{k: v for k, v in batch.items() if k != "caption"},
          **self.text.tokenize(batch["caption"], skip=self.precomputed_text),
      }
      skipped = sum((s.skipped for s in sets.values()), self._records_skipped("train"))
      num_records = sum(len(s) for s in sets.values()) + sum(skipped.values())
    buckets = [b for b in self.buckets if b.name in loads]
    weights = bucket_weights(
        buckets, {name: size for name, (size, _) in loads.items()}, data.image_fraction
    )
    logging.info(
        "Training buckets: %s",
        ", ".join(
            f"{b.name} ({loads[b.name][0]} examples, p={w:.2f})" for b, w in zip(buckets, weights)
        ),
    )
    streams = [
        Stream(b.name, loads[b.name][0], loads[b.name][1], b.batch_size, w)
        for b, w in zip(buckets, weights)
    ]
    return DataIterator(
        streams,
        sources.loader_options(data, self.config.seed),
        finish,
        rows_of=rows_of,
        skipped_records=skipped,
        num_records=num_records,
        start=start_step,
    )

  def _records_skipped(self, split: str) -> collections.Counter:
    path = os.path.join(self.latents_dir, split, "records_skipped.json")
    if not os.path.exists(path):
      return collections.Counter()
    with open(path) as f:
      return collections.Counter(json.load(f)["skipped"])

  def eval_prompts(self) -> dict[str, list[str]]:
    """{bucket: held-out captions, frame-rate tagged as training sees them}."""
    data = self.config.data
    groups, _ = self.records_by_bucket("eval")
    prompts = {}
    for bucket in self.buckets:
      records = groups[bucket.name][: self.config.eval.num_prompts_per_bucket]
      if records:
        prompts[bucket.name] = [
            tagged_caption(
                r["caption"], None if bucket.is_image else data.fps or max(r["fps"], data.min_fps)
            )
            for r in records
        ]
    if not prompts:
      logging.warning(
          'The data set has no "eval" split records; nothing to sample for ' "evaluation."
      )
    return prompts

  def data_metrics(self):
    return {
        f"data/truncated_prompts_{name}": count for name, count in self.text.num_truncated.items()
    }

  # ---------------------------------------------------------------- sampling
  def guided_model_fn(self, x, t, use_condition, tokens, params, frozen):
    return self.velocity(params, frozen, x, t, tokens, {"text": use_condition})

  def generate_videos(
      self,
      params,
      frozen,
      prompts: list[str],
      num_frames: int,
      height: int,
      width: int,
      conditions: tuple = (),
      **sampler,
  ) -> np.ndarray:
    """uint8 videos [N, num_frames, height, width, 3] for the prompts (as the model
    reads them: frame-rate tagged); decoded in tiles when longer than sample.tile_frames.
    `conditions`: per-example guidance args before the text (PT2V: the references).
    `sampler`: num_steps, schedule, cfg_scale, seed, method, step_callback."""
    for i, prompt in enumerate(prompts):
      if not prompt.strip():
        raise ValueError(f"Prompt {i} is empty; give every video a description.")
    tokens = {k: jnp.asarray(v) for k, v in self.text.tokenize(prompts).items()}
    latents = self.sample_latents(
        (*conditions, tokens, params, frozen),
        self.latent_shape(num_frames, height, width),
        num_examples=len(prompts),
        **sampler,
    )
    tiling = self.config.sample
    return self.codec.decode(latents, num_frames, tiling.tile_frames, tiling.tile_overlap)

  @property
  def fps(self) -> float:
    """The frame rate videos are tagged and written with."""
    return self.config.data.fps or 16

  def generate(self, params, frozen, request):
    """One video per prompt (an image when num_frames is 1); unset sizes are the first
    video bucket's, unset sampler settings config.flow's."""
    if not request.prompts:
      raise ValueError('No prompts: pass --prompt="..." or a --prompts_file with one per line.')
    bucket = next((b for b in self.buckets if not b.is_image), self.buckets[0])
    num_frames = request.num_frames or bucket.num_frames
    height, width = request.height or bucket.height, request.width or bucket.width
    settings = self.sampler_settings(request, self.config.flow)
    tagged = [with_fps_tag(p, self.fps, num_frames) for p in request.prompts]
    conditions = self.request_conditions(request)
    videos, size = [], request.batch_size
    for start in range(0, len(tagged), size):
      videos.extend(
          self.generate_videos(
              params,
              frozen,
              tagged[start : start + size],
              num_frames,
              height,
              width,
              conditions=tuple(c[start : start + size] for c in conditions),
              seed=request.seed + start,
              step_callback=request.progress and (lambda i, n: request.progress(1)),
              **settings,
          )
      )
    report = self.text.truncation_report()
    if report:
      logging.warning("%s.", report)
    return [
        Sample(f"{i:03d}_{slug(prompt)}", tag, video, self.fps)
        for i, (prompt, tag, video) in enumerate(zip(request.prompts, tagged, videos))
    ]

  def request_conditions(self, request) -> tuple:
    """Per-prompt conditions of a request besides the text, [N, ...] arrays (PT2V: the
    reference images); none here."""
    del request
    return ()

  def preview(self, params, frozen, request):
    if not request.prompts:
      raise ValueError(
          'A text-to-video run needs a prompt: sample_video("a red circle moves to the left").'
      )
    return self.generate(params, frozen, request)[0]

  def sampling_steps(self, request) -> int:
    """ODE steps `generate` runs for a request, for a progress bar."""
    batches = -(-len(request.prompts) // request.batch_size)
    return self.sampler_settings(request, self.config.flow)["num_steps"] * batches

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
    for name, prompts in self.eval_prompts().items():
      bucket = by_name[name]
      videos = self.generate_videos(
          params,
          frozen,
          prompts,
          bucket.num_frames,
          bucket.height,
          bucket.width,
          num_steps=e.num_steps,
          schedule=e.schedule,
          method=e.method,
          cfg_scale=e.cfg_scale,
          seed=e.seed,
      )
      writes.append(
          (
              name,
              [
                  Sample(f"{name}_{i:02d}", p, v, self.fps)
                  for i, (p, v) in enumerate(zip(prompts, videos))
              ],
          )
      )
      if self.config.data.name not in ("shapes", "shapes_identity"):
        continue
      report = shapes_eval.score(list(videos), [strip_fps_tag(p) for p in prompts])
      for key, n in report["counts"].items():
        if n:
          hits[key] += report[key] * n
          counts[key] += n
      details += [dict(d, bucket=name) for d in report["details"]]
    self.write_eval_samples(writes, step, details)
    results = {f"shapes_{key}": hits[key] / counts[key] for key in counts}
    if counts:
      results["shapes_score"] = sum(hits.values()) / sum(counts.values())
      color_motion = ("color", "motion")
      results["shapes_color_motion"] = sum(hits[k] for k in color_motion) / max(
          sum(counts[k] for k in color_motion), 1
      )
      if jax.process_index() == 0:
        print(
            f"Prompt following at step {step} on {len(details)} held-out prompts "
            f"({sum(counts.values())} attribute checks): "
            + ", ".join(f"{k} {100 * results[f'shapes_{k}']:.1f}%" for k in counts)
            + f"; colour and motion {100 * results['shapes_color_motion']:.1f}%"
            + f"; all attributes {100 * results['shapes_score']:.1f}%",
            flush=True,
        )
    return results

  def write_eval_samples(self, writes, step, details):
    """Videos (the first eval.num_videos_to_write per bucket), prompts and checker
    readings to <workdir>/samples/step_N, on process 0."""
    if jax.process_index() != 0:
      return
    out_dir = self.eval_dir(step)
    for name, samples in writes:
      write_samples(
          samples,
          out_dir,
          index_name=f"{name}_prompts.txt",
          sheet=False,
          max_media=self.config.eval.num_videos_to_write,
      )
    if details:
      with open(os.path.join(out_dir, "shapes_checker.jsonl"), "w") as f:
        f.writelines(json.dumps(d, default=str) + "\n" for d in details)
    logging.info("Wrote samples to %s", out_dir)


def with_fps_tag(prompt: str, fps: float, num_frames: int) -> str:
  """The prompt with the frame-rate tag training captions carry ("FPS-16 ..."), for
  videos; an image (1 frame) or an already tagged prompt is left as it is."""
  if num_frames == 1 or re.match(r"FPS-[0-9.]+\s", prompt):
    return prompt
  return tagged_caption(prompt, fps)


def strip_fps_tag(prompt: str) -> str:
  head, _, rest = prompt.partition(" ")
  return rest if head.startswith("FPS-") else prompt


def bucket_weights(
    buckets: list[Bucket], sizes: dict[str, int], image_fraction: float
) -> list[float]:
  """Share of steps of each bucket: images get `image_fraction` in total (when there
  are image buckets), and buckets of a kind share by their number of examples."""
  sizes = np.array([sizes[b.name] for b in buckets], np.float64)
  is_image = np.array([b.is_image for b in buckets])
  if not is_image.any() or is_image.all():
    return list(sizes / sizes.sum())
  weights = np.where(
      is_image,
      image_fraction * sizes / sizes[is_image].sum(),
      (1 - image_fraction) * sizes / sizes[~is_image].sum(),
  )
  return list(weights)
