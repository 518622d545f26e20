"""What a task generates, and the one writer that puts it on disk.

`Task.generate` (for `mgjax.sample`), `Task.preview` (for `mgjax.inspect` and the
notebook) and every task's evaluation return `Sample`s; `write_samples` writes them
the same way for every task: a video as .mp4 (one frame: .png), sound as .wav, sound
made for an input video also muxed onto that video's stream as .mp4, plus an index
of the prompts and a contact sheet of the videos.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from mgjax.data import audio as audio_lib
from mgjax.data.video import write_image, write_video

CONTACT_SHEET_FRAMES = 8


@dataclasses.dataclass
class SampleRequest:
  """What a user asks a trained model for (`mgjax.sample` flags); None: the run's own."""

  prompts: Sequence[str] = ()  # text prompts; "" means none
  inputs: Sequence[str] = ()  # media files to condition on (e.g. videos to add sound to)
  videos: Sequence[Sample] = ()  # made by an earlier model, to refine (chained sampling)
  references: Sequence[str] = ()  # images of a subject to keep (PT2V): one, or one per prompt
  # Edit runs (mgjax/tasks/edit.py): instructions for the `inputs` videos (one, or one
  # each); the first / last frame images of image-to-video; a video to extend by
  # `seconds`; the task embedding of each edit (one, or one per instruction; none or
  # "auto": the generic one).
  instructions: Sequence[str] = ()
  first_frame: str | None = None
  last_frame: str | None = None
  extend: str | None = None
  seconds: float | None = None
  edit_tasks: Sequence[str] = ()
  num_frames: int | None = None
  height: int | None = None
  width: int | None = None
  num_steps: int | None = None
  schedule: str | None = None
  method: str | None = None
  cfg_scale: float | None = None
  seed: int = 0
  batch_size: int = 8
  progress: Callable[[int], None] | None = None  # called with steps done, e.g. tqdm.update


@dataclasses.dataclass
class Sample:
  """One generated item: a video, a sound, or both."""

  name: str  # file stem
  prompt: str = ""
  video: np.ndarray | None = None  # uint8 [T, H, W, 3]
  fps: float = 16.0
  audio: np.ndarray | None = None  # float [S, C] in (-1, 1)
  sample_rate: int = 0
  source_video: str | None = None  # sound made for this file: muxed onto its stream


def slug(text: str, limit: int = 48) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


def contact_sheet(videos: Sequence[np.ndarray], num_columns: int = CONTACT_SHEET_FRAMES):
  """uint8 [T, H, W, 3] videos -> [N H, min(T, cols) W, 3]: evenly spaced frames per row."""
  t = min(len(v) for v in videos)
  columns = np.unique(np.linspace(0, t - 1, min(t, num_columns)).round().astype(int))
  rows = [np.concatenate(list(video[columns]), axis=1) for video in videos]  # [H, k W, 3]
  return np.concatenate(rows, axis=0)


def write_samples(
    samples: Sequence[Sample],
    out_dir: str,
    index_name: str = "prompts.txt",
    sheet: bool = True,
    max_media: int | None = None,
) -> list[str]:
  """Writes the files of the first `max_media` samples (all by default) into out_dir,
  the prompts of all of them (line i: sample i) and, for videos of one size,
  contact_sheet.png; returns the media paths written."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for sample in samples[:max_media]:
    stem = os.path.join(out_dir, sample.name)
    if sample.audio is not None:
      paths.append(stem + ".wav")
      audio_lib.write_wav(paths[-1], sample.audio, sample.sample_rate)
      if sample.source_video:
        paths.append(stem + ".mp4")
        audio_lib.mux_audio(sample.source_video, sample.audio, sample.sample_rate, paths[-1])
    if sample.video is not None:
      if len(sample.video) == 1:
        paths.append(stem + ".png")
        write_image(paths[-1], sample.video[0])
      else:
        paths.append(stem + ".mp4")
        write_video(paths[-1], sample.video, fps=sample.fps)
  if index_name:
    with open(os.path.join(out_dir, index_name), "w", encoding="utf-8") as f:
      f.write("\n".join(s.prompt for s in samples) + "\n")
  videos = [s.video for s in samples if s.video is not None]
  if sheet and videos and len({v.shape[1:] for v in videos}) == 1:
    write_image(os.path.join(out_dir, "contact_sheet.png"), contact_sheet(videos))
  return paths
