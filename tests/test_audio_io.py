"""Tests for mgjax.data.audio: wav and mp4 round trips, resampling, channels, bad files."""

import os
import re
import wave

import av
import numpy as np
import pytest

from mgjax.data import audio, video
from mgjax.data.audio import AudioDecodeError

S16_STEP = 1.0 / 32768


def sine(freq, seconds, rate, amplitude=0.5):
  """float32 [T] sine from phase 0."""
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(reference, estimate):
  """10 log10 of signal power over error power."""
  reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
  return 10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2))


def peak_hz(x, rate):
  """Frequency of the largest FFT bin (1 Hz bins for 1 s of audio)."""
  spectrum = np.abs(np.fft.rfft(np.asarray(x, np.float64) * np.hanning(len(x))))
  return float(np.argmax(spectrum) * rate / len(x))


def test_wav_round_trip_is_within_half_a_16_bit_step(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.99, 0.99, (12345, 2)).astype(np.float32)  # [T, C]
  path = str(tmp_path / "a.wav")
  assert audio.write_wav(path, x, 22050) == 0
  assert audio.probe_audio(path) == audio.AudioInfo(22050, 2, 12345, 12345 / 22050)
  y = audio.read_audio(path)
  assert y.dtype == np.float32 and y.shape == (12345, 2)
  assert np.abs(y - x).max() <= 0.5 * S16_STEP + 1e-7
  # Same input, same bytes; 44-byte header, no encoder tag.
  audio.write_wav(tmp_path / "b.wav", x, 22050)
  assert (tmp_path / "b.wav").read_bytes() == open(path, "rb").read()
  assert os.path.getsize(path) == 44 + 12345 * 2 * 2
  assert sorted(os.listdir(tmp_path)) == ["a.wav", "b.wav"]  # No temporary files left.


def test_float_wav_is_exact_and_overs_are_counted_not_hidden(tmp_path):
  x = np.array([0.0, 0.25, -1.5, 1.25, 0.999], np.float32)
  audio.write_wav(tmp_path / "f.wav", x, 8000, sample_format="flt")
  np.testing.assert_array_equal(audio.read_audio(str(tmp_path / "f.wav"))[:, 0], x)
  assert audio.write_wav(tmp_path / "s.wav", x, 8000) == 2  # -1.5 and 1.25 clip in s16.
  y = audio.read_audio(str(tmp_path / "s.wav"))[:, 0]
  np.testing.assert_allclose(y, [0.0, 0.25, -1.0, 32767 / 32768, 0.999], atol=0.5 * S16_STEP)


def test_reads_wav_written_by_the_standard_library_exactly(tmp_path):
  """An independent writer: sample q must read back as exactly q / 32768."""
  q = np.array([[0, 1], [-32768, 32767], [1000, -1000]], np.int16)  # [T, C]
  path = str(tmp_path / "std.wav")
  with wave.open(path, "wb") as w:
    w.setnchannels(2)
    w.setsampwidth(2)
    w.setframerate(8000)
    w.writeframes(q.tobytes())
  np.testing.assert_array_equal(audio.read_audio(path), q / 32768.0)


def test_resampling_48k_16k_48k_keeps_a_1khz_tone():
  x = sine(1000, 1.0, 48000)[:, None]  # [48000, 1]
  down = audio.resample(x, 48000, 16000)
  assert down.shape == (16000, 1)
  assert peak_hz(down[:, 0], 16000) == 1000.0
  # No delay: the 16 kHz samples are the tone sampled at 16 kHz. Edges excluded
  # here and below: the sinc filter sees zeros beyond the clip there.
  assert snr_db(sine(1000, 1.0, 16000)[300:-300], down[300:-300, 0]) > 80  # Measured 120 dB.
  up = audio.resample(down, 16000, 48000)
  assert up.shape == (48000, 1)
  assert peak_hz(up[:, 0], 48000) == 1000.0
  assert snr_db(x[1000:-1000, 0], up[1000:-1000, 0]) > 80  # Measured 102 dB.


