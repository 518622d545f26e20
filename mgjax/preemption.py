"""Noticing that the run is being stopped (SIGTERM), so the trainer can checkpoint
and exit cleanly instead of losing the steps since its last checkpoint.

Cluster schedulers (SLURM, Kubernetes, TPU maintenance events) send SIGTERM some
seconds before they kill a job. In a multi-process run every process must stop at
the same step, so there the decision comes from JAX's preemption sync point (set up
by `jax.distributed.initialize`, which catches the signal in every process and agrees
on a step); a single process catches SIGTERM itself.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class StopRequested(Exception):
  """A stage of a multi-stage run (e.g. the demo's TAE before its DiT) stopped on
  request before its last step: the rest of the run must not start on its unfinished
  output. `mgjax.train` reports it and exits 0; rerunning the command resumes."""


class PreemptionWatch:
  """`reached(step)` turns True once the job has been asked to stop."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous_handler = None
    self._multi_process = jax.process_count() > 1
    if not self._multi_process:
      if threading.current_thread() is threading.main_thread():
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
      else:
        logging.warning(
            "Training outside the main thread: SIGTERM is not caught, so a "
            "preempted run resumes from its last periodic checkpoint."
        )

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: checkpointing after this step, then exiting.")
    self._requested.set()

  def reached(self, step: int) -> bool:
    if not self._multi_process:
      return self._requested.is_set()
    try:  # every process must call this at every step: it is a collective decision
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
      return False

  def close(self):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
