"""TFDS records: a tiny data set prepared here, without TensorFlow or downloads.

TFDS writes array_record without TensorFlow as long as nothing needs TF to encode:
numpy images go through tf.image.encode_png, so the generator hands over PIL images
(PNG-encoded by PIL, lossless) instead. tfds.features.Video needs TensorFlow even
to be constructed, so frames are stored as a Sequence of Images, which decodes to
the same [T, H, W, C] array.
"""

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mgjax.data.examples import ExampleSpec, LoadExample
from mgjax.data.pipeline import DataIterator, LoaderOptions, Stream
from mgjax.data.tfds_source import TfdsRecords

NAME = "mgjax_tiny_captions"
NUM, H, W, T = 12, 24, 40, 3


def pixels(k: int, channels: int = 3) -> np.ndarray:
  """Example k's image: uint8 [H, W, channels], different for every k."""
  return ((np.arange(H * W * channels).reshape(H, W, channels) + 37 * k) % 256).astype(np.uint8)


def frames(k: int) -> np.ndarray:
  return np.stack([pixels(100 + T * k + t) for t in range(T)])  # [T, H, W, 3]


class MgjaxTinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Unregistered: TfdsRecords finds it from its files, as it would a `tfds build` output."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file to find. TFDS 4.9.10 would look beside the defining package with
  # importlib_resources, which it only installs for Python < 3.9.
  code_path = None

  def _info(self):
    # DatasetInfo directly: dataset_info_from_configs wants a package folder of metadata.
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,  # keep generator order: example i is key i
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(H, W, 3)),
                "grey": tfds.features.Image(shape=(H, W, 1)),
                "frames": tfds.features.Sequence(tfds.features.Image(shape=(H, W, 3)), length=T),
                "caption": tfds.features.Text(),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for k in range(NUM):
      yield k, {
          "image": Image.fromarray(pixels(k)),
          "grey": Image.fromarray(pixels(k, 1)[..., 0]),
          "frames": [Image.fromarray(f) for f in frames(k)],
          "caption": f"example {k} é",
      }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  MgjaxTinyCaptions(data_dir=str(root)).download_and_prepare(file_format="array_record")
  return str(root)


def test_records_hold_what_was_written(data_dir):
  records = TfdsRecords(NAME, split="train", data_dir=data_dir)
  assert len(records) == NUM
  for i in range(NUM):
    record = records[i]
    assert record["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(record["pixels"], pixels(i))
    assert record["caption"] == f"example {i} é"
    assert record["id"] == f"tfds:{NAME}/train[{i}]"
  with pytest.raises(IndexError):
    records[NUM]  # pylint: disable=pointless-statement


def test_grey_images_and_videos(data_dir):
  grey = TfdsRecords(NAME, split="train", data_dir=data_dir, media_key="grey")
  np.testing.assert_array_equal(grey[5]["pixels"], np.repeat(pixels(5, 1), 3, axis=-1))
  videos = TfdsRecords(NAME, split="train", data_dir=data_dir, media_key="frames")
  assert videos[2]["pixels"].shape == (T, H, W, 3)
  np.testing.assert_array_equal(videos[2]["pixels"], frames(2))


def test_records_pickle(data_dir):
  records = TfdsRecords(NAME, split="train", data_dir=data_dir)
  copy = pickle.loads(pickle.dumps(records))
  assert len(copy) == NUM
  np.testing.assert_array_equal(copy[3]["pixels"], records[3]["pixels"])
  assert (copy[3]["caption"], copy[3]["id"]) == (records[3]["caption"], records[3]["id"])


def test_pipeline_batches(data_dir):
  records = TfdsRecords(NAME, split="train", data_dir=data_dir)
  spec = ExampleSpec(num_frames=1, height=16, width=16, scale_to=(16, 16))
  stream = Stream("img", len(records), LoadExample(records, spec), batch_size=4)
  iterator = DataIterator([stream], LoaderOptions(seed=0), finish=lambda b: b)
  captions = {f"example {k} é" for k in range(NUM)}
  for _ in range(3):
    batch = next(iterator)
    assert batch["pixels"].shape == (4, 1, 16, 16, 3) and batch["pixels"].dtype == np.uint8
    assert set(batch["caption"]) <= captions
  iterator.close()


def test_missing_data_set(tmp_path):
  with pytest.raises(FileNotFoundError, match="array_record") as e:
    TfdsRecords(NAME, split="train", data_dir=str(tmp_path))
  assert NAME in str(e.value) and str(tmp_path) in str(e.value) and "tfds build" in str(e.value)


def test_wrong_keys(data_dir):
  with pytest.raises(ValueError, match="media_key='video'.*caption: Text"):
    TfdsRecords(NAME, split="train", data_dir=data_dir, media_key="video")
  with pytest.raises(ValueError, match="caption_key='image'.*image: Image"):
    TfdsRecords(NAME, split="train", data_dir=data_dir, caption_key="image")
