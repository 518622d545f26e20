"""The CLIP vision transformer (OpenAI CLIP / MetaCLIP image tower) in Flax Linen.

Personalised text-to-video conditions the video model on a reference image of
the subject: the image goes through a CLIP image encoder, and its output tokens
are projected and cross-attended by the video transformer. This module provides

  * `CLIPVisionConfig`: the tower's hyper-parameters, read from a transformers
    config.json (a `CLIPVisionModel`, `CLIPVisionModelWithProjection` or full
    `CLIPModel` one);
  * `preprocess`: 0..255 RGB images -> the normalised pixels CLIP expects, as
    transformers' `CLIPImageProcessor` makes them after resizing and cropping;
  * `CLIPVisionEncoder`: the network, numerically matching transformers'
    `CLIPVisionModel` (last_hidden_state, pooler_output) and
    `CLIPVisionModelWithProjection` (image_embeds), including its position-table
    interpolation for images of another size (`interpolate_pos_encoding=True`).

This module reads no files: `mgjax.text.hf_import.load_clip_vision` imports the
weights of a Hugging Face-format directory. The transformer block is the text
tower's (`clip_text.CLIPEncoderLayer`), without an attention mask.

The network, on pixels [B, H, W, C] (channels last) cut into p x p patches:

    x = [class_embedding, Patches(pixels) @ W_patch] + position_embedding
    x = pre_layrnorm(x)                      (transformers' spelling)
    x = x + OutProj(Attention(LN1(x)))       full bidirectional attention
    x = x + FC2(act(FC1(LN2(x))))            act: quick_gelu for CLIP
    last_hidden = x                          no final norm: the class token is
    pooled = post_layernorm(x[:, 0])         normed alone, for pooling
    image_embeds = pooled @ W_proj           when projection_dim > 0

Every parameter carries logical axis names so the encoder shards like the rest of
mgjax; parameters are float32 and the compute dtype is `config.dtype`.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgjax.models.clip_text import ACTIVATIONS, CLIPEncoderLayer, layer_norm
from mgjax.models.layers import dense, logical_init

# CLIPImageProcessor's normalisation (OpenAI's training statistics; MetaCLIP and
# most CLIP checkpoints on the Hub reuse them), per RGB channel, on 0..1 pixels.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIPImageProcessor's rescale_factor: 8-bit values -> 0..1.
PIXEL_RESCALE = 1.0 / 255.0

# torch's bicubic kernel coefficient (upsample_bicubic2d, Keys' a = -0.75); what
# transformers' interpolate_pos_encoding uses. jax.image.resize's is -0.5.
TORCH_BICUBIC_A = -0.75

# transformers' CLIPVisionConfig defaults, for keys a config.json leaves out.
_HF_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# transformers' default projection_dim (CLIPConfig's and CLIPVisionConfig's).
_HF_PROJECTION_DIM = 512


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Hyper-parameters of a CLIP vision tower (names follow mgjax, not transformers)."""

  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  image_size: int  # the side of the square images the position table was trained on
  patch_size: int
  num_channels: int = 3
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 0  # 0: no visual projection (image_embeds is None)
  dtype: str = "float32"  # compute dtype; parameters stay float32

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
          f"Unsupported hidden_act {self.hidden_act!r}; CLIPVisionEncoder "
          f"supports {sorted(ACTIVATIONS)}."
      )
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads "
          f"(num_attention_heads) {self.num_heads}."
      )
    if self.patch_size < 1 or self.image_size < self.patch_size:
      raise ValueError(
          f"Need 1 <= patch_size <= image_size; got patch_size {self.patch_size}, "
          f"image_size {self.image_size}."
      )
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size {self.image_size} is not a multiple of patch_size "
          f"{self.patch_size}; CLIPVisionEncoder needs a whole grid of patches."
      )
    if self.projection_dim < 0:
      raise ValueError(
          f"projection_dim must be >= 0 (0: no projection); got {self.projection_dim}."
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid_size(self) -> int:
    """Patches per side of an image_size image (the position table's grid)."""
    return self.image_size // self.patch_size

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> CLIPVisionConfig:
    """From a transformers config.json dict. Keys it leaves out take transformers'
    defaults.

    * A full CLIPModel config (MetaCLIP's too): its "vision_config" is used, and
      projection_dim is the top-level one (that of `visual_projection`; the
      "projection_dim" inside vision_config is an unused default there).
    * A CLIPVisionModelWithProjection config: its own projection_dim.
    * A CLIPVisionModel config: no projection (projection_dim 0), although
      transformers writes its default projection_dim into that config too.
    * A vision config dict without "architectures" is taken at its word: its
      projection_dim when present, else no projection.
    """
    vision = hf.get("vision_config") or hf.get("vision_config_dict")
    architectures = hf.get("architectures") or []
    if vision is not None:  # a full CLIPModel
      projection = hf.get("projection_dim")
      default = _HF_PROJECTION_DIM
    elif architectures and not any("Projection" in a for a in architectures):
      vision, projection, default = hf, 0, 0  # a CLIPVisionModel
    else:
      vision, projection = hf, hf.get("projection_dim")
      default = _HF_PROJECTION_DIM if architectures else 0
    projection = default if projection is None else projection
    values = {**_HF_DEFAULTS, **{k: v for k, v in vision.items() if v is not None}}
    if values["hidden_act"] not in ACTIVATIONS:
      raise ValueError(
          f"Unsupported hidden_act {values['hidden_act']!r} in config.json; "
          f"CLIPVisionEncoder supports {sorted(ACTIVATIONS)}."
      )
    return cls(
        hidden_size=int(values["hidden_size"]),
        intermediate_size=int(values["intermediate_size"]),
        num_layers=int(values["num_hidden_layers"]),
        num_heads=int(values["num_attention_heads"]),
        image_size=_square_side(values["image_size"], "image_size"),
        patch_size=_square_side(values["patch_size"], "patch_size"),
        num_channels=int(values["num_channels"]),
        hidden_act=values["hidden_act"],
        layer_norm_eps=float(values["layer_norm_eps"]),
        projection_dim=int(projection),
        dtype=dtype,
    )


def _square_side(value, key: str) -> int:
  """An int, or an [n, n] pair (transformers allows both spellings) -> n."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(
          f"Unsupported {key} {value!r} in config.json: CLIP's vision tower is square."
      )
    value = value[0]
  return int(value)


def preprocess(images: jax.Array) -> jax.Array:
  """RGB images [B, H, W, 3], uint8 or float in 0..255 -> float32 CLIP pixels.

  What transformers' `CLIPImageProcessor` does after resizing and centre-cropping:
  rescale by 1/255, then normalise each channel with OPENAI_CLIP_MEAN and
  OPENAI_CLIP_STD. Resizing to the encoder's image_size (224 for most CLIPs) is
  the caller's; other sizes work through the position-table interpolation.
  """
  if images.shape[-1] != len(OPENAI_CLIP_MEAN):
    raise ValueError(f"preprocess expects RGB images [B, H, W, 3]; got shape {images.shape}.")
  x = jnp.asarray(images).astype(jnp.float32) * PIXEL_RESCALE
  mean = jnp.asarray(OPENAI_CLIP_MEAN, jnp.float32)
  std = jnp.asarray(OPENAI_CLIP_STD, jnp.float32)
  return (x - mean) / std


@functools.lru_cache(maxsize=64)
def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of torch's 1-D bicubic resize.

  torch.nn.functional.interpolate(mode="bicubic", align_corners=False, no scale
  factor given): output i reads the source position (i + 0.5) * in/out - 0.5,
  weights its 4 neighbours with Keys' cubic kernel at a = -0.75, and clamps
  neighbour indices to the border (so border rows collect several weights).
  """
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  base = np.floor(src)
  t = src - base
  a = TORCH_BICUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

  taps = np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)  # [out, 4]
  index = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.repeat(np.arange(out_size), 4), index.ravel()), taps.ravel())
  return weights.astype(np.float32)


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """x [h, w, ...] -> [H, W, ...], as torch's bicubic interpolate (align_corners=False).

  Separable: rows, then columns, each a matrix product with `bicubic_weights`.
  Shapes are static, so the weights are constants of the traced program.
  """
  h, w = x.shape[:2]
  rows = jnp.asarray(bicubic_weights(h, size[0]))  # [H, h]
  cols = jnp.asarray(bicubic_weights(w, size[1]))  # [W, w]
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("Hh,hw...->Hw...", rows, x.astype(jnp.float32), precision=hi)
  return jnp.einsum("Ww,Hw...->HW...", cols, x, precision=hi)


