"""Video and still-image file I/O: H.264 .mp4 via PyAV, PNG/JPEG via Pillow.

Every way a media file can be unusable surfaces as one exception type per
medium (`VideoDecodeError`, `ImageDecodeError`) carrying a machine-readable
`kind`, so a data pipeline can skip bad files and count them by cause instead
of crashing on whatever PyAV or Pillow happened to raise.

Kinds:
  "missing"      the path does not exist, is not a regular file, or cannot be
                 opened for reading.
  "empty"        the file has 0 bytes, or holds a video stream with no frames.
  "truncated"    the file was cut off. The rule: (a) an ISO-BMFF file
                 (.mp4/.mov/.m4v) whose top-level boxes run past the end of the
                 file or that has no `moov` box, or (b) any container whose
                 decoding ends (end of data or decoder error) more than 1.5
                 frame durations before the video's declared duration (see
                 _declared_stream_end).
                 (a) is checked before opening, so even a cut-off file whose
                 index sat at the end (and which FFmpeg cannot open at all) is
                 reported as truncated rather than undecodable.
  "undecodable"  anything else FFmpeg/Pillow cannot read: wrong format, random
                 bytes, no video stream, corrupt data with no declared length.
  "too_short"    a readable video that has fewer frames than a request needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import math
import os
import struct
import tempfile

import av
import numpy as np
from av.sidedata.sidedata import Type as _SideDataType
from PIL import Image, ImageOps, UnidentifiedImageError

VIDEO_KINDS = ("missing", "empty", "truncated", "undecodable", "too_short")
IMAGE_KINDS = ("missing", "empty", "truncated", "undecodable")
RESIZE_MODES = ("crop", "stretch")
_TO_UINT8 = "convert with np.clip(x, 0, 255).astype(np.uint8)"

# Default H.264 constant-rate factor. Decoded pixels are training targets, so
# quality matters far more than file size; 12 is visually lossless.
DEFAULT_CRF = 12

# Frame times are compared with this slack (seconds) so float round-off in
# pts * time_base never flips a frame choice (e.g. 2/32 s vs 1/16 s).
_TIME_EPS = 1e-4

# Start times beyond this are reached by seeking to a keyframe first instead
# of decoding every frame from the beginning of the file.
_SEEK_MIN_SECONDS = 1.0

# Top-level ISO-BMFF box types; a file starting with one of these is treated
# as an .mp4-family container for the truncation check.
_ISO_BMFF_START_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"styp"}


class MediaDecodeError(Exception):
  """A media file that cannot be used; `kind` says why, `path` says which."""

  def __init__(self, path: str, kind: str, detail: str):
    self.path = str(path)
    self.kind = kind
    self.detail = detail
    super().__init__(f"{self.path} ({kind}): {detail}")


class VideoDecodeError(MediaDecodeError):
  """The single exception for an unreadable video; kind in VIDEO_KINDS."""


class ImageDecodeError(MediaDecodeError):
  """The single exception for an unreadable image; kind in IMAGE_KINDS."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """A video's metadata. width/height are as displayed (after `rotation`)."""

  fps: float
  num_frames: int
  width: int
  height: int
  duration: float  # seconds
  # Degrees counter-clockwise (0, 90, 180 or 270) by which the file's display
  # matrix turns its stored frames for display, as PyAV's VideoFrame.rotation;
  # phones record portrait video as landscape frames plus 90 or 270.
  rotation: int = 0


# ----------------------------------------------------------------------------
# Shared checks.


def _check_file(path: str, error_cls: type[MediaDecodeError]) -> None:
  """Raises `missing` / `empty` before any decoder sees the file."""
  if not os.path.exists(path):
    raise error_cls(path, "missing", "no such file; check the path")
  if not os.path.isfile(path):
    raise error_cls(path, "missing", "not a regular file; pass the path of a file")
  if not os.access(path, os.R_OK):
    raise error_cls(path, "missing", "file is not readable; fix its permissions")
  if os.path.getsize(path) == 0:
    raise error_cls(path, "empty", "file has 0 bytes; remove it or write it again")


