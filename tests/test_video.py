"""Tests for mgjax.data.video: H.264 round trips, frame sampling, bad files."""

import os

import av
import numpy as np
import pytest

from mgjax.data import video
from mgjax.data.video import ImageDecodeError, VideoDecodeError

INDEX_STEP = 7  # Frame i is filled with intensity i * INDEX_STEP.


def smooth_clip(num_frames=16, height=48, width=64):
  """A moving colour gradient: uint8 [T, H, W, 3], easy for H.264."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
  r = 128 + 60 * np.sin(2 * np.pi * (x + 2 * t) / width)
  g = 128 + 60 * np.cos(2 * np.pi * (y + t) / height)
  b = 60 + 2 * x + t
  return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def index_clip(num_frames, height=32, width=32):
  """Flat grey frames whose level encodes the frame index."""
  levels = (np.arange(num_frames) * INDEX_STEP).astype(np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def decoded_indices(clip):
  return [int(round(frame.mean() / INDEX_STEP)) for frame in clip]


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
  """32 frames at 32 fps, frame i at intensity 7 * i."""
  path = str(tmp_path_factory.mktemp("index") / "index.mp4")
  video.write_video(path, index_clip(32), fps=32)
  return path


def test_round_trip_is_close(tmp_path):
  frames = smooth_clip()
  path = str(tmp_path / "smooth.mp4")
  video.write_video(path, frames, fps=16)
  info = video.probe(path)
  assert info == video.VideoInfo(fps=16.0, num_frames=16, width=64, height=48, duration=1.0)
  clip = video.read_clip(path, 16)
  assert clip.dtype == np.uint8 and clip.shape == frames.shape
  assert np.abs(clip.astype(np.int32) - frames).mean() < 3.0


def test_write_is_deterministic_and_leaves_no_temp_files(tmp_path):
  frames = smooth_clip()
  video.write_video(tmp_path / "a.mp4", frames, fps=16)
  video.write_video(tmp_path / "b.mp4", frames, fps=16)
  assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
  assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4"]


def test_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(Exception):  # noqa: B017 (whatever the encoder raises)
    video.write_video(tmp_path / "bad.mp4", smooth_clip(2), fps=16, preset="no-such-preset")
  assert os.listdir(tmp_path) == []


def test_write_rejects_bad_arrays(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    video.write_video(tmp_path / "x.mp4", smooth_clip().astype(np.float32), fps=16)
  with pytest.raises(ValueError, match=r"\[T>=1, H, W, 3\]"):
    video.write_video(tmp_path / "x.mp4", smooth_clip()[..., :2], fps=16)
  with pytest.raises(ValueError, match=".mp4"):
    video.write_video(tmp_path / "x.avi", smooth_clip(), fps=16)


def test_native_fps_reads_consecutive_frames(index_video):
  assert decoded_indices(video.read_clip(index_video, 8)) == list(range(8))
  assert decoded_indices(video.read_clip(index_video, 8, fps=32)) == list(range(8))


@pytest.mark.parametrize(
    "fps, expected",
    [
        (16, list(range(0, 32, 2))),
        (8, list(range(0, 32, 4))),
        (64, [0, 0, 1, 1, 2, 2, 3, 3]),
        (12, [int(i * 32 / 12) for i in range(12)]),  # Non-integer ratio: nearest previous.
    ],
)
def test_fps_resampling(index_video, fps, expected):
  clip = video.read_clip(index_video, len(expected), fps=fps)
  assert decoded_indices(clip) == expected


def test_start_time(index_video):
  clip = video.read_clip(index_video, 4, fps=8, start_time=0.5)
  assert decoded_indices(clip) == [16, 20, 24, 28]
  assert decoded_indices(video.read_clip(index_video, 4, start_time=0.5)) == [16, 17, 18, 19]
  # Between frames: the frame on screen at that time.
  assert decoded_indices(video.read_clip(index_video, 2, fps=4, start_time=0.2)) == [6, 14]


def test_large_start_time_seeks_to_the_right_frames(tmp_path):
  path = str(tmp_path / "long.mp4")
  video.write_video(path, index_clip(36), fps=12)  # 3 s.
  assert decoded_indices(video.read_clip(path, 5, fps=6, start_time=1.5)) == [18, 20, 22, 24, 26]
  assert decoded_indices(video.read_clip(path, 3, start_time=2.75)) == [33, 34, 35]


def test_variable_frame_rate_uses_the_frame_on_screen(tmp_path):
  path = str(tmp_path / "vfr.mkv")
  shown_at = [0, 1, 2, 5, 6, 10, 11]  # Tenths of a second; gaps after 2 and 6.
  with av.open(path, "w", format="matroska") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for i, pts in enumerate(shown_at):
      level = np.full((32, 32, 3), i * INDEX_STEP, np.uint8)
      frame = av.VideoFrame.from_ndarray(level, format="rgb24")
      frame.pts = pts
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  expected = [0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5, 6]
  assert decoded_indices(video.read_clip(path, 12, fps=10)) == expected
  assert decoded_indices(video.read_clip(path, 7)) == list(range(7))


def test_too_short(index_video):
  with pytest.raises(VideoDecodeError) as info:
    video.read_clip(index_video, 17, fps=16)
  assert info.value.kind == "too_short"
  assert index_video in str(info.value) and "1.000s" in str(info.value)
  with pytest.raises(VideoDecodeError) as info:
    video.read_clip(index_video, 8, start_time=0.9)
  assert info.value.kind == "too_short"
  # Exactly the available frames is fine.
  assert len(video.read_clip(index_video, 16, fps=16)) == 16
  assert len(video.read_clip(index_video, 32)) == 32


def test_resize_crop_and_stretch_non_square(tmp_path):
  # Left quarter red, middle half green, right quarter blue.
  frame = np.zeros((48, 96, 3), np.uint8)
  frame[:, :24] = (220, 30, 30)
  frame[:, 24:72] = (30, 200, 30)
  frame[:, 72:] = (30, 30, 220)
  path = str(tmp_path / "bands.mp4")
  video.write_video(path, np.stack([frame] * 4), fps=8)

  crop = video.read_clip(path, 2, size=(32, 32), resize="crop")
  assert crop.shape == (2, 32, 32, 3)
  # Covering 32x32 scales to 32x64; the centre 32 columns are the green band.
  assert crop[..., 1].min() > 170 and crop[..., 0].max() < 80

  stretch = video.read_clip(path, 2, size=(32, 32), resize="stretch")
  assert stretch.shape == (2, 32, 32, 3)
  assert stretch[:, :, :4, 0].mean() > 170 and stretch[:, :, -4:, 2].mean() > 170

  tall = video.read_clip(path, 1, size=(40, 20))
  assert tall.shape == (1, 40, 20, 3)
  wide = video.read_clip(path, 1, size=(10, 50), resize="stretch")
  assert wide.shape == (1, 10, 50, 3)


def test_downscale_is_antialiased(tmp_path):
  y, x = np.mgrid[0:64, 0:64]
  checker = np.where((x + y) % 2 == 0, 255, 0).astype(np.uint8)
  frames = np.stack([np.stack([checker] * 3, -1)] * 2)
  path = str(tmp_path / "checker.mp4")
  video.write_video(path, frames, fps=8, crf=0)
  small = video.read_clip(path, 1, size=(16, 16)).astype(np.float32)
  assert small.std() < 10  # A 1-pixel checkerboard averages to flat grey.


def test_odd_sizes_are_padded_by_edge_replication(tmp_path):
  frames = smooth_clip(4, height=33, width=47)
  path = str(tmp_path / "odd.mp4")
  video.write_video(path, frames, fps=8)
  info = video.probe(path)
  assert (info.height, info.width) == (34, 48)
  clip = video.read_clip(path, 4).astype(np.int32)
  assert np.abs(clip[:, :33, :47] - frames).mean() < 3.0
  assert np.abs(clip[:, 33, :47] - frames[:, 32]).mean() < 4.0
  odd_target = video.read_clip(path, 1, size=(17, 23))
  assert odd_target.shape == (1, 17, 23, 3)


def test_bad_arguments_raise_value_error(index_video):
  with pytest.raises(ValueError, match="resize"):
    video.read_clip(index_video, 2, size=(8, 8), resize="pad")
  with pytest.raises(ValueError, match="num_frames"):
    video.read_clip(index_video, 0)
  with pytest.raises(ValueError, match="size"):
    video.read_clip(index_video, 1, size=(8, 0))


# ----------------------------------------------------------------------------
# Rotated files: a display matrix (as phones write for portrait video) turns
# the stored frames for display; probe and read_clip return what is shown.

BLOCK = 8


def _block_pattern(height=32, width=48):
  """uint8 [H, W, 3] of flat 8x8 blocks, each a different colour.

  No rotation or mirror of it equals another, so a wrong turn is obvious.
  """
  rows, cols = height // BLOCK, width // BLOCK
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  blocks = np.stack([40 + 180 * r / (rows - 1), 40 + 180 * c / (cols - 1), 230 - 25 * (r + c)], -1)
  return np.repeat(np.repeat(blocks, BLOCK, 0), BLOCK, 1).clip(0, 255).astype(np.uint8)


def _write_rotated(path, frame, degrees, hflip=False, num_frames=4, fps=8):
  """H.264 .mp4 storing `frame` plus a display matrix turning it CCW by degrees."""
  with av.open(path, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = frame.shape[1], frame.shape[0]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "12"}
    stream.set_display_rotation(degrees, hflip=hflip)
    for i in range(num_frames):
      av_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
      av_frame.pts = i
      for packet in stream.encode(av_frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def _mean_error(a, b):
  return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize(
    "degrees, hflip, turns",
    [(90, False, 1), (180, False, 2), (270, False, 3), (90, True, 1)],
)
def test_rotated_video_is_read_as_displayed(tmp_path, degrees, hflip, turns):
  stored = _block_pattern()  # [32, 48, 3]: landscape, as a phone stores it.
  path = str(tmp_path / f"rot{degrees}.mp4")
  _write_rotated(path, stored, degrees, hflip=hflip)
  # set_display_rotation's degrees are counter-clockwise, as np.rot90's turns.
  shown = np.rot90(stored, turns)
  if hflip:
    shown = shown[:, ::-1]

  info = video.probe(path)
  assert info.rotation == degrees
  assert (info.height, info.width) == shown.shape[:2]
  assert (info.height, info.width) == ((48, 32) if degrees % 180 else (32, 48))

  clip = video.read_clip(path, 2)
  assert clip.shape == (2, *shown.shape)
  assert _mean_error(clip, shown[None]) < 3.0
  # Every other orientation of the pattern is far from what was read.
  for other in range(4):
    for flip in (False, True):
      candidate = np.rot90(stored, other)
      candidate = candidate[:, ::-1] if flip else candidate
      if (other, flip) != (turns, hflip) and candidate.shape == shown.shape:
        assert _mean_error(clip[0], candidate) > 30.0
  # Blocks land where they are displayed: the shown top-left block's colour.
  assert np.abs(clip[0, 2:6, 2:6].astype(int) - shown[4, 4].astype(int)).max() < 12

  # Resizing applies to the displayed frame: crop keeps the displayed centre.
  square = min(shown.shape[:2])
  top, left = (shown.shape[0] - square) // 2, (shown.shape[1] - square) // 2
  crop = video.read_clip(path, 1, size=(square, square), resize="crop")
  assert _mean_error(crop[0], shown[top : top + square, left : left + square]) < 3.0
  # Half size: each 8x8 block becomes a 4x4 block of the same colour.
  half = video.read_clip(path, 1, size=(shown.shape[0] // 2, shown.shape[1] // 2))
  assert _mean_error(half[0], shown[::2, ::2]) < 8.0
  stretch = video.read_clip(path, 1, size=(40, 40), resize="stretch")
  assert stretch.shape == (1, 40, 40, 3)


def test_unrotated_video_reports_rotation_zero(index_video):
  assert video.probe(index_video).rotation == 0


# ----------------------------------------------------------------------------
# Bad files: each kind raises VideoDecodeError with that kind and the path.


def _truncated_copy(src, dst, fraction=0.4):
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(data[: int(len(data) * fraction)])
  return dst


def _write_with_index_at_end(path, frames, fps):
  """An .mp4 the way many tools write it: the moov index after the data."""
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def _write_matroska(path, frames, fps):
  with av.open(path, "w", format="matroska") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def _noisy_clip(num_frames=48, size=32):
  # Noise makes every frame cost bytes, so cutting the file drops frames.
  return np.random.default_rng(0).integers(0, 256, (num_frames, size, size, 3), dtype=np.uint8)


def _bad_files(tmp_path, index_video):
  random_bytes = tmp_path / "random.mp4"
  random_bytes.write_bytes(np.random.default_rng(0).bytes(4000))
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  text = tmp_path / "notes.mp4"
  text.write_text("this is not a video\n" * 50)
  index_at_end = str(tmp_path / "index_at_end.mp4")
  _write_with_index_at_end(index_at_end, _noisy_clip(), 24)
  return {
      "missing": [str(tmp_path / "does_not_exist.mp4"), str(tmp_path)],
      "empty": [str(empty)],
      "truncated": [
          _truncated_copy(index_video, str(tmp_path / "cut.mp4")),
          _truncated_copy(index_at_end, str(tmp_path / "cut_index_at_end.mp4")),
      ],
      "undecodable": [str(random_bytes), str(text)],
  }


def test_bad_files_raise_their_kind(tmp_path, index_video):
  for kind, paths in _bad_files(tmp_path, index_video).items():
    for path in paths:
      for read in (
          video.probe,
          lambda p: video.read_clip(p, 4),
          lambda p: video.read_clip(p, 2, fps=4, size=(8, 8)),
      ):
        with pytest.raises(VideoDecodeError) as info:
          read(path)
        assert info.value.kind == kind, (path, str(info.value))
        assert info.value.path == path
        assert str(info.value).startswith(f"{path} ({kind}): ")


def test_truncation_detected_while_decoding(tmp_path):
  # Matroska has no up-front size check: the cut shows when decoding ends
  # before the duration the file declares.
  full = str(tmp_path / "clip.mkv")
  _write_matroska(full, _noisy_clip(), 24)
  cut = _truncated_copy(full, str(tmp_path / "cut.mkv"), fraction=0.5)
  with pytest.raises(VideoDecodeError) as info:
    video.read_clip(cut, 48)
  assert info.value.kind == "truncated" and "declares 2.000s" in str(info.value)
  assert video.read_clip(cut, 4).shape == (4, 32, 32, 3)  # The intact part still reads.


# ----------------------------------------------------------------------------
# Images.


def test_image_round_trip(tmp_path):
  image = smooth_clip(1, 30, 40)[0]
  video.write_image(tmp_path / "a.png", image)
  np.testing.assert_array_equal(video.read_image(tmp_path / "a.png"), image)
  video.write_image(tmp_path / "a.jpg", image)
  assert np.abs(video.read_image(tmp_path / "a.jpg").astype(np.int32) - image).mean() < 3.0
  assert video.read_image(tmp_path / "a.png", size=(16, 16)).shape == (16, 16, 3)
  stretched = video.read_image(tmp_path / "a.png", size=(16, 50), resize="stretch")
  assert stretched.shape == (16, 50, 3)
  assert sorted(os.listdir(tmp_path)) == ["a.jpg", "a.png"]


def test_bad_images_raise_their_kind(tmp_path):
  png = tmp_path / "good.png"
  video.write_image(png, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
  cut = tmp_path / "cut.png"
  cut.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
  junk = tmp_path / "junk.png"
  junk.write_bytes(np.random.default_rng(1).bytes(3000))
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  cases = {
      "missing": tmp_path / "nope.png",
      "empty": empty,
      "truncated": cut,
      "undecodable": junk,
  }
  for kind, path in cases.items():
    with pytest.raises(ImageDecodeError) as info:
      video.read_image(path)
    assert info.value.kind == kind
    assert str(path) in str(info.value)
  with pytest.raises(ValueError, match="image format"):
    video.write_image(tmp_path / "x.bmpx", np.zeros((4, 4, 3), np.uint8))
