"""Runs training on every host of a Cloud TPU pod slice, or prints how (--dry_run).

    python -m mgjax.launch.tpu_pod --tpu=my-v5p-256 --zone=us-east5-a \
        --setup="cd ~/mgjax && pip install -e ." --dry_run -- \
        --config=experiments/t2v.py:30b --workdir=gs://bucket/t2v_30b

Everything after `--` goes to `python -m mgjax.train`. One `gcloud compute tpus tpu-vm
ssh --worker=all` runs the same command on every host at once; each host's process
calls `jax.distributed.initialize()`, which finds the slice's other hosts itself
(mgjax/parallel/distributed.py), and maintenance events reach the trainer through
JAX's preemption sync point (it checkpoints and stops). The workdir must be shared
by all hosts (a gs:// bucket).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

_TPU = flags.DEFINE_string("tpu", None, "TPU VM (slice) name.")
_ZONE = flags.DEFINE_string("zone", None, "Its zone.")
_PROJECT = flags.DEFINE_string("project", "", "Cloud project (default: gcloud's).")
_SETUP = flags.DEFINE_string(
    "setup", "", "Shell command run on every host first, e.g. " "`cd ~/mgjax && pip install -e .`."
)
_PYTHON = flags.DEFINE_string("python", "python3", "Python on the hosts.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the command; run nothing.")


def ssh_command(
    train_args: list[str],
    *,
    tpu: str,
    zone: str,
    project: str = "",
    setup: str = "",
    python: str = "python3",
) -> list[str]:
  """The gcloud command that starts `python -m mgjax.train <train_args>` on all hosts."""
  remote = shlex.join([python, "-m", "mgjax.train", *train_args])
  if setup:
    remote = f"{setup} && {remote}"
  command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}"]
  if project:
    command.append(f"--project={project}")
  return command + ["--worker=all", f"--command={remote}"]


def main(argv):
  train_args = argv[1:]
  if not _TPU.value or not _ZONE.value:
    raise app.UsageError("--tpu and --zone are required.")
  if not any(a.startswith("--config=") for a in train_args) or not any(
      a.startswith("--workdir=") for a in train_args
  ):
    raise app.UsageError("Pass the trainer's --config=... and --workdir=... after --.")
  command = ssh_command(
      train_args,
      tpu=_TPU.value,
      zone=_ZONE.value,
      project=_PROJECT.value,
      setup=_SETUP.value,
      python=_PYTHON.value,
  )
  if _DRY_RUN.value:
    print(shlex.join(command))
    return
  sys.exit(subprocess.call(command))


if __name__ == "__main__":
  app.run(main)
