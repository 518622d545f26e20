"""Audio file I/O: .wav and the audio stream of video files via PyAV.

Everything the audio models read or write passes through here, as float32
arrays of shape [T, C] (samples, channels) in [-1, 1] full scale:

* `read_audio` decodes a .wav, or the first audio stream of any container
  FFmpeg reads (.mp4, .mkv, ...), and converts it to the requested sample
  rate and channel count. Timestamps are honoured: samples before time 0
  (AAC encoder priming that no edit list removed) are dropped, and the
  decoder's padding after the declared duration is cut, so audio muxed by
  `mux_audio` reads back sample-aligned with what was written.
* `resample` is FFmpeg's libswresample (via `av.AudioResampler`): a windowed
  sinc polyphase filter, band-limited (cutoff ~0.97 of the lower Nyquist
  rate), with no delay. Chosen over scipy.signal.resample_poly so that
  scipy stays a test-only dependency.
* Channels: mono -> stereo duplicates, stereo -> mono averages. Files with
  other channel counts (5.1, ...) are rejected rather than guessed at.
* `write_wav` writes 16-bit PCM or 32-bit float .wav; `mux_audio` puts AAC
  audio next to an existing video stream in an .mp4 (video packets copied,
  or re-encoded with the project's H.264 writer when the codec cannot go in
  .mp4). Both write atomically like `video.write_video`.

Every way an audio file can be unusable raises `AudioDecodeError`, which is
a `ValueError` and a `video.MediaDecodeError` with a machine-readable kind,
so a pipeline can skip and count bad files like bad videos:

  "missing"      no such file, not a regular file, or unreadable.
  "empty"        0 bytes, or an audio stream that decodes to zero samples.
  "truncated"    an .mp4-family file cut off (see video.py's rule (a)).
  "undecodable"  not a media file FFmpeg can read, or corrupt audio data.
  "no_audio"     a readable media file without an audio stream.
  "channels"     an audio stream with a channel count other than 1 or 2.

Silence is valid audio, not an error: `rms_db` / `is_silent` report it so a
data pipeline can count silent clips instead of failing on them.
"""

from __future__ import annotations

import dataclasses
import fractions
import os

import av
import numpy as np

from mgjax.data import video

AUDIO_KINDS = ("missing", "empty", "truncated", "undecodable", "no_audio", "channels")
SUPPORTED_CHANNELS = (1, 2)
_LAYOUTS = {1: "mono", 2: "stereo"}

# .wav sample formats: name -> FFmpeg encoder.
WAV_FORMATS = {"s16": "pcm_s16le", "flt": "pcm_f32le"}
# 16-bit PCM maps sample q to q / 32768, like FFmpeg's s16 -> float conversion,
# so a write/read round trip errs by at most half a step.
_S16_SCALE = 32768.0

# A clip whose RMS is below this many dB relative to full scale counts as
# silent: -60 dBFS is ~10 16-bit steps RMS, far below any intended sound.
SILENCE_DB = -60.0
_DB_FLOOR = -200.0  # rms_db of all-zero audio instead of -inf.

# AAC (FFmpeg's native encoder) at this bit rate per channel is transparent
# enough that decoded audio correlates > 0.99 with the input.
AAC_BIT_RATE_PER_CHANNEL = 96_000
# Sample rates the AAC bitstream can signal directly.
AAC_SAMPLE_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
# Video codecs whose packets the .mp4 muxer accepts as they are; others are
# decoded and re-encoded with video.write_video (H.264).
MP4_COPY_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1"})

# Samples per AudioFrame handed to encoders; encoders re-buffer as they need.
_ENCODE_CHUNK = 8192


