"""Training examples as records: a JSONL manifest, or a folder of captioned images.

A record is a dict:

    {"video": path} or {"image": path}   absolute path of the media file
    "caption": str                       non-empty
    "split": str                         optional; "train" when absent
    "width", "height", "num_frames": int, "fps": number
                                         optional metadata; when a video lacks them
                                         the pipeline probes the file for them

Manifest paths are relative to the manifest's folder (or absolute). A line that is
not a usable record (invalid JSON, a field of the wrong type, no media path, an
empty caption) is never fatal: it is skipped, counted under its kind in `Records.
skipped` and logged with file:line, so the pipeline can report it and stop only if
too much of the data set is bad.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator

from absl import logging

# field -> accepted types (bool is excluded from the numeric fields below)
FIELD_TYPES = {
    "video": str,
    "image": str,
    "caption": str,
    "split": str,
    "width": int,
    "height": int,
    "num_frames": int,
    "fps": (int, float),
}
RECORD_KINDS = ("bad_json", "bad_field", "no_media", "empty_caption")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass
class Records:
  """Usable records and the count of skipped lines by kind (RECORD_KINDS)."""

  records: list[dict]
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __add__(self, other: Records) -> Records:
    return Records(self.records + other.records, self.skipped + other.skipped)


def check_record(record) -> tuple[str, str] | None:
  """None for a usable record, else (kind, what is wrong)."""
  if not isinstance(record, dict):
    return "bad_json", f"a JSON object is needed, got {type(record).__name__}"
  for field, types in FIELD_TYPES.items():
    value = record.get(field)
    if value is None:
      continue
    if not isinstance(value, types) or isinstance(value, bool):
      return "bad_field", f"field {field!r} is {value!r}; it must be {_type_name(types)}"
    if field in ("width", "height", "num_frames", "fps") and value <= 0:
      return "bad_field", f"field {field!r} is {value!r}; it must be positive"
  if not record.get("video") and not record.get("image"):
    return "no_media", "it has neither a 'video' nor an 'image' path"
  if not (record.get("caption") or "").strip():
    return "empty_caption", "its caption is missing or empty"
  return None


def _type_name(types) -> str:
  types = types if isinstance(types, tuple) else (types,)
  return " or ".join({str: "a string", int: "an integer", float: "a number"}[t] for t in types)


def read_manifest(path: str, split: str | None = None) -> Records:
  """Usable records of a JSONL manifest (optionally of one split), paths made absolute."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Manifest {path} does not exist; make one (one JSON object per "
        "line with a 'video' or 'image' path and a 'caption'), or use "
        "data.name='shapes' for the synthetic data set."
    )
  base = os.path.dirname(os.path.abspath(path))
  out = Records([])
  for line_number, record, json_error in manifest_lines(path):
    problem = ("bad_json", json_error) if json_error else check_record(record)
    if problem is None and split is not None and record.get("split", "train") != split:
      continue
    if problem is not None:
      out.skipped[problem[0]] += 1
      logging.warning("Skipping %s:%d (%s): %s.", path, line_number, *problem)
      continue
    for key in ("video", "image", "reference", "source"):
      if record.get(key):
        record[key] = os.path.join(base, record[key])
    out.records.append(record)
  return out


def manifest_lines(path: str) -> Iterator[tuple[int, object, str | None]]:
  """(line number, parsed JSON value or None, what is wrong or None) of each non-blank
  line of a JSONL file: one bad line never stops the reading."""
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_number, json.loads(line), None
      except json.JSONDecodeError as e:
        yield line_number, None, f"not valid JSON ({e})"


def read_image_folder(folder: str) -> Records:
  """Images of a folder (recursively), each captioned by the .txt file of the same stem.

  An image without a caption file, or with an empty one, is skipped as empty_caption.
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"Image folder {folder} does not exist; point data.dir at a folder "
        "of images with a caption .txt beside each."
    )
  out = Records([])
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      stem, extension = os.path.splitext(name)
      if extension.lower() not in IMAGE_EXTENSIONS:
        continue
      path = os.path.join(os.path.abspath(root), name)
      caption_path = os.path.join(root, stem + ".txt")
      caption = ""
      if os.path.exists(caption_path):
        with open(caption_path, encoding="utf-8", errors="replace") as f:
          caption = f.read().strip()
      if not caption:
        out.skipped["empty_caption"] += 1
        logging.warning("Skipping %s: no caption in %s.", path, caption_path)
        continue
      out.records.append({"image": path, "caption": caption})
  return out
