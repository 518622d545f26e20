"""Latent codecs: the trained first-stage models latent flow tasks train on.

A codec maps media to latents and back with the weights of a finished run: the TAE
(uint8 video [B, T, H, W, 3] <-> [B, T', h, w, C]) and the audio VAE (waveform
[B, S, ch] <-> [B, ceil(S / hop), C]). Every user of latents -- the tasks that train
on them, `mgjax.precompute`, sampling -- opens one the same way:

    codec = TAECodec.from_workdir("/runs/tae")      # config + latest weights
    z = codec.encode(video)                          # posterior means
    video = codec.decode(z, num_frames)              # tiled when long
    codec.latent_shape(32, 64, 64)                   # (T', h, w, C)
    codec.fingerprint()                              # what made a latent: config + weights

`TAECodec.abstract(model_config)` has shapes and no weights (`mgjax.aot` compiles
with it, reading no file). `ChannelStats` holds the per-channel statistics that
standardise a data set's latents for the flow model.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import json
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgjax import runs
from mgjax.models.audio_vae import AudioVAE
from mgjax.models.tae import TAE
from mgjax.models.tae_tiling import tiled_decode
from mgjax.parallel import mesh as mesh_lib
from mgjax.tasks.audio_vae import make_audio_vae
from mgjax.tasks.tae import make_tae, to_signed, to_uint8


class LatentCodec(abc.ABC):
  """A first-stage model (`config`: the whole config of the run that trained it)."""

  task: ClassVar[str]  # the task of the runs that train it
  params_key: ClassVar[str]  # its subtree of that run's params
  train_hint: ClassVar[str]  # the config that trains one

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      params=None,
      step: int | None = None,
      workdir: str | None = None,
  ):
    self.config = config
    self.step = step
    self.workdir = workdir  # weights are read from here on first use
    self._params = params
    self._fingerprint: dict | None = None
    self._read_from: tuple | None = None  # `_checkpoint()` when the weights were read

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> LatentCodec:
    """The run's latest config now, and the weights (EMA when kept) of its latest (or
    the given) checkpoint when first needed."""
    config = runs.read_config(
        workdir,
        hint=f"Train one with `python -m mgjax.train --config={cls.train_hint} --workdir={workdir}`.",
    )
    if config.task != cls.task:
      raise ValueError(f"{workdir} holds a {config.task!r} run, not a {cls.task!r} one.")
    return cls(config, step=step, workdir=workdir)

  @classmethod
  def abstract(cls, config: ml_collections.ConfigDict) -> LatentCodec:
    """Shapes only (no weights): latent_shape and latent_channels work, encode does not."""
    return cls(config)

  @property
  def params(self):
    if self._params is None:
      if self.workdir is None:
        raise ValueError(f"This {self.task} codec has shapes only (abstract); it has no weights.")
      if self.step is None:
        self.step = runs.latest_step(self.workdir)
      if self.step is None:
        raise FileNotFoundError(
            f"The {self.task} run in {self.workdir} has no complete checkpoint yet; train it "
            "first."
        )
      self._read_from = self._checkpoint()
      self._params = _read_weights(*self._read_from)[self.params_key]
    return self._params

  def _checkpoint(self) -> tuple[str, int, tuple[int, ...]]:
    """What the weights read are: the checkpoint (path and time: a run retrained in
    the same place is new) and the devices of the mesh they are read onto."""
    path = os.path.join(os.path.realpath(self.workdir), "checkpoints", str(self.step))
    devices = tuple(d.id for d in mesh_lib.mesh_from_config(self.config).devices.flat)
    return path, os.stat(path).st_mtime_ns, devices

  def _digest(self) -> str:
    params = self.params
    if self._read_from is not None:  # read, not given: hashed once per process
      return _read_digest(*self._read_from, self.params_key)
    return weights_digest(params)

  @property
  @abc.abstractmethod
  def latent_channels(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, media) -> np.ndarray:
    """Posterior-mean latents of a batch of media."""

  @abc.abstractmethod
  def decode(self, latents, length: int):
    """Media of `length` frames / samples from a batch of latents."""

  def fingerprint(self) -> dict:
    """What made a latent: the model config, the checkpoint step and a digest of the
    weights. Where the run lives is not part of it, so a copied or moved run reuses
    its latents. Hashed once per checkpoint read (precompute and statistics both ask)."""
    if self._fingerprint is None:
      digest = self._digest()  # reads the weights, and so the step, first
      self._fingerprint = {
          "task": self.task,
          "model": self.config.model.to_dict(),
          "step": self.step,
          "weights_sha256": digest,
      }
    return self._fingerprint


_COMPILED: dict[tuple, object] = {}


def shared_jit(codec: LatentCodec, name: str, build):
  """`build()`'s jitted function, one per (codec class, model config, name) in the
  process: every codec of the same model (each stage, baseline and sampler opens its
  own) then compiles an input shape once, as the weights are an argument."""
  key = (type(codec).__name__, json.dumps(codec.config.model.to_dict(), sort_keys=True), name)
  if key not in _COMPILED:
    _COMPILED[key] = build()
  return _COMPILED[key]


@functools.lru_cache(maxsize=2)
def _read_weights(step_dir: str, written_ns: int, devices: tuple[int, ...]):
  """A complete checkpoint's weights, read once per process and mesh: every stage,
  evaluation baseline and sampler of a process opens the same codec, and each read
  takes seconds. `_checkpoint` gives the arguments (the last two are keys only)."""
  del written_ns, devices
  workdir, step = os.path.dirname(os.path.dirname(step_dir)), int(os.path.basename(step_dir))
  return runs.restore_params(workdir, step)


@functools.lru_cache(maxsize=2)
def _read_digest(step_dir: str, written_ns: int, devices: tuple[int, ...], key: str) -> str:
  return weights_digest(_read_weights(step_dir, written_ns, devices)[key])


def weights_digest(params) -> str:
  """sha256 of the weights' names and bytes."""
  digest = hashlib.sha256()
  for path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])
  ):
    digest.update(str(path).encode())
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


