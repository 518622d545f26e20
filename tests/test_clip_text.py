"""CLIP text tower: parity with transformers' CLIPTextModel, weight import, and
position-table extension.

Every parity test builds a tiny random transformers model, saves it with
`save_pretrained`, imports it with `load_clip_text` and compares outputs on a
right-padded batch whose rows have different lengths.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mgjax.models.clip_text import CLIPTextConfig, CLIPTextEncoder, extend_positions
from mgjax.text.hf_import import load_clip_text

VOCAB = 300
EOS = VOCAB - 1
BOS = VOCAB - 2
TOL = 1e-4


def hf_text_config(**overrides) -> transformers.CLIPTextConfig:
  kwargs = dict(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      max_position_embeddings=77,
      eos_token_id=EOS,
      bos_token_id=BOS,
      pad_token_id=0,
  )
  kwargs.update(overrides)
  return transformers.CLIPTextConfig(**kwargs)


def save_model(model_cls, config, directory, seed: int = 0):
  """A random fp32 model in eval mode, saved to `directory`."""
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  model.save_pretrained(directory)
  return model


def padded_batch(lengths, width: int, eos: int, pad: int, seed: int = 0):
  """ids [B, width] int32, mask [B, width] bool: BOS, random words, EOS, then pads.

  Words are drawn below BOS, so an EOS of VOCAB - 1 is each row's largest id (what
  the legacy pooling rule relies on)."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), width), pad, np.int32)
  for row, n in enumerate(lengths):
    words = rng.integers(3, BOS, size=n)
    ids[row, :n] = np.where(words == eos, 3, words)  # the only EOS is the one placed below
    ids[row, 0], ids[row, n - 1] = BOS, eos
  mask = np.arange(width)[None] < np.asarray(lengths)[:, None]
  return ids, mask


def torch_outputs(model, ids, mask):
  with torch.no_grad():
    out = model(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    )
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def jax_outputs(config, params, ids, mask):
  apply = jax.jit(CLIPTextEncoder(config).apply)  # compiling beats op-by-op dispatch
  hidden, pooled = apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  return np.asarray(hidden), np.asarray(pooled)


def assert_parity(model, config, params, ids, mask) -> float:
  """Max |diff| of last_hidden (real tokens) and pooled outputs; asserts < TOL."""
  ref_hidden, ref_pooled = torch_outputs(model, ids, mask)
  hidden, pooled = jax_outputs(config, params, ids, mask)
  assert hidden.shape == ref_hidden.shape and pooled.shape == ref_pooled.shape
  diff = max(np.abs(hidden - ref_hidden)[mask].max(), np.abs(pooled - ref_pooled).max())
  assert diff < TOL, diff
  return float(diff)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
  """(directory, torch model) of a tiny CLIPTextModel with a 77-row position table."""
  directory = str(tmp_path_factory.mktemp("clip_text"))
  return directory, save_model(transformers.CLIPTextModel, hf_text_config(), directory)


def test_parity_with_padding_and_eos_padding(text_model):
  directory, model = text_model
  config, params = load_clip_text(directory)
  assert config.eos_token_id == EOS and config.max_position_embeddings == 77
  # OpenAI CLIP's tokenizer pads with the EOS token: pooling must take the first one.
  ids, mask = padded_batch([77, 30, 9, 2], 77, eos=EOS, pad=EOS)
  assert_parity(model, config, params, ids, mask)


def test_parity_legacy_eos_token_id_pools_at_largest_id(tmp_path):
  model = save_model(transformers.CLIPTextModel, hf_text_config(eos_token_id=2), tmp_path, 1)
  config, params = load_clip_text(str(tmp_path))
  assert config.eos_token_id == 2
  ids, mask = padded_batch([20, 13, 5], 24, eos=EOS, pad=0, seed=1)
  assert_parity(model, config, params, ids, mask)


def test_parity_with_256_positions_and_200_tokens(tmp_path):
  # An EOS id below some word ids: pooling must use "first EOS", not "largest id".
  eos = VOCAB // 2
  hf = hf_text_config(
      max_position_embeddings=256,
      hidden_size=64,
      intermediate_size=128,
      hidden_act="gelu",
      eos_token_id=eos,
  )
  model = save_model(transformers.CLIPTextModel, hf, tmp_path, 2)
  config, params = load_clip_text(str(tmp_path))
  assert config.max_position_embeddings == 256 and config.hidden_act == "gelu"
  ids, mask = padded_batch([200, 131, 78, 40], 200, eos=eos, pad=0, seed=2)
  assert_parity(model, config, params, ids, mask)


def test_parity_from_full_clip_model_checkpoint(tmp_path):
  hf = transformers.CLIPConfig(
      text_config=hf_text_config().to_dict(),
      vision_config=dict(
          hidden_size=32,
          intermediate_size=64,
          num_hidden_layers=1,
          num_attention_heads=4,
          image_size=32,
          patch_size=16,
      ),
      projection_dim=16,
  )
  model = save_model(transformers.CLIPModel, hf, tmp_path, 3)
  with open(tmp_path / "config.json") as f:
    assert "text_config" in json.load(f)
  config, params = load_clip_text(str(tmp_path))
  assert config == CLIPTextConfig.from_hf(hf_text_config().to_dict())
  ids, mask = padded_batch([16, 7, 3], 16, eos=EOS, pad=0, seed=3)
  assert_parity(model.text_model, config, params, ids, mask)


