"""Encode a data set's clips with a trained TAE into ArrayRecord shards, once.

    python -m mgjax.precompute --config=experiments/t2v.py:1b \
        --config.tae.workdir=/ckpt/tae --config.data.dir=/data/videos --out=/data/latents
    python -m mgjax.train --config=experiments/t2v.py:1b --workdir=W \
        --config.tae.workdir=/ckpt/tae --config.data.dir=/data/videos \
        --config.data.latents_dir=/data/latents

Many processes split the work: run the same command with --process_index=i
--process_count=N on each (e.g. one per GPU or host); process i writes the shards k
with k % N == i. Killed, the command resumes: finished shards are kept. The shards
hold the latents of the clips and their frame-rate-tagged captions
(mgjax/data/latent_shards.py); the trainer tokenises captions as it reads them.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

from mgjax import cli
from mgjax.data.latent_shards import FINGERPRINT_FILE
from mgjax.tasks import get_task_class

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A text-to-video config (experiments/t2v.py).", lock_config=True
)
flags.DEFINE_string("out", None, "Directory of the shards (the trainer's data.latents_dir).")
flags.DEFINE_list("splits", ["train"], 'Splits to encode (the trainer reads "train").')
flags.DEFINE_integer("process_index", 0, "This process's index among --process_count.")
flags.DEFINE_integer("process_count", 1, "Processes sharing the work.")


def wait_for_fingerprint(out: str, timeout_s: float = 3600.0) -> None:
  """Processes other than 0 start once process 0 has claimed (or cleared) the folder."""
  path, start = os.path.join(out, FINGERPRINT_FILE), time.time()
  while not os.path.exists(path):
    if time.time() - start > timeout_s:
      raise TimeoutError(f"Process 0 never wrote {path}; is it running with the same --out?")
    time.sleep(1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  task_class = get_task_class(config.task)
  if not hasattr(task_class, "precompute_latents"):
    raise app.UsageError(
        f"--config is a {config.task!r} config, whose task keeps no latent shards; "
        "precompute needs one that does (a text-to-video config)."
    )
  if not 0 <= FLAGS.process_index < FLAGS.process_count:
    raise app.UsageError(
        f"--process_index={FLAGS.process_index} is not in "
        f"[0, --process_count={FLAGS.process_count})."
    )
  out = os.path.abspath(FLAGS.out)
  with config.unlocked():
    config.data.latents_dir = out
  task = task_class(config, os.path.dirname(out))
  section = task_class.codec_section
  if not config[section].workdir:
    raise app.UsageError(f"Set --config.{section}.workdir to the trained codec to encode with.")
  if FLAGS.process_index:
    wait_for_fingerprint(out)
  for split in FLAGS.splits:
    task.precompute_latents(split, FLAGS.process_index, FLAGS.process_count)
  counts = {
      split: {name: len(shards) for name, shards in _shards(task, split).items()}
      for split in FLAGS.splits
  }
  logging.info("Latents in %s: %s", out, counts)
  print(f"Encoded into {out}: " + json.dumps(counts))


def _shards(task, split: str) -> dict:
  try:
    return task.latent_shards(split)
  except ValueError:  # a split with no records
    return {}


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "out"])
  cli.run(main, "mgjax.precompute")
