"""Sample videos (or images) from a trained text-to-video run, or sound for a video.

    python -m mgjax.sample --workdir=W --prompt="a red circle moves to the left"
    python -m mgjax.sample --task=v2a --workdir=W --video=IN.mp4 [--prompt=...] --out=DIR
    python -m mgjax.sample --workdir=W --prompts_file=prompts.txt --num_steps=50 \
        --schedule=linear_quadratic --cfg_scale=7.5 --num_frames=32 --height=64 --width=64

Writes one .mp4 per prompt (a .png when --num_frames=1: text-to-image) and a
contact sheet PNG (one row per prompt, frames across) to --out_dir (default
<workdir>/samples/cli). The prompts file holds one prompt per line, of any length
(longer than the text encoder's max_length tokens: truncated, and reported); blank
lines are skipped. Videos get the frame-rate tag ("FPS-16 ...") the model was
trained with, unless the prompt already starts with one.

--task=v2a (video-to-audio, a run of experiments/audio.py) is mgjax/sample_audio.py:
it writes DIR/<video name>.wav and the muxed DIR/<video name>.mp4.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import tqdm
from absl import app, flags, logging

from mgjax.data.examples import tagged_caption
from mgjax.data.video import write_image, write_video
from mgjax.flow import SCHEDULES, SOLVERS

CONTACT_SHEET_FRAMES = 8


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str]:
  """Prompts from --prompt (repeatable) and --prompts_file (blank lines skipped)."""
  prompts = list(prompt or [])
  if prompts_file:
    if not os.path.exists(prompts_file):
      raise ValueError(f"--prompts_file={prompts_file} does not exist.")
    with open(prompts_file, encoding="utf-8") as f:
      prompts += [line.strip() for line in f if line.strip()]
  for i, p in enumerate(prompts):
    if not p.strip():
      raise ValueError(f"Prompt {i + 1} is empty; describe the video to generate.")
  if not prompts:
    raise ValueError(
        'No prompts: pass --prompt="..." or a --prompts_file with one ' "prompt per line."
    )
  return prompts


def with_fps_tag(prompt: str, fps: float, num_frames: int) -> str:
  if num_frames == 1 or re.match(r"FPS-[0-9.]+\s", prompt):
    return prompt
  return tagged_caption(prompt, fps)


def video_fps(config) -> float:
  """The frame rate a run's videos are written (and tagged) with."""
  return config.data.fps or 16


def slug(text: str, limit: int = 48) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


def contact_sheet(videos: np.ndarray, num_columns: int = CONTACT_SHEET_FRAMES) -> np.ndarray:
  """uint8 [N, T, H, W, 3] -> [N * H, min(T, cols) * W, 3]: evenly spaced frames per row."""
  n, t, h, w, _ = videos.shape
  columns = np.unique(np.linspace(0, t - 1, min(t, num_columns)).round().astype(int))
  rows = [np.concatenate(list(video[columns]), axis=1) for video in videos]  # [H, k W, 3]
  return np.concatenate(rows, axis=0)


def generate_videos(
    config,
    task,
    state,
    prompts: list[str],
    *,
    num_steps: int | None = None,
    schedule: str | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    method: str = "euler",
    batch_size: int = 8,
) -> tuple[np.ndarray, list[str]]:
  """uint8 videos [N, T, H, W, 3] for the prompts, and the prompts as the model read
  them (frame-rate tagged), from a restored run (`mgjax.train.restore_train_state`).

  Shared by `sample` (files) and `mgjax.inspect` (arrays in a notebook). Unset
  arguments take the run's: the first video bucket's size, config.flow's sampler.
  """
  video_bucket = next((b for b in task.buckets if not b.is_image), task.buckets[0])
  num_frames = num_frames or video_bucket.num_frames
  height, width = height or video_bucket.height, width or video_bucket.width
  f = config.flow
  kwargs = dict(
      num_steps=num_steps or f.sample_steps,
      schedule=schedule or f.schedule,
      cfg_scale=f.cfg_scale if cfg_scale is None else cfg_scale,
      method=method,
  )
  tagged = [with_fps_tag(p, video_fps(config), num_frames) for p in prompts]
  params = state.eval_params()
  videos = []
  with tqdm.tqdm(
      total=kwargs["num_steps"] * -(-len(prompts) // batch_size), unit="step", desc="sampling"
  ) as bar:
    for start in range(0, len(prompts), batch_size):
      videos.append(
          task.generate(
              params,
              state.frozen,
              tagged[start : start + batch_size],
              num_frames,
              height,
              width,
              seed=seed + start,
              step_callback=lambda i, n: bar.update(),
              **kwargs,
          )
      )
  report = task.text.truncation_report()
  if report:
    logging.warning("%s.", report)
  return np.concatenate(videos), tagged  # [N, T, H, W, 3]


def sample(
    workdir: str,
    prompts: list[str],
    out_dir: str,
    *,
    num_steps: int | None = None,
    schedule: str | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    method: str = "euler",
    batch_size: int = 8,
    step: int | None = None,
) -> list[str]:
  """Generates one file per prompt into out_dir; returns their paths."""
  from mgjax.train import restore_train_state

  config, task, state = restore_train_state(workdir, step)
  videos, tagged = generate_videos(
      config,
      task,
      state,
      prompts,
      num_steps=num_steps,
      schedule=schedule,
      cfg_scale=cfg_scale,
      seed=seed,
      num_frames=num_frames,
      height=height,
      width=width,
      method=method,
      batch_size=batch_size,
  )  # [N, T, H, W, 3]
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for i, (prompt, video) in enumerate(zip(prompts, videos)):
    name = os.path.join(out_dir, f"{i:03d}_{slug(prompt)}")
    if videos.shape[1] == 1:
      paths.append(name + ".png")
      write_image(paths[-1], video[0])
    else:
      paths.append(name + ".mp4")
      write_video(paths[-1], video, fps=video_fps(config))
  write_image(os.path.join(out_dir, "contact_sheet.png"), contact_sheet(videos))
  with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(tagged) + "\n")
  return paths


