"""CLIP vision tower: parity with transformers' CLIPVisionModel,
CLIPVisionModelWithProjection and CLIPModel image features, weight import,
position-table interpolation and preprocessing.

Every parity test builds a tiny random transformers model (hidden 32, 2 layers,
4 heads, 32 px images of 8 px patches), saves it with `save_pretrained`, imports it
with `load_clip_vision` and compares outputs on a random batch of two images.
"""

from __future__ import annotations

import dataclasses
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

from mgjax.models import clip_vision
from mgjax.models.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from mgjax.text.hf_import import load_clip_vision

TOL = 1e-4
IMAGE, PATCH, HIDDEN = 32, 8, 32


def hf_vision_config(**overrides) -> transformers.CLIPVisionConfig:
  kwargs = dict(
      hidden_size=HIDDEN,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      image_size=IMAGE,
      patch_size=PATCH,
  )
  kwargs.update(overrides)
  return transformers.CLIPVisionConfig(**kwargs)


def save_model(model_cls, config, directory, seed: int = 0):
  """A random fp32 model in eval mode, saved to `directory`."""
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  model.save_pretrained(directory)
  return model


def pixels(height: int = IMAGE, width: int = IMAGE, seed: int = 0) -> np.ndarray:
  """Two random normalised images, channels first [2, 3, H, W] (torch's layout)."""
  return np.random.default_rng(seed).standard_normal((2, 3, height, width)).astype(np.float32)


def jax_outputs(config, params, images: np.ndarray):
  """(last_hidden, pooled, image_embeds or None) for channels-first `images`."""
  apply = jax.jit(CLIPVisionEncoder(config).apply)  # compiling beats op-by-op dispatch
  out = apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)))
  return tuple(None if o is None else np.asarray(o) for o in out)


def torch_outputs(model, images: np.ndarray, interpolate: bool = False):
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(images), interpolate_pos_encoding=interpolate)


def max_diff(ours: np.ndarray, ref: torch.Tensor) -> float:
  ref = ref.numpy()
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max())


def assert_vision_parity(model, config, params, images, interpolate: bool = False) -> None:
  """last_hidden_state and pooler_output of a CLIPVisionModel (or a CLIPModel's
  vision_model) within TOL."""
  ref = torch_outputs(model, images, interpolate)
  hidden, pooled, _ = jax_outputs(config, params, images)
  assert max_diff(hidden, ref.last_hidden_state) < TOL
  assert max_diff(pooled, ref.pooler_output) < TOL


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
  """(directory, torch model) of a tiny CLIPVisionModel (quick_gelu)."""
  directory = str(tmp_path_factory.mktemp("clip_vision"))
  return directory, save_model(transformers.CLIPVisionModel, hf_vision_config(), directory)


@pytest.fixture(scope="module")
def projection_model(tmp_path_factory):
  """(directory, torch model) of a tiny CLIPVisionModelWithProjection (dim 16)."""
  directory = str(tmp_path_factory.mktemp("clip_vision_projection"))
  hf = hf_vision_config(projection_dim=16)
  return directory, save_model(transformers.CLIPVisionModelWithProjection, hf, directory, 1)


def test_parity_quick_gelu(vision_model):
  directory, model = vision_model
  config, params = load_clip_vision(directory)
  assert config.hidden_act == "quick_gelu" and config.projection_dim == 0
  # transformers writes its default projection_dim (512) into a CLIPVisionModel config too.
  with open(os.path.join(directory, "config.json")) as f:
    assert json.load(f)["projection_dim"] == 512
  assert_vision_parity(model, config, params, pixels())
  assert jax_outputs(config, params, pixels())[2] is None


def test_parity_gelu(tmp_path):
  model = save_model(transformers.CLIPVisionModel, hf_vision_config(hidden_act="gelu"), tmp_path, 2)
  config, params = load_clip_vision(str(tmp_path))
  assert config.hidden_act == "gelu"
  assert_vision_parity(model, config, params, pixels(seed=2))


def test_parity_with_projection(projection_model):
  directory, model = projection_model
  config, params = load_clip_vision(directory)
  assert config.projection_dim == 16
  images = pixels(seed=3)
  ref = torch_outputs(model, images)
  hidden, _, embeds = jax_outputs(config, params, images)
  assert max_diff(hidden, ref.last_hidden_state) < TOL
  assert max_diff(embeds, ref.image_embeds) < TOL


