"""Instruction-guided video editing configs (Movie Gen Edit): `stage1|stage2|stage3`.

Each stage is a run that starts from the one before (the first from a T2V run):

    python -m mgjax.train --config=experiments/edit.py:stage1 --workdir=W/stage1 \\
        --config.train.init_from.workdir=T2V_RUN --config.tae.workdir=T2V_RUN/tae \\
        --config.data.name=manifest --config.data.dir=DATA
    python -m mgjax.train --config=experiments/edit.py:stage2 --workdir=W/stage2 \\
        --config.train.init_from.workdir=W/stage1 --config.tae.workdir=... ...
    python -m mgjax.train --config=experiments/edit.py:stage3 --workdir=W/stage3 \\
        --config.train.init_from.workdir=W/stage2 --config.edit.backtranslate.run=W/stage2 ...

or as one run with the earlier stages declared (`train.recipe`), as the shapes demo
does (experiments/edit_shapes.py). The task is mgjax/tasks/edit.py; DATA holds the
manifests named by edit.manifests (records with "source", the instruction as
"caption" and the edit kind as "task"; plain clips without "source" train the
generation tasks) and edit.eval_manifest:

  stage1  single-frame edits (1-frame videos: image_edits.jsonl) with text-to-video
          clips (real.jsonl), image edits on data.image_fraction of the steps
  stage2  multi-frame edits (video_edits.jsonl: animated image edits, segmentation,
          motion edits) with the clips
  stage3  back-translation: the stage II run edits the real clips, the model learns
          edited -> real with the instruction that undoes each edit

`stageN` is tiny (CPU); `stageN_<size>` takes experiments/t2v.py's <size>. Then

    python -m mgjax.sample --task=edit --workdir=W/stage3 --video=IN.mp4 \\
        --instruction="make the circle blue"
"""

import os

import ml_collections

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("stage1", "stage2", "stage3")
MANIFESTS = {
    "stage1": ("image_edits.jsonl", "real.jsonl"),
    "stage2": ("video_edits.jsonl", "real.jsonl"),
    "stage3": ("real.jsonl",),  # + the back-translated pairs (edit.backtranslate)
}


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
  stage, _, size = arg.partition("_")
  if stage not in STAGES:
    raise ValueError(
        f"Unknown edit stage {arg!r}; use experiments/edit.py:<stage>[_<size>] with stage "
        f"one of {', '.join(STAGES)} and size one of experiments/t2v.py's."
    )
  config = configs.load_config(os.path.join(HERE, "t2v.py") + ":" + (size or "tiny"))
  with config.unlocked():
    config.task = "edit"
    config.edit = ml_collections.ConfigDict(
        dict(
            manifests=MANIFESTS[stage],  # under data.dir (or absolute)
            eval_manifest="eval_edits.jsonl",
            # Plain clips train generation tasks: t2v, i2v, first_last, extend.
            generation_mix=(0.25, 0.35, 0.15, 0.25),
            generic_task_prob=0.2,  # an edit shown with the generic "edit" task instead
            task_tokens=4,  # cross-attention tokens per task embedding (the paper's)
            window_overlap=2,  # latent frames shared by windows of a longer clip
            # The shapes edit set (data.name="shapes_edit", mgjax/data/shapes_edit.py).
            shapes_edit=ml_collections.ConfigDict(
                dict(num_image_edits=2048, num_video_edits=1024, num_real=512, num_eval=84)
            ),
            backtranslate=ml_collections.ConfigDict(
                dict(
                    run="",  # the stage II run (or recipe stage name); "": none
                    kinds=("color", "shape", "background", "add", "remove", "motion"),
                    num_clips=512,  # real clips edited
                    num_steps=25,
                    cfg_scale=4.0,
                    batch_size=16,
                    seed=0,
                )
            ),
            # Runs evaluated beside this one: a run directory or a recipe stage name;
            # an edit run edits, a T2V run is the SDEdit baseline (noise the source to
            # sdedit_t0 and denoise towards the target's caption).
            baselines=ml_collections.ConfigDict(dict(stage1="", stage2="", sdedit="")),
            sdedit_t0=0.5,
        )
    )
    config.data.name = "shapes_edit"
    config.data.shapes.paths = "lanes"
    if stage == "stage1":
      config.data.image_fraction = 0.7  # image edits sampled more often than clips
    else:
      config.data.buckets = tuple(b for b in config.data.buckets if b[1] > 1)
    config.eval = ml_collections.ConfigDict(
        dict(
            num_edits=84,  # held-out edits (split "eval"), spread over the kinds
            num_generations=24,  # image-to-video and extension cases
            num_steps=50,
            schedule="linear_quadratic",
            method="euler",
            cfg_scale=4.0,
            seed=0,
            num_videos_to_write=8,
        )
    )
  return config
