"""Temporal sampling: which stored frames make up each clip.

Everything here is in-graph (runs inside `tf.data` map functions) and stateless: each
function takes an explicit `seed`, an int32/int64 tensor of shape [2] as used by
`tf.random.stateless_*`, so a fixed seed gives the same frames in any execution order.

Notation (CVRL paper, Sec. 3.2): L stored frames, n frames per clip, stride s in stored
frames. A clip starting at frame `a` holds frames a, a+s, ..., a+(n-1)s. There are
T = L - (n-1)s valid starts (0 .. T-1) when T > 0. Videos with T <= 0 are "short": clip
frame indices wrap around modulo L, so even a single-frame video yields full clips.

Outputs are int32 frame indices, always in [0, L).
"""

import math
from typing import Optional, Union

import tensorflow as tf

# Interval distributions P(t) on [0, T] (the paper's ablation, Table 1a). `rate` only for
# the last two. The continuous draw is floored to an integer interval in {0 .. T-1}.
#   decreasing   P(t) = 2(T - t) / T^2                      (CVRL default)
#   uniform      P(t) = 1 / T                               (time-invariant baseline)
#   increasing   P(t) = 2t / T^2
#   power        P(t) = (r + 1)(T - t)^r / T^(r+1),  r >= 0 (r=0 uniform, r=1 decreasing)
#   exponential  P(t) = (r / T) exp(-r t / T) / (1 - exp(-r)), r > 0 (rate per support T)
INTERVAL_FAMILIES = ('decreasing', 'uniform', 'increasing', 'power', 'exponential')

IntLike = Union[int, tf.Tensor]


def interval_inverse_cdf(u: tf.Tensor, support: tf.Tensor, family: str = 'decreasing',
                         rate: float = 1.0) -> tf.Tensor:
  """Maps u ~ U[0, 1) to a continuous interval t in [0, support) with density P(t).

  Inverse-CDF sampling keeps the draw a pure function of u (hence of the seed).
  Shapes: u and support broadcast; returns float32.
  """
  u = tf.cast(u, tf.float32)
  support = tf.cast(support, tf.float32)
  if family == 'decreasing':  # F(t) = 2t/T - t^2/T^2.
    x = 1.0 - tf.sqrt(1.0 - u)
  elif family == 'uniform':  # F(t) = t/T.
    x = u
  elif family == 'increasing':  # F(t) = t^2/T^2.
    x = tf.sqrt(u)
  elif family == 'power':  # F(t) = 1 - (1 - t/T)^(r+1).
    if rate < 0:
      raise ValueError(f'power interval rate must be >= 0, got {rate}')
    x = 1.0 - tf.pow(1.0 - u, 1.0 / (rate + 1.0))
  elif family == 'exponential':  # F(t) = (1 - exp(-r t/T)) / (1 - exp(-r)).
    if rate <= 0:
      raise ValueError(f'exponential interval rate must be > 0, got {rate}')
    x = -tf.math.log1p(-u * (-math.expm1(-rate))) / rate
  else:
    raise ValueError(f'unknown interval family {family!r}; expected one of '
                     f'{INTERVAL_FAMILIES}')
  return x * support


def frame_stride(stride: int, fps: Optional[tf.Tensor] = None,
                 target_fps: Optional[float] = None) -> tf.Tensor:
  """Stride in *stored* frames, int32 scalar tensor >= 1.

  `stride` counts frames at `target_fps`. When both `target_fps` and the record's `fps`
  (> 0) are known, the stride is rescaled so a clip spans the same time on any record:
  stride 2 at 25 fps becomes 4 on a 50 fps record. Otherwise `stride` is used as is.
  """
  if stride < 1:
    raise ValueError(f'stride must be >= 1, got {stride}')
  if target_fps is None or fps is None:
    return tf.constant(stride, tf.int32)
  fps = tf.cast(fps, tf.float32)
  scaled = tf.round(stride * fps / float(target_fps))
  scaled = tf.cast(tf.maximum(scaled, 1.0), tf.int32)
  return tf.where(fps > 0, scaled, tf.constant(stride, tf.int32))


