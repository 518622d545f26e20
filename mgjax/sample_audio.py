"""Sound for a video from a trained video-to-audio run (`mgjax.sample --task=v2a`).

    python -m mgjax.sample --task=v2a --workdir=W --video=IN.mp4 [--prompt="..."] \
        --out=OUT_DIR

Reads the video's frames (any codec, size and frame rate mgjax.data.video reads),
resampled to the model's frame rate (data.fps) and resized (centre crop) to its
frame size (data.frame_size); generates audio for the video's whole duration --
through `mgjax.audio_longform.sample_long` (longform.method, window_frames,
overlap_frames) when it is longer than the trained window; decodes it with the
run's audio VAE and writes OUT_DIR/<video name>.wav and OUT_DIR/<video name>.mp4
(the input's video stream with the new sound). Without --prompt the text condition
is the null one the model was trained with (text dropout), i.e. video only.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from mgjax.data import audio as audio_lib
from mgjax.data import video as video_lib
from mgjax.data.video import VideoDecodeError


def read_video(path: str, fps: float, size: tuple[int, int]) -> tuple[np.ndarray, float]:
  """(uint8 frames [Tv, H, W, 3] at fps, duration in seconds) of a video file; raises
  VideoDecodeError naming the file and the fix."""
  info = video_lib.probe(path)  # missing / empty / not a video: VideoDecodeError
  duration = info.duration if info.duration > 0 else info.num_frames / info.fps
  num_frames = int(math.floor(duration * fps + 1e-6))
  if num_frames < 1:
    raise VideoDecodeError(
        path,
        "empty",
        f"the video lasts {duration:.3f} s, less than one "
        f"frame at {fps:g} fps; pass a longer video",
    )
  while True:
    try:
      return video_lib.read_clip(path, num_frames, fps=fps, size=size), duration
    except VideoDecodeError as e:  # the header promised more frames than decode
      if e.kind != "too_short" or num_frames == 1:
        raise
      num_frames -= 1


def video_to_audio(
    workdir: str,
    video_path: str,
    out_dir: str,
    prompt: str = "",
    *,
    num_steps: int | None = None,
    cfg_scale: float | None = None,
    method: str | None = None,
    seed: int = 0,
    step: int | None = None,
) -> tuple[str, str]:
  """Writes OUT_DIR/<name>.wav and the muxed OUT_DIR/<name>.mp4; returns their paths."""
  from mgjax.train import restore_train_state  # the trainer imports tasks lazily

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No trained run in {workdir} ({path} is missing); train one "
        "with `python -m mgjax.train --config=experiments/audio.py:tiny "
        f"--workdir={workdir}`."
    )
  with open(path) as f:
    saved = json.load(f)
  if saved["task"] != "audio":
    raise ValueError(
        f"--task=v2a needs a video-to-audio run (task 'audio'); {workdir} holds "
        f"a {saved['task']!r} run."
    )
  # The video is read before the (slower) restore, so a bad file fails at once.
  frames, duration = read_video(
      video_path, float(saved["model"]["video_fps"]), tuple(saved["data"]["frame_size"])
  )
  config, task, state = restore_train_state(workdir, step)
  sample_rate = task.sample_rate
  num_samples = int(round(duration * sample_rate))
  latent_frames = -(-num_samples // task.codec.hop)
  # The last latent frame may start after the last whole video frame: repeat it.
  needed = int(math.ceil(latent_frames / config.model.latent_rate * task.video_fps))
  if needed > len(frames):
    frames = np.concatenate([frames, np.repeat(frames[-1:], needed - len(frames), axis=0)])
  f = config.flow
  wave = task.generate(
      state.eval_params(),
      state.frozen,
      frames[None],
      [prompt],
      num_samples,
      num_steps=num_steps or f.sample_steps,
      cfg_scale=f.cfg_scale if cfg_scale is None else cfg_scale,
      method=method or f.method,
      schedule=f.schedule,
      seed=seed,
  )[0]
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.splitext(os.path.basename(video_path))[0]
  wav_path, mp4_path = (os.path.join(out_dir, stem + ext) for ext in (".wav", ".mp4"))
  audio_lib.write_wav(wav_path, wave, sample_rate)
  audio_lib.mux_audio(video_path, wave, sample_rate, mp4_path)
  return wav_path, mp4_path
