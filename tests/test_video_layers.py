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


EPS32 = np.finfo(np.float32).eps
# 'auto' takes the GEMMs only where no GPU / TPU is visible (video_layers.Conv3D).
cpu_only = pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')),
                              reason="'auto' keeps the usual kernel on a GPU")


def _numpy_kernel_gradient(x, dy, kernel, padding, strides=(1, 1, 1)):
  """dL/dkernel of a conv by explicit loops over taps and output positions, in float64;
  also sum |x| |dy| per kernel entry (the scale of its rounding error). SAME's front
  padding as TensorFlow's: half the total (the smaller half), the total making
  ceil(n / s) outputs."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  front = [max((o - 1) * s + k - n, 0) // 2 if padding == 'same' else 0
           for o, s, k, n in zip(dy.shape[1:4], strides, kernel, x.shape[1:4])]
  grad = np.zeros(tuple(kernel) + (x.shape[-1], dy.shape[-1]))
  scale = np.zeros_like(grad)
  for tap in np.ndindex(*kernel):
    for out in np.ndindex(*dy.shape[1:4]):
      source = tuple(s * u + a - p for u, a, p, s in zip(out, tap, front, strides))
      if all(0 <= i < n for i, n in zip(source, x.shape[1:4])):
        xs, ds = x[(slice(None),) + source], dy[(slice(None),) + out]  # [N, Ci], [N, Co]
        grad[tap] += xs.T @ ds
        scale[tap] += np.abs(xs).T @ np.abs(ds)
  return grad, scale


def _conv_pair(kernel_size, padding, strides=1, channels=4, **kwargs):
  """(our Conv3D, tf_keras Conv3D) with the same random kernel."""
  ours = video_layers.Conv3D(6, kernel_size, strides, padding=padding, use_bias=False,
                             **kwargs)
  ref = tf_keras.layers.Conv3D(6, kernel_size, strides, padding=padding, use_bias=False)
  for layer in (ours, ref):
    layer.build((None, None, None, None, channels))
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


# Kernels spanning time only (ResNet's pointwise / temporal convs), space only, both, and
# an uneven one; then maps so small that some taps read only padding; then strides.
KERNELS_AND_INPUTS = [((1, 1, 1), 1, (2, 6, 3, 5, 4)), ((3, 1, 1), 1, (2, 6, 3, 5, 4)),
                      ((5, 1, 1), 1, (2, 6, 3, 5, 4)), ((1, 3, 3), 1, (2, 4, 3, 5, 4)),
                      ((3, 3, 3), 1, (2, 4, 3, 5, 4)), ((2, 3, 1), 1, (2, 4, 3, 5, 4)),
                      ((3, 3, 3), 1, (3, 4, 2, 2, 4)), ((1, 3, 3), 1, (3, 4, 1, 1, 4)),
                      ((3, 3, 3), (1, 2, 2), (2, 4, 5, 4, 4)),
                      ((1, 1, 1), (1, 2, 2), (2, 3, 5, 4, 4)),
                      ((3, 3, 3), (2, 2, 2), (2, 5, 2, 2, 4)),
                      ((2, 3, 4), (2, 1, 3), (2, 5, 4, 7, 4))]


@pytest.mark.parametrize('kernel,strides,shape', KERNELS_AND_INPUTS)
@pytest.mark.parametrize('padding', ['same', 'valid'])
def test_conv3d_matmul_kernel_gradient_matches_tf_keras_and_numpy(kernel, strides, shape,
                                                                 padding):
  if padding == 'valid' and any(k > n for k, n in zip(kernel, shape[1:4])):
    pytest.skip('no output: the kernel is larger than the input')
  ours, ref = _conv_pair(kernel, padding, strides, kernel_gradient='matmul')
  assert ours.uses_matmul_kernel_gradient(shape)
  x = tf.constant(np.random.default_rng(sum(kernel)).normal(0, 1, shape), tf.float32)
  y, dx, dkernel = _conv_grads(ours, x)
  y_ref, dx_ref, dkernel_ref = _conv_grads(ref, x)
  np.testing.assert_array_equal(y, y_ref)  # The same forward and input-gradient kernels.
  np.testing.assert_array_equal(dx, dx_ref)
  # The kernel gradient against float64: each entry is a float32 sum of at most
  # M = N T' H' W' products, within M eps sum |x dy| of the exact sum (the classic bound
  # for recursive summation, plus the products' own rounding); 2 M eps leaves a margin.
  # The loss's dy is ramp / size.
  dy = np.reshape(np.arange(y.size, dtype=np.float64), y.shape) / y.size
  strides3 = (strides,) * 3 if isinstance(strides, int) else strides
  expected, scale = _numpy_kernel_gradient(x.numpy(), dy, kernel, padding, strides3)
  bound = 2 * np.prod(y.shape[:4]) * EPS32 * scale
  np.testing.assert_array_less(np.abs(dkernel - expected), bound + 1e-30)
  np.testing.assert_array_less(np.abs(dkernel_ref - expected), bound + 1e-30)
  # An arbitrary dy, straight through the function.
  dy = np.random.default_rng(10 + sum(kernel)).normal(0, 1, y.shape)
  got = video_layers.tap_kernel_gradient(x, tf.constant(dy, tf.float32), ours.kernel.shape,
                                         padding.upper(), strides3)
  expected, scale = _numpy_kernel_gradient(x.numpy(), dy.astype(np.float32), kernel,
                                           padding, strides3)
  bound = 2 * np.prod(y.shape[:4]) * EPS32 * scale
  np.testing.assert_array_less(np.abs(got.numpy() - expected), bound + 1e-30)


def test_tap_kernel_gradient_bound_catches_a_wrong_tap():
  """The bound above is tight enough to see a kernel gradient off by one tap."""
  x = tf.constant(np.random.default_rng(0).normal(0, 1, (2, 4, 3, 5, 4)), tf.float32)
  dy = np.random.default_rng(1).normal(0, 1, (2, 4, 3, 5, 6))
  got = video_layers.tap_kernel_gradient(x, tf.constant(dy, tf.float32), (3, 3, 3, 4, 6),
                                         'SAME').numpy()
  expected, scale = _numpy_kernel_gradient(x.numpy(), dy.astype(np.float32), (3, 3, 3),
                                           'same')
  bound = 2 * 2 * 4 * 3 * 5 * EPS32 * scale
  assert np.all(np.abs(got - expected) < bound)
  shifted = np.roll(got, 1, axis=1)  # taps of the H axis one off
  assert np.mean(np.abs(shifted - expected) > bound) > 0.9


def test_conv3d_matmul_kernel_gradient_with_dynamic_shapes_and_short_clips():
  for kernel in ((3, 1, 1), (3, 3, 3)):
    ours, ref = _conv_pair(kernel, 'same', kernel_gradient='matmul')
    spec = [tf.TensorSpec((None, None, None, None, 4))]
    fn = tf.function(ours.__call__, input_signature=spec)
    for frames in (1, 2, 7):  # fewer frames than taps: the outer taps see no frame pair
      x = tf.constant(np.random.default_rng(frames).normal(0, 1, (2, frames, 3, 2, 4)),
                      tf.float32)
      for a, b in zip(_conv_grads(ours, x, fn), _conv_grads(ref, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
def counted_route(monkeypatch):
  """Counts calls of tap_kernel_gradient (made when a gradient is built)."""
  calls = []
  original = video_layers.tap_kernel_gradient

  def counting(*args, **kwargs):
    calls.append(args[2])
    return original(*args, **kwargs)

  monkeypatch.setattr(video_layers, 'tap_kernel_gradient', counting)
  return calls


@pytest.fixture
def any_size(monkeypatch):
  """'auto' without its minimum of work (MIN_GEMM_MACS): the small-map rule, toy sizes."""
  monkeypatch.setattr(video_layers, 'MIN_GEMM_MACS', 0)


@cpu_only
def test_conv3d_routes_really_taken(counted_route, any_size):
  x = tf.constant(np.random.default_rng(5).normal(0, 1, (1, 3, 5, 5, 4)), tf.float32)
  _conv_grads(_conv_pair((3, 1, 1), 'same', kernel_gradient='conv')[0], x)
  _conv_grads(_conv_pair((3, 3, 3), 'same')[0], x)  # 'auto': a spatial kernel, 25 positions
  assert not counted_route
  _conv_grads(_conv_pair((3, 3, 3), 'same', kernel_gradient='matmul')[0], x)
  _conv_grads(_conv_pair((3, 1, 1), 'same')[0], x)  # 'auto': time only
  _conv_grads(_conv_pair((3, 3, 3), 'same')[0], x[:, :, :4, :4])  # 'auto': 16 positions
  assert [tuple(s) for s in counted_route] == [(3, 3, 3, 4, 6), (3, 1, 1, 4, 6),
                                               (3, 3, 3, 4, 6)]


@cpu_only
def test_conv3d_auto_takes_gemms_for_time_only_kernels_and_small_maps(monkeypatch):
  monkeypatch.setattr(video_layers, 'MIN_GEMM_MACS', 0)  # the map rule alone first
  for kernel, strides, shape, expected in [
      ((3, 1, 1), 1, (8, 8, 28, 28, 4), True), ((1, 1, 1), 1, None, True),
      ((1, 1, 1), (1, 2, 2), (8, 8, 28, 28, 4), True),
      ((1, 1, 1), (1, 2, 2), (8, 8, None, 28, 4), False),  # a strided axis of no size
      ((3, 3, 3), 1, (8, 8, 4, 4, 4), True),  # 16 positions per frame
      ((1, 3, 3), 1, (8, 8, 1, 1, 4), True),
      ((3, 3, 3), (1, 2, 2), (8, 8, 8, 8, 4), True),  # 4 x 4 out
      ((3, 3, 3), 1, (8, 8, 5, 5, 4), False), ((3, 3, 3), 1, (8, 8, None, 4, 4), False),
      ((1, 3, 3), 1, None, False),
      ((3, 3, 3), (1, 2, 2), (8, 8, 10, 10, 4), False)]:  # 5 x 5 out
    ours, _ = _conv_pair(kernel, 'same', strides)
    assert ours.uses_matmul_kernel_gradient(shape) == expected, (kernel, strides, shape)
    assert not _conv_pair(kernel, 'same', strides, kernel_gradient='conv')[0] \
        .uses_matmul_kernel_gradient(shape)
  # The map size a layer computes for its input: H' x W' of its output.
  ours, _ = _conv_pair((1, 3, 3), 'valid')
  assert ours._map_size((2, 4, 6, 5, 4)) == 4 * 3  # pylint: disable=protected-access
  assert ours._map_size((2, 4, None, 5, 4)) is None  # pylint: disable=protected-access
  ours, _ = _conv_pair((1, 3, 3), 'same', (1, 2, 2))
  assert ours._map_size((2, 4, 7, 5, 4)) == 4 * 3  # pylint: disable=protected-access
  monkeypatch.undo()
  # Spatial kernels on small maps take the GEMMs from MIN_GEMM_MACS multiply-adds
  # (N T' H'W' kt kh kw Ci Co); time-only kernels whatever the size.
  for kernel, shape, expected in [
      ((3, 3, 3), (8, 8, 4, 4, 4), False),  # 8 8 16 27 4 6 = 0.66M
      ((1, 3, 3), (512, 8, 2, 2, 64), True),  # 512 8 4 9 64 6 = 57M
      ((1, 3, 3), (None, 8, 2, 2, 64), True),  # a dynamic batch: taken as large
      ((3, 1, 1), (1, 2, 2, 2, 4), True)]:
    ours, _ = _conv_pair(kernel, 'same')
    assert ours.uses_matmul_kernel_gradient(shape) == expected, (kernel, shape)
  assert 8 * 8 * 16 * 27 * 4 * 6 < video_layers.MIN_GEMM_MACS <= 512 * 8 * 4 * 9 * 64 * 6
  # N T' H'W' kt kh kw Ci Co by hand; T' with a time stride (5 frames, stride 2: 3).
  # pylint: disable=protected-access
  valid, strided = _conv_pair((1, 3, 3), 'valid')[0], _conv_pair((3, 3, 3), 'same', 2)[0]
  assert valid._kernel_gradient_macs((2, 4, 6, 5, 4), 4 * 3) == 2 * 4 * 12 * 9 * 4 * 6
  assert strided._kernel_gradient_macs((2, 5, 6, 5, 4), 3 * 3) == 2 * 3 * 9 * 27 * 4 * 6


@cpu_only
def test_conv3d_gemms_in_bfloat16(bf16_policy, counted_route, any_size):
  """bfloat16: the GEMM route agrees with tf_keras' bf16 kernels to bf16 rounding."""
  for kernel, strides in (((3, 1, 1), 1), ((3, 3, 3), 1), ((3, 3, 3), (1, 2, 2))):
    ours, ref = _conv_pair(kernel, 'same', strides)
    x = tf.constant(np.random.default_rng(4).normal(0, 1, (2, 4, 4, 4, 4)), tf.float32)
    for a, b in zip(_conv_grads(ours, x), _conv_grads(ref, x)):
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                 rtol=3e-2, atol=3e-2 * np.abs(b).max())
  assert len(counted_route) == 3


