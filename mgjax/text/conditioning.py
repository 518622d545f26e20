"""The text path of the diffusion models: prompts -> per-encoder token embeddings.

Movie Gen conditions on several text encoders at once (UL2, long-prompt MetaCLIP,
ByT5). `TextConditioner` builds them from the `text` config section, tokenises
prompts for each on the host, and embeds tokens inside the jitted step. The model
then projects every encoder to its own width, adds a LayerNorm and concatenates
them along the sequence (mgjax/models/dit.py, `text_projection_<name>`).

An encoder entry in the config:

    kind        "t5" (T5 v1.0/v1.1, UL2, ByT5, UMT5) | "clip" (CLIP text tower)
    path        a Hugging Face directory (config.json, weights, tokenizer); "" for a
                randomly initialised encoder described by `model`
    model       HF-style config keys of a random encoder (ignored when `path` is set)
    tokenizer   "" (the one in `path`) | "byte" (ByT5's byte tokenizer, no files) |
                "words" (each word hashed to one of the model's vocab_size ids, no files)
    max_length  tokens per prompt; longer prompts are truncated and counted
    source      "prompt" | "visual_text" (only the quoted spans: ByT5)
    trainable   False: frozen, its weights in the state's `frozen` tree
    dtype       compute dtype ("float32" | "bfloat16"); weights load as float32

Batches carry `<name>_ids` and `<name>_mask` per encoder, or for a frozen encoder
whose output was precomputed (mgjax/data/latent_shards.py), `<name>_emb` and
`<name>_mask`. Classifier-free guidance
drops a prompt by clearing its masks: the model then attends to no text token at all,
the null condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mgjax.models import clip_text, t5
from mgjax.text import hf_import
from mgjax.text.hf_checkpoint import read_config
from mgjax.text.prompts import SOURCES, encoder_text
from mgjax.text.tokenizers import BYTE, WORDS, PromptTokenizer, load_hf_tokenizer

KINDS = ("t5", "clip")
TOKENIZERS = ("", BYTE, WORDS)
ENCODER_KEYS = {"kind", "path", "model", "tokenizer", "max_length", "source", "trainable", "dtype"}


@dataclasses.dataclass
class Encoder:
  """One text encoder: its module, its tokenizer and where its weights come from."""

  name: str
  kind: str
  module: nn.Module
  tokenizer: PromptTokenizer
  source: str
  trainable: bool
  path: str
  width: int  # output embedding width

  def embed(self, params, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L] tokens -> [B, L, width] token embeddings (CLIP: its last hidden state)."""
    out = self.module.apply({"params": params}, ids, mask)
    return out[0] if self.kind == "clip" else out


def _model_config(name: str, spec) -> tuple[Any, str]:
  """(mgjax model config, where it came from) of one encoder entry."""
  config_cls = t5.T5Config if spec.kind == "t5" else clip_text.CLIPTextConfig
  if spec.path:
    hf = read_config(spec.path)
    model_config = config_cls.from_hf(hf, dtype=spec.dtype)
    if spec.kind == "clip" and spec.max_length > model_config.max_position_embeddings:
      model_config = dataclasses.replace(model_config, max_position_embeddings=spec.max_length)
    return model_config, spec.path
  model = dict(spec.get("model", None) or {})
  if not model:
    raise ValueError(
        f"Text encoder {name!r} has neither a path nor a model: set "
        f"text.encoders.{name}.path to a Hugging Face directory (config.json, "
        f"weights, tokenizer), or text.encoders.{name}.model to HF-style config "
        f"keys for a randomly initialised encoder."
    )
  return config_cls.from_hf(model, dtype=spec.dtype), "random init"


def make_encoder(name: str, spec) -> Encoder:
  unknown = set(spec.keys()) - ENCODER_KEYS
  if unknown:
    raise ValueError(
        f"Unknown keys {sorted(unknown)} in text.encoders.{name}; the keys are "
        f"{sorted(ENCODER_KEYS)}."
    )
  if spec.kind not in KINDS:
    raise ValueError(f"text.encoders.{name}.kind is {spec.kind!r}; use one of {KINDS}.")
  if spec.source not in SOURCES:
    raise ValueError(f"text.encoders.{name}.source is {spec.source!r}; use one of {SOURCES}.")
  if spec.tokenizer not in TOKENIZERS:
    raise ValueError(
        f"text.encoders.{name}.tokenizer is {spec.tokenizer!r}; use one of "
        f'{TOKENIZERS} ("": the one in the encoder\'s path).'
    )
  tokenizer_kind = spec.tokenizer or ("" if spec.path else BYTE)
  model_config, origin = _model_config(name, spec)
  if spec.kind == "t5":
    module, width = t5.T5Encoder(model_config), model_config.d_model
  else:
    module, width = clip_text.CLIPTextEncoder(model_config), model_config.hidden_size
  vocab = model_config.vocab_size
  tokenizer = PromptTokenizer(
      load_hf_tokenizer(tokenizer_kind, spec.path, vocab), spec.max_length, name
  )
  if len(tokenizer.hf) > vocab:
    raise ValueError(
        f"Text encoder {name!r}: its tokenizer has {len(tokenizer.hf)} tokens but "
        f"the model's vocab_size is {vocab}; they must come from the same model."
    )
  logging.info(
      "Text encoder %s: %s, %s, width %d, max_length %d, reads the %s, %s.",
      name,
      spec.kind,
      origin,
      width,
      spec.max_length,
      spec.source,
      "trainable" if spec.trainable else "frozen",
  )
  return Encoder(
      name, spec.kind, module, tokenizer, spec.source, bool(spec.trainable), spec.path, width
  )


