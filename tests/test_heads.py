"""Projection head and linear classifier: structure, shapes, NumPy references, bf16."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import heads


def test_projection_head_cvrl_structure():
  head = heads.ProjectionHead()
  out = head(tf.random.normal((4, 2048)), training=True)
  assert out.shape == (4, 128) and out.dtype == tf.float32
  kinds = [type(l).__name__ for l in head.hidden_layers] + [
      type(head.output_layer).__name__]
  assert kinds == ['Dense', 'BatchNormalization', 'ReLU'] * 3 + ['Dense']
  denses = [l for l in head.hidden_layers if isinstance(l, tf_keras.layers.Dense)]
  assert all(not d.use_bias and d.units == 2048 for d in denses)
  assert head.output_layer.use_bias and head.output_layer.units == 128
  bns = [l for l in head.hidden_layers if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert all(b.momentum == 0.997 and b.epsilon == 1e-5 for b in bns)
  # 3 hidden kernels, 3 x 4 BN vectors, output kernel + bias.
  assert len(head.weights) == 3 + 12 + 2
  assert head.count_params() == (2048 * 2048 * 3 + 4 * 2048 * 3 + 2048 * 128 + 128)


def test_projection_head_matches_numpy_in_inference():
  head = heads.ProjectionHead(num_hidden_layers=2, hidden_dim=16, output_dim=8)
  x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
  head(x)  # build
  for bn in head.hidden_layers[1::3]:
    bn.set_weights([np.full(16, 1.5, np.float32), np.full(16, 0.1, np.float32),
                    np.full(16, 0.2, np.float32), np.full(16, 4.0, np.float32)])
  y = x
  for dense in head.hidden_layers[0::3]:
    y = y @ dense.kernel.numpy()
    y = 1.5 * (y - 0.2) / np.sqrt(4.0 + 1e-5) + 0.1
    y = np.maximum(y, 0)
  y = y @ head.output_layer.kernel.numpy() + head.output_layer.bias.numpy()
  np.testing.assert_allclose(head(x, training=False), y, rtol=1e-5, atol=1e-5)


def test_projection_head_uses_batch_stats_when_training():
  head = heads.ProjectionHead(num_hidden_layers=1, hidden_dim=8, output_dim=4)
  x = tf.random.normal((16, 6), seed=1) * 10 + 5
  head(x, training=True)
  bn = head.hidden_layers[1]
  assert not np.allclose(bn.moving_mean.numpy(), 0)  # statistics updated


def test_projection_head_output_bn_centres_the_batch():
  """SimCLR v2's variant: no output bias, a BN without offset -> zero-mean, unit-variance
  embedding dimensions over the batch in training (what keeps them from collapsing)."""
  head = heads.ProjectionHead(num_hidden_layers=1, hidden_dim=16, output_dim=8,
                              output_bn=True)
  x = tf.random.normal((64, 12), seed=2) * 3 + 7
  out = head(x, training=True).numpy()
  assert not head.output_layer.use_bias and not head.output_bn.center
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(out.var(0), 1, rtol=1e-2)  # eps 1e-5 against var ~ O(1)
  # 1 hidden kernel + 4 BN vectors, output kernel + gamma + 2 moving statistics.
  assert len(head.weights) == 1 + 4 + 1 + 3
  assert heads.ProjectionHead.from_config(head.get_config()).output_bn is not None


def test_projection_head_bf16(bf16_policy):
  head = heads.ProjectionHead(hidden_dim=32, output_dim=16)
  assert head.hidden_layers[0].compute_dtype == 'bfloat16'
  out = head(tf.random.normal((4, 64)), training=True)
  assert out.dtype == tf.float32 and out.shape == (4, 16)
  assert head.output_layer.kernel.dtype == tf.float32


def _l2_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def test_linear_classifier_l2_normalization_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 20)).astype(np.float32) * 7
  x[0] = 0  # all-zero features stay finite
  clf = heads.LinearClassifier(num_classes=5, l2_normalize=True,
                               kernel_initializer='glorot_uniform')
  clf(x)
  bias = rng.normal(size=5).astype(np.float32)
  clf.dense.bias.assign(bias)
  want = _l2_normalize(x) @ clf.dense.kernel.numpy() + bias
  got = clf(x, training=False)
  assert got.shape == (6, 5) and got.dtype == tf.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Normalization makes logits (minus bias) invariant to feature scale.
  np.testing.assert_allclose(clf(3 * x), got, rtol=1e-5, atol=1e-5)


def test_linear_classifier_without_normalization_and_dropout():
  x = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
  plain = heads.LinearClassifier(num_classes=3, kernel_initializer='ones')
  np.testing.assert_allclose(plain(x), np.repeat(x.sum(1, keepdims=True), 3, 1),
                             rtol=1e-5, atol=1e-5)
  assert [type(l).__name__ for l in plain.submodules] == ['Dense']
  dropped = heads.LinearClassifier(num_classes=3, dropout_rate=0.5,
                                   kernel_initializer='ones')
  np.testing.assert_allclose(dropped(x, training=False), plain(x), rtol=1e-6)
  assert not np.allclose(dropped(x, training=True), plain(x))


def test_linear_classifier_float32_under_bf16(bf16_policy):
  clf = heads.LinearClassifier(num_classes=4, l2_normalize=True)
  x = tf.cast(tf.random.normal((2, 8)), tf.bfloat16)
  out = clf(x)
  assert out.dtype == tf.float32 and clf.dense.compute_dtype == 'float32'


def test_heads_in_a_functional_model_and_config():
  inputs = tf_keras.Input((32,))
  head = heads.ProjectionHead(hidden_dim=16, output_dim=8, name='head')
  clf = heads.LinearClassifier(num_classes=10, name='clf')
  model = tf_keras.Model(inputs, {'proj': head(inputs), 'logits': clf(inputs)})
  assert model.output_shape == {'proj': (None, 8), 'logits': (None, 10)}
  clone = heads.ProjectionHead.from_config(head.get_config())
  assert clone.get_config() == head.get_config()
  assert heads.LinearClassifier.from_config(clf.get_config()).get_config() == (
      clf.get_config())


def test_build_creates_all_variables():
  head = heads.ProjectionHead(hidden_dim=16, output_dim=8)
  head.build((None, 32))
  assert len(head.weights) == 3 + 12 + 2
  assert head.hidden_layers[0].kernel.shape == (32, 16)
  clf = heads.LinearClassifier(num_classes=3)
  clf.build((None, 32))
  assert [tuple(w.shape) for w in clf.weights] == [(32, 3), (3,)]


def test_head_from_its_spec_and_back():
  spec = heads.HeadSpec(num_hidden_layers=1, hidden_dim=8, output_dim=64)
  head = heads.ProjectionHead.from_spec(spec)
  assert head(tf.zeros((1, 4))).shape == (1, 64)
  stored = head.spec()  # What head.json keeps: the spec's fields, plain JSON.
  assert set(stored) == {f.name for f in dataclasses.fields(heads.HeadSpec)}
  assert heads.ProjectionHead.from_spec(stored).spec() == stored
