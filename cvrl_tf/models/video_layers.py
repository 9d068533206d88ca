"""tf_keras layers for 5-D video tensors [N, T, H, W, C], computed through faster kernels.

Each class is its tf_keras namesake (same arguments, variables, checkpoints and results
up to float rounding; tests/test_video_layers.py compares them), with a different route
to the same numbers where the CPU kernel for 5-D tensors is slow (benchmarks/README.md):
  BatchNormalization  the fused kernel sees [N, T, H, W, C] as [N, T * H, W, C]: the
                      statistics are the same (per channel, over all other axes), but
                      oneDNN implements only the 4-D fused batch norm and TensorFlow's
                      5-D kernel takes about twice as long forward + backward. The
                      synchronized (cross-replica) variant is not fused, and unchanged.
`synchronize_batch_norm` decides when the synchronized variant is worth its cost.
"""

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