def _iso_bmff_truncation(path: str) -> str | None:
  """Why an .mp4-family file looks cut off, or None if it does not.

  Walks the top-level boxes (8-byte size + type headers). A file that does
  not start with a known top-level box is not ISO-BMFF and is left to FFmpeg.
  """
  size = os.path.getsize(path)
  offset = 0
  seen_moov = False
  with open(path, "rb") as f:
    while offset < size:
      if size - offset < 8:
        return f"{size - offset} stray bytes after the last complete box at offset {offset}"
      f.seek(offset)
      box_size, box_type = struct.unpack(">I4s", f.read(8))
      if offset == 0 and box_type not in _ISO_BMFF_START_BOXES:
        return None
      if box_size == 1:  # 64-bit size follows the type.
        extended = f.read(8)
        if len(extended) < 8:
          name = box_type.decode("latin-1")
          return f"box '{name}' header is cut off at offset {offset}"
        (box_size,) = struct.unpack(">Q", extended)
      elif box_size == 0:  # Box extends to the end of the file.
        box_size = size - offset
      if box_size < 8:
        return None  # Not a sane box structure; let FFmpeg judge it.
      if box_type == b"moov":
        seen_moov = True
      if offset + box_size > size:
        return (
            f"box '{box_type.decode('latin-1')}' at offset {offset} declares "
            f"{box_size} bytes but only {size - offset} remain in the file"
        )
      offset += box_size
  if not seen_moov:
    return "the file has no 'moov' index box (it was cut off before the index was written)"
  return None


# ----------------------------------------------------------------------------
# Video reading.


def _open_video(path: str):
  """Opens `path` and returns (container, stream); raises VideoDecodeError."""
  _check_file(path, VideoDecodeError)
  why = _iso_bmff_truncation(path)
  if why is not None:
    raise VideoDecodeError(path, "truncated", f"{why}; re-encode or remove the file")
  try:
    container = av.open(path, mode="r")
  except (av.FFmpegError, OSError, ValueError, UnicodeError) as e:
    raise VideoDecodeError(
        path, "undecodable", f"FFmpeg cannot open it ({e}); re-encode or remove the file"
    ) from e
  if not container.streams.video:
    container.close()
    raise VideoDecodeError(path, "undecodable", "the file has no video stream; pass a video file")
  return container, container.streams.video[0]


def _stream_fps(stream) -> float | None:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate:
      return float(rate)
  return None


def _stream_duration(container, stream) -> float | None:
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration:
    return container.duration / av.time_base
  return None


def _info_from_stream(path: str, container, stream) -> VideoInfo:
  fps = _stream_fps(stream)
  duration = _stream_duration(container, stream)
  num_frames = stream.frames or 0
  if fps is None and num_frames and duration:
    fps = num_frames / duration
  if fps is None:
    raise VideoDecodeError(
        path, "undecodable", "the video stream has no frame rate; re-encode the file"
    )
  if not num_frames and duration:
    num_frames = int(round(duration * fps))
  if duration is None:
    duration = num_frames / fps
  width, height = stream.codec_context.width, stream.codec_context.height
  if not width or not height:
    raise VideoDecodeError(
        path, "undecodable", "the video stream has no frame size; re-encode the file"
    )
  return VideoInfo(
      fps=fps,
      num_frames=int(num_frames),
      width=int(width),
      height=int(height),
      duration=float(duration),
  )


