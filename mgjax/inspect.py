"""Look inside a training run from any notebook: config, parameters, metrics, samples.

    from mgjax.inspect import open_run, show_video
    run = open_run("workdir/demo")   # a `python -m mgjax.train --workdir`
    print(run.config)
    run.param_table(depth=2)         # parameters per module: shapes, dtypes, counts
    run.plot_loss()
    show_video(run.sample_video("a red circle moves to the left"), fps=run.fps)

Everything reads what the trainer writes (config.json, metrics.jsonl, checkpoints/)
and writes nothing into the run. The train state is restored on first use only, so
the config and metrics of a run too large for the notebook's machine can still be
read. notebooks/inspect_checkpoint.ipynb walks through it, in Colab too.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import html
import json
import logging
import os
import tempfile
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from mgjax import runs
from mgjax.data.video import probe, write_image, write_video
from mgjax.tasks.outputs import SampleRequest
from mgjax.train_state import path_names

TREES = ("params", "frozen", "ema_params")  # the parameter trees of a TrainState


class NoRunError(FileNotFoundError):
  """The directory is not a run's workdir, or holds no complete checkpoint yet."""


class _ReadOnlyNotices(logging.Filter):
  """Orbax warns whenever a checkpoint folder is opened read-only, as inspecting always
  does ("Given directory is read only", "read_only=True, setting ..."); the notices
  say nothing about the run, so they are kept out of the notebook."""

  def filter(self, record):
    return not str(record.msg).startswith(
        ("CheckpointManagerOptions.read_only=True", "Given directory is read only")
    )


@contextlib.contextmanager
def _quiet_read_only():
  absl_logger, notices = logging.getLogger("absl"), _ReadOnlyNotices()
  absl_logger.addFilter(notices)
  try:
    yield
  finally:
    absl_logger.removeFilter(notices)


class ParamRow(NamedTuple):
  path: str  # "dit/final/kernel"
  shape: tuple[int, ...] | None  # None for a row summing several arrays
  dtype: str
  count: int


