"""Text conditioning: a tokenizer on the host and an encoder module on the device.

Every text encoder is a pair: a tokenizer that turns prompts into fixed-length
`(ids [B, L] int32, mask [B, L] bool)` in the data pipeline, and a Linen module that
maps them to embeddings `[B, L, D]` inside the jitted step. Pretrained frozen
encoders (UL2, MetaCLIP, ByT5) plug in the same way with their weights in the
`frozen` collection; until they land, `small` is a word-level transformer trained
from scratch with the diffusion model, enough for the synthetic shapes captions.

Prompts longer than `max_length` tokens are truncated from the end; the tokenizer
counts how often that happened so the trainer can report it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgjax.models.attention import attention
from mgjax.models.layers import dense, logical_init

PAD_ID = 0
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


class WordTokenizer:
  """Lower-cased words and punctuation hashed into `vocab_size - 1` buckets.

  Hashing needs no vocabulary file, so any prompt tokenizes; distinct words collide
  with probability ~ words / vocab_size, which is negligible for small vocabularies
  like the shapes captions.
  """

  def __init__(self, vocab_size: int, max_length: int):
    if vocab_size < 2 or max_length < 1:
      raise ValueError(f"WordTokenizer needs vocab_size >= 2 and max_length >= 1; got "
                       f"{vocab_size} and {max_length}.")
    self.vocab_size = vocab_size
    self.max_length = max_length
    self.num_truncated = 0

  def words(self, prompt: str) -> list[str]:
    return _WORD.findall(prompt.lower())

  def token_id(self, word: str) -> int:
    return 1 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 1)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """prompts -> (ids [B, L] int32, mask [B, L] bool); L = max_length."""
    if isinstance(prompts, str):
      raise TypeError("WordTokenizer takes a list of prompts, not one string.")
    ids = np.full((len(prompts), self.max_length), PAD_ID, np.int32)
    for i, prompt in enumerate(prompts):
      words = self.words(prompt)
      if len(words) > self.max_length:
        self.num_truncated += 1
        words = words[:self.max_length]
      ids[i, :len(words)] = [self.token_id(w) for w in words]
    return ids, ids != PAD_ID


class EncoderBlock(nn.Module):
  """Pre-norm bidirectional transformer block over the prompt's tokens."""
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    # x: [B, L, D]; mask: [B, L]
    b, length, d = x.shape
    head_dim = d // self.num_heads
    proj = lambda features, axes, name, num_inputs=1: dense(
        features, axes, name, self.dtype, jnp.float32, num_inputs=num_inputs)
    h = nn.RMSNorm(dtype=self.dtype, name="attention_norm")(x)
    q, k, v = (proj((self.num_heads, head_dim), ("embed", "heads", "kv"), name)(h)
               for name in ("query", "key", "value"))  # each [B, L, N, Dh]
    out = attention(q, k, v, mask=mask[:, None, None, :])
    x = x + proj(d, ("heads", "kv", "embed"), "out", num_inputs=2)(out)
    h = nn.RMSNorm(dtype=self.dtype, name="mlp_norm")(x)
    h = nn.gelu(proj(self.mlp_dim, ("embed", "mlp"), "mlp_in")(h))
    return x + proj(d, ("mlp", "embed"), "mlp_out")(h)


class SmallTextEncoder(nn.Module):
  """Token embedding + a few transformer blocks: ids [B, L] -> [B, L, D]."""
  vocab_size: int
  max_length: int
  embed_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed",
                 embedding_init=logical_init(nn.initializers.normal(1.0), ("vocab", "embed")))(ids)
    position = self.param("position", logical_init(nn.initializers.normal(0.02),
                                                   ("seq", "embed")),
                          (self.max_length, self.embed_dim))
    x = x + position[:ids.shape[1]].astype(x.dtype)
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, 4 * self.embed_dim, self.dtype, name=f"block_{i}")(x, mask)
    x = nn.RMSNorm(dtype=self.dtype, name="final_norm")(x)
    return jnp.where(mask[..., None], x, 0.0)  # [B, L, D]; padding positions zeroed


def make_text_encoder(config) -> tuple[WordTokenizer, nn.Module]:
  """(tokenizer, encoder module) for config.text_encoder; raises on an unknown name."""
  if config.name != "small":
    raise ValueError(f"Unknown text encoder {config.name!r}; available: 'small'. The "
                     "pretrained UL2 / MetaCLIP / ByT5 encoders are not in mgjax yet.")
  tokenizer = WordTokenizer(config.vocab_size, config.max_length)
  encoder = SmallTextEncoder(config.vocab_size, config.max_length, config.embed_dim,
                             config.num_layers, config.num_heads)
  return tokenizer, encoder
