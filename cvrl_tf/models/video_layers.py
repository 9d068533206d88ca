"""tf_keras layers for 5-D video tensors [N, T, H, W, C], computed through faster kernels.

Each class is its tf_keras namesake (same arguments, variables, checkpoints and results
up to float rounding; tests/test_video_layers.py compares them), with a different route
to the same numbers where the CPU kernel for 5-D tensors is slow (benchmarks/README.md):
  BatchNormalization  the fused kernel sees [N, T, H, W, C] as [N, T * H, W, C]: the
                      statistics are the same (per channel, over all other axes), but
                      oneDNN implements only the 4-D fused batch norm and TensorFlow's
                      5-D kernel takes about twice as long forward + backward. The
                      synchronized (cross-replica) variant is not fused, and unchanged.
  Conv3D              kernels that span time only ([kt, 1, 1], unit strides: ResNet's
                      pointwise and temporal convs) get their kernel gradient as kt
                      matrix products over time-shifted slices in bfloat16 on CPU, where
                      oneDNN's 3-D weight-gradient kernel runs 1.7-4.5x slower than the
                      same products on AMX (R3D-50's shapes at 112 px). Forward and
                      input gradient are the usual kernels.
`synchronize_batch_norm` decides when the synchronized variant is worth its cost.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras


def synchronize_batch_norm(use_sync_bn: bool) -> bool:
  """Whether a layer asked for synchronized BN gets it: only with several replicas.

  On one replica it computes the same statistics as plain BN, through the unfused path
  (R3D-50 pretraining step, 8 clips of 8x112x112 on CPU: 1.90 s instead of 1.51 s in
  float32, 1.40 s instead of 1.02 s in bfloat16). Decided when the layer is built, so
  build models under the strategy's scope (the training commands do).
  """
  return bool(use_sync_bn) and tf.distribute.get_strategy().num_replicas_in_sync > 1


@tf_keras.utils.register_keras_serializable(package='cvrl_tf')
class BatchNormalization(tf_keras.layers.BatchNormalization):
  """tf_keras.layers.BatchNormalization; 5-D channels-last inputs use the 4-D kernel."""

  def build(self, input_shape):
    super().build(input_shape)
    self._fold_time = bool(self.fused) and self._data_format == 'NDHWC'
    if self._fold_time:
      self._data_format = 'NHWC'

  def _fused_batch_norm(self, inputs, mask, training):
    if not getattr(self, '_fold_time', False):
      return super()._fused_batch_norm(inputs, mask, training)
    shape = tf.shape(inputs)
    folded = tf.reshape(inputs, tf.concat([shape[:1], shape[1:2] * shape[2:3], shape[3:]],
                                          axis=0))
    outputs = tf.reshape(super()._fused_batch_norm(folded, mask, training), shape)
    outputs.set_shape(inputs.shape)
    return outputs


KERNEL_GRADIENTS = ('auto', 'matmul', 'conv')


def temporal_kernel_gradient(inputs: tf.Tensor, output_grad: tf.Tensor,
                             kernel_shape: Sequence[int], padding: str) -> tf.Tensor:
  """dL/dkernel of a stride-1 [kt, 1, 1] Conv3D as kt matrix products.

  With front padding p (SAME: (kt - 1) // 2, VALID: 0), output frame t reads input frame
  t + a - p through kernel tap a, so

      dkernel[a, 0, 0] = sum over n, t, h, w of  x[n, t + a - p, h, w, :]^T dy[n, t, h, w, :]

  over the frames where both exist: one [Ci, M] x [M, Co] product per tap, on slices of
  the unpadded tensors (no padded copy). Shapes: inputs [N, T, H, W, Ci], output_grad
  [N, T', H, W, Co], kernel_shape [kt, 1, 1, Ci, Co]; T, H, W may be dynamic.
  """
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  kt, _, _, ci, co = kernel_shape
  front = (kt - 1) // 2 if padding == 'SAME' else 0
  frames_in, frames_out = tf.shape(inputs)[1], tf.shape(output_grad)[1]
  taps = []
  for a in range(kt):
    shift = a - front
    x0, y0 = max(shift, 0), max(-shift, 0)
    length = tf.maximum(tf.minimum(frames_in - x0, frames_out - y0), 0)
    x = tf.reshape(inputs[:, x0:x0 + length], [-1, ci])
    dy = tf.reshape(output_grad[:, y0:y0 + length], [-1, co])
    taps.append(tf.matmul(x, dy, transpose_a=True))
  return tf.reshape(tf.stack(taps), kernel_shape)


@tf_keras.utils.register_keras_serializable(package='cvrl_tf')
class Conv3D(tf_keras.layers.Conv3D):
  """tf_keras.layers.Conv3D; time-only kernels can take their kernel gradient as GEMMs.

  kernel_gradient: 'auto' (GEMMs for [kt, 1, 1] unit-stride kernels when the layer
  computes in bfloat16 and no GPU is visible; measured faster on oneDNN CPUs, unmeasured
  on TPU, where XLA compiles whichever ops the gradient is made of), 'matmul' (GEMMs
  whenever the kernel allows it) or 'conv' (always the usual kernel).
  """

  def __init__(self, *args, kernel_gradient: str = 'auto', **kwargs):
    super().__init__(*args, **kwargs)
    if kernel_gradient not in KERNEL_GRADIENTS:
      raise ValueError(f'kernel_gradient must be one of {KERNEL_GRADIENTS}, '
                       f'got {kernel_gradient!r}')
    self.kernel_gradient = kernel_gradient

  def uses_matmul_kernel_gradient(self) -> bool:
    """Whether this layer's kernel gradient is computed by `temporal_kernel_gradient`."""
    eligible = (tuple(self.kernel_size[1:]) == (1, 1) and set(self.strides) == {1} and
                set(self.dilation_rate) == {1} and self.groups == 1 and
                self.data_format == 'channels_last')
    if self.kernel_gradient == 'conv' or not eligible:
      return False
    if self.kernel_gradient == 'matmul':
      return True
    return self.compute_dtype == 'bfloat16' and not tf.config.list_logical_devices('GPU')

  def convolution_op(self, inputs, kernel):
    if not self.uses_matmul_kernel_gradient():
      return super().convolution_op(inputs, kernel)
    padding = self.padding.upper()
    strides = [1] * 5

    @tf.custom_gradient
    def conv(x, k):
      def grad(dy):
        dx = tf.raw_ops.Conv3DBackpropInputV2(
            input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=strides,
            padding=padding)
        # Named after the layer, so profiles attribute these GEMMs to it.
        with tf.name_scope(f'{self.name}_kernel_gradient'):
          return dx, temporal_kernel_gradient(x, dy, k.shape, padding)
      return tf.nn.conv3d(x, k, strides, padding), grad

    return conv(inputs, tf.convert_to_tensor(kernel))

  def get_config(self):
    return {**super().get_config(), 'kernel_gradient': self.kernel_gradient}
