"""Movie Gen Edit's CPU demo: the T2V demo, then edit stages I -> III on the shapes edit
set, scored on held-out (object, edit) combinations.

    python -m mgjax.train --config=experiments/edit_shapes.py --workdir=workdir/edit

One command, resumable at any point, runs the recipe (`train.recipe`, each stage in
W/<name>, each from the one before): the text-to-video demo as it is
(experiments/t2v_shapes.py: plain shapes in W/t2v/shapes, its TAE in W/tae, its DiT
in W/t2v), stage I (W/stage1: single-frame edits with text-to-video clips), stage II
(W/stage2: animated image edits, segmentation and motion edits), and this run, stage
III: the stage II model edits real clips (W/backtranslation) and this run learns to
undo its edits. All on the shapes edit set (mgjax/data/shapes_edit.py, W/shapes).
Its evaluation edits held-out clips with stage III, stage I, stage II and SDEdit
(the T2V model) side by side, and prints each one's edit success and preservation
per kind, then image-to-video and extension figures. Then:

    python -m mgjax.sample --task=edit --workdir=workdir/edit \\
        --video=workdir/edit/shapes/videos/real_00003.mp4 --instruction="make the circle blue"
    python -m mgjax.sample --task=edit --workdir=workdir/edit \\
        --image=workdir/edit/shapes/images/image_00003_source.png \\
        --prompt="a red circle moves to the left on a striped background"
    python -m mgjax.sample --task=edit --workdir=workdir/edit \\
        --extend=workdir/edit/shapes/videos/real_00003.mp4 --seconds=1 \\
        --prompt="a red circle moves to the left on a striped background"

`experiments/edit_shapes.py:stage1|stage2` are the recipe's edit stages.
"""

import os

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))
THIS = os.path.abspath(__file__)
STEPS = {"stage1": 2000, "stage2": 2000, "stage3": 2000}


def get_config(arg: str = ""):
  if arg not in ("", "stage1", "stage2"):
    raise ValueError(
        "experiments/edit_shapes.py takes no argument (stage III, the demo) or one of "
        f"stage1, stage2 (its recipe's edit stages); got {arg!r}."
    )
  stage = arg or "stage3"
  config = configs.load_config(os.path.join(HERE, "edit.py") + ":" + stage)
  t2v = configs.load_config(os.path.join(HERE, "t2v_shapes.py"))
  with config.unlocked():
    # The T2V demo's text, flow and sampling settings (the words tokenizer,
    # t ~ logit-normal(-1, 1), text guidance 4), which the stages start from.
    config.text, config.flow.t_mean = t2v.text, t2v.flow.t_mean
    config.flow.cfg_scale = t2v.flow.cfg_scale
    config.data.shapes.update(num_frames=32, height=64, width=64, paths="lanes")
    config.optimizer.warmup_steps = 50
    config.train.update(num_steps=STEPS[stage], checkpoint_every=500, eval_every=-1)
    if not arg:  # stage III: the demo's run, after its recipe
      config.train.recipe = (
          ("t2v", os.path.join(HERE, "t2v_shapes.py")),
          ("stage1", f"{THIS}:stage1"),
          ("stage2", f"{THIS}:stage2"),
      )
      config.train.eval_every = 0  # at the end
      config.edit.backtranslate.run = "stage2"
      config.edit.baselines.update(stage1="stage1", stage2="stage2", sdedit="t2v")
  return config
