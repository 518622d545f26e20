"""Tests for the pixel checker of "shapes" videos (mgjax.eval.shapes).

The checker turns generated videos into a prompt-following score, so it must
itself be right on the ground truth: clips rendered by mgjax.data.shapes at
the sizes the model generates (64x64x32 and 32x32x16), clean and with the
blur and noise a lossy decoder adds. It must also fail safely: a wrong prompt
scores 0, a video without a shape reads as None, malformed input raises.
"""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from mgjax.data import shapes
from mgjax.eval import shapes as checker

SEEDS = (0, 1, 2, 3, 4)
CLIPS_PER_SEED = 40  # 200 clips per resolution with random paths, 40 more on lanes.
SIZES = {"64x64x32": (32, 64), "32x32x16": (16, 32)}  # name -> (frames, side)
BLUR_SIGMA = 1.0  # Pixels.
NOISE_STD = 8.0  # Levels of 0..255.


def perturb(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Gaussian blur in space, then Gaussian pixel noise: uint8 [T, H, W, 3]."""
  blurred = ndimage.gaussian_filter(video.astype(np.float32), sigma=(0, BLUR_SIGMA, BLUR_SIGMA, 0))
  noisy = blurred + rng.normal(0.0, NOISE_STD, video.shape)
  return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def blank_clip(spec: shapes.ClipSpec, num_frames: int, side: int) -> np.ndarray:
  """The clip's background alone: the shape parked far outside the frame."""
  hidden = dataclasses.replace(spec, motion="still", start=(-5.0, -5.0), velocity=(0.0, 0.0))
  return shapes.render_clip(hidden, num_frames, side, side)


@pytest.fixture(scope="module")
def specs():
  random = [
      shapes.sample_spec(np.random.default_rng([seed, i]))
      for seed in SEEDS
      for i in range(CLIPS_PER_SEED)
  ]
  lanes = [
      shapes.sample_spec(np.random.default_rng([9, i]), "lanes") for i in range(CLIPS_PER_SEED)
  ]
  return random + lanes


@pytest.fixture(scope="module")
def clips(specs):
  """name -> list of uint8 [T, H, W, 3], one per spec."""
  return {
      name: [shapes.render_clip(s, frames, side, side) for s in specs]
      for name, (frames, side) in SIZES.items()
  }


def report(label: str, result: dict) -> None:
  figures = ", ".join(f"{a} {result[a]:.3f}" for a in checker.ATTRIBUTES)
  print(f"\nshapes checker, {label}: {figures} (n={result['counts']['color']})")


def errors(result: dict) -> list:
  return [(d["expected"], d["read"]) for d in result["details"] if not all(d["correct"].values())]


# ----------------------------------------------------------------------------
# Accuracy on ground truth.


def test_specs_cover_every_value(specs):
  assert {s.color for s in specs} == set(shapes.COLORS)
  assert {s.shape for s in specs} == set(shapes.SHAPES)
  assert {s.motion for s in specs} == set(shapes.MOTIONS)


@pytest.mark.parametrize("size", list(SIZES))
def test_clean_clips_read_correctly(specs, clips, size):
  result = checker.score(clips[size], [shapes.caption(s) for s in specs])
  report(f"clean {size}", result)
  assert result["counts"] == {"color": len(specs), "shape": len(specs), "motion": len(specs)}
  for attribute in checker.ATTRIBUTES:
    assert result[attribute] >= 0.95, (attribute, errors(result)[:10])
  assert result["mean"] == pytest.approx(np.mean([result[a] for a in checker.ATTRIBUTES]))


@pytest.mark.parametrize("size", list(SIZES))
def test_blurred_noisy_clips_read_correctly(specs, clips, size):
  rng = np.random.default_rng(7)
  videos = [perturb(v, rng) for v in clips[size]]
  result = checker.score(videos, [shapes.caption(s) for s in specs])
  report(f"blur {BLUR_SIGMA} px + noise {NOISE_STD} {size}", result)
  for attribute in checker.ATTRIBUTES:
    assert result[attribute] >= 0.9, (attribute, errors(result)[:10])


def test_readings_have_diagnostics(specs, clips):
  # A circle or square, whose centroid is its centre (a triangle's is lower).
  index = next(i for i, s in enumerate(specs) if s.shape != "triangle" and s.motion != "still")
  spec, video = specs[index], clips["64x64x32"][index]
  reading = checker.read_video(video)
  assert reading.track.shape == (32, 2) and reading.foreground.shape == (32,)
  expected = shapes.centers(spec, 32)  # [T, 2]
  assert np.abs(reading.track - expected).max() < 0.01
  side = spec.size * 64
  assert 0.3 * side**2 / 64**2 < reading.foreground.mean() < 1.1 * side**2 / 64**2
  assert reading.contrast > 100


# ----------------------------------------------------------------------------
# Scoring rules.


def test_wrong_prompt_scores_zero_on_that_attribute(specs, clips):
  names = list(shapes.COLORS)
  swapped = []
  for s in specs[:30]:
    other = names[(names.index(s.color) + 1) % len(names)]
    swapped.append(shapes.caption(dataclasses.replace(s, color=other)))
  result = checker.score(clips["32x32x16"][:30], swapped)
  assert result["color"] == 0.0
  assert result["shape"] == 1.0 and result["motion"] == 1.0
  assert result["mean"] == pytest.approx(2 / 3)


def test_images_are_not_scored_on_motion(specs):
  stills = [shapes.render_clip(shapes.still_spec(s), 1, 64, 64) for s in specs[:24]]
  prompts = [shapes.image_caption(s) + ", it moves up" for s in specs[:24]]
  result = checker.score(stills, prompts)
  assert result["counts"]["motion"] == 0 and result["motion"] is None
  assert result["color"] == 1.0 and result["shape"] == 1.0 and result["mean"] == 1.0
  assert all(d["read"]["motion"] is None for d in result["details"])


def test_accepts_a_batch_array_and_attribute_dicts(specs, clips):
  batch = np.stack(clips["32x32x16"][:8])  # [B, T, H, W, 3]
  result = checker.score(batch, [s.attributes for s in specs[:8]])
  assert result["mean"] == 1.0 and len(result["details"]) == 8


@pytest.mark.parametrize("noise", [0.0, 8.0, 20.0])
def test_blank_video_reads_none_and_scores_zero(specs, noise):
  rng = np.random.default_rng(3)
  videos = []
  for s in specs[:12]:
    video = blank_clip(s, 16, 32)
    noisy = video.astype(np.float32) + rng.normal(0.0, noise, video.shape)
    videos.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
  for video in videos:
    reading = checker.read_video(video)
    assert (reading.color, reading.shape, reading.motion) == (None, None, None)
    assert np.isnan(reading.track).all()
  result = checker.score(videos, [shapes.caption(s) for s in specs[:12]])
  assert result["color"] == result["shape"] == result["motion"] == result["mean"] == 0.0


def test_odd_content_never_crashes():
  rng = np.random.default_rng(0)
  videos = [
      rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),  # Colour noise.
      np.zeros((3, 8, 8, 3), np.uint8),  # Black.
      np.full((2, 16, 16, 3), (220, 40, 40), np.uint8),  # All red: no background.
      np.full((1, 1, 1, 3), 128, np.uint8),  # One pixel.
  ]
  for video in videos:
    reading = checker.read_video(video)
    assert reading.track.shape == (video.shape[0], 2)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((16, 16, 3), np.uint8),  # An image without the frame axis.
        np.zeros((2, 4, 16, 16, 3), np.uint8),  # A batch.
        np.zeros((4, 16, 16, 4), np.uint8),  # RGBA.
        np.zeros((0, 16, 16, 3), np.uint8),  # No frames.
        np.zeros((4, 16, 16, 3), np.float32),  # Floats, not uint8.
    ],
)
def test_malformed_input_raises(bad):
  with pytest.raises(ValueError):
    checker.read_video(bad)


