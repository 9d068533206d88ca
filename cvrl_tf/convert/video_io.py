"""Video files in and out with PyAV, one frame at a time.

`FrameReader` streams RGB frames of a file with optional trimming (seconds), frame-rate
resampling and short-side resizing; frames are converted only when emitted and never
accumulated, so memory stays flat in video length. `VideoWriter` writes mp4 (H.264 when
this PyAV build has libx264, MPEG-4 part 2 otherwise). `encode_video_jpeg` is the per-video
work of the converter's workers (shard_writer.decode_record adds the record): it lives
here, away from TensorFlow, so conversion workers start in a fraction of a second. Frames
go through swscale into planar RGB and JPEGs through OpenCV (docs/convert.md, "Speed").

This module must not import TensorFlow (it does, through tf.io.gfile, only to read a video
that is not on a local disk: gs://, ram://, ...).
"""

import fractions
import io
import math
import os
from typing import Iterator, List, Optional, Tuple

import av
import av.video.reformatter
import numpy as np

from cvrl_tf import files as files_lib

# Timestamps are floats derived from rational pts; this absorbs their rounding.
_EPS = 1e-4
# A stream that decodes to fewer frames than this fraction of its container frame count is
# reported as truncated rather than silently converted short.
_MIN_DECODED_FRACTION = 0.9


class VideoError(Exception):
  """A file that cannot be read as a video; the message is the human-readable reason."""


def output_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
  """(width, height) after resizing the short side to `short_side` (0 keeps the size)."""
  if short_side <= 0 or min(width, height) == short_side:
    return width, height
  if width <= height:
    return short_side, max(1, int(round(height * short_side / width)))
  return max(1, int(round(width * short_side / height))), short_side


def _open(path: str):
  """A PyAV container: local files by name, others as a file object from tf.io.gfile."""
  if files_lib.is_local(path):
    return av.open(path)
  if not files_lib.exists(path):
    raise VideoError('file not found')
  return av.open(files_lib.open_file(path, 'rb'))


def _stream_fps(stream) -> float:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate and float(rate) > 0:
      return float(rate)
  return 0.0


