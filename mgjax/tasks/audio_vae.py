"""Training the audio VAE (mgjax/models/audio_vae.py) through the one trainer.

Loss (mgjax/models/audio_vae_losses.py), on random `data.crop_seconds` crops:
    log_magnitude_weight * multi-scale log-STFT L1 + magnitude_weight * STFT L1
  + waveform_weight * waveform L1
  + onset_weight * onset loss (spectral-flux envelopes, loss.onset_windows_s)
  + kl_weight * KL(posterior || N(0, 1))
No adversarial terms (see audio_vae_losses). Crops: `data.bounce_crop_fraction` of
them are placed over a bounce of a record with "bounce_times" (the shapes clicks are
~0.4% of the energy and in few uniform crops), `data.end_crop_fraction` end at the
file's end; the rest are uniform (LoadAudioCrop).

Data (`data.name`):
  "shapes_audio"  the synthetic shapes sound (colour tone + bounce clicks,
                  mgjax/data/shapes_audio.py), made in `data.dir` (default
                  <workdir>/shapes_audio) at the model's sample rate when absent;
  "manifest"      data.dir/manifest.jsonl: one JSON object per line with an "audio"
                  (or "video") path, relative to the manifest or absolute, and an
                  optional "split" ("train" when absent; "eval" lines are held out).
Every file goes through mgjax.data.audio.read_audio, so .wav files at another rate or
channel count, and the sound of videos, are converted to model.sample_rate /
model.audio_channels. Unusable lines, files that cannot be decoded and (with
data.skip_silent) silent files are skipped and counted by kind in the logged
data/skipped_* metrics; data.max_skip_fraction stops a run on a broken data set.

Evaluation: posterior-mean reconstructions of the first eval.num_clips held-out
clips (eval.seconds from their start): SNR and multi-scale spectral distance, and on
shapes audio the share of tones whose pitch names the right colour and the share of
bounces with a detected click within 40 ms (shapes_audio.sync_score). The held-out
split holds few bounces, so with eval.num_bouncing_clips the same click figures (and
SNR) are also taken on that many fresh bouncing clips (`bouncing_clips`, never
trained on): bouncing_onset_hit_rate, bouncing_false_onsets_per_clip,
bouncing_snr_db. A few inputs and reconstructions are written to
workdir/eval/step_<step>/ as .wav.

For the audio DiT: `mgjax.tasks.codecs.AudioVAECodec.from_workdir(workdir)` loads a
trained VAE (its config and the latest checkpoint's weights) with `encode(waveform)
-> latent mean` and `decode(latent) -> waveform`.
"""

from __future__ import annotations

import collections
import functools
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax.data import audio as audio_lib
from mgjax.data import shapes_audio, sources
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.records import manifest_lines
from mgjax.data.video import MediaDecodeError
from mgjax.models.audio_vae import AudioVAE
from mgjax.models.audio_vae_losses import (
    multiscale_stft_loss,
    onset_loss,
    snr_db,
    spectral_distance_db,
    waveform_l1,
    window_samples,
)
from mgjax.models.tae_losses import kl_divergence
from mgjax.parallel import distributed
from mgjax.tasks.base import Task

AUDIO_SOURCES = ("shapes_audio", "manifest")
RECORD_KINDS = ("bad_json", "no_media")


def make_audio_vae(model_config) -> AudioVAE:
  kwargs = model_config.to_dict()
  kwargs["dtype"] = jnp.dtype(kwargs.pop("dtype"))
  for key in ("strides", "encoder_channels", "decoder_channels", "dilations"):
    kwargs[key] = tuple(kwargs[key])
  return AudioVAE(**kwargs)


def crop_samples(seconds: float, sample_rate: int, hop: int, name: str) -> int:
  """`seconds` in samples; refused unless a whole number of latent frames."""
  samples = int(round(seconds * sample_rate))
  if samples < hop or samples % hop:
    raise ValueError(
        f"{name}={seconds} s is {samples} samples at {sample_rate} Hz, not a "
        f"positive whole number of latent frames (hop {hop} samples = "
        f"{hop / sample_rate:g} s); use a multiple of {hop / sample_rate:g} s."
    )
  return samples


# ----------------------------------------------------------------------------- records


def data_dir(data_config, workdir: str) -> str:
  return data_config.dir or os.path.join(workdir, "shapes_audio")


