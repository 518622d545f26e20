"""Sound for the shapes clips: a tone for the colour, a click at every bounce.

The audio of a `shapes.ClipSpec` is made so that a small video-to-audio model
can learn it on CPU and a checker can score it from the waveform alone:

* A continuous sine tone whose pitch names the shape's colour
  (`TONE_HZ`). The six pitches are ~6.5 semitones apart (ratio ~1.46) and no
  two are within 5% of an octave or a twelfth, so an FFT peak names the colour
  without harmonic confusion, even from a 40 ms window (25 Hz bins).
* A click -- a 25 ms burst of white noise decaying with a 4 ms time constant
  -- starting at the time of every frame where the shape touches a wall, that
  is where its velocity reverses on an axis (`bounce_frames`). Only the
  "bouncing" motion reverses, so the other motions are a steady tone.

Everything is a pure function of the spec, frame count, fps and sample rate:
the click is one fixed noise burst (drawn from CLICK_SEED), the tone starts
at phase 0. `bounce_times` is the ground truth for a sync score;
`detect_onsets` finds clicks in any waveform (generated or decoded) and
`sync_score` counts how many bounces have an onset within a tolerance
(default 40 ms: one latent frame at the paper's 25 Hz audio latent rate).

Command line (videos with sound, as .wav plus muxed .mp4, and a manifest):
  python -m mgjax.data.shapes_audio --out=DIR --num_videos=200 --seed=0
  python -m mgjax.data.shapes_audio --out=DIR --num_videos=20 --seed=0 --sample_rate=16000
The same seed draws the same clips as `python -m mgjax.data.shapes`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from mgjax.data import audio, shapes, video
from mgjax.data.shapes import (
    caption,
    centers,
    heldout_combinations,
    jsonl_text,
    render_clip,
    sample_spec,
    write_text_atomic,
)
from mgjax.data.shapes import read_jsonl as read_manifest  # the records of a manifest.jsonl

DEFAULT_SAMPLE_RATE = 48_000  # The paper's audio rate.

# Tone pitch per colour (Hz), ~1.46x apart; see the module docstring.
TONE_HZ: dict[str, float] = {
    "red": 300.0,
    "green": 440.0,
    "blue": 640.0,
    "yellow": 940.0,
    "purple": 1370.0,
    "cyan": 2000.0,
}
TONE_AMPLITUDE = 0.25
TONE_FADE_OUT_S = 0.005  # Ends the tone without a broadband cut-off click.
CLICK_AMPLITUDE = 0.6  # Tone + click peak at 0.85: never clips.
CLICK_DECAY_S = 0.004
CLICK_LENGTH_S = 0.025
CLICK_SEED = 0

# Onset detector: spectral flux of dB magnitudes over 20 ms Hann windows every
# 5 ms. Flux is the mean over frequency bins of the positive dB rise from the
# previous window, with magnitudes floored at ONSET_FLOOR_DB (dBFS), so noise
# below the floor never rises. A steady tone measures < 1 dB, a click over the
# loudest tone > 20 dB.
ONSET_WINDOW_S = 0.020
ONSET_HOP_S = 0.005
ONSET_FLOOR_DB = -80.0
ONSET_THRESHOLD_DB = 6.0
ONSET_MIN_GAP_S = 0.030  # Peaks closer than this are one onset.
SYNC_TOLERANCE_S = 0.040  # One 25 Hz latent frame.

# Seed of the fresh bouncing clips that click and sync scores are measured on (no
# training set of the configs uses it).
BOUNCING_SEED = 1234

_REVERSAL_EPS = 1e-9  # Per-frame steps smaller than this count as standing still.


# ----------------------------------------------------------------------------
# Ground truth from the spec.


def tone_frequency(color: str) -> float:
  """The tone's pitch (Hz) for a shapes colour."""
  if color not in TONE_HZ:
    raise ValueError(
        f"colour {color!r} has no tone; add it to shapes_audio.TONE_HZ "
        f"(tones exist for {sorted(TONE_HZ)})"
    )
  return TONE_HZ[color]


