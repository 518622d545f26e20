"""Records of the configured data set, and the loader options, from `config.data`.

Every model family reads its data through here, so the sources (`data.name`) and
the pipeline knobs mean the same everywhere; `configs.data_config` lists the keys.
"""

from __future__ import annotations

import functools
import os

from mgjax.data import shapes, shapes_identity
from mgjax.data.pipeline import LoaderOptions
from mgjax.data.records import Records, read_image_folder, read_manifest
from mgjax.parallel import distributed

SOURCES = ("shapes", "shapes_identity", "manifest", "image_folder", "tfds")


def data_dir(data_config, workdir: str) -> str:
  return data_config.dir or os.path.join(workdir, "shapes")


def prepare_manifest(data_config, workdir: str) -> str:
  """Path of the manifest to train on; makes a synthetic data set if it is absent."""
  name = data_config.name
  if name in ("shapes", "shapes_identity"):  # mgjax/data/shapes.py, shapes_identity.py
    s = data_config.shapes
    size = dict(num_frames=s.num_frames, height=s.height, width=s.width)
    common = dict(num_videos=s.num_videos, seed=s.seed, fps=s.fps, paths=s.paths, **size)
    if name == "shapes":
      ensure = functools.partial(shapes.ensure_dataset, num_images=s.num_images)
    else:
      ensure = functools.partial(shapes_identity.ensure_dataset, reference_size=s.reference_size)
    return distributed.first_process_first(
        name, lambda: ensure(data_dir(data_config, workdir), **common)
    )
  if name == "manifest":
    return os.path.join(data_dir(data_config, workdir), "manifest.jsonl")
  raise ValueError(f"data.name={name!r} has no manifest; use one of {SOURCES}.")


def read_records(data_config, workdir: str, split: str) -> Records:
  """The usable records of a split, and the skipped ones counted by kind.

  Image folders and TFDS sets have no split field: their records are all "train".
  """
  name = data_config.name
  if name not in SOURCES:
    raise ValueError(f"Unknown data.name {name!r}; use one of {SOURCES}.")
  if name == "image_folder":
    return read_image_folder(data_dir(data_config, workdir)) if split == "train" else Records([])
  if name == "tfds":
    from mgjax.data.tfds_source import TfdsRecords  # tensorflow_datasets imports slowly

    t = data_config.tfds
    if split != "train":
      return Records([])
    return Records(
        TfdsRecords(
            t.name,
            split=t.split,
            data_dir=t.data_dir or None,
            media_key=t.media_key,
            caption_key=t.caption_key,
        )
    )
  manifest = prepare_manifest(data_config, workdir)
  records = read_manifest(manifest, split=split)
  images = os.path.join(os.path.dirname(manifest), shapes.IMAGES_MANIFEST)
  if name == "shapes" and os.path.exists(images):
    records = records + read_manifest(images, split=split)
  return records


def loader_options(data_config, seed: int) -> LoaderOptions:
  return LoaderOptions(
      seed=seed,
      num_threads=data_config.num_threads,
      num_workers=data_config.num_workers,
      prefetch=data_config.prefetch,
      max_skip_fraction=data_config.max_skip_fraction,
  )
