"""VideoClassifier: frozen encoder (weights and BN statistics untouched), fine-tuning,
weight decay in the objective, cached-feature batches, label checks."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import classifier
from cvrl_tf.models import weight_decay

CLIPS = (4, 16, 16, 3)


def _encoder(seed=0):
  """Stand-in encoder with BN (moving statistics) and conv kernels, [B, T, H, W, 3]->[B, 8]."""
  tf_keras.utils.set_random_seed(seed)
  layers = tf_keras.layers
  return tf_keras.Sequential([
      tf_keras.Input((None, None, None, 3)),
      layers.Conv3D(8, 3, strides=(1, 2, 2), use_bias=False, name='conv'),
      layers.BatchNormalization(momentum=0.5, name='bn'),
      layers.ReLU(),
      layers.GlobalAveragePooling3D(),
  ], name='encoder')


def _model(freeze, wd=0.0, dropout=0.0, lr=0.5):
  model = classifier.VideoClassifier(_encoder(), 3, freeze_encoder=freeze,
                                     l2_normalize=freeze, dropout_rate=dropout,
                                     weight_decay=wd)
  model.compile(optimizer=tf_keras.optimizers.legacy.SGD(lr, momentum=0.9))
  model.build_for_training()
  return model


def _data(n=24, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  clips = rng.random((n, *CLIPS), dtype=np.float32) * 0.5
  clips[..., 0] += 0.5 * (labels == 0)[:, None, None, None]  # Separable by colour.
  clips[..., 2] += 0.5 * (labels == 2)[:, None, None, None]
  return tf.data.Dataset.from_tensor_slices({'clips': clips, 'label': labels}).batch(8)


def _values(variables):
  return {v.name: v.numpy().copy() for v in variables}


def test_frozen_encoder_weights_and_bn_statistics_stay_bit_identical():
  model = _model(freeze=True)
  encoder = _values(model.encoder.variables)
  assert any('moving_mean' in n for n in encoder)
  assert {v.ref() for v in model.trainable_variables} == {
      v.ref() for v in model.head.trainable_variables}
  head_before = _values(model.head.variables)
  history = model.fit(_data().repeat(), steps_per_epoch=12, epochs=1, verbose=0)
  for name, value in _values(model.encoder.variables).items():
    np.testing.assert_array_equal(value, encoder[name], err_msg=name)
  assert any(not np.array_equal(v, head_before[n])
             for n, v in _values(model.head.variables).items())
  assert history.history['weight_decay'][-1] == 0.0
  # Training-mode calls keep BN in inference mode: the same clips give the same logits.
  clips = next(iter(_data()))['clips']
  np.testing.assert_allclose(model(clips, training=True), model(clips, training=False),
                             rtol=1e-6)


def test_finetuning_changes_encoder_and_statistics_and_adds_weight_decay():
  model = _model(freeze=False, wd=1e-2, dropout=0.5)
  before = _values(model.encoder.variables)
  decayed = weight_decay.weight_decay_variables(model)
  assert len(decayed) == 2  # The conv kernel and the Dense kernel, not BN or biases.
  # The reported weight decay is wd * sum(0.5 ||k||^2) of the weights it was computed on.
  expected_wd = 1e-2 * sum(0.5 * np.sum(v.numpy() ** 2) for v in decayed)
  logs = model.train_step(next(iter(_data())))
  assert float(logs['weight_decay']) == pytest.approx(expected_wd, rel=1e-5)
  assert float(logs['loss']) == pytest.approx(
      float(logs['cross_entropy']) + float(logs['weight_decay']), rel=1e-5)
  model.fit(_data().repeat(), steps_per_epoch=4, epochs=1, verbose=0)
  after = _values(model.encoder.variables)
  for name in ('conv/kernel', 'bn/gamma', 'bn/moving_mean', 'bn/moving_variance'):
    key = next(n for n in before if name in n)
    assert not np.array_equal(before[key], after[key]), name


def test_cached_feature_batches_train_the_head_only():
  model = _model(freeze=True)
  encoder = _values(model.encoder.variables)
  feats = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
  labels = (feats[:, 0] > 0).astype(np.int64)
  ds = tf.data.Dataset.from_tensor_slices({'features': feats, 'label': labels})
  model.fit(ds.repeat().batch(8), steps_per_epoch=30, epochs=1, verbose=0)
  logits = model.head(feats, training=False).numpy()
  assert np.mean(logits.argmax(1) == labels) >= 0.9
  for name, value in _values(model.encoder.variables).items():
    np.testing.assert_array_equal(value, encoder[name])


def test_probabilities_and_label_out_of_range():
  model = _model(freeze=False, dropout=0.5)
  clips = next(iter(_data()))['clips']
  probs = model.probabilities(clips).numpy()
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(probs, model.probabilities(clips).numpy())  # No dropout.
  with pytest.raises(tf.errors.InvalidArgumentError, match='num_classes=3'):
    model.train_step({'clips': clips, 'label': tf.fill([8], 3)})
  with pytest.raises(KeyError, match="'clips'"):
    model.train_step({'frames': clips, 'label': tf.zeros([8], tf.int64)})


class _RawEncoder(tf_keras.layers.Layer):
  """Like a hub.KerasLayer: variables without Keras conv layers around them."""

  def build(self, input_shape):
    self.kernel = self.add_weight(name='conv/kernel', shape=(3, 8))
    self.gamma = self.add_weight(name='bn/gamma', shape=(8,), initializer='ones')

  def call(self, clips, training=None):
    return tf.matmul(tf.reduce_mean(clips, axis=[1, 2, 3]), self.kernel) * self.gamma


def test_weight_decay_finds_kernels_of_non_keras_encoders():
  model = classifier.VideoClassifier(_RawEncoder(), 3, weight_decay=1e-4)
  model.build(tf.TensorShape([None, *CLIPS]))
  decayed = {v.ref() for v in model.decayed_variables()}
  assert decayed == {model.encoder.kernel.ref(), model.head.dense.kernel.ref()}


def test_loss_scaled_classifier_step_equals_the_unscaled_step():
  """Fine-tuning under a (static) LossScaleOptimizer: scaled loss, unscaled gradients."""
  batch = next(iter(_data()))
  updates = []
  for optimizer in (tf_keras.optimizers.legacy.SGD(0.5),
                    tf_keras.mixed_precision.LossScaleOptimizer(
                        tf_keras.optimizers.legacy.SGD(0.5), dynamic=False,
                        initial_scale=512.0)):
    model = classifier.VideoClassifier(_encoder(), 3, weight_decay=1e-3)
    model.compile(optimizer=optimizer)
    model.build_for_training()
    before = _values(model.trainable_variables)
    logs = model.train_step(batch)
    updates.append({k: before[k] - v for k, v in _values(model.trainable_variables).items()})
  assert float(logs['loss_scale']) == 512.0
  for name, want in updates[0].items():
    np.testing.assert_allclose(updates[1][name], want, rtol=1e-6, atol=1e-9, err_msg=name)


def test_mixed_float16_classifier_step_tracks_float32():
  from cvrl_tf.runtime import precision  # pylint: disable=g-import-not-at-top
  batch = next(iter(_data()))
  results = []
  for policy in ('float32', 'mixed_float16'):
    with precision.dtype_policy(policy):
      model = classifier.VideoClassifier(_encoder(), 3, weight_decay=1e-3)
      model.compile(optimizer=tf_keras.mixed_precision.LossScaleOptimizer(
          tf_keras.optimizers.legacy.SGD(0.5), dynamic=False, initial_scale=64.0))
      model.build_for_training()
    before = _values(model.trainable_variables)
    logs = {k: float(v) for k, v in model.train_step(batch).items()}
    results.append((logs, {k: before[k] - v
                           for k, v in _values(model.trainable_variables).items()}))
  (want_logs, want), (logs, got) = results
  assert logs['cross_entropy'] == pytest.approx(want_logs['cross_entropy'], rel=0.01)
  for name, w in want.items():
    np.testing.assert_allclose(got[name], w, atol=0.02 * np.abs(w).max(), err_msg=name)
