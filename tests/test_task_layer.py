"""A new model family is a small file on the latent flow base: the toy one of
tests/toy_task.py (4x4 colour images, conditioned on a colour word) trains through the one trainer,
resumes, samples through `mgjax.sample` and opens in `mgjax.inspect`, with no edit
to any tool; `train.init_from` starts a run from another run's weights."""

import os

import jax
import numpy as np
import pytest

from mgjax import inspect as inspect_lib
from mgjax import runs
from mgjax import sample as sample_lib
from mgjax import train as train_lib
from mgjax.tasks.codecs import ChannelStats
from mgjax.tasks.outputs import SampleRequest
from tests.toy_task import ToyFlowTask, toy_config


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """300 steps, stopped at 150 by a config with fewer steps and resumed."""
  workdir = str(tmp_path_factory.mktemp("toy") / "run")
  train_lib.train(toy_config(150), workdir)
  metrics = train_lib.train(toy_config(300), workdir)  # resumes at 150
  return workdir, metrics


def test_toy_family_trains_resumes_and_follows_its_prompt(toy_run):
  workdir, metrics = toy_run
  assert runs.latest_step(workdir) == 300
  assert metrics["red_minus_blue"] > 100  # a red image: R ~220, B ~30
  history = runs.config_history(workdir)  # one config per start, the latest on top
  assert [os.path.basename(p) for p in history] == ["000_step_0.json", "001_step_150.json"]
  assert runs.read_config(workdir).train.num_steps == 300


def test_toy_family_samples_and_inspects_with_the_tools(toy_run, tmp_path):
  workdir, _ = toy_run
  paths = sample_lib.sample(workdir, SampleRequest(["blue", "red"], num_steps=8), str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["blue.png", "red.png"]
  assert (tmp_path / "contact_sheet.png").exists()
  run = inspect_lib.open_run(workdir)
  blue = run.sample_video("blue", num_steps=8)  # [1, 4, 4, 3]
  assert blue.shape == (1, 4, 4, 3) and blue[..., 2].mean() > blue[..., 0].mean() + 100, blue
  assert run.param_table().total > 0


def test_init_from_copies_shared_weights_keeps_new_ones_and_refuses_other_shapes(toy_run, tmp_path):
  workdir, _ = toy_run
  source = runs.restore_params(workdir)["net"]
  config = toy_config(1)
  config.optimizer.learning_rate = 0.0  # the one step changes nothing
  config.train.init_from.update(workdir=workdir, subtrees="net/Dense_0")
  train_lib.train(config, str(tmp_path / "tuned"))
  tuned = runs.restore_params(str(tmp_path / "tuned"))["net"]
  for a, b in zip(jax.tree.leaves(source["Dense_0"]), jax.tree.leaves(tuned["Dense_0"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # copied
  assert np.abs(np.asarray(source["Dense_1"]["kernel"])).max() > 0
  np.testing.assert_array_equal(np.asarray(tuned["Dense_1"]["kernel"]), 0.0)  # its own init
  config.train.init_from.subtrees = "net/Dense_1:net/Dense_0"  # [65, 64] into [64, 48]
  with pytest.raises(ValueError, match=r"parameter /net/Dense_1/(bias|kernel) has shape"):
    train_lib.train(config, str(tmp_path / "bad"))
  config.train.init_from.subtrees = "net:missing"
  with pytest.raises(ValueError, match="has no params subtree 'missing'"):
    train_lib.train(config, str(tmp_path / "bad2"))


def test_latent_statistics_of_another_codec_are_made_again(tmp_path):
  stale = ChannelStats(np.full(3, 5.0, np.float32), np.ones(3, np.float32), {"codec": "other"})
  stale.save(str(tmp_path / "latents" / "stats.json"))
  stats = ToyFlowTask(toy_config(), str(tmp_path)).stats()
  assert stats.codec == {"codec": "pixels"} and abs(float(stats.mean[0])) < 1  # made again
  assert ChannelStats.load(str(tmp_path / "latents" / "stats.json")).codec == stats.codec
  # Statistics of this codec are read back as they are.
  kept = ChannelStats(np.full(3, 0.25, np.float32), np.ones(3, np.float32), stats.codec)
  kept.save(str(tmp_path / "latents" / "stats.json"))
  assert float(ToyFlowTask(toy_config(), str(tmp_path)).stats().mean[0]) == 0.25