@dataclasses.dataclass(frozen=True)
class _Orientation:
  """How a stored frame [H, W] becomes the displayed one.

  Displayed = stored, transposed if `transpose`, then with its rows and/or
  columns reversed. This covers the 8 axis-aligned display matrices
  (rotations by multiples of 90 degrees, with or without a mirror).
  """

  transpose: bool = False
  flip_rows: bool = False
  flip_cols: bool = False
  rotation: int = 0  # Counter-clockwise degrees, FFmpeg's convention.

  def displayed_size(self, height: int, width: int) -> tuple[int, int]:
    return (width, height) if self.transpose else (height, width)

  def apply(self, rgb: np.ndarray) -> np.ndarray:
    """Stored uint8 [H, W, 3] -> displayed [H', W', 3]."""
    if self.transpose:
      rgb = rgb.transpose(1, 0, 2)
    if self.flip_rows:
      rgb = rgb[::-1]
    if self.flip_cols:
      rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


_UPRIGHT = _Orientation()


def _orientation_from_matrix(matrix: np.ndarray) -> _Orientation:
  """The orientation of an FFmpeg display matrix (9 int32, row-major).

  FFmpeg's matrix maps a stored pixel (x, y), y pointing down, to the
  displayed x' = a*x + c*y (+ offset), y' = b*x + d*y (+ offset), where
  a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]. Angles that are
  not multiples of 90 degrees snap to the nearest one (scaling is ignored).
  """
  a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
  if not any((a, b, c, d)):
    return _UPRIGHT
  if abs(a) + abs(d) >= abs(b) + abs(c):  # x' ~ +-x, y' ~ +-y.
    a, b, c, d = np.sign(a), 0.0, 0.0, np.sign(d)
    orientation = dict(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
  else:  # x' ~ +-y, y' ~ +-x: rows and columns swap.
    a, b, c, d = 0.0, np.sign(b), np.sign(c), 0.0
    orientation = dict(transpose=True, flip_rows=b < 0, flip_cols=c < 0)
  # As av_display_rotation_get: the counter-clockwise angle of the matrix.
  rotation = int(round(-np.degrees(np.arctan2(b, a)))) % 360
  return _Orientation(rotation=rotation, **orientation)


def _frame_orientation(frame) -> _Orientation:
  """The display orientation FFmpeg attached to a decoded frame.

  FFmpeg copies the stream's display matrix (an .mp4 track matrix, for
  instance) onto every decoded frame as DISPLAYMATRIX side data; frames
  without one are shown as stored.
  """
  side_data = frame.side_data
  if _SideDataType.DISPLAYMATRIX not in side_data:
    return _UPRIGHT
  raw = bytes(side_data[_SideDataType.DISPLAYMATRIX])
  if len(raw) < 36:
    return _UPRIGHT
  return _orientation_from_matrix(np.frombuffer(raw[:36], dtype=np.int32))


def _first_frame_orientation(container, stream) -> _Orientation:
  """The orientation of the first decodable frame; upright if none decodes.

  A file whose frames cannot be decoded is left for read_clip to report.
  """
  try:
    for frame in container.decode(stream):
      return _frame_orientation(frame)
  except av.FFmpegError:
    pass
  return _UPRIGHT


def probe(path: str | os.PathLike) -> VideoInfo:
  """Reads a video's metadata, decoding only its first frame.

  width/height are the displayed size: a file whose display matrix turns
  its frames by 90 or 270 degrees (portrait phone video) reports its stored
  width and height swapped, and `rotation` says by how much it turns (the
  first frame is decoded to read the display matrix, which FFmpeg attaches
  to decoded frames). num_frames comes from the stream header when present,
  else is estimated as round(duration * fps). Without decoding the whole
  file, truncation is found only by the .mp4 box check (rule (a) in the
  module docstring).
  """
  path = os.fspath(path)
  container, stream = _open_video(path)
  try:
    info = _info_from_stream(path, container, stream)
    orientation = _first_frame_orientation(container, stream)
  finally:
    container.close()
  height, width = orientation.displayed_size(info.height, info.width)
  info = dataclasses.replace(info, width=width, height=height, rotation=orientation.rotation)
  if info.num_frames <= 0 and info.duration <= 0:
    raise VideoDecodeError(path, "empty", "the video stream declares no frames; remove the file")
  return info


def _check_size_and_resize(size, resize: str) -> None:
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize={resize!r} is not supported; use one of {RESIZE_MODES}")
  if size is not None:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
      raise ValueError(f"size={size!r} must be a (height, width) pair of positive ints")


def _cover_size(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int]:
  """Smallest (h, w) with the source's aspect that covers (dst_h, dst_w)."""
  scale = max(dst_h / src_h, dst_w / src_w)
  return max(dst_h, int(round(src_h * scale))), max(dst_w, int(round(src_w * scale)))


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
  top = (array.shape[0] - height) // 2
  left = (array.shape[1] - width) // 2
  return array[top : top + height, left : left + width]


def _frame_to_rgb(frame, size, resize: str) -> np.ndarray:
  """One decoded frame as displayed, uint8 [H, W, 3], scaled by swscale.

  The frame is turned by its display matrix (see _frame_orientation), and
  `size`/`resize` apply to the turned frame. swscale scales the stored frame
  straight to the size that becomes the target once turned (turning and
  scaling commute), so colour conversion and scaling happen in one pass,
  and its bicubic filter widens with the downscale factor, so downscaling
  is antialiased. The centre crop comes after turning.
  """
  orientation = _frame_orientation(frame)
  shown_h, shown_w = orientation.displayed_size(frame.height, frame.width)
  if size is None or (shown_h, shown_w) == tuple(size):
    return orientation.apply(frame.to_ndarray(format="rgb24"))
  height, width = size
  if resize == "stretch":
    out_h, out_w = height, width
  else:
    out_h, out_w = _cover_size(shown_h, shown_w, height, width)
  stored_h, stored_w = orientation.displayed_size(out_h, out_w)  # Its own inverse.
  rgb = frame.reformat(
      width=stored_w, height=stored_h, format="rgb24", interpolation="BICUBIC"
  ).to_ndarray()
  return np.ascontiguousarray(_center_crop(orientation.apply(rgb), height, width))


def _frame_time(frame, stream, origin: float, index: int, native_fps: float) -> float:
  if frame.pts is None or stream.time_base is None:
    return index / native_fps
  return float(frame.pts * stream.time_base) - origin


class _Picker:
  """Nearest-previous frame selection over a stream of decoded frames.

  Target i is answered by the latest decoded frame whose time is at or
  before the target time; this is exact for constant frame rate and does the
  sensible thing for variable frame rate. A target before the first frame
  gets the first frame.
  """

  def __init__(self, targets: list[float] | None, num_frames: int, start_time: float, convert):
    self.targets = targets  # None: consecutive frames from start_time on.
    self.num_frames = num_frames
    self.start_time = start_time
    self.convert = convert
    self.out: list[np.ndarray] = []
    self._prev = None
    self._prev_rgb = None

  def done(self) -> bool:
    return len(self.out) == self.num_frames

  def _emit_prev_or(self, frame) -> None:
    if self._prev is None:
      self.out.append(self.convert(frame))
      return
    if self._prev_rgb is None:  # Converted once even if it answers many targets.
      self._prev_rgb = self.convert(self._prev)
    self.out.append(self._prev_rgb)

  def _set_prev(self, frame) -> None:
    self._prev = frame
    self._prev_rgb = None

  def feed(self, frame, t: float) -> None:
    if self.targets is None:
      if t <= self.start_time + _TIME_EPS:
        self._set_prev(frame)  # The frame on screen at start_time, so far.
        return
      if not self.out and self._prev is not None:
        self._emit_prev_or(self._prev)
      if not self.done():
        self.out.append(self.convert(frame))
      return
    while not self.done() and t > self.targets[len(self.out)] + _TIME_EPS:
      self._emit_prev_or(frame)
    if self.done():
      return
    self._set_prev(frame)
    # An exact hit needs no look-ahead frame to be decided.
    while not self.done() and abs(t - self.targets[len(self.out)]) <= _TIME_EPS:
      self._emit_prev_or(frame)

  def finish(self, last_end: float) -> int:
    """At end of stream: resolves targets the last frame still covers.

    Returns how many requested frames remain unanswered.
    """
    if self._prev is not None:
      if self.targets is None:
        if not self.out:
          self._emit_prev_or(self._prev)
      else:
        while not self.done() and self.targets[len(self.out)] < last_end - _TIME_EPS:
          self._emit_prev_or(self._prev)
    return self.num_frames - len(self.out)


def read_clip(
    path: str | os.PathLike,
    num_frames: int,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    start_time: float = 0.0,
    resize: str = "crop",
) -> np.ndarray:
  """Decodes `num_frames` RGB frames as uint8 [T, H, W, 3], as displayed.

  Frames are turned by the file's display matrix (portrait phone video is
  stored as landscape frames plus a 90/270 degree rotation), so H, W match
  probe's height/width; resizing and cropping apply to the turned frames.
  Frame i is the decoded frame shown at time start_time + i / fps (the
  latest frame whose presentation time is at or before it). fps=None takes
  consecutive frames at the file's own rate. size=(height, width) scales
  each frame: "crop" scales to cover the target then centre-crops (keeps the
  aspect ratio), "stretch" scales to exactly the target; None keeps the
  native size. Decoding stops as soon as the last requested frame is known,
  and large start times seek to a keyframe first.

  Raises VideoDecodeError for any unreadable file (see module docstring for
  the kinds), including "too_short" when the file ends before the last
  requested time.
  """
  path = os.fspath(path)
  if int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"num_frames={num_frames!r} must be a positive int")
  num_frames = int(num_frames)
  if fps is not None and not fps > 0:
    raise ValueError(f"fps={fps!r} must be positive, or None for the file's own frame rate")
  if not start_time >= 0:
    raise ValueError(f"start_time={start_time!r} must be >= 0 seconds")
  _check_size_and_resize(size, resize)

  request = _ClipRequest(path, num_frames, fps, float(start_time), size, resize)
  clip = _decode_clip(request, seek=request.start_time >= _SEEK_MIN_SECONDS)
  if clip is None:  # The seek landed after start_time; decode from the start.
    clip = _decode_clip(request, seek=False)
  return clip