def interpolate_positions(table: jax.Array, grid: int, size: tuple[int, int]) -> jax.Array:
  """Position table [1 + grid^2, D] -> [1 + H'W', D] for a size = (H', W') patch grid.

  transformers' `CLIPVisionEmbeddings.interpolate_pos_encoding`: the class-token
  row is kept, the patch rows are laid out as a grid x grid image and resized
  with torch's bicubic interpolation. The table is returned as is when `size` is
  the trained grid.
  """
  if tuple(size) == (grid, grid):
    return table
  patches = table[1:].reshape(grid, grid, table.shape[-1])  # [g, g, D]
  resized = resize_bicubic(patches, size).reshape(size[0] * size[1], table.shape[-1])
  return jnp.concatenate([table[:1], resized.astype(table.dtype)], axis=0)


class CLIPVisionEmbeddings(nn.Module):
  """Patch embedding (a conv with kernel = stride = patch, no bias, done as a
  matmul on flattened patches), class token, learned position table.

  Images of another size than image_size (sides multiples of patch_size) get the
  bicubically interpolated position table (`interpolate_positions`).
  """

  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, 1 + N, D]
    cfg = self.config
    b, h, w, c = pixels.shape
    p, d = cfg.patch_size, cfg.hidden_size
    if c != cfg.num_channels:
      raise ValueError(
          f"CLIPVisionEncoder expects channels-last pixels [B, H, W, {cfg.num_channels}]; "
          f"got shape {pixels.shape}."
      )
    if h % p or w % p:
      raise ValueError(
          f"CLIPVisionEncoder got a {h}x{w} (HxW) image, not a multiple of patch_size "
          f"{p} on both sides; resize or crop it (e.g. to {cfg.image_size}x{cfg.image_size})."
      )
    dtype = jnp.dtype(cfg.dtype)
    gh, gw = h // p, w // p
    patches = pixels.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, p * p * c)  # [B, N, p*p*C], (row, col, channel)
    tokens = dense(d, ("patch", "embed"), "patch_embedding", dtype, jnp.float32)(
        patches
    )  # [B, N, D]
    init = nn.initializers.normal(0.02)
    cls_token = self.param("class_embedding", logical_init(init, ("embed",)), (d,), jnp.float32)
    table = self.param(
        "position_embedding",
        logical_init(init, ("vision_pos", "embed")),
        (1 + cfg.grid_size**2, d),
        jnp.float32,
    )  # [1 + g^2, D]
    table = interpolate_positions(table, cfg.grid_size, (gh, gw))  # [1 + N, D]
    cls_tokens = jnp.broadcast_to(cls_token.astype(dtype), (b, 1, d))
    x = jnp.concatenate([cls_tokens, tokens.astype(dtype)], axis=1)  # [B, 1 + N, D]
    return x + table.astype(dtype)[None]


