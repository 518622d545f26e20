"""The trainer end to end: outputs and bad input on a tiny TAE; exact resume after a
kill or a preemption, mesh and process invariance and non-finite losses on the toy
flow family (tests/toy_task.py), whose step compiles in a second."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tae as tae_config
from mgjax import checkpoint as checkpoint_lib
from mgjax import configs
from mgjax import train as train_lib
from mgjax.data.pipeline import DataQualityError
from mgjax.data.video import probe
from mgjax.preemption import PreemptionWatch, StopRequested
from mgjax.tasks.base import Stage
from tests.devices import on_one_device
from tests.toy_task import ToyFlowTask, toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_steps, images=False, levels=2, evaluate=True, **mesh):
  """The tiny TAE run; `images` adds single-frame batches (a second compiled step).
  `levels`: 2 (default) is a 2x TAE whose train step compiles in half the time of the
  8x one (levels=4; 13 s against 28 s here): the trainer's tests need a model, not
  that one; the text-to-video tests train on the 8x TAE's latents."""
  config = tae_config.get_config("tiny")
  multipliers = (1, 2, 2, 2)[:levels]
  config.model.update(
      base_channels=8,
      channel_multipliers=multipliers,
      temporal_downsample=(True,) * (levels - 1),
      num_groups=4,
  )
  config.data.shapes.update(num_videos=24, num_frames=16, height=32, width=32, num_images=0)
  config.data.update(
      num_frames=8,
      height=16,
      width=16,
      image_fraction=config.data.image_fraction if images else 0.0,
  )
  config.eval.update(num_clips=2, num_frames=16, batch_size=2, num_videos_to_write=1)
  config.train.update(num_steps=num_steps, batch_size=8, log_every=1, checkpoint_every=3)
  config.optimizer.warmup_steps = 2
  if not evaluate:  # for tests that check no evaluation: none runs, not even at the end
    config.train.eval_every = -1
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


def toy(num_steps, **mesh):
  """The toy family's run for the trainer's tests: every step logged, checkpoints at
  3 and 6."""
  config = toy_config(num_steps, **mesh)
  config.train.update(log_every=1, checkpoint_every=3)
  return config


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy"))
  eval_metrics = train_lib.train(toy(6), workdir)
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


def test_loss_does_not_depend_on_the_mesh(toy_run, tmp_path):
  straight, _ = toy_run
  train_lib.train(toy(2, data=2, fsdp=4), str(tmp_path))
  sharded = losses(str(tmp_path))
  for step in (1, 2):
    np.testing.assert_allclose(sharded[step], losses(straight)[step], rtol=2e-5)


def test_two_processes_train_like_one(toy_run, tmp_path):
  """2 processes x 4 CPU devices, started by the local launcher, form one 8-device
  mesh: every loss and the final evaluation equal the 1 x 8 run's."""
  straight, eval_metrics = toy_run
  workdir = str(tmp_path / "2x4")
  command = [
      sys.executable,
      "-m",
      "mgjax.launch.local",
      "--num_processes=2",
      "--devices_per_process=4",
      "--",
      sys.executable,
      "-m",
      "mgjax.train",
      "--config=tests/configs/toy.py:6",
      "--config.train.log_every=1",
      "--config.train.checkpoint_every=3",
      f"--workdir={workdir}",
  ]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-4000:]
  assert "Process 1 of 2; 4 local and 8 global devices" in result.stdout
  two_processes = losses(workdir)
  assert sorted(two_processes) == [1, 2, 3, 4, 5, 6]
  for step, loss in losses(straight).items():
    np.testing.assert_allclose(two_processes[step], loss, rtol=1e-5)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    final = [json.loads(line) for line in f if "eval/red_minus_blue" in line][-1]
  np.testing.assert_allclose(final["eval/red_minus_blue"], eval_metrics["red_minus_blue"], atol=0.1)


def test_non_finite_update_stops_the_run_or_is_skipped(tmp_path, monkeypatch):
  """A NaN loss at the second update stops the run there, naming the step and the last
  checkpoint; with optimizer.skip_non_finite the run goes on, and that update leaves
  params and EMA untouched."""
  loss = ToyFlowTask.loss

  def nan_at_second_update(self, params, frozen, batch, rng, step):
    value, metrics = loss(self, params, frozen, batch, rng, step)
    return value * jnp.where(step == 1, jnp.nan, 1.0), metrics  # NaN gradients too

  monkeypatch.setattr(ToyFlowTask, "loss", nan_at_second_update)

  config = toy(4)
  config.train.eval_every = -1
  config.train.update(checkpoint_every=1, keep_checkpoints=4, ema_decay=0.5)
  with pytest.raises(
      FloatingPointError, match="at step 2. Last complete checkpoint: 1.*" "skip_non_finite=N"
  ):
    train_lib.train(config, str(tmp_path / "stop"))
  assert os.listdir(tmp_path / "stop" / "checkpoints") == ["1"]  # nothing non-finite saved

  config.optimizer.skip_non_finite = 1
  train_lib.train(config, str(tmp_path / "skip"))
  with open(tmp_path / "skip" / "metrics.jsonl") as f:
    rows = {row["step"]: row for row in map(json.loads, f) if "loss" in row}
  assert np.isnan(rows[2]["loss"]) and np.isfinite(rows[3]["loss"])
  assert rows[4]["skipped_updates"] == 1 and rows[4]["non_finite_in_a_row"] == 0
  states = {
      step: train_lib.restore_train_state(str(tmp_path / "skip"), step)[2] for step in (1, 2, 3)
  }
  for name in ("params", "ema_params"):
    after = [jax.tree.leaves(getattr(states[step], name)) for step in (1, 2, 3)]
    for one, two, _ in zip(*after):
      np.testing.assert_array_equal(two, one)  # the skipped update changed nothing
    assert any(not np.array_equal(two, three) for two, three in zip(after[1], after[2]))


