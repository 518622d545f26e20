"""Imports Hugging Face text-encoder checkpoints into mgjax parameter trees.

The encoders themselves (mgjax/models/t5.py, mgjax/models/clip_text.py) are pure
Flax modules and read no files; this module reads a directory written by
transformers' `save_pretrained` (through mgjax/text/hf_checkpoint.py) and maps its
tensor names onto their parameters:

  * `load_t5_encoder`: a T5EncoderModel / UMT5EncoderModel, or a full seq2seq
    T5-family model (its decoder is ignored), for `t5.T5Encoder`;
  * `load_clip_text`: a CLIPTextModel, or a full CLIPModel (its vision tower and
    projections are ignored), for `clip_text.CLIPTextEncoder`, its position table
    optionally grown to a longer `max_length`.

`t5_params_from_hf` and `clip_text_params_from_hf` do the name mapping alone, from
tensors already read into a `TensorReader`.
"""

from __future__ import annotations

import jax.numpy as jnp
from absl import logging

from mgjax.models.clip_text import CLIPTextConfig, extend_positions
from mgjax.models.t5 import T5Config
from mgjax.text import hf_checkpoint
from mgjax.text.hf_checkpoint import TensorReader

# Prefixes of CLIP text-tower tensors: both a CLIPTextModel and a CLIPModel
# checkpoint name them "text_model.*"; "" takes a bare state dict of the tower.
CLIP_CHECKPOINT_PREFIXES = ("text_model.", "")


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


def clip_text_params_from_hf(cfg: CLIPTextConfig, reader: TensorReader) -> dict:
  """transformers' CLIPTextModel tensors -> the CLIPTextEncoder parameter tree."""
  d, f, n, dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim

  def linear(name: str, d_in: int, d_out: int, kernel_shape, bias_shape) -> dict:
    # torch Linear weight [out, in] -> Flax kernel [in, out], then split heads.
    kernel = reader.take(f"{name}.weight", (d_in, d_out), transpose=True)
    bias = reader.take(f"{name}.bias", (d_out,))
    return {
        "kernel": jnp.asarray(kernel.reshape(kernel_shape)),
        "bias": jnp.asarray(bias.reshape(bias_shape)),
    }

  def layer_norm(name: str) -> dict:
    return {
        "scale": jnp.asarray(reader.take(f"{name}.weight", (d,))),
        "bias": jnp.asarray(reader.take(f"{name}.bias", (d,))),
    }

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
    prefix = f"encoder.layers.{i}"
    attn = {
        name: linear(f"{prefix}.self_attn.{name}", d, d, (d, n, dh), (n, dh))
        for name in ("q_proj", "k_proj", "v_proj")
    }
    attn["out_proj"] = linear(f"{prefix}.self_attn.out_proj", d, d, (n, dh, d), (d,))
    params[f"layers_{i}"] = {
        "layer_norm1": layer_norm(f"{prefix}.layer_norm1"),
        "self_attn": attn,
        "layer_norm2": layer_norm(f"{prefix}.layer_norm2"),
        "mlp": {
            "fc1": linear(f"{prefix}.mlp.fc1", d, f, (d, f), (f,)),
            "fc2": linear(f"{prefix}.mlp.fc2", f, d, (f, d), (d,)),
        },
    }
  params["final_layer_norm"] = layer_norm("final_layer_norm")
  return params
