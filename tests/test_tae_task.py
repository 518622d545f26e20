"""The TAE task: perceptual weights loaded on the host after init (not compiled into
it), and a data set without an "eval" split (held-out training videos, or a warning
and no evaluation instead of a failure after all the training)."""

import json
import logging
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax import optim
from mgjax import train as train_lib
from mgjax.data import examples, shapes
from mgjax.data.records import Records
from mgjax.models.perceptual import PerceptualNetwork
from mgjax.parallel import mesh as mesh_lib
from mgjax.tasks import tae as tae_lib
from mgjax.tasks.perceptual_weights import flatten_params, save_perceptual_params
from mgjax.tasks.tae import TAETask, hold_out
from tests.devices import on_one_device
from tests.test_train import tiny_config

NUM_VIDEOS = 6


# ------------------------------------------------------------------ perceptual
@pytest.fixture(scope="module")
def perceptual_file(tmp_path_factory):
  """An .npz of the default PerceptualNetwork with random (non-init) values."""
  frames = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  shapes_tree = jax.eval_shape(PerceptualNetwork().init, jax.random.key(0), frames, frames)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32),
      flatten_params(shapes_tree["params"]),
  )
  path = str(tmp_path_factory.mktemp("perceptual") / "perceptual.npz")
  save_perceptual_params(path, params)
  return path, params  # params: {"stage_0/conv/kernel": array}


def perceptual_config(path):
  config = tiny_config(2)
  config.loss.update(perceptual_weight=1.0, perceptual_params=path)
  return config


def test_init_is_traced_without_the_weights_file(perceptual_file, monkeypatch, tmp_path):
  path, params = perceptual_file
  task = TAETask(perceptual_config(path), str(tmp_path))
  calls = []
  real_loader = tae_lib.load_perceptual_params
  monkeypatch.setattr(
      tae_lib, "load_perceptual_params", lambda *a, **k: calls.append(a) or real_loader(*a, **k)
  )
  jaxpr = jax.make_jaxpr(task.init)(jax.random.key(0))
  assert not calls  # init read no file ...
  largest_weight = max(value.size for value in params.values())
  consts = [np.size(c) for c in jaxpr.consts]
  assert all(size < largest_weight for size in consts), consts  # ... and holds no weight

  pretrained = task.pretrained_weights()
  assert len(calls) == 1 and set(pretrained) == {"frozen"}
  loaded = flatten_params(pretrained["frozen"]["perceptual"])
  assert set(loaded) == set(params)
  for key, value in params.items():
    assert isinstance(loaded[key], np.ndarray)  # host arrays
    np.testing.assert_array_equal(loaded[key], value)


def test_trainer_state_holds_the_files_perceptual_weights(perceptual_file, tmp_path):
  """The trainer's own path: init under jit, then the pretrained weights on the host."""
  path, params = perceptual_file
  config = perceptual_config(path)
  task = TAETask(config, str(tmp_path))
  optimizer, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  mesh = mesh_lib.mesh_from_config(config)
  init, _, shardings = train_lib.create_state(task, optimizer, config, mesh)
  with jax.set_mesh(mesh):
    state = init()
  fresh = flatten_params(state.frozen["perceptual"])
  assert not np.array_equal(np.asarray(fresh["stage_0/conv/kernel"]), params["stage_0/conv/kernel"])
  state = train_lib.with_pretrained(state, task, shardings)
  frozen = flatten_params(state.frozen["perceptual"])
  for key, value in params.items():
    np.testing.assert_array_equal(np.asarray(frozen[key]), value)


def test_missing_perceptual_file_fails_before_the_model_is_built(tmp_path):
  task = TAETask(perceptual_config(str(tmp_path / "absent.npz")), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="loss.perceptual_params=.*absent.npz"):
    task.prepare()


# ------------------------------------------------------------------ eval split
@pytest.fixture(scope="module")
def train_only_dir(tmp_path_factory):
  """A manifest data set whose records are all "train" (no eval split)."""
  out = tmp_path_factory.mktemp("train_only")
  shapes.ensure_dataset(
      out,
      num_videos=NUM_VIDEOS,
      seed=0,
      num_frames=16,
      height=32,
      width=32,
      num_images=0,
      eval_fraction=0.0,
  )
  with open(out / "manifest.jsonl") as f:
    assert all(json.loads(line)["split"] == "train" for line in f)
  return str(out)


def manifest_config(data_dir, **data):
  config = tiny_config(2)
  config.data.update(name="manifest", dir=data_dir, **data)
  return config


@on_one_device()  # which clips are read, not how the model is sharded
def test_no_eval_split_trains_to_the_end_and_skips_evaluation(train_only_dir, tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  eval_metrics = train_lib.train(manifest_config(train_only_dir), str(tmp_path))
  assert eval_metrics == {}
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(
      "no 'eval' split videos" in m and "data.eval_holdout_fraction" in m for m in warnings
  ), warnings
  with open(tmp_path / "metrics.jsonl") as f:
    assert max(json.loads(line)["step"] for line in f) == 2


@on_one_device()  # which clips are read, not how the model is sharded
def test_holdout_evaluates_on_videos_it_never_trains_on(train_only_dir, tmp_path, monkeypatch):
  config = manifest_config(train_only_dir, eval_holdout_fraction=0.34)  # 2 of 6 videos
  held = {r["video"] for r in TAETask(config, str(tmp_path)).splits()[1]}
  assert len(held) == 2

  trained_on = []
  real_load_pixels = examples.load_pixels

  def recording_load_pixels(record, *args, **kwargs):
    trained_on.append(record.get("video") or record.get("image"))
    return real_load_pixels(record, *args, **kwargs)

  monkeypatch.setattr(examples, "load_pixels", recording_load_pixels)
  eval_metrics = train_lib.train(config, str(tmp_path))
  assert trained_on and not held & set(trained_on)
  assert len(set(trained_on)) <= NUM_VIDEOS - len(held)
  assert set(eval_metrics) == {"psnr", "ssim", "latent_norm_ratio"}
  assert all(np.isfinite(v) for v in eval_metrics.values())
  assert os.path.exists(tmp_path / "eval" / "step_2" / "reconstruction_00.mp4")


def test_hold_out_is_deterministic_and_keeps_training_data():
  videos = [{"video": f"/data/clip_{i:02d}.mp4", "caption": "c"} for i in range(20)]
  images = [{"image": "/data/still.png", "caption": "c"}]
  kept, held = hold_out(Records(videos + images), 0.1)
  assert len(held) == 2 and len(kept.records) == 19
  assert images[0] in kept.records
  assert not {r["video"] for r in held} & {r.get("video") for r in kept.records}
  shuffled = videos[:]
  random.Random(0).shuffle(shuffled)
  moved = [{**r, "video": r["video"].replace("/data/", "/elsewhere/")} for r in shuffled]
  _, held_again = hold_out(Records(moved), 0.1)
  assert sorted(os.path.basename(r["video"]) for r in held_again) == sorted(
      os.path.basename(r["video"]) for r in held
  )
  # Never everything, never from a single video.
  assert len(hold_out(Records(videos[:2]), 0.9)[0].records) == 1
  assert hold_out(Records(videos[:1]), 0.5)[1] == []
