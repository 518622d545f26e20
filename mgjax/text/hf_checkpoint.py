"""Reads a Hugging Face-format model directory: config.json plus weight files.

Users bring pretrained text encoders as the directories `save_pretrained` writes:
`config.json` and either `model.safetensors` / `pytorch_model.bin` or their sharded
forms with a `*.index.json`. The importers in mgjax/text/hf_import.py turn those
tensors into mgjax parameter trees through `TensorReader`, which checks every
tensor's presence and shape and names the offending one when a directory does not
match its config. This lives outside mgjax/models, whose modules read no files.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
TORCH_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def read_config(directory: str) -> dict:
  """The model's config.json as a dict."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in {directory!r}; point the config at a "
        f"directory written by transformers' save_pretrained."
    )
  with open(path) as f:
    return json.load(f)


def _weight_files(directory: str) -> tuple[str, list[str]]:
  """('safetensors' | 'torch', files), preferring safetensors, following an index."""
  for kind, (single, index) in (("safetensors", SAFETENSORS_FILES), ("torch", TORCH_FILES)):
    index_path = os.path.join(directory, index)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      return kind, [os.path.join(directory, s) for s in shards]
    if os.path.isfile(os.path.join(directory, single)):
      return kind, [os.path.join(directory, single)]
  others = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if others:
    return "safetensors", others
  raise FileNotFoundError(
      f"No weights in {directory!r}: expected {SAFETENSORS_FILES[0]}, {TORCH_FILES[0]} or "
      f"a sharded *.index.json beside config.json."
  )


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the directory's weight files, as float32/int numpy arrays."""
  kind, files = _weight_files(directory)
  tensors: dict[str, np.ndarray] = {}
  if kind == "safetensors":
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    for path in files:
      try:
        with safe_open(path, framework="numpy") as f:
          for name in f.keys():
            tensors[name] = f.get_tensor(name)
      except TypeError:  # bfloat16 has no numpy dtype: go through torch
        tensors.update(_torch_load(path, safetensors=True))
  else:
    for path in files:
      tensors.update(_torch_load(path, safetensors=False))
  return tensors


def _torch_load(path: str, safetensors: bool) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"Reading {path!r} needs PyTorch (pip install torch), or convert the "
        f"checkpoint to safetensors."
    ) from e
  if safetensors:
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

    state = load_file(path)
  else:
    state = torch.load(path, map_location="cpu", weights_only=True)
  return {
      name: t.float().numpy() if t.is_floating_point() else t.numpy() for name, t in state.items()
  }


class TensorReader:
  """Hands out a checkpoint's tensors by name, checking each one's shape.

  `take` raises a ValueError naming the tensor, the expected shape and the
  directory when a tensor is missing or has another shape, so a checkpoint that
  does not match its config fails on the first bad tensor, not with a broadcast
  error deep inside the model.
  """

  def __init__(self, tensors: dict[str, np.ndarray], source: str, prefixes: Sequence[str] = ("",)):
    self.tensors = tensors
    self.source = source
    self.used: set[str] = set()
    # Checkpoints of a bare encoder and of a full model name tensors differently
    # ("encoder.block..." vs "t5.encoder.block..."); the first prefix that has
    # tensors wins.
    self.prefix = next((p for p in prefixes if any(n.startswith(p) for n in tensors)), prefixes[0])

  def has(self, name: str) -> bool:
    return self.prefix + name in self.tensors

  def take(self, name: str, shape: Sequence[int], transpose: bool = False) -> np.ndarray:
    """Tensor `name` (after the prefix) of the given shape; `transpose` flips a 2D
    torch Linear weight [out, in] into a Flax kernel [in, out] (shape is Flax's)."""
    full = self.prefix + name
    expected = tuple(shape)
    stored = tuple(reversed(expected)) if transpose else expected
    if full not in self.tensors:
      raise ValueError(
          f"Checkpoint {self.source!r} is missing tensor {full!r} " f"(expected shape {stored})."
      )
    value = np.asarray(self.tensors[full])
    if value.shape != stored:
      raise ValueError(
          f"Tensor {full!r} in {self.source!r} has shape {value.shape}; "
          f"expected {stored} from the model config."
      )
    self.used.add(full)
    return np.ascontiguousarray(value.T if transpose else value).astype(np.float32)

  def unused(self) -> list[str]:
    """Tensors never taken (a full model's decoder, say): worth a log line."""
    return sorted(n for n in self.tensors if n not in self.used)