class TAECodec(LatentCodec):
  """The temporal autoencoder: uint8 videos <-> latents [B, T', H/8, W/8, C]."""

  task = "tae"
  params_key = "tae"
  train_hint = "experiments/tae.py:tiny"

  @functools.cached_property
  def model(self) -> TAE:
    return make_tae(self.config.model)

  @property
  def latent_channels(self) -> int:
    return int(self.config.model.latent_channels)

  @property
  def spatial_factor(self) -> int:
    return self.model.spatial_factor

  @property
  def temporal_factor(self) -> int:
    return self.model.temporal_factor

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """[T', h, w, C] of a clip; height and width must divide by the spatial factor."""
    f = self.spatial_factor
    if height % f or width % f:
      raise ValueError(
          f"Height and width must be multiples of {f} (the TAE's); got {height}x{width}."
      )
    return (self.model.latent_frames(num_frames), height // f, width // f, self.latent_channels)

  @property
  def _encode(self):
    model = self.model
    return shared_jit(
        self,
        "encode",
        lambda: jax.jit(
            lambda p, v: model.apply({"params": p}, to_signed(v), method=TAE.encode)[0]
        ),
    )

  @property
  def _decode(self):
    model = self.model
    return shared_jit(
        self,
        "decode",
        lambda: jax.jit(lambda p, z: model.apply({"params": p}, z, method=TAE.decode)),
    )

  def encode(self, media) -> np.ndarray:
    """Posterior-mean latents of uint8 [B, T, H, W, 3] videos."""
    return np.asarray(self._encode(self.params, media))

  def decode(self, latents, length: int, tile_frames: int = 0, tile_overlap: int = 0) -> np.ndarray:
    """uint8 videos [B, length, H, W, 3] of latents [B, T', h, w, C]; decoded in
    overlapping tiles of `tile_frames` blended linearly when longer than that."""
    decode = functools.partial(self._decode, self.params)
    if tile_frames and length > tile_frames:
      video = tiled_decode(decode, latents, length, tile_frames, tile_overlap, self.temporal_factor)
    else:
      video = decode(latents)[:, :length]
    return np.asarray(to_uint8(video))


class FramewiseTAECodec(TAECodec):
  """The TAE on every frame alone, as a 1-frame video (images are 1-frame videos to
  it): uint8 [B, T, H, W, 3] <-> [B, T, H/8, W/8, C], one latent frame per frame.

  The spatial upsampler's codec: Movie Gen encodes the upsampled input frame by
  frame, so its windows (14 frames, 4 overlap) are frames, and any frame count works.
  Frames go through the TAE `frames_per_call` at a time (the last call padded), so
  one compiled encoder/decoder serves every length and memory stays bounded.
  """

  frames_per_call = 16

  @property
  def temporal_factor(self) -> int:
    return 1

  def latent_shape(self, num_frames, height, width):
    _, h, w, c = super().latent_shape(1, height, width)
    return (int(num_frames), h, w, c)

  def _framewise(self, fn, x: np.ndarray) -> np.ndarray:
    """fn over [n, 1, ...] chunks of the B x T frames of x [B, T, ...]."""
    b, t = x.shape[:2]
    frames = np.asarray(x).reshape((b * t, 1) + x.shape[2:])
    n = self.frames_per_call
    pad = -len(frames) % n
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, 0)]) if pad else frames
    out = np.concatenate(  # a 1-frame latent decodes to a clip's frames: keep the first
        [np.asarray(fn(self.params, frames[i : i + n]))[:, :1] for i in range(0, len(frames), n)]
    )[: b * t]
    return out.reshape((b, t) + out.shape[2:])

  def encode(self, media) -> np.ndarray:
    """Posterior-mean latents [B, T, h, w, C] of uint8 [B, T, H, W, 3] videos."""
    return self._framewise(self._encode, media)

  def decode(self, latents, length: int, tile_frames: int = 0, tile_overlap: int = 0):
    """uint8 videos [B, length, H, W, 3] of latents [B, T, h, w, C], frame by frame
    (`tile_*` are unused: a frame-wise decode is already tiled)."""
    del tile_frames, tile_overlap
    return np.asarray(to_uint8(self._framewise(self._decode, np.asarray(latents))))[:, :length]

  def fingerprint(self) -> dict:
    return {**super().fingerprint(), "framewise": True}