def run_v2a(FLAGS) -> None:
  """--task=v2a: sound for --video; clear one-line errors, exit code 2."""
  from mgjax.data.video import MediaDecodeError
  from mgjax.sample_audio import video_to_audio

  try:
    if not FLAGS.video:
      raise ValueError("--task=v2a needs --video=IN.mp4, the video to make sound for.")
    if len(FLAGS.prompt or []) > 1:
      raise ValueError("--task=v2a takes at most one --prompt (the sound's description).")
    paths = video_to_audio(
        FLAGS.workdir,
        FLAGS.video,
        FLAGS.out or FLAGS.out_dir or os.path.join(FLAGS.workdir, "samples", "v2a"),
        (FLAGS.prompt or [""])[0],
        num_steps=FLAGS.num_steps,
        cfg_scale=FLAGS.cfg_scale,
        method=FLAGS.method,
        seed=FLAGS.seed,
        step=FLAGS.step,
    )
  except MediaDecodeError as e:
    sys.stderr.write(
        f"mgjax.sample: cannot read the video {e}. Pass an existing, decodable "
        "video file with at least one frame (--video).\n"
    )
    sys.exit(2)
  except (ValueError, FileNotFoundError) as e:
    sys.stderr.write(f"mgjax.sample: {e}\n")
    sys.exit(2)
  print("\n".join(paths))


def main():
  flags.DEFINE_enum(
      "task",
      "t2v",
      ["t2v", "v2a"],
      "t2v: videos from prompts; v2a: sound " "for --video from a video-to-audio run.",
  )
  flags.DEFINE_string("video", None, "--task=v2a: the video to make sound for.")
  flags.DEFINE_string("out", None, "--task=v2a: output folder (default <workdir>/samples/v2a).")
  flags.DEFINE_string("workdir", None, "A text-to-video training run's --workdir.")
  flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for several.")
  flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line.")
  flags.DEFINE_string("out_dir", None, "Output folder; default <workdir>/samples/cli.")
  flags.DEFINE_integer("num_steps", None, "ODE steps; default config.flow.sample_steps.")
  flags.DEFINE_enum("schedule", None, list(SCHEDULES), "Time schedule; default the config's.")
  flags.DEFINE_enum(
      "method",
      None,
      list(SOLVERS),
      "ODE solver; default euler (t2v), the " "run's config.flow.method (v2a).",
  )
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale; default the config's.")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.DEFINE_integer(
      "num_frames", None, "Frames; 1 samples an image. Default: the first " "video bucket's."
  )
  flags.DEFINE_integer("height", None, "Pixels; a multiple of TAE factor x patch size.")
  flags.DEFINE_integer("width", None, "Pixels; a multiple of TAE factor x patch size.")
  flags.DEFINE_integer("batch_size", 8, "Prompts sampled together.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  FLAGS = flags.FLAGS

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
      raise app.UsageError("--workdir (a text-to-video training run) is required.")
    if FLAGS.task == "v2a":
      run_v2a(FLAGS)
      return
    try:
      prompts = read_prompts(FLAGS.prompt, FLAGS.prompts_file)
      paths = sample(
          FLAGS.workdir,
          prompts,
          FLAGS.out_dir or os.path.join(FLAGS.workdir, "samples", "cli"),
          num_steps=FLAGS.num_steps,
          schedule=FLAGS.schedule,
          cfg_scale=FLAGS.cfg_scale,
          seed=FLAGS.seed,
          num_frames=FLAGS.num_frames,
          height=FLAGS.height,
          width=FLAGS.width,
          method=FLAGS.method or "euler",
          batch_size=FLAGS.batch_size,
          step=FLAGS.step,
      )
    except (ValueError, FileNotFoundError) as e:
      sys.stderr.write(f"mgjax.sample: {e}\n")
      sys.exit(2)
    print("\n".join(paths))

  app.run(run)


if __name__ == "__main__":
  main()
