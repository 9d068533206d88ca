"""Weight decay: conv/dense kernels only, value against NumPy, frozen parts skipped."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import heads
from cvrl_tf.models import r3d
from cvrl_tf.models import weight_decay


@pytest.fixture(scope='module')
def model():
  """Encoder + projection head + classifier, nested the way the pretrainer nests them."""
  tf_keras.utils.set_random_seed(0)
  encoder = r3d.build_backbone('r3d18', width_multiplier=0.25)
  inputs = tf_keras.Input((None, None, None, 3))
  features = encoder(inputs)
  outputs = [heads.ProjectionHead(hidden_dim=16, output_dim=8)(features),
             heads.LinearClassifier(num_classes=3)(features)]
  return tf_keras.Model(inputs, outputs), encoder


def test_collects_kernels_only(model):
  full, encoder = model
  variables = weight_decay.weight_decay_variables(full)
  convs = [l for l in encoder.layers if isinstance(l, tf_keras.layers.Conv3D)]
  # 3 hidden + 1 output Dense in the head, 1 Dense in the classifier.
  assert len(variables) == len(convs) + 5
  assert len({v.ref() for v in variables}) == len(variables)
  for v in variables:
    assert v.name.endswith('kernel:0'), v.name
  names = ' '.join(v.name for v in variables)
  assert 'gamma' not in names and 'beta' not in names and 'bias' not in names
  # Everything else in the model is BN or bias.
  wd_refs = {v.ref() for v in variables}
  for v in full.weights:
    if v.ref() not in wd_refs:
      assert any(k in v.name for k in ('gamma', 'beta', 'moving_', 'bias')), v.name


def test_value_matches_numpy(model):
  full, _ = model
  variables = weight_decay.weight_decay_variables(full)
  want = 1e-4 * 0.5 * sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                          for v in variables)
  got = weight_decay.l2_weight_decay(full, 1e-4)
  assert got.dtype == tf.float32
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
  np.testing.assert_allclose(weight_decay.l2_weight_decay(variables, 1e-4), want, rtol=1e-5)
  assert float(weight_decay.l2_weight_decay([], 1e-4)) == 0.0


def test_gradient_is_wd_times_kernel():
  layer = tf_keras.layers.Dense(3)
  layer(tf.zeros((1, 4)))
  with tf.GradientTape() as tape:
    loss = weight_decay.l2_weight_decay(layer, 0.1)
  grad = tape.gradient(loss, layer.kernel)
  np.testing.assert_allclose(grad, 0.1 * layer.kernel.numpy(), rtol=1e-6)


def test_frozen_encoder_is_skipped(model):
  full, encoder = model
  encoder.trainable = False
  try:
    assert len(weight_decay.weight_decay_variables(full)) == 5
    everything = weight_decay.weight_decay_variables(full, trainable_only=False)
    assert len(everything) > 5
  finally:
    encoder.trainable = True