class AudioDecodeError(video.MediaDecodeError, ValueError):
  """The single exception for an unusable audio file; kind in AUDIO_KINDS."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  sample_rate: int
  channels: int
  num_samples: int  # From the header; 0 when the file does not declare it.
  duration: float  # Seconds; 0.0 when undeclared.


# ----------------------------------------------------------------------------
# Arrays: checks, channels, resampling, loudness.


def _as_audio_array(audio, name: str = "audio") -> np.ndarray:
  """float32 [T, C] from [T] (mono) or [T, C]; rejects empty and non-finite input."""
  audio = np.asarray(audio)
  if audio.ndim == 1:
    audio = audio[:, None]  # [T, 1]
  if audio.ndim != 2 or audio.shape[0] < 1 or audio.shape[1] < 1:
    raise ValueError(
        f"{name} must have shape [T>=1] or [T>=1, C>=1] (samples, channels), " f"got {audio.shape}"
    )
  if not np.issubdtype(audio.dtype, np.floating):
    raise ValueError(
        f"{name} must be floating point in [-1, 1], got {audio.dtype}; "
        "divide integer PCM by its full scale (32768 for int16)"
    )
  audio = audio.astype(np.float32, copy=False)
  if not np.all(np.isfinite(audio)):
    bad = int(np.sum(~np.isfinite(audio)))
    raise ValueError(f"{name} has {bad} NaN/inf samples; fix whatever produced it")
  return audio


def _check_channels(channels, name: str = "channels") -> int:
  if channels not in SUPPORTED_CHANNELS:
    raise ValueError(f"{name}={channels!r} is not supported; use one of {SUPPORTED_CHANNELS}")
  return int(channels)


def _check_rate(rate, name: str) -> int:
  if int(rate) != rate or rate <= 0:
    raise ValueError(f"{name}={rate!r} must be a positive whole number of samples per second")
  return int(rate)


def convert_channels(audio: np.ndarray, channels: int) -> np.ndarray:
  """[T, C] -> [T, channels]: mono is duplicated, stereo averaged.

  Averaging (not summing) keeps a stereo file with the same sound on both
  sides at its level, and never clips.
  """
  audio = _as_audio_array(audio)
  channels = _check_channels(channels)
  have = audio.shape[1]
  if have == channels:
    return audio
  if have not in SUPPORTED_CHANNELS:
    raise ValueError(
        f"audio has {have} channels; only {SUPPORTED_CHANNELS} convert, "
        "downmix it to stereo first (e.g. ffmpeg -ac 2)"
    )
  if channels == 1:
    return audio.mean(axis=1, keepdims=True)  # [T, 1]
  return np.repeat(audio, channels, axis=1)  # [T, 2]


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
  """Samples after resampling: the same duration, rounded to a sample."""
  return int(round(num_samples * to_rate / from_rate))


def _resample_channel(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """One channel through libswresample: [T] -> [T'] (T' ~ T * to / from)."""
  resampler = av.AudioResampler(format="fltp", layout="mono", rate=to_rate)
  frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None, :]), format="fltp", layout="mono")
  frame.sample_rate = from_rate
  frame.pts = 0
  frame.time_base = fractions.Fraction(1, from_rate)
  out = resampler.resample(frame) + resampler.resample(None)  # None flushes the filter tail.
  if not out:
    return np.zeros(0, np.float32)
  return np.concatenate([f.to_ndarray()[0] for f in out])


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """[T, C] at from_rate -> [resampled_length(T), C] at to_rate, band-limited.

  libswresample's sinc filter, applied per channel. It has no delay, so
  sample 0 stays at time 0; the output is cut or zero-padded by at most a
  sample or two to exactly resampled_length(T).
  """
  audio = _as_audio_array(audio)
  from_rate = _check_rate(from_rate, "from_rate")
  to_rate = _check_rate(to_rate, "to_rate")
  if from_rate == to_rate:
    return audio.copy()
  length = resampled_length(audio.shape[0], from_rate, to_rate)
  out = np.zeros((length, audio.shape[1]), np.float32)  # [T', C]
  for c in range(audio.shape[1]):
    y = _resample_channel(audio[:, c], from_rate, to_rate)[:length]
    out[: len(y), c] = y
  return out


def rms_db(audio: np.ndarray) -> float:
  """RMS level over all samples and channels in dB relative to full scale.

  A full-scale sine is -3 dBFS; all-zero audio gives -200 instead of -inf.
  """
  audio = _as_audio_array(audio)
  rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
  return 20 * np.log10(rms) if rms > 0 else _DB_FLOOR


def is_silent(audio: np.ndarray, threshold_db: float = SILENCE_DB) -> bool:
  """Whether a clip's RMS level is below threshold_db dBFS.

  Silent audio is legitimate (a quiet scene, a pause); this lets a
  caller count or skip such clips deliberately.
  """
  return rms_db(audio) < threshold_db


# ----------------------------------------------------------------------------
# Reading.


def _open_audio(path: str):
  """Opens `path`; returns (container, first audio stream) or raises AudioDecodeError."""
  video._check_file(path, AudioDecodeError)
  why = video._iso_bmff_truncation(path)
  if why is not None:
    raise AudioDecodeError(path, "truncated", f"{why}; re-encode or remove the file")
  try:
    container = av.open(path, mode="r")
  except (av.FFmpegError, OSError, ValueError, UnicodeError) as e:
    raise AudioDecodeError(
        path,
        "undecodable",
        f"not an audio or video file FFmpeg can read ({e}); pass a .wav or a video "
        "with sound, or re-encode it",
    ) from e
  if not container.streams.audio:
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    container.close()
    raise AudioDecodeError(
        path,
        "no_audio",
        f"the file has no audio stream (it holds: {', '.join(kinds)}); pass a file with "
        "sound, e.g. mux one in with mgjax.data.audio.mux_audio",
    )
  stream = container.streams.audio[0]
  channels = stream.codec_context.channels
  if channels not in SUPPORTED_CHANNELS:
    container.close()
    raise AudioDecodeError(
        path,
        "channels",
        f"the audio stream has {channels} channels; only mono or stereo is supported, "
        "downmix it first (ffmpeg -i IN -ac 2 OUT.wav)",
    )
  return container, stream


def _declared_samples(stream) -> int:
  """The stream's declared length in samples, or 0 if undeclared."""
  if stream.duration and stream.time_base:
    seconds = float(stream.duration * stream.time_base)
    return int(round(seconds * stream.codec_context.sample_rate))
  return 0


