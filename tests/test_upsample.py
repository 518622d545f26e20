"""The spatial upsampler's parts: window plan and blend weights, MultiDiffusion against
one window at a time (far from seams) and against naive concatenation (at seams),
zero-initialised concatenated channels, degradations, configs. The task end to end
(train, evaluate, mgjax.sample on files and chained after text-to-video) is in
tests/test_t2v.py, on that module's trained TAE and text-to-video run."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import upsampler as upsampler_config
from experiments import upsampler_shapes
from mgjax import flow, multidiffusion
from mgjax.data import degrade
from mgjax.models.dit import VideoDiT
from tests.test_audio_longform import gaussian_velocity
from tests.test_dit import num_params, random_variables, small_dit

C = 4  # latent channels of the small DiT


# ----------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "num_frames, starts",
    [(14, (0,)), (15, (0, 1)), (24, (0, 10)), (37, (0, 10, 20, 23)), (42, (0, 10, 20, 28))],
)
def test_windows_and_average_blend_weights_of_the_default_14_4(num_frames, starts):
  config = upsampler_config.get_config("tiny").upsample
  window, overlap = config.window, config.overlap
  assert multidiffusion.window_starts(num_frames, window, overlap) == starts
  index, weight = multidiffusion.blend_plan(num_frames, window, overlap, "average")
  assert index.shape == weight.shape == (len(starts), min(window, num_frames))
  coverage = np.zeros(num_frames)
  np.add.at(coverage, index, 1)
  totals = np.zeros(num_frames)
  np.add.at(totals, index, weight)
  np.testing.assert_allclose(totals, 1.0, atol=1e-6)  # every frame's weights sum to 1
  # "average": each window covering a frame counts the same.
  np.testing.assert_allclose(weight, 1.0 / coverage[index], atol=1e-6)
  expected_coverage = {14: [1] * 14, 15: [1] + [2] * 13 + [1], 24: [1] * 10 + [2] * 4 + [1] * 10}
  if num_frames in expected_coverage:
    assert coverage.tolist() == expected_coverage[num_frames]
  if num_frames == 37:  # the last window is aligned to the end: 20..33 and 23..36
    assert coverage.tolist() == [1] * 10 + [2] * 4 + [1] * 6 + [2] * 3 + [3] + [2] * 10 + [1] * 3


def test_seam_transitions_are_the_window_edges_inside_the_clip():
  assert multidiffusion.seam_transitions(14, 14, 4).tolist() == []
  # windows 0..13 and 10..23: one starts at 10 (transition 9 -> 10), one ends at 13.
  assert multidiffusion.seam_transitions(24, 14, 4).tolist() == [9, 13]


def test_the_defaults_are_the_papers():
  config = upsampler_config.get_config("tiny")
  assert (config.upsample.window, config.upsample.overlap, config.upsample.factor) == (14, 4, 2)
  assert config.flow.sample_steps == 20 and config.eval.num_steps == 20
  assert config.model.max_frames >= config.upsample.window
  assert "python -m mgjax.sample --task=upsample" in upsampler_config.__doc__
  assert (
      "python -m mgjax.train --config=experiments/upsampler_shapes.py" in upsampler_shapes.__doc__
  )
  demo = upsampler_shapes.get_config()
  assert demo.task == "upsample" and demo.data.name == "shapes"


# ---------------------------------------------------- MultiDiffusion on a DiT


@pytest.fixture(scope="module")
def window_model():
  """velocity(x [B, W, 2, 2, C], t, lowres (aligned), text (per example), variables) of
  a small DiT with random weights (no zero-init layer hides an input) and the
  low-res latents concatenated; one token per frame, so attention mixes all frames
  of a window at full strength."""
  model = small_dit(max_frames=14, patch_size=(1, 2, 2))
  x = jnp.zeros((1, 14, 2, 2, C))
  text = jnp.zeros((1, 3, 8))
  variables = random_variables(model, x, jnp.zeros((1,)), text, None, x, scale=0.3)

  def velocity(x, t, lowres, text, variables):
    return model.apply(variables, x, t, text, None, lowres)

  return velocity, variables


def smooth_clip(num_frames, seed=0):
  """Latent-like clip [1, T, 2, 2, C] that changes smoothly in time."""
  rng = np.random.default_rng(seed)
  phase, freq = rng.uniform(0, 2 * np.pi, (1, 1, 2, 2, C)), rng.uniform(0.05, 0.2, (1, 1, 2, 2, C))
  t = np.arange(num_frames)[None, :, None, None, None]
  return jnp.asarray(np.sin(freq * t + phase), jnp.float32)


def test_multidiffusion_matches_single_windows_far_from_seams_and_has_no_seam_jump(
    window_model,
):
  velocity, variables = window_model
  num_frames, window, overlap = 42, 14, 4  # 3 windows' worth: 4 windows, starts 0, 10, 20, 28
  lowres = smooth_clip(num_frames)
  text = jnp.ones((1, 3, 8))
  noise = jax.random.normal(jax.random.key(1), lowres.shape)
  times = flow.make_schedule("linear", 20)
  blended = np.asarray(
      multidiffusion.sample(
          velocity,
          noise,
          times,
          window=window,
          overlap=overlap,
          weighting="average",
          aligned=(lowres,),
          per_example=(text,),
          args=(variables,),
      )
  )  # [1, T, 2, 2, C]
  starts = multidiffusion.window_starts(num_frames, window, overlap)
  alone = [
      np.asarray(
          flow.solve(
              velocity,
              noise[:, s : s + window],
              times,
              args=(lowres[:, s : s + window], text, variables),
          )
      )
      for s in starts
  ]
  # Far from seams: frames only one window covers, 3 or more frames from any other
  # window, equal that window solved alone, within a bound (attention lets the
  # overlap's blended frames reach the whole window, so not exactly).
  index, _ = multidiffusion.blend_plan(num_frames, window, overlap, "average")
  coverage = np.bincount(index.ravel(), minlength=num_frames)
  scale = np.abs(np.concatenate(alone, axis=1)).mean()
  far_errors = []
  for k, s in enumerate(starts):
    for f in range(s, s + window):
      others = [i for i, o in enumerate(starts) if i != k]
      distance = min(
          min(abs(f - o), abs(f - (o + window - 1))) for o in (starts[i] for i in others)
      )
      if coverage[f] == 1 and distance >= 3:
        far_errors.append(np.abs(blended[:, f] - alone[k][:, f - s]).mean() / scale)
  print(f"far from seams: {len(far_errors)} frames, relative error max {max(far_errors):.4f}")
  assert len(far_errors) >= 10 and max(far_errors) < 0.05  # measured 0.013


def test_the_average_blend_has_no_seam_where_naive_concatenation_jumps():
  """On a model that knows no absolute position (the exact velocity of a stationary
  Gaussian process, tests/test_audio_longform.py), windows solved alone get unrelated
  phases, so butting them together jumps at every seam; one blended ODE does not."""
  num_frames, window, overlap = 42, 14, 4
  noise = jax.random.normal(jax.random.key(2), (16, num_frames, 1))
  times = flow.make_schedule("linear", 20)
  zeros = jnp.zeros_like(noise)
  aligned, per_example = (zeros, zeros, zeros), (jnp.zeros((16, 1)),)
  blended = np.asarray(
      multidiffusion.sample(
          gaussian_velocity,
          noise,
          times,
          window=window,
          overlap=overlap,
          weighting="average",
          aligned=aligned,
          per_example=per_example,
      )
  )
  naive = np.zeros_like(blended)
  for s in multidiffusion.window_starts(num_frames, window, overlap):
    piece = functools.partial(lambda a, s: a[:, s : s + window], s=s)
    naive[:, s : s + window] = flow.solve(
        gaussian_velocity, piece(noise), times, args=(*map(piece, aligned), *per_example)
    )
  seams = multidiffusion.seam_transitions(num_frames, window, overlap)
  elsewhere = np.setdiff1d(np.arange(num_frames - 1), seams)
  jumps = lambda z: np.abs(np.diff(z, axis=1)).mean(axis=(0, 2))  # [T - 1]
  ratio = lambda z: jumps(z)[seams].mean() / jumps(z)[elsewhere].mean()
  print(f"seam / elsewhere frame change: blended {ratio(blended):.2f}, naive {ratio(naive):.2f}")
  assert ratio(blended) < 1.3  # measured 1.15
  assert ratio(naive) > 1.5 * ratio(blended)  # measured 1.92: the check can fail


def test_windows_a_few_at_a_time_give_the_same_velocity(window_model):
  """`windows_per_call` (bounded memory for long HD clips) changes nothing else."""
  velocity, variables = window_model
  x, lowres = smooth_clip(37, seed=1), smooth_clip(37, seed=2)
  t, text = jnp.array([0.4]), jnp.ones((1, 3, 8))
  blend = functools.partial(
      multidiffusion.blended_velocity, velocity, x, t, (lowres,), (text,), (variables,)
  )
  everything = blend(window=14, overlap=4, weighting="average")
  for k in (1, 3):  # 4 windows: 4 calls, or 2 calls of 3 (the last one padded)
    np.testing.assert_allclose(
        blend(window=14, overlap=4, weighting="average", windows_per_call=k), everything, atol=1e-5
    )


# ------------------------------------------------- zero-initialised channels


def test_zero_initialised_concat_channels_change_nothing_at_step_zero():
  model = VideoDiT(
      num_layers=2, embed_dim=32, mlp_dim=64, num_heads=2, max_frames=4, max_height=4, max_width=4
  )
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, C))
  t, text = jnp.array([0.3, 0.8]), jax.random.normal(jax.random.key(1), (2, 5, 8))
  lowres = jax.random.normal(jax.random.key(2), (2, 3, 4, 4, C))
  variables = jax.jit(model.init)(jax.random.key(3), x, t, text, None, lowres)
  assert not np.any(np.asarray(nn.meta.unbox(variables)["params"]["concat_embed"]["kernel"]))
  # A model trained a while (random weights everywhere, concat_embed zero as at the
  # start of fine-tuning): the condition changes nothing ...
  trained = random_variables(model, x, t, text, None, lowres, scale=0.3)
  trained["params"]["concat_embed"] = jax.tree.map(
      jnp.zeros_like, trained["params"]["concat_embed"]
  )
  without = {"params": {k: v for k, v in trained["params"].items() if k != "concat_embed"}}
  apply = jax.jit(model.apply)
  out_plain = apply(without, x, t, text)
  np.testing.assert_array_equal(apply(trained, x, t, text, None, lowres), out_plain)
  np.testing.assert_array_equal(apply(trained, x, t, text, None, 5 * lowres), out_plain)
  # ... and once its weights move, it does (the check can fail).
  trained["params"]["concat_embed"]["kernel"] = trained["params"]["concat_embed"]["kernel"] + 0.1
  assert np.abs(np.asarray(apply(trained, x, t, text, None, lowres) - out_plain)).max() > 1e-3
  with pytest.raises(ValueError, match="must share the latent"):
    model.apply(trained, x, t, text, None, lowres[:, :2])


# ----------------------------------------------------------- degradations


def test_degradations_are_deterministic_per_clip_and_seed():
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
  config = degrade.default_config()
  low = degrade.degrade(clip, 2, config, seed=0)
  assert low.shape == (5, 16, 24, 3) and low.dtype == np.uint8
  np.testing.assert_array_equal(low, degrade.degrade(clip.copy(), 2, config, seed=0))
  assert np.abs(low.astype(int) - degrade.degrade(clip, 2, config, seed=1)).mean() > 0.5
  # Two clips draw their own strengths (a function of the pixels).
  draws = {
      tuple(degrade.draw_rounds(config, np.random.default_rng(degrade.clip_seed(c, 0))))
      for c in (clip, other)
  }
  assert len(draws) == 2
  # Off: a plain bicubic downsample.
  config.enabled = False
  np.testing.assert_array_equal(
      degrade.degrade(clip, 2, config), degrade.resize_video(clip, 16, 24, "bicubic")
  )
  with pytest.raises(ValueError, match="upsampling factor 3"):
    degrade.degrade(clip, 3, config)
  config.update(enabled=True, noise_sigma=(5.0, 1.0))
  with pytest.raises(ValueError, match="noise_sigma"):
    degrade.degrade(clip, 2, config)


def test_a_blurred_noisy_input_is_further_from_the_truth_than_a_clean_one():
  """The degradations do what they say: degraded-then-bicubic frames are worse than
  clean-then-bicubic ones, on average over clips."""
  rng = np.random.default_rng(1)
  ys, xs = np.mgrid[:32, :32]
  clips = [
      np.stack([((np.sin(xs / 3 + f + k) + np.cos(ys / 4)) * 60 + 128) for f in range(3)])[
          ..., None
      ]
      .repeat(3, -1)
      .astype(np.uint8)
      for k in rng.uniform(0, 6, 6)
  ]
  clean, strong = degrade.default_config(), degrade.default_config()
  clean.enabled = False
  strong.update(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
  error = lambda c: np.mean(
      [
          np.abs(
              degrade.resize_video(degrade.degrade(x, 2, c), 32, 32, "bicubic").astype(int) - x
          ).mean()
          for x in clips
      ]
  )
  assert error(strong) > error(clean) + 2


# ------------------------------------------------------------------ configs


def test_7b_parameter_count_by_eval_shape():
  config = upsampler_config.get_config("7b")
  model = VideoDiT.from_config(config.model)
  x = jax.ShapeDtypeStruct((1, 1, 2, 2, 16), jnp.float32)
  shapes = jax.eval_shape(
      model.init,
      jax.random.key(0),
      x,
      jax.ShapeDtypeStruct((1,), jnp.float32),
      jax.ShapeDtypeStruct((1, 1, 4096), jnp.float32),  # UL2's width
      None,
      x,
  )
  total = num_params(shapes)
  print(f"7b upsampler: {total:,} parameters")
  assert total == 7_184_066_624
  d = config.model.embed_dim
  assert (config.model.num_layers, d, config.model.mlp_dim) == (34, 3584, 9728)
  # The extra input: a patch of 1 x 2 x 2 x 16 latent channels to the width, no bias.
  assert num_params(shapes["params"]["concat_embed"]) == 2 * 2 * 16 * d
  with pytest.raises(ValueError, match="tiny, 7b"):
    upsampler_config.get_config("30b")


def test_bad_upsample_settings_are_refused():
  from mgjax.tasks.upsample import UpsampleTask

  config = upsampler_config.get_config("tiny")
  config.upsample.overlap = 14
  with pytest.raises(ValueError, match="overlap"):
    UpsampleTask.for_shapes(config, codec_config=ml_collections.ConfigDict(_tae_model()))
  config.upsample.overlap, config.upsample.window = 4, 20
  with pytest.raises(ValueError, match="model.max_frames"):
    UpsampleTask.for_shapes(config, codec_config=ml_collections.ConfigDict(_tae_model()))


def _tae_model():
  from experiments import tae

  return tae.get_config("tiny").to_dict()


def test_init_from_fits_positional_tables_to_the_new_sizes():
  from mgjax import init_from

  rng = np.random.default_rng(0)
  names = ("frames", "height", "width")
  table = lambda rows: rng.standard_normal((rows, 4)).astype(np.float32)
  source = {"pos_embed": {n: table(k) for n, k in zip(names, (8, 16, 16))}}
  shapes = lambda sizes, width=4: {
      "pos_embed": {n: jax.ShapeDtypeStruct((k, width), jnp.float32) for n, k in zip(names, sizes)}
  }
  out = init_from._matching(shapes((14, 16, 8)), source, "", [])["pos_embed"]
  frames = np.asarray(out["frames"])  # grown: interpolated, the end rows kept
  assert frames.shape == (14, 4)
  np.testing.assert_allclose(frames[[0, -1]], source["pos_embed"]["frames"][[0, -1]], atol=1e-6)
  np.testing.assert_array_equal(out["height"], source["pos_embed"]["height"])
  np.testing.assert_array_equal(out["width"], source["pos_embed"]["width"][:8])  # cut
  with pytest.raises(ValueError, match="pos_embed/frames"):  # another width
    init_from._matching(shapes((14, 16, 16), width=5), source, "", [])