def read_video(
    path: str | os.PathLike, fps: float | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, float, float]:
  """(uint8 frames [T, H, W, 3], duration in seconds, frame rate of the frames) of a
  whole video file, at `fps` (None: the file's own rate) and `size` (None: native; see
  read_clip). Raises VideoDecodeError naming the file and the fix."""
  info = probe(path)  # missing / empty / not a video: VideoDecodeError
  duration = info.duration if info.duration > 0 else info.num_frames / info.fps
  num_frames = int(math.floor(duration * (fps or info.fps) + 1e-6))
  if num_frames < 1:
    raise VideoDecodeError(
        os.fspath(path),
        "empty",
        f"the video lasts {duration:.3f} s, less than one frame at {fps or info.fps:g} fps; "
        "pass a longer video",
    )
  while True:
    try:
      return read_clip(path, num_frames, fps=fps, size=size), duration, fps or info.fps
    except VideoDecodeError as e:  # the header promised more frames than decode
      if e.kind != "too_short" or num_frames == 1:
        raise
      num_frames -= 1


@dataclasses.dataclass(frozen=True)
class _ClipRequest:
  path: str
  num_frames: int
  fps: float | None
  start_time: float
  size: tuple[int, int] | None
  resize: str

  def targets(self) -> list[float] | None:
    if self.fps is None:
      return None
    return [self.start_time + i / self.fps for i in range(self.num_frames)]

  def describe(self) -> str:
    if self.fps is None:
      return f"{self.num_frames} consecutive frames"
    last = self.start_time + (self.num_frames - 1) / self.fps
    return f"{self.num_frames} frames at {self.fps:g} fps (up to {last:.3f}s)"