@dataclasses.dataclass
class ParamTable:
  """Parameter rows and their total. Prints as a text table, renders as an HTML table
  in Jupyter and Colab, and becomes a pandas DataFrame (to sort and filter) when pandas
  is installed; pandas is not required."""

  rows: list[ParamRow]
  total: int
  num_arrays: int
  max_rows: int = 100  # shown; large models have thousands of arrays

  def total_line(self) -> str:
    return f"Total: {self.total:,} parameters in {self.num_arrays:,} arrays"

  def _cells(self) -> list[tuple[str, str, str, str]]:
    return [
        (r.path, "" if r.shape is None else str(r.shape), r.dtype, f"{r.count:,}")
        for r in self.rows[: self.max_rows]
    ]

  def _more(self) -> str:
    hidden = len(self.rows) - self.max_rows
    return f"... {hidden} more rows (max_rows={self.max_rows})" if hidden > 0 else ""

  def __str__(self) -> str:
    header = ("path", "shape", "dtype", "count")
    cells = self._cells()
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(4)]
    lines = [
        "  ".join(
            c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in [header] + cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [line for line in (self._more(), self.total_line()) if line])

  def _repr_pretty_(self, printer, cycle):  # IPython's text/plain
    printer.text(str(self))

  def _repr_html_(self) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td style='text-align:{'right' if i == 3 else 'left'}'>" f"{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        + "</tr>"
        for cells in self._cells()
    )
    more = f"<p>{self._more()}</p>" if self._more() else ""
    return (
        "<table><thead><tr><th>path</th><th>shape</th><th>dtype</th><th>count</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>{more}<p><b>{self.total_line()}"
        "</b></p>"
    )

  def to_dataframe(self):
    """All rows as a pandas DataFrame (columns path, shape, dtype, count)."""
    import pandas as pd  # optional: only this method needs it

    return pd.DataFrame([r._asdict() for r in self.rows])


def param_table(tree: Any, depth: int | None = None) -> ParamTable:
  """One row per array of a parameter tree, or with `depth`, one row per path prefix
  of that many names (a module overview: a row sums its arrays), in tree order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  groups: dict[str, list] = {}
  for path, leaf in leaves:
    names = path_names(path)
    groups.setdefault("/".join(names[:depth]), []).append(leaf)
  rows = []
  for path, arrays in groups.items():
    count = int(sum(np.prod(a.shape, dtype=np.int64) for a in arrays))
    dtypes = sorted({str(a.dtype) for a in arrays})
    shape = tuple(arrays[0].shape) if len(arrays) == 1 else None
    rows.append(ParamRow(path, shape, ",".join(dtypes), count))
  return ParamTable(rows, sum(r.count for r in rows), len(leaves))


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (steps int64 [n], values float64 [n])} from a metrics.jsonl, by step.

  A resumed run logs the steps after its last checkpoint again: the later row wins.
  A last line cut off by a killed run is skipped. Eval metrics are named "eval/...".
  """
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  by_name: dict[str, dict[int, float]] = {}
  for i, line in enumerate(lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}, line {i + 1}, is not JSON: {line[:80]!r}") from None
    step = int(row.pop("step"))
    for name, value in row.items():
      by_name.setdefault(name, {})[step] = float(value)
  return {
      name: (
          np.array(sorted(values), np.int64),
          np.array([values[s] for s in sorted(values)], np.float64),
      )
      for name, values in sorted(by_name.items())
  }


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in workdir/checkpoints, oldest first (an
  interrupted save is never listed)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return []
  from mgjax.checkpoint import Checkpointer

  with _quiet_read_only():
    checkpointer = Checkpointer(workdir, read_only=True)
    steps = checkpointer.all_steps()
    checkpointer.close()
  return steps


@dataclasses.dataclass
class Run:
  """A training run opened for inspection; `state` restores its checkpoint on first use."""

  workdir: str
  config: ml_collections.ConfigDict = dataclasses.field(repr=False)
  steps: list[int]  # complete checkpoints, oldest first
  step: int  # the one `state` restores

  @functools.cached_property
  def _restored(self):
    with _quiet_read_only():
      return runs.restore_train_state(self.workdir, self.step)  # (config, task, state)

  @property
  def task(self):
    """The run's `mgjax.tasks` Task, built from its config."""
    return self._restored[1]

  @property
  def state(self):
    """The restored `TrainState` (params, frozen, opt_state, ema_params, step, rng)."""
    return self._restored[2]

  @property
  def fps(self) -> float:
    """The frame rate the run's videos are written with."""
    return self.config.get("data", {}).get("fps") or 16

  def param_table(self, which: str = "params", depth: int | None = None) -> ParamTable:
    """Rows (path, shape, dtype, count) of the state's `which` tree: "params" (trained),
    "frozen" (used by the loss, never updated: frozen encoders, loss networks) or
    "ema_params" (empty when the run keeps no EMA)."""
    if which not in TREES:
      raise ValueError(f"which={which!r}: pick one of {TREES}.")
    return param_table(getattr(self.state, which), depth)

  def metrics(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (steps, values)} of everything the run logged to metrics.jsonl."""
    return read_metrics(os.path.join(self.workdir, "metrics.jsonl"))

  def plot_loss(self, names: tuple[str, ...] = ("loss",), ax=None):
    """Plots the named metrics against the step (log scale when they span a decade);
    returns the matplotlib Axes. matplotlib is imported here, so the rest needs none."""
    import matplotlib.pyplot as plt

    metrics = self.metrics()
    missing = [n for n in names if n not in metrics]
    if missing:
      raise ValueError(
          f"No {missing} in {os.path.join(self.workdir, 'metrics.jsonl')}; "
          f"logged: {sorted(metrics) or 'nothing yet'}."
      )
    if ax is None:
      ax = plt.subplots(figsize=(7, 3.5))[1]
    for name in names:
      ax.plot(*metrics[name], marker="." if len(metrics[name][0]) < 50 else None, label=name)
    values = np.concatenate([metrics[n][1] for n in names])
    if values.min() > 0 and values.max() > 10 * values.min():  # spans a decade or more
      ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step")
    ax.set_title(f"{os.path.basename(os.path.normpath(self.workdir))} ({self.config.task})")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax

  def sample_video(
      self,
      prompt: str | None = None,
      *,
      num_steps: int | None = None,
      num_frames: int | None = None,
      height: int | None = None,
      width: int | None = None,
      cfg_scale: float | None = None,
      schedule: str | None = None,
      method: str | None = None,
      seed: int = 0,
      path: str | None = None,
  ) -> np.ndarray:
    """uint8 video [T, H, W, 3], also written to `path` (.mp4) when given.

    A text-to-video run samples `prompt` as `mgjax.sample` does (unset settings: the
    run's). A TAE run has no prompts: it reconstructs the first held-out clip and
    returns input | reconstruction side by side, [T, H, 2W, 3].
    """
    with _quiet_read_only():  # a t2v run reads its TAE's checkpoint on first use
      video = self._sample(
          prompt,
          num_steps=num_steps,
          num_frames=num_frames,
          height=height,
          width=width,
          cfg_scale=cfg_scale,
          schedule=schedule,
          method=method,
          seed=seed,
      )
    if path:
      save_video(path, video, self.fps)
    return video

  def _sample(
      self, prompt, *, num_steps, num_frames, height, width, cfg_scale, schedule, method, seed
  ) -> np.ndarray:
    """The task's own preview (`Task.preview`): every task shows itself the same way."""
    request = SampleRequest(
        prompts=[prompt] if prompt else [],
        num_frames=num_frames,
        height=height,
        width=width,
        num_steps=num_steps,
        schedule=schedule,
        method=method,
        cfg_scale=cfg_scale,
        seed=seed,
        batch_size=1,
    )
    sample = self.task.preview(self.state.eval_params(), self.state.frozen, request)
    if sample.video is None:
      raise ValueError(f"A {self.config.task!r} run's preview has no video to show.")
    return sample.video  # [T, H, W, 3]


def save_video(path: str, video: np.ndarray, fps: float):
  """uint8 [T, H, W, 3] -> an .mp4 at `path` (or an image, for one frame and an image
  extension)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if len(video) == 1 and path.lower().endswith((".png", ".jpg", ".jpeg")):
    write_image(path, video[0])
  else:
    write_video(path, video, fps=fps)


def open_run(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` (the trainer's --workdir), at checkpoint `step` (default the
  latest complete one). Reads the config and lists checkpoints now; restores later."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  fix = (
      "set it to the --workdir of a `python -m mgjax.train` run (on Colab: mount "
      "Google Drive or upload the run folder first)"
  )
  if not os.path.isdir(workdir):
    raise NoRunError(f"{workdir} does not exist: {fix}.")
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise NoRunError(
        f"{workdir} has no config.json, so it is no training run's workdir: " f"{fix}."
    )
  with open(config_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  steps = checkpoint_steps(workdir)
  if not steps:
    raise NoRunError(
        f"{workdir} has no complete checkpoint in {os.path.join(workdir, 'checkpoints')}: "
        "the trainer saves one every train.checkpoint_every steps and at the end; train "
        "longer (the same command resumes) or open another run."
    )
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise NoRunError(
        f"{workdir} has no complete checkpoint for step {step}; complete " f"ones: {steps}."
    )
  return Run(workdir, config, steps, step)


def show_video(
    video: np.ndarray | str, fps: float = 16, width: int | None = None, loop: bool = True
):
  """An inline HTML <video> of a uint8 [T, H, W, 3] array or an .mp4 file, with the
  bytes embedded as base64, so it plays in Jupyter, Colab and a saved notebook alike
  (a file link would not reach Colab's browser). Small videos are shown at least
  256 px wide. The notebook displays the returned object."""
  from IPython.display import HTML

  if isinstance(video, (str, os.PathLike)):
    with open(video, "rb") as f:
      data = f.read()
    if width is None:
      width = max(256, probe(video).width)
  else:
    video = np.asarray(video)  # [T, H, W, 3]
    width = width or max(256, video.shape[2])
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "video.mp4")
      write_video(path, video, fps=fps)
      with open(path, "rb") as f:
        data = f.read()
  attributes = "controls autoplay muted playsinline" + (" loop" if loop else "")
  source = base64.b64encode(data).decode("ascii")
  return HTML(
      f'<video {attributes} width="{width}" style="image-rendering: pixelated">'
      f'<source src="data:video/mp4;base64,{source}" type="video/mp4"></video>'
  )
