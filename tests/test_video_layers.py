"""video_layers: the same numbers, variables and configs as the tf_keras layers."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import video_layers
from cvrl_tf.runtime import precision


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
  with precision.dtype_policy('mixed_bfloat16'):
    ours, ref = _pair()
    x = tf.constant(np.random.default_rng(2).normal(0, 1, (2, 3, 5, 6, 4)), tf.float32)
    y_ours, y_ref = ours(x, training=True), ref(x, training=True)
    assert y_ours.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_ours, tf.float32).numpy(),
                               tf.cast(y_ref, tf.float32).numpy(), rtol=2e-2, atol=2e-2)
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


def _numpy_kernel_gradient(x, dy, kt, padding):
  """dL/dkernel of a stride-1 [kt, 1, 1] conv by explicit loops over taps and frames."""
  front = (kt - 1) // 2 if padding == 'same' else 0
  grad = np.zeros((kt, 1, 1, x.shape[-1], dy.shape[-1]), np.float64)
  for a in range(kt):
    for t in range(dy.shape[1]):
      source = t + a - front
      if 0 <= source < x.shape[1]:
        grad[a, 0, 0] += np.einsum('nhwc,nhwd->cd', x[:, source], dy[:, t])
  return grad


def _conv_pair(kernel_size, padding, strides=1, **kwargs):
  """(our Conv3D, tf_keras Conv3D) with the same random kernel."""
  ours = video_layers.Conv3D(6, kernel_size, strides, padding=padding, use_bias=False,
                             **kwargs)
  ref = tf_keras.layers.Conv3D(6, kernel_size, strides, padding=padding, use_bias=False)
  for layer in (ours, ref):
    layer.build((None, None, None, None, 4))
  ref.set_weights(ours.get_weights())
  return ours, ref


def _conv_grads(layer, x, call=None):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = (call or layer)(x)
    weights = tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights / tf.cast(tf.size(y), tf.float32))
  grads = tape.gradient(loss, [x, layer.kernel])
  return [y.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize('kt', [1, 2, 3, 5])
@pytest.mark.parametrize('padding', ['same', 'valid'])
def test_conv3d_matmul_kernel_gradient_matches_tf_keras_and_numpy(kt, padding):
  ours, ref = _conv_pair((kt, 1, 1), padding, kernel_gradient='matmul')
  assert ours.uses_matmul_kernel_gradient()
  x = tf.constant(np.random.default_rng(kt).normal(0, 1, (2, 6, 3, 5, 4)), tf.float32)
  for a, b in zip(_conv_grads(ours, x), _conv_grads(ref, x)):  # output, dx, dkernel
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Independent reference for the kernel gradient itself, from an arbitrary dy.
  dy = np.random.default_rng(10 + kt).normal(0, 1, ours(x).shape)
  got = video_layers.temporal_kernel_gradient(x, tf.constant(dy, tf.float32),
                                              ours.kernel.shape, padding.upper())
  np.testing.assert_allclose(got.numpy(), _numpy_kernel_gradient(x.numpy(), dy, kt, padding),
                             rtol=1e-4, atol=1e-4)


def test_conv3d_matmul_kernel_gradient_with_dynamic_shapes_and_short_clips():
  ours, ref = _conv_pair((3, 1, 1), 'same', kernel_gradient='matmul')
  spec = [tf.TensorSpec((None, None, None, None, 4))]
  fn = tf.function(ours.__call__, input_signature=spec)
  for frames in (1, 2, 7):  # fewer frames than taps: the outer taps see no frame pair
    x = tf.constant(np.random.default_rng(frames).normal(0, 1, (2, frames, 3, 2, 4)),
                    tf.float32)
    for a, b in zip(_conv_grads(ours, x, fn), _conv_grads(ref, x)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
def counted_route(monkeypatch):
  """Counts calls of temporal_kernel_gradient (made when a gradient is built)."""
  calls = []
  original = video_layers.temporal_kernel_gradient

  def counting(*args, **kwargs):
    calls.append(args[2])
    return original(*args, **kwargs)

  monkeypatch.setattr(video_layers, 'temporal_kernel_gradient', counting)
  return calls


def test_conv3d_routes_really_taken(counted_route):
  x = tf.constant(np.random.default_rng(5).normal(0, 1, (1, 3, 2, 2, 4)), tf.float32)
  _conv_grads(_conv_pair((3, 1, 1), 'same', kernel_gradient='conv')[0], x)
  _conv_grads(_conv_pair((3, 1, 1), 'same')[0], x)  # 'auto' in float32: usual kernel
  assert not counted_route
  _conv_grads(_conv_pair((3, 1, 1), 'same', kernel_gradient='matmul')[0], x)
  assert [tuple(s) for s in counted_route] == [(3, 1, 1, 4, 6)]


def test_conv3d_auto_uses_matmul_only_for_bfloat16_time_only_kernels(bf16_policy,
                                                                      counted_route):
  for kernel, strides, expected in [((3, 1, 1), 1, True), ((1, 1, 1), 1, True),
                                    ((1, 3, 3), 1, False), ((1, 1, 1), (1, 2, 2), False),
                                    ((3, 3, 3), 1, False)]:
    ours, _ = _conv_pair(kernel, 'same', strides)
    assert ours.uses_matmul_kernel_gradient() == expected, (kernel, strides)
  assert not _conv_pair((3, 1, 1), 'same', kernel_gradient='conv')[0] \
      .uses_matmul_kernel_gradient()
  # bfloat16: the GEMM route agrees with tf_keras' bf16 kernels to bf16 rounding.
  ours, ref = _conv_pair((3, 1, 1), 'same')
  x = tf.constant(np.random.default_rng(4).normal(0, 1, (2, 4, 3, 5, 4)), tf.float32)
  for a, b in zip(_conv_grads(ours, x), _conv_grads(ref, x)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=3e-2, atol=3e-2 * np.abs(b).max())
  assert len(counted_route) == 1


def test_conv3d_matmul_kernel_gradient_under_xla(counted_route):
  ours, ref = _conv_pair((3, 1, 1), 'valid', kernel_gradient='matmul')
  x = tf.constant(np.random.default_rng(6).normal(0, 1, (2, 5, 3, 2, 4)), tf.float32)

  @tf.function(jit_compile=True)
  def grads(layer, inputs):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = tf.reduce_sum(tf.square(layer(inputs)))
    return tape.gradient(loss, [inputs, layer.kernel])

  for a, b in zip(grads(ours, x), grads(ref, x)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  assert counted_route


def test_temporal_kernel_gradient_rejects_other_padding():
  x = tf.zeros((1, 3, 2, 2, 4))
  with pytest.raises(ValueError, match="'SAME' or 'VALID'"):
    video_layers.temporal_kernel_gradient(x, tf.zeros((1, 3, 2, 2, 6)), (3, 1, 1, 4, 6),
                                          'same')


def test_conv3d_config_round_trip_and_bad_value():
  inputs = tf_keras.Input((None, None, None, 4))
  outputs = video_layers.Conv3D(8, (3, 1, 1), padding='same', kernel_gradient='matmul',
                                name='conv')(inputs)
  model = tf_keras.Model(inputs, outputs)
  layer = tf_keras.Model.from_config(model.get_config()).get_layer('conv')
  assert isinstance(layer, video_layers.Conv3D) and layer.kernel_gradient == 'matmul'
  with pytest.raises(ValueError, match='kernel_gradient'):
    video_layers.Conv3D(8, 1, kernel_gradient='gemm')
