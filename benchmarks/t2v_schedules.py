"""Sampling schedules compared on a trained text-to-video run: shapes score and time.

    python benchmarks/t2v_schedules.py --workdir=workdir/demo

Samples the run's held-out evaluation prompts (every bucket) with the same noise
under each setting and prints the shapes checker's prompt-following score and the
wall time: the linear-quadratic schedule with 50 steps, which mimics a 250-step
linear one, against linear schedules with 250 and 50 steps. Samples go to
<workdir>/samples/<setting>.
"""

from __future__ import annotations

import time

from absl import app, flags

from mgjax.train import restore_train_state

_WORKDIR = flags.DEFINE_string("workdir", None, "A t2v training run on shapes data.", required=True)
_SETTINGS = flags.DEFINE_list(
    "settings",
    ["linear_quadratic:50", "linear:250", "linear:50"],
    "schedule:num_steps pairs to compare.",
)


def main(argv):
  del argv
  config, task, state = restore_train_state(_WORKDIR.value)
  params = state.eval_params()
  task.evaluate(params, state.frozen, "warmup")  # compile outside the timings
  rows = []
  for setting in _SETTINGS.value:
    schedule, num_steps = setting.split(":")
    with config.unlocked():
      config.eval.update(schedule=schedule, num_steps=int(num_steps))
    start = time.perf_counter()
    metrics = task.evaluate(params, state.frozen, f"{schedule}_{num_steps}")
    rows.append((setting, metrics, time.perf_counter() - start))
  print(
      f"\nstep {int(state.step)}, cfg scale {config.eval.cfg_scale}, "
      f"method {config.eval.method}"
  )
  print(f"{'setting':<22} {'colour':>7} {'shape':>7} {'motion':>7} {'all':>7} {'time':>8}")
  for setting, m, seconds in rows:
    print(
        f"{setting:<22} "
        + " ".join(
            f"{100 * m.get(f'shapes_{k}', float('nan')):6.1f}%"
            for k in ("color", "shape", "motion", "score")
        )
        + f" {seconds:7.1f}s"
    )


if __name__ == "__main__":
  app.run(main)
