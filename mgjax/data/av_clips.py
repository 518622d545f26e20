"""Paired video + audio clips for the video-to-audio model: decode, count bad ones, cache.

A clip is the first `clip_seconds` of a record's video (frames resampled to `fps`,
resized to the model's frame size) and of its sound (resampled to the audio VAE's
rate, mono/stereo converted):

    frames uint8 [Tv, H, W, 3]   Tv = round(clip_seconds * fps)
    audio  float32 [S, C]        S  = round(clip_seconds * sample_rate)

A record whose video or audio cannot be decoded, or that is shorter than the clip,
is skipped and counted by kind (`video_<kind>` / `audio_<kind>`), never a crash:
the counts go to the trainer's data metrics. The sound comes from the record's
"audio" file when it has one (the shapes set's .wav), else from the video's own
audio stream.

`cache_clips` decodes a whole split once into one .npz (frames, audio latents from
the trained VAE, captions and the manifest records), so the training loop reads
arrays from memory: on the tiny CPU run, decoding 2 x 256 files per epoch would
cost more than the model's steps.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from mgjax.data import audio as audio_lib
from mgjax.data import shapes_audio
from mgjax.data import video as video_lib
from mgjax.data.video import MediaDecodeError

CACHE_VERSION = 1


def read_records(manifest: str, split: str) -> list[dict]:
  """Manifest lines of one split with absolute "video_path" / "audio_path"."""
  if not os.path.exists(manifest):
    raise FileNotFoundError(
        f"Manifest {manifest} does not exist; write one JSON object per "
        'line with a "video" (and optional "audio") path, or use '
        "data.name='shapes_audio' for the synthetic set."
    )
  base = os.path.dirname(os.path.abspath(manifest))
  records = []
  for record in shapes_audio.read_manifest(manifest):
    if record.get("split", "train") != split or not isinstance(record.get("video"), str):
      continue
    record = dict(record, video_path=os.path.join(base, record["video"]))
    if isinstance(record.get("audio"), str):
      record["audio_path"] = os.path.join(base, record["audio"])
    records.append(record)
  return records


def clip_lengths(clip_seconds: float, fps: float, sample_rate: int) -> tuple[int, int]:
  """(video frames, audio samples) of a clip."""
  return int(round(clip_seconds * fps)), int(round(clip_seconds * sample_rate))


def load_clip(
    record: dict,
    clip_seconds: float,
    fps: float,
    size: tuple[int, int],
    sample_rate: int,
    channels: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(frames uint8 [Tv, H, W, 3], audio float32 [S, C]); raises MediaDecodeError with
  kind video_* / audio_*."""
  num_frames, num_samples = clip_lengths(clip_seconds, fps, sample_rate)
  try:
    frames = video_lib.read_clip(record["video_path"], num_frames, fps=fps, size=size)
  except MediaDecodeError as e:
    raise MediaDecodeError(e.path, f"video_{e.kind}", e.detail) from e
  path = record.get("audio_path", record["video_path"])
  try:
    waveform = audio_lib.read_audio(path, sample_rate=sample_rate, channels=channels)
  except MediaDecodeError as e:
    raise MediaDecodeError(e.path, f"audio_{e.kind}", e.detail) from e
  if waveform.shape[0] < num_samples - sample_rate // 100:  # 10 ms of slack for codecs
    raise MediaDecodeError(
        path,
        "audio_too_short",
        f"{waveform.shape[0] / sample_rate:.3f} s of sound, the clip needs "
        f"{clip_seconds} s (data.clip_seconds)",
    )
  waveform = waveform[:num_samples]
  waveform = np.pad(waveform, ((0, num_samples - waveform.shape[0]), (0, 0)))
  return frames, waveform.astype(np.float32)


def load_clips(
    records: Sequence[dict], limit: int | None = None, **clip_args
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict], collections.Counter]:
  """Up to `limit` usable clips of `records`, their records, and the skipped by kind."""
  clips, kept, skipped = [], [], collections.Counter()
  for record in records:
    if limit is not None and len(kept) == limit:
      break
    try:
      clips.append(load_clip(record, **clip_args))
    except MediaDecodeError as e:
      skipped[e.kind] += 1
      logging.warning("Skipping clip %s", e)
      continue
    kept.append(record)
  return clips, kept, skipped


def cache_clips(
    path: str,
    records: Sequence[dict],
    fingerprint: dict,
    encode: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 16,
    **clip_args,
) -> dict:
  """Decodes and VAE-encodes `records` into `path` (.npz) unless a cache with the same
  fingerprint is there; returns {frames [N, Tv, H, W, 3] uint8, latent [N, T, C]
  float32, caption [N], records (JSON), skipped (JSON)}."""
  fingerprint = dict(fingerprint, version=CACHE_VERSION)
  if os.path.exists(path):
    with np.load(path) as saved:
      if json.loads(str(saved["fingerprint"])) == fingerprint:
        return {k: saved[k] for k in saved.files}
    logging.info("Clip cache %s was made from other data or another VAE; redoing it.", path)
  clips, kept, skipped = load_clips(records, **clip_args)
  if not clips:
    raise ValueError(
        f"None of the {len(records)} clips could be used (skipped by kind: "
        f"{dict(skipped)}); check the data set's files."
    )
  frames = np.stack([c[0] for c in clips])  # [N, Tv, H, W, 3]
  waveforms = np.stack([c[1] for c in clips])  # [N, S, C]
  latents = np.concatenate(
      [
          np.asarray(encode(waveforms[i : i + batch_size]))
          for i in range(0, len(waveforms), batch_size)
      ]
  )  # [N, T, C]
  arrays = dict(
      frames=frames,
      latent=latents.astype(np.float32),
      caption=np.array([r.get("caption", "") for r in kept]),
      records=np.array(json.dumps(kept)),
      skipped=np.array(json.dumps(skipped)),
      fingerprint=np.array(json.dumps(fingerprint)),
  )
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temp = path + ".tmp.npz"
  np.savez(temp, **arrays)
  os.replace(temp, path)
  logging.info("Cached %d clips (%d skipped) in %s", len(kept), sum(skipped.values()), path)
  return arrays
