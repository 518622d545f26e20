"""Movie Gen video diffusion transformer: latent video + flow time + text -> velocity.

    x [B, T, H, W, C] --patchify (1x2x2)--> tokens [B, T * H/2 * W/2, D]
    t [B] --sinusoid(1000 t)--> MLP --> t_emb [B, D] --> adaLN of every block
    text [B, L, D_text] (one or several encoders) --> Dense + LayerNorm --> [B, L', D]
    N x DiTBlock (LLaMa3: RMSNorm, full self-attention, cross-attention, SwiGLU),
        factorized positional embedding added to the input of every block
    final RMSNorm + shift/scale from t_emb + zero-init Dense --> unpatchify --> v

Images are 1-frame videos. The output starts at exactly zero (zero-init final
layer), which is the mean of the flow-matching target for unit-variance latents.

Channel-concatenated conditions (the upsampler's low-resolution video, the edit
model's source video): `concat` [B, T, H, W, C_c] on the latent's grid is patchified
like x and projected by its own zero-initialised Dense ("concat_embed") whose output
is added to x's patch embedding. That is exactly a patch embedding of the channel
concatenation [x; concat] with zero-initialised weights for the extra channels, kept
as a separate kernel so a model without the condition (a T2I/T2V run) loads into
this one unchanged, and at step 0 the condition changes nothing.

Task embeddings (Movie Gen Edit, and one model for image-to-video, extension and
the edits): `task` [B] (ints below `num_tasks`) picks a learned vector per task,
which one Dense turns into `task_tokens` tokens appended to the text tokens of the
cross-attention and a zero-initialised Dense adds to the timestep embedding (so a
model loaded from a run without tasks starts with its timestep path unchanged).

Layer stacking: `scan_layers=True` stacks the block parameters along a leading
"layers" axis and runs one compiled block under `nn.scan` (constant compile time in
depth); False runs a Python loop with parameters `layers_0`, `layers_1`, ...
`scan_to_loop_params` / `loop_to_scan_params` convert between the two.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mgjax.models.dit_blocks import (
    ACTIVATION_AXES,
    MODULATIONS,
    NUM_MODULATION_VECTORS,
    DiTBlock,
    TextProjection,
    TimestepEmbedder,
    modulate,
    remat_policy,
    rms_norm,
)
from mgjax.models.layers import dense
from mgjax.models.positional import MODULE_NAME as POSITIONAL_NAME
from mgjax.models.positional import FactorizedPositionalEmbedding
from mgjax.parallel.sharding import constrain

TextInput = jax.Array | Mapping[str, Any]
SINGLE_TEXT_NAME = "text"  # encoder name used when `text` is one array


def patch_grid(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
  """(frames, height, width) in patches of a [B, T, H, W, C] latent; checks division."""
  _, t, h, w, _ = shape
  if t % patch[0] or h % patch[1] or w % patch[2]:
    raise ValueError(
        f"Latent video of shape {tuple(shape)} ([B, T, H, W, C]) does not divide into "
        f"patches of {tuple(patch)} (T, H, W). Crop or resize so T, H and W are "
        f"multiples of the patch."
    )
  return t // patch[0], h // patch[1], w // patch[2]


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """[B, T, H, W, C] -> [B, T' * H' * W', pt * ph * pw * C], tokens in (t, h, w) order."""
  b, _, _, _, c = x.shape
  gt, gh, gw = patch_grid(x.shape, patch)
  pt, ph, pw = patch
  x = x.reshape(b, gt, pt, gh, ph, gw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, T', H', W', pt, ph, pw, C]
  return x.reshape(b, gt * gh * gw, pt * ph * pw * c)


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch: Sequence[int]) -> jax.Array:
  """Inverse of `patchify`: [B, T' * H' * W', pt * ph * pw * C] -> [B, T, H, W, C]."""
  b = tokens.shape[0]
  gt, gh, gw = grid
  pt, ph, pw = patch
  c = tokens.shape[-1] // (pt * ph * pw)
  x = tokens.reshape(b, gt, gh, gw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, T', pt, H', ph, W', pw, C]
  return x.reshape(b, gt * pt, gh * ph, gw * pw, c)


def latent_shape(
    num_frames: int, height: int, width: int, tae_factors: Sequence[int] = (8, 8, 8)
) -> tuple[int, int, int]:
  """(T', H', W') the TAE makes of a video: ceil(T / ft) frames, H / fh x W / fw."""
  ft, fh, fw = tae_factors
  if height % fh or width % fw:
    raise ValueError(
        f"{height}x{width} pixels do not divide by the TAE's spatial " f"factors {fh}x{fw}."
    )
  return math.ceil(num_frames / ft), height // fh, width // fw


def num_tokens(
    num_frames: int,
    height: int,
    width: int,
    tae_factors: Sequence[int] = (8, 8, 8),
    patch: Sequence[int] = (1, 2, 2),
) -> int:
  """Transformer sequence length of a pixel video, e.g. 256 x 768 x 768 -> 73,728."""
  t, h, w = latent_shape(num_frames, height, width, tae_factors)
  return math.prod(patch_grid((1, t, h, w, 1), patch))


def text_inputs(
    text: TextInput, text_mask: jax.Array | None
) -> list[tuple[str, jax.Array, jax.Array]]:
  """Normalises the text argument to [(encoder name, emb [B, L, D_e], mask [B, L])].

  `text` is one array (with `text_mask`) or {name: emb or (emb, mask)}; encoders are
  sorted by name so the token order, and the parameter names, never depend on dict
  order. A missing mask means every token is valid.
  """
  if isinstance(text, Mapping):
    if text_mask is not None:
      raise ValueError(
          "With several text encoders, pass each mask in the dict as "
          "{name: (emb, mask)}, not as text_mask."
      )
    items = sorted(text.items())
  else:
    items = [(SINGLE_TEXT_NAME, (text, text_mask))]
  if not items:
    raise ValueError("VideoDiT needs at least one text encoder's embeddings.")
  out = []
  for name, value in items:
    emb, mask = value if isinstance(value, (tuple, list)) else (value, None)
    if emb.ndim != 3:
      raise ValueError(f"Text embeddings {name!r} must be [B, L, D]; got {emb.shape}.")
    if mask is None:
      mask = jnp.ones(emb.shape[:2], bool)
    if mask.shape != emb.shape[:2]:
      raise ValueError(
          f"Text mask {name!r} has shape {mask.shape}; expected " f"{emb.shape[:2]} ([B, L])."
      )
    out.append((name, emb, mask.astype(bool)))
  return out


class VideoDiT(nn.Module):
  """Flow-matching velocity model for latent videos and images.

  Attributes:
    num_layers, embed_dim, mlp_dim, num_heads: transformer shape (head dim =
      embed_dim / num_heads; no grouped-query attention).
    patch_size: (T, H, W) patch of the 3D patchify; a latent must divide into it.
    out_channels: velocity channels; None -> the input's channels. (Editing feeds
      extra conditioning channels in and still predicts the latent's 16.)
    max_frames, max_height, max_width: positional table sizes, in patches.
    modulation: "shared" (adaLN-single) or "per_block" (adaLN-Zero); see
      `mgjax.models.dit_blocks.MODULATIONS`.
    qk_norm: RMSNorm on each head's queries and keys.
    context_attention: "all_gather" | "ring", self-attention when the mesh's
      `context` axis splits the tokens (mgjax/parallel/attention.py).
    attention_implementation: the attention kernel, a name in
      `mgjax.kernels.attention.IMPLEMENTATIONS` ("auto" picks per platform).
    frequency_dim: width of the sinusoidal timestep features.
    num_tasks: task embeddings (0: none; `task` must then be None).
    task_tokens: cross-attention tokens per task embedding (the paper's 4).
    scan_layers: nn.scan over blocks (params stacked on a "layers" axis) vs a loop.
    remat_policy: a name in `mgjax.models.dit_blocks.REMAT_POLICIES`.
    dtype, param_dtype: compute and storage dtypes.
  """

  num_layers: int = 4
  embed_dim: int = 128
  mlp_dim: int = 384
  num_heads: int = 4
  patch_size: Sequence[int] = (1, 2, 2)
  out_channels: int | None = None
  max_frames: int = 32
  max_height: int = 64
  max_width: int = 64
  modulation: str = "shared"
  qk_norm: bool = True
  context_attention: str = "all_gather"
  attention_implementation: str = "auto"
  frequency_dim: int = 256
  num_tasks: int = 0
  task_tokens: int = 4
  scan_layers: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, model_config: Any, **overrides) -> VideoDiT:
    """Builds the model from a `config.model` section and `overrides` (settings kept
    elsewhere in the config); fields it lacks are ignored (e.g. latent_channels
    describes the inputs, not parameters)."""
    values = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {k: v for k, v in values.items() if k in names}
    for key in ("dtype", "param_dtype"):
      if key in kwargs:
        kwargs[key] = jnp.dtype(kwargs[key])
    if "patch_size" in kwargs:
      kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return cls(**kwargs)

  def _check(self):
    if len(self.patch_size) != 3:
      raise ValueError(f"patch_size is (T, H, W); got {self.patch_size}.")
    if self.modulation not in MODULATIONS:
      raise ValueError(f"Unknown modulation {self.modulation!r}; use one of {MODULATIONS}.")
    if self.embed_dim % self.num_heads:
      raise ValueError(
          f"embed_dim {self.embed_dim} is not divisible by num_heads " f"{self.num_heads}."
      )

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      t: jax.Array,
      text: TextInput,
      text_mask: jax.Array | None = None,
      concat: jax.Array | None = None,
      task: jax.Array | None = None,
  ) -> jax.Array:
    """Velocity [B, T, H, W, C_out] (float32) at latent x [B, T, H, W, C], time t [B].

    `text` is [B, L, D_text] with `text_mask` bool [B, L] (None: all valid), or
    {encoder name: emb [B, L_e, D_e] or (emb, mask [B, L_e])}. `concat`
    [B, T, H, W, C_c]: channels concatenated to x (zero-initialised weights).
    `task` int [B]: each example's task embedding (needs num_tasks > 0).
    """
    self._check()
    if x.ndim != 5:
      raise ValueError(f"VideoDiT expects latents [B, T, H, W, C]; got shape {x.shape}.")
    patch = tuple(self.patch_size)
    grid = patch_grid(x.shape, patch)
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = self.embed_dim

    tokens = dense(d, ("patch", "embed"), "patch_embed", use_bias=True, **common)(
        patchify(x.astype(self.dtype), patch)
    )  # [B, S, D]
    if concat is not None:
      if concat.shape[:4] != x.shape[:4]:
        raise ValueError(
            f"The concatenated condition {concat.shape} must share the latent's "
            f"[B, T, H, W] {x.shape[:4]}."
        )
      tokens += dense(d, ("patch", "embed"), "concat_embed", zero=True, **common)(
          patchify(concat.astype(self.dtype), patch)
      )  # [B, S, D]
    tokens = constrain(tokens, ACTIVATION_AXES)
    pos = FactorizedPositionalEmbedding(
        d,
        self.max_frames,
        self.max_height,
        self.max_width,
        param_dtype=self.param_dtype,
        name=POSITIONAL_NAME,
    )(
        grid
    )  # [S, D]

    t_emb = TimestepEmbedder(d, self.frequency_dim, name="time_embed", **common)(t)  # [B, D]
    task_tokens = None
    if task is not None:
      task_emb = self._task_embedding(task)  # [B, D]
      t_emb += dense(d, ("embed", "mlp"), "task_time", zero=True, use_bias=True, **common)(task_emb)
      task_tokens = dense(
          (self.task_tokens, d), ("embed", "modulation", "mlp"), "task_tokens", **common
      )(
          task_emb
      )  # [B, K, D]
    cond = nn.silu(t_emb)  # [B, D]
    if self.modulation == "shared":
      block_modulation = dense(
          (NUM_MODULATION_VECTORS, d),
          ("embed", "modulation", "mlp"),
          "adaln_shared",
          zero=True,
          use_bias=True,
          **common,
      )(
          cond
      )  # [B, 6, D]
    else:
      block_modulation = cond  # [B, D]; each block has its own Dense

    text_tokens, text_valid = self._embed_text(text, text_mask)  # [B, L, D], [B, L]
    if task_tokens is not None:
      text_tokens = jnp.concatenate([text_tokens, task_tokens], axis=1)  # [B, L + K, D]
      text_valid = jnp.concatenate([text_valid, jnp.ones(task_tokens.shape[:2], bool)], axis=1)

    x_tok = self._blocks(tokens, pos, block_modulation, text_tokens, text_valid)

    h = rms_norm("final_norm", use_scale=False, **common)(x_tok)
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
    c_out = self.out_channels or x.shape[-1]
    out = dense(
        math.prod(patch) * c_out, ("embed", "patch"), "final", zero=True, use_bias=True, **common
    )(
        h
    )  # [B, S, pt * ph * pw * C_out]
    return unpatchify(out, grid, patch).astype(jnp.float32)  # [B, T, H, W, C_out]

  def _task_embedding(self, task: jax.Array) -> jax.Array:
    """int [B] -> the learned vector of each example's task [B, D]."""
    if not self.num_tasks:
      raise ValueError("VideoDiT got `task` but has no task embeddings; set num_tasks.")
    if task.shape != (task.shape[0],) or not jnp.issubdtype(task.dtype, jnp.integer):
      raise ValueError(f"`task` must be int [B]; got {task.dtype} {task.shape}.")
    table = self.param(
        "task_embed",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        (self.num_tasks, self.embed_dim),
        self.param_dtype,
    )
    return jnp.take(table, task, axis=0).astype(self.dtype)

  def _embed_text(self, text: TextInput, text_mask: jax.Array | None):
    """Projects each encoder to the model width; concatenates along the sequence."""
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
    return jnp.concatenate(embs, axis=1), jnp.concatenate(masks, axis=1)

  def _blocks(self, x, pos, modulation, text, text_valid):
    """The N conditioned blocks, scanned or looped, with remat per block."""
    block_kwargs = dict(
        num_heads=self.num_heads,
        mlp_dim=self.mlp_dim,
        modulation=self.modulation,
        qk_norm=self.qk_norm,
        context_attention=self.context_attention,
        attention_implementation=self.attention_implementation,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    block_cls = DiTBlock
    policy_name = self.remat_policy
    if policy_name != "none":
      # prevent_cse is only needed outside scan, which already blocks CSE.
      block_cls = nn.remat(
          DiTBlock, policy=remat_policy(policy_name), prevent_cse=not self.scan_layers
      )
    else:
      remat_policy(policy_name)  # validates the name
    if self.scan_layers:
      stack = nn.scan(
          block_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 4,
          length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(name="layers", **block_kwargs)(x, pos, modulation, text, text_valid)
      return x
    for i in range(self.num_layers):
      x, _ = block_cls(name=f"layers_{i}", **block_kwargs)(x, pos, modulation, text, text_valid)
    return x


def scan_to_loop_params(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
  """Unboxed scanned params ("layers" with a leading axis) -> layers_0 .. layers_{N-1}."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
  return out


def loop_to_scan_params(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
  """Inverse of `scan_to_loop_params`: stacks layers_i along a new leading axis."""
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(
      lambda *a: jnp.stack(a), *[params[f"layers_{i}"] for i in range(num_layers)]
  )
  return out
