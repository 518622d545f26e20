"""A toy latent flow family in a few dozen lines: 4x4 colour images conditioned on a
colour word, with a codec that needs no trained run. The task layer's test runs it
through every tool; the trainer's tests train it because its step compiles in a
second (`--config=tests/configs/toy.py:<num_steps>` for those that start a command)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgjax import configs
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


def toy_config(num_steps=300, **mesh):
  config = configs.base_config()
  config.task = "tests.toy_task:ToyFlowTask"
  config.codec = ml_collections.ConfigDict(dict(workdir="", train_config="", train_steps=0))
  config.flow = ml_collections.ConfigDict(
      dict(sigma_min=1e-5, t_mean=0.0, t_std=1.0, sample_steps=8, schedule="linear",
           method="euler", cfg_scale=2.0)
  )  # fmt: skip
  config.data = configs.data_config(num_threads=1, prefetch=1)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  config.train.update(num_steps=num_steps, batch_size=8, log_every=10, eval_every=0,
                      checkpoint_every=50, progress_bar=False)  # fmt: skip
  if mesh:
    config.mesh.update(mesh)
  return config