# Blocks the commit (the rename of the temporary directory) of step 6's checkpoint and
# says so, so that the test can kill the process while that save is in flight.
_STALL_SAVE_OF_STEP_6 = """
import asyncio, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def stalled(self):
  if self.get_final().name == "6":
    print("COMMITTING STEP 6", flush=True)
    await asyncio.sleep(600)
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = stalled
from mgjax import train
from tests.test_train import toy
train.train(toy(6), sys.argv[1])
"""


def _run_until(command, marker: str, timeout: float = 600):
  """Starts `command` and returns (process, output so far) once a line has `marker`."""
  process = subprocess.Popen(
      command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  output, start = [], time.time()
  for line in process.stdout:
    output.append(line)
    if marker in line or time.time() - start > timeout:
      break
  assert marker in "".join(output), "".join(output)[-3000:]
  return process, output


def test_kill_during_async_save_resumes_from_last_complete_step(toy_run, tmp_path):
  straight, _ = toy_run
  workdir = str(tmp_path / "run")
  process, _ = _run_until(
      [sys.executable, "-c", _STALL_SAVE_OF_STEP_6, workdir], "COMMITTING STEP 6"
  )
  process.kill()  # SIGKILL, with step 6's checkpoint written but not committed
  process.wait(timeout=60)
  entries = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "3" in entries and "6" not in entries
  assert any(e.startswith("6.") and "tmp" in e for e in entries), entries  # half-written
  assert checkpoint_lib.Checkpointer(workdir, read_only=True).latest_step() == 3
  train_lib.train(toy(6), workdir)  # the restart: resumes after step 3
  assert losses(workdir) == losses(straight)  # steps 4-6 bitwise as in one straight run


def test_sigterm_is_caught_and_the_handler_restored():
  before = signal.getsignal(signal.SIGTERM)
  watch = PreemptionWatch()
  assert not watch.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)  # the real signal, to this process
  deadline = time.time() + 10
  while not watch.reached(2) and time.time() < deadline:
    time.sleep(0.01)
  assert watch.reached(2)
  watch.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_preempted_run_checkpoints_stops_and_resumes_exactly(toy_run, tmp_path, monkeypatch):
  """Stopped (as on SIGTERM) after step 2, which is no checkpoint step: the trainer
  saves step 2 and returns; the restart continues bitwise as the straight run."""
  straight, _ = toy_run
  workdir = str(tmp_path / "run")
  monkeypatch.setattr(train_lib.PreemptionWatch, "reached", lambda self, step: step == 2)
  train_lib.train(toy(6), workdir)
  assert checkpoint_lib.Checkpointer(workdir, read_only=True).all_steps() == [2]
  assert sorted(losses(workdir)) == [1, 2]
  monkeypatch.undo()
  train_lib.train(toy(6), workdir)
  assert losses(workdir) == losses(straight)


def test_preempted_first_stage_stops_the_whole_run(tmp_path, monkeypatch):
  """SIGTERM during the demo's TAE stage stops the run there (StopRequested, which
  the command reports and exits 0 on) instead of going on to train the DiT on the
  unfinished TAE's latents."""
  monkeypatch.setattr(train_lib.PreemptionWatch, "reached", lambda self, step: step == 2)
  tae_config = configs.load_config(os.path.join(ROOT, "tests", "configs", "tae_tiny.py") + ":6")
  with tae_config.unlocked():
    tae_config.data.dir = str(tmp_path / "shapes")
  tae_workdir = str(tmp_path / "tae")
  with pytest.raises(StopRequested, match="stopped at step 2 of 6"):
    train_lib.run_stages([Stage("TAE", tae_workdir, tae_config)])
  assert checkpoint_lib.Checkpointer(tae_workdir, read_only=True).all_steps() == [2]


def salted_manifest(straight_workdir, out_dir):
  """The straight run's shapes videos plus one bad file or line of every kind."""
  shapes_dir = os.path.join(straight_workdir, "shapes")
  with open(os.path.join(shapes_dir, "manifest.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  for record in lines:
    record["video"] = os.path.join(shapes_dir, record["video"])
  good = open(lines[0]["video"], "rb").read()
  bad_bytes = {"empty": b"", "undecodable": os.urandom(3000), "truncated": good[: len(good) // 3]}
  for kind, data in bad_bytes.items():
    with open(os.path.join(out_dir, f"{kind}.mp4"), "wb") as f:
      f.write(data)
  lines += [{"video": f"{kind}.mp4", "caption": kind} for kind in (*bad_bytes, "missing")]
  rows = [json.dumps(line) for line in lines]
  rows += ['{"video": 3, "caption": "wrong type"}', '{"video": "x.mp4", "caption": ""}', "not json"]
  with open(os.path.join(out_dir, "manifest.jsonl"), "w") as f:
    f.write("\n".join(rows) + "\n")


@on_one_device()  # what the data pipeline counts, not how the model is sharded
def test_bad_input_is_counted_in_the_metrics_and_too_much_stops_the_run(straight_run, tmp_path):
  straight, _ = straight_run
  salted_manifest(straight, str(tmp_path))
  config = tiny_config(
      4, images=True, evaluate=False
  )  # frames of the manifest's videos as images too
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
