"""Sample from any trained run: prompts -> videos (or images), videos -> sound, ...

    python -m mgjax.sample --workdir=W --prompt="a red circle moves to the left"
    python -m mgjax.sample --workdir=W --prompts_file=prompts.txt --num_steps=50 \
        --schedule=linear_quadratic --cfg_scale=7.5 --num_frames=32 --height=64 --width=64
    python -m mgjax.sample --workdir=W --video=IN.mp4 [--prompt=...] --out=DIR   # a v2a run
    python -m mgjax.sample --task=upsample --workdir=U --video=IN.mp4 --out=DIR  # upsampler
    python -m mgjax.sample --workdir=T2V --upsampler=U --prompt="..."   # text -> video -> 2x
    python -m mgjax.sample --task=edit --workdir=E --video=IN.mp4 --instruction="make the circle blue"
    python -m mgjax.sample --task=edit --workdir=E --image=IMG.png --prompt="..."   # image -> video
    python -m mgjax.sample --task=edit --workdir=E --first_frame=A.png --last_frame=B.png --prompt="..."
    python -m mgjax.sample --task=edit --workdir=E --extend=IN.mp4 --seconds=2 --prompt="..."

The run's task (its config.json) decides what it makes (`Task.generate`): a
text-to-video run one .mp4 per prompt (a .png when --num_frames=1: text-to-image), a
video-to-audio run DIR/<video name>.wav and the muxed DIR/<video name>.mp4, an
upsampler run DIR/<video name>_x2.mp4 (any length: windows blended by MultiDiffusion).
With --upsampler=U the videos of the --workdir run are upsampled by the run U too,
and both are written (<name>.mp4 and <name>_x2.mp4); the sampler flags then apply to
the first run, the upsampler samples with its own settings. Files go
to --out (default <workdir>/samples/cli) with prompts.txt and a contact sheet of the
videos. The prompts file holds one prompt per line, of any length (longer than a
text encoder's max_length tokens: truncated, and reported); blank lines are skipped.
Videos get the frame-rate tag ("FPS-16 ...") the model was trained with, unless the
prompt already starts with one. Unset options take the run's own settings.
"""

from __future__ import annotations

import os

import tqdm
from absl import app, flags

from mgjax import cli, runs
from mgjax.data.video import ImageDecodeError, MediaDecodeError
from mgjax.flow import SCHEDULES, SOLVERS
from mgjax.tasks import TASK_ALIASES, get_task_class
from mgjax.tasks.outputs import SampleRequest, write_samples


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
  return prompts


def generate(task, params, frozen, request: SampleRequest) -> list:
  """`task.generate` on a restored run's weights, with a progress bar."""
  with tqdm.tqdm(total=task.sampling_steps(request), unit="step", desc="sampling") as bar:
    request.progress = bar.update
    return task.generate(params, frozen, request)


def sample(
    workdir: str,
    request: SampleRequest,
    out_dir: str,
    step: int | None = None,
    task_name: str | None = None,
    upsampler: str | None = None,
) -> list[str]:
  """Generates what `request` asks of the run in `workdir` into out_dir; returns the
  media paths. `task_name`, when given, must be the run's task (or its alias).
  `upsampler`: a run whose task refines videos, applied to what `workdir` made."""
  config = runs.read_config(workdir, hint="Pass the --workdir of a training run.")
  if task_name and TASK_ALIASES.get(task_name, task_name) != config.task:
    raise ValueError(f"--task={task_name} but {workdir} holds a {config.task!r} run.")
  if upsampler:  # a missing or wrong run fails before the first run samples
    up_config = runs.read_config(upsampler, hint="Pass an upsampler run as --upsampler.")
    if not get_task_class(up_config.task).refines_videos:
      raise ValueError(
          f"--upsampler={upsampler} holds a {up_config.task!r} run, which does not take "
          "videos to refine; pass an upsampler run."
      )
  get_task_class(config.task)(config, workdir).check_request(request)  # before the restore
  _, task, params, frozen = runs.restore_weights(workdir, step)
  samples = generate(task, params, frozen, request)
  paths = write_samples(samples, out_dir)
  if upsampler:
    videos = [s for s in samples if s.video is not None]
    if not videos:
      raise ValueError(f"{workdir} made no videos for --upsampler to upsample.")
    _, task, params, frozen = runs.restore_weights(upsampler)
    refined = generate(task, params, frozen, SampleRequest(videos=videos, seed=request.seed))
    paths += write_samples(refined, out_dir, index_name="prompts_upsampled.txt", sheet=False)
  return paths


