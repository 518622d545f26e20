"""Precomputed TAE latents in ArrayRecord shards: written once, read by Grain.

A diffusion model trained on fixed latents need not run the TAE encoder on every
step (most of the cost on a CPU, a large share on accelerators). Layout:

    <dir>/fingerprint.json                  what made the latents (TAE, buckets, data)
    <dir>/<split>/<bucket>/shard-NNNNN.array_record   one msgpack record per example:
                                            {"latent": float [T', h, w, C], "caption": str,
                                             optionally "<encoder>_emb" [L, D] and
                                             "<encoder>_mask" [L] of frozen text encoders}
    <dir>/<split>/<bucket>/shard-NNNNN.json done marker: examples, skipped by kind, and
                                            per-channel sums for the latent statistics
    <dir>/<split>/<bucket>/plan.json        how many shards the bucket has

Shard k of a bucket holds records [k * shard_size, (k + 1) * shard_size) of that
bucket's record list; process p of P writes the shards with k % P == p. A shard
counts only once its .json exists (written after the .array_record is renamed into
place), so a killed precompute resumes by redoing unfinished shards.

Re-encoding with another fingerprint (another TAE, data set or bucket table) never
deletes finished latents before their replacements exist: check_fingerprint points
`<dir>/.pending.json` at a staging set `<dir>/.staging-<hash>/` (the same layout,
keyed by the new fingerprint, so a killed re-encode resumes its own work there) and
write_bucket writes into it, while readers keep reading the old set. Once every
planned shard of the staging set is done, commit_staged (called by LatentShards
before it reads, or by the writer) swaps it in with renames, under a lock and
after a journal `<dir>/.commit.json`, so a commit killed halfway is finished by the
next process that looks; only then are the old shards removed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import glob
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence

import flax.serialization
import grain
import numpy as np
import tqdm
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter

from mgjax.data.buckets import Bucket
from mgjax.data.examples import ExampleSpec, load_pixels, tagged_caption
from mgjax.data.video import MediaDecodeError

FINGERPRINT_FILE = "fingerprint.json"


def bucket_spec(
    bucket: Bucket, fps: float | None, min_fps: float, random_clip: bool
) -> ExampleSpec:
  """Pixels of a bucket's example: scaled to cover its size, centre-cropped; the clip
  starts at a random time (random_clip) or at the start."""
  return ExampleSpec(
      bucket.num_frames,
      bucket.height,
      bucket.width,
      fps=fps,
      min_fps=min_fps,
      scale_to=(bucket.height, bucket.width),
      random_crop=False,
      random_start=random_clip,
  )


def shard_dir(root: str, split: str, bucket: str) -> str:
  return os.path.join(root, split, bucket)


PLAN_FILE = "plan.json"
_PENDING_FILE = ".pending.json"  # {"dir": staging folder name}: the set being built
_JOURNAL_FILE = ".commit.json"  # a swap in progress (see _finish_commit)
_LOCK_DIR = ".commit.lock"
_STAGING_PREFIX = ".staging-"
_RETIRED_PREFIX = ".retired-"
_LOCK_STALE_S = 120.0  # the lock is held for renames and file checks: milliseconds


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _write_json(path: str, value, **dump_args) -> None:
  """Writes `path` atomically (a temporary file renamed into place)."""
  temp = f"{path}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # processes on many hosts
  with open(temp, "w") as f:
    json.dump(value, f, **dump_args)
  os.replace(temp, path)


def _fingerprint_key(fingerprint: dict) -> str:
  text = json.dumps(fingerprint, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bucket_dirs(set_dir: str) -> list[tuple[str, str]]:
  """(split, bucket) of every bucket folder of a set that holds latents or a plan."""
  found = {
      tuple(os.path.relpath(os.path.dirname(path), set_dir).split(os.sep))
      for pattern in ("shard-*", PLAN_FILE)
      for path in glob.glob(os.path.join(set_dir, "*", "*", pattern))
  }
  return sorted(found)


def _pending_dir(root: str) -> str | None:
  """The staging set check_fingerprint chose, or None when writing into `root`."""
  pending = _read_json(os.path.join(root, _PENDING_FILE))
  return None if pending is None else os.path.join(root, pending["dir"])


@contextlib.contextmanager
def _commit_lock(root: str):
  """Serialises claiming, swapping and starting to write between processes (mkdir
  is atomic, also on shared disks). A lock older than _LOCK_STALE_S was left by a
  killed process and is taken over."""
  path = os.path.join(root, _LOCK_DIR)
  while True:
    try:
      os.mkdir(path)
      break
    except FileExistsError:
      try:
        age = time.time() - os.path.getmtime(path)
      except FileNotFoundError:
        continue
      if age > _LOCK_STALE_S:
        logging.warning("Removing the stale lock %s (%.0f s old).", path, age)
        with contextlib.suppress(OSError):
          os.rmdir(path)
      else:
        time.sleep(0.05)
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.rmdir(path)


def check_fingerprint(root: str, fingerprint: dict) -> bool:
  """True when `root` holds latents made the same way; else it is (re)claimed.

  Called by process 0 before any write_bucket. A `root` without latents is claimed
  in place. A `root` holding latents made another way keeps them: the new latents
  go into a staging set keyed by `fingerprint` (resumed if one is there), which
  replaces the old set only once all of it is done (see commit_staged).
  """
  os.makedirs(root, exist_ok=True)
  with _commit_lock(root):
    retired = _finish_interrupted_commit(root)
    path = os.path.join(root, FINGERPRINT_FILE)
    pending_path = os.path.join(root, _PENDING_FILE)
    if _read_json(path) == fingerprint:
      if os.path.exists(pending_path):
        logging.info(
            "Latents in %s match; the unfinished set %s made another way is kept.",
            root,
            _pending_dir(root),
        )
        os.remove(pending_path)
      matches = True
    elif not glob.glob(os.path.join(root, "*", "*", "shard-*.json")):
      # Nothing finished to keep: claim it in place, dropping unfinished leftovers.
      with contextlib.suppress(FileNotFoundError):
        os.remove(pending_path)
      for pattern in ("shard-*", PLAN_FILE):
        for old in glob.glob(os.path.join(root, "*", "*", pattern)):
          os.remove(old)
      _write_json(path, fingerprint, indent=1)
      matches = False
    else:
      _claim_staging(root, fingerprint)
      matches = False
  if retired:
    shutil.rmtree(retired, ignore_errors=True)
  return matches


def _claim_staging(root: str, fingerprint: dict) -> None:
  """Points write_bucket at the staging set of `fingerprint`; holds the lock."""
  name = _STAGING_PREFIX + _fingerprint_key(fingerprint)
  staging = os.path.join(root, name)
  for other in glob.glob(os.path.join(root, _STAGING_PREFIX + "*")):
    if os.path.basename(other) != name:
      logging.warning("Removing %s: unfinished latents made another way.", other)
      shutil.rmtree(other, ignore_errors=True)
  resumed = _read_json(os.path.join(staging, FINGERPRINT_FILE)) == fingerprint
  os.makedirs(staging, exist_ok=True)
  _write_json(os.path.join(staging, FINGERPRINT_FILE), fingerprint, indent=1)
  _write_json(os.path.join(root, _PENDING_FILE), {"dir": name})
  logging.warning(
      "Latents in %s were made by something else (TAE, data or buckets changed); "
      "%s them again in %s. The old latents stay readable until every new shard "
      "is done.",
      root,
      "resuming encoding" if resumed else "encoding",
      staging,
  )


def is_claimed(root: str, fingerprint: dict) -> bool:
  """True once check_fingerprint(root, fingerprint) has run, so write_bucket writes
  latents made by `fingerprint` (what processes other than 0 should wait for)."""
  if _read_json(os.path.join(root, FINGERPRINT_FILE)) == fingerprint and not os.path.exists(
      os.path.join(root, _PENDING_FILE)
  ):
    return True
  staging = _pending_dir(root)
  return staging is not None and _read_json(os.path.join(staging, FINGERPRINT_FILE)) == fingerprint


def _missing_shards(set_dir: str) -> int | None:
  """How many planned shards of a set are not done; None when nothing is planned."""
  plans = glob.glob(os.path.join(set_dir, "*", "*", PLAN_FILE))
  if not plans:
    return None
  missing = 0
  for plan_path in plans:
    directory = os.path.dirname(plan_path)
    for k in range(_read_json(plan_path)["shards"]):
      missing += not os.path.exists(os.path.join(directory, f"shard-{k:05d}.json"))
  return missing


def commit_staged(root: str) -> bool:
  """Makes the staged set the live one once every shard it plans is done.

  Returns True when `root` has no staged work waiting (none was pending, or it was
  swapped in), False while the staged set is unfinished. Called by LatentShards
  before reading, so call it only after every write_bucket of the set has started
  (as precompute and the trainer do): completeness is judged by the plans of the
  buckets begun so far. The swap moves the old bucket folders aside, renames the
  staged ones into place, then deletes the old ones. Safe from many processes.
  """
  if not os.path.isdir(root):
    return True
  if _pending_dir(root) is None and not os.path.exists(os.path.join(root, _JOURNAL_FILE)):
    return True
  with _commit_lock(root):
    retired = _finish_interrupted_commit(root)
    staging = _pending_dir(root)
    done = staging is None
    if not done:
      missing = _missing_shards(staging)
      done = missing == 0
      if done:
        name = os.path.basename(staging)
        journal = {
            "staging": name,
            "retired": _RETIRED_PREFIX + name[len(_STAGING_PREFIX) :],
            "buckets": _bucket_dirs(staging),
        }
        _write_json(os.path.join(root, _JOURNAL_FILE), journal)
        logging.info("Latents in %s: swapping in the finished set %s.", root, staging)
        retired = _finish_commit(root, journal)
      else:
        logging.info(
            "Latents in %s: the new set %s is unfinished (%s shards to do); "
            "reading the old one.",
            root,
            staging,
            "all" if missing is None else missing,
        )
  if retired:
    shutil.rmtree(retired, ignore_errors=True)
  return done


def _finish_interrupted_commit(root: str) -> str | None:
  """Completes a swap a killed process left halfway (its journal is there); holds
  the lock. Returns the old set's folder, for the caller to delete, or None."""
  journal = _read_json(os.path.join(root, _JOURNAL_FILE))
  if journal is None:
    return None
  logging.warning("Finishing the interrupted swap of latents in %s.", root)
  return _finish_commit(root, journal)


