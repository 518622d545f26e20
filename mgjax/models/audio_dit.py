"""Movie Gen Audio flow transformer: audio latents + video + text + time -> velocity.

    x_t     [B, T, C]  noisy audio latent (25 Hz frames of the audio VAE)
    context [B, T, C]  masked audio context, context_mask [B, T, 1] (1 = given)
        concat(x_t, context * mask, mask) [B, T, 2C + 1] --Dense--> tokens [B, T, D]
        + learned positional table over audio time (rows 0..T-1)
    video   [B, Tv, Fv] per-frame features at the video's frame rate
        --linear interpolation to the latent rate--> [B, T, Fv] --Dense--> ADDED to tokens
        (keep_video False: a learned null embedding instead)
    text    {encoder: [B, L, D_e]} --Dense + LayerNorm--> [B, L', D], cross-attention
        (keep_text False: every text token masked, cross-attention adds 0)
    t [B] --sinusoid--> MLP --> t_emb [B, D] --ONE shared Dense--> [B, 9, D]
    N x AudioDiTBlock (LayerNorm + adaLN shift/scale/gate around self-attention,
        cross-attention and a GELU MLP; its own learned [9, D] offset table)
    final LayerNorm + shift/scale from t_emb + zero-init Dense --> v [B, T, C]

Why a plain DiT block and one shared modulation MLP: that is the Movie Gen Audio
design (DESIGN.md section 1). A per-block Dense(D -> 9D) would cost 9 D^2 per block,
+6.9B parameters at 13b size; the shared Dense plus a per-block table (adaLN-single)
costs 9 D per block.

Positions: a learned absolute table of `max_frames` rows, added once to the input
tokens (not RoPE: the attention kernels here take q/k as they are). A clip longer
than `max_frames` latent frames is an error, by design: the model was never
trained at those positions. Make long audio with `mgjax.audio_longform` (windows of
the trained length, multi-diffusion or segment-level autoregression); to train on
longer clips, raise `max_frames` (new rows start untrained).

Video/audio alignment: video frame i shows at i / video_fps seconds and audio latent
frame j starts at j / latent_rate (the convention of mgjax.data.shapes_audio), so
latent frame j reads the video at fractional frame j * video_fps / latent_rate
(`align_video_features`). Features at the latent rate pass through unchanged.

Layer stacking is the video DiT's: `scan_layers=True` runs one block under nn.scan
with parameters stacked on a "layers" axis, False a Python loop (`layers_0`, ...);
`mgjax.models.dit.scan_to_loop_params` converts between them. Remat policies are
`mgjax.models.dit_blocks.REMAT_POLICIES`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from mgjax.models.dit import TextInput, VideoDiT, text_inputs
from mgjax.models.dit_blocks import (
    ACTIVATION_AXES,
    MLP_AXES,
    Attention,
    TextProjection,
    TimestepEmbedder,
    modulate,
    remat_policy,
)
from mgjax.models.layers import dense, logical_init
from mgjax.parallel.sharding import constrain

# Modulation vectors per block: (shift, scale, gate) for self-attention, cross-attention
# and MLP; without a modulated cross-attention, (shift, scale, gate) x 2.
NUM_MODULATION_VECTORS = {True: 9, False: 6}
POSITION_AXES = ("pos_t", "embed")
ALIGN_TOLERANCE = 1e-9  # snaps j * fps / rate onto integers it misses by rounding


def video_positions(
    num_frames: int, video_fps: float, latent_rate: float, num_video_frames: int
) -> np.ndarray:
  """Fractional video-frame index each of `num_frames` latent frames reads: float64 [T].

  u_j = j * video_fps / latent_rate, clamped to the last video frame (a clip's audio
  may run up to one video frame past its last frame). Raises if the video ends
  more than one frame before the audio does.
  """
  for name, rate in (("video_fps", video_fps), ("latent_rate", latent_rate)):
    if not isinstance(rate, numbers.Real):
      raise ValueError(
          f"{name} must be a Python number (it fixes the resampling indices "
          f"at trace time); got {type(rate).__name__}. Bind it with "
          f"functools.partial rather than passing it through jit."
      )
  if not (video_fps > 0 and latent_rate > 0):
    raise ValueError(f"video_fps and latent_rate must be > 0; got {video_fps}, {latent_rate}.")
  if num_video_frames < 1:
    raise ValueError("Video features need at least one frame ([B, Tv, Fv] with Tv >= 1).")
  audio_s = num_frames / latent_rate
  video_s = num_video_frames / video_fps
  if audio_s > video_s + 1.0 / video_fps + ALIGN_TOLERANCE:
    raise ValueError(
        f"{num_frames} audio latent frames at {latent_rate} Hz ({audio_s:.3f} s) outlast "
        f"{num_video_frames} video frames at {video_fps} fps ({video_s:.3f} s). Pass the "
        f"video features of the whole clip, or check model.video_fps / latent_rate."
    )
  u = np.arange(num_frames, dtype=np.float64) * (float(video_fps) / float(latent_rate))
  snapped = np.round(u)
  u = np.where(np.abs(u - snapped) < ALIGN_TOLERANCE, snapped, u)
  return np.clip(u, 0.0, num_video_frames - 1)


def align_video_features(
    features: jax.Array, video_fps: float, latent_rate: float, num_frames: int
) -> jax.Array:
  """Per-frame video features [B, Tv, F] at video_fps -> [B, T, F] at latent_rate.

  Linear interpolation in time between the two video frames around each latent
  frame's start (see `video_positions`): exact at times both grids share (16 fps and
  25 Hz meet every second), linear in between. Equal rates return the features
  (the first T frames) unchanged.
  """
  if features.ndim != 3:
    raise ValueError(f"Video features must be [B, Tv, F]; got shape {features.shape}.")
  u = video_positions(num_frames, video_fps, latent_rate, features.shape[1])
  lower = np.floor(u).astype(np.int32)
  upper = np.minimum(lower + 1, features.shape[1] - 1)
  frac = jnp.asarray(u - lower, jnp.float32)[None, :, None]  # [1, T, 1]
  values = features.astype(jnp.float32)
  out = (1.0 - frac) * values[:, lower] + frac * values[:, upper]  # [B, T, F]
  return out.astype(features.dtype)


def _layer_norm(name: str, dtype, param_dtype) -> nn.LayerNorm:
  """LayerNorm without its own scale/bias: adaLN supplies both (DiT)."""
  return nn.LayerNorm(
      epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name
  )


class GeluMLP(nn.Module):
  """DiT feed-forward: Dense(D -> F) -> GELU (tanh) -> Dense(F -> D), with biases."""

  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D]
    hidden = dense(
        self.mlp_dim, ("embed", "mlp"), "up", self.dtype, self.param_dtype, use_bias=True
    )(x)
    hidden = checkpoint_name(constrain(nn.gelu(hidden), MLP_AXES), "mlp_hidden")  # [B, T, F]
    return dense(
        x.shape[-1], ("mlp", "embed"), "down", self.dtype, self.param_dtype, use_bias=True
    )(
        hidden
    )  # [B, T, D]


class AudioDiTBlock(nn.Module):
  """One DiT layer over audio tokens; returns (x, None) so nn.scan can stack it.

  Call with x [B, T, D], modulation [B, M, D] (the shared MLP's output, M = 9 or 6),
  text [B, L, D], text_valid bool [B, L]. Adds its own [M, D] table to the shared
  modulation. The gates start at zero (zero shared Dense, zero table), so a fresh
  block is the identity.
  """

  num_heads: int
  mlp_dim: int
  modulate_cross_attention: bool = True
  qk_norm: bool = True
  context_attention: str = "all_gather"
  attention_implementation: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, modulation, text, text_valid):
    d = x.shape[-1]
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    num_vectors = NUM_MODULATION_VECTORS[self.modulate_cross_attention]
    table = self.param(
        "adaln_table",
        logical_init(nn.initializers.zeros, ("modulation", "embed")),
        (num_vectors, d),
        self.param_dtype,
    )
    mod = (modulation + table.astype(modulation.dtype)).astype(self.dtype)  # [B, M, D]
    vectors = [mod[:, i] for i in range(num_vectors)]  # each [B, D]
    attention_kwargs = dict(
        qk_norm=self.qk_norm, attention_implementation=self.attention_implementation, **common
    )

    shift, scale, gate = vectors[0:3]
    h = modulate(_layer_norm("attention_norm", **common)(x), shift, scale)
    h = Attention(
        self.num_heads,
        context_attention=self.context_attention,
        name="self_attention",
        **attention_kwargs,
    )(h)
    x = constrain(x + gate[:, None] * h, ACTIVATION_AXES)

    h = _layer_norm("cross_attention_norm", **common)(x)
    if self.modulate_cross_attention:
      shift, scale, gate = vectors[3:6]
      h = Attention(self.num_heads, name="cross_attention", **attention_kwargs)(
          modulate(h, shift, scale), text, text_valid
      )
      x = x + gate[:, None] * h
    else:  # unmodulated, zero-init output (as in the video DiT)
      x = x + Attention(
          self.num_heads, zero_init_output=True, name="cross_attention", **attention_kwargs
      )(h, text, text_valid)
    x = constrain(x, ACTIVATION_AXES)

    shift, scale, gate = vectors[-3:]
    h = modulate(_layer_norm("mlp_norm", **common)(x), shift, scale)
    x = x + gate[:, None] * GeluMLP(self.mlp_dim, name="mlp", **common)(h)
    return constrain(x, ACTIVATION_AXES), None


class AudioDiT(nn.Module):
  """Flow-matching velocity model for audio latents, conditioned on video and text.

  Attributes:
    num_layers, embed_dim, mlp_dim, num_heads: transformer shape.
    max_frames: rows of the positional table = the longest clip, in latent frames.
    latent_rate: audio latent frames per second (the VAE's; 25 in the paper).
    video_fps: frame rate of the video features, unless a call passes its own.
    use_video: whether the model reads per-frame video features at all.
    modulate_cross_attention: 9 modulation vectors per block (cross-attention gets
      shift/scale/gate too) or 6 (cross-attention unmodulated, zero-init output).
    qk_norm: RMSNorm on each head's queries and keys.
    context_attention, attention_implementation: as in `VideoDiT`.
    frequency_dim: width of the sinusoidal timestep features.
    scan_layers: nn.scan over blocks vs a Python loop.
    remat_policy: a name in `mgjax.models.dit_blocks.REMAT_POLICIES`.
    dtype, param_dtype: compute and storage dtypes.
  """

  num_layers: int = 4
  embed_dim: int = 128
  mlp_dim: int = 512
  num_heads: int = 4
  max_frames: int = 256
  latent_rate: float = 25.0
  video_fps: float = 16.0
  use_video: bool = True
  modulate_cross_attention: bool = True
  qk_norm: bool = True
  context_attention: str = "all_gather"
  attention_implementation: str = "auto"
  frequency_dim: int = 256
  scan_layers: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # `config.model` section -> module (unknown keys such as latent_channels ignored);
  # the video DiT's builder, which reads only this class's fields.
  from_config = classmethod(VideoDiT.from_config.__func__)

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      context: jax.Array | None,
      context_mask: jax.Array | None,
      video_features: jax.Array | None,
      text: TextInput,
      text_mask: jax.Array | None = None,
      *,
      keep_video: jax.Array | None = None,
      keep_text: jax.Array | None = None,
      video_fps: float | None = None,
  ) -> jax.Array:
    """Velocity [B, T, C] (float32) of noisy latent x [B, T, C] at flow time t [B].

    Args:
      context: [B, T, C] audio latent given as context, or None (no context).
      context_mask: [B, T, 1] (or [B, T]) 1 where `context` is given, 0 where the
        model must generate; frames with mask 0 never reach the model.
      video_features: [B, Tv, Fv] per-frame features at `video_fps` (default the
        module's), or None with use_video=False.
      text: [B, L, D_text] with `text_mask` bool [B, L], or {encoder: emb or
        (emb, mask)} as for the video DiT.
      keep_video, keep_text: bool [B]; False replaces that example's video with the
        learned null embedding / hides all its text tokens (classifier-free
        guidance). None keeps everything.
    """
    self._check(x, t)
    b, num_frames, c = x.shape
    d = self.embed_dim
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    context, context_mask = _context_inputs(x, context, context_mask)

    # [B, T, 2C + 1]: the mask zeroes context frames that are not given.
    audio_in = jnp.concatenate([x, context * context_mask, context_mask], axis=-1)
    tokens = dense(d, ("channels", "embed"), "input_projection", use_bias=True, **common)(
        audio_in.astype(self.dtype)
    )  # [B, T, D]
    pos = self.param(
        "pos_embed",
        logical_init(nn.initializers.normal(0.02), POSITION_AXES),
        (self.max_frames, d),
        self.param_dtype,
    )
    tokens = tokens + pos[:num_frames].astype(self.dtype)[None]
    if self.use_video:
      tokens = tokens + self._embed_video(video_features, num_frames, keep_video, video_fps)
    elif video_features is not None:
      raise ValueError("This AudioDiT has use_video=False; pass video_features=None.")
    tokens = constrain(tokens, ACTIVATION_AXES)

    cond = nn.silu(TimestepEmbedder(d, self.frequency_dim, name="time_embed", **common)(t))
    num_vectors = NUM_MODULATION_VECTORS[self.modulate_cross_attention]
    modulation = dense(
        (num_vectors, d),
        ("embed", "modulation", "mlp"),
        "adaln_shared",
        zero=True,
        use_bias=True,
        **common,
    )(
        cond
    )  # [B, M, D]

    text_tokens, text_valid = self._embed_text(text, text_mask, keep_text)
    h = self._blocks(tokens, modulation, text_tokens, text_valid)  # [B, T, D]

    h = _layer_norm("final_norm", **common)(h)
    shift, scale = jnp.split(
        dense(
            (2, d),
            ("embed", "modulation", "mlp"),
            "final_adaln",
            zero=True,
            use_bias=True,
            **common,
        )(cond),
        2,
        axis=1,
    )
    h = modulate(h, shift[:, 0], scale[:, 0])
    out = dense(c, ("embed", "channels"), "final", zero=True, use_bias=True, **common)(h)
    return out.astype(jnp.float32)  # [B, T, C]

  def _check(self, x, t):
    if x.ndim != 3:
      raise ValueError(f"AudioDiT expects latents [B, T, C]; got shape {x.shape}.")
    if t.shape != x.shape[:1]:
      raise ValueError(f"t must be [B] = [{x.shape[0]}]; got shape {t.shape}.")
    if self.embed_dim % self.num_heads:
      raise ValueError(
          f"embed_dim {self.embed_dim} is not divisible by num_heads " f"{self.num_heads}."
      )
    if x.shape[1] > self.max_frames:
      raise ValueError(
          f"{x.shape[1]} latent frames exceed the positional table (max_frames "
          f"{self.max_frames}, {self.max_frames / self.latent_rate:.2f} s at "
          f"{self.latent_rate} Hz). Generate long audio in windows with "
          f"mgjax.audio_longform, or raise model.max_frames and train at that length."
      )

  def _embed_video(self, features, num_frames, keep, video_fps):
    """[B, Tv, Fv] at the video rate -> [B, T, D] to add to the audio tokens."""
    if features is None:
      raise ValueError(
          "This AudioDiT reads video (use_video=True) but got "
          "video_features=None; pass [B, Tv, Fv] features, or drop them per "
          "example with keep_video=False."
      )
    rate = self.video_fps if video_fps is None else video_fps
    aligned = align_video_features(features, rate, self.latent_rate, num_frames)  # [B, T, Fv]
    emb = dense(
        self.embed_dim,
        ("video_feature", "embed"),
        "video_projection",
        use_bias=True,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )(
        aligned.astype(self.dtype)
    )  # [B, T, D]
    null = self.param(
        "video_null",
        logical_init(nn.initializers.normal(0.02), ("embed",)),
        (self.embed_dim,),
        self.param_dtype,
    ).astype(self.dtype)
    if keep is None:
      return emb
    keep = _keep_flags(keep, features.shape[0], "keep_video")
    return jnp.where(keep[:, None, None], emb, null[None, None])  # [B, T, D]

  def _embed_text(self, text, text_mask, keep):
    """Each encoder projected to the model width and concatenated: [B, L, D], [B, L]."""
    embs, masks = [], []
    for name, emb, mask in text_inputs(text, text_mask):
      embs.append(
          TextProjection(
              self.embed_dim,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
              name=f"text_projection_{name}",
          )(emb)
      )  # [B, L_e, D]
      masks.append(mask)
    tokens, valid = jnp.concatenate(embs, axis=1), jnp.concatenate(masks, axis=1)
    if keep is not None:
      valid = valid & _keep_flags(keep, tokens.shape[0], "keep_text")[:, None]
    return tokens, valid

  def _blocks(self, x, modulation, text, text_valid):
    """The N blocks, scanned or looped, with remat per block."""
    block_kwargs = dict(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        modulate_cross_attention=self.modulate_cross_attention,
        qk_norm=self.qk_norm,
        context_attention=self.context_attention,
        attention_implementation=self.attention_implementation,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    block_cls = AudioDiTBlock
    policy = remat_policy(self.remat_policy)  # validates the name
    if self.remat_policy != "none":
      block_cls = nn.remat(AudioDiTBlock, policy=policy, prevent_cse=not self.scan_layers)
    if self.scan_layers:
      stack = nn.scan(
          block_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 3,
          length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(name="layers", **block_kwargs)(x, modulation, text, text_valid)
      return x
    for i in range(self.num_layers):
      x, _ = block_cls(name=f"layers_{i}", **block_kwargs)(x, modulation, text, text_valid)
    return x


def _keep_flags(keep: jax.Array, batch: int, name: str) -> jax.Array:
  keep = jnp.asarray(keep)
  if keep.shape != (batch,):
    raise ValueError(f"{name} must be bool [B] = [{batch}]; got shape {keep.shape}.")
  return keep.astype(bool)


def _context_inputs(x, context, context_mask):
  """(context [B, T, C], mask [B, T, 1]) in x's dtype; None -> no context at all."""
  if context is None:
    if context_mask is not None:
      raise ValueError("context_mask given without context; pass both or neither.")
    zeros = jnp.zeros(x.shape[:2] + (1,), x.dtype)
    return jnp.zeros_like(x), zeros
  if context.shape != x.shape:
    raise ValueError(
        f"Audio context must have the latent's shape {x.shape} ([B, T, C]); "
        f"got {context.shape}."
    )
  if context_mask is None:
    raise ValueError("Audio context needs context_mask [B, T, 1] (1 = given frame).")
  if context_mask.shape == x.shape[:2]:
    context_mask = context_mask[..., None]
  if context_mask.shape != x.shape[:2] + (1,):
    raise ValueError(
        f"context_mask must be [B, T, 1] = {x.shape[:2] + (1,)}; got " f"{context_mask.shape}."
    )
  return context.astype(x.dtype), context_mask.astype(x.dtype)


# ------------------------------------------------------------------------ sampling


def window_model_fn(model: AudioDiT) -> Callable:
  """The model as the window model of `mgjax.audio_longform`, before guidance:
  fn(x [B, T, C], t [B], use_condition [B], context, context_mask [B, T, 1], aligned,
  per_example, variables) -> v [B, T, C]. Guided with
  `flow.cfg_velocity_fn(window_model_fn(model), scale, num_batched_args=4)`.

  `aligned` is {"video": features [B, T, Fv] already at the latent rate} (see
  `align_video_features`; windows slice it like the audio) or None for a model
  without video; `per_example` is {"text": text input as for `AudioDiT`}. Rows with
  use_condition False drop both video and text and keep the audio context (the
  context is what is being extended, not a prompt to guide towards).
  """

  def model_fn(x, t, use_condition, context, context_mask, aligned, per_example, variables):
    video = None if aligned is None else aligned["video"]
    return model.apply(
        variables,
        x,
        t,
        context,
        context_mask,
        video,
        per_example["text"],
        keep_video=use_condition if video is not None else None,
        keep_text=use_condition,
        video_fps=model.latent_rate,
    )

  return model_fn


def num_params(tree: Mapping | Any) -> int:
  """Parameter count of a (boxed or abstract) params tree."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.meta.unbox(tree)))
