"""Defaults every experiment config starts from.

Experiment files in `experiments/` call `base_config()` and fill in their model,
data and task sections. Everything here is a plain ConfigDict field, so any of it
can be overridden from the command line as `--config.train.num_steps=...`; unknown
keys are rejected because configs are loaded locked.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

# Logical axis -> mesh axes. Model code names only the logical axes on the left;
# docs/parallelism.md explains each. A mesh axis is used at most once per array, so
# an activation's "embed" stays whole when its "batch" already took fsdp.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("seq", "context"),  # residual-stream tokens (+ tensor with sequence_parallel)
    ("attn_seq", "context"),  # tokens inside attention and the MLP (never tensor)
    ("text_seq", None),  # text tokens: short, replicated over context
    ("frames", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
)


PARALLEL_DEFAULTS = dict(
    sequence_parallel=False,  # also split norms/residuals' tokens over tensor
    context_attention="all_gather",  # "all_gather" | "ring" (parallel/attention.py)
)


def parallel_settings(config: ml_collections.ConfigDict) -> dict:
  """config.parallel with its defaults filled in (configs saved before it existed)."""
  saved = config.get("parallel")
  return {**PARALLEL_DEFAULTS, **(saved.to_dict() if saved is not None else {})}


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = ""  # a name in mgjax.tasks.TASKS
  config.seed = 0

  # Mesh axis sizes within a slice / node (ICI, NVLink); -1 takes the remaining
  # devices. `dcn_mesh` multiplies them across slices / nodes (DCN, InfiniBand):
  # axis size = mesh x dcn_mesh. See mgjax/parallel/mesh.py and docs/parallelism.md.
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
  config.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, context=1, tensor=1))
  config.logical_axis_rules = [list(rule) for rule in DEFAULT_LOGICAL_AXIS_RULES]
  config.parallel = ml_collections.ConfigDict(PARALLEL_DEFAULTS)

  config.optimizer = ml_collections.ConfigDict(
      dict(
          learning_rate=1e-4,
          schedule="cosine",  # "cosine" | "constant" (both after linear warmup)
          warmup_steps=100,
          final_learning_rate_fraction=0.1,
          b1=0.9,
          b2=0.99,
          weight_decay=0.0,  # decoupled (AdamW); applied to >=2-D parameters only
          grad_clip_norm=1.0,  # 0 disables clipping
          skip_non_finite=0,  # N > 0: skip updates with a NaN/Inf loss or gradient, up
          # to N in a row; 0: stop the run at the first
      )
  )

  config.train = ml_collections.ConfigDict(
      dict(
          num_steps=1000,
          batch_size=8,  # global batch size across all devices and processes
          log_every=50,
          eval_every=500,  # 0: only at the end; -1: never
          checkpoint_every=500,
          keep_checkpoints=3,  # the latest N ...
          keep_checkpoints_every=0,  # ... plus every multiple of this step (0: none)
          ema_decay=0.0,  # > 0: keep an EMA of the weights; eval and sampling use it
          progress_bar=True,
          # Fine-tuning: a fresh run starts from another run's weights (its EMA when it
          # kept one). subtrees: "dest:source,..." params paths ("dit:dit", "dit/blocks:
          # dit/blocks"); "" takes every top-level subtree the two share. Parameters
          # only this run has keep their own init; a shape that differs is refused.
          init_from=ml_collections.ConfigDict(dict(workdir="", step=0, subtrees="")),
          # Earlier runs of a multi-stage recipe, (name, config) pairs trained first in
          # <workdir>/<name>, the first from init_from (when set), each next from the
          # one before, this run from the last (mgjax/recipe.py).
          recipe=(),
      )
  )
  return config


def data_config(**fields) -> ml_collections.ConfigDict:
  """The `data` section every family shares (mgjax/data/sources.py), plus `fields`."""
  data = ml_collections.ConfigDict(
      dict(
          # "shapes" (synthetic, made in `dir` if absent) | "shapes_identity" (shapes
          # with 16 identities, for PT2V) | "shapes_edit" (edit pairs, for the edit
          # task) | "manifest" (dir/manifest.jsonl) | "image_folder" (images with a
          # caption .txt each) | "tfds" (see `tfds`)
          name="shapes",
          dir="",  # default: <workdir>/shapes
          shapes=ml_collections.ConfigDict(
              dict(
                  num_videos=256,
                  seed=0,
                  fps=16,
                  num_frames=32,
                  height=64,
                  width=64,
                  num_images=64,
                  paths="random",
                  reference_size=32,  # shapes_identity: side of the reference images
              )
          ),  # paths: mgjax/data/shapes.py PATHS
          # A TFDS data set prepared in array_record format (no TensorFlow needed).
          tfds=ml_collections.ConfigDict(
              dict(name="", split="train", data_dir="", media_key="image", caption_key="caption")
          ),
          fps=16.0,  # resample clips to this rate; 0: each video's own rate ...
          min_fps=16.0,  # ... but at least this (the paper: original rate, >= 16)
          num_threads=4,  # Grain read threads per process
          num_workers=0,  # Grain worker processes (0: none, decode in threads)
          prefetch=4,  # batches read ahead
          max_skip_fraction=0.1,  # stop the run when more of the data is unusable
      )
  )
  data.update(fields)
  return data


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of "path/to/file.py:arg" (as given to --config), locked.

  Lets one stage name another's config, e.g. the text-to-video demo naming the TAE
  it trains first.
  """
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"Config file {path!r} (from {spec!r}) does not exist; paths "
        "are relative to the directory you launch from."
    )
  module_spec = importlib.util.spec_from_file_location(f"mgjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config
