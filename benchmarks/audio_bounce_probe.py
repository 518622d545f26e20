"""Can the audio model's video encoder see when a shape bounces? A per-frame probe.

    python benchmarks/audio_bounce_probe.py --manifest=W/shapes_audio/manifest.jsonl \
        --eval_manifest=W/shapes_audio_bouncing/manifest.jsonl [--num_train=232]

The sync score of the audio DiT can be no better than its video features' sense of
the bounce frame, and the DiT learns that only through the flow loss. This trains the
video encoder of a config (`video_encoder`, frames at `data.frame_size`) with a small
per-frame head directly on "is this a bounce frame" (binary cross-entropy, labels
from the manifest's `bounce_frames`), on the first --num_train training clips, and
prints, every 500 steps, the bounces found at exactly their frame (a bounce frame is
62.5 ms from its neighbours at 16 fps, more than the sync score's 40 ms) and within
one frame, on the --eval_manifest clips (never trained on) and on the training clips.
A probe that fits its training clips but misses the held-out bounces says the
encoder needs more clips, not more steps.
"""

from __future__ import annotations

import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mgjax import configs  # noqa: E402
from mgjax.data import av_clips  # noqa: E402
from mgjax.models.video_features import VideoFeatureEncoder  # noqa: E402

flags.DEFINE_string("config", "experiments/audio.py:tiny", "Audio config (its video encoder).")
flags.DEFINE_string("manifest", None, "shapes_audio manifest to train on.", required=True)
flags.DEFINE_string("eval_manifest", None, "shapes_audio manifest to score on.", required=True)
flags.DEFINE_list(
    "eval_splits",
    ["train", "eval"],
    "Splits of --eval_manifest to score: 'eval' alone scores the held-out "
    "combinations of a training manifest.",
)
flags.DEFINE_integer("num_train", 0, "Train on the first N training clips; 0: all.")
flags.DEFINE_integer("num_steps", 1500, "Probe training steps (batch 16).")
FLAGS = flags.FLAGS


def bounce_clips(manifest: str, splits, config, limit: int | None):
  """frames uint8 [N, Tv, H, W, 3] and bounce labels float32 [N, Tv] of a manifest."""
  records = [r for split in splits for r in av_clips.read_records(manifest, split)]
  clips, kept, _ = av_clips.load_clips(
      records,
      limit,
      clip_seconds=float(config.data.clip_seconds),
      fps=float(config.model.video_fps),
      size=tuple(config.data.frame_size),
      sample_rate=int(config.data.audio.sample_rate),
      channels=1,
  )
  frames = np.stack([c[0] for c in clips])
  labels = np.zeros(frames.shape[:2], np.float32)
  for i, record in enumerate(kept):
    labels[i, [f for f in record["bounce_frames"] if f < frames.shape[1]]] = 1.0
  return frames, labels


class BounceProbe(nn.Module):
  """The config's video encoder + a per-frame head (Dense, 3-frame conv, Dense)."""

  encoder: VideoFeatureEncoder

  @nn.compact
  def __call__(self, frames):  # [B, Tv, H, W, 3] -> bounce logits [B, Tv]
    h = nn.silu(nn.Dense(64)(self.encoder(frames)))
    h = nn.silu(nn.Conv(64, (3,), padding="SAME")(h))
    return nn.Dense(1)(h)[..., 0]


def found(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
  """(bounces found at their frame, within one frame, false peaks per clip): local
  maxima of the probability above 0.5 are the probe's bounces."""
  exact = near = false = 0
  for p, y in zip(probabilities, labels):
    padded = np.pad(p, 1, constant_values=0.0)
    peaks = np.flatnonzero((p > 0.5) & (p >= padded[:-2]) & (p >= padded[2:]))
    truth = np.flatnonzero(y)
    exact += np.isin(truth, peaks).sum()
    near += sum(np.abs(peaks - t).min(initial=99) <= 1 for t in truth)
    false += sum(np.abs(truth - q).min(initial=99) > 1 for q in peaks)
  bounces = max(labels.sum(), 1.0)
  return exact / bounces, near / bounces, false / len(labels)


def main(argv):
  del argv
  config = configs.load_config(FLAGS.config)
  train_frames, train_labels = bounce_clips(
      FLAGS.manifest, ["train"], config, FLAGS.num_train or None
  )
  # Clips never trained on: all of e.g. <workdir>/shapes_audio_bouncing, or the held-out
  # combinations (--eval_splits=eval) of the training manifest.
  eval_frames, eval_labels = bounce_clips(FLAGS.eval_manifest, FLAGS.eval_splits, config, None)
  print(
      f"probe: {len(train_frames)} training clips ({int(train_labels.sum())} bounces), "
      f"{len(eval_frames)} eval clips ({int(eval_labels.sum())} bounces)",
      flush=True,
  )
  encoder = VideoFeatureEncoder.from_config(config.video_encoder)
  model = BounceProbe(encoder)
  params = model.init(jax.random.PRNGKey(0), train_frames[:1])
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, frames, labels):
    loss_fn = lambda p: optax.sigmoid_binary_cross_entropy(model.apply(p, frames), labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  probability = jax.jit(lambda p, f: jax.nn.sigmoid(model.apply(p, f)))

  def score(frames, labels):
    p = np.concatenate(
        [np.asarray(probability(params, frames[i : i + 32])) for i in range(0, len(frames), 32)]
    )
    return found(p, labels)

  rng, start = np.random.default_rng(0), time.time()
  for i in range(1, FLAGS.num_steps + 1):
    batch = rng.integers(0, len(train_frames), 16)
    params, opt_state, loss = step(params, opt_state, train_frames[batch], train_labels[batch])
    if i % 500 == 0 or i == FLAGS.num_steps:
      held = score(eval_frames, eval_labels)
      fit = score(train_frames[:64], train_labels[:64])
      print(
          f"step {i}: loss {float(loss):.4f}; eval clips: {100 * held[0]:.1f}% of bounces "
          f"at their frame, {100 * held[1]:.1f}% within one, {held[2]:.2f} false per clip; "
          f"training clips: {100 * fit[0]:.1f}% / {100 * fit[1]:.1f}% "
          f"({time.time() - start:.0f} s)",
          flush=True,
      )


if __name__ == "__main__":
  app.run(main)
