"""Multi-stage recipes: earlier runs trained first, each starting from the one before.

Movie Gen post-trains in stages (PT2V: I short clips with a frozen vision encoder,
II longer clips, III cross-paired data with the encoder trained), every stage a run
initialised from the previous one. `train.recipe` names those earlier runs, in
order, as (name, config) pairs; a run with a recipe

  * trains each stage in <workdir>/<name> (or finishes it: a killed recipe resumes
    in the stage it stopped in), through the trainer's declared stages;
  * gives every stage this run's codec and, when it trains on the same data set
    (`data.name`), its data directory (so one TAE and one copy of the data serve
    the recipe), and `train.init_from` = the stage before it; the
    first starts from this run's own `train.init_from` (where the recipe starts, e.g.
    the T2V run) when set, else from what its config says;
  * starts itself from the last stage.
"""

from __future__ import annotations

import os

import ml_collections

from mgjax import configs
from mgjax.data import sources
from mgjax.tasks.base import Stage


def stage_workdir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def run_or_stage(config: ml_collections.ConfigDict, workdir: str, name: str) -> str:
  """A run directory, or the workdir of the train.recipe stage called `name`."""
  stages = {stage for stage, _ in config.train.get("recipe", ()) or ()}
  return stage_workdir(workdir, name) if name in stages else name


def recipe_stages(
    config: ml_collections.ConfigDict, workdir: str, codec_section: str, codec_workdir: str
) -> list[Stage]:
  """The stages of config.train.recipe, configured to share data, codec and weights."""
  stages, previous = [], config.train.init_from.workdir
  for entry in config.train.get("recipe", ()) or ():
    if len(entry) != 2:
      raise ValueError(
          f"train.recipe entry {entry!r} must be a (name, config) pair, e.g. "
          '("stage1", "experiments/pt2v.py:stage1").'
      )
    name, spec = entry
    stage_config = configs.load_config(spec)
    stage_dir = stage_workdir(workdir, name)
    with stage_config.unlocked():
      if stage_config.data.name == config.data.name:  # the same data set: one copy
        stage_config.data.dir = sources.data_dir(config.data, workdir)
      if codec_section in stage_config:
        stage_config[codec_section].workdir = codec_workdir
      if previous:
        stage_config.train.init_from.workdir = previous
    stages.append(Stage(name, stage_dir, stage_config))
    previous = stage_dir
  return stages


def init_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The run a fresh state starts from: the recipe's last stage, else
  train.init_from.workdir ("": none)."""
  recipe = config.train.get("recipe", ()) or ()
  return stage_workdir(workdir, recipe[-1][0]) if recipe else config.train.init_from.workdir