def probe_audio(path: str | os.PathLike) -> AudioInfo:
  """A file's audio metadata, without decoding; raises AudioDecodeError."""
  path = os.fspath(path)
  container, stream = _open_audio(path)
  try:
    rate = int(stream.codec_context.sample_rate)
    samples = _declared_samples(stream)
    return AudioInfo(
        rate, int(stream.codec_context.channels), samples, samples / rate if rate else 0.0
    )
  finally:
    container.close()


_INT_SCALES = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


def _frame_to_float(frame) -> np.ndarray:
  """One decoded AudioFrame as float32 [C, N] in full-scale units."""
  data = frame.to_ndarray()
  channels = frame.layout.nb_channels
  if not frame.format.is_planar:
    data = data.reshape(-1, channels).T  # Interleaved [1, N*C] -> [C, N].
  name = frame.format.name.rstrip("p")
  if name == "u8":
    return (data.astype(np.float32) - 128.0) / 128.0
  if name in _INT_SCALES:
    return (data.astype(np.float64) / _INT_SCALES[name]).astype(np.float32)
  return data.astype(np.float32)


def _time_origin(container, stream) -> float:
  """Seconds that count as time 0: the video's start when there is a video.

  video.read_clip measures frame times from the video stream's start, so
  audio measured from the same origin stays in sync with those frames;
  without a video, the audio stream's own start is time 0.
  """
  reference = container.streams.video[0] if container.streams.video else stream
  if reference.start_time is not None and reference.time_base:
    return float(reference.start_time * reference.time_base)
  return 0.0


def _stream_end(stream) -> float | None:
  """Seconds at which the stream's declared duration ends, if it declares one."""
  if not (stream.duration and stream.time_base):
    return None
  start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  return start + float(stream.duration * stream.time_base)