class FrameReader:
  """Streams HxWx3 uint8 RGB frames of one video file.

  Usage:
    with FrameReader(path, start=1.0, end=3.0, fps=25, short_side=256) as reader:
      reader.fps, reader.width, reader.height   # of the frames that will be yielded
      for frame in reader: ...

  Args:
    path: video file.
    start, end: optional trim window in seconds from the start of the video.
    fps: output frame rate; frames are dropped or repeated by timestamp (the frame shown at
      time k/fps is emitted). 0 keeps every source frame.
    short_side: resize so the shorter side has this many pixels, keeping the aspect ratio
      (0 keeps the source size). All frames get the size computed from the stream header.
    threads: decoder threads; 1 suits one-process-per-core conversion, 0 lets FFmpeg choose.
    bgr: yield BGR frames (OpenCV's channel order) instead of RGB.
    reuse: yield every frame in one array, overwritten by the next frame (for a consumer
      done with each frame before it asks for the next, like the JPEG encoder: filling
      a cache-warm array is 3x faster than a new one).

  A repeated frame (fps upsampling) is yielded as the same array object: do not modify
  yielded frames in place.
  """

  def __init__(self, path: str, start: Optional[float] = None, end: Optional[float] = None,
               fps: float = 0.0, short_side: int = 0, threads: int = 1,
               bgr: bool = False, reuse: bool = False):
    if start is not None and end is not None and end <= start:
      raise ValueError(f'empty trim window [{start}, {end}]')
    self.path = path
    try:
      self._container = _open(path)
    except av.error.FileNotFoundError as e:
      raise VideoError('file not found') from e
    except av.error.FFmpegError as e:
      raise VideoError(f'cannot open as a video: {e.strerror or e}') from e
    try:
      if not self._container.streams.video:
        raise VideoError('no video stream')
      self._stream = self._container.streams.video[0]
      ctx = self._stream.codec_context
      if not ctx.width or not ctx.height:
        raise VideoError('video stream has no frame size')
      if threads:
        ctx.thread_count = threads
      ctx.thread_type = 'SLICE' if threads == 1 else 'AUTO'
    except BaseException:
      self._container.close()
      raise
    self.source_fps = _stream_fps(self._stream)
    self.source_width, self.source_height = ctx.width, ctx.height
    self.width, self.height = output_size(ctx.width, ctx.height, short_side)
    self.fps = float(fps) if fps > 0 else self.source_fps
    self.start = float(start or 0.0)
    self.end = None if end is None else float(end)
    self._resample = fps > 0
    self._interpolation = 'AREA' if self.width < ctx.width else 'BICUBIC'
    self._reformatter = av.video.reformatter.VideoReformatter()
    self._threads = threads
    self._order = _BGR if bgr else _RGB
    self._buffer = np.empty((self.height, self.width, 3), np.uint8) if reuse else None
    tb = self._stream.time_base
    self._t0 = float(self._stream.start_time * tb) if self._stream.start_time else 0.0
    self.num_source_frames = 0  # decoded so far (including pre-roll after a seek)
    self.num_bad_packets = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._container.close()

  def _seek(self):
    """Jumps to the keyframe at or before `start`; decoding from 0 is the fallback."""
    if self.start <= 0:
      return
    target = int((self.start + self._t0) / self._stream.time_base)
    try:
      self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
      self._container.close()
      self._container = _open(self.path)
      self._stream = self._container.streams.video[0]

  def _timed_frames(self) -> Iterator[Tuple[float, 'av.VideoFrame']]:
    """Decoded frames with their time in seconds relative to `start`, in decode order."""
    count = 0
    for packet in self._container.demux(self._stream):
      try:
        frames = packet.decode()
      except av.error.InvalidDataError:
        self.num_bad_packets += 1  # corrupt packet: conceal it like ffmpeg does
        continue
      except av.error.FFmpegError as e:
        raise VideoError(f'decode error after {count} frames: {e.strerror or e}') from e
      for frame in frames:
        count += 1
        self.num_source_frames += 1
        if frame.time is not None:
          t = frame.time - self._t0
        else:
          t = (count - 1) / (self.source_fps or 25.0)
        yield t - self.start, frame

  def _convert(self, frame) -> np.ndarray:
    # One reformatter per video reuses its swscale context: 4x faster than to_ndarray's
    # per-frame context at small sizes. Planar RGB (gbrp) out of swscale, interleaved
    # here: the same values as packed rgb24 (swscale computes both with the same
    # filters; tests/test_convert_speed_paths.py checks it) at a third of the CPU, since
    # swscale's scaled output to packed 24-bit RGB is plain C, 8x slower at odd widths.
    planes = self._reformatter.reformat(
        frame, width=self.width, height=self.height, format='gbrp',
        interpolation=self._interpolation, threads=self._threads).planes
    return interleave(planes, self._order, self.height, self.width, self._buffer)

  def __iter__(self) -> Iterator[np.ndarray]:
    self._seek()
    stop = None if self.end is None else self.end - self.start
    if self._resample:
      yield from self._iter_resampled(stop)
    else:
      for t, frame in self._timed_frames():
        if stop is not None and t >= stop - _EPS:
          break
        if t >= -_EPS:
          yield self._convert(frame)
    self._check_complete()

  def _iter_resampled(self, stop: Optional[float]) -> Iterator[np.ndarray]:
    period = 1.0 / self.fps
    k = 0  # next output frame, shown at time k * period
    prev_t, prev_frame, prev_array = None, None, None
    for t, frame in self._timed_frames():
      if stop is not None and t >= stop - _EPS:
        break
      if prev_frame is not None:
        while k * period < t - _EPS:
          if prev_array is None:
            prev_array = self._convert(prev_frame)
          yield prev_array
          k += 1
      if prev_t is not None and t < prev_t:
        continue  # out-of-order timestamp: keep the later frame showing
      prev_t, prev_frame, prev_array = t, frame, None
    if prev_frame is None:
      return
    duration = (1.0 / self.source_fps) if self.source_fps else period
    tail = prev_t + duration
    if stop is not None:
      tail = min(tail, stop)
    while k * period < tail - _EPS:
      if prev_array is None:
        prev_array = self._convert(prev_frame)
      yield prev_array
      k += 1

  def _check_complete(self):
    expected = self._stream.frames
    untrimmed = self.start <= 0 and self.end is None
    if untrimmed and expected > 0 and self.num_source_frames < _MIN_DECODED_FRACTION * expected:
      raise VideoError(f'truncated or corrupt: decoded {self.num_source_frames} of '
                       f'{expected} frames')


