"""The Grain input pipeline: bucketed batches, per-process rows, bad-input accounting.

Every bucket is a `Stream`: a random-access set of examples (records to decode, or
precomputed latent shards) and its global batch size. Per stream, Grain makes an
infinite, per-epoch reshuffled sequence of examples in a global order that depends
on the seed only:

    MapDataset.range(n).shuffle(seed).repeat().random_map(load, seed)   # global examples
      -> ProcessRows: this process's rows of each global batch          # multi-host
      -> batch(local rows)                                              # one bucket
    MapDataset.mix(streams, weights)                                    # one bucket per batch
      -> to_iter_dataset(threads) [-> mp_prefetch(worker processes)]

Multi-host sharding is by rows: process p loads only rows [r0, r1) of every global
batch, the rows its devices hold (`parallel.sharding.process_rows`). The processes
therefore read disjoint examples that together cover the data set, like
`ShardByJaxProcess`, and the global batch of step s is the same for any number of
processes, so a run can resume on a different host count and see the same data.

Batch s is a pure function of (seed, s), so the iterator's checkpointable state is
the index of the next batch plus the bad-input counters; `DataIterator.set_state`
resumes exactly, whatever the number of threads or worker processes.

Bad input (mgjax/data/examples.py) never stops a run by itself: bad records are
counted by kind when the record list is built (`skipped_records`), bad files when a
batch reaches the main process. Both are reported by `metrics()`; when the skipped
share of everything tried passes `max_skip_fraction`, `DataQualityError` stops the run.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import grain
import numpy as np
from absl import logging

from mgjax.data.examples import collate

# The skipped fraction is judged only after this many examples were tried, so a
# single bad file among the first few cannot stop a run.
MIN_TRIED_FOR_THRESHOLD = 20


class DataQualityError(RuntimeError):
  """More of the data set is unusable than data.max_skip_fraction allows."""


@dataclasses.dataclass(frozen=True)
class Stream:
  """One bucket's examples: load(i, rng) -> example dict, for i in [0, size)."""

  name: str
  size: int
  load: Callable[[int, np.random.Generator], dict]
  batch_size: int  # global
  weight: float = 1.0  # share of batches drawn from this stream


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
  seed: int = 0
  num_threads: int = 4  # Grain read threads per process
  num_workers: int = 0  # worker processes (0: decode in this process's threads)
  prefetch: int = 4  # batches read ahead per thread pool
  max_skip_fraction: float = 0.1  # stop the run above this share of skipped examples