def _finish_commit(root: str, journal: dict) -> str:
  """Runs (or resumes) the swap the journal describes; holds the lock. Each step
  can be redone, so a process killed anywhere leaves a state this finishes.

  Returns the folder the old buckets were moved into, for the caller to delete.
  """
  staging = os.path.join(root, journal["staging"])
  retired = os.path.join(root, journal["retired"])
  new = {tuple(b) for b in journal["buckets"]}
  for split, bucket in _bucket_dirs(root):
    if (split, bucket) in new and not os.path.isdir(os.path.join(staging, split, bucket)):
      continue  # already swapped in
    target = os.path.join(retired, split, bucket)
    shutil.rmtree(target, ignore_errors=True)  # left by an older, killed cleanup
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(root, split, bucket), target)
  for split, bucket in sorted(new):
    staged = os.path.join(staging, split, bucket)
    if os.path.isdir(staged):
      os.makedirs(os.path.join(root, split), exist_ok=True)
      os.replace(staged, os.path.join(root, split, bucket))
  fingerprint_path = os.path.join(staging, FINGERPRINT_FILE)
  if os.path.exists(fingerprint_path):
    os.replace(fingerprint_path, os.path.join(root, FINGERPRINT_FILE))
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(root, _PENDING_FILE))
  os.remove(os.path.join(root, _JOURNAL_FILE))
  shutil.rmtree(staging, ignore_errors=True)
  return retired


