"""PT2V's CPU demo: the T2V demo, then stages I -> III on the identity shapes, scored on
subjects never trained on.

    python -m mgjax.train --config=experiments/pt2v_shapes.py --workdir=workdir/pt2v

One command, resumable at any point, runs the recipe (`train.recipe`, each stage in
W/<name>, each from the one before): the text-to-video demo as it is
(experiments/t2v_shapes.py: plain shapes in W/t2v/shapes, its TAE in W/tae, its DiT
in W/t2v), stage I (W/stage1: paired references, 16-frame clips, vision tower
frozen), stage II (W/stage2: 32-frame clips), and this run, stage III (references
from other clips of the subject, tower trained), all on the identity shapes
(mgjax/data/shapes_identity.py, W/shapes: 32 subjects, 4 of the 16 the checker
reads held out). Its evaluation samples held-out subjects' clips, each given the
reference of another clip of that subject, and prints identity (the accent checker,
mgjax/eval/identity.py, and the tower's cosine) and prompt following (colour and
motion) for stage III, stage II (paired references only) and the T2V model (the
text alone) side by side. On 2026-12-07, about 33 min on 2 cores: identity 62.5%
(stage II 16.7%, T2V 4.2%), colour and motion 100% (T2V 66.7%). Then:

    python -m mgjax.sample --task=pt2v --workdir=workdir/pt2v \\
        --reference=workdir/pt2v/shapes/references/00003.png \\
        --prompt="a red circle moves to the left on a striped background"

`experiments/pt2v_shapes.py:stage1|stage2` are the recipe's PT2V stages.
"""

import os

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))
THIS = os.path.abspath(__file__)
STEPS = {"stage1": 1000, "stage2": 1000, "stage3": 6000}


def get_config(arg: str = ""):
  if arg not in ("", "stage1", "stage2"):
    raise ValueError(
        "experiments/pt2v_shapes.py takes no argument (stage III, the demo) or one of "
        f"stage1, stage2 (its recipe's PT2V stages); got {arg!r}."
    )
  stage = arg or "stage3"
  config = configs.load_config(os.path.join(HERE, "pt2v.py") + ":" + stage)
  t2v = configs.load_config(os.path.join(HERE, "t2v_shapes.py"))
  with config.unlocked():
    # The T2V demo's text, flow and sampling settings (the words tokenizer,
    # t ~ logit-normal(-1, 1), text guidance 4), which the stages start from.
    config.text, config.flow.t_mean = t2v.text, t2v.flow.t_mean
    config.flow.cfg_scale = t2v.flow.cfg_scale
    config.pt2v.reference_cfg_scale = 3.0
    config.eval.update(num_steps=50, cfg_scale=t2v.eval.cfg_scale, num_prompts_per_bucket=24)
    # The identity shapes: 64 px, 32 frames on the motion lanes, videos only.
    config.data.update(name="shapes_identity", fps=16.0)
    config.data.shapes.update(
        num_videos=512, num_images=0, num_frames=32, height=64, width=64, paths="lanes"
    )
    config.data.buckets = tuple(b for b in config.data.buckets if b[1] > 1)
    config.optimizer.warmup_steps = 50
    config.train.update(num_steps=STEPS[stage], checkpoint_every=500, eval_every=-1)
    if not arg:  # stage III: the demo's run, after its recipe
      config.train.recipe = (
          ("t2v", os.path.join(HERE, "t2v_shapes.py")),
          ("stage1", f"{THIS}:stage1"),
          ("stage2", f"{THIS}:stage2"),
      )
      config.train.eval_every = 0  # at the end
      config.pt2v.baselines.update(t2v="t2v", paired="stage2")
  return config
