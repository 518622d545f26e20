"""Imports Hugging Face encoder checkpoints into mgjax parameter trees.

The encoders themselves (mgjax/models/t5.py, mgjax/models/clip_text.py,
mgjax/models/clip_vision.py) are pure Flax modules and read no files; this module
reads a directory written by transformers' `save_pretrained` (through
mgjax/text/hf_checkpoint.py) and maps its tensor names onto their parameters:

  * `load_t5_encoder`: a T5EncoderModel / UMT5EncoderModel, or a full seq2seq
    T5-family model (its decoder is ignored), for `t5.T5Encoder`;
  * `load_clip_text`: a CLIPTextModel, or a full CLIPModel (its vision tower and
    projections are ignored), for `clip_text.CLIPTextEncoder`, its position table
    optionally grown to a longer `max_length`;
  * `load_clip_vision`: a CLIPVisionModel, a CLIPVisionModelWithProjection, or a
    full CLIPModel (its text tower and text projection are ignored), for
    `clip_vision.CLIPVisionEncoder`, with the visual projection when the
    checkpoint has one.

MetaCLIP checkpoints on the Hub (facebook/metaclip-*) are plain CLIPModel
directories, so both CLIP loaders read them as they read OpenAI's.

`t5_params_from_hf`, `clip_text_params_from_hf` and `clip_vision_params_from_hf`
do the name mapping alone, from tensors already read into a `TensorReader`; the
two CLIP towers share one transformer-block mapping (`clip_layer_params_from_hf`).
"""

from __future__ import annotations

import jax.numpy as jnp
from absl import logging

from mgjax.models.clip_text import CLIPTextConfig, extend_positions
from mgjax.models.clip_vision import CLIPVisionConfig
from mgjax.models.t5 import T5Config
from mgjax.text import hf_checkpoint
from mgjax.text.hf_checkpoint import TensorReader

# Prefixes of CLIP text-tower tensors: both a CLIPTextModel and a CLIPModel
# checkpoint name them "text_model.*"; "" takes a bare state dict of the tower.
CLIP_CHECKPOINT_PREFIXES = ("text_model.", "")
# Prefixes of CLIP vision-tower tensors: "vision_model.*" in a CLIPModel and a
# CLIPVisionModelWithProjection checkpoint; transformers 5 saves a bare
# CLIPVisionModel without it (4.x kept it). The visual projection is never
# prefixed: "visual_projection.weight".
CLIP_VISION_CHECKPOINT_PREFIXES = ("vision_model.", "")


# ------------------------------------------------------------------------- T5


def t5_params_from_hf(config: T5Config, reader: TensorReader) -> dict:
  """`T5Encoder` params from transformers' "encoder.*" tensor names (torch layout)."""
  cfg = config
  d, n, dk = cfg.d_model, cfg.num_heads, cfg.d_kv

  def kernel(name, d_in, d_out, shape):
    # torch Linear weight [out, in] -> Flax kernel [in, out] -> `shape`
    return {"kernel": reader.take(name + ".weight", (d_in, d_out), transpose=True).reshape(shape)}

  def bias_table(name):
    return {"embedding": reader.take(name, (cfg.relative_attention_num_buckets, n))}

  # Both names hold the same (tied) table; a checkpoint may keep either or both.
  embed_name = "encoder.embed_tokens.weight"
  if not reader.has(embed_name):
    if not reader.has("shared.weight"):
      raise ValueError(
          f"Checkpoint {reader.source!r} has neither 'shared.weight' nor "
          f"{embed_name!r} (expected shape {(cfg.vocab_size, d)})."
      )
    embed_name = "shared.weight"
  params = {"token_embed": {"embedding": reader.take(embed_name, (cfg.vocab_size, d))}}
  bias_name = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
  if not cfg.per_layer_position_bias:
    params["relpos_bias"] = bias_table(bias_name.format(0))
  for i in range(cfg.num_layers):
    attn = f"encoder.block.{i}.layer.0"
    ffn = f"encoder.block.{i}.layer.1"
    layer = {
        "attn_norm": {"scale": reader.take(f"{attn}.layer_norm.weight", (d,))},
        "attn": {
            "query": kernel(f"{attn}.SelfAttention.q", d, n * dk, (d, n, dk)),
            "key": kernel(f"{attn}.SelfAttention.k", d, n * dk, (d, n, dk)),
            "value": kernel(f"{attn}.SelfAttention.v", d, n * dk, (d, n, dk)),
            "out": kernel(f"{attn}.SelfAttention.o", n * dk, d, (n, dk, d)),
        },
        "mlp_norm": {"scale": reader.take(f"{ffn}.layer_norm.weight", (d,))},
        "mlp": {"wo": kernel(f"{ffn}.DenseReluDense.wo", cfg.d_ff, d, (cfg.d_ff, d))},
    }
    for wi in ("wi_0", "wi_1") if cfg.is_gated_act else ("wi",):
      layer["mlp"][wi] = kernel(f"{ffn}.DenseReluDense.{wi}", d, cfg.d_ff, (d, cfg.d_ff))
    if cfg.per_layer_position_bias:
      layer["relpos_bias"] = bias_table(bias_name.format(i))
    params[f"layer_{i}"] = layer
  params["final_norm"] = {"scale": reader.take("encoder.final_layer_norm.weight", (d,))}
  return params


