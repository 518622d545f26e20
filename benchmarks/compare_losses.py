"""Are two runs the same run? Compares the losses two workdirs logged, step by step.

    python benchmarks/compare_losses.py --a=RUN_BEFORE --b=RUN_AFTER [--key=loss]

Used to show that a refactor changed no number: train the same config with the same
seed from the code before and after (log_every=1), then compare. Prints the steps
both logged, how many are bitwise equal, the first that differs and the largest
difference; exits 1 when any differs.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

_A = flags.DEFINE_string("a", None, "A run's workdir (or its metrics.jsonl).")
_B = flags.DEFINE_string("b", None, "The other run's workdir (or its metrics.jsonl).")
_KEY = flags.DEFINE_string("key", "loss", "The logged value to compare.")


def logged(path: str, key: str) -> dict[int, float]:
  """{step: value} of `key` in a run's metrics.jsonl."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {row["step"]: row[key] for row in rows if key in row}


def main(argv):
  del argv
  a, b = logged(_A.value, _KEY.value), logged(_B.value, _KEY.value)
  steps = sorted(set(a) & set(b))
  if not steps:
    sys.exit(f"No step logged {_KEY.value!r} in both runs.")
  differ = [s for s in steps if a[s] != b[s]]
  largest = max(abs(a[s] - b[s]) for s in steps)
  print(f"{_KEY.value}: {len(steps)} steps in both runs ({steps[0]}..{steps[-1]}), "
        f"{len(steps) - len(differ)} bitwise equal; largest difference {largest:.3g}"
        + (f"; first differing step {differ[0]}: {a[differ[0]]!r} vs {b[differ[0]]!r}"
           if differ else ""))  # fmt: skip
  sys.exit(1 if differ else 0)


if __name__ == "__main__":
  flags.mark_flags_as_required(["a", "b"])
  app.run(main)
