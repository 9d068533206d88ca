"""Temporal sampling: interval distributions, index ranges, evaluation clips, frame rate."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from cvrl_tf.input import sampling


def _cdf(family, rate):
  """Independent NumPy CDFs of x = t / T on [0, 1], from the documented densities."""
  return {
      'decreasing': lambda x: 2 * x - x**2,
      'uniform': lambda x: x,
      'increasing': lambda x: x**2,
      'power': lambda x: 1 - (1 - x)**(rate + 1),
      'exponential': lambda x: (1 - np.exp(-rate * x)) / (1 - np.exp(-rate)),
  }[family]


def _draw_pairs(num_draws, num_frames, clip_len, stride, family='decreasing', rate=1.0):
  """Runs the in-graph sampler inside tf.data, as the pipeline does -> [N, 2, n]."""
  ds = tf.data.Dataset.range(num_draws).map(
      lambda i: sampling.sample_pretrain_indices(
          tf.stack([i, tf.constant(11, tf.int64)]), num_frames, clip_len, stride,
          family, rate))
  return next(iter(ds.batch(num_draws))).numpy()


@pytest.mark.parametrize('family,rate', [('decreasing', 1.0), ('uniform', 1.0),
                                         ('increasing', 1.0), ('power', 3.0),
                                         ('exponential', 4.0)])
def test_interval_follows_its_distribution(family, rate):
  num_frames, clip_len, stride = 2006, 4, 4
  support = num_frames - (clip_len - 1) * stride  # 1994
  pairs = _draw_pairs(3000, num_frames, clip_len, stride, family, rate)
  starts = pairs[:, :, 0]
  t = np.abs(starts[:, 1] - starts[:, 0])
  assert t.min() >= 0 and t.max() <= support - 1
  x = (t + 0.5) / support  # Mid-point of the floored bin.
  assert scipy.stats.kstest(x, _cdf(family, rate)).pvalue > 1e-3
  if family != 'uniform':  # The test has power: the uniform CDF is rejected.
    assert scipy.stats.kstest(x, _cdf('uniform', 1.0)).pvalue < 1e-6
  # Clips stay inside the video, first start below T - t, and the order is swapped half
  # of the time.
  assert (pairs >= 0).all() and (pairs < num_frames).all()
  assert (starts.min(axis=1) + t <= support - 1).all()
  np.testing.assert_array_equal(np.diff(pairs, axis=2), stride)
  assert 0.45 < np.mean(starts[:, 0] > starts[:, 1]) < 0.55


def test_unknown_family_and_bad_rates_are_refused():
  with pytest.raises(ValueError, match='unknown interval family'):
    sampling.interval_inverse_cdf(0.5, 10, 'gaussian')
  with pytest.raises(ValueError, match='rate'):
    sampling.interval_inverse_cdf(0.5, 10, 'exponential', rate=0.0)


@pytest.mark.parametrize('num_frames', [1, 2, 7, 30, 31, 200])
def test_pretrain_indices_in_range_for_long_short_and_single_frame(num_frames):
  clip_len, stride = 16, 2  # Short when L <= 30.
  pairs = _draw_pairs(200, num_frames, clip_len, stride)
  assert pairs.shape == (200, 2, clip_len)
  assert (pairs >= 0).all() and (pairs < num_frames).all()
  # Each clip advances by the stride modulo L (wrapping around in short videos).
  np.testing.assert_array_equal(np.mod(np.diff(pairs, axis=2), num_frames),
                                stride % num_frames)
  if num_frames > (clip_len - 1) * stride:
    np.testing.assert_array_equal(np.diff(pairs, axis=2), stride)  # No wrap when long.
  elif num_frames > 1:
    assert len(np.unique(pairs[:, :, 0])) > 1  # Independent starts in short videos.


def test_train_indices_uniform_start_in_range():
  ds = tf.data.Dataset.range(2000).map(
      lambda i: sampling.sample_train_indices(tf.stack([i, i]), 40, 8, 2))
  clips = next(iter(ds.batch(2000))).numpy()
  assert (clips >= 0).all() and (clips < 40).all()
  np.testing.assert_array_equal(np.diff(clips, axis=1), 2)
  counts = np.bincount(clips[:, 0], minlength=40)
  assert counts[26:].sum() == 0  # T = 40 - 14 = 26 starts.
  assert scipy.stats.chisquare(counts[:26]).pvalue > 1e-3
  short = sampling.sample_train_indices(tf.constant([1, 2]), 3, 8, 2).numpy()
  assert ((short >= 0) & (short < 3)).all()


def test_eval_indices_deterministic_even_and_covering():
  idx = sampling.eval_indices(100, 8, 2, num_clips=10).numpy()
  np.testing.assert_array_equal(idx, sampling.eval_indices(100, 8, 2, 10).numpy())
  assert idx.shape == (10, 8)
  assert idx[0, 0] == 0 and idx[-1, -1] == 99  # First frame to last frame.
  gaps = np.diff(idx[:, 0])
  assert gaps.max() - gaps.min() <= 1  # Evenly spaced.
  centre = sampling.eval_indices(100, 8, 2, num_clips=1).numpy()[0]
  assert abs((centre[0] + centre[-1]) / 2 - 49.5) <= 1  # The centre clip.
  short = sampling.eval_indices(5, 8, 2, num_clips=3).numpy()
  assert set(short.ravel()) == set(range(5))  # Each wrapped clip covers the video.
  single = sampling.eval_indices(1, 4, 2, num_clips=2).numpy()
  np.testing.assert_array_equal(single, 0)


def test_frame_stride_adapts_to_record_fps():
  assert int(sampling.frame_stride(2)) == 2
  assert int(sampling.frame_stride(2, tf.constant(50.0), target_fps=25.0)) == 4
  assert int(sampling.frame_stride(2, tf.constant(25.0), target_fps=25.0)) == 2
  assert int(sampling.frame_stride(2, tf.constant(12.0), target_fps=25.0)) == 1
  assert int(sampling.frame_stride(2, tf.constant(0.0), target_fps=25.0)) == 2  # Unknown.
  with pytest.raises(ValueError):
    sampling.frame_stride(0)
