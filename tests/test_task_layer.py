"""A new model family is a small file on the latent flow base: this toy one (4x4
colour images, conditioned on a colour word) trains through the one trainer,
resumes, samples through `mgjax.sample` and opens in `mgjax.inspect`, with no edit
to any tool; `train.init_from` starts a run from another run's weights."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mgjax import configs, runs
from mgjax import inspect as inspect_lib
from mgjax import sample as sample_lib
from mgjax import train as train_lib
from mgjax.data.pipeline import DataIterator, Stream
from mgjax.data.sources import loader_options
from mgjax.tasks.codecs import ChannelStats, LatentCodec
from mgjax.tasks.latent_flow import LatentFlowTask
from mgjax.tasks.outputs import Sample, SampleRequest

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
SHAPE = (1, 4, 4, 3)  # latent [T, h, w, C]: the pixels themselves


class PixelCodec(LatentCodec):
  """uint8 pixels <-> [-1, 1] floats: a codec that needs no trained run."""

  task, params_key, train_hint = "none", "", ""
  latent_channels = 3

  def encode(self, media):
    return np.asarray(media, np.float32) / 127.5 - 1

  def decode(self, latents, length):
    return np.asarray(jnp.clip(jnp.round((latents + 1) * 127.5), 0, 255), np.uint8)[:, :length]

  def fingerprint(self):
    return {"codec": "pixels"}


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, t, label):  # [B, 1, 4, 4, 3], [B], [B] (2 = no colour)
    h = jnp.concatenate([x.reshape(x.shape[0], -1), t[:, None], nn.Embed(3, 16)(label)], -1)
    h = nn.gelu(nn.Dense(64)(h))
    return nn.Dense(x[0].size, kernel_init=nn.initializers.zeros)(h).reshape(x.shape)


class ToyFlowTask(LatentFlowTask):
  codec_class, codec_section, codec_default_dir = PixelCodec, "codec", "codec"
  codec_stage_name = default_codec_config = ""

  def __init__(self, config, workdir, **kwargs):
    super().__init__(config, workdir, codec=PixelCodec(config), **kwargs)
    self.net = Net()

  def batch_specs(self):
    return {"toy": {"latent": jax.ShapeDtypeStruct((8, *SHAPE), jnp.float32),
                    "label": jax.ShapeDtypeStruct((8,), jnp.int32)}}  # fmt: skip

  def init(self, rng):
    x = jnp.zeros((1, *SHAPE))
    return {"net": self.net.init(rng, x, jnp.zeros(1), jnp.zeros(1, jnp.int32))["params"]}, {}

  def example(self, i):
    label = i % 2
    colour = np.array(list(COLOURS.values())[label], np.uint8)
    return self.codec.encode(np.broadcast_to(colour, SHAPE)), label

  def compute_stats(self):
    latents = np.stack([self.example(i)[0] for i in range(2)])
    return ChannelStats(latents.mean((0, 1, 2, 3)), latents.std((0, 1, 2, 3)) + 0.1)

  def condition_dropout(self):
    return {"label": 0.2}

  def velocity(self, params, frozen, x_t, t, conditions, keep):
    label = jnp.where(keep["label"], conditions["label"], 2)
    return self.net.apply({"params": params["net"]}, x_t, t, label)

  def guided_model_fn(self, x, t, use_condition, labels, params):
    return self.net.apply({"params": params["net"]}, x, t, jnp.where(use_condition, labels, 2))

  def train_batches(self, start_step, rows_of):
    def load(index, rng):
      latent, label = self.example(int(index))
      return {"latent": latent, "label": np.int32(label), "skipped": []}

    stream = Stream("toy", 64, load, 8)
    options = loader_options(self.config.data, self.config.seed)
    finish = lambda b: {"latent": b["latent"], "label": b["label"]}
    return DataIterator([stream], options, finish, rows_of=rows_of, start=start_step)

  def generate(self, params, frozen, request):
    labels = jnp.asarray([list(COLOURS).index(p) for p in request.prompts], jnp.int32)
    settings = self.sampler_settings(request, self.config.flow)
    latents = self.sample_latents((labels, params), SHAPE, num_examples=len(labels),
                                  seed=request.seed, **settings)  # fmt: skip
    videos = self.codec.decode(latents, 1)
    return [Sample(p, p, v) for p, v in zip(request.prompts, videos)]

  def evaluate(self, params, frozen, step):
    (red,) = self.generate(params, frozen, SampleRequest(["red"], num_steps=8))
    return {"red_minus_blue": float(red.video[..., 0].mean()) - float(red.video[..., 2].mean())}


def toy_config(num_steps=300):
  config = configs.base_config()
  config.task = "tests.test_task_layer:ToyFlowTask"
  config.codec = ml_collections.ConfigDict(dict(workdir="", train_config="", train_steps=0))
  config.flow = ml_collections.ConfigDict(
      dict(sigma_min=1e-5, t_mean=0.0, t_std=1.0, sample_steps=8, schedule="linear",
           method="euler", cfg_scale=2.0)
  )  # fmt: skip
  config.data = configs.data_config(num_threads=1, prefetch=1)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  config.train.update(num_steps=num_steps, batch_size=8, log_every=10, eval_every=0,
                      checkpoint_every=50, progress_bar=False)  # fmt: skip
  return config


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