def test_score_needs_one_prompt_per_video(clips):
  with pytest.raises(ValueError, match="prompts"):
    checker.score(clips["32x32x16"][:3], ["a red circle moves up"] * 2)


# ----------------------------------------------------------------------------
# Classifiers on hand-made inputs.


def _track(x, y):
  return np.stack([np.asarray(x, float), np.asarray(y, float)], axis=-1)  # [T, 2]


def test_classify_motion_on_tracks():
  u = np.linspace(0, 1, 16)
  assert checker.classify_motion(_track(0.5 + 0.02 * np.sin(9 * u), 0.4 + 0 * u)) == "still"
  assert checker.classify_motion(_track(0.2 + 0.5 * u, 0.5 + 0 * u)) == "right"
  assert checker.classify_motion(_track(0.7 - 0.5 * u, 0.5 + 0 * u)) == "left"
  assert checker.classify_motion(_track(0.5 + 0 * u, 0.8 - 0.5 * u)) == "up"
  assert checker.classify_motion(_track(0.5 + 0 * u, 0.2 + 0.5 * u)) == "down"
  reflected = 0.8 - np.abs(0.5 - 0.9 * u)  # Hits the wall at u ~0.55, comes back.
  assert checker.classify_motion(_track(reflected, 0.5 + 0 * u)) == "bouncing"
  assert checker.classify_motion(_track(0.2 + 0.5 * u, 0.3 + 0.4 * u)) == "bouncing"
  missing = _track(0.2 + 0.5 * u, 0.5 + 0 * u)
  missing[::3] = np.nan  # Frames without a detection are skipped.
  assert checker.classify_motion(missing) == "right"
  assert checker.classify_motion(np.full((8, 2), np.nan)) is None


def test_classify_color_tolerates_shifts():
  for name, rgb in shapes.COLORS.items():
    rgb = np.asarray(rgb, float)
    assert checker.classify_color(rgb) == name
    assert checker.classify_color(0.6 * rgb) == name  # Darker.
    assert checker.classify_color(0.5 * rgb + 0.5 * rgb.mean()) == name  # Paler.