def load_t5_encoder(directory: str, dtype: str = "float32") -> tuple[T5Config, dict]:
  """(config, params) of the T5-family encoder saved in `directory`.

  Reads transformers' config.json and weights of a T5EncoderModel /
  UMT5EncoderModel, or of a full seq2seq model (its decoder is ignored). Params are
  float32 numpy arrays: `T5Encoder(config).apply({"params": params}, ids, mask)`.
  Raises ValueError naming the first tensor that is missing or mis-shaped.
  """
  config = T5Config.from_hf(hf_checkpoint.read_config(directory), dtype=dtype)
  reader = TensorReader(hf_checkpoint.read_tensors(directory), directory)
  params = t5_params_from_hf(config, reader)
  unused = reader.unused()
  if unused:
    logging.info(
        "load_t5_encoder(%s): ignored %d tensors not in the encoder (e.g. %s).",
        directory,
        len(unused),
        unused[0],
    )
  return config, params


# ----------------------------------------------------------------------- CLIP


def load_clip_text(
    directory: str, max_length: int | None = None, dtype: str = "float32"
) -> tuple[CLIPTextConfig, dict]:
  """(config, params) of the CLIP text tower saved in a Hugging Face-format directory.

  Accepts a `CLIPTextModel` checkpoint or a full `CLIPModel` one (its vision tower
  and projections are ignored). If `max_length` exceeds the checkpoint's
  position table, the table is grown with `clip_text.extend_positions`. The params
  are plain float32 arrays for
  `CLIPTextEncoder(config).apply({"params": params}, ...)`.
  """
  config = CLIPTextConfig.from_hf(hf_checkpoint.read_config(directory), dtype=dtype)
  reader = TensorReader(hf_checkpoint.read_tensors(directory), directory, CLIP_CHECKPOINT_PREFIXES)
  params = clip_text_params_from_hf(config, reader)
  unused = reader.unused()
  if unused:
    logging.info(
        "load_clip_text: %d tensors of %s are not part of the text tower (e.g. %s).",
        len(unused),
        directory,
        unused[0],
    )
  if max_length is not None and max_length > config.max_position_embeddings:
    params, config = extend_positions(params, config, max_length)
  return config, params


def _clip_linear(reader: TensorReader, name: str, d_in: int, d_out: int, kernel_shape, bias_shape):
  """A biased torch Linear -> {"kernel", "bias"}: weight [out, in] -> Flax kernel
  [in, out], then reshaped (e.g. split into heads)."""
  kernel = reader.take(f"{name}.weight", (d_in, d_out), transpose=True)
  bias = reader.take(f"{name}.bias", (d_out,))
  return {
      "kernel": jnp.asarray(kernel.reshape(kernel_shape)),
      "bias": jnp.asarray(bias.reshape(bias_shape)),
  }


def _clip_layer_norm(reader: TensorReader, name: str, d: int) -> dict:
  return {
      "scale": jnp.asarray(reader.take(f"{name}.weight", (d,))),
      "bias": jnp.asarray(reader.take(f"{name}.bias", (d,))),
  }


def clip_layer_params_from_hf(
    cfg: CLIPTextConfig | CLIPVisionConfig, reader: TensorReader, prefix: str
) -> dict:
  """transformers' CLIPEncoderLayer tensors under `prefix` (e.g. "encoder.layers.3")
  -> the params of one `clip_text.CLIPEncoderLayer`, the block both towers share."""
  d, f, n, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
  attn = {
      name: _clip_linear(reader, f"{prefix}.self_attn.{name}", d, d, (d, n, dh), (n, dh))
      for name in ("q_proj", "k_proj", "v_proj")
  }
  attn["out_proj"] = _clip_linear(reader, f"{prefix}.self_attn.out_proj", d, d, (n, dh, d), (d,))
  return {
      "layer_norm1": _clip_layer_norm(reader, f"{prefix}.layer_norm1", d),
      "self_attn": attn,
      "layer_norm2": _clip_layer_norm(reader, f"{prefix}.layer_norm2", d),
      "mlp": {
          "fc1": _clip_linear(reader, f"{prefix}.mlp.fc1", d, f, (d, f), (f,)),
          "fc2": _clip_linear(reader, f"{prefix}.mlp.fc2", f, d, (f, d), (d,)),
      },
  }


