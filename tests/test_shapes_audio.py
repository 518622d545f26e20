"""Tests for mgjax.data.shapes_audio: bounces, clicks, tones, onsets and the data set."""

import dataclasses
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from mgjax.data import audio, shapes
from mgjax.data import shapes_audio as sa

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000  # CPU-friendly; one 48 kHz check below.


def specs_with_motion(motion, count, seed=11):
  """The first `count` sampled specs with this motion, in sampling order."""
  found, index = [], 0
  while len(found) < count:
    spec = shapes.sample_spec(np.random.default_rng([seed, index]))
    index += 1
    if spec.motion == motion:
      found.append(spec)
  return found


@pytest.fixture(scope="module")
def bouncing():
  return specs_with_motion("bouncing", 40)


def test_bounce_frames_are_where_the_path_turns(bouncing):
  total = 0
  for spec in bouncing:
    xy = shapes.centers(spec, 32)  # [T, 2]
    frames = sa.bounce_frames(spec, 32)
    total += len(frames)
    assert len(frames) >= 1  # Bouncing specs hit a wall mid-clip by construction.
    for f in frames:
      assert 0 < f < 31
      # On some axis the frame is an extreme: both neighbours on the same side.
      sides = (xy[f - 1] - xy[f]) * (xy[f + 1] - xy[f])  # [2]
      assert np.any(sides >= 0)
      # ... and it is at most one frame step from the wall it turned at.
      lo, hi = spec.size / 2, 1 - spec.size / 2
      step = np.abs(np.asarray(spec.velocity)) / 31
      assert np.any((np.minimum(xy[f] - lo, hi - xy[f]) <= step + 1e-9) & (sides >= 0))
  assert total > len(bouncing)  # Some clips bounce on both axes.
  np.testing.assert_allclose(
      sa.bounce_times(bouncing[0], 32, 16), sa.bounce_frames(bouncing[0], 32) / 16
  )
  for motion in ("left", "right", "up", "down", "still"):
    spec = specs_with_motion(motion, 1)[0]
    assert sa.bounce_frames(spec, 32).size == 0


def test_a_hand_made_bounce():
  """Starts 0.1 short of the right wall (x = 0.9) moving +0.4 per clip: it turns at u = 0.25."""
  spec = dataclasses.replace(
      specs_with_motion("bouncing", 1)[0], size=0.2, start=(0.8, 0.5), velocity=(0.4, 0.0)
  )
  assert sa.bounce_frames(spec, 41).tolist() == [10]  # u = 10 / 40 touches the wall.
  assert sa.bounce_frames(spec, 9).tolist() == [2]  # u = 2 / 8 too.
  # 7 frames: the wall is hit between frames 1 and 2 (u = 1.5 / 6), which are equally
  # far from it; the first of them counts.
  np.testing.assert_allclose(shapes.centers(spec, 7)[1:3, 0], [0.8 + 0.4 / 6] * 2)
  assert sa.bounce_frames(spec, 7).tolist() == [1]


def test_audio_is_deterministic_levels_and_length(bouncing):
  spec = bouncing[0]
  x = sa.render_audio(spec, 32, 16, RATE)
  assert x.dtype == np.float32 and x.shape == (32000, 1)
  np.testing.assert_array_equal(x, sa.render_audio(spec, 32, 16, RATE))
  assert 0.5 < np.abs(x).max() <= sa.TONE_AMPLITUDE + sa.CLICK_AMPLITUDE
  still = sa.render_audio(specs_with_motion("still", 1)[0], 32, 16, RATE)
  assert np.abs(still).max() <= sa.TONE_AMPLITUDE
  assert not audio.is_silent(still)