def test_parity_of_full_clip_model_image_features(tmp_path):
  hf = transformers.CLIPConfig(
      text_config=dict(
          vocab_size=100,
          hidden_size=32,
          intermediate_size=64,
          num_hidden_layers=1,
          num_attention_heads=4,
          bos_token_id=98,
          eos_token_id=99,
          pad_token_id=0,
      ),
      vision_config=hf_vision_config().to_dict(),
      projection_dim=16,
  )
  model = save_model(transformers.CLIPModel, hf, tmp_path, 4)
  config, params = load_clip_vision(str(tmp_path))
  # The top-level projection_dim, not vision_config's unused default of 512.
  assert config == dataclasses.replace(
      CLIPVisionConfig.from_hf(hf_vision_config().to_dict()), projection_dim=16
  )
  assert "text_model.embeddings.token_embedding.weight" in load_file(
      os.path.join(tmp_path, "model.safetensors")
  )
  images = pixels(seed=4)
  assert_vision_parity(model.vision_model, config, params, images)
  with torch.no_grad():
    # transformers 5: a BaseModelOutputWithPooling whose pooler_output is projected.
    features = model.get_image_features(pixel_values=torch.from_numpy(images))
  features = getattr(features, "pooler_output", features)
  assert max_diff(jax_outputs(config, params, images)[2], features) < TOL


@pytest.mark.parametrize("size", [(64, 64), (48, 40), (16, 24)])
def test_parity_with_interpolated_positions(vision_model, size):
  directory, model = vision_model
  config, params = load_clip_vision(directory)
  images = pixels(*size, seed=5)
  assert_vision_parity(model, config, params, images, interpolate=True)
  hidden = jax_outputs(config, params, images)[0]
  assert hidden.shape == (2, 1 + (size[0] // PATCH) * (size[1] // PATCH), HIDDEN)


def test_bicubic_resize_matches_torch():
  rng = np.random.default_rng(6)
  grid, dim = 7, 5
  table = rng.standard_normal((1 + grid * grid, dim)).astype(np.float32)
  patches = table[1:].reshape(grid, grid, dim)
  for size in [(12, 9), (7, 7), (3, 5), (16, 2)]:  # up, same, down, mixed
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(patches.transpose(2, 0, 1))[None],
        size=size,
        mode="bicubic",
        align_corners=False,
    )[
        0
    ].numpy()  # [D, H, W]
    ours = np.asarray(clip_vision.resize_bicubic(jnp.asarray(patches), size))
    np.testing.assert_allclose(ours.transpose(2, 0, 1), ref, atol=1e-5, rtol=0)
    # The table: class row kept, patch rows resized in row-major order.
    resized = np.asarray(clip_vision.interpolate_positions(jnp.asarray(table), grid, size))
    np.testing.assert_array_equal(resized[0], table[0])
    np.testing.assert_allclose(resized[1:], ref.transpose(1, 2, 0).reshape(-1, dim), atol=1e-5)
  # At the trained grid the table is used as is; torch's a = -0.75 is not jax's.
  assert clip_vision.interpolate_positions(table, grid, (grid, grid)) is table
  ours = np.asarray(clip_vision.resize_bicubic(jnp.asarray(patches), (12, 9)))
  theirs = np.asarray(jax.image.resize(jnp.asarray(patches), (12, 9, dim), "bicubic"))
  assert np.abs(ours - theirs).max() > 1e-3


def test_size_not_a_multiple_of_the_patch_is_refused(vision_model):
  config, params = load_clip_vision(vision_model[0])
  with pytest.raises(ValueError, match=r"36x32 \(HxW\) image, not a multiple of patch_size 8"):
    jax_outputs(config, params, pixels(36, 32))
  with pytest.raises(ValueError, match=r"channels-last pixels \[B, H, W, 3\]"):
    CLIPVisionEncoder(config).apply({"params": params}, jnp.zeros((1, 3, IMAGE, IMAGE)))


@pytest.mark.parametrize(
    "fixture, tensor",
    [
        ("vision_model", "encoder.layers.1.mlp.fc2.weight"),  # transformers 5: unprefixed
        ("projection_model", "vision_model.embeddings.patch_embedding.weight"),
        ("projection_model", "visual_projection.weight"),
    ],
)
def test_missing_tensor_is_named(request, tmp_path, fixture, tensor):
  shutil.copytree(request.getfixturevalue(fixture)[0], tmp_path, dirs_exist_ok=True)
  weights = os.path.join(tmp_path, "model.safetensors")
  tensors = load_file(weights)
  del tensors[tensor]
  save_file(tensors, weights, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=f"missing tensor {re.escape(repr(tensor))}"):
    load_clip_vision(str(tmp_path))


def test_shape_mismatch_names_tensor(vision_model, tmp_path):
  shutil.copytree(vision_model[0], tmp_path, dirs_exist_ok=True)
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  hf["image_size"] = 48  # a 6x6 grid: 37 positions, the checkpoint has 17
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  with pytest.raises(
      ValueError, match=re.escape("'embeddings.position_embedding.weight'") + r".*\(37, 32\)"
  ):
    load_clip_vision(str(tmp_path))


def test_preprocess_matches_clip_image_processor():
  processor_cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
  processor = processor_cls(do_resize=False, do_center_crop=False)
  assert tuple(processor.image_mean) == clip_vision.OPENAI_CLIP_MEAN
  assert tuple(processor.image_std) == clip_vision.OPENAI_CLIP_STD
  images = np.random.default_rng(7).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
  ref = processor(images=list(images), return_tensors="np")["pixel_values"]  # [2, 3, H, W]
  ours = np.asarray(clip_vision.preprocess(images))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), atol=1e-5, rtol=0)
  np.testing.assert_allclose(
      np.asarray(clip_vision.preprocess(images.astype(np.float32))), ours, atol=1e-6
  )
  # Black and white pixels: (0 - mean) / std and (1 - mean) / std.
  extremes = np.asarray(clip_vision.preprocess(np.array([[[[0, 0, 0], [255, 255, 255]]]])))
  mean, std = np.array(clip_vision.OPENAI_CLIP_MEAN), np.array(clip_vision.OPENAI_CLIP_STD)
  np.testing.assert_allclose(extremes[0, 0], [-mean / std, (1 - mean) / std], atol=1e-6)


