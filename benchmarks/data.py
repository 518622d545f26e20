"""Input pipeline throughput: decoded clips per second, per Grain thread or worker.

    python benchmarks/data.py
    python benchmarks/data.py --settings=1x0,2x0,1x1,1x2 --batches_256=10 --batches_shapes=30

Runs the training stack's loader (mgjax/data/pipeline.py: `Stream` + `DataIterator`,
examples made by `mgjax.data.examples.LoadExample`) on two buckets and prints one
table:

* "256 px, 16 fps, 4 s": ExampleSpec(num_frames=64, height=256, width=256, fps=16,
  scale_to=(256, 256)) on synthetic source videos written first with `write_video`
  (H.264, by default 8 files of 6 s at 30 fps, 480x640): a textured canvas the
  camera pans over, a moving disc and per-frame grain, so the codec does real work.
  Each clip decodes about 2-4 s of 30 fps video, resamples it to 16 fps and scales
  and centre-crops every kept frame to 256x256 (swscale, bicubic).
* "shapes 64 px": the synthetic shapes data set (`mgjax.data.shapes`, by default 64
  clips of 32 frames at 64x64, 16 fps) with a 32-frame, 64x64, 16 fps bucket.

Records carry their metadata (fps, num_frames, size), as the shapes manifest does,
so no clip is probed while timed. Each setting `TxW` runs the loader with T Grain
read threads per process and W worker processes (`mp_prefetch`; 0: decode in
this process's threads). After `--warmup` batches (which also pay for starting the
worker processes) `--batches_*` batches are timed. "per unit" divides by the decoding
units: threads when W=0, else W processes x T threads. MB/s counts the decoded uint8
pixels handed to the trainer (10^6 bytes). "CPU ms/clip" is the CPU time (user +
system) of this process and its worker processes over the timed batches, per clip
(needs psutil): unlike the rates, it hardly changes when other jobs share the CPUs.

The data is written to a temporary folder removed at the end, or to --dir, where it
is kept and reused by later runs.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

try:
  import psutil
except ImportError:  # the CPU-time column is left empty
  psutil = None

from mgjax.data import shapes
from mgjax.data.examples import ExampleSpec, LoadExample
from mgjax.data.pipeline import DataIterator, LoaderOptions, Stream
from mgjax.data.records import read_manifest
from mgjax.data.video import probe, write_video

_SETTINGS = flags.DEFINE_list(
    "settings",
    ["1x0", "2x0", "1x1", "1x2"],
    "Loader settings THREADSxWORKERS: Grain read threads per "
    "process x worker processes (0: none).",
)
_DATASETS = flags.DEFINE_list(
    "datasets", ["video256", "shapes"], "Which buckets to time: video256, shapes."
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed batches per setting.")
_BATCHES_256 = flags.DEFINE_integer("batches_256", 10, "Timed batches, 256 px bucket.")
_BATCH_SIZE_256 = flags.DEFINE_integer("batch_size_256", 4, "Clips per batch, 256 px bucket.")
_BATCHES_SHAPES = flags.DEFINE_integer("batches_shapes", 30, "Timed batches, shapes bucket.")
_BATCH_SIZE_SHAPES = flags.DEFINE_integer(
    "batch_size_shapes", 16, "Clips per batch, shapes bucket."
)
_PREFETCH = flags.DEFINE_integer("prefetch", 4, "LoaderOptions.prefetch.")
_NUM_SOURCES = flags.DEFINE_integer("num_sources", 8, "Synthetic source videos to write.")
_SOURCE_SECONDS = flags.DEFINE_float("source_seconds", 6.0, "Length of each source video.")
_SOURCE_FPS = flags.DEFINE_float("source_fps", 30.0, "Frame rate of the source videos.")
_SOURCE_HEIGHT = flags.DEFINE_integer("source_height", 480, "Source video height (even).")
_SOURCE_WIDTH = flags.DEFINE_integer("source_width", 640, "Source video width (even).")
_SOURCE_CRF = flags.DEFINE_integer("source_crf", 18, "x264 CRF of the source videos.")
_SHAPES_VIDEOS = flags.DEFINE_integer("shapes_videos", 64, "Clips in the shapes data set.")
_DIR = flags.DEFINE_string(
    "dir",
    None,
    "Where to write (and reuse) the data; default: a " "temporary folder removed at the end.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Data and loader seed.")


# ---------------------------------------------------------------- source videos
def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """float32 [H, W, 3] around 0: box-blurred noise at several scales (coarse to fine)."""
  out = np.zeros((height, width, 3), np.float32)
  for scale, amplitude in ((64, 60.0), (16, 30.0), (4, 12.0)):
    coarse = rng.normal(size=(height // scale + 2, width // scale + 2, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, scale, 0), scale, 1)
    c = np.cumsum(np.cumsum(fine, 0), 1)
    blurred = (
        c[scale:, scale:] - c[:-scale, scale:] - c[scale:, :-scale] + c[:-scale, :-scale]
    ) / (scale * scale)
    out += amplitude * blurred[:height, :width]
  return out


def source_frames(seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
  """uint8 [T, H, W, 3]: a camera panning over a texture, a moving disc, film grain."""
  rng = np.random.default_rng([seed, 1])
  pan_y, pan_x = height // 4, width // 2
  canvas = 128.0 + _smooth_texture(rng, height + pan_y, width + pan_x)
  grain = [rng.normal(0.0, 2.0, (height, width, 3)).astype(np.float32) for _ in range(7)]
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  color = rng.uniform(30, 230, 3).astype(np.float32)
  radius = 0.12 * min(height, width)
  phase = rng.uniform(0, 2 * np.pi, 4)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for i in range(num_frames):
    u = i / max(num_frames - 1, 1)
    top = int(round(pan_y * (0.5 + 0.5 * np.sin(2 * np.pi * u + phase[0]))))
    left = int(round(pan_x * u))
    frame = canvas[top : top + height, left : left + width].copy()
    cx = width * (0.5 + 0.35 * np.sin(3 * np.pi * u + phase[1]))
    cy = height * (0.5 + 0.3 * np.cos(2 * np.pi * u + phase[2]))
    coverage = np.clip(radius + 0.5 - np.hypot(xx - cx, yy - cy), 0.0, 1.0)[..., None]
    frame += (color - frame) * coverage
    frame += grain[i % len(grain)]
    frames[i] = np.clip(frame, 0, 255)
  return frames


def write_source(
    path: str, seed: int, seconds: float, fps: float, height: int, width: int, crf: int
) -> str:
  if not os.path.exists(path):
    frames = source_frames(seed, int(round(seconds * fps)), height, width)
    write_video(path, frames, fps, crf=crf)
  return path


def make_sources(folder: str) -> list[dict]:
  """Records of the synthetic source videos (written in parallel, reused if present)."""
  os.makedirs(folder, exist_ok=True)
  seconds, fps = _SOURCE_SECONDS.value, _SOURCE_FPS.value
  height, width, crf = _SOURCE_HEIGHT.value, _SOURCE_WIDTH.value, _SOURCE_CRF.value
  paths = [
      os.path.join(
          folder,
          f"src{i:03d}_s{_SEED.value}_{height}x{width}_{fps:g}fps_" f"{seconds:g}s_crf{crf}.mp4",
      )
      for i in range(_NUM_SOURCES.value)
  ]
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("spawn")
  ) as pool:
    list(
        pool.map(
            write_source,
            paths,
            [_SEED.value * 1000 + i for i in range(len(paths))],
            *([v] * len(paths) for v in (seconds, fps, height, width, crf)),
        )
    )
  records = []
  for path in paths:
    info = probe(path)
    records.append(
        {
            "video": path,
            "caption": "a disc moves over a panning texture",
            "fps": info.fps,
            "num_frames": info.num_frames,
            "width": info.width,
            "height": info.height,
        }
    )
  return records


# -------------------------------------------------------------------- timing
def cpu_seconds() -> float:
  """User + system CPU time of this process and its children (Grain workers) so far."""
  if psutil is None:
    return float("nan")
  me = psutil.Process()
  total = 0.0
  for process in [me, *me.children(recursive=True)]:
    try:
      times = process.cpu_times()
    except psutil.Error:
      continue
    total += times.user + times.system
  return total


def parse_setting(text: str) -> tuple[int, int]:
  threads, workers = (int(x) for x in text.lower().split("x"))
  if threads < 1 or workers < 0:
    raise app.UsageError(f"--settings entry {text!r}: threads >= 1, workers >= 0")
  return threads, workers


def time_loader(
    records: list[dict],
    spec: ExampleSpec,
    batch_size: int,
    batches: int,
    threads: int,
    workers: int,
) -> dict:
  stream = Stream(
      name="bench", size=len(records), load=LoadExample(records, spec), batch_size=batch_size
  )
  options = LoaderOptions(
      seed=_SEED.value, num_threads=threads, num_workers=workers, prefetch=_PREFETCH.value
  )
  iterator = DataIterator([stream], options, finish=lambda batch: batch)
  try:
    start = time.perf_counter()
    for _ in range(_WARMUP.value):
      batch = next(iterator)
    warm, warm_cpu = time.perf_counter(), cpu_seconds()
    clips = 0
    for _ in range(batches):
      batch = next(iterator)
      clips += len(batch["pixels"])
    seconds = time.perf_counter() - warm
    cpu = cpu_seconds() - warm_cpu
  finally:
    iterator.close()
  expected = (batch_size, spec.num_frames, spec.height, spec.width, 3)
  assert batch["pixels"].shape == expected and batch["pixels"].dtype == np.uint8, (
      batch["pixels"].shape,
      batch["pixels"].dtype,
  )
  rate = clips / seconds
  units = threads * max(workers, 1)
  return {
      "clips_s": rate,
      "per_unit": rate / units,
      "mb_s": rate * np.prod(expected[1:]) / 1e6,
      "warmup_s": warm - start,
      "cpu_ms": 1e3 * cpu / clips,
      "skipped": iterator.metrics()["data/skipped_fraction"],
  }


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv):
  del argv
  settings = [parse_setting(s) for s in _SETTINGS.value]
  unknown = set(_DATASETS.value) - {"video256", "shapes"}
  if unknown:
    raise app.UsageError(f"--datasets: unknown {sorted(unknown)}; use video256, shapes")
  total_start = time.perf_counter()
  folder = _DIR.value or tempfile.mkdtemp(prefix="mgjax_data_bench_")
  try:
    buckets = []
    if "video256" in _DATASETS.value:
      t0 = time.perf_counter()
      records = make_sources(os.path.join(folder, "sources"))
      print(
          f"Source videos: {len(records)} x {_SOURCE_SECONDS.value:g} s, "
          f"{_SOURCE_FPS.value:g} fps, {_SOURCE_HEIGHT.value}x{_SOURCE_WIDTH.value} H.264 "
          f"crf {_SOURCE_CRF.value} ({time.perf_counter() - t0:.1f} s to make)",
          flush=True,
      )
      buckets.append(
          (
              "synthetic 480x640",
              "256 px, 16 fps, 4 s",
              records,
              ExampleSpec(num_frames=64, height=256, width=256, fps=16, scale_to=(256, 256)),
              _BATCH_SIZE_256.value,
              _BATCHES_256.value,
          )
      )
    if "shapes" in _DATASETS.value:
      t0 = time.perf_counter()
      manifest = shapes.ensure_dataset(
          os.path.join(folder, "shapes"),
          num_videos=_SHAPES_VIDEOS.value,
          seed=_SEED.value,
          num_frames=32,
          height=64,
          width=64,
          num_images=0,
      )
      records = read_manifest(manifest).records
      print(
          f"Shapes: {len(records)} clips of 32 frames, 64x64, 16 fps "
          f"({time.perf_counter() - t0:.1f} s to make)",
          flush=True,
      )
      buckets.append(
          (
              "shapes",
              "64 px, 16 fps, 2 s",
              records,
              ExampleSpec(num_frames=32, height=64, width=64, fps=16),
              _BATCH_SIZE_SHAPES.value,
              _BATCHES_SHAPES.value,
          )
      )

    print(
        f"\nGrain input pipeline on {cpu_name()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable); warmup {_WARMUP.value} batches, "
        f"prefetch {_PREFETCH.value}; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "| data set | bucket | batch | threads | workers | clips/s | clips/s per unit "
        "| MB/s | CPU ms/clip | warmup s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name, bucket, records, spec, batch_size, batches in buckets:
      for threads, workers in settings:
        r = time_loader(records, spec, batch_size, batches, threads, workers)
        if r["skipped"]:
          print(f"(warning: {r['skipped']:.1%} of the clips tried were unusable)")
        print(
            f"| {name} | {bucket} | {batch_size} x {batches} | {threads} | {workers} | "
            f"{r['clips_s']:.1f} | {r['per_unit']:.2f} | {r['mb_s']:.0f} | "
            f"{r['cpu_ms']:.0f} | {r['warmup_s']:.1f} |",
            flush=True,
        )
  finally:
    if _DIR.value is None:
      shutil.rmtree(folder, ignore_errors=True)
  print(f"\nTotal {time.perf_counter() - total_start:.0f} s")


if __name__ == "__main__":
  app.run(main)