def _decode_stream(path: str, container, stream) -> np.ndarray:
  """All samples of `stream` as float32 [T, C], sample 0 at time 0 (see _time_origin).

  Samples stamped before time 0 (e.g. codec priming no edit list removed)
  or after the declared end (the decoder's padding to a whole codec frame)
  are dropped; a stream starting after time 0 is preceded by silence.
  """
  rate = int(stream.codec_context.sample_rate)
  origin = _time_origin(container, stream)
  chunks = []  # [C, N] each.
  first = origin  # Time of the first decoded sample.
  try:
    for frame in container.decode(stream):
      if not chunks and frame.pts is not None and frame.time_base:
        first = float(frame.pts * frame.time_base)
      chunks.append(_frame_to_float(frame))
  except av.FFmpegError as e:
    decoded = sum(c.shape[1] for c in chunks)
    raise AudioDecodeError(
        path,
        "undecodable",
        f"audio decoding failed after {decoded / rate:.3f}s ({e}); re-encode or remove " "the file",
    ) from e
  channels = stream.codec_context.channels
  if not chunks:
    return np.zeros((0, channels), np.float32)
  audio = np.concatenate(chunks, axis=1).T  # [T, C], sample i at first + i / rate.
  end = _stream_end(stream)
  if end is not None:
    audio = audio[: max(0, int(round((end - first) * rate)))]
  lead = int(round((first - origin) * rate))  # Samples from time 0 to the first one.
  if lead < 0:
    audio = audio[-lead:]
  elif lead > 0:
    audio = np.concatenate([np.zeros((lead, channels), np.float32), audio])
  return np.ascontiguousarray(audio)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> np.ndarray:
  """Decodes a file's first audio stream as float32 [T, C].

  sample_rate / channels: convert to these (resample, average or duplicate
  channels); None keeps the file's own. Raises AudioDecodeError (a
  ValueError naming the file, the kind and the fix) for any unusable file,
  including one that decodes to zero samples. Silent audio is returned as
  is; check it with is_silent.
  """
  path = os.fspath(path)
  if sample_rate is not None:
    sample_rate = _check_rate(sample_rate, "sample_rate")
  if channels is not None:
    channels = _check_channels(channels)
  container, stream = _open_audio(path)
  try:
    native_rate = int(stream.codec_context.sample_rate)
    audio = _decode_stream(path, container, stream)  # [T, C]
  finally:
    container.close()
  if audio.shape[0] == 0:
    raise AudioDecodeError(
        path, "empty", "the audio stream holds zero samples; remove the file or write it again"
    )
  if channels is not None:
    audio = convert_channels(audio, channels)
  if sample_rate is not None and sample_rate != native_rate:
    audio = resample(audio, native_rate, sample_rate)
  return audio


# ----------------------------------------------------------------------------
# Writing.


def _frames_for_encoding(audio: np.ndarray, sample_rate: int, fmt: str):
  """Yields AudioFrames of _ENCODE_CHUNK samples of [T, C] audio, pts in samples."""
  layout = _LAYOUTS[audio.shape[1]]
  planar = fmt.endswith("p")
  for start in range(0, audio.shape[0], _ENCODE_CHUNK):
    chunk = audio[start : start + _ENCODE_CHUNK]  # [N, C]
    data = chunk.T if planar else chunk.reshape(1, -1)  # [C, N] or interleaved [1, N*C]
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = fractions.Fraction(1, sample_rate)
    yield frame


def _quantize_s16(audio: np.ndarray) -> tuple[np.ndarray, int]:
  """float [T, C] -> int16 [T, C] (round to nearest), and how many samples clipped."""
  q = np.rint(audio.astype(np.float64) * _S16_SCALE)
  clipped = int(np.sum((q > 32767) | (q < -32768)))
  return np.clip(q, -32768, 32767).astype(np.int16), clipped


def write_wav(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    sample_format: str = "s16",
) -> int:
  """Writes float [T, C] (or mono [T]) audio as a .wav; returns the clipped-sample count.

  sample_format "s16": 16-bit PCM, sample x stored as round(x * 32768),
  clipped to int16; the number of clipped samples is returned so a caller
  can report it (nothing is clipped silently). "flt": 32-bit float, stored
  exactly, never clipped. Written atomically (temporary name + rename) and
  without FFmpeg's encoder tag, so equal inputs give equal bytes.
  """
  path = os.fspath(path)
  if not path.lower().endswith(".wav"):
    raise ValueError(f"write_wav writes .wav files; {path!r} should end in .wav")
  if sample_format not in WAV_FORMATS:
    raise ValueError(f"sample_format={sample_format!r} is not one of {sorted(WAV_FORMATS)}")
  audio = _as_audio_array(audio)
  _check_channels(audio.shape[1], "audio channels (audio.shape[1])")
  sample_rate = _check_rate(sample_rate, "sample_rate")
  clipped = 0
  if sample_format == "s16":
    data, clipped = _quantize_s16(audio)
    fmt = "s16"
  else:
    data, fmt = audio, "flt"
  with (
      video.atomic_write(path) as temp,
      av.open(temp, mode="w", format="wav", options={"fflags": "+bitexact"}) as container,
  ):
    stream = container.add_stream(
        WAV_FORMATS[sample_format], rate=sample_rate, layout=_LAYOUTS[audio.shape[1]]
    )
    for frame in _frames_for_encoding(data, sample_rate, fmt):
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  return clipped


