"""Runs a multi-process job on this machine, e.g. to try multi-host code on a laptop.

    python -m mgjax.launch.local --num_processes=2 --devices_per_process=4 -- \
        python -m mgjax.train --config=experiments/tae.py:tiny --workdir=/tmp/tae2x4

Starts the command N times with MGJAX_COORDINATOR_ADDRESS / MGJAX_NUM_PROCESSES /
MGJAX_PROCESS_ID set (read by mgjax.parallel.distributed.initialize), each process
on CPU with `devices_per_process` host devices and gloo collectives, so the N
processes form one global mesh of N x devices_per_process devices exactly as hosts
of a cluster do. Output lines are prefixed with the process index. If one process
fails the others are stopped; the exit code is the first non-zero one.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading

from absl import app, flags

from mgjax.parallel import distributed

NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes to start.")
DEVICES_PER_PROCESS = flags.DEFINE_integer(
    "devices_per_process", 4, "CPU devices each process sees."
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print each process's environment and " "command; start nothing."
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, num_processes: int, devices: int, port: int) -> dict[str, str]:
  """The environment of process `index`: coordinator, identity and its CPU devices."""
  env = dict(os.environ)
  xla_flags = " ".join(
      flag
      for flag in env.get("XLA_FLAGS", "").split()
      if not flag.startswith("--xla_force_host_platform_device_count")
  )
  env.update(
      {
          distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
          distributed.ENV_NUM_PROCESSES: str(num_processes),
          distributed.ENV_PROCESS_ID: str(index),
          "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip(),
      }
  )
  return env


def _relay(index: int, stream, out):
  for line in stream:
    out.write(f"[{index}] {line}")
    out.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int) -> int:
  """Runs `command` as `num_processes` cooperating processes; returns the exit code."""
  if not command:
    raise app.UsageError("Give the command after --, e.g. -- python -m mgjax.train ...")
  if num_processes < 1 or devices_per_process < 1:
    raise app.UsageError("--num_processes and --devices_per_process must be >= 1.")
  port = free_port()
  processes, relays = [], []
  for index in range(num_processes):
    proc = subprocess.Popen(
        command,
        env=process_env(index, num_processes, devices_per_process, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    relay = threading.Thread(target=_relay, args=(index, proc.stdout, sys.stdout), daemon=True)
    relay.start()
    processes.append(proc)
    relays.append(relay)
  exit_code = 0
  while any(p.poll() is None for p in processes):
    failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
    if failed:
      exit_code = failed[0]
      for p in processes:
        if p.poll() is None:
          p.terminate()
    try:
      next(p for p in processes if p.poll() is None).wait(timeout=1)
    except (StopIteration, subprocess.TimeoutExpired):
      pass
  for relay in relays:
    relay.join()
  return exit_code or next((p.returncode for p in processes if p.returncode), 0)


def dry_run(command: list[str], num_processes: int, devices_per_process: int) -> str:
  """The shell lines `launch` would run, one per process (the variables it sets)."""
  port = free_port()
  lines = []
  for index in range(num_processes):
    env = process_env(index, num_processes, devices_per_process, port)
    names = (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
        "JAX_PLATFORMS",
        "XLA_FLAGS",
    )
    lines.append(
        " ".join(f"{name}={shlex.quote(env[name])}" for name in names)
        + " "
        + shlex.join(command)
        + " &"
    )
  return "\n".join(lines + ["wait"])


def main(argv):
  if DRY_RUN.value:
    print(dry_run(argv[1:], NUM_PROCESSES.value, DEVICES_PER_PROCESS.value))
    return
  sys.exit(launch(argv[1:], NUM_PROCESSES.value, DEVICES_PER_PROCESS.value))


if __name__ == "__main__":
  app.run(main)
