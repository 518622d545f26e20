"""Personalised text-to-video (PT2V) configs: the paper's stages, `stage1|stage2|stage3`.

Each stage is a run that starts from the one before (the first from a T2V run):

    python -m mgjax.train --config=experiments/pt2v.py:stage1 --workdir=W/stage1 \\
        --config.train.init_from.workdir=T2V_RUN --config.tae.workdir=T2V_RUN/tae \\
        --config.data.dir=DATA
    python -m mgjax.train --config=experiments/pt2v.py:stage2 --workdir=W/stage2 \\
        --config.train.init_from.workdir=W/stage1 --config.tae.workdir=... --config.data.dir=DATA
    python -m mgjax.train --config=experiments/pt2v.py:stage3 --workdir=W/stage3 \\
        --config.train.init_from.workdir=W/stage2 --config.tae.workdir=... --config.data.dir=DATA

or as one run with the earlier stages declared (`train.recipe`, mgjax/recipe.py), as
the shapes demo does (experiments/pt2v_shapes.py). DATA/manifest.jsonl lists clips of
one subject each with "reference" (a masked crop of the subject) and "subject" fields.

  stage1  paired references (from the clip itself), short clips, vision tower frozen
  stage2  paired references, full-length clips, tower frozen
  stage3  cross-paired references (another clip of the subject), tower trained

The transformer is t2v's (`stageN` is tiny; `stageN_<size>` takes experiments/t2v.py's
<size>, whose vision tower must then come from a MetaCLIP / CLIP directory:
--config.pt2v.encoder.path=DIR). Then an SFT run on curated data starts from stage3.
"""

import os

import ml_collections

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("stage1", "stage2", "stage3")


def tiny_vision_tower() -> dict:
  """A random CLIP ViT on 32 px references: 16 patches of 8 px and a class token."""
  return dict(
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=32,
      patch_size=8,
  )


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
  stage, _, size = arg.partition("_")
  if stage not in STAGES:
    raise ValueError(
        f"Unknown PT2V stage {arg!r}; use experiments/pt2v.py:<stage>[_<size>] with stage "
        f"one of {', '.join(STAGES)} and size one of experiments/t2v.py's."
    )
  config = configs.load_config(os.path.join(HERE, "t2v.py") + ":" + (size or "tiny"))
  with config.unlocked():
    config.task = "pt2v"
    config.pt2v = ml_collections.ConfigDict(
        dict(
            pairing="cross" if stage == "stage3" else "paired",  # "paired" | "cross"
            seed=0,  # draws the cross-paired partners
            reference_drop_prob=0.1,  # dropped on its own, for guidance
            reference_cfg_scale=2.0,  # guidance along the reference (the text's: flow)
            encoder=ml_collections.ConfigDict(
                dict(
                    path="",  # a Hugging Face CLIP / MetaCLIP directory
                    model=tiny_vision_tower() if not size else {},  # random tower keys
                    trainable=stage == "stage3",
                    dtype="float32",
                )
            ),
            # Runs sampled beside this one in evaluation: a run directory or the name of
            # a train.recipe stage ("" skips); a T2V run reads the text alone, a PT2V
            # one the same references.
            baselines=ml_collections.ConfigDict(dict(t2v="", paired="")),
        )
    )
    if stage == "stage1":  # short clips: half the frames of every video bucket
      config.data.buckets = tuple(
          (name, max(1, frames // 2), h, w, batch) if frames > 1 else (name, frames, h, w, batch)
          for name, frames, h, w, batch in config.data.buckets
      )
  return config