def clip_text_params_from_hf(cfg: CLIPTextConfig, reader: TensorReader) -> dict:
  """transformers' CLIPTextModel tensors -> the CLIPTextEncoder parameter tree."""
  d = cfg.hidden_size
  params = {
      "embeddings": {
          "token_embedding": {
              "embedding": jnp.asarray(
                  reader.take("embeddings.token_embedding.weight", (cfg.vocab_size, d))
              )
          },
          "position_embedding": jnp.asarray(
              reader.take("embeddings.position_embedding.weight", (cfg.max_position_embeddings, d))
          ),
      }
  }
  for i in range(cfg.num_layers):
    params[f"layers_{i}"] = clip_layer_params_from_hf(cfg, reader, f"encoder.layers.{i}")
  params["final_layer_norm"] = _clip_layer_norm(reader, "final_layer_norm", d)
  return params


def load_clip_vision(directory: str, dtype: str = "float32") -> tuple[CLIPVisionConfig, dict]:
  """(config, params) of the CLIP vision tower saved in a Hugging Face-format directory.

  Accepts a `CLIPVisionModel` checkpoint, a `CLIPVisionModelWithProjection` one
  or a full `CLIPModel` one (MetaCLIP's included; its text tower and text
  projection are ignored). The visual projection is imported when the config
  has one (`CLIPVisionConfig.from_hf` says when); then the encoder's third
  output is the image embedding (CLIPModel.get_image_features). The params are
  plain float32 arrays for `CLIPVisionEncoder(config).apply({"params": params},
  pixels)`. Raises ValueError naming the first tensor that is missing or
  mis-shaped.
  """
  config = CLIPVisionConfig.from_hf(hf_checkpoint.read_config(directory), dtype=dtype)
  tensors = hf_checkpoint.read_tensors(directory)
  tower = TensorReader(tensors, directory, CLIP_VISION_CHECKPOINT_PREFIXES)
  top = TensorReader(tensors, directory)  # unprefixed: "visual_projection.weight"
  params = clip_vision_params_from_hf(config, tower, top)
  unused = sorted(set(tensors) - tower.used - top.used)
  if unused:
    logging.info(
        "load_clip_vision: %d tensors of %s are not part of the vision tower (e.g. %s).",
        len(unused),
        directory,
        unused[0],
    )
  return config, params


def clip_vision_params_from_hf(
    cfg: CLIPVisionConfig, reader: TensorReader, projection_reader: TensorReader | None = None
) -> dict:
  """transformers' CLIP vision tensors -> the CLIPVisionEncoder parameter tree.

  `reader` holds the tower's tensors (its prefix "vision_model." or "");
  `projection_reader` the unprefixed "visual_projection.weight", read only when
  cfg.projection_dim > 0 (default: `reader`).
  """
  d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
  # torch Conv2d weight [D, C, p, p] -> kernel [(row, col, channel), D], the order
  # in which CLIPVisionEmbeddings flattens a patch.
  conv = reader.take("embeddings.patch_embedding.weight", (d, c, p, p))
  params = {
      "embeddings": {
          "patch_embedding": {
              "kernel": jnp.asarray(conv.transpose(2, 3, 1, 0).reshape(p * p * c, d))
          },
          "class_embedding": jnp.asarray(reader.take("embeddings.class_embedding", (d,))),
          "position_embedding": jnp.asarray(
              reader.take("embeddings.position_embedding.weight", (1 + cfg.grid_size**2, d))
          ),
      },
      "pre_layrnorm": _clip_layer_norm(reader, "pre_layrnorm", d),
  }
  for i in range(cfg.num_layers):
    params[f"layers_{i}"] = clip_layer_params_from_hf(cfg, reader, f"encoder.layers.{i}")
  params["post_layernorm"] = _clip_layer_norm(reader, "post_layernorm", d)
  if cfg.projection_dim:
    top = projection_reader or reader
    params["visual_projection"] = {
        "kernel": jnp.asarray(
            top.take("visual_projection.weight", (d, cfg.projection_dim), transpose=True)
        )
    }
  return params