def test_each_colour_tone_is_recovered_by_an_fft_peak(bouncing):
  assert set(sa.TONE_HZ) == set(shapes.COLORS)
  pitches = sorted(sa.TONE_HZ.values())
  assert min(b / a for a, b in zip(pitches, pitches[1:])) > 1.4
  for rate in (RATE, 48000):
    for color, hz in sa.TONE_HZ.items():
      spec = dataclasses.replace(bouncing[0], color=color)  # Clicks included.
      x = sa.render_audio(spec, 32, 16, rate)
      assert abs(sa.dominant_frequency(x, rate) - hz) < 0.5
      assert sa.color_from_tone(x, rate) == color
      # Also from one 40 ms latent-frame's worth of audio, away from the click.
      assert sa.color_from_tone(x[: int(0.04 * rate)], rate) == color


def _score(specs, configs, rate):
  """Summed SyncScore and onset timing errors (s) over specs x (num_frames, fps)."""
  totals, errors = np.zeros(4, int), []
  for spec in specs:
    for num_frames, fps in configs:
      x = sa.render_audio(spec, num_frames, fps, rate)
      onsets = sa.detect_onsets(x, rate)
      truth = sa.bounce_times(spec, num_frames, fps)
      score = sa.sync_score(onsets, truth)
      totals += dataclasses.astuple(score)
      errors += [np.min(np.abs(onsets - t)) for t in truth if len(onsets)]
  return sa.SyncScore(*totals.tolist()), np.array(errors)


def test_onset_detector_finds_the_clicks(bouncing):
  # 16 and 24 fps: bounces 62 or 42 ms apart in time resolution.
  score, errors = _score(bouncing, [(32, 16), (48, 24)], RATE)
  assert score.num_bounces >= 100
  assert score.hit_rate >= 0.95  # Measured 1.0 (136 of 136).
  assert score.num_false_onsets <= 2  # Measured 0.
  assert errors.max() <= 0.005  # Measured 2.5 ms: far inside the 40 ms tolerance.
  # The paper's rate, fewer clips (48 kHz FFTs are 3x the work).
  score48, errors48 = _score(bouncing[:8], [(32, 16)], 48000)
  assert score48.hit_rate == 1.0 and score48.num_false_onsets == 0
  assert errors48.max() <= 0.005
  # A steady tone has no onsets at all.
  quiet = [specs_with_motion(m, 2)[1] for m in ("left", "still", "up")]
  assert sum(len(sa.detect_onsets(sa.render_audio(s, 32, 16, RATE), RATE)) for s in quiet) == 0


def test_sync_score_counts_hits_and_false_onsets():
  score = sa.sync_score([0.10, 0.52, 0.90], [0.13, 0.50, 0.70])
  assert dataclasses.astuple(score) == (3, 2, 3, 1)
  assert score.hit_rate == pytest.approx(2 / 3)
  assert sa.sync_score([], []).hit_rate == 1.0
  assert dataclasses.astuple(sa.sync_score([0.2], [])) == (0, 0, 1, 1)


def test_data_set_files_survive_aac_with_their_clicks(tmp_path):
  # The first seed whose 8 clips include >= 2 bouncing ones (seed 5 at the time of writing).
  seed = next(
      s
      for s in range(100)
      if sum(
          shapes.sample_spec(np.random.default_rng([s, i])).motion == "bouncing" for i in range(8)
      )
      >= 2
  )
  manifest = sa.make_dataset(tmp_path, num_videos=8, seed=seed, sample_rate=RATE)
  records = sa.read_manifest(manifest)
  assert len(records) == 8
  params = json.load(open(tmp_path / sa.PARAMS_FILE))
  assert params["sample_rate"] == RATE and params["version"] == sa.DATASET_VERSION
  bounced = [r for r in records if r["bounce_frames"]]
  assert len(bounced) >= 2
  truth, found = [], []
  for index, r in enumerate(records):
    spec = shapes.sample_spec(np.random.default_rng([seed, index]))
    assert r["caption"] == shapes.caption(spec) and r["tone_hz"] == sa.TONE_HZ[spec.color]
    assert r["bounce_times"] == sa.bounce_times(spec, 32, 16).tolist()
    wav = audio.read_audio(os.path.join(tmp_path, r["audio"]))
    assert wav.shape == (r["num_samples"], 1) == (32000, 1)
    assert np.abs(wav - sa.render_audio(spec, 32, 16, RATE)).max() <= 0.5 / 32768 + 1e-7
    sound = audio.read_audio(os.path.join(tmp_path, r["video"]))  # AAC from the .mp4.
    assert sound.shape == wav.shape
    assert sa.color_from_tone(sound, RATE) == spec.color
    truth.append(r["bounce_times"])
    found.append(sa.detect_onsets(sound, RATE))
    with av.open(os.path.join(tmp_path, r["video"])) as container:
      assert container.streams.video[0].frames == 32
  scores = [sa.sync_score(o, t) for o, t in zip(found, truth)]
  assert sum(s.num_hits for s in scores) == sum(s.num_bounces for s in scores)
  assert sum(s.num_false_onsets for s in scores) == 0
  assert sa.ensure_dataset(tmp_path, num_videos=8, seed=seed, sample_rate=RATE) == manifest


