"""The interface between a model family and the trainer.

The trainer owns the mesh, optimizer, state, jit, checkpoints and loop; a task owns
what differs between model families: its variables, its loss, its data and its
evaluation. All array-valued methods are pure so the trainer can jit them.

A task never imports the trainer. What it needs trained first (a TAE, an audio VAE)
it declares as `stages()`, which the trainer runs or resumes before the task's own
`prepare()`; a finished run it reads through `mgjax.runs` / `mgjax.tasks.codecs`.
Inference goes through `generate` (`mgjax.sample`) and `preview` (`mgjax.inspect`),
so the tools serve every task without knowing its name.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from mgjax.data.pipeline import DataIterator
from mgjax.data.video import probe
from mgjax.tasks.outputs import Sample, SampleRequest

Batch = Mapping[str, np.ndarray]
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Stage:
  """An earlier run a task needs finished before it trains: the trainer trains (or
  resumes) `config` in `workdir` until config.train.num_steps, then starts the task."""

  name: str  # for the logs, e.g. "TAE"
  workdir: str
  config: ml_collections.ConfigDict  # the whole train config of that run


class Task(abc.ABC):
  # True: `generate` takes videos another run made (SampleRequest.videos), so
  # `mgjax.sample --upsampler=W` can chain it after a text-to-video run.
  refines_videos: bool = False
  # True: `generate` reads the edit fields of a SampleRequest (instructions, first /
  # last frame, extend); other tasks refuse them rather than ignore them.
  takes_edit_requests: bool = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir

  @classmethod
  def for_shapes(cls, config: ml_collections.ConfigDict, **kwargs) -> Task:
    """A task that knows its shapes and reads no file, for compiling ahead of time
    (`mgjax.aot`): init, batch_specs and loss work; data and evaluation need not."""
    del kwargs
    return cls(config, "")

  def stages(self) -> list[Stage]:
    """Runs that must be finished before this one trains (in order). Called first, so
    a task may check its inputs here before any stage runs."""
    return []

  def prepare(self) -> None:  # noqa: B027 (optional hook)
    """Work that must finish before the model is built, after `stages()`, run by the
    trainer only (e.g. encoding the training set). Restoring for inference skips it."""

  @abc.abstractmethod
  def batch_specs(self) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """Every batch shape the task trains on, by name: {bucket: {key: global shape}}.

    Each batch from `train_batches` matches one of these; the trainer compiles one
    step per bucket before training (e.g. images as 1-frame videos next to clips,
    or aspect-ratio x duration buckets).
    """

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> tuple[PyTree, PyTree]:
    """(trainable params, frozen params), logically boxed. Called under jit."""

  def pretrained_weights(self) -> dict[str, PyTree]:
    """{"params": subtree, "frozen": subtree} of host arrays that replace the matching
    leaves of a fresh state (pretrained encoders); read on the host, never under jit."""
    return {}

  def check_mesh(self, mesh: jax.sharding.Mesh) -> None:
    """Raises ValueError, naming the mesh axis and the sizes, when an axis does not
    divide a dimension the task needs split (heads, MLP width, tokens); the trainer
    calls it before building the state."""
    del mesh

  @abc.abstractmethod
  def loss(
      self, params: PyTree, frozen: PyTree, batch: Batch, rng: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss to minimise over `params`, and scalar metrics to log."""

  @abc.abstractmethod
  def train_batches(self, start_step: int, rows_of: Callable[[int], slice]) -> DataIterator:
    """Host batches for steps start_step, start_step + 1, ...: an iterator whose state
    the trainer checkpoints (mgjax/data/pipeline.py), deterministic by step, so a
    resumed run sees the batches it would have seen. Each batch holds only this
    process's rows, `rows_of(global batch size)`, of the global batch."""

  def batch_tokens(self, batch: Batch) -> int:
    """Model tokens in a host batch, for the tokens/s metric; 0 when not meaningful."""
    del batch
    return 0

  def data_metrics(self) -> dict[str, float]:
    """Task counters logged with the loss (the pipeline's own, e.g. skipped files,
    come from its iterator)."""
    return {}

  @abc.abstractmethod
  def evaluate(self, params: PyTree, frozen: PyTree, step: int) -> dict[str, float]:
    """Held-out metrics; may write artefacts (videos, figures) under the workdir."""

  def generate(self, params: PyTree, frozen: PyTree, request: SampleRequest) -> list[Sample]:
    """What a user asked for (`mgjax.sample`): prompts -> videos, videos -> sound, ..."""
    raise ValueError(
        f"The {self.config.task!r} task generates nothing from prompts or files; "
        "sample from a run of a generative task."
    )

  def check_request(self, request: SampleRequest) -> None:
    """Raises what `generate` would on bad files in `request`, before the weights are
    read (minutes for a large run): an unreadable input video here, tasks add theirs."""
    given = [
        flag
        for flag, value in (
            ("--instruction", request.instructions),
            ("--image / --first_frame", request.first_frame),
            ("--last_frame", request.last_frame),
            ("--extend", request.extend),
        )
        if value
    ]
    if given and not self.takes_edit_requests:
      raise ValueError(
          f"{given[0]} is for edit runs (task edit); this is a {self.config.task!r} run."
      )
    for path in request.inputs:
      probe(path)

  def sampling_steps(self, request: SampleRequest) -> int | None:
    """Solver steps `generate` runs for `request`, for a progress bar; None: unknown."""
    del request
    return None

  def preview(self, params: PyTree, frozen: PyTree, request: SampleRequest) -> Sample:
    """One sample that shows what the model does (`mgjax.inspect`, the notebook); by
    default the first of `generate`."""
    return self.generate(params, frozen, request)[0]
