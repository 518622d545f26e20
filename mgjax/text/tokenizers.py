"""Fixed-length tokenisation of prompts for one text encoder, truncation counted.

Every encoder's tokens enter the jitted step as `(ids [B, L] int32, mask [B, L] bool)`
with L its `max_length`, so a batch always has one shape. Tokenisers come from
`transformers`: the byte-level ByT5 tokenizer needs no files (the tiny default
encoders use it too), while T5/UL2 and CLIP tokenizers are read from the encoder's
own Hugging Face directory. For small encoders trained from scratch there is also
`HashedWordTokenizer` ("words"): no files, one token per word.

A prompt longer than `max_length` keeps its first tokens and its closing special
token (T5's and CLIP's end-of-sequence, which CLIP pools from), and is counted in
`num_truncated` so the trainer and sampler can report it.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence

import numpy as np

BYTE = "byte"  # the ByT5 byte-level tokenizer, no files needed
WORDS = "words"  # HashedWordTokenizer over the encoder's vocabulary, no files needed


class HashedWordTokenizer:
  """Lower-cased words and punctuation marks, each hashed (CRC32) to one id.

  For encoders trained from scratch with the model (the CPU demo): a byte tokenizer
  spreads a word over several tokens, which a tiny model learns to read slowly; here
  every word is one token to attend to. Any prompt tokenises, with no vocabulary file;
  distinct words may share an id (about n^2 / 2V pairs of n words in V ids). Ids 0-2
  are T5's pad, end-of-sequence and unknown; every text ends with the end-of-sequence
  id, which CLIP towers pool from. Implements the part of the `transformers`
  tokenizer interface that `PromptTokenizer` uses.
  """

  pad_token_id, eos_token_id, unk_token_id = 0, 1, 2
  all_special_ids = (0, 1, 2)

  def __init__(self, vocab_size: int):
    if vocab_size <= len(self.all_special_ids):
      raise ValueError(
          f"A words tokenizer needs a vocab_size above "
          f"{len(self.all_special_ids)}; got {vocab_size}."
      )
    self.vocab_size = vocab_size

  def __len__(self) -> int:
    return self.vocab_size

  def word_id(self, word: str) -> int:
    num_special = len(self.all_special_ids)
    return num_special + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - num_special)

  def __call__(self, text: str, add_special_tokens: bool = True, **unused) -> dict:
    del unused  # truncation, verbose: PromptTokenizer truncates itself
    ids = [self.word_id(w) for w in re.findall(r"\w+|[^\w\s]", text.lower())]
    return {"input_ids": ids + [self.eos_token_id] if add_special_tokens else ids}


def load_hf_tokenizer(kind: str, path: str, vocab_size: int = 0):
  """A tokenizer: "byte", "words" (hashed into `vocab_size` ids), or the one saved in
  directory `path`."""
  if kind == WORDS:
    return HashedWordTokenizer(vocab_size)
  import transformers  # pylint: disable=import-outside-toplevel

  if kind == BYTE:
    return transformers.ByT5Tokenizer()
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Tokenizer directory {path!r} does not exist; give the encoder's "
        f"Hugging Face directory, or tokenizer='byte' or 'words'."
    )
  try:
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"No tokenizer in {path!r} ({e}). Save it beside the weights with "
        f"tokenizer.save_pretrained({path!r}), or set the encoder's tokenizer='byte'."
    ) from e


class PromptTokenizer:
  """prompts -> (ids [B, L] int32, mask [B, L] bool) for one encoder.

  An empty text (a prompt with no visual text, for ByT5) gets no tokens at all:
  an all-False mask row, so the model sees nothing rather than a lone EOS.
  """

  def __init__(self, hf_tokenizer, max_length: int, name: str = "text"):
    if max_length < 2:
      raise ValueError(f"Text encoder {name!r}: max_length must be >= 2; got {max_length}.")
    self.hf = hf_tokenizer
    self.max_length = max_length
    self.name = name
    self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    self.num_truncated = 0

  def _ids(self, text: str) -> list[int]:
    ids = self.hf(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    if len(ids) <= self.max_length:
      return ids
    self.num_truncated += 1
    if ids[-1] in self.hf.all_special_ids:
      return ids[: self.max_length - 1] + ids[-1:]
    return ids[: self.max_length]

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError(f"Tokenizer {self.name!r} takes a list of prompts, not one string.")
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, text in enumerate(texts):
      if not text:
        continue
      row = self._ids(text)
      ids[i, : len(row)] = row
      mask[i, : len(row)] = True
    return ids, mask