def bounce_frames(spec, num_frames: int) -> np.ndarray:
  """Frame indices where the shape's velocity reverses on either axis: int [K], sorted.

  The reversal frame is the last frame before the direction changes, i.e.
  the frame that shows the shape nearest the wall. A step that does not
  move (e.g. two frames equally far from the wall) keeps the old direction.
  """
  xy = centers(spec, num_frames)  # [T, 2]
  frames = set()
  for axis in range(2):
    steps = np.diff(xy[:, axis])  # [T - 1]; step j goes from frame j to j + 1.
    moving = np.flatnonzero(np.abs(steps) > _REVERSAL_EPS)
    for previous, current in zip(moving[:-1], moving[1:]):
      if np.sign(steps[previous]) != np.sign(steps[current]):
        frames.add(int(previous) + 1)
  return np.array(sorted(frames), dtype=np.int64)


def bounce_times(spec, num_frames: int, fps: float) -> np.ndarray:
  """Seconds of each bounce frame (frame i shows at i / fps): float [K]."""
  return bounce_frames(spec, num_frames) / float(fps)


def num_samples(num_frames: int, fps: float, sample_rate: int) -> int:
  """Audio samples spanning the clip: num_frames / fps seconds."""
  return int(round(num_frames * sample_rate / fps))


# ----------------------------------------------------------------------------
# Synthesis.


def click(sample_rate: int) -> np.ndarray:
  """The click: float32 [L], uniform noise under an exponential decay, peak <= CLICK_AMPLITUDE."""
  length = int(round(CLICK_LENGTH_S * sample_rate))
  t = np.arange(length) / sample_rate  # [L]
  noise = np.random.default_rng(CLICK_SEED).uniform(-1.0, 1.0, length)
  return (CLICK_AMPLITUDE * noise * np.exp(-t / CLICK_DECAY_S)).astype(np.float32)


def tone(color: str, length: int, sample_rate: int) -> np.ndarray:
  """The colour's sine from phase 0, faded out over its last 5 ms: float32 [length]."""
  t = np.arange(length) / sample_rate  # [S]
  wave = TONE_AMPLITUDE * np.sin(2 * np.pi * tone_frequency(color) * t)
  fade = min(length, int(round(TONE_FADE_OUT_S * sample_rate)))
  if fade:
    wave[length - fade :] *= np.linspace(1.0, 0.0, fade)
  return wave.astype(np.float32)


