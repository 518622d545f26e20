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
}


def get_task_class(name: str):
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r} (config.task); known tasks: {sorted(TASKS)}.")
  module_name, class_name = TASKS[name].split(":")
  return getattr(importlib.import_module(module_name), class_name)
