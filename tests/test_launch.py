"""Launch recipes: each prints the exact commands with --dry_run, and the SLURM
set-up gives every process the right GPUs."""

import subprocess
import sys

import pytest

from mgjax.parallel import distributed
from tests.test_train import ROOT

TRAIN_ARGS = [
    "--config=experiments/t2v.py:30b",
    "--workdir=/ckpt/t2v 30b",
    "--config.mesh.tensor=8",
]


def dry_run(module, *flags):
  result = subprocess.run(
      [sys.executable, "-m", module, *flags, "--dry_run", "--", *TRAIN_ARGS],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_slurm_batch_script_per_gpu():
  out = dry_run(
      "mgjax.launch.slurm",
      "--nodes=64",
      "--process_per=gpu",
      "--partition=h100",
      "--time=48:00:00",
      "--grace=120",
  )
  lines = out.splitlines()
  assert lines[0] == "# /ckpt/t2v 30b/slurm/mgjax.sbatch" and lines[1] == "#!/bin/bash"
  for line in (
      "#SBATCH --nodes=64",
      "#SBATCH --ntasks-per-node=8",
      "#SBATCH --gpus-per-node=8",
      "#SBATCH --time=48:00:00",
      "#SBATCH --signal=TERM@120",
      "#SBATCH --requeue",
      "#SBATCH --partition=h100",
      "srun --kill-on-bad-exit=1 python -m mgjax.train "
      "--config=experiments/t2v.py:30b '--workdir=/ckpt/t2v 30b' "
      "--config.mesh.tensor=8",
      "sbatch '/ckpt/t2v 30b/slurm/mgjax.sbatch'",
  ):
    assert line in lines, line
  assert "--account" not in out


def test_slurm_per_node_runs_one_task_per_node():
  out = dry_run("mgjax.launch.slurm", "--nodes=2", "--gpus_per_node=4")
  assert "#SBATCH --ntasks-per-node=1" in out and "#SBATCH --gpus-per-node=4" in out


def test_tpu_pod_command():
  out = dry_run(
      "mgjax.launch.tpu_pod",
      "--tpu=pod-256",
      "--zone=us-east5-a",
      "--project=p",
      "--setup=cd ~/mgjax && pip install -e .",
  )
  assert out.strip() == (
      "gcloud compute tpus tpu-vm ssh pod-256 --zone=us-east5-a --project=p "
      "--worker=all '--command=cd ~/mgjax && pip install -e . && python3 -m mgjax.train "
      "--config=experiments/t2v.py:30b '\"'\"'--workdir=/ckpt/t2v 30b'\"'\"' "
      "--config.mesh.tensor=8'"
  )


def test_local_processes():
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "mgjax.launch.local",
          "--num_processes=3",
          "--devices_per_process=2",
          "--dry_run",
          "--",
          "python",
          "-m",
          "mgjax.train",
          *TRAIN_ARGS,
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  lines = result.stdout.splitlines()
  assert len(lines) == 4 and lines[-1] == "wait"
  port = lines[0].split()[0].split(":")[-1]
  for index, line in enumerate(lines[:3]):
    assert line.startswith(
        f"MGJAX_COORDINATOR_ADDRESS=127.0.0.1:{port} "
        f"MGJAX_NUM_PROCESSES=3 MGJAX_PROCESS_ID={index} "
        "JAX_PLATFORMS=cpu "
    )
    assert "--xla_force_host_platform_device_count=2" in line
    assert line.endswith(
        "python -m mgjax.train --config=experiments/t2v.py:30b "
        "'--workdir=/ckpt/t2v 30b' --config.mesh.tensor=8 &"
    )


def test_launchers_need_the_trainer_arguments():
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "mgjax.launch.tpu_pod",
          "--tpu=x",
          "--zone=z",
          "--dry_run",
          "--",
          "--workdir=w",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode != 0 and "--config=... and --workdir=..." in result.stderr


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            dict(SLURM_JOB_ID="7", SLURM_STEP_TASKS_PER_NODE="1(x64)", SLURM_GPUS_ON_NODE="8"),
            list(range(8)),
        ),
        (
            dict(SLURM_JOB_ID="7", SLURM_STEP_TASKS_PER_NODE="8(x64)", SLURM_GPUS_ON_NODE="8"),
            None,
        ),  # a task per GPU: jax gives each its SLURM_LOCALID
        (dict(SLURM_JOB_ID="7", SLURM_TASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="1"), None),
        ({}, None),
    ],
)
def test_slurm_node_gpus(monkeypatch, env, expected):
  for name in (
      "SLURM_JOB_ID",
      "SLURM_STEP_TASKS_PER_NODE",
      "SLURM_TASKS_PER_NODE",
      "SLURM_GPUS_ON_NODE",
  ):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed.slurm_node_gpus() == expected