def main():
  flags.DEFINE_string("workdir", None, "A training run's --workdir.")
  flags.DEFINE_string(
      "task", None, "Optional check: the run's task (t2v, pt2v, audio, upsample; v2a = audio)."
  )
  flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for several.")
  flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line.")
  flags.DEFINE_multi_string("video", None, "An input video (e.g. to make sound for); repeatable.")
  flags.DEFINE_string("out", None, "Output folder; default <workdir>/samples/cli.")
  flags.DEFINE_string("out_dir", None, "Same as --out.")
  flags.DEFINE_integer("num_steps", None, "ODE steps; default the run's config.flow.sample_steps.")
  flags.DEFINE_enum("schedule", None, list(SCHEDULES), "Time schedule; default the run's.")
  flags.DEFINE_enum("method", None, list(SOLVERS), "ODE solver; default the run's.")
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale; default the run's.")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.DEFINE_integer("num_frames", None, "Frames; 1 samples an image. Default: the run's.")
  flags.DEFINE_integer("height", None, "Pixels; a multiple of TAE factor x patch size.")
  flags.DEFINE_integer("width", None, "Pixels; a multiple of TAE factor x patch size.")
  flags.DEFINE_integer("batch_size", 8, "Prompts sampled together.")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_string("upsampler", None, "An upsampler run: also upsample what --workdir makes.")
  flags.DEFINE_multi_string(
      "reference", None, "PT2V: an image of the subject; once for all prompts or once each."
  )
  flags.DEFINE_multi_string(
      "instruction", None, "Edit: what to change in the --video(s); once for all or once each."
  )
  flags.DEFINE_string("image", None, "Edit runs: image-to-video from this image (= --first_frame).")
  flags.DEFINE_string("first_frame", None, "Edit runs: the video's first frame (an image).")
  flags.DEFINE_string("last_frame", None, "Edit runs: the video's last frame (an image).")
  flags.DEFINE_string("extend", None, "Edit runs: a video to continue (with --seconds, --prompt).")
  flags.DEFINE_float("seconds", None, "Edit runs: how much video --extend adds.")
  flags.DEFINE_multi_string(
      "edit_task", None, "Edit runs: each edit's task embedding (default: the generic edit)."
  )
  FLAGS = flags.FLAGS

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
      raise app.UsageError("--workdir (a training run) is required.")
    try:
      request = SampleRequest(
          prompts=read_prompts(FLAGS.prompt, FLAGS.prompts_file),
          inputs=list(FLAGS.video or []),
          references=list(FLAGS.reference or []),
          instructions=list(FLAGS.instruction or []),
          first_frame=FLAGS.image or FLAGS.first_frame,
          last_frame=FLAGS.last_frame,
          extend=FLAGS.extend,
          seconds=FLAGS.seconds,
          edit_tasks=list(FLAGS.edit_task or []),
          num_frames=FLAGS.num_frames,
          height=FLAGS.height,
          width=FLAGS.width,
          num_steps=FLAGS.num_steps,
          schedule=FLAGS.schedule,
          method=FLAGS.method,
          cfg_scale=FLAGS.cfg_scale,
          seed=FLAGS.seed,
          batch_size=FLAGS.batch_size,
      )
      out = FLAGS.out or FLAGS.out_dir or os.path.join(FLAGS.workdir, "samples", "cli")
      paths = sample(FLAGS.workdir, request, out, FLAGS.step, FLAGS.task, FLAGS.upsampler)
    except ImageDecodeError as e:
      raise ValueError(
          f"cannot read the image {e}. Pass an existing PNG or JPEG file (--reference, "
          "--image, --first_frame, --last_frame)."
      ) from e
    except MediaDecodeError as e:
      raise ValueError(
          f"cannot read the video {e}. Pass an existing, decodable video file "
          "with at least one frame (--video, --extend)."
      ) from e
    print("\n".join(paths))

  cli.run(run, "mgjax.sample")


if __name__ == "__main__":
  main()
