"""Encode a caption set once with the frozen text encoders and store the embeddings.

    python -m mgjax.text.precompute --config=experiments/t2v.py:1b \
        --captions=captions.txt --out=text_embeddings.npz

Frozen encoders give the same embeddings every epoch, so a large run encodes its
captions once (UL2 alone is billions of parameters) and its data pipeline reads the
result. `--captions` is a text file with one caption per line (blank lines skipped)
or a manifest .jsonl with a "caption" field; captions of video clips should carry
their frame-rate tag ("FPS-16 ...") as training sees them.

The .npz holds `captions` [N] and, per encoder, `<name>_emb` [N, L, D] (float16 or
float32) and `<name>_mask` [N, L]; `load_embeddings` reads it back.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from mgjax import cli
from mgjax.text.conditioning import TextConditioner

FLAGS = flags.FLAGS


def read_captions(path: str) -> list[str]:
  """Captions of a text file (one per line) or of a manifest .jsonl ("caption")."""
  with open(path, encoding="utf-8") as f:
    lines = [line.strip() for line in f]
  if path.endswith(".jsonl"):
    captions = []
    for number, line in enumerate(lines, 1):
      if not line:
        continue
      record = json.loads(line)
      if "caption" not in record:
        raise ValueError(f'{path}:{number} has no "caption" field.')
      captions.append(record["caption"])
  else:
    captions = [line for line in lines if line]
  if not captions:
    raise ValueError(f"No captions in {path}.")
  return captions


def precompute(
    conditioner: TextConditioner,
    captions: list[str],
    batch_size: int = 64,
    seed: int = 0,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
  """{captions, <name>_emb, <name>_mask} of every caption, with the frozen encoders."""
  trainable = [e.name for e in conditioner.encoders if e.trainable]
  if trainable:
    raise ValueError(
        f"Text encoders {trainable} are trainable: their embeddings change during "
        f"training, so there is nothing to precompute. Set trainable=False."
    )
  _, frozen = conditioner.init(jax.random.key(seed))
  _, pretrained = conditioner.pretrained()
  frozen.update(pretrained)
  embed = jax.jit(lambda params, tokens: conditioner.embed({}, params, tokens))
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(captions), batch_size):
    batch = captions[start : start + batch_size]
    padded = batch + [batch[-1]] * (batch_size - len(batch))  # one compiled shape
    out = embed(frozen, conditioner.tokenize(padded))
    for name, (emb, mask) in out.items():
      chunks.setdefault(f"{name}_emb", []).append(np.asarray(emb, dtype)[: len(batch)])
      chunks.setdefault(f"{name}_mask", []).append(np.asarray(mask)[: len(batch)])
  result = {key: np.concatenate(parts) for key, parts in chunks.items()}
  result["captions"] = np.asarray(captions, dtype=str)
  return result


def load_embeddings(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {key: data[key] for key in data.files}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if "text" not in config:
    raise app.UsageError("The config has no `text` section (text encoders).")
  captions = read_captions(FLAGS.captions)
  conditioner = TextConditioner(config.text)
  result = precompute(
      conditioner,
      captions,
      FLAGS.batch_size,
      config.get("seed", 0),
      np.float16 if FLAGS.float16 else np.float32,
  )
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  tmp = FLAGS.out + ".tmp.npz"
  np.savez(tmp, **result)
  os.replace(tmp, FLAGS.out)
  report = conditioner.truncation_report()
  if report:
    logging.warning(report)
  print(
      f"Encoded {len(captions)} captions with {len(conditioner.encoders)} encoders -> "
      f"{FLAGS.out}" + (f"; {report}" if report else "")
  )


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A config with a `text` section.")
  flags.DEFINE_string("captions", None, "Text file, one caption per line, or a .jsonl manifest.")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_integer("batch_size", 64, "Captions per encoder call.")
  flags.DEFINE_bool("float16", False, "Store embeddings as float16 (half the disk).")
  flags.mark_flags_as_required(["config", "captions", "out"])
  cli.run(main, "mgjax.text.precompute")
