"""A TFDS data set as pipeline records, read without TensorFlow.

Why: many captioned image (and some video) sets exist as TensorFlow Datasets.
Training must not depend on TensorFlow, and Grain needs random access by index.
TFDS gives both through `tfds.data_source`, but only for sets prepared in a
random-access file format (array_record; TFRecord has no random access):

    tfds build <name> --data_dir=DIR --file_format=array_record
    # or in Python:
    tfds.builder(name, data_dir=DIR).download_and_prepare(file_format="array_record")

How: `TfdsRecords` opens the prepared split (`builder.as_data_source`, what
`tfds.data_source(..., download=False)` does) and turns example i into the record
`load_pixels` (mgjax/data/examples.py) takes: decoded "pixels", a str "caption" and
an "id" that names the example in bad-input reports. It never downloads or prepares.

TensorFlow-free limits of TFDS 4.9: image features decode with PIL; a video stored
as `tfds.features.Sequence(tfds.features.Image(...))` works, but a
`tfds.features.Video` feature cannot even be rebuilt from features.json without
TensorFlow (its constructor calls tf.dtypes), which `TfdsRecords` reports plainly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

PREPARE_HINT = (
    "prepare it in array_record format first: `tfds build {name} --data_dir={dir} "
    "--file_format=array_record`, or in Python tfds.builder({name!r}, data_dir="
    '{dir!r}).download_and_prepare(file_format="array_record")'
)


class TfdsRecords(Sequence):
  """Records of one split of a prepared TFDS data set, read lazily by index.

  media_key names an image feature ([H, W, 1 or 3] uint8) or a video feature stored
  as a sequence of such images ([T, H, W, 1 or 3]); caption_key a text feature.
  Everything is checked when the records are made, so a wrong name fails at start-up
  rather than in a loader thread.

  Pickling keeps only the arguments: each Grain worker process reopens the split
  itself on first use, so no file reader is shared between processes.
  """

  def __init__(
      self,
      name: str,
      split: str = "train",
      data_dir: str | None = None,
      media_key: str = "image",
      caption_key: str = "caption",
  ):
    self.name = name
    self.split = split
    self.data_dir = data_dir
    self.media_key = media_key
    self.caption_key = caption_key
    self._source = self._open()
    self._len = len(self._source)

  def _open(self):
    """The split's random-access data source, its features checked."""
    shown_dir = self.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    hint = PREPARE_HINT.format(name=self.name, dir=shown_dir)
    try:
      builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise FileNotFoundError(
          f"TFDS data set {self.name!r} is neither prepared in data_dir "
          f"{shown_dir} nor a registered TFDS builder; {hint}."
      ) from e
    except ModuleNotFoundError as e:
      if e.name != "tensorflow":
        raise
      raise ImportError(
          f"TFDS data set {self.name!r} has a feature TFDS cannot load without TensorFlow "
          "(tfds.features.Video does this); install tensorflow-cpu to read it, or prepare "
          "the frames as tfds.features.Sequence(tfds.features.Image(...))."
      ) from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS data set {self.name!r} is not prepared in data_dir "
          f"{shown_dir} (no {builder.data_dir}); {hint}."
      )
    file_format = builder.info.file_format
    if file_format not in tfds.core.FileFormat.with_random_access():
      raise FileNotFoundError(
          f"TFDS data set {self.name!r} in {builder.data_dir} is stored "
          f"as {file_format}, which has no random access; {hint}."
      )
    features = builder.info.features
    self._check_features(features)
    # Other images are left encoded: decoding them would only cost time. (Not sequences:
    # TFDS's numpy decoding cannot skip those.)
    skip = {
        k: tfds.decode.SkipDecoding()
        for k, f in features.items()
        if k not in (self.media_key, self.caption_key) and isinstance(f, tfds.features.Image)
    }
    return builder.as_data_source(split=self.split, decoders=skip or None)

  def _check_features(self, features) -> None:
    listing = "; ".join(f"{k}: {type(f).__name__}{tuple(f.shape)}" for k, f in features.items())
    frame = _frame_feature(features[self.media_key]) if self.media_key in features else None
    if frame is None or np.dtype(frame.np_dtype) != np.uint8 or frame.shape[-1] not in (1, 3):
      raise ValueError(
          f"media_key={self.media_key!r} is not a uint8 image ([H, W, 1|3]) or "
          f"video ([T, H, W, 1|3]) feature of TFDS data set {self.name!r}; its "
          f"features are {listing}."
      )
    caption = features[self.caption_key] if self.caption_key in features else None
    if (
        caption is None
        or tuple(caption.shape) != ()
        or np.dtype(caption.np_dtype).kind not in "OSU"
    ):
      raise ValueError(
          f"caption_key={self.caption_key!r} is not a text feature of TFDS data "
          f"set {self.name!r}; its features are {listing}."
      )

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict:
    """{"pixels": uint8 [H, W, 3] or [T, H, W, 3], "caption": str, "id": str}."""
    i = int(i)
    if not -self._len <= i < self._len:
      raise IndexError(f"Example {i} of {self._len} in tfds:{self.name}/{self.split}.")
    i %= self._len
    if self._source is None:
      self._source = self._open()
    example = self._source[i]
    pixels = np.asarray(example[self.media_key], np.uint8)  # a video decodes to a list of frames
    if pixels.shape[-1] == 1:
      pixels = np.repeat(pixels, 3, axis=-1)  # grey [..., 1] -> [..., 3]
    caption = example[self.caption_key]
    caption = caption.item() if isinstance(caption, np.ndarray) else caption
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8", errors="replace")
    return {"pixels": pixels, "caption": str(caption), "id": f"tfds:{self.name}/{self.split}[{i}]"}

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_source": None}


def _frame_feature(feature):
  """The per-frame Image feature of an image or video feature, else None."""
  if isinstance(feature, tfds.features.Image):
    return feature
  if isinstance(feature, tfds.features.Sequence) and isinstance(
      feature.feature, tfds.features.Image
  ):
    return feature.feature
  return None
