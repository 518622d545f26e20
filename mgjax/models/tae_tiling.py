"""Tiled TAE encode/decode along time, for clips too long to process at once.

Encoding cuts the clip into `tile_frames`-frame tiles and concatenates their latents
(a tile length that is a multiple of the temporal factor makes tiles line up with
latent frames). Decoding decodes overlapping latent tiles and blends overlapping
output frames with linear ramps, so tile boundaries do not show as seams. The paper
uses 32-frame tiles and a 16-frame decoder overlap.

Both take the per-tile function as an argument, so callers pass a jitted
`tae.apply(..., method=...)`; all tiles have the same shape and compile once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

EncodeFn = Callable[[jax.Array], jax.Array]  # [B, t, H, W, 3] -> [B, t', h, w, C]
DecodeFn = Callable[[jax.Array], jax.Array]  # [B, t', h, w, C] -> [B, t'*f, H, W, 3]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
  """Starts of tiles of `tile` covering [0, length) with the given stride.

  The last tile is shifted back to end at `length`, so every tile is full size.
  """
  if length <= tile:
    return [0]
  starts = list(range(0, length - tile + 1, stride))
  if starts[-1] + tile < length:
    starts.append(length - tile)
  return starts


def blend_weights(tile: int, overlap: int, first: bool, last: bool) -> np.ndarray:
  """[tile] linear ramp weights: rising over the first `overlap` frames unless the
  tile starts the clip, falling over the last `overlap` unless it ends it."""
  weights = np.ones(tile, np.float32)
  if overlap > 0:
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if not first:
      weights[:overlap] = np.minimum(weights[:overlap], ramp)
    if not last:
      weights[-overlap:] = np.minimum(weights[-overlap:], ramp[::-1])
  return weights


def tiled_encode(
    encode_fn: EncodeFn, video: jax.Array, tile_frames: int = 32, temporal_factor: int = 8
) -> jax.Array:
  """Encodes [B, T, H, W, 3] in consecutive tiles; returns [B, ceil(T/f), h, w, C]."""
  if tile_frames % temporal_factor:
    raise ValueError(
        f"tile_frames={tile_frames} must be a multiple of the temporal "
        f"factor {temporal_factor} so tiles align with latent frames."
    )
  num_frames = video.shape[1]
  latents = [
      encode_fn(video[:, start : start + tile_frames])
      for start in range(0, num_frames, tile_frames)
  ]
  return jnp.concatenate(latents, axis=1)


def tiled_decode(
    decode_fn: DecodeFn,
    latent: jax.Array,
    num_frames: int,
    tile_frames: int = 32,
    overlap_frames: int = 16,
    temporal_factor: int = 8,
) -> jax.Array:
  """Decodes [B, T', h, w, C] in overlapping tiles; returns [B, num_frames, H, W, 3].

  Output frames covered by several tiles are a weighted mean with linear ramps over
  the overlaps.
  """
  if tile_frames % temporal_factor or overlap_frames % temporal_factor:
    raise ValueError(
        f"tile_frames={tile_frames} and overlap_frames={overlap_frames} must "
        f"be multiples of the temporal factor {temporal_factor}."
    )
  if not 0 <= overlap_frames < tile_frames:
    raise ValueError(f"overlap_frames={overlap_frames} must be in [0, tile_frames).")
  tile = tile_frames // temporal_factor
  stride = (tile_frames - overlap_frames) // temporal_factor
  latent_frames = latent.shape[1]
  starts = tile_starts(latent_frames, tile, stride)
  total = latent_frames * temporal_factor
  out, norm = None, np.zeros(total, np.float32)
  for i, start in enumerate(starts):
    frames = decode_fn(latent[:, start : start + tile])  # [B, t, H, W, 3]
    t = frames.shape[1]
    # The overlap in output frames between this tile and its neighbours.
    first, last = i == 0, i == len(starts) - 1
    prev_overlap = 0 if first else (starts[i - 1] + tile - start) * temporal_factor
    next_overlap = 0 if last else (start + tile - starts[i + 1]) * temporal_factor
    weights = np.ones(t, np.float32)
    if prev_overlap:
      weights = np.minimum(weights, blend_weights(t, prev_overlap, False, True))
    if next_overlap:
      weights = np.minimum(weights, blend_weights(t, next_overlap, True, False))
    offset = start * temporal_factor
    if out is None:
      out = jnp.zeros((frames.shape[0], total) + frames.shape[2:], frames.dtype)
    out = out.at[:, offset : offset + t].add(frames * weights[None, :, None, None, None])
    norm[offset : offset + t] += weights
  out = out / jnp.asarray(norm)[None, :, None, None, None]
  return out[:, :num_frames]