def _declared_stream_end(container, stream, fps: float) -> float | None:
  """The video's declared length in seconds, if the file declares one.

  The container's duration counts only when the video is its only stream:
  otherwise it can include a longer audio track and would make intact
  files look truncated.
  """
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if stream.frames:
    return stream.frames / fps
  if container.duration and len(container.streams) == 1:
    return container.duration / av.time_base
  return None


def _decode_clip(request: _ClipRequest, seek: bool) -> np.ndarray | None:
  """Decodes one clip; returns None when a seek overshot start_time."""
  path = request.path
  container, stream = _open_video(path)
  try:
    info = _info_from_stream(path, container, stream)
    frame_dur = 1.0 / info.fps
    origin = 0.0
    if stream.start_time is not None and stream.time_base:
      origin = float(stream.start_time * stream.time_base)
    picker = _Picker(
        request.targets(),
        request.num_frames,
        request.start_time,
        lambda frame: _frame_to_rgb(frame, request.size, request.resize),
    )
    if seek:
      offset = int((request.start_time + origin) / stream.time_base)
      try:
        container.seek(offset, stream=stream, backward=True, any_frame=False)
      except av.FFmpegError:
        return None
    index = 0
    last_time = None
    decode_error = None
    try:
      for frame in container.decode(stream):
        t = _frame_time(frame, stream, origin, index, info.fps)
        if seek and index == 0 and t > request.start_time + _TIME_EPS:
          return None
        index += 1
        last_time = t
        picker.feed(frame, t)
        if picker.done():
          return np.stack(picker.out)
    except av.FFmpegError as e:
      decode_error = e

    cause = f" ({decode_error})" if decode_error is not None else ""
    if last_time is None:
      if decode_error is not None:
        raise VideoDecodeError(
            path,
            "undecodable",
            f"no frame could be decoded{cause}; re-encode or remove the file",
        )
      raise VideoDecodeError(path, "empty", "the video stream contains no frames; remove the file")
    last_end = last_time + frame_dur
    declared_end = _declared_stream_end(container, stream, info.fps)
    if declared_end is not None and last_end < declared_end - 1.5 * frame_dur:
      raise VideoDecodeError(
          path,
          "truncated",
          f"decoding stopped at {last_end:.3f}s (about {round(last_end * info.fps)} "
          f"frames) but the file declares {declared_end:.3f}s "
          f"({round(declared_end * info.fps)} frames){cause}; "
          "re-encode or remove the file",
      )
    if decode_error is not None:
      raise VideoDecodeError(
          path,
          "undecodable",
          f"decoding failed at {last_end:.3f}s{cause}; re-encode or remove the file",
      )
    if picker.finish(last_end):
      available = max(0.0, last_end - request.start_time)
      raise VideoDecodeError(
          path,
          "too_short",
          f"only {available:.3f}s (about {round(available * info.fps)} frames at "
          f"{info.fps:g} fps) remain after start_time {request.start_time:g}s but "
          f"{request.describe()} were requested; "
          "ask for fewer frames, a lower fps or an earlier start_time",
      )
    return np.stack(picker.out)
  finally:
    container.close()


