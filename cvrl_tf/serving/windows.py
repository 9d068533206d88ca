"""Per-window features: which frames each window of a video covers, and when.

Why: localisation, retrieval and detection use features of short windows with their
times, not one vector per video. A window length or stride is given in frames ('32') or
seconds ('1.28s'); frames count at the decoded rate (`--fps`, else the video's own),
so seconds are converted per video. Windows start at frame 0, every `stride` frames,
and only whole windows are kept (a tail shorter than a window is not covered); a video
shorter than one window gets a single window over all of it. Times are frame counts
over the decoded rate: window [start, start + length) spans [start / fps,
(start + length) / fps) seconds.

Each window is embedded as a short video: the mean over clips (the model's frames and
stride) evenly spaced in it, as many as it takes to cover it (sampling.eval_indices on
the window's frames), so a window of one clip's span is one clip.
"""

import dataclasses
import math
from typing import List, Optional

import numpy as np

from cvrl_tf.input import sampling


@dataclasses.dataclass(frozen=True)
class Span:
  """A window length or stride: `value` frames, or seconds when `seconds`."""
  value: float
  seconds: bool = False

  def frames(self, fps: float) -> int:
    """The span in frames at `fps` (at least 1)."""
    return max(1, int(round(self.value * fps))) if self.seconds else int(self.value)

  def __str__(self) -> str:
    return f'{self.value:g}s' if self.seconds else str(int(self.value))


def parse_span(text: str, flag: str) -> Span:
  """'32' (frames) or '1.28s' (seconds); ValueError naming `flag` otherwise."""
  body = text.strip().lower()
  seconds = body.endswith('s')
  body = body[:-1].strip() if seconds else body
  try:
    value = float(body) if seconds else int(body)
  except ValueError:
    value = None
  if value is None or not math.isfinite(value) or value <= 0:
    raise ValueError(f'{flag}={text!r}: give a positive number of frames (e.g. 32) or '
                     f'seconds (e.g. 1.28s)')
  return Span(float(value), seconds)


@dataclasses.dataclass(frozen=True)
class Window:
  """Frames [start, start + length) of a video decoded at `fps`."""
  start: int
  length: int
  fps: float

  @property
  def start_s(self) -> float:
    return self.start / self.fps

  @property
  def end_s(self) -> float:
    return (self.start + self.length) / self.fps


def video_windows(num_frames: int, fps: float, window: Optional[Span],
                  stride: Optional[Span] = None) -> List[Window]:
  """The windows of a video of `num_frames` at `fps`; no window spec: the whole video."""
  if num_frames < 1:
    raise ValueError('video has no frames')
  if window is None or window.frames(fps) >= num_frames:
    return [Window(0, num_frames, fps)]
  length = window.frames(fps)
  step = (stride or window).frames(fps)
  return [Window(start, length, fps) for start in range(0, num_frames - length + 1, step)]


def clips_to_cover(length: int, num_frames: int, frame_stride: int) -> int:
  """Clips of `num_frames` at `frame_stride` it takes to cover `length` frames (>= 1)."""
  return max(1, math.ceil(length / (num_frames * frame_stride)))


def clip_indices(window: Window, num_clips: int, num_frames: int,
                 frame_stride: int) -> np.ndarray:
  """int32 [num_clips, num_frames]: the video's frames of clips evenly spaced in the
  window (the evaluation protocol on the window's frames; short windows wrap)."""
  within = sampling.eval_indices(window.length, num_frames, frame_stride, num_clips)
  return window.start + np.asarray(within, np.int32)
