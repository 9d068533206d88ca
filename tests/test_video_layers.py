"""video_layers: the same numbers, variables and configs as the tf_keras layers."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import video_layers


def _pair(**kwargs):
  """(tf_keras BN, our BN) built on 5-D input with the same random variables."""
  ours = video_layers.BatchNormalization(**kwargs)
  ref = tf_keras.layers.BatchNormalization(**kwargs)
  for layer in (ours, ref):
    layer.build((None, 3, 5, 6, 4))
  rng = np.random.default_rng(0)
  weights = [rng.uniform(0.5, 1.5, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4),
             rng.uniform(0.5, 2.0, 4)]  # gamma, beta, moving mean, moving variance
  for layer in (ours, ref):
    layer.set_weights([w.astype(np.float32) for w in weights])
  return ours, ref


def _run(layer, x, training):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=training)
    # A loss that weighs every output differently, so the gradients are informative.
    weights = tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights / tf.cast(tf.size(y), tf.float32))
  grads = tape.gradient(loss, [x] + layer.trainable_variables)
  return y.numpy(), [g.numpy() for g in grads], [w.numpy() for w in layer.weights]


def test_batch_norm_folds_5d_and_matches_tf_keras():
  ours, ref = _pair(momentum=0.9, epsilon=1e-5)
  # pylint: disable-next=protected-access
  assert ours._fold_time and not getattr(ref, '_fold_time', False)
  x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (2, 3, 5, 6, 4)), tf.float32)
  for training in (True, False):
    y_ours, g_ours, w_ours = _run(ours, x, training)
    y_ref, g_ref, w_ref = _run(ref, x, training)
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref):  # input, gamma, beta
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(w_ours, w_ref):  # moving statistics updated the same way
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Independent reference: training-mode output from NumPy statistics over N, T, H, W.
  xn = x.numpy()
  gamma, beta = ours.get_weights()[:2]
  mean, var = xn.mean(axis=(0, 1, 2, 3)), xn.var(axis=(0, 1, 2, 3))
  expected = (xn - mean) / np.sqrt(var + 1e-5) * gamma + beta
  np.testing.assert_allclose(ours(x, training=True).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_bfloat16_policy_and_dynamic_shapes():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    ours, ref = _pair()
    x = tf.constant(np.random.default_rng(2).normal(0, 1, (2, 3, 5, 6, 4)), tf.float32)
    y_ours, y_ref = ours(x, training=True), ref(x, training=True)
    assert y_ours.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_ours, tf.float32).numpy(),
                               tf.cast(y_ref, tf.float32).numpy(), rtol=2e-2, atol=2e-2)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  # T, H, W unknown when traced: the fold works on the runtime shape.
  ours, ref = _pair()
  spec = [tf.TensorSpec((None, None, None, None, 4))]
  x = tf.constant(np.random.default_rng(3).normal(0, 1, (2, 2, 3, 5, 4)), tf.float32)
  for training in (True, False):
    fn = tf.function(lambda a, t=training: ours(a, training=t), input_signature=spec)
    np.testing.assert_allclose(fn(x).numpy(), ref(x, training=training).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,shape', [(dict(synchronized=True), (None, 3, 5, 6, 4)),
                                          (dict(renorm=True), (None, 3, 5, 6, 4)),
                                          (dict(axis=1), (None, 4, 3, 5, 6)),
                                          (dict(fused=False), (None, 3, 5, 6, 4)),
                                          ({}, (None, 5, 6, 4))])
def test_batch_norm_leaves_other_cases_alone(kwargs, shape):
  layer = video_layers.BatchNormalization(**kwargs)
  layer.build(shape)
  assert not layer._fold_time  # pylint: disable=protected-access


def test_batch_norm_config_round_trip_in_a_functional_model():
  inputs = tf_keras.Input((None, None, None, 4))
  outputs = video_layers.BatchNormalization(momentum=0.8, name='bn')(inputs)
  model = tf_keras.Model(inputs, outputs)
  rebuilt = tf_keras.Model.from_config(model.get_config())
  layer = rebuilt.get_layer('bn')
  assert isinstance(layer, video_layers.BatchNormalization) and layer.momentum == 0.8
  assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
