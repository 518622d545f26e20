"""The edit model's parts that need no training: task embeddings, the zero-initialised
condition channels, and the conditions of every task. The task through the trainer
(stages, back-translation, evaluation, sampling) is tested in tests/test_t2v.py, on
the text-to-video tests' run."""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax.models.dit import VideoDiT
from mgjax.tasks import edit_conditions as conds

B, T, H, W, C = 3, 4, 4, 4, 8


@pytest.fixture(scope="module")
def model_and_params():
  """(model, its initial params, random params but for the two zero-init layers)."""
  model = VideoDiT(num_layers=1, embed_dim=32, mlp_dim=64, num_heads=2, num_tasks=len(conds.TASKS))
  init = jax.jit(
      lambda: model.init(
          jax.random.key(0), jnp.zeros((1, T, H, W, C)), jnp.zeros((1,)), jnp.zeros((1, 5, 16)),
          concat=jnp.zeros((1, T, H, W, C + 1)), task=jnp.zeros((1,), jnp.int32),
      )["params"]
  )  # fmt: skip
  initial = flax.core.unfreeze(nn.meta.unbox(init()))
  # Zero-initialised modulation and output layers would hide every difference: a
  # trained model's weights are random-looking, except the two zero-init ones tested.
  leaves, tree = jax.tree.flatten(initial)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
      tree, [0.3 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]
  )
  for name in ("concat_embed", "task_time"):
    params[name] = initial[name]
  return jax.jit(model.apply), initial, params


def inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (B, T, H, W, C))
  text = jax.random.normal(keys[1], (B, 5, 16))
  concat = jax.random.normal(keys[2], (B, T, H, W, C + 1))
  return x, jnp.full((B,), 0.3), text, concat


def test_zero_initialised_weights_of_the_new_inputs(model_and_params):
  _, initial, _ = model_and_params
  for name in ("concat_embed", "task_time"):
    assert not any(np.any(np.asarray(a)) for a in jax.tree.leaves(initial[name])), name
  assert np.asarray(initial["task_embed"]).std() > 0
  assert np.asarray(initial["task_tokens"]["kernel"]).std() > 0


def test_the_condition_channels_start_at_zero_and_the_task_reaches_the_model(model_and_params):
  apply, _, params = model_and_params
  x, t, text, concat = inputs()
  task = jnp.asarray([conds.task_id("t2v"), conds.task_id("color"), conds.task_id("extend")])
  v = apply({"params": params}, x, t, text, concat=concat, task=task)
  # Zero-initialised concat weights: any condition gives the same velocity at step 0.
  v_other = apply({"params": params}, x, t, text, concat=2 * concat + 1, task=task)
  np.testing.assert_array_equal(np.asarray(v), np.asarray(v_other))
  # The timestep path's task projection starts at zero too (a T2V run loads
  # unchanged), while the task's tokens in the cross-attention tell the tasks apart.
  swapped = apply({"params": params}, x, t, text, concat=concat, task=task[::-1])
  assert np.abs(np.asarray(swapped - v))[[0, 2]].max() > 1e-4
  np.testing.assert_array_equal(np.asarray(swapped[1]), np.asarray(v[1]))  # same task
  # Once trained (here: a non-zero time projection) the task also moves the timestep path.
  params_t = dict(
      params,
      task_time={
          "kernel": jnp.ones_like(params["task_time"]["kernel"]),
          "bias": params["task_time"]["bias"],
      },
  )
  moved = apply({"params": params_t}, x, t, text, concat=concat, task=task)
  assert np.abs(np.asarray(moved - v)).max() > 1e-4


def test_tasks_need_task_embeddings_and_integer_ids(model_and_params):
  apply, _, params = model_and_params
  x, t, text, concat = inputs()
  with pytest.raises(ValueError, match="must be int"):
    apply({"params": params}, x, t, text, concat=concat, task=jnp.zeros((B,)))
  plain = VideoDiT(num_layers=1, embed_dim=32, mlp_dim=64, num_heads=2)
  with pytest.raises(ValueError, match="set num_tasks"):
    jax.eval_shape(plain.init, jax.random.key(0), x, t, text, task=jnp.zeros((B,), jnp.int32))