class AudioVAECodec(LatentCodec):
  """The audio VAE: float waveforms [B, S, ch] <-> latent means [B, ceil(S / hop), C]."""

  task = "audio_vae"
  params_key = "vae"
  train_hint = "experiments/audio_vae.py:tiny"

  @functools.cached_property
  def model(self) -> AudioVAE:
    return make_audio_vae(self.config.model)

  @property
  def sample_rate(self) -> int:
    return self.model.sample_rate

  @property
  def hop(self) -> int:
    return self.model.hop

  @property
  def latent_rate(self) -> float:
    return self.model.latent_rate

  @property
  def latent_channels(self) -> int:
    return self.model.latent_channels

  def latent_shape(self, num_samples: int) -> tuple[int, int]:
    """[T, C] of `num_samples` samples."""
    return (-(-int(num_samples) // self.hop), self.latent_channels)

  @property
  def _encode(self):
    model = self.model
    return shared_jit(
        self,
        "encode",
        lambda: jax.jit(lambda p, x: model.apply({"params": p}, x, method=AudioVAE.encode)[0]),
    )

  @property
  def _decode(self):
    model = self.model
    return shared_jit(
        self,
        "decode",
        lambda: jax.jit(
            lambda p, z, n: model.apply({"params": p}, z, n, method=AudioVAE.decode),
            static_argnums=2,
        ),
    )

  def encode(self, media) -> jax.Array:
    """Latent means [B, ceil(T / hop), L] of float waveforms [B, T, C] at sample_rate."""
    return self._encode(self.params, jnp.asarray(media, jnp.float32))

  def decode(self, latents, length: int | None = None) -> jax.Array:
    """Waveforms [B, N hop (or length), C] in (-1, 1) of latents [B, N, L]."""
    return self._decode(self.params, jnp.asarray(latents, jnp.float32), length)


@dataclasses.dataclass(frozen=True)
class ChannelStats:
  """Per-channel (mean, std) of a data set's latents: the flow model trains on
  (z - mean) / std, and sampling undoes it."""

  mean: np.ndarray  # [C] float32
  std: np.ndarray  # [C] float32
  codec: dict | None = None  # the fingerprint of the codec whose latents they describe

  @classmethod
  def identity(cls, channels: int) -> ChannelStats:
    return cls(np.zeros(channels, np.float32), np.ones(channels, np.float32))

  @classmethod
  def load(cls, path: str) -> ChannelStats:
    with open(path) as f:
      saved = json.load(f)
    mean, std = (np.asarray(saved[k], np.float32) for k in ("mean", "std"))
    return cls(mean, std, saved.get("codec"))

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump({"mean": self.mean.tolist(), "std": self.std.tolist(), "codec": self.codec}, f)
    os.replace(path + ".tmp", path)

  def standardise(self, z):
    return (z - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def unstandardise(self, z) -> jax.Array:
    return jnp.asarray(z) * self.std + self.mean
