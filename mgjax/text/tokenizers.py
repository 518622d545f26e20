"""Fixed-length tokenisation of prompts for one text encoder, truncation counted.

Every encoder's tokens enter the jitted step as `(ids [B, L] int32, mask [B, L] bool)`
with L its `max_length`, so a batch always has one shape. Tokenisers come from
`transformers`: the byte-level ByT5 tokenizer needs no files (the tiny default
encoders use it too), while T5/UL2 and CLIP tokenizers are read from the encoder's
own Hugging Face directory.

A prompt longer than `max_length` keeps its first tokens and its closing special
token (T5's and CLIP's end-of-sequence, which CLIP pools from), and is counted in
`num_truncated` so the trainer and sampler can report it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

BYTE = "byte"  # the ByT5 byte-level tokenizer, no files needed


def load_hf_tokenizer(kind: str, path: str):
  """A `transformers` tokenizer: "byte" or the one saved in directory `path`."""
  import transformers  # pylint: disable=import-outside-toplevel
  if kind == BYTE:
    return transformers.ByT5Tokenizer()
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Tokenizer directory {path!r} does not exist; give the encoder's "
                            f"Hugging Face directory, or tokenizer='byte'.")
  try:
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"No tokenizer in {path!r} ({e}). Save it beside the weights with "
        f"tokenizer.save_pretrained({path!r}), or set the encoder's tokenizer='byte'.") from e


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
      return ids[:self.max_length - 1] + ids[-1:]
    return ids[:self.max_length]

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      raise TypeError(f"Tokenizer {self.name!r} takes a list of prompts, not one string.")
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, text in enumerate(texts):
      if not text:
        continue
      row = self._ids(text)
      ids[i, :len(row)] = row
      mask[i, :len(row)] = True
    return ids, mask