def manifest_path(data_config, workdir: str, sample_rate: int) -> str:
  """The manifest to read; makes the shapes audio set (at sample_rate) if absent."""
  name = data_config.name
  if name == "shapes_audio":
    s = data_config.shapes_audio
    return distributed.first_process_first(
        "shapes_audio",
        lambda: shapes_audio.ensure_dataset(
            data_dir(data_config, workdir),
            **shapes_audio.dataset_args(
                s, sample_rate, s.eval_fraction, s.get("bouncing_share", 0.0)
            ),
        ),
    )
  if name == "manifest":
    if not data_config.dir:
      raise ValueError(
          "data.name='manifest' needs data.dir, the folder holding "
          'manifest.jsonl (one {"audio": path} or {"video": path} per line).'
      )
    return os.path.join(data_config.dir, "manifest.jsonl")
  raise ValueError(f"The audio_vae task reads data.name in {AUDIO_SOURCES}; got {name!r}.")


def read_audio_records(path: str, split: str) -> tuple[list[dict], collections.Counter]:
  """Records of one split with an absolute "path" to decode, and skipped lines by kind.

  A line is usable when it is a JSON object with an "audio" or "video" path; "audio"
  wins when both are there.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Manifest {path} does not exist; write one JSON object per line "
        'with an "audio" or "video" path, or use '
        "data.name='shapes_audio' for the synthetic set."
    )
  base = os.path.dirname(os.path.abspath(path))
  records, skipped = [], collections.Counter()
  for line_number, record, json_error in manifest_lines(path):
    if json_error:
      skipped["bad_json"] += 1
      logging.warning("Skipping %s:%d: %s.", path, line_number, json_error)
      continue
    media = (record.get("audio") or record.get("video")) if isinstance(record, dict) else None
    if not isinstance(media, str):
      skipped["no_media"] += 1
      logging.warning('Skipping %s:%d: no "audio" or "video" path.', path, line_number)
      continue
    if record.get("split", "train") == split:
      records.append({**record, "path": os.path.join(base, media)})
  return records, skipped


def read_waveform(path: str, sample_rate: int, channels: int, skip_silent: bool) -> np.ndarray:
  """float32 [T, C] at the model's rate and channels; raises MediaDecodeError."""
  waveform = audio_lib.read_audio(path, sample_rate=sample_rate, channels=channels)
  if skip_silent and audio_lib.is_silent(waveform):
    raise MediaDecodeError(
        path,
        "silent",
        f"RMS {audio_lib.rms_db(waveform):.1f} dBFS is below "
        f"{audio_lib.SILENCE_DB} dBFS; nothing to reconstruct",
    )
  return waveform