def write_bucket(
    root: str,
    split: str,
    bucket: Bucket,
    records: Sequence[dict],
    spec: ExampleSpec,
    encode: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    embed_text: Callable[[list[str]], dict[str, np.ndarray]] | None = None,
    record_arrays: Callable[[dict, np.ndarray], dict[str, np.ndarray]] | None = None,
    shard_size: int = 256,
    batch_size: int = 8,
    num_threads: int = 8,
    process_index: int = 0,
    process_count: int = 1,
) -> None:
  """Encodes this process's unfinished shards of one bucket.

  Writes into the set check_fingerprint chose: `root` itself, or the staging set
  of a re-encode, which commit_staged (run by LatentShards) swaps in once all of
  it is done. Every process writes the same plan.json (the bucket's shard count),
  by which completeness is judged, before it starts encoding. `record_arrays(record,
  pixels)` gives arrays stored with an example as they are (a PT2V reference image);
  a file of its that cannot be read skips the example like a bad video.
  """
  num_shards = -(-len(records) // shard_size)
  plan = {"shards": num_shards, "records": len(records)}
  os.makedirs(root, exist_ok=True)
  with _commit_lock(root):  # a swap cannot move the folder while we pick shards
    retired = _finish_interrupted_commit(root)
    out_dir = shard_dir(_pending_dir(root) or root, split, bucket.name)
    os.makedirs(out_dir, exist_ok=True)
    if _read_json(os.path.join(out_dir, PLAN_FILE)) != plan:
      _write_json(os.path.join(out_dir, PLAN_FILE), plan)
    shards = [
        k
        for k in range(num_shards)
        if k % process_count == process_index
        and not os.path.exists(os.path.join(out_dir, f"shard-{k:05d}.json"))
    ]
  if retired:
    shutil.rmtree(retired, ignore_errors=True)
  rng = np.random.default_rng(0)  # unused by a spec without random choices
  progress = tqdm.tqdm(
      total=sum(len(records[k * shard_size : (k + 1) * shard_size]) for k in shards),
      unit="clip",
      desc=f"{split}/{bucket.name}",
  )

  def read(record):
    try:
      pixels, fps = load_pixels(record, spec, rng)
      arrays = record_arrays(record, pixels) if record_arrays else {}
      return pixels, tagged_caption(record["caption"], fps), arrays
    except MediaDecodeError as e:
      logging.warning("Skipping %s (%s): %s", e.path, e.kind, e.detail)
      return e.kind

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for k in shards:
      examples = list(pool.map(read, records[k * shard_size : (k + 1) * shard_size]))
      _write_shard(out_dir, k, examples, encode, embed_text, batch_size)
      progress.update(len(examples))
  progress.close()


def _write_shard(out_dir: str, k: int, examples: list, encode, embed_text, batch_size: int) -> None:
  good = [e for e in examples if not isinstance(e, str)]
  skipped = collections.Counter(e for e in examples if isinstance(e, str))
  path = os.path.join(out_dir, f"shard-{k:05d}.array_record")
  writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
  sums = ChannelSums()
  for encoded, captions in encode_in_batches(good, encode, batch_size):
    text = embed_text(captions + captions[-1:] * (batch_size - len(captions))) if embed_text else {}
    for i, caption in enumerate(captions):
      record = {"caption": caption, **{k: v[i] for k, v in {**encoded, **text}.items()}}
      writer.write(flax.serialization.msgpack_serialize(record))
    sums.add(encoded["latent"])
  writer.close()
  os.replace(path + ".tmp", path)
  marker = {"examples": len(good), "skipped": dict(skipped), **sums.to_json()}
  with open(path[: -len(".array_record")] + ".json.tmp", "w") as f:
    json.dump(marker, f)
  os.replace(path[: -len(".array_record")] + ".json.tmp", path[: -len(".array_record")] + ".json")


def encode_in_batches(examples: Sequence[tuple], encode, batch_size: int):
  """Yields ({name: [b, ...]}, captions) of (pixels, caption[, arrays]) examples, where
  `encode(pixels, arrays)` maps pixels [b, T, H, W, 3] and the examples' own `arrays`
  {name: array}, stacked, to what is stored: {"latent": [b, T', h, w, C], ...}; full
  batches only (the last one padded) so it compiles once."""
  for start in range(0, len(examples), batch_size):
    chunk = examples[start : start + batch_size]
    chunk = chunk + chunk[-1:] * (batch_size - len(chunk))
    pixels = np.stack([e[0] for e in chunk])
    given = [e[2] if len(e) > 2 else {} for e in chunk]
    arrays = {k: np.stack([a[k] for a in given]) for k in given[0]}
    size = min(batch_size, len(examples) - start)
    encoded = {k: np.asarray(v)[:size] for k, v in encode(pixels, arrays).items()}
    yield encoded, [e[1] for e in chunk[:size]]


class ChannelSums:
  """Running per-channel sum and sum of squares of latents, for their mean and std."""

  def __init__(self, values: int = 0, total=None, total_sq=None):
    self.values, self.total, self.total_sq = values, total, total_sq

  def add(self, latents: np.ndarray):
    flat = latents.reshape(-1, latents.shape[-1]).astype(np.float64)  # [N, C]
    self.values += len(flat)
    self.total = flat.sum(0) + (0 if self.total is None else self.total)
    self.total_sq = (flat**2).sum(0) + (0 if self.total_sq is None else self.total_sq)

  def to_json(self) -> dict:
    return {
        "values": self.values,
        "sum": [] if self.total is None else self.total.tolist(),
        "sum_sq": [] if self.total is None else self.total_sq.tolist(),
    }

  @classmethod
  def from_json(cls, markers: Sequence[dict]) -> ChannelSums:
    markers = [m for m in markers if m["values"]]
    return cls(
        sum(m["values"] for m in markers),
        np.sum([m["sum"] for m in markers], 0),
        np.sum([m["sum_sq"] for m in markers], 0),
    )

  def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std: each float32 [C]."""
    if not self.values:
      raise ValueError("No latents to compute statistics from; every example was skipped.")
    mean = self.total / self.values
    std = np.sqrt(np.maximum(self.total_sq / self.values - mean**2, 0.0)) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


class LatentShards:
  """The examples of one split's bucket: a Grain random-access source.

  Reads the live set, first swapping in a finished staged one (commit_staged);
  while a re-encode is unfinished, the old latents are read.
  """

  def __init__(self, root: str, split: str, bucket: str):
    # While a staged set waits, another process may swap it in: read under the lock.
    waiting = not commit_staged(root)
    with _commit_lock(root) if waiting else contextlib.nullcontext():
      directory = shard_dir(root, split, bucket)
      markers = sorted(glob.glob(os.path.join(directory, "shard-*.json")))
      self.markers = []
      for marker in markers:
        with open(marker) as f:
          self.markers.append(json.load(f))
      paths = [m[: -len(".json")] + ".array_record" for m in markers]
      paths = [p for p, m in zip(paths, self.markers) if m["examples"]]
      self.source = grain.sources.ArrayRecordDataSource(paths) if paths else []

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return flax.serialization.msgpack_restore(self.source[int(index)])

  @property
  def skipped(self) -> collections.Counter:
    return sum((collections.Counter(m["skipped"]) for m in self.markers), collections.Counter())


class ReadLatent:
  """Grain element transform: shard example index -> {"latent", "caption", "skipped"}."""

  def __init__(self, shards: LatentShards):
    self.shards = shards

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    del rng
    return {**self.shards[index], "skipped": []}


def channel_stats(sets: Sequence[LatentShards]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel latent mean and std over all shards: each float32 [C]."""
  return ChannelSums.from_json([m for s in sets for m in s.markers]).mean_std()