class TextConditioner:
  """Every text encoder of a `text` config section, in name order."""

  def __init__(self, section):
    if not section.encoders:
      raise ValueError("text.encoders is empty; a text-conditioned model needs at least one.")
    self.encoders = [make_encoder(name, spec) for name, spec in sorted(section.encoders.items())]

  # ---------------------------------------------------------------- host side
  def token_specs(
      self, batch_size: int, precomputed: Sequence[str] = ()
  ) -> dict[str, jax.ShapeDtypeStruct]:
    """Batch entries of the text: ids and mask, or (`precomputed`) embeddings and mask."""
    specs = {}
    for e in self.encoders:
      shape = (batch_size, e.tokenizer.max_length)
      if e.name in precomputed:
        specs[f"{e.name}_emb"] = jax.ShapeDtypeStruct(shape + (e.width,), jnp.float32)
      else:
        specs[f"{e.name}_ids"] = jax.ShapeDtypeStruct(shape, jnp.int32)
      specs[f"{e.name}_mask"] = jax.ShapeDtypeStruct(shape, jnp.bool_)
    return specs

  @property
  def precomputable(self) -> list[str]:
    """Encoders whose outputs never change: frozen, with weights from a path (a random
    frozen encoder is made at init, so its outputs cannot be computed ahead)."""
    return [e.name for e in self.encoders if not e.trainable and e.path]

  def tokenize(self, prompts: Sequence[str], skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """{<name>_ids: [B, L_name] int32, <name>_mask: [B, L_name] bool} for every encoder
    not in `skip`."""
    tokens = {}
    for e in self.encoders:
      if e.name in skip:
        continue
      ids, mask = e.tokenizer([encoder_text(p, e.source) for p in prompts])
      tokens[f"{e.name}_ids"], tokens[f"{e.name}_mask"] = ids, mask
    return tokens

  @property
  def num_truncated(self) -> dict[str, int]:
    return {e.name: e.tokenizer.num_truncated for e in self.encoders}

  def truncation_report(self) -> str:
    """'' or a line naming each encoder that truncated prompts, with its limit."""
    parts = [
        f"{e.name}: {e.tokenizer.num_truncated} (max {e.tokenizer.max_length} tokens)"
        for e in self.encoders
        if e.tokenizer.num_truncated
    ]
    return "Prompts truncated per text encoder: " + ", ".join(parts) if parts else ""

  # -------------------------------------------------------------- device side
  def init(self, rng: jax.Array) -> tuple[dict, dict]:
    """(trainable, frozen) encoder params {name: params}, randomly initialised."""
    trainable, frozen = {}, {}
    for i, e in enumerate(self.encoders):
      ids = jnp.zeros((1, e.tokenizer.max_length), jnp.int32)
      params = e.module.init(jax.random.fold_in(rng, i), ids, jnp.ones(ids.shape, bool))["params"]
      (trainable if e.trainable else frozen)[e.name] = params
    return trainable, frozen

  def pretrained(self) -> tuple[dict, dict]:
    """(trainable, frozen) {name: host params} of the encoders that have a path."""
    trainable, frozen = {}, {}
    for e in self.encoders:
      if not e.path:
        continue
      if e.kind == "t5":
        _, params = hf_import.load_t5_encoder(e.path)
      else:
        _, params = hf_import.load_clip_text(e.path, max_length=e.tokenizer.max_length)
      (trainable if e.trainable else frozen)[e.name] = params
    return trainable, frozen

  def embed(
      self,
      trainable: Mapping,
      frozen: Mapping,
      tokens: Mapping[str, jax.Array],
      keep: jax.Array | None = None,
      names: Sequence[str] | None = None,
  ) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{name: (emb [B, L, width], mask [B, L])} of the encoders `names` (default all);
    rows with keep False get no tokens. Precomputed `<name>_emb` entries are used as
    they are."""
    out = {}
    for e in self.encoders:
      if names is not None and e.name not in names:
        continue
      mask = tokens[f"{e.name}_mask"]
      if f"{e.name}_emb" in tokens:
        emb = tokens[f"{e.name}_emb"]
      else:  # frozen params are not differentiated: no grads
        params = (trainable if e.trainable else frozen)[e.name]
        emb = e.embed(params, tokens[f"{e.name}_ids"], mask)
      out[e.name] = (emb, mask if keep is None else mask & keep[:, None])
    return out

  def example_inputs(self, batch_size: int = 1) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Zero embeddings of every encoder's shape, to initialise the model that reads them."""
    return {
        e.name: (
            jnp.zeros((batch_size, e.tokenizer.max_length, e.width)),
            jnp.ones((batch_size, e.tokenizer.max_length), bool),
        )
        for e in self.encoders
    }