class WaveformCache:
  """Decoded waveforms (or the error a file gave) by path, least recently used out
  first, up to `max_bytes`: a crop is a fraction of a second, so a set that fits in
  memory is decoded and resampled once, not once per crop. Shared by the loader's
  threads."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self.entries: collections.OrderedDict = collections.OrderedDict()
    self.bytes = 0
    self.lock = threading.Lock()

  def __getstate__(self):  # a loader process starts with an empty cache of its own
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state):
    self.__init__(state["max_bytes"])

  def get(self, path: str, read):
    """read(path) through the cache; a MediaDecodeError is remembered and raised again."""
    with self.lock:
      value = self.entries.get(path)
      if value is not None:
        self.entries.move_to_end(path)
    if value is None:
      try:
        value = read(path)
      except MediaDecodeError as e:
        value = e
      self._put(path, value)
    if isinstance(value, MediaDecodeError):
      raise value
    return value

  def _put(self, path: str, value) -> None:
    size = lambda v: v.nbytes if isinstance(v, np.ndarray) else 0
    with self.lock:
      if size(value) > self.max_bytes or path in self.entries:
        return
      self.entries[path] = value
      self.bytes += size(value)
      while self.bytes > self.max_bytes:
        self.bytes -= size(self.entries.popitem(last=False)[1])


class LoadAudioCrop:
  """Grain transform: record index -> {"audio": float32 [S, C], "skipped": [...]}.

  A random S-sample crop (zero-padded at the end when the file is shorter). A file
  that cannot be used is reported in "skipped" and replaced by a random other record,
  drawn with the element's own RNG so the batch stays a function of (seed, step).

  Event crops: with probability `bounce_fraction` the element is instead a random
  record with "bounce_times" (the shapes manifest's), cropped so a random one of its
  bounces lies at a uniform place in the first `bounce_margin` of the crop -- the
  clicks are ~0.4% of the energy and in few uniform crops; with probability
  `end_fraction` the crop ends at the file's end (the tone's fade-out).
  """

  def __init__(
      self,
      records,
      num_samples: int,
      sample_rate: int,
      channels: int,
      skip_silent: bool,
      max_attempts: int = 16,
      bounce_fraction: float = 0.0,
      end_fraction: float = 0.0,
      bounce_margin: float = 0.75,
      cache_bytes: int = 0,
  ):
    self.records = records
    self.cache = WaveformCache(cache_bytes)
    self.num_samples = num_samples
    self.sample_rate = sample_rate
    self.channels = channels
    self.skip_silent = skip_silent
    self.max_attempts = max_attempts
    self.bouncing = [i for i, r in enumerate(records) if r.get("bounce_times")]
    self.bounce_fraction = bounce_fraction if self.bouncing else 0.0
    self.end_fraction = end_fraction
    self.bounce_margin = bounce_margin

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    skipped = []
    # Drawn only when event crops are on: without them the crops stay the uniform ones.
    kind = rng.random() if self.bounce_fraction or self.end_fraction else 1.0
    around_bounce = kind < self.bounce_fraction
    at_end = not around_bounce and kind < self.bounce_fraction + self.end_fraction
    if around_bounce:
      index = self.bouncing[int(rng.integers(len(self.bouncing)))]
    for _ in range(self.max_attempts):
      record = self.records[int(index)]
      try:
        waveform = self.cache.get(
            record["path"],
            lambda path: read_waveform(path, self.sample_rate, self.channels, self.skip_silent),
        )
      except MediaDecodeError as e:
        skipped.append((e.kind, e.path, e.detail))
        index = rng.integers(len(self.records))
        continue
      slack = waveform.shape[0] - self.num_samples
      start = int(rng.integers(slack + 1)) if slack > 0 else 0
      if at_end:
        start = max(slack, 0)
      elif around_bounce and record.get("bounce_times"):
        times = record["bounce_times"]
        bounce = int(round(times[int(rng.integers(len(times)))] * self.sample_rate))
        offset = int(rng.integers(int(self.bounce_margin * self.num_samples) + 1))
        start = int(np.clip(bounce - offset, 0, max(slack, 0)))
      crop = waveform[start : start + self.num_samples]
      crop = np.pad(crop, ((0, self.num_samples - crop.shape[0]), (0, 0)))  # [S, C]
      return {"audio": crop.astype(np.float32), "skipped": skipped}
    raise RuntimeError(
        f"{self.max_attempts} audio files in a row could not be used "
        f"({[s[:2] for s in skipped]}); the data set looks broken."
    )


# -------------------------------------------------------------------------------- task


class AudioVAETask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.model = make_audio_vae(config.model)
    self.sample_rate = int(config.model.sample_rate)
    self.crop = crop_samples(
        config.data.crop_seconds, self.sample_rate, self.model.hop, "data.crop_seconds"
    )
    self.windows = window_samples(config.loss.stft_windows_s, self.sample_rate)
    self.onset_windows = window_samples(
        config.loss.get("onset_windows_s", (0.02,)), self.sample_rate
    )
    self._eval = None
    self._bouncing = None

  def manifest(self) -> str:
    return manifest_path(self.config.data, self.workdir, self.sample_rate)

  # ----------------------------------------------------------------------- model
  def batch_specs(self):
    shape = (self.config.train.batch_size, self.crop, self.model.audio_channels)
    return {"audio": {"audio": jax.ShapeDtypeStruct(shape, jnp.float32)}}

  def init(self, rng):
    waveform = jnp.zeros((1, self.crop, self.model.audio_channels), jnp.float32)
    return {"vae": self.model.init(rng, waveform)["params"]}, {}

  def loss(self, params, frozen, batch, rng, step):
    del frozen, step
    cfg = self.config.loss
    x = batch["audio"]  # [B, S, C]
    recon, mean, logvar, _ = self.model.apply({"params": params["vae"]}, x, rng=rng)
    log_l1, mag_l1 = multiscale_stft_loss(recon, x, self.windows)
    wave = waveform_l1(recon, x).mean()
    kl = kl_divergence(mean, logvar).mean()
    log_l1, mag_l1 = log_l1.mean(), mag_l1.mean()
    total = (
        cfg.log_magnitude_weight * log_l1
        + cfg.magnitude_weight * mag_l1
        + cfg.waveform_weight * wave
        + cfg.kl_weight * kl
    )
    onset_weight = cfg.get("onset_weight", 0.0)
    onset = onset_loss(recon, x, self.onset_windows).mean() if onset_weight else jnp.zeros(())
    total = total + onset_weight * onset
    signal = jnp.sum(jnp.square(x), axis=(1, 2))
    noise = jnp.maximum(jnp.sum(jnp.square(recon - x), axis=(1, 2)), 1e-20)
    snr = 10 * jnp.log10(jnp.maximum(signal, 1e-20) / noise).mean()
    return total, {
        "log_stft_l1": log_l1,
        "stft_l1": mag_l1,
        "waveform_l1": wave,
        "kl": kl,
        "onset_rms_db": onset,
        "snr_db": snr,
        "latent_std": mean.std(),
    }

  # ------------------------------------------------------------------------ data
  def train_batches(self, start_step, rows_of):
    data = self.config.data
    records, skipped = read_audio_records(self.manifest(), "train")
    if not records:
      raise ValueError(f'No training records in {self.manifest()} (split "train").')
    load = LoadAudioCrop(
        records,
        self.crop,
        self.sample_rate,
        self.model.audio_channels,
        data.skip_silent,
        bounce_fraction=data.get("bounce_crop_fraction", 0.0),
        end_fraction=data.get("end_crop_fraction", 0.0),
        cache_bytes=int(data.get("decoded_cache_mb", 0) * 2**20),
    )
    stream = Stream("audio", len(records), load, self.config.train.batch_size)
    return DataIterator(
        [stream],
        sources.loader_options(data, self.config.seed),
        lambda batch: {"audio": batch["audio"]},
        rows_of=rows_of,
        skipped_records=skipped,
        num_records=len(records) + sum(skipped.values()),
        start=start_step,
    )

  # ------------------------------------------------------------------------ eval
  def eval_clips(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Held-out clips, decoded once: (float32 [N, S, C] zero-padded, lengths [N], records).

    Unusable eval files are skipped (and logged); none usable is an error.
    """
    if self._eval is None:
      e = self.config.eval
      length = crop_samples(e.seconds, self.sample_rate, self.model.hop, "eval.seconds")
      records, _ = read_audio_records(self.manifest(), "eval")
      clips, lengths, kept = [], [], []
      for record in records:
        if len(kept) == e.num_clips:
          break
        try:
          waveform = read_waveform(
              record["path"],
              self.sample_rate,
              self.model.audio_channels,
              self.config.data.skip_silent,
          )
        except MediaDecodeError as err:
          logging.warning("Skipping eval file %s", err)
          continue
        waveform = waveform[:length]
        lengths.append(waveform.shape[0])
        clips.append(np.pad(waveform, ((0, length - waveform.shape[0]), (0, 0))))
        kept.append(record)
      if not kept:
        raise ValueError(
            f'{self.manifest()} has no usable "split": "eval" audio to '
            'evaluate on; mark some lines "split": "eval".'
        )
      self._eval = (np.stack(clips), np.array(lengths), kept)
    return self._eval

  @functools.cached_property
  def _reconstruct(self):
    def reconstruct(params, waveform):  # [B, S, C] -> posterior-mean reconstruction
      mean, _ = self.model.apply({"params": params}, waveform, method=AudioVAE.encode)
      return self.model.apply({"params": params}, mean, waveform.shape[1], method=AudioVAE.decode)

    return jax.jit(reconstruct)

  def reconstruct(self, vae_params, clips: np.ndarray) -> np.ndarray:
    """Posterior-mean reconstructions of float32 [N, S, C] clips, in eval batches."""
    batch_size = self.config.eval.batch_size
    return np.concatenate(
        [
            np.asarray(self._reconstruct(vae_params, clips[i : i + batch_size]))
            for i in range(0, len(clips), batch_size)
        ]
    )

  def evaluate(self, params, frozen, step):
    del frozen
    clips, lengths, records = self.eval_clips()
    recons = self.reconstruct(params["vae"], clips)
    scores = reconstruction_scores(clips, recons, lengths, records, self.sample_rate, self.windows)
    self.write_wavs(clips, recons, lengths, step)
    count = self.config.eval.get("num_bouncing_clips", 0)
    if count and self.config.data.name == "shapes_audio":
      # The held-out split holds few bounces: the clicks are scored on fresh clips.
      if self._bouncing is None:
        self._bouncing = bouncing_clips(
            self.config.data.shapes_audio, self.sample_rate, count, self.model.hop
        )
      fresh, fresh_records = self._bouncing
      got = reconstruction_scores(
          fresh,
          self.reconstruct(params["vae"], fresh),
          np.full(len(fresh), fresh.shape[1]),
          fresh_records,
          self.sample_rate,
          self.windows,
      )
      scores.update(
          {
              f"bouncing_{k}": v
              for k, v in got.items()
              if k in ("snr_db", "onset_hit_rate", "false_onsets_per_clip")
          }
      )
    return scores

  def write_wavs(self, clips, recons, lengths, step):
    """input_NN.wav and reconstruction_NN.wav under workdir/eval/step_<step>/."""
    if jax.process_index() != 0:
      return
    out_dir = os.path.join(self.workdir, "eval", f"step_{step}")
    os.makedirs(out_dir, exist_ok=True)
    for i in range(min(self.config.eval.num_wavs_to_write, len(clips))):
      audio_lib.write_wav(
          os.path.join(out_dir, f"input_{i:02d}.wav"), clips[i, : lengths[i]], self.sample_rate
      )
      clipped = audio_lib.write_wav(
          os.path.join(out_dir, f"reconstruction_{i:02d}.wav"),
          recons[i, : lengths[i]],
          self.sample_rate,
      )
      if clipped:
        logging.warning("reconstruction_%02d.wav: %d samples clipped to 16 bits", i, clipped)
    logging.info("Wrote reconstructions to %s", out_dir)