def test_conv3d_strided_gemms_with_a_dynamic_batch_and_frames(counted_route):
  """A strided layer in a tf.function whose batch and frames are dynamic: H and W are
  static, so the phases can be split; the result is tf_keras' within float32 rounding."""
  ours, ref = _conv_pair((3, 3, 3), 'same', (1, 2, 2), kernel_gradient='matmul')
  fn = tf.function(ours.__call__,
                   input_signature=[tf.TensorSpec((None, None, 5, 6, 4), tf.float32)])
  for batch, frames in ((1, 3), (3, 6)):
    x = tf.constant(np.random.default_rng(frames).normal(0, 1, (batch, frames, 5, 6, 4)),
                    tf.float32)
    for a, b in zip(_conv_grads(ours, x, fn), _conv_grads(ref, x)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert counted_route
  # A strided axis of dynamic size: the usual kernel ('matmul' cannot split it).
  assert not ours.uses_matmul_kernel_gradient((None, None, None, 6, 4))
  assert not _conv_pair((3, 3, 3), 'same', (2, 2, 2), kernel_gradient='matmul')[0] \
      .uses_matmul_kernel_gradient((None, None, 5, 6, 4))


def test_conv3d_matmul_kernel_gradient_under_xla(counted_route):
  for kernel, strides in (((3, 1, 1), 1), ((2, 3, 3), 1), ((2, 3, 3), (1, 2, 2))):
    ours, ref = _conv_pair(kernel, 'valid', strides, kernel_gradient='matmul')
    x = tf.constant(np.random.default_rng(6).normal(0, 1, (2, 5, 3, 4, 4)), tf.float32)

    @tf.function(jit_compile=True)
    def grads(layer, inputs):
      with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(tf.square(layer(inputs)))
      return tape.gradient(loss, [inputs, layer.kernel])

    for a, b in zip(grads(ours, x), grads(ref, x)):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  assert len(counted_route) == 3


def test_tap_kernel_gradient_rejects_other_padding():
  x = tf.zeros((1, 3, 2, 2, 4))
  with pytest.raises(ValueError, match="'SAME' or 'VALID'"):
    video_layers.tap_kernel_gradient(x, tf.zeros((1, 3, 2, 2, 6)), (3, 1, 1, 4, 6), 'same')


def test_conv3d_config_round_trip_and_bad_value():
  inputs = tf_keras.Input((None, None, None, 4))
  outputs = video_layers.Conv3D(8, (3, 1, 1), padding='same', kernel_gradient='matmul',
                                name='conv')(inputs)
  model = tf_keras.Model(inputs, outputs)
  layer = tf_keras.Model.from_config(model.get_config()).get_layer('conv')
  assert isinstance(layer, video_layers.Conv3D) and layer.kernel_gradient == 'matmul'
  with pytest.raises(ValueError, match='kernel_gradient'):
    video_layers.Conv3D(8, 1, kernel_gradient='gemm')