def test_resampling_is_band_limited_and_handles_odd_ratios():
  # 10 kHz is above 16 kHz's Nyquist: it must be filtered out, not aliased to 6 kHz.
  aliased = audio.resample(sine(10000, 0.5, 48000), 48000, 16000)
  assert audio.rms_db(aliased[200:-200]) < audio.rms_db(sine(10000, 0.5, 48000)) - 60  # 99 dB.
  # 44.1 kHz -> 48 kHz (160/147) and an odd length.
  x = sine(1000, 0.5, 44100)[:-7]
  y = audio.resample(x, 44100, 48000)
  assert y.shape == (audio.resampled_length(len(x), 44100, 48000), 1)
  assert snr_db(sine(1000, 0.5, 48000)[500 : len(y) - 500], y[500:-500, 0]) > 80  # 103 dB.


def test_mono_stereo_mono():
  mono = sine(440, 0.1, 8000)[:, None]  # [T, 1]
  stereo = audio.convert_channels(mono, 2)
  assert stereo.shape == (800, 2)
  np.testing.assert_array_equal(stereo[:, 0], stereo[:, 1])
  np.testing.assert_array_equal(audio.convert_channels(stereo, 1), mono)
  left_right = np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)
  np.testing.assert_allclose(audio.convert_channels(left_right, 1)[:, 0], [0.125, 0.5])
  with pytest.raises(ValueError, match="channels=3"):
    audio.convert_channels(mono, 3)


def test_read_audio_converts_rate_and_channels(tmp_path):
  x = np.stack([sine(1000, 1.0, 44100), sine(1000, 1.0, 44100)], axis=1)  # [44100, 2]
  path = str(tmp_path / "cd.wav")
  audio.write_wav(path, x, 44100)
  y = audio.read_audio(path, sample_rate=16000, channels=1)
  assert y.shape == (16000, 1)
  assert peak_hz(y[:, 0], 16000) == 1000.0
  assert snr_db(sine(1000, 1.0, 16000)[200:-200], y[200:-200, 0]) > 60  # 16-bit source.


def test_silent_audio_is_valid_and_reported(tmp_path):
  path = str(tmp_path / "silence.wav")
  audio.write_wav(path, np.zeros((1600, 1), np.float32), 16000)
  silence = audio.read_audio(path)
  assert silence.shape == (1600, 1) and audio.is_silent(silence)
  assert audio.rms_db(sine(440, 1.0, 16000, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)
  quiet = sine(440, 1.0, 16000, amplitude=0.01)  # -43 dBFS: quiet, not silent.
  assert not audio.is_silent(quiet)
  assert audio.is_silent(quiet, threshold_db=-40.0)


@pytest.fixture(scope="module")
def silent_video(tmp_path_factory):
  """2 s of H.264 at 16 fps, no audio stream."""
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (32, 32, 48, 3), dtype=np.uint8)
  path = str(tmp_path_factory.mktemp("video") / "silent.mp4")
  video.write_video(path, frames, fps=16)
  return path


def tone_and_clicks(rate, seconds=2.0, channels=1):
  """A 440 Hz tone with three noise clicks: float32 [T, C]; structure to correlate."""
  x = sine(440, seconds, rate, amplitude=0.3)
  rng = np.random.default_rng(2)
  for start in (0.1, 0.45, 0.8) if seconds < 2 else (0.25, 0.9, 1.6):
    i = int(start * rate)
    n = int(0.02 * rate)
    x[i : i + n] += 0.5 * rng.uniform(-1, 1, n) * np.exp(-np.arange(n) / (0.004 * rate))
  x = np.repeat(x[:, None], channels, axis=1)
  if channels == 2:
    x[:, 1] *= 0.5
  return x.astype(np.float32)


def best_lag(reference, decoded, max_lag):
  """Lag (samples) maximising the correlation of decoded against reference."""

  def corr(lag):
    a = reference[max_lag : len(reference) - max_lag]
    b = decoded[max_lag + lag : len(reference) - max_lag + lag]
    return float(np.dot(a, b))

  return max(range(-max_lag, max_lag + 1), key=corr)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (48000, 2)])