def reconstruction_scores(
    clips, recons, lengths, records, sample_rate: int, windows
) -> dict[str, float]:
  """Mean SNR (dB) and spectral distance (dB) over clips, each on its real length; on
  shapes audio also tone_accuracy (pitch names the colour) and onset_hit_rate /
  false_onsets_per_clip of clicks detected in the reconstructions vs the bounces."""
  snr, distance = [], []
  hits = bounces = false_onsets = tone_right = tone_clips = 0
  for clip, recon, n, record in zip(clips, recons, lengths, records):
    x, y = clip[None, :n], recon[None, :n]
    snr.append(float(snr_db(y, x)[0]))
    distance.append(float(spectral_distance_db(y, x, windows)[0]))
    if "bounce_times" in record:
      score = shapes_audio.sync_score(
          shapes_audio.detect_onsets(y[0], sample_rate),
          [t for t in record["bounce_times"] if t < n / sample_rate],
      )
      hits, bounces = hits + score.num_hits, bounces + score.num_bounces
      false_onsets += score.num_false_onsets
    color = record.get("attributes", {}).get("color")
    if color in shapes_audio.TONE_HZ:
      tone_clips += 1
      tone_right += shapes_audio.color_from_tone(y[0], sample_rate) == color
  scores = {"snr_db": float(np.mean(snr)), "spectral_distance_db": float(np.mean(distance))}
  if tone_clips:
    scores["tone_accuracy"] = tone_right / tone_clips
  if any("bounce_times" in r for r in records):
    scores["onset_hit_rate"] = hits / bounces if bounces else 1.0
    scores["false_onsets_per_clip"] = false_onsets / len(records)
  return scores


def bouncing_clips(
    shapes_config, sample_rate: int, count: int, hop: int, seed: int = shapes_audio.BOUNCING_SEED
) -> tuple[np.ndarray, list[dict]]:
  """`count` fresh "bouncing" shapes clips, never trained on (their own seed; the audio
  DiT's sync clips): (float32 [N, S, 1] waveforms cut to whole latent frames, records
  with the colour and the bounce times). shapes_config: data.shapes_audio."""
  clips, records = [], []
  for index in range(count):
    spec = shapes_audio.clip_spec(seed, index, "bouncing")
    clips.append(
        shapes_audio.render_audio(spec, shapes_config.num_frames, shapes_config.fps, sample_rate)
    )
    records.append(
        {
            "attributes": {"color": spec.color},
            "bounce_times": shapes_audio.bounce_times(
                spec, shapes_config.num_frames, shapes_config.fps
            ).tolist(),
        }
    )
  clips = np.stack(clips)
  return clips[:, : clips.shape[1] - clips.shape[1] % hop], records
