"""Video-to-audio figures of a trained `experiments/audio.py` run: held-out sync and a
3x-window long-form clip (seams and sync).

    python benchmarks/audio_v2a.py --workdir=W [--num_steps=16]

1. Sync, tone and false onsets of the generated sound on the held-out clips and on
   --num_bouncing fresh clips that all bounce (the held-out split holds few bounces),
   next to the VAE ceiling: the clips' own sound encoded and decoded by the run's
   audio VAE, scored like the samples (a generated click can only be heard if the
   VAE can reproduce one), and the sync that as many onsets at random times get.
2. Long form: three held-out clips (with bounces first) concatenated into one video
   3x the trained window (6 s for tiny), sound generated for it in one go through
   `mgjax.audio_longform.sample_long` (config.longform), and, as the baseline that
   has seams, the same three windows sampled independently and concatenated. Seam
   measures (tests/test_audio_longform.py `seam_measures`) on the latents at every
   window start/end inside the clip: jump (frame step across the boundary / typical
   step), high-band power ratio and energy ratio; ~1 is seamless, and the same
   measures on the VAE latents of the clips' own sound at the long form's boundaries
   (what the content alone gives there: a click next to a boundary is a large energy
   ratio without any seam). And the sync
   score over the long clip (bounce times shifted by each clip's offset).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mgjax import audio_longform  # noqa: E402
from mgjax.data import audio as audio_lib  # noqa: E402
from mgjax.data import av_clips, shapes_audio  # noqa: E402
from mgjax.data import video as video_lib  # noqa: E402
from mgjax.tasks.audio import shapes_scores  # noqa: E402
from tests.test_audio_longform import seam_measures  # noqa: E402

flags.DEFINE_string("workdir", None, "A trained experiments/audio.py run.", required=True)
flags.DEFINE_integer("num_steps", 0, "ODE steps; 0: the run's eval.num_steps.")
flags.DEFINE_integer("num_clips", 0, "Held-out clips for the VAE ceiling; 0: eval.num_prompts.")
flags.DEFINE_integer(
    "num_bouncing",
    40,
    "Fresh bouncing clips (shapes_audio.BOUNCING_SEED) to " "score sync on; 0: none.",
)
FLAGS = flags.FLAGS


def edges(num_frames, window, overlap):
  starts = audio_longform.window_starts(num_frames, window, overlap)
  return sorted(
      {s for s in starts if s > 0} | {s + window for s in starts if s + window < num_frames}
  )


def main(argv):
  del argv
  from mgjax.train import restore_train_state

  config, task, state = restore_train_state(FLAGS.workdir)
  params, frozen = state.eval_params(), state.frozen
  e, lf, rate = config.eval, config.longform, task.sample_rate
  steps = FLAGS.num_steps or e.num_steps
  kwargs = dict(num_steps=steps, cfg_scale=e.cfg_scale, method=e.method, seed=e.seed)

  def scores(what, clips, kept):
    """Sync and tone of the clips' own sound, its VAE reconstruction and generated sound."""
    waves = np.stack([c[1] for c in clips])
    recon = np.asarray(task.codec.decode(task.codec.encode(waves), waves.shape[1]))
    generated = np.concatenate(
        [
            task.generate_audio(
                params,
                frozen,
                np.stack([c[0] for c in clips[i : i + e.batch_size]]),
                [r["caption"] for r in kept[i : i + e.batch_size]],
                waves.shape[1],
                **dict(kwargs, seed=e.seed + i),
            )
            for i in range(0, len(kept), e.batch_size)
        ]
    )
    for name, x in (
        ("original sound", waves),
        ("VAE reconstruction", recon),
        ("generated from video + caption", generated),
    ):
      s = shapes_scores(x, kept, rate)
      print(
          f"{name} of {len(kept)} {what}: sync {100 * s['sync_score']:.1f}% of "
          f"{int(s['num_bounces'])} bounces (onsets at random times "
          f"{100 * s['chance_sync_score']:.1f}%), tone {100 * s['tone_accuracy']:.1f}%, "
          f"false onsets {s['false_onsets_per_silent_clip']:.2f} per bounce-free clip, "
          f"{100 * s['false_onset_rate']:.1f}% of all onsets"
      )

  # 1. The held-out clips, and fresh clips that all bounce (the held-out ones hold few
  # bounces): the VAE ceiling and the generated sound.
  records = av_clips.read_records(task.manifest(), "eval")
  clips, kept, _ = av_clips.load_clips(
      records, FLAGS.num_clips or e.num_prompts, **task.clip_args()
  )
  scores("held-out clips", clips, kept)
  if FLAGS.num_bouncing:
    with config.unlocked():
      config.eval.num_bouncing_clips = FLAGS.num_bouncing
    scores(
        "fresh bouncing clips",
        *av_clips.load_clips(task.bouncing_records(), **task.clip_args())[:2],
    )

  # 2. A 3x-window video from three held-out clips, bouncing ones first.
  order = sorted(range(len(kept)), key=lambda i: not kept[i]["bounce_times"])[:3]
  seconds = float(config.data.clip_seconds)
  frames = np.concatenate([clips[i][0] for i in order])  # [3 Tv, H, W, 3]
  bounces = [t + k * seconds for k, i in enumerate(order) for t in kept[i]["bounce_times"]]
  caption = kept[order[0]]["caption"]
  out_dir = os.path.join(FLAGS.workdir, "samples", "longform")
  os.makedirs(out_dir, exist_ok=True)
  video_path = os.path.join(out_dir, "long_input.mp4")
  video_lib.write_video(video_path, frames, fps=task.video_fps)
  num_frames = int(round(3 * seconds * config.model.latent_rate))
  start = time.time()
  long_latent = task.sample_audio_latents(
      params, frozen, frames[None], [caption], num_frames, **kwargs
  )  # [1, 3W, C]
  long_s = time.time() - start
  window = int(round(seconds * config.model.latent_rate))
  naive = np.concatenate(
      [
          task.sample_audio_latents(
              params, frozen, clips[i][0][None], [caption], window, **dict(kwargs, seed=e.seed + k)
          )
          for k, i in enumerate(order)
      ],
      axis=1,
  )
  # The clips' own sound through the VAE encoder: its measures at the long form's
  # boundaries are what the content alone gives there (a click just after a boundary
  # is a large energy ratio with no seam at all).
  own = np.asarray(task.codec.encode(np.concatenate([clips[i][1] for i in order])[None]))
  mean, std = task.stats().mean, task.stats().std
  boundaries = edges(num_frames, int(lf.window_frames), int(lf.overlap_frames))
  for name, z in (
      (f"long form ({lf.method})", long_latent),
      ("naive concatenation", naive),
      ("the clips' own sound (no seams)", own),
  ):
    cut = [window, 2 * window] if z is naive else boundaries
    jump, band, energy = seam_measures((z - mean) / std, cut)
    print(
        f"{name}: seams at latent frames {cut}: jump {jump:.2f}, high band {band:.2f}, "
        f"energy {energy:.2f}"
    )
  num_samples = int(round(3 * seconds * rate))
  wave = np.asarray(task.codec.decode(long_latent, num_frames * task.codec.hop))[0, :num_samples]
  audio_lib.write_wav(os.path.join(out_dir, "long.wav"), wave, rate)
  audio_lib.mux_audio(video_path, wave, rate, os.path.join(out_dir, "long.mp4"))
  score = shapes_audio.sync_score(shapes_audio.detect_onsets(wave, rate), bounces)
  print(
      f"long form: {3 * seconds:g} s ({num_frames} latent frames, "
      f"{len(audio_longform.window_starts(num_frames, lf.window_frames, lf.overlap_frames))}"
      f" windows) in {long_s:.1f} s; sync {100 * score.hit_rate:.1f}% of "
      f"{score.num_bounces} bounces, {score.num_false_onsets} false onsets; wrote {out_dir}"
  )


if __name__ == "__main__":
  app.run(main)