# ----------------------------------------------------------------------------
# Writing.


def _atomic_temp_path(path: str) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
  os.close(fd)
  return temp


@contextlib.contextmanager
def atomic_write(path: str):
  """Yields a temporary path beside `path`; renamed onto `path` when the block ends
  without error, removed otherwise, so a reader or a killed run never sees half a file."""
  temp = _atomic_temp_path(path)
  try:
    yield temp
    os.replace(temp, path)
  finally:
    if os.path.exists(temp):
      os.remove(temp)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
  """Edge-replicates one row/column so H.264 4:2:0 gets even dimensions."""
  pad_h = frames.shape[1] % 2
  pad_w = frames.shape[2] % 2
  if not pad_h and not pad_w:
    return frames
  return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
) -> None:
  """Writes uint8 [T, H, W, 3] RGB frames as an H.264 (libx264, yuv420p) .mp4.

  The bytes depend only on the frames and arguments: x264 runs with one
  thread and without macroblock-tree rate control, which was observed to
  make output vary between identical runs. Odd heights/widths are padded to
  even by repeating the last row/column (4:2:0 chroma needs even sizes), so
  the file is then one pixel taller/wider than `frames`. The index (`moov`)
  is written at the front so a file cut off later is detected as truncated.
  The file appears atomically: it is written under a temporary name in the
  same directory and renamed into place.
  """
  path = os.fspath(path)
  if not path.lower().endswith(".mp4"):
    raise ValueError(f"write_video writes .mp4 files; {path!r} should end in .mp4")
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8, got {frames.dtype}; {_TO_UINT8}")
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise ValueError(f"frames must have shape [T>=1, H, W, 3], got {frames.shape}")
  if not fps > 0:
    raise ValueError(f"fps={fps!r} must be positive")
  if not 0 <= crf <= 51:
    raise ValueError(f"crf={crf!r} must be in [0, 51] (lower is higher quality)")
  frames = _pad_to_even(frames)
  _, height, width, _ = frames.shape
  rate = fractions.Fraction(fps).limit_denominator(1001)

  with (
      atomic_write(path) as temp,
      av.open(temp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container,
  ):
    stream = container.add_stream("libx264", rate=rate)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    stream.options = {
        "crf": str(crf),
        "preset": preset,
        "threads": "1",
        "x264-params": "threads=1:lookahead-threads=1:mbtree=0",
    }
    for i, rgb in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] RGB image as PNG (lossless) or JPEG (quality 95).

  Written atomically like write_video, so a killed process leaves no half file.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in _IMAGE_FORMATS:
    raise ValueError(
        f"cannot tell the image format of {path!r}; use one of {sorted(_IMAGE_FORMATS)}"
    )
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"image must be uint8, got {image.dtype}; {_TO_UINT8}")
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
  fmt = _IMAGE_FORMATS[ext]
  options = {"quality": 95} if fmt == "JPEG" else {}
  with atomic_write(path) as temp:
    Image.fromarray(image, mode="RGB").save(temp, format=fmt, **options)


