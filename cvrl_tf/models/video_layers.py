"""tf_keras layers for 5-D video tensors [N, T, H, W, C], computed through faster kernels.

Each class is its tf_keras namesake (same arguments, variables, checkpoints and results
up to float rounding; tests/test_video_layers.py compares them), with a different route
to the same numbers where the CPU kernel for 5-D tensors is slow (benchmarks/README.md):
  BatchNormalization  the fused kernel sees [N, T, H, W, C] as [N, T * H, W, C]: the
                      statistics are the same (per channel, over all other axes), but
                      oneDNN implements only the 4-D fused batch norm and TensorFlow's
                      5-D kernel takes about twice as long forward + backward. The
                      synchronized (cross-replica) variant is not fused, and unchanged.
  Conv3D              unit-stride layers get their kernel gradient as one matrix
                      product per kernel tap over shifted slices where oneDNN's 3-D
                      weight-gradient kernel is slow on CPU: small maps (res4 / res5
                      of small clips: 3-40x slower than the products) and, in
                      bfloat16, kernels spanning time only ([kt, 1, 1]: 1.7-4.5x on
                      AMX). Forward and input gradient are the usual kernels.
`synchronize_batch_norm` decides when the synchronized variant is worth its cost.
"""

import itertools
from typing import Optional, Sequence

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
# Output positions per frame (H' x W') at or below which 'auto' takes the GEMMs: the
# largest map where they were faster in every case measured (4 x 4; at 8 x 8 oneDNN's
# kernel won in float32 and bfloat16 on AVX-512, benchmarks/README.md).
SMALL_MAP = 16


def tap_kernel_gradient(inputs: tf.Tensor, output_grad: tf.Tensor,
                        kernel_shape: Sequence[int], padding: str) -> tf.Tensor:
  """dL/dkernel of a stride-1 Conv3D as one matrix product per kernel tap.

  With front padding p_d on each axis d (SAME: (k_d - 1) // 2, VALID: 0), output
  position u reads input position u + a - p through tap a = (a_t, a_h, a_w), so

      dkernel[a] = sum over n and u of  x[n, u + a - p, :]^T dy[n, u, :]

  over the positions where both exist: one [Ci, M] x [M, Co] product per tap, on slices
  of the unpadded tensors (no padded copy; a tap that reads only padding is a product
  over no positions, zero). Shapes: inputs [N, T, H, W, Ci], output_grad
  [N, T', H', W', Co], kernel_shape [kt, kh, kw, Ci, Co]; T, H, W may be dynamic.
  """
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  ci, co = kernel_shape[3], kernel_shape[4]
  size_in, size_out = tf.shape(inputs), tf.shape(output_grad)
  taps = []
  for tap in itertools.product(*(range(k) for k in kernel_shape[:3])):
    x_slice, dy_slice = [slice(None)], [slice(None)]
    for axis, (a, k) in enumerate(zip(tap, kernel_shape[:3]), start=1):
      if k == 1:  # No shift along this axis: the whole extent of both.
        x_slice.append(slice(None))
        dy_slice.append(slice(None))
        continue
      shift = a - ((k - 1) // 2 if padding == 'SAME' else 0)
      x0, y0 = max(shift, 0), max(-shift, 0)
      length = tf.maximum(tf.minimum(size_in[axis] - x0, size_out[axis] - y0), 0)
      x_slice.append(slice(x0, x0 + length))
      dy_slice.append(slice(y0, y0 + length))
    x = tf.reshape(inputs[tuple(x_slice)], [-1, ci])
    dy = tf.reshape(output_grad[tuple(dy_slice)], [-1, co])
    taps.append(tf.matmul(x, dy, transpose_a=True))
  return tf.reshape(tf.stack(taps), kernel_shape)


@tf_keras.utils.register_keras_serializable(package='cvrl_tf')
class Conv3D(tf_keras.layers.Conv3D):
  """tf_keras.layers.Conv3D; where oneDNN's weight gradient is slow, it is taken as GEMMs.

  kernel_gradient: 'auto', 'matmul' (GEMMs, `tap_kernel_gradient`, whenever the strides
  allow it) or 'conv' (always the usual kernel). 'auto' takes the GEMMs for unit-stride
  layers on CPU (no GPU or TPU visible) in two cases, each measured faster there
  (benchmarks/README.md, "Kernel gradients as GEMMs"):
    - small maps: at most SMALL_MAP output positions per frame (H' x W', known when the
      graph is built), any kernel and precision. oneDNN's 3-D weight-gradient kernels
      are tuned for large maps: on the demo encoder's res4 / res5 (2 x 2 and 1 x 1
      maps) they took 3-40x the GEMMs' time, and a [1, 3, 3] kernel on R3D-50's 4 x 4
      res5 maps 1.4x (float32) to 3x (bfloat16);
    - [kt, 1, 1] kernels (ResNet's pointwise and temporal convs) at any map size in
      bfloat16, where the 3-D kernel ran 1.7-4.5x slower than the GEMMs on AMX.
  Elsewhere ('auto' on GPU / TPU, larger maps) the usual kernel. Forward and input
  gradient are always the usual kernels.
  """

  def __init__(self, *args, kernel_gradient: str = 'auto', **kwargs):
    super().__init__(*args, **kwargs)
    if kernel_gradient not in KERNEL_GRADIENTS:
      raise ValueError(f'kernel_gradient must be one of {KERNEL_GRADIENTS}, '
                       f'got {kernel_gradient!r}')
    self.kernel_gradient = kernel_gradient

  def uses_matmul_kernel_gradient(self, map_size: Optional[int] = None) -> bool:
    """Whether the kernel gradient is `tap_kernel_gradient`'s GEMMs, for outputs of
    map_size = H' x W' positions per frame (None: unknown, e.g. dynamic shapes)."""
    eligible = (set(self.strides) == {1} and set(self.dilation_rate) == {1} and
                self.groups == 1 and self.data_format == 'channels_last')
    if self.kernel_gradient == 'conv' or not eligible:
      return False
    if self.kernel_gradient == 'matmul':
      return True
    if tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'):
      return False
    if map_size is not None and map_size <= SMALL_MAP:
      return True
    return tuple(self.kernel_size[1:]) == (1, 1) and self.compute_dtype == 'bfloat16'

  def convolution_op(self, inputs, kernel):
    if not self.uses_matmul_kernel_gradient(self._map_size(inputs.shape)):
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
          return dx, tap_kernel_gradient(x, dy, k.shape, padding)
      return tf.nn.conv3d(x, k, strides, padding), grad

    return conv(inputs, tf.convert_to_tensor(kernel))

  def _map_size(self, input_shape) -> Optional[int]:
    """H' x W' of a unit-stride output, or None when H or W is dynamic."""
    height, width = input_shape[2], input_shape[3]
    if height is None or width is None:
      return None
    if self.padding == 'valid':
      height, width = height - self.kernel_size[1] + 1, width - self.kernel_size[2] + 1
    return max(height, 0) * max(width, 0)

  def get_config(self):
    return {**super().get_config(), 'kernel_gradient': self.kernel_gradient}