def test_a_set_of_one_motion(tmp_path):
  """motion="bouncing": every clip bounces, redrawn from its own generator, so the set is
  the same each time; a set of any motion does not match its parameters."""
  manifest = sa.ensure_dataset(
      tmp_path,
      num_videos=3,
      seed=sa.BOUNCING_SEED,
      sample_rate=RATE,
      num_frames=16,
      height=32,
      width=32,
      motion="bouncing",
  )
  records = sa.read_manifest(manifest)
  specs = [sa.clip_spec(sa.BOUNCING_SEED, i, "bouncing") for i in range(3)]
  assert [r["attributes"]["motion"] for r in records] == ["bouncing"] * 3
  assert [r["caption"] for r in records] == [shapes.caption(s) for s in specs]
  assert all(r["bounce_times"] for r in records)
  assert sa.clip_spec(0, 5) == shapes.sample_spec(np.random.default_rng([0, 5]))
  assert not sa.is_complete(
      tmp_path, sa._dataset_params(3, sa.BOUNCING_SEED, RATE, 16, 16, 32, 32, 0.15, "s16")
  )
  with pytest.raises(ValueError, match="motion='spinning'"):
    sa.make_dataset(tmp_path, 1, 0, motion="spinning")


def test_bad_parameters_are_named(tmp_path):
  with pytest.raises(ValueError, match="sample_rate=12345"):
    sa.make_dataset(tmp_path, 1, 0, sample_rate=12345)
  with pytest.raises(ValueError, match="must be even"):
    sa.make_dataset(tmp_path, 1, 0, height=33)
  with pytest.raises(ValueError, match="add it to shapes_audio.TONE_HZ"):
    sa.tone_frequency("magenta")


def test_command_line_writes_the_files(tmp_path):
  out = tmp_path / "cli"
  env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run(
        [sys.executable, "-m", "mgjax.data.shapes_audio", f"--out={out}", "--num_videos=3",
         "--seed=5", "--sample_rate=16000", "--num_frames=8", "--height=32", "--width=32"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(out / "videos")) == ["00000.mp4", "00001.mp4", "00002.mp4"]
  assert sorted(os.listdir(out / "audio")) == ["00000.wav", "00001.wav", "00002.wav"]
  records = sa.read_manifest(out / "manifest.jsonl")
  assert [r["audio"] for r in records] == [f"audio/0000{i}.wav" for i in range(3)]
  assert {r["sample_rate"] for r in records} == {16000}
  assert {r["num_samples"] for r in records} == {8000}  # 8 frames at 16 fps.
  assert all({"caption", "video", "bounce_times", "split"} <= set(r) for r in records)
  assert audio.probe_audio(out / "videos/00000.mp4").sample_rate == 16000
  assert "wrote 3 clips" in result.stdout and str(out / "manifest.jsonl") in result.stdout
