"""The trainer end to end on a tiny TAE: outputs, exact resume, mesh invariance."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import tae as tae_config
from mgjax import train as train_lib
from mgjax.data.pipeline import DataQualityError
from mgjax.data.video import probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_steps, **mesh):
  config = tae_config.get_config("tiny")
  config.model.update(base_channels=8, channel_multipliers=(1, 2, 2, 2), num_groups=4)
  config.data.shapes.update(num_videos=24, num_frames=16, height=32, width=32,
                            num_images=0)
  config.data.update(num_frames=8, height=16, width=16)
  config.eval.update(num_clips=2, num_frames=16, batch_size=2, num_videos_to_write=1)
  config.train.update(num_steps=num_steps, batch_size=8, log_every=1,
                      checkpoint_every=3)
  config.optimizer.warmup_steps = 2
  if mesh:
    config.mesh.update(mesh)
  return config


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["loss"] for row in rows if "loss" in row}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  eval_metrics = train_lib.train(tiny_config(6), workdir)
  return workdir, eval_metrics


def test_run_writes_metrics_checkpoints_and_videos(straight_run):
  workdir, eval_metrics = straight_run
  steps = losses(workdir)
  assert sorted(steps) == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(v) for v in steps.values())
  assert steps[6] < steps[1]  # it learns
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert 5 < eval_metrics["psnr"] < 60 and 0 < eval_metrics["ssim"] <= 1
  video = os.path.join(workdir, "eval", "step_6", "reconstruction_00.mp4")
  info = probe(video)
  assert (info.num_frames, info.height, info.width) == (16, 32, 64)  # input | output


def test_resume_is_bitwise_identical(straight_run, tmp_path):
  straight, _ = straight_run
  workdir = str(tmp_path)
  train_lib.train(tiny_config(3), workdir)       # stops after step 3, checkpointed
  train_lib.train(tiny_config(6), workdir)       # a new process would do the same
  assert losses(workdir) == losses(straight)


def test_loss_does_not_depend_on_the_mesh(straight_run, tmp_path):
  straight, _ = straight_run
  train_lib.train(tiny_config(2, data=2, fsdp=4), str(tmp_path))
  sharded = losses(str(tmp_path))
  for step in (1, 2):
    np.testing.assert_allclose(sharded[step], losses(straight)[step], rtol=2e-5)


def test_two_processes_train_like_one(straight_run, tmp_path):
  """2 processes x 4 CPU devices, started by the local launcher, form one 8-device
  mesh: every loss and the final evaluation equal the 1 x 8 run's."""
  straight, eval_metrics = straight_run
  workdir = str(tmp_path / "2x4")
  command = [sys.executable, "-m", "mgjax.launch.local", "--num_processes=2",
             "--devices_per_process=4", "--", sys.executable, "-m", "mgjax.train",
             "--config=tests/configs/tae_tiny.py:6", f"--workdir={workdir}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-4000:]
  assert "Process 1 of 2; 4 local and 8 global devices" in result.stdout
  two_processes = losses(workdir)
  assert sorted(two_processes) == [1, 2, 3, 4, 5, 6]
  for step, loss in losses(straight).items():
    np.testing.assert_allclose(two_processes[step], loss, rtol=1e-5)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    final = [json.loads(line) for line in f if "eval/psnr" in line][-1]
  np.testing.assert_allclose(final["eval/psnr"], eval_metrics["psnr"], rtol=1e-4)


def test_non_finite_loss_stops_with_the_step(tmp_path):
  config = tiny_config(4)
  config.optimizer.update(learning_rate=1e30, warmup_steps=1, grad_clip_norm=0.0)
  with pytest.raises(FloatingPointError, match=r"at step \d+\. Last complete checkpoint"):
    train_lib.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "4")


def salted_manifest(straight_workdir, out_dir):
  """The straight run's shapes videos plus one bad file or line of every kind."""
  shapes_dir = os.path.join(straight_workdir, "shapes")
  with open(os.path.join(shapes_dir, "manifest.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  for record in lines:
    record["video"] = os.path.join(shapes_dir, record["video"])
  good = open(lines[0]["video"], "rb").read()
  bad_bytes = {"empty": b"", "undecodable": os.urandom(3000), "truncated": good[:len(good) // 3]}
  for kind, data in bad_bytes.items():
    with open(os.path.join(out_dir, f"{kind}.mp4"), "wb") as f:
      f.write(data)
  lines += [{"video": f"{kind}.mp4", "caption": kind} for kind in (*bad_bytes, "missing")]
  rows = [json.dumps(line) for line in lines]
  rows += ['{"video": 3, "caption": "wrong type"}', '{"video": "x.mp4", "caption": ""}',
           "not json"]
  with open(os.path.join(out_dir, "manifest.jsonl"), "w") as f:
    f.write("\n".join(rows) + "\n")


def test_bad_input_is_counted_in_the_metrics_and_too_much_stops_the_run(straight_run,
                                                                          tmp_path):
  straight, _ = straight_run
  salted_manifest(straight, str(tmp_path))
  config = tiny_config(4)
  config.data.update(name="manifest", dir=str(tmp_path), max_skip_fraction=0.4)
  train_lib.train(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if '"loss"' in line][-1]
  assert last["step"] == 4
  assert last["data/skipped_bad_field"] == 1 and last["data/skipped_empty_caption"] == 1
  assert last["data/skipped_bad_json"] == 1
  for kind in ("empty", "undecodable", "truncated", "missing"):  # read in the 2 epochs
    assert last[f"data/skipped_{kind}"] == 1, kind
  assert 0 < last["data/skipped_fraction"] < 0.4
  config.data.max_skip_fraction = 0.05
  with pytest.raises(DataQualityError, match="data.max_skip_fraction=0.05"):
    train_lib.train(config, str(tmp_path / "strict"))