def _encode_aac(audio: np.ndarray, sample_rate: int, container) -> tuple[object, list]:
  """Adds an AAC stream to `container`; returns (stream, its packets, not yet muxed)."""
  stream = container.add_stream("aac", rate=sample_rate, layout=_LAYOUTS[audio.shape[1]])
  stream.bit_rate = AAC_BIT_RATE_PER_CHANNEL * audio.shape[1]
  packets = []
  for frame in _frames_for_encoding(audio, sample_rate, "fltp"):
    packets.extend(stream.encode(frame))
  packets.extend(stream.encode(None))
  return stream, packets


def _packet_time(packet) -> float:
  stamp = packet.dts if packet.dts is not None else packet.pts
  return float(stamp * packet.time_base) if stamp is not None else 0.0


def _copy_video_with_audio(video_path: str, audio: np.ndarray, sample_rate: int, temp: str) -> None:
  """Writes `temp`: the video stream of video_path copied, plus AAC audio, interleaved."""
  source, video_in = video._open_video(video_path)
  try:
    with av.open(temp, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
      video_out = out.add_stream_from_template(video_in)
      audio_out, audio_packets = _encode_aac(audio, sample_rate, out)
      video_packets = []
      for packet in source.demux(video_in):
        if packet.dts is None:  # The demuxer's end-of-stream marker.
          continue
        packet.stream = video_out
        video_packets.append(packet)
      if not video_packets:
        raise video.VideoDecodeError(
            video_path, "empty", "the video stream contains no frames; remove the file"
        )
      # Muxed in time order, so players need not seek between streams.
      merged = sorted(video_packets + audio_packets, key=_packet_time)
      for packet in merged:
        out.mux(packet)
  finally:
    source.close()


def _decode_all_frames(video_path: str) -> tuple[np.ndarray, float]:
  """uint8 [T, H, W, 3] of every frame and the frame rate, for re-encoding."""
  info = video.probe(video_path)
  source, stream = video._open_video(video_path)
  try:
    frames = [f.to_ndarray(format="rgb24") for f in source.decode(stream)]
  except av.FFmpegError as e:
    raise video.VideoDecodeError(
        video_path, "undecodable", f"cannot decode its frames ({e}); re-encode the file"
    ) from e
  finally:
    source.close()
  if not frames:
    raise video.VideoDecodeError(
        video_path, "empty", "the video stream contains no frames; remove the file"
    )
  return np.stack(frames), info.fps


def mux_audio(
    video_path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
) -> None:
  """Writes out_path (.mp4): the video stream of video_path plus `audio` as AAC.

  audio: float [T, C] (or mono [T]), C in (1, 2), at sample_rate (one of
  AAC_SAMPLE_RATES; resample others first). The video is copied packet for
  packet when its codec is in MP4_COPY_CODECS, else decoded and re-encoded
  with video.write_video (H.264). Audio streams of video_path are dropped;
  the audio is not trimmed or padded to the video's length. AAC's encoder
  delay (1024 priming samples) is recorded in the .mp4 edit list, which
  read_audio honours, so the audio reads back aligned. Written atomically;
  out_path may equal video_path.
  """
  video_path, out_path = os.fspath(video_path), os.fspath(out_path)
  if not out_path.lower().endswith(".mp4"):
    raise ValueError(f"mux_audio writes .mp4 files; {out_path!r} should end in .mp4")
  audio = _as_audio_array(audio)
  _check_channels(audio.shape[1], "audio channels (audio.shape[1])")
  sample_rate = _check_rate(sample_rate, "sample_rate")
  if sample_rate not in AAC_SAMPLE_RATES:
    raise ValueError(
        f"sample_rate={sample_rate} cannot be stored as AAC; resample to one of "
        f"{AAC_SAMPLE_RATES} first (mgjax.data.audio.resample)"
    )
  source, stream = video._open_video(video_path)
  codec = stream.codec_context.name
  source.close()

  with video.atomic_write(out_path) as temp:
    if codec in MP4_COPY_CODECS:
      _copy_video_with_audio(video_path, audio, sample_rate, temp)
      return
    frames, fps = _decode_all_frames(video_path)
    reencoded = video._atomic_temp_path(out_path)  # H.264, then copied beside the audio
    try:
      video.write_video(reencoded, frames, fps)
      _copy_video_with_audio(reencoded, audio, sample_rate, temp)
    finally:
      os.remove(reencoded)
