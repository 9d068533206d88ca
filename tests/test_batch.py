"""finish_batch: every deferred stage, read off the batch keys."""

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.input import batch

SEED = tf.constant([3, 5])


def test_finish_batch_handles_every_deferred_stage():
  rng = np.random.default_rng(5)
  frames = rng.integers(0, 256, size=(1, 1, 10, 12, 3)).astype(np.uint8)
  still = np.repeat(frames, 3, axis=1)  # [1, T=3, 10, 12, 3], a still scene.
  crops = np.zeros((2, 3, 16, 16, 3), np.uint8)
  crops[:, :, :10, :12] = still
  hw, flip = tf.constant([[10, 12], [10, 12]]), tf.constant([False, True])
  plain = batch.finish_batch({'crops': crops, 'crop_hw': hw, 'flip': flip}, SEED, 8)
  np.testing.assert_allclose(plain[1], plain[0][:, :, ::-1], atol=1e-6)  # Mirrored.
  coloured = batch.finish_batch({'crops': crops, 'crop_hw': hw, 'flip': flip,
                                 'colour_view': tf.constant([1, 2])}, SEED, 8).numpy()
  np.testing.assert_allclose(coloured, np.repeat(coloured[:, :1], 3, axis=1), atol=1e-6)
  per_frame = batch.finish_batch(
      {'clips': plain, 'colour_view': tf.ones([2, 3], tf.int32)}, SEED).numpy()
  assert np.abs(per_frame - per_frame[:, :1]).max() > 0.02  # Frames now differ.
  as_uint8 = tf.cast(tf.round(plain * 255.0), tf.uint8)
  np.testing.assert_allclose(batch.finish_batch({'clips': as_uint8}, SEED), plain,
                             atol=0.5 / 255 + 1e-6)
  with pytest.raises(ValueError, match='crop_size'):
    batch.finish_batch({'crops': crops, 'crop_hw': hw, 'flip': flip}, SEED)