class ProcessRows(grain.MapDataset):
  """Rows [rows.start, rows.stop) of every `batch_size`-row batch of `parent`."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, rows: slice):
    super().__init__(parent)
    if not 0 <= rows.start < rows.stop <= batch_size:
      raise ValueError(f"Rows {rows} are not inside a batch of {batch_size}.")
    self._batch_size = batch_size
    self._start = rows.start
    self._local = rows.stop - rows.start

  def __len__(self) -> int:
    return len(self._parent) // self._batch_size * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._batch_size + self._start + row]

  def __str__(self) -> str:
    return f"ProcessRows(batch_size={self._batch_size}, start={self._start}, rows={self._local})"


def stream_batches(stream: Stream, seed: int, rows: slice) -> grain.MapDataset:
  """This process's rows of the stream's global batches, in order: a MapDataset."""
  if stream.size < 1:
    raise ValueError(f"Bucket {stream.name!r} has no examples.")
  examples = (
      grain.MapDataset.range(stream.size)
      .shuffle(seed=seed)
      .repeat()
      .random_map(stream.load, seed=seed)
  )
  local = ProcessRows(examples, stream.batch_size, rows)
  return local.batch(rows.stop - rows.start, drop_remainder=True, batch_fn=collate)


def mixed_batches(
    streams: Sequence[Stream], seed: int, rows_of: Callable[[int], slice]
) -> grain.MapDataset:
  """Batch s of the run (this process's rows), each from one stream."""
  per_stream = [
      stream_batches(s, seed + 7919 * i, rows_of(s.batch_size)) for i, s in enumerate(streams)
  ]
  if len(per_stream) == 1:
    return per_stream[0]
  return grain.MapDataset.mix(per_stream, [s.weight for s in streams])


def all_rows(batch_size: int) -> slice:
  return slice(0, batch_size)


class DataIterator:
  """Host batches of a training run, with bad-input accounting and a resumable state.

  finish(batch) runs in the main process on each collated batch (e.g. tokenising
  captions or encoding pixels) and returns what the train step gets.
  """

  def __init__(
      self,
      streams: Sequence[Stream],
      options: LoaderOptions,
      finish: Callable[[dict], dict],
      *,
      rows_of: Callable[[int], slice] = all_rows,
      skipped_records: collections.Counter | None = None,
      num_records: int = 0,
      start: int = 0,
  ):
    self._batches = mixed_batches(streams, options.seed, rows_of)
    self._options = options
    self._finish = finish
    self._skipped_records = collections.Counter(skipped_records or {})
    self._num_records = num_records
    self._bad_files: dict[str, set[str]] = collections.defaultdict(set)
    self._skipped_draws = 0
    self._examples = 0
    self._iterator = None
    self._next = start
    self._check_records()

  # ------------------------------------------------------------------ state
  def get_state(self) -> dict:
    """JSON-able: everything needed to continue exactly where this iterator is."""
    return {
        "next_batch": self._next,
        "examples": self._examples,
        "skipped_draws": self._skipped_draws,
        "bad_files": {k: sorted(v) for k, v in self._bad_files.items()},
    }

  def set_state(self, state: dict) -> None:
    self.close()
    self._next = int(state["next_batch"])
    self._examples = int(state["examples"])
    self._skipped_draws = int(state["skipped_draws"])
    self._bad_files = collections.defaultdict(
        set, {k: set(v) for k, v in state["bad_files"].items()}
    )

  # --------------------------------------------------------------- iterating
  def _start(self):
    dataset = self._batches.slice(slice(self._next, None)).to_iter_dataset(
        grain.ReadOptions(
            num_threads=self._options.num_threads, prefetch_buffer_size=self._options.prefetch
        )
    )
    if self._options.num_workers > 0:
      dataset = dataset.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._options.num_workers)
      )
    self._iterator = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      self._start()
    batch = next(self._iterator)
    skipped = batch.pop("skipped")
    # np.array copies out of worker shared memory, which is then freed.
    batch = {k: v if isinstance(v, list) else np.array(v) for k, v in batch.items()}
    for kind, path, detail in skipped:
      if path not in self._bad_files[kind]:
        logging.warning("Skipping a file (%s): %s: %s", kind, path, detail)
      self._bad_files[kind].add(path)
    self._skipped_draws += len(skipped)
    self._examples += len(next(iter(batch.values())))
    self._next += 1
    self._check_draws()
    return self._finish(batch)

  def close(self):
    if self._iterator is not None and hasattr(self._iterator, "close"):
      self._iterator.close()
    self._iterator = None

  # -------------------------------------------------------------- accounting
  def skipped_by_kind(self) -> dict[str, int]:
    """Unusable records and distinct unusable files, by kind."""
    counts = collections.Counter(self._skipped_records)
    for kind, paths in self._bad_files.items():
      counts[kind] += len(paths)
    return dict(counts)

  def metrics(self) -> dict[str, float]:
    tried = self._skipped_draws + self._examples
    metrics = {f"data/skipped_{kind}": float(n) for kind, n in self.skipped_by_kind().items()}
    metrics["data/skipped_fraction"] = self._skipped_draws / tried if tried else 0.0
    return metrics

  def _check_records(self):
    bad = sum(self._skipped_records.values())
    if self._num_records and bad / self._num_records > self._options.max_skip_fraction:
      self._fail(f"{bad} of {self._num_records} records are unusable")

  def _check_draws(self):
    tried = self._skipped_draws + self._examples
    if tried >= MIN_TRIED_FOR_THRESHOLD and (
        self._skipped_draws / tried > self._options.max_skip_fraction
    ):
      self._fail(f"{self._skipped_draws} of {tried} examples read were unusable files")

  def _fail(self, what: str):
    self.close()
    raise DataQualityError(
        f"{what} (skipped by kind: {self.skipped_by_kind()}), more than "
        f"data.max_skip_fraction={self._options.max_skip_fraction}. Fix or remove the bad "
        "files (each was logged with its path), or raise data.max_skip_fraction."
    )
