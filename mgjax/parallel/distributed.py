"""Multi-process start-up and the few places processes must take turns.

One mgjax process runs per host (a TPU VM, a GPU node) or per GPU; together they
see every device as one `jax.devices()` and build one global mesh. `initialize`
connects them before any computation, from (first that applies):

1. explicit settings: the trainer's --coordinator_address / --num_processes /
   --process_id flags;
2. the environment variables MGJAX_COORDINATOR_ADDRESS, MGJAX_NUM_PROCESSES and
   MGJAX_PROCESS_ID (what `python -m mgjax.launch.local` sets);
3. a detected cluster: SLURM with several tasks, a multi-host TPU slice, or Open MPI,
   whose variables `jax.distributed.initialize()` reads itself.

Otherwise the run is single-process and nothing is called.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax
from absl import logging
from jax.experimental import multihost_utils

T = TypeVar("T")

ENV_COORDINATOR = "MGJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "MGJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MGJAX_PROCESS_ID"


def _cluster_detected() -> bool:
  env = os.environ
  slurm = "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in env
  mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  return slurm or tpu_pod or mpi


def slurm_node_gpus() -> list[int] | None:
  """All of the node's GPUs when SLURM runs one task per node, else None.

  On SLURM, `jax.distributed.initialize()` gives each process the one GPU whose
  index is its SLURM_LOCALID: right for one process per GPU, but a single process
  per node would then drive only GPU 0. (SLURM_STEP_TASKS_PER_NODE reads e.g. "1" or
  "1(x64)"; SLURM_GPUS_ON_NODE is the node's allocated GPU count.)"""
  env = os.environ
  tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
  gpus = int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
  if "SLURM_JOB_ID" in env and tasks_per_node.split("(")[0] == "1" and gpus > 1:
    return list(range(gpus))
  return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Joins this process to a multi-process run; returns whether it is one."""
  env = os.environ
  address = coordinator_address or env.get(ENV_COORDINATOR, "")
  if address:
    num_processes = num_processes or int(env.get(ENV_NUM_PROCESSES, "0"))
    process_id = process_id if process_id >= 0 else int(env.get(ENV_PROCESS_ID, "-1"))
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          f"A multi-process run at coordinator {address!r} needs num_processes >= 1 and "
          f"0 <= process_id < num_processes; got {num_processes} and {process_id}. Set "
          f"--num_processes/--process_id or {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}."
      )
    jax.distributed.initialize(address, num_processes, process_id)
  elif _cluster_detected():
    jax.distributed.initialize(local_device_ids=slurm_node_gpus())
  else:
    return False
  logging.info(
      "Process %d of %d; %d local and %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return True


def first_process_first(name: str, fn: Callable[[], T]) -> T:
  """Runs `fn` on process 0, waits for it everywhere, then runs it on the others.

  For idempotent steps that write shared files (making a data set, caching
  latents): process 0 writes them while the others wait, then the others find them
  done and only read.
  """
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(f"mgjax:{name}")
  return result if jax.process_index() == 0 else fn()
