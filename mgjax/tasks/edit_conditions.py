"""What the edit model is conditioned on besides the text: a latent video, a frame
mask, the frames it must keep, and a task.

One model serves instruction editing and the conditional generation users ask of
video models, each example by its own condition (latents at the codec's scale; the
model standardises them like its input):

  task        cond [T', h, w, C]         cond_mask [T']      known [T']
  t2v         zeros                      0                   0
  i2v         the image's latent at 0    1 at frame 0        0
  first_last  the images' latents at     1 at 0 and T' - 1   0
              0 and T' - 1
  extend      the video's first K        1 on frames < K     1 on frames < K
              latent frames
  <edit>      the source video's latent  1 everywhere        0

The model reads `cond * cond_mask` and `cond_mask` as C + 1 channels concatenated
to the noisy latent (zero-initialised weights, mgjax/models/dit.py) and the task's
embedding. An image is encoded on its own (a 1-frame video), so i2v's condition is
the image, not the first latent frame of the clip, which also holds the 7 frames
after it. `known` frames are given exactly: the model's input there is the clean
latent (training and sampling alike), the loss leaves them out, and sampling
returns them unchanged, so an extended video keeps its frames bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GENERATION_TASKS = ("t2v", "i2v", "first_last", "extend")
EDIT_KINDS = ("color", "shape", "background", "add", "remove", "motion", "segment")
# "edit" stands for any instruction (a kind the model was not trained on by name):
# training shows it in place of a kind with probability edit.generic_task_prob.
TASKS = GENERATION_TASKS + ("edit",) + EDIT_KINDS
TASK_IDS = {name: i for i, name in enumerate(TASKS)}


def task_id(name: str) -> int:
  if name not in TASK_IDS:
    raise ValueError(f"Unknown edit task {name!r}; the tasks are {TASKS}.")
  return TASK_IDS[name]


def concat_channels(cond: jax.Array, cond_mask: jax.Array) -> jax.Array:
  """[B, T', h, w, C] and [B, T'] -> the model's extra input [B, T', h, w, C + 1]."""
  mask = jnp.broadcast_to(cond_mask[:, :, None, None, None], cond.shape[:4] + (1,))
  return jnp.concatenate([cond * mask, mask.astype(cond.dtype)], axis=-1)


def generation_conditions(
    rng: jax.Array,
    latent: jax.Array,
    first: jax.Array,
    last: jax.Array,
    mix: jax.Array,
) -> dict[str, jax.Array]:
  """A random generation task per clip with its condition (see the table).

  latent [B, T', h, w, C], first / last [B, 1, h, w, C] (the clip's first and last
  frame encoded as images); mix [4]: probabilities of
  GENERATION_TASKS. Images (T' = 1) are always t2v. Returns {task [B] int32, cond,
  cond_mask [B, T'], known [B, T']}.
  """
  b, num_frames = latent.shape[:2]
  task_rng, length_rng = jax.random.split(rng)
  if num_frames == 1:
    kind = jnp.zeros((b,), jnp.int32)
  else:
    kind = jax.random.choice(task_rng, len(GENERATION_TASKS), (b,), p=mix).astype(jnp.int32)
  frame = jnp.arange(num_frames)[None]  # [1, T']
  is_task = lambda name: (kind == GENERATION_TASKS.index(name))[:, None]  # [B, 1]
  prefix = jax.random.randint(length_rng, (b, 1), 1, max(num_frames, 2))  # K in [1, T')
  known = is_task("extend") & (frame < prefix)  # [B, T']
  at_first = (is_task("i2v") | is_task("first_last")) & (frame == 0)
  at_last = is_task("first_last") & (frame == num_frames - 1)
  cond_mask = known | at_first | at_last
  expand = lambda m: m[:, :, None, None, None]
  cond = jnp.where(
      expand(known), latent, jnp.where(expand(at_first), first, jnp.where(expand(at_last), last, 0))
  )
  ids = jnp.asarray([TASK_IDS[name] for name in GENERATION_TASKS], jnp.int32)[kind]
  return {
      "task": ids,
      "cond": cond,
      "cond_mask": cond_mask.astype(jnp.float32),
      "known": known.astype(jnp.float32),
  }


def training_conditions(
    rng: jax.Array, batch: dict, mix: jax.Array, generic_prob: float
) -> dict[str, jax.Array]:
  """Each example's condition: its edit (batch["task"] an edit kind: the source video,
  every frame given) or a random generation task (batch["task"] t2v: a plain clip).

  batch: latent, source_latent, first_latent, last_latent, task [B].
  """
  gen_rng, generic_rng = jax.random.split(rng)
  latent = batch["latent"]
  generated = generation_conditions(
      gen_rng, latent, batch["first_latent"], batch["last_latent"], mix
  )
  is_edit = batch["task"] != TASK_IDS["t2v"]  # [B]
  generic = jax.random.bernoulli(generic_rng, generic_prob, is_edit.shape) & is_edit
  edit_task = jnp.where(generic, TASK_IDS["edit"], batch["task"]).astype(jnp.int32)
  num_frames = latent.shape[1]
  edit_mask = jnp.broadcast_to(is_edit[:, None], (latent.shape[0], num_frames))
  return {
      "task": jnp.where(is_edit, edit_task, generated["task"]),
      "cond": jnp.where(
          is_edit[:, None, None, None, None], batch["source_latent"], generated["cond"]
      ),
      "cond_mask": jnp.where(edit_mask, 1.0, generated["cond_mask"]),
      "known": jnp.where(edit_mask, 0.0, generated["known"]),
  }


def request_condition(
    num_frames: int,
    shape: tuple[int, ...],
    *,
    task: str,
    source: np.ndarray | None = None,
    first: np.ndarray | None = None,
    last: np.ndarray | None = None,
    prefix: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """One example's condition at sampling (latents at codec scale, see the table):
  `source` [T', h, w, C] for an edit, `first` / `last` [1, h, w, C] images, `prefix`
  [K, h, w, C] the known frames of an extension. Returns {task, cond [T', h, w, C],
  cond_mask [T'], known [T']}."""
  cond = np.zeros((num_frames,) + tuple(shape), np.float32)
  cond_mask, known = np.zeros(num_frames, np.float32), np.zeros(num_frames, np.float32)
  if source is not None:
    cond[:], cond_mask[:] = source, 1.0
  if first is not None:
    cond[0], cond_mask[0] = first[0], 1.0
  if last is not None:
    cond[-1], cond_mask[-1] = last[0], 1.0
  if prefix is not None:
    k = len(prefix)
    if not 0 < k < num_frames:
      raise ValueError(f"An extension keeps 1..{num_frames - 1} latent frames; got {k}.")
    cond[:k], cond_mask[:k], known[:k] = prefix, 1.0, 1.0
  return {"task": np.int32(task_id(task)), "cond": cond, "cond_mask": cond_mask, "known": known}