def read_frames(path: str, **kwargs) -> List[np.ndarray]:
  """All frames of a (short) video as a list; see FrameReader for the arguments."""
  with FrameReader(path, **kwargs) as reader:
    return [f.copy() for f in reader]


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  """JPEG bytes of an HxWx3 uint8 RGB frame: Pillow's bytes (baseline, 4:2:0, JFIF)."""
  if _cv2() is None:
    return _pillow_jpeg(frame, quality)
  return encode_jpeg_bgr(_cv2().cvtColor(np.ascontiguousarray(frame), _cv2().COLOR_RGB2BGR),
                         quality)


def encode_jpeg_bgr(frame: np.ndarray, quality: int) -> bytes:
  """JPEG bytes of an HxWx3 uint8 BGR frame, the same as encode_jpeg of its RGB.

  OpenCV's libjpeg-turbo with its defaults writes the bytes that Pillow's does (both
  libjpeg-turbo 3, islow DCT, 4:2:0, no optimisation, a plain JFIF header: tested
  against Pillow) without Pillow's copies into its own image memory: 0.25 vs 0.33 ms
  per 341x256 frame. Pillow when OpenCV is missing (it comes with tf-models-official).
  """
  cv2 = _cv2()
  if cv2 is None:
    return _pillow_jpeg(frame[..., ::-1], quality)
  ok, buf = cv2.imencode('.jpg', frame, (cv2.IMWRITE_JPEG_QUALITY, int(quality)))
  if not ok:
    raise ValueError(f'JPEG encoding failed for a frame of shape {frame.shape}')
  return buf.tobytes()


def _pillow_jpeg(frame: np.ndarray, quality: int) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(frame)).save(buf, format='JPEG', quality=int(quality))
  return buf.getvalue()


_CV2 = []


def _cv2():
  """OpenCV, imported on first use (20 ms), or None when it is not installed."""
  if not _CV2:
    try:
      import cv2  # pylint: disable=g-import-not-at-top
    except ImportError:
      cv2 = None
    _CV2.append(cv2)
  return _CV2[0]


# Planes of swscale's gbrp (G, B, R) in the order of the interleaved channels.
_RGB, _BGR = (2, 0, 1), (1, 0, 2)


def interleave(planes, order, height: int, width: int,
               out: Optional[np.ndarray] = None) -> np.ndarray:
  """HxWx3 uint8 array (`out` if given) of three 8-bit planes (padded rows), channel c
  taken from planes[order[c]]."""
  views = [np.frombuffer(planes[i], np.uint8).reshape(height, planes[i].line_size)[:, :width]
           for i in order]
  if out is None:
    out = np.empty((height, width, 3), np.uint8)
  cv2 = _cv2()
  if cv2 is not None:
    return cv2.merge(views, dst=out)
  for channel, view in enumerate(views):
    out[:, :, channel] = view
  return out