def test_loaded_params_match_init_tree_and_logical_axes(projection_model):
  config, params = load_clip_vision(projection_model[0])
  abstract = jax.eval_shape(
      lambda: CLIPVisionEncoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3)))
  )["params"]
  is_box = lambda x: hasattr(x, "names")
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: x.shape, tree)
  assert shapes(params) == shapes(
      jax.tree_util.tree_map(lambda x: x.value, abstract, is_leaf=is_box)
  )
  assert sorted(params) == [
      "embeddings",
      "layers_0",
      "layers_1",
      "post_layernorm",
      "pre_layrnorm",
      "visual_projection",
  ]
  names = {
      "/".join(str(k.key) for k in path): leaf.names
      for path, leaf in jax.tree_util.tree_flatten_with_path(abstract, is_leaf=is_box)[0]
  }
  assert names["embeddings/patch_embedding/kernel"] == ("patch", "embed")
  assert names["embeddings/class_embedding"] == ("embed",)
  assert names["embeddings/position_embedding"] == ("vision_pos", "embed")
  assert names["pre_layrnorm/scale"] == ("norm",)
  assert names["layers_0/self_attn/q_proj/kernel"] == ("embed", "heads", "kv")
  assert names["layers_1/mlp/fc2/kernel"] == ("mlp", "embed")
  assert names["post_layernorm/bias"] == ("norm",)
  assert names["visual_projection/kernel"] == ("embed", "proj")
  assert params["embeddings"]["patch_embedding"]["kernel"].shape == (PATCH * PATCH * 3, HIDDEN)
  assert params["embeddings"]["position_embedding"].shape == (1 + (IMAGE // PATCH) ** 2, HIDDEN)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_from_hf_defaults_projection_and_errors():
  # An empty dict takes transformers' CLIPVisionConfig defaults (ViT-B/32).
  default = CLIPVisionConfig.from_hf({})
  ref = transformers.CLIPVisionConfig()
  assert (default.hidden_size, default.intermediate_size) == (ref.hidden_size, 3072)
  assert (default.num_layers, default.num_heads) == (ref.num_hidden_layers, 12)
  assert (default.image_size, default.patch_size, default.num_channels) == (224, 32, 3)
  assert (default.hidden_act, default.layer_norm_eps) == ("quick_gelu", 1e-5)
  assert default.head_dim == 64
  # No "projection_dim" and no "architectures": nothing says there is a projection.
  assert default.projection_dim == 0
  hf = hf_vision_config().to_dict()
  assert CLIPVisionConfig.from_hf({**hf, "architectures": ["CLIPVisionModel"]}).projection_dim == 0
  with_projection = {**hf, "projection_dim": 24, "architectures": ["CLIPVisionModelWithProjection"]}
  assert CLIPVisionConfig.from_hf(with_projection).projection_dim == 24
  # transformers' default (512) when a config with a projection leaves it out.
  del with_projection["projection_dim"]
  assert CLIPVisionConfig.from_hf(with_projection).projection_dim == 512
  full = {"vision_config": hf, "projection_dim": 8, "architectures": ["CLIPModel"]}
  assert CLIPVisionConfig.from_hf(full, dtype="bfloat16").projection_dim == 8
  assert CLIPVisionConfig.from_hf(full, dtype="bfloat16").dtype == "bfloat16"
  assert CLIPVisionConfig.from_hf({**hf, "image_size": [32, 32]}).image_size == 32
  with pytest.raises(ValueError, match="hidden_act"):
    CLIPVisionConfig.from_hf({**hf, "hidden_act": "relu"})
  with pytest.raises(ValueError, match="num_heads"):
    CLIPVisionConfig.from_hf({**hf, "num_attention_heads": 5})
  with pytest.raises(ValueError, match="image_size 36 is not a multiple of patch_size 8"):
    CLIPVisionConfig.from_hf({**hf, "image_size": 36})
  with pytest.raises(ValueError, match="square"):
    CLIPVisionConfig.from_hf({**hf, "image_size": [32, 48]})
