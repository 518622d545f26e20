"""T5-family encoder parity with transformers' PyTorch models, and import errors.

Each parity test builds a tiny random transformers model, saves it the way users
get checkpoints (`save_pretrained`), loads it with `load_t5_encoder`, and compares
the last hidden state on a padded batch at the non-padded positions.
"""

import dataclasses
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5.modeling_t5 import T5Attention

from mgjax.models.t5 import T5Config, T5Encoder, relative_position_bucket
from mgjax.text.hf_import import load_t5_encoder

VOCAB = 300
LENGTHS = (40, 27, 9)  # one full row, two padded; 40 > max_distance 32 reaches the far bucket
TOLERANCE = 1e-4
TINY = dict(
    vocab_size=VOCAB,
    d_model=48,
    d_kv=16,
    num_heads=4,
    d_ff=80,
    num_layers=2,
    relative_attention_num_buckets=32,
    dropout_rate=0.0,
)


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
  """Make the norm scales and position biases matter: both init to ~1 / ~0."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.uniform_(0.5, 1.5)
      elif "relative_attention_bias" in name:
        param.normal_(0.0, 1.0)
  return model.eval()


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  mask = np.arange(max(LENGTHS))[None, :] < np.array(LENGTHS)[:, None]  # [B, L]
  ids = np.where(mask, rng.integers(2, VOCAB, mask.shape), 0).astype(np.int32)
  return ids, mask


def _torch_encoder(model: torch.nn.Module):
  return model.get_encoder() if hasattr(model, "get_encoder") else model


def _assert_parity(model: torch.nn.Module, directory) -> tuple[T5Config, dict]:
  """Loads `directory`, checks the tree against init's, and compares to `model`."""
  config, params = load_t5_encoder(str(directory))
  encoder = T5Encoder(config)
  ids, mask = _batch()
  abstract = jax.eval_shape(encoder.init, jax.random.key(0), ids, mask)["params"]
  assert jax.tree.map(lambda x: x.shape, nn.unbox(abstract)) == jax.tree.map(
      lambda x: x.shape, params
  )
  ours = np.asarray(jax.jit(encoder.apply)({"params": params}, ids, mask))
  with torch.no_grad():
    theirs = _torch_encoder(model)(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    )
  theirs = theirs.last_hidden_state.numpy()
  assert ours.shape == theirs.shape == (len(LENGTHS), max(LENGTHS), config.d_model)
  diff = np.abs(ours - theirs)[mask].max()
  print(f"max |diff| = {diff:.2e}")
  assert diff < TOLERANCE, diff
  return config, params


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (32, 32), (16, 20), (64, 256)])
def test_bucket_matches_transformers(num_buckets, max_distance):
  relative = np.arange(-700, 701)
  expected = T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.from_numpy(relative),
      bidirectional=True,
      num_buckets=num_buckets,
      max_distance=max_distance,
  ).numpy()
  np.testing.assert_array_equal(
      relative_position_bucket(relative, num_buckets, max_distance), expected
  )


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_t5_v1_0_relu_parity(tmp_path, weights):
  torch.manual_seed(0)
  model = _randomize(
      transformers.T5EncoderModel(
          transformers.T5Config(
              **TINY, feed_forward_proj="relu", relative_attention_max_distance=128
          )
      )
  )
  model.save_pretrained(tmp_path)
  if weights == "bin":  # save_pretrained only writes safetensors in transformers 5
    os.remove(tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  config, params = _assert_parity(model, tmp_path)
  assert not config.is_gated_act and config.dense_act_fn == "relu"
  assert "wi" in params["layer_0"]["mlp"] and "relpos_bias" not in params["layer_1"]


@pytest.mark.parametrize(
    "model_cls,feed_forward_proj",
    [
        (transformers.T5EncoderModel, "gated-gelu"),  # T5 v1.1, ByT5
        (transformers.T5ForConditionalGeneration, "gated-gelu"),  # full seq2seq checkpoint
        (transformers.T5EncoderModel, "gated-silu"),  # UL2
    ],
)
def test_t5_v1_1_gated_parity(tmp_path, model_cls, feed_forward_proj):
  torch.manual_seed(1)
  model = _randomize(
      model_cls(
          transformers.T5Config(
              **TINY,
              feed_forward_proj=feed_forward_proj,
              tie_word_embeddings=False,
              relative_attention_max_distance=32,
          )
      )
  )
  model.save_pretrained(tmp_path)
  config, params = _assert_parity(model, tmp_path)
  assert config.is_gated_act and not config.per_layer_position_bias
  assert config.dense_act_fn == ("gelu_new" if feed_forward_proj == "gated-gelu" else "silu")
  assert {"wi_0", "wi_1", "wo"} == set(params["layer_0"]["mlp"])


def test_umt5_per_layer_bias_parity(tmp_path):
  torch.manual_seed(2)
  model = _randomize(
      transformers.UMT5EncoderModel(
          transformers.UMT5Config(
              **TINY, feed_forward_proj="gated-gelu", relative_attention_max_distance=32
          )
      )
  )
  model.save_pretrained(tmp_path)
  config, params = _assert_parity(model, tmp_path)
  assert config.per_layer_position_bias and "relpos_bias" not in params
  tables = [params[f"layer_{i}"]["relpos_bias"]["embedding"] for i in range(2)]
  assert not np.allclose(tables[0], tables[1])
  # bfloat16 compute runs from the same float32 params and stays close.
  ids, mask = _batch()
  full = T5Encoder(config).apply({"params": params}, ids, mask)
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  half = T5Encoder(bf16).apply({"params": params}, ids, mask)
  assert half.dtype == jnp.bfloat16
  assert np.abs(np.asarray(half, np.float32) - np.asarray(full))[mask].max() < 0.1


def test_params_carry_logical_axis_names():
  config = T5Config(
      vocab_size=VOCAB,
      d_model=16,
      d_kv=4,
      d_ff=24,
      num_layers=1,
      num_heads=2,
      is_gated_act=True,
      dense_act_fn="gelu_new",
      per_layer_position_bias=True,
  )
  ids, mask = _batch()
  boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), ids, mask)["params"]
  names = jax.tree.map(
      lambda box: box.names, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  layer = names["layer_0"]
  assert names["token_embed"]["embedding"] == ("vocab", "embed")
  assert names["final_norm"]["scale"] == ("norm",)
  assert layer["relpos_bias"]["embedding"] == ("relpos_buckets", "heads")
  assert layer["attn"]["query"]["kernel"] == ("embed", "heads", "kv")
  assert layer["attn"]["out"]["kernel"] == ("heads", "kv", "embed")
  assert layer["mlp"]["wi_0"]["kernel"] == ("embed", "mlp")
  assert layer["mlp"]["wo"]["kernel"] == ("mlp", "embed")


def _save_tiny_t5(directory, drop: str | None = None):
  torch.manual_seed(3)
  model = transformers.T5EncoderModel(transformers.T5Config(**TINY, feed_forward_proj="relu"))
  state = {k: v for k, v in model.state_dict().items() if k != drop}
  model.save_pretrained(directory, state_dict=state)


def test_missing_tensor_is_named(tmp_path):
  name = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
  _save_tiny_t5(tmp_path, drop=name)
  with pytest.raises(ValueError, match=re.escape(name)):
    load_t5_encoder(str(tmp_path))


def test_wrong_shape_names_tensor_and_expected_shape(tmp_path):
  _save_tiny_t5(tmp_path)
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  hf["d_ff"] = 96
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  # The first FFN tensor read is wo, torch layout [d_model, d_ff].
  with pytest.raises(
      ValueError,
      match=re.escape("'encoder.block.0.layer.1.DenseReluDense.wo.weight'") + r".*\(48, 96\)",
  ):
    load_t5_encoder(str(tmp_path))


@pytest.mark.parametrize(
    "change,key",
    [
        ({"feed_forward_proj": "gated-tanhh"}, "feed_forward_proj"),
        ({"feed_forward_proj": "double-gated-gelu"}, "feed_forward_proj"),
        ({"model_type": "bert"}, "model_type"),
        ({"d_kv": None}, "d_kv"),
    ],
)
def test_from_hf_rejects_unsupported_configs(change, key):
  hf = dict(TINY, model_type="t5", feed_forward_proj="relu")
  hf.update(change)
  hf = {k: v for k, v in hf.items() if v is not None}
  with pytest.raises(ValueError, match=key):
    T5Config.from_hf(hf)


def test_from_hf_reads_flavours():
  base = dict(TINY, model_type="t5")
  assert T5Config.from_hf(base).dense_act_fn == "relu"  # T5's default feed_forward_proj
  umt5 = T5Config.from_hf(dict(base, model_type="umt5"))
  assert umt5.per_layer_position_bias and umt5.is_gated_act and umt5.dense_act_fn == "gelu_new"
  ul2 = T5Config.from_hf(dict(base, feed_forward_proj="gated-silu"), dtype="bfloat16")
  assert ul2.is_gated_act and ul2.dense_act_fn == "silu" and ul2.dtype == "bfloat16"
