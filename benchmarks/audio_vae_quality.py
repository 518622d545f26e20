"""Quality figures of a trained audio VAE on its held-out clips.

    python -m mgjax.train --config=experiments/audio_vae.py:tiny --workdir=/tmp/avae
    python benchmarks/audio_vae_quality.py --workdir=/tmp/avae

Reconstructs every "eval" clip of the run's data (posterior mean, whole clips up to
--seconds) and prints: SNR and multi-scale spectral distance (mean, worst clip), and
on the shapes sound whether each tone's pitch still names its colour and how many
bounce clicks shapes_audio.detect_onsets finds within 40 ms in the reconstructions,
next to what it finds in the inputs (the detector's own ceiling), and the spectral
flux at and away from the bounces against the detector's threshold. Also the training
history the trainer logged (eval/* rows of metrics.jsonl).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from mgjax.data import shapes_audio
from mgjax.models.audio_vae_losses import snr_db, spectral_distance_db
from mgjax.tasks.audio_vae import (
    bouncing_clips,
    read_audio_records,
    read_waveform,
    reconstruction_scores,
)
from mgjax.train import restore_train_state

_WORKDIR = flags.DEFINE_string("workdir", None, "An audio_vae training workdir.", required=True)
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Clip length to reconstruct (s).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 0, "Eval clips to use (0: all).")
_NUM_BOUNCING = flags.DEFINE_integer(
    "num_bouncing",
    24,
    "Fresh bouncing shapes clips (seed 1234, never trained on) to score "
    "click onsets on; the eval split holds few bounces.",
)


def click_flux(clips, records, rate: int) -> tuple[float, float]:
  """(median over bounces of the peak spectral flux within 40 ms of the bounce, median
  over clips of the peak flux farther than 40 ms from every bounce), dB: how far the
  clicks are above the detector's threshold and the rest below it."""
  near, far = [], []
  for clip, record in zip(clips, records):
    flux, times = shapes_audio.onset_strength(clip, rate)
    bounces = np.asarray(record["bounce_times"])
    distance = np.abs(times[:, None] - bounces[None, :]).min(axis=1)
    tolerance = shapes_audio.SYNC_TOLERANCE_S
    near += [flux[np.abs(times - b) <= tolerance].max() for b in bounces]
    far.append(flux[distance > tolerance].max())
  return float(np.median(near)), float(np.median(far))


def main(argv):
  del argv
  config, task, state = restore_train_state(_WORKDIR.value)
  params = state.eval_params()["vae"]
  rate = task.sample_rate
  length = int(round(_SECONDS.value * rate))
  length -= length % task.model.hop
  records, _ = read_audio_records(task.manifest(), "eval")
  if _NUM_CLIPS.value:
    records = records[: _NUM_CLIPS.value]
  clips, lengths = [], []
  for record in records:
    waveform = read_waveform(record["path"], rate, task.model.audio_channels, False)[:length]
    lengths.append(len(waveform))
    clips.append(np.pad(waveform, ((0, length - len(waveform)), (0, 0))))
  clips, lengths = np.stack(clips), np.array(lengths)
  recons = task.reconstruct(params, clips)
  scores = reconstruction_scores(clips, recons, lengths, records, rate, task.windows)
  ceiling = reconstruction_scores(clips, clips, lengths, records, rate, task.windows)
  per_clip_snr = [
      float(snr_db(r[None, :n], c[None, :n])[0]) for c, r, n in zip(clips, recons, lengths)
  ]
  per_clip_distance = [
      float(spectral_distance_db(r[None, :n], c[None, :n], task.windows)[0])
      for c, r, n in zip(clips, recons, lengths)
  ]
  bounces = sum(len(r.get("bounce_times", [])) for r in records)
  m = config.model
  print(
      f"audio VAE {_WORKDIR.value} at step {int(state.step)}: {m.sample_rate} Hz, hop "
      f"{task.model.hop} ({task.model.latent_rate:g} latent frames/s x "
      f"{m.latent_channels} channels)"
  )
  print(f"{len(clips)} held-out clips of {_SECONDS.value:g} s ({bounces} bounces):")
  print(
      f"  SNR                 {scores['snr_db']:6.2f} dB mean, {min(per_clip_snr):6.2f} dB "
      "worst clip"
  )
  print(
      f"  spectral distance   {scores['spectral_distance_db']:6.2f} dB mean, "
      f"{max(per_clip_distance):6.2f} dB worst clip (|dB| over bins above -60 dBFS)"
  )
  if "tone_accuracy" in scores:
    print(
        f"  tone -> colour      {scores['tone_accuracy']:.1%} of reconstructions "
        f"(inputs {ceiling['tone_accuracy']:.1%})"
    )
  if "onset_hit_rate" in scores:
    print(
        f"  clicks within {shapes_audio.SYNC_TOLERANCE_S * 1000:.0f} ms  "
        f"{scores['onset_hit_rate']:.1%} of bounces, "
        f"{scores['false_onsets_per_clip']:.2f} false onsets per clip "
        f"(inputs: {ceiling['onset_hit_rate']:.1%}, {ceiling['false_onsets_per_clip']:.2f})"
    )
  if _NUM_BOUNCING.value and config.data.name == "shapes_audio":
    fresh, fresh_records = bouncing_clips(
        config.data.shapes_audio, rate, _NUM_BOUNCING.value, task.model.hop
    )
    n = np.full(len(fresh), fresh.shape[1])
    fresh_recons = task.reconstruct(params, fresh)
    got = reconstruction_scores(fresh, fresh_recons, n, fresh_records, rate, task.windows)
    top = reconstruction_scores(fresh, fresh, n, fresh_records, rate, task.windows)
    count = sum(len(r["bounce_times"]) for r in fresh_records)
    print(
        f"{len(fresh)} fresh bouncing clips ({count} bounces): SNR {got['snr_db']:.2f} dB, "
        f"spectral distance {got['spectral_distance_db']:.2f} dB, tone -> colour "
        f"{got['tone_accuracy']:.1%}, clicks within 40 ms {got['onset_hit_rate']:.1%} "
        f"of bounces, {got['false_onsets_per_clip']:.2f} false onsets per clip (inputs: "
        f"{top['onset_hit_rate']:.1%}, {top['false_onsets_per_clip']:.2f})"
    )
    near, far = click_flux(fresh_recons, fresh_records, rate)
    near_in, far_in = click_flux(fresh, fresh_records, rate)
    print(
        f"  spectral flux (detector threshold {shapes_audio.ONSET_THRESHOLD_DB:g} dB): "
        f"{near:.1f} dB median peak at a bounce, {far:.1f} dB median peak elsewhere in a "
        f"clip (inputs: {near_in:.1f}, {far_in:.1f})"
    )
  path = os.path.join(_WORKDIR.value, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
    for row in rows:
      evals = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
      if evals:
        print(
            f"  trainer eval at step {row['step']}: "
            + " ".join(f"{k}={v:.3g}" for k, v in sorted(evals.items()))
        )


if __name__ == "__main__":
  app.run(main)