def test_loaded_params_match_init_tree_and_logical_axes(text_model):
  config, params = load_clip_text(text_model[0])
  ids = jnp.zeros((1, 8), jnp.int32)
  abstract = jax.eval_shape(
      lambda: CLIPTextEncoder(config).init(jax.random.PRNGKey(0), ids, ids == 0)
  )["params"]
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: x.shape, tree)
  assert shapes(params) == shapes(
      jax.tree_util.tree_map(lambda x: x.value, abstract, is_leaf=lambda x: hasattr(x, "names"))
  )
  names = {
      "/".join(str(k.key) for k in path): leaf.names
      for path, leaf in jax.tree_util.tree_flatten_with_path(
          abstract, is_leaf=lambda x: hasattr(x, "names")
      )[0]
  }
  assert names["embeddings/token_embedding/embedding"] == ("vocab", "embed")
  assert names["embeddings/position_embedding"] == ("text_pos", "embed")
  assert names["layers_0/self_attn/q_proj/kernel"] == ("embed", "heads", "kv")
  assert names["layers_0/self_attn/q_proj/bias"] == ("heads", "kv")
  assert names["layers_0/self_attn/out_proj/kernel"] == ("heads", "kv", "embed")
  assert names["layers_1/mlp/fc1/kernel"] == ("embed", "mlp")
  assert names["layers_1/mlp/fc2/kernel"] == ("mlp", "embed")
  assert names["final_layer_norm/scale"] == ("norm",)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_extend_positions_keeps_short_prompts_and_runs_long_ones(text_model):
  directory, _ = text_model
  config, params = load_clip_text(directory)
  ids, mask = padded_batch([77, 12, 4], 77, eos=EOS, pad=0, seed=4)
  before = jax_outputs(config, params, ids, mask)

  long_params, long_config = extend_positions(params, config, 256)
  table = long_params["embeddings"]["position_embedding"]
  assert table.shape == (256, 32) and long_config.max_position_embeddings == 256
  np.testing.assert_array_equal(table[:77], params["embeddings"]["position_embedding"])
  assert params["embeddings"]["position_embedding"].shape == (77, 32)  # input untouched
  after = jax_outputs(long_config, long_params, ids, mask)
  for old, new in zip(before, after):
    assert np.abs(old - new).max() < 1e-6

  # New rows are interpolated from learned ones: no larger than the largest learned row.
  norms = np.linalg.norm(table, axis=-1)
  assert norms[77:].max() <= norms[:77].max() + 1e-6
  long_ids, long_mask = padded_batch([256, 150], 256, eos=EOS, pad=0, seed=5)
  hidden, pooled = jax_outputs(long_config, long_params, long_ids, long_mask)
  assert hidden.shape == (2, 256, 32) and np.isfinite(hidden).all() and np.isfinite(pooled).all()

  loaded_config, loaded = load_clip_text(directory, max_length=256)
  assert loaded_config == long_config
  np.testing.assert_array_equal(loaded["embeddings"]["position_embedding"], table)
  with pytest.raises(ValueError, match="only grows"):
    extend_positions(long_params, long_config, 77)


def test_too_long_input_is_refused_with_the_fix(text_model):
  config, params = load_clip_text(text_model[0])
  ids, mask = padded_batch([100], 100, eos=EOS, pad=0)
  with pytest.raises(ValueError, match="max_position_embeddings is 77.*extend_positions"):
    jax_outputs(config, params, ids, mask)


def test_missing_tensor_is_named(text_model, tmp_path):
  shutil.copytree(text_model[0], tmp_path, dirs_exist_ok=True)
  weights = os.path.join(tmp_path, "model.safetensors")
  tensors = load_file(weights)
  del tensors["encoder.layers.1.mlp.fc2.weight"]
  save_file(tensors, weights, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=re.escape("encoder.layers.1.mlp.fc2.weight")):
    load_clip_text(str(tmp_path))


def test_shape_mismatch_names_tensor_and_expected_shape(text_model, tmp_path):
  shutil.copytree(text_model[0], tmp_path, dirs_exist_ok=True)
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  hf["intermediate_size"] = 96
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  with pytest.raises(
      ValueError, match=re.escape("'encoder.layers.0.mlp.fc1.weight'") + r".*expected \(96, 32\)"
  ):
    load_clip_text(str(tmp_path))


def test_from_hf_rejects_unsupported_values():
  hf = hf_text_config().to_dict()
  with pytest.raises(ValueError, match="hidden_act"):
    CLIPTextConfig.from_hf({**hf, "hidden_act": "relu"})
  with pytest.raises(ValueError, match="eos_token_id"):
    CLIPTextConfig.from_hf({**hf, "eos_token_id": [1, 2]})
  with pytest.raises(ValueError, match="num_heads"):
    CLIPTextConfig.from_hf({**hf, "num_attention_heads": 5})