class CLIPVisionEncoder(nn.Module):
  """CLIP vision tower: pixels [B, H, W, C] -> (last_hidden [B, 1 + N, D],
  pooled [B, D], image_embeds [B, P] or None).

  `pixels` are already normalised (`preprocess`), channels last. Outputs match
  transformers' `CLIPVisionModel` last_hidden_state (the encoder output, no final
  norm; token 0 is the class token, then the N = (H/p)(W/p) patches row-major)
  and pooler_output (post_layernorm of the class token), and, when
  projection_dim > 0, `CLIPVisionModelWithProjection`'s image_embeds (unnormalised).
  Images of another size than image_size are encoded as transformers does with
  `interpolate_pos_encoding=True`.
  """

  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    cfg = self.config
    x = CLIPVisionEmbeddings(cfg, name="embeddings")(pixels)  # [B, 1 + N, D]
    x = layer_norm(cfg, "pre_layrnorm")(x)
    for i in range(cfg.num_layers):
      x = CLIPEncoderLayer(cfg, name=f"layers_{i}")(x)  # no mask: full attention
    pooled = layer_norm(cfg, "post_layernorm")(x[:, 0])  # [B, D]
    image_embeds = None
    if cfg.projection_dim:
      image_embeds = dense(
          cfg.projection_dim,
          ("embed", "proj"),
          "visual_projection",
          jnp.dtype(cfg.dtype),
          jnp.float32,
      )(
          pooled
      )  # [B, P]
    return x, pooled, image_embeds