def clip_indices(starts: tf.Tensor, num_frames: IntLike, clip_len: int,
                 stride: IntLike) -> tf.Tensor:
  """Frame indices of clips starting at `starts` [K] -> int32 [K, clip_len], mod L."""
  starts = tf.cast(starts, tf.int32)
  offsets = tf.range(clip_len, dtype=tf.int32) * tf.cast(stride, tf.int32)
  return tf.math.floormod(starts[:, None] + offsets[None, :], tf.cast(num_frames, tf.int32))


def _support(num_frames: IntLike, clip_len: int, stride: IntLike) -> tf.Tensor:
  return (tf.cast(num_frames, tf.int32)
          - (clip_len - 1) * tf.cast(stride, tf.int32))


def _check_length(num_frames: IntLike) -> tf.Tensor:
  num_frames = tf.cast(num_frames, tf.int32)
  tf.debugging.assert_positive(num_frames, message='video has no frames')
  return num_frames


def sample_pretrain_indices(seed: tf.Tensor, num_frames: IntLike, clip_len: int,
                            stride: IntLike, family: str = 'decreasing',
                            rate: float = 1.0) -> tf.Tensor:
  """Two clips at a random temporal interval (CVRL pretraining) -> int32 [2, clip_len].

  Long video (T > 0): t = floor(T * x), x drawn by `family`; start1 ~ U{0 .. T-t-1},
  start2 = start1 + t; the pair is swapped with p = 0.5 so neither view is always first.
  Short video (T <= 0): two independent starts ~ U{0 .. L-1}, indices wrap modulo L.
  """
  num_frames = _check_length(num_frames)
  support = _support(num_frames, clip_len, stride)
  seeds = tf.random.experimental.stateless_split(seed, num=4)
  u = tf.random.stateless_uniform([], seeds[0], dtype=tf.float32)
  t = tf.cast(tf.floor(interval_inverse_cdf(u, support, family, rate)), tf.int32)
  t = tf.clip_by_value(t, 0, tf.maximum(support - 1, 0))
  # Long: start1 in [0, T - t); short: the pair is independent in [0, L).
  long_video = support > 0
  hi1 = tf.where(long_video, support - t, num_frames)
  start1 = tf.random.stateless_uniform([], seeds[1], 0, hi1, dtype=tf.int32)
  start2_short = tf.random.stateless_uniform([], seeds[2], 0, num_frames, dtype=tf.int32)
  start2 = tf.where(long_video, start1 + t, start2_short)
  swap = tf.random.stateless_uniform([], seeds[3]) < 0.5
  starts = tf.where(swap, tf.stack([start2, start1]), tf.stack([start1, start2]))
  return clip_indices(starts, num_frames, clip_len, stride)


def sample_train_indices(seed: tf.Tensor, num_frames: IntLike, clip_len: int,
                         stride: IntLike) -> tf.Tensor:
  """One clip at a uniform random start (classification training) -> int32 [clip_len]."""
  num_frames = _check_length(num_frames)
  support = _support(num_frames, clip_len, stride)
  hi = tf.where(support > 0, support, num_frames)
  start = tf.random.stateless_uniform([1], seed, 0, hi, dtype=tf.int32)
  return clip_indices(start, num_frames, clip_len, stride)[0]


def eval_indices(num_frames: IntLike, clip_len: int, stride: IntLike,
                 num_clips: int = 10) -> tf.Tensor:
  """K clips evenly spaced over the whole video (deterministic) -> int32 [K, clip_len].

  Starts are round(linspace(0, T - 1, K)): the first clip begins at frame 0 and the
  last one ends at the last frame, so together they cover the video. Short videos
  (T <= 0) start every clip at 0; each clip then wraps over the whole video anyway.
  """
  if num_clips < 1:
    raise ValueError(f'num_clips must be >= 1, got {num_clips}')
  num_frames = _check_length(num_frames)
  last = tf.cast(tf.maximum(_support(num_frames, clip_len, stride) - 1, 0), tf.float32)
  if num_clips == 1:
    starts = tf.round(last / 2.0)[None]  # The centre clip.
  else:
    starts = tf.round(tf.linspace(0.0, last, num_clips))
  return clip_indices(starts, num_frames, clip_len, stride)
