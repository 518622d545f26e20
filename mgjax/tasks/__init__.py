"""Model families plug into the one trainer as tasks (see `mgjax/tasks/base.py`)."""

from __future__ import annotations

import importlib

# Task name -> "module:class". Imported lazily so a task's dependencies load only
# when that task runs.
TASKS = {
    "tae": "mgjax.tasks.tae:TAETask",
    "t2v": "mgjax.tasks.t2v:T2VTask",
    "audio_vae": "mgjax.tasks.audio_vae:AudioVAETask",
    "audio": "mgjax.tasks.audio:AudioTask",
    "upsample": "mgjax.tasks.upsample:UpsampleTask",
    "pt2v": "mgjax.tasks.pt2v:PT2VTask",
    "edit": "mgjax.tasks.edit:EditTask",
}


# Other names users know a task by (`mgjax.sample --task=v2a`).
TASK_ALIASES = {"v2a": "audio", "t2i": "t2v", "i2v": "edit"}


def get_task_class(name: str):
  """The task class of config.task: a name of TASKS, or "package.module:Class" for a
  task defined outside mgjax (a research fork, a test), which every tool then serves."""
  if ":" in name:
    module_name, class_name = name.split(":", 1)
  elif name in TASKS:
    module_name, class_name = TASKS[name].split(":")
  else:
    raise ValueError(
        f"Unknown task {name!r} (config.task); known tasks: {sorted(TASKS)}, or "
        '"package.module:Class".'
    )
  return getattr(importlib.import_module(module_name), class_name)
