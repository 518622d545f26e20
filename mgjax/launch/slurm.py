"""Submits a multi-node GPU training job to SLURM, or prints it (--dry_run).

    python -m mgjax.launch.slurm --nodes=64 --gpus_per_node=8 --time=48:00:00 \
        --partition=h100 --dry_run -- \
        --config=experiments/t2v.py:30b --workdir=/ckpt/t2v_30b --config.mesh.tensor=8

Everything after `--` goes to `python -m mgjax.train`. The batch script runs one
process per node (--process_per=node: it drives all the node's GPUs) or one per GPU
(--process_per=gpu: each drives GPU number SLURM_LOCALID). Either way, every process
calls `jax.distributed.initialize()`, which reads the SLURM variables (coordinator =
first node, process id = task rank), so the processes form one global mesh
(mgjax/parallel/distributed.py). SLURM sends
SIGTERM --grace seconds before the time limit or a preemption; the trainer then
checkpoints and stops, and the requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from absl import app, flags

_NODES = flags.DEFINE_integer("nodes", 1, "Nodes.")
_GPUS = flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node.")
_PER = flags.DEFINE_enum(
    "process_per", "node", ["node", "gpu"], "One training process per node or per GPU."
)
_TIME = flags.DEFINE_string("time", "24:00:00", "Time limit (HH:MM:SS).")
_NAME = flags.DEFINE_string("job_name", "mgjax", "Job name.")
_PARTITION = flags.DEFINE_string("partition", "", "Partition (optional).")
_ACCOUNT = flags.DEFINE_string("account", "", "Account (optional).")
_CPUS = flags.DEFINE_integer("cpus_per_process", 0, "CPUs per process (0: SLURM's default).")
_GRACE = flags.DEFINE_integer("grace", 300, "Seconds between SIGTERM and the kill.")
_PYTHON = flags.DEFINE_string("python", "python", "Python on the nodes.")
_SCRIPT = flags.DEFINE_string(
    "script", "", "Where to write the batch script (default: " "<workdir>/slurm/<job_name>.sbatch)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the script and command; submit nothing.")


def batch_script(
    train_args: list[str],
    *,
    nodes: int,
    gpus_per_node: int,
    process_per: str,
    time: str,
    job_name: str,
    partition: str = "",
    account: str = "",
    cpus_per_process: int = 0,
    grace: int = 300,
    python: str = "python",
    log_dir: str = ".",
) -> str:
  """The sbatch script that runs `python -m mgjax.train <train_args>` on every task."""
  tasks_per_node = gpus_per_node if process_per == "gpu" else 1
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={job_name}",
      f"#SBATCH --nodes={nodes}",
      f"#SBATCH --ntasks-per-node={tasks_per_node}",
      f"#SBATCH --gpus-per-node={gpus_per_node}",
      f"#SBATCH --time={time}",
      f"#SBATCH --signal=TERM@{grace}",  # to every task: checkpoint, then stop
      "#SBATCH --requeue",
      f"#SBATCH --output={os.path.join(log_dir, '%x-%j.out')}",
  ]
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  if account:
    lines.append(f"#SBATCH --account={account}")
  if cpus_per_process:
    lines.append(f"#SBATCH --cpus-per-task={cpus_per_process}")
  lines += [
      "set -euo pipefail",
      "# Each task sees all of its node's GPUs; mgjax.parallel.distributed hands a",
      "# task per GPU its own (SLURM_LOCALID) and a task per node all of them.",
      shlex.join(["srun", "--kill-on-bad-exit=1", python, "-m", "mgjax.train", *train_args]),
  ]
  return "\n".join(lines) + "\n"


def _workdir(train_args: list[str]) -> str:
  for arg in train_args:
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
  raise app.UsageError("Pass the trainer's --workdir=... after --.")


def main(argv):
  train_args = argv[1:]
  if not any(arg.startswith("--config=") for arg in train_args):
    raise app.UsageError("Pass the trainer's --config=... and --workdir=... after --.")
  workdir = _workdir(train_args)
  script_path = _SCRIPT.value or os.path.join(workdir, "slurm", f"{_NAME.value}.sbatch")
  script = batch_script(
      train_args,
      nodes=_NODES.value,
      gpus_per_node=_GPUS.value,
      process_per=_PER.value,
      time=_TIME.value,
      job_name=_NAME.value,
      partition=_PARTITION.value,
      account=_ACCOUNT.value,
      cpus_per_process=_CPUS.value,
      grace=_GRACE.value,
      python=_PYTHON.value,
      log_dir=os.path.dirname(script_path),
  )
  command = ["sbatch", script_path]
  if _DRY_RUN.value:
    print(f"# {script_path}\n{script}\n{shlex.join(command)}")
    return
  os.makedirs(os.path.dirname(script_path), exist_ok=True)
  with open(script_path, "w") as f:
    f.write(script)
  sys.exit(subprocess.call(command))


if __name__ == "__main__":
  app.run(main)