def render_audio(
    spec, num_frames: int, fps: float, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> np.ndarray:
  """The clip's sound: float32 [S, 1] mono, S = num_samples(num_frames, fps, sample_rate)."""
  if num_frames < 1 or not fps > 0:
    raise ValueError(f"render_audio needs num_frames >= 1 and fps > 0, got {num_frames}, {fps}")
  sample_rate = int(sample_rate)
  length = num_samples(num_frames, fps, sample_rate)
  wave = tone(spec.color, length, sample_rate)  # [S]
  burst = click(sample_rate)  # [L]
  for t in bounce_times(spec, num_frames, fps):
    start = int(round(t * sample_rate))
    end = min(length, start + len(burst))
    wave[start:end] += burst[: end - start]
  return wave[:, None]


# ----------------------------------------------------------------------------
# Checks on a waveform.


def _mono(waveform: np.ndarray) -> np.ndarray:
  """[T] or [T, C] -> float64 [T], channels averaged."""
  x = np.asarray(waveform, np.float64)
  return x.mean(axis=1) if x.ndim == 2 else x


def _db_spectrogram(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
  """Hann STFT magnitudes in dBFS, floored: ([N, F], window, hop) in samples.

  Scaled so a full-scale sine reads ~0 dB in its peak bin.
  """
  window = max(16, int(round(ONSET_WINDOW_S * sample_rate)))
  hop = max(1, int(round(ONSET_HOP_S * sample_rate)))
  if len(x) < window:
    x = np.pad(x, (0, window - len(x)))
  count = 1 + (len(x) - window) // hop
  taper = np.hanning(window)
  index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]  # [N, W]
  magnitude = np.abs(np.fft.rfft(x[index] * taper, axis=1)) * (2.0 / taper.sum())  # [N, F]
  db = 20 * np.log10(np.maximum(magnitude, 1e-12))
  return np.maximum(db, ONSET_FLOOR_DB), window, hop


def onset_strength(waveform: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """Spectral flux in dB per analysis window, and each window's onset time.

  Returns (flux [N], times [N] in seconds). Window n is compared with
  window n - 1 (window 0 with itself, so a sound already playing at the
  start is no onset). Log magnitudes make the flux depend on how much
  louder a sound gets, not on its absolute level. A window's time is where
  its newest hop begins: the part of the signal the window adds.
  """
  db, window, hop = _db_spectrogram(_mono(waveform), int(sample_rate))  # [N, F]
  previous = np.concatenate([db[:1], db[:-1]], axis=0)
  flux = np.maximum(db - previous, 0.0).mean(axis=1)  # [N]
  times = (np.arange(len(flux)) * hop + window - hop) / sample_rate
  return flux, times


def detect_onsets(
    waveform: np.ndarray,
    sample_rate: int,
    threshold_db: float = ONSET_THRESHOLD_DB,
    min_gap_s: float = ONSET_MIN_GAP_S,
) -> np.ndarray:
  """Onset times (s) of sudden broadband sounds such as the clicks: float [K].

  An onset is a window whose spectral flux (onset_strength) is at least
  threshold_db and the largest within min_gap_s either side (the earlier
  window wins a tie). waveform: [T] or [T, C] (channels averaged).
  """
  flux, times = onset_strength(waveform, sample_rate)
  hop_s = times[1] - times[0] if len(times) > 1 else ONSET_HOP_S
  reach = max(1, int(round(min_gap_s / hop_s)))
  onsets = []
  for n in np.flatnonzero(flux >= threshold_db):
    lo, hi = max(0, n - reach), min(len(flux), n + reach + 1)
    neighbourhood = flux[lo:hi]
    if flux[n] == neighbourhood.max() and n == lo + int(np.argmax(neighbourhood)):
      onsets.append(times[n])
  return np.array(onsets, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class SyncScore:
  """How well onsets in audio line up with the bounces of its video."""

  num_bounces: int
  num_hits: int  # Bounces with an onset within the tolerance.
  num_onsets: int
  num_false_onsets: int  # Onsets with no bounce within the tolerance.

  @property
  def hit_rate(self) -> float:
    """Fraction of bounces heard; 1.0 when there are no bounces."""
    return self.num_hits / self.num_bounces if self.num_bounces else 1.0


def sync_score(onset_times, bounce_times_s, tolerance_s: float = SYNC_TOLERANCE_S) -> SyncScore:
  """Counts bounces with an onset within +-tolerance_s, and onsets near no bounce."""
  onsets = np.asarray(onset_times, np.float64).reshape(-1)
  bounces = np.asarray(bounce_times_s, np.float64).reshape(-1)
  if len(onsets) and len(bounces):
    distance = np.abs(bounces[:, None] - onsets[None, :])  # [B, O]
    hits = int(np.sum(distance.min(axis=1) <= tolerance_s))
    false = int(np.sum(distance.min(axis=0) > tolerance_s))
  else:
    hits, false = 0, len(onsets)
  return SyncScore(len(bounces), hits, len(onsets), false)


def dominant_frequency(waveform: np.ndarray, sample_rate: int) -> float:
  """Frequency (Hz) of the strongest spectral peak of the whole clip.

  Hann window and a parabolic fit through the peak bin and its neighbours
  in log magnitude, which is accurate to a small fraction of a bin.
  """
  x = _mono(waveform)
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))  # [F]
  k = int(np.argmax(spectrum[1:])) + 1  # Skip DC.
  if 1 <= k < len(spectrum) - 1:
    a, b, c = np.log(np.maximum(spectrum[k - 1 : k + 2], 1e-30))
    denominator = a - 2 * b + c
    k = k + (0.5 * (a - c) / denominator if denominator else 0.0)
  return float(k * sample_rate / len(x))


def color_from_tone(waveform: np.ndarray, sample_rate: int) -> str:
  """The colour whose tone is nearest (in log frequency) to the waveform's peak."""
  peak = dominant_frequency(waveform, sample_rate)
  return min(TONE_HZ, key=lambda c: abs(np.log(max(peak, 1e-6) / TONE_HZ[c])))


# ----------------------------------------------------------------------------
# Data set on disk.

MANIFEST = "manifest.jsonl"
PARAMS_FILE = "shapes_audio.json"
# Bumped whenever the sound or the layout changes, so ensure_dataset rebuilds.
DATASET_VERSION = 1


def _dataset_params(
    num_videos,
    seed,
    sample_rate,
    fps,
    num_frames,
    height,
    width,
    eval_fraction,
    wav_format,
    motion="",
    motion_share=1.0,
) -> dict:
  """Validated parameters, as stored in shapes_audio.json: the videos' checked by
  mgjax.data.shapes (same rules), plus the sound's."""
  params = shapes.dataset_params(
      num_videos,
      seed,
      fps,
      num_frames,
      height,
      width,
      num_images=0,
      eval_fraction=eval_fraction,
      paths="random",
  )
  if sample_rate not in audio.AAC_SAMPLE_RATES:
    raise ValueError(
        f"sample_rate={sample_rate!r} cannot be muxed as AAC; use one of "
        f"{audio.AAC_SAMPLE_RATES} (48000 like the paper, 16000 for fast CPU runs)"
    )
  if wav_format not in audio.WAV_FORMATS:
    raise ValueError(f"wav_format={wav_format!r} is not one of {sorted(audio.WAV_FORMATS)}")
  if motion and motion not in shapes.MOTIONS:
    raise ValueError(f"motion={motion!r} is not one of {shapes.MOTIONS} ('' for any)")
  if not 0.0 <= motion_share <= 1.0:
    raise ValueError(f"motion_share={motion_share!r} must be in [0, 1]")
  for key in ("num_images", "paths"):  # no stills; the default paths
    del params[key]
  params.update(version=DATASET_VERSION, sample_rate=int(sample_rate), wav_format=wav_format)
  if motion:  # Absent when unset, so the parameters of existing sets still match.
    params.update(motion=motion, motion_share=float(motion_share))
  return params


def dataset_args(shapes, sample_rate: int, eval_fraction: float, bouncing_share: float) -> dict:
  """`ensure_dataset` keyword arguments from a config's shapes section (num_videos,
  seed, fps, num_frames, height, width) and the set's other settings."""
  return dict(
      num_videos=shapes.num_videos,
      seed=shapes.seed,
      sample_rate=sample_rate,
      fps=shapes.fps,
      num_frames=shapes.num_frames,
      height=shapes.height,
      width=shapes.width,
      eval_fraction=eval_fraction,
      **bouncing_args(bouncing_share),
  )


def bouncing_args(share: float) -> dict:
  """ensure_dataset keywords giving `share` of the clips a bounce (none for 0)."""
  return dict(motion="bouncing", motion_share=float(share)) if share else {}


def clip_spec(
    seed: int, index: int, motion: str = "", motion_share: float = 1.0
) -> shapes.ClipSpec:
  """Clip `index` of a set: shapes.sample_spec(default_rng([seed, index])), the clip
  mgjax.data.shapes draws. With `motion` set, `motion_share` of the clips (evenly
  spread over the indices) are drawn again from the same generator until they have
  that motion: 1.0 makes a set of only bouncing clips for sync scores, 0.5 one where
  half the clips bounce (a sixth do otherwise), so a model hears more clicks."""
  rng = np.random.default_rng([seed, index])
  spec = sample_spec(rng)
  forced = motion and int((index + 1) * motion_share) > int(index * motion_share)
  while forced and spec.motion != motion:
    spec = sample_spec(rng)
  return spec


def _write_clip(out_dir: str, index: int, spec, params: dict) -> dict:
  """Writes audio/NNNNN.wav and videos/NNNNN.mp4 (with sound); returns the manifest record."""
  rate, fps, frames_n = params["sample_rate"], params["fps"], params["num_frames"]
  wav_rel, mp4_rel = f"audio/{index:05d}.wav", f"videos/{index:05d}.mp4"
  mp4_path = os.path.join(out_dir, mp4_rel)
  sound = render_audio(spec, frames_n, fps, rate)  # [S, 1]
  clipped = audio.write_wav(os.path.join(out_dir, wav_rel), sound, rate, params["wav_format"])
  if clipped:
    raise RuntimeError(f"{wav_rel}: {clipped} samples clipped; the synthesis levels are wrong")
  silent = video._atomic_temp_path(mp4_path)
  try:
    frames = render_clip(spec, frames_n, params["height"], params["width"])
    video.write_video(silent, frames, fps)
    audio.mux_audio(silent, sound, rate, mp4_path)
  finally:
    if os.path.exists(silent):
      os.remove(silent)
  frame_ids = bounce_frames(spec, frames_n)
  return {
      "video": mp4_rel,
      "audio": wav_rel,
      "caption": caption(spec),
      "sample_rate": rate,
      "num_samples": int(sound.shape[0]),
      "fps": fps,
      "num_frames": frames_n,
      "width": params["width"],
      "height": params["height"],
      "attributes": spec.attributes,
      "tone_hz": tone_frequency(spec.color),
      "bounce_frames": [int(f) for f in frame_ids],
      "bounce_times": [float(f) / fps for f in frame_ids],
  }


def make_dataset(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    eval_fraction: float = 0.15,
    wav_format: str = "s16",
    motion: str = "",
    motion_share: float = 1.0,
) -> str:
  """Writes shapes clips with sound under out_dir; returns the manifest path.

  Layout: audio/NNNNN.wav (mono), videos/NNNNN.mp4 (H.264 + AAC),
  shapes_audio.json (parameters) and manifest.jsonl, written last and
  atomically so its presence marks a complete set. Clip i is
  shapes.sample_spec(np.random.default_rng([seed, i])), the same clip
  shapes.make_dataset draws, with the same split rule (held-out
  colour/shape/motion triples go to "eval"). Each manifest line holds the
  caption, the video and audio paths, sample_rate, and the bounce frames
  and times (seconds) that a sync score checks against. `motion` (e.g. "bouncing")
  gives `motion_share` of the clips that motion (`clip_spec`).
  """
  out_dir = os.fspath(out_dir)
  params = _dataset_params(
      num_videos,
      seed,
      sample_rate,
      fps,
      num_frames,
      height,
      width,
      eval_fraction,
      wav_format,
      motion,
      motion_share,
  )
  heldout = heldout_combinations(params["seed"], params["eval_fraction"])
  for sub in ("audio", "videos"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  for name in (MANIFEST, PARAMS_FILE):  # A run killed midway then leaves no manifest.
    if os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  records = []
  for index in range(params["num_videos"]):
    spec = clip_spec(params["seed"], index, motion, motion_share)
    record = _write_clip(out_dir, index, spec, params)
    record["split"] = "eval" if (spec.color, spec.shape, spec.motion) in heldout else "train"
    records.append(record)
  write_text_atomic(
      os.path.join(out_dir, PARAMS_FILE), json.dumps(params, sort_keys=True, indent=1) + "\n"
  )
  manifest = os.path.join(out_dir, MANIFEST)
  write_text_atomic(manifest, jsonl_text(records))
  return manifest


def is_complete(out_dir: str | os.PathLike, params: dict) -> bool:
  """Whether out_dir holds a finished set made with exactly `params`."""
  return shapes.holds_finished_set(
      out_dir, PARAMS_FILE, params, {MANIFEST: (params["num_videos"], ("video", "audio"))}
  )


def ensure_dataset(
    out_dir: str | os.PathLike,
    num_videos: int,
    seed: int,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    fps: float = 16,
    num_frames: int = 32,
    height: int = 64,
    width: int = 64,
    eval_fraction: float = 0.15,
    wav_format: str = "s16",
    motion: str = "",
    motion_share: float = 1.0,
) -> str:
  """The manifest of a complete matching set under out_dir, made first if missing.

  Same arguments as make_dataset; a set left half-made by a killed run has
  no manifest and is made again.
  """
  args = dict(
      sample_rate=sample_rate,
      fps=fps,
      num_frames=num_frames,
      height=height,
      width=width,
      eval_fraction=eval_fraction,
      wav_format=wav_format,
      motion=motion,
      motion_share=motion_share,
  )
  if is_complete(out_dir, _dataset_params(num_videos, seed, **args)):
    return os.path.join(os.fspath(out_dir), MANIFEST)
  return make_dataset(out_dir, num_videos, seed, **args)


# ----------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
  # Defined only when run as a program, so importing this module claims no flag names.
  from absl import flags

  flags.DEFINE_string("out", None, "Directory to write the data set into.", required=True)
  flags.DEFINE_integer("num_videos", 200, "Number of clips.")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed draws the clips mgjax.data.shapes does.")
  flags.DEFINE_integer("sample_rate", DEFAULT_SAMPLE_RATE, "Audio rate (Hz); 16000 for CPU runs.")
  flags.DEFINE_float("fps", 16, "Frame rate of the clips.")
  flags.DEFINE_integer("num_frames", 32, "Frames per clip.")
  flags.DEFINE_integer("height", 64, "Frame height in pixels (even).")
  flags.DEFINE_integer("width", 64, "Frame width in pixels (even).")
  flags.DEFINE_float(
      "eval_fraction", 0.15, "Fraction of (color, shape, motion) triples held out for eval."
  )
  flags.DEFINE_enum(
      "wav_format", "s16", sorted(audio.WAV_FORMATS), "Sample format of the .wav files."
  )
  flags.DEFINE_string("motion", "", "Give clips this motion (e.g. bouncing); '' none.")
  flags.DEFINE_float("motion_share", 1.0, "Share of the clips given --motion.")


def _main(argv) -> None:
  from absl import app, flags

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
  f = flags.FLAGS
  kwargs = dict(
      sample_rate=f.sample_rate,
      fps=f.fps,
      num_frames=f.num_frames,
      height=f.height,
      width=f.width,
      eval_fraction=f.eval_fraction,
      wav_format=f.wav_format,
      motion=f.motion,
      motion_share=f.motion_share,
  )
  try:
    reused = is_complete(f.out, _dataset_params(f.num_videos, f.seed, **kwargs))
    manifest = ensure_dataset(f.out, f.num_videos, f.seed, **kwargs)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  records = read_manifest(manifest)
  bounces = sum(len(r["bounce_frames"]) for r in records)
  bouncing = sum(bool(r["bounce_frames"]) for r in records)
  print(
      f"shapes_audio: {'found' if reused else 'wrote'} {len(records)} clips with sound at "
      f"{f.sample_rate} Hz "
      f"({sum(r['split'] == 'eval' for r in records)} eval; {bounces} bounces in "
      f"{bouncing} clips) to {manifest}"
  )


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(_main)