def test_mux_then_read_back_is_aligned(tmp_path, silent_video, rate, channels):
  x = tone_and_clicks(rate, channels=channels)  # [T, C]
  out = str(tmp_path / "with_sound.mp4")
  audio.mux_audio(silent_video, x, rate, out)
  y = audio.read_audio(out)
  assert y.shape == x.shape  # The decoder's padding to a 1024-sample frame is cut.
  # The AAC encoder's delay, found by cross-correlation over +-1.5 AAC frames:
  # decoded without the .mp4 edit list, the audio lags by its 1024 priming samples;
  # read_audio honours the edit list, so no lag is left.
  with av.open(out, options={"ignore_editlist": "1"}) as container:
    raw = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
  assert best_lag(x[:, 0], raw, 1536) == 1024
  assert best_lag(x[:, 0], y[:, 0], 1536) == 0
  for c in range(channels):
    # Measured 0.99995 (16 kHz mono), 0.9988 (48 kHz stereo).
    assert np.corrcoef(x[:, c], y[:, c])[0, 1] > 0.99
  # The video is copied, so it decodes to exactly the same frames, and the
  # video reader still sees the clip's 32 frames.
  assert video.probe(out).num_frames == 32
  np.testing.assert_array_equal(video.read_clip(out, 32), video.read_clip(silent_video, 32))
  with av.open(out) as container:
    assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]


def test_mux_reencodes_a_codec_mp4_cannot_hold(tmp_path):
  frames = np.random.default_rng(3).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  source = str(tmp_path / "lossless.mkv")
  with av.open(source, "w", format="matroska") as container:
    stream = container.add_stream("ffv1", rate=8)
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      frame.pts = i
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  out = str(tmp_path / "out.mp4")
  audio.mux_audio(source, tone_and_clicks(16000, seconds=1.0), 16000, out)
  with av.open(out) as container:
    assert [s.codec_context.name for s in container.streams] == ["h264", "aac"]
  assert video.probe(out).num_frames == 8
  assert audio.read_audio(out).shape == (16000, 1)
  assert sorted(os.listdir(tmp_path)) == ["lossless.mkv", "out.mp4"]


def test_mux_rejects_bad_arguments(tmp_path, silent_video):
  x = tone_and_clicks(16000)
  with pytest.raises(ValueError, match="resample to one of"):
    audio.mux_audio(silent_video, x, 12345, str(tmp_path / "o.mp4"))
  with pytest.raises(ValueError, match=r"should end in \.mp4"):
    audio.mux_audio(silent_video, x, 16000, str(tmp_path / "o.mkv"))
  with pytest.raises(ValueError, match="NaN"):
    audio.mux_audio(silent_video, np.full((100, 1), np.nan), 16000, str(tmp_path / "o.mp4"))
  with pytest.raises(video.VideoDecodeError, match="missing"):
    audio.mux_audio(str(tmp_path / "none.mp4"), x, 16000, str(tmp_path / "o.mp4"))


def _write_std_wav(path, channels, samples):
  with wave.open(path, "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(2)
    w.setframerate(8000)
    w.writeframes(np.zeros(samples * channels, np.int16).tobytes())


def _bad_file(kind, tmp_path, silent_video):
  """A file of each kind of bad input, and a word its error message must contain."""
  if kind == "undecodable":
    path = str(tmp_path / "notes.wav")
    with open(path, "w") as f:
      f.write("these are not audio samples\n" * 20)
    return path, "re-encode"
  if kind == "no_audio":
    return silent_video, "no audio stream (it holds: video)"
  if kind == "empty":
    path = str(tmp_path / "zero.wav")
    _write_std_wav(path, 1, 0)
    return path, "zero samples"
  if kind == "channels":
    path = str(tmp_path / "surround.wav")
    _write_std_wav(path, 3, 100)
    return path, "3 channels"
  if kind == "missing":
    return str(tmp_path / "nowhere.wav"), "check the path"
  path = str(tmp_path / "zero_bytes.wav")  # "empty" by size.
  open(path, "wb").close()
  return path, "0 bytes"


@pytest.mark.parametrize(
    "kind,expected",
    [("undecodable", "undecodable"), ("no_audio", "no_audio"), ("empty", "empty"),
     ("channels", "channels"), ("missing", "missing"), ("zero_bytes", "empty")],
)  # fmt: skip
def test_bad_files_raise_value_errors_naming_the_file(tmp_path, silent_video, kind, expected):
  path, words = _bad_file(kind, tmp_path, silent_video)
  with pytest.raises(ValueError, match=re.escape(path)) as info:
    audio.read_audio(path, sample_rate=16000)
  assert isinstance(info.value, (AudioDecodeError, video.MediaDecodeError))
  assert info.value.kind == expected and info.value.path == path
  assert words in str(info.value)
