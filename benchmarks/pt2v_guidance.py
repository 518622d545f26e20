"""Guidance scales of a trained PT2V run: identity against prompt following.

    python benchmarks/pt2v_guidance.py --workdir=workdir/pt2v --reference_scales=1,2,4 --text_scales=4

Runs the run's evaluation (its held-out cases, each with the reference of another
clip of the subject; its `pt2v.baselines` beside it) once per pair of scales, the
reference's (`pt2v.reference_cfg_scale`) and the text's (`eval.cfg_scale`), and prints
the identity accuracy, the best/worst-frame identity and the colour + motion prompt
following of each. Samples go to <workdir>/samples/guidance_<reference>_<text>.
"""

from __future__ import annotations

from absl import app, flags

from mgjax import runs

_WORKDIR = flags.DEFINE_string("workdir", None, "A PT2V training run.", required=True)
_REFERENCE = flags.DEFINE_list("reference_scales", ["1", "2", "4"], "Reference scales.")
_TEXT = flags.DEFINE_list("text_scales", ["4"], "Text scales.")
KEYS = ("identity_correct", "identity_best_frame", "identity_worst_frame", "prompt_color_motion")


def main(argv):
  del argv
  config, task, params, frozen = runs.restore_weights(_WORKDIR.value)
  with config.unlocked():
    config.pt2v.baselines.update({k: "" for k in config.pt2v.baselines})  # this run alone
  rows = []
  for reference in _REFERENCE.value:
    for text in _TEXT.value:
      with config.unlocked():
        config.pt2v.reference_cfg_scale = float(reference)
        config.eval.cfg_scale = float(text)
      figures = task.evaluate(params, frozen, f"guidance_{reference}_{text}")
      rows.append((reference, text, figures))
  print("reference scale | text scale | " + " | ".join(KEYS))
  for reference, text, figures in rows:
    print(
        f"{reference} | {text} | " + " | ".join(f"{figures.get(k, float('nan')):.3f}" for k in KEYS)
    )


if __name__ == "__main__":
  app.run(main)