def test_generation_conditions_of_each_task():
  rng = jax.random.key(0)
  latent = jnp.arange(8 * T, dtype=jnp.float32).reshape(8, T, 1, 1, 1) + 1.0  # frame ids
  first, last = jnp.full((8, 1, 1, 1, 1), -1.0), jnp.full((8, 1, 1, 1, 1), -2.0)
  for name in conds.GENERATION_TASKS:
    mix = jnp.asarray([n == name for n in conds.GENERATION_TASKS], jnp.float32)
    out = conds.generation_conditions(rng, latent, first, last, mix)
    assert (np.asarray(out["task"]) == conds.task_id(name)).all()
    cond, mask, known = (np.asarray(out[k]) for k in ("cond", "cond_mask", "known"))
    if name == "t2v":
      assert not cond.any() and not mask.any() and not known.any()
    elif name == "i2v":
      np.testing.assert_array_equal(mask, np.tile([1, 0, 0, 0], (8, 1)))
      assert (cond[:, 0] == -1).all() and not cond[:, 1:].any() and not known.any()
    elif name == "first_last":
      np.testing.assert_array_equal(mask, np.tile([1, 0, 0, 1], (8, 1)))
      assert (cond[:, 0] == -1).all() and (cond[:, -1] == -2).all() and not known.any()
    else:  # extend: a prefix of 1..T-1 frames, the clip's own latents, known exactly
      np.testing.assert_array_equal(mask, known)
      lengths = known.sum(1)
      assert lengths.min() >= 1 and lengths.max() <= T - 1 and len(set(lengths)) > 1
      for row, k in zip(range(8), lengths.astype(int)):
        np.testing.assert_array_equal(known[row], np.arange(T) < k)
        np.testing.assert_array_equal(cond[row, :k], np.asarray(latent)[row, :k])
        assert not cond[row, k:].any()
  # Images are text-to-image whatever the mix says.
  image = conds.generation_conditions(rng, latent[:, :1], first, last, jnp.asarray([0.0, 1, 0, 0]))
  assert (np.asarray(image["task"]) == conds.task_id("t2v")).all()


def test_training_conditions_keep_edits_and_draw_generation_for_clips():
  batch = {
      "latent": jnp.ones((4, T, 1, 1, 1)),
      "source_latent": jnp.full((4, T, 1, 1, 1), 5.0),
      "first_latent": jnp.zeros((4, 1, 1, 1, 1)),
      "last_latent": jnp.zeros((4, 1, 1, 1, 1)),
      "task": jnp.asarray([conds.task_id(k) for k in ("t2v", "color", "add", "t2v")]),
  }
  out = conds.training_conditions(jax.random.key(0), batch, jnp.asarray([0.0, 0, 0, 1]), 0.0)
  np.testing.assert_array_equal(
      np.asarray(out["task"]), [conds.task_id(k) for k in ("extend", "color", "add", "extend")]
  )
  assert (np.asarray(out["cond"])[1:3] == 5).all() and (
      np.asarray(out["cond_mask"])[1:3] == 1
  ).all()
  assert not np.asarray(out["known"])[1:3].any()  # an edit changes every frame
  generic = conds.training_conditions(jax.random.key(0), batch, jnp.asarray([1.0, 0, 0, 0]), 1.0)
  np.testing.assert_array_equal(
      np.asarray(generic["task"]), [conds.task_id(k) for k in ("t2v", "edit", "edit", "t2v")]
  )


def test_request_conditions_and_their_errors():
  prefix = np.ones((2, H, W, C), np.float32)
  c = conds.request_condition(T, (H, W, C), task="extend", prefix=prefix)
  np.testing.assert_array_equal(c["known"], [1, 1, 0, 0])
  np.testing.assert_array_equal(c["cond_mask"], [1, 1, 0, 0])
  c = conds.request_condition(
      T, (H, W, C), task="first_last", first=prefix[:1], last=2 * prefix[:1]
  )
  np.testing.assert_array_equal(c["cond_mask"], [1, 0, 0, 1])
  assert (c["cond"][-1] == 2).all() and not c["known"].any()
  with pytest.raises(ValueError, match="keeps 1..3 latent frames"):
    conds.request_condition(T, (H, W, C), task="extend", prefix=np.ones((T, H, W, C)))
  with pytest.raises(ValueError, match="Unknown edit task 'recolor'"):
    conds.request_condition(T, (H, W, C), task="recolor")


def test_the_stage_configs_and_the_demo_recipe():
  from mgjax import configs

  for stage, manifests in (("stage1", "image_edits.jsonl"), ("stage2", "video_edits.jsonl")):
    config = configs.load_config(f"experiments/edit.py:{stage}")
    assert config.task == "edit" and manifests in config.edit.manifests
  assert configs.load_config("experiments/edit.py:stage3_30b").model.embed_dim == 6144
  assert [b[1] for b in configs.load_config("experiments/edit.py:stage1").data.buckets] == [1, 32]
  demo = configs.load_config("experiments/edit_shapes.py")
  assert [name for name, _ in demo.train.recipe] == ["t2v", "stage1", "stage2"]
  assert demo.edit.backtranslate.run == "stage2" and demo.edit.baselines.sdedit == "t2v"
  with pytest.raises(ValueError, match="Unknown edit stage 'stage4'"):
    configs.load_config("experiments/edit.py:stage4")