def read_image(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    matte: tuple[int, int, int] | None = None,
) -> np.ndarray:
  """Reads a still as uint8 [H, W, 3] RGB, upright (EXIF orientation applied), grey
  expanded; alpha dropped, or with `matte` (an RGB colour) composited over it.

  size/resize mean the same as in read_clip. A file whose header parses but
  whose pixel data ends early is "truncated"; anything else Pillow rejects
  is "undecodable".
  """
  path = os.fspath(path)
  _check_size_and_resize(size, resize)
  _check_file(path, ImageDecodeError)
  try:
    img = Image.open(path)
  except UnidentifiedImageError as e:
    raise ImageDecodeError(
        path, "undecodable", "not an image format Pillow can read; pass a PNG or JPEG file"
    ) from e
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageDecodeError(
        path, "undecodable", f"cannot read the image header ({e}); re-encode or remove it"
    ) from e
  with img:
    try:
      img.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
      message = str(e)
      cut_off = "truncated" in message or isinstance(e, EOFError)
      raise ImageDecodeError(
          path,
          "truncated" if cut_off else "undecodable",
          f"pixel data cannot be decoded ({message}); re-encode or remove the file",
      ) from e
    img = ImageOps.exif_transpose(img)
    if matte is not None and ("A" in img.getbands() or "transparency" in img.info):
      img = img.convert("RGBA")
      img = Image.alpha_composite(Image.new("RGBA", img.size, (*matte, 255)), img)
    img = img.convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
      height, width = size
      if resize == "stretch":
        img = img.resize((width, height), Image.Resampling.BICUBIC)
      else:
        img = ImageOps.fit(img, (width, height), method=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()