def encode_video_jpeg(path: str, start: Optional[float] = None, end: Optional[float] = None,
                      fps: float = 0.0, short_side: int = 0, quality: int = 90,
                      threads: int = 1) -> dict:
  """Decodes one video to per-frame JPEGs (the converter's and the embed tool's work).

  Returns {'ok': True, 'jpegs', 'fps', 'height', 'width'} or {'ok': False, 'reason'}: a
  plain picklable dict so that a failure is data, not an exception crossing processes.
  """
  try:
    if not files_lib.exists(path):
      return {'ok': False, 'reason': 'file not found'}
    local = files_lib.is_local(path)
    regular = os.path.isfile(path) if local else not files_lib.isdir(path)  # not a FIFO
    if regular and files_lib.size(path) == 0:
      return {'ok': False, 'reason': 'empty file (0 bytes)'}
    with FrameReader(path, start=start, end=end, fps=fps, short_side=short_side,
                     threads=threads, bgr=_cv2() is not None, reuse=True) as reader:
      encode = encode_jpeg_bgr if _cv2() is not None else encode_jpeg
      jpegs = [encode(frame, quality) for frame in reader]
      if not jpegs:
        window = '' if start is None and end is None else f' in [{start}, {end}] s'
        return {'ok': False, 'reason': f'no frames decoded{window}'}
      return {'ok': True, 'jpegs': jpegs, 'fps': reader.fps, 'height': reader.height,
              'width': reader.width}
  except VideoError as e:
    return {'ok': False, 'reason': str(e)}
  except Exception as e:  # pylint: disable=broad-except
    return {'ok': False, 'reason': f'{type(e).__name__}: {e}'}


def default_codec() -> str:
  """H.264 when available (small, universally playable), else MPEG-4 part 2."""
  return 'libx264' if 'libx264' in av.codecs_available else 'mpeg4'


class VideoWriter:
  """Writes HxWx3 uint8 RGB frames to a video file (container from the file extension).

  Usage:
    with VideoWriter('a.mp4', fps=25, width=64, height=64) as writer:
      writer.write(frame)

  Single-threaded encoding with fixed settings, so the same frames give the same bytes.
  """

  def __init__(self, path: str, fps: float, width: int, height: int,
               codec: Optional[str] = None, crf: int = 18):
    if width % 2 or height % 2:
      raise ValueError(f'yuv420p video needs even width and height, got {width}x{height}')
    rate = fractions.Fraction(fps).limit_denominator(1001)
    self._container = av.open(path, mode='w')
    try:
      codec = codec or default_codec()
      self._stream = self._container.add_stream(codec, rate=rate)
      self._stream.width, self._stream.height = width, height
      self._stream.pix_fmt = 'yuv420p'
      self._stream.codec_context.thread_count = 1
      if codec in ('libx264', 'h264'):
        self._stream.options = {'crf': str(crf), 'preset': 'veryfast'}
      else:
        self._stream.codec_context.qmin = self._stream.codec_context.qmax = 2
        self._stream.bit_rate = max(200_000, int(width * height * float(rate) * 2))
    except BaseException:
      self._container.close()
      raise
    self._size = (height, width)
    self._time_base = fractions.Fraction(1) / rate
    self._count = 0

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *unused):
    self.close()

  def write(self, frame: np.ndarray):
    if frame.shape != self._size + (3,) or frame.dtype != np.uint8:
      raise ValueError(f'expected uint8 frame of shape {self._size + (3,)}, '
                       f'got {frame.dtype} {frame.shape}')
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
    vf.pts, vf.time_base = self._count, self._time_base
    self._count += 1
    for packet in self._stream.encode(vf):
      self._container.mux(packet)

  def close(self):
    if self._container is None:
      return
    try:
      for packet in self._stream.encode(None):
        self._container.mux(packet)
    finally:
      self._container.close()
      self._container = None


def frame_count_hint(num_seconds: float, fps: float) -> int:
  """Number of frames FrameReader yields for `num_seconds` of video resampled to `fps`."""
  return int(math.ceil(num_seconds * fps - _EPS))
