"""CVRL heads on the pooled representation: projection MLP and linear classifier.

Both are tf_keras layers taking [B, D] features and returning float32 [B, out] whatever
the global dtype policy, so losses and softmax always see float32.

ProjectionHead (pretraining only, dropped afterwards):
  num_hidden_layers x [Dense(hidden_dim, no bias) -> BN -> ReLU] -> Dense(output_dim)
  CVRL: 3 x 2048 then 128, BN momentum 0.997, eps 1e-5. The last Dense has a bias and no
  BN. The output is *not* L2-normalized: the contrastive loss normalizes (and owns the
  temperature), so the head stays a plain MLP.
  `output_bn=True` is SimCLR v2's variant: the last Dense has no bias and is followed by a
  BN without offset (center=False). Batch-centring the embeddings removes the component
  every clip shares, which is how small-batch runs collapse (all embeddings one direction,
  loss log(2B - 1), see configs/demo/pretrain.gin); the CVRL recipe leaves it off.

LinearClassifier (linear evaluation and fine-tuning):
  [L2-normalize] -> [Dropout] -> Dense(num_classes) -> logits
  Linear eval (CVRL): l2_normalize=True, dropout_rate=0 on a frozen encoder.
  Fine-tuning: l2_normalize=False, dropout_rate ~0.5. It always computes in float32: it
  is tiny, and with linear-eval learning rates as high as 32 bf16 logits would be coarse.
"""

import dataclasses
import json
from typing import Any, Union

import tensorflow as tf
import tf_keras

from cvrl_tf.models import video_layers


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """The projection head's settings: ProjectionHead's constructor arguments (CVRL's
  defaults: 3 x [Dense 2048 -> BN -> ReLU] -> Dense 128)."""
  num_hidden_layers: int = 3
  hidden_dim: int = 2048
  output_dim: int = 128
  bn_momentum: float = 0.997
  bn_epsilon: float = 1e-5
  use_sync_bn: bool = False
  output_bn: bool = False
  kernel_initializer: Any = 'glorot_uniform'


class ProjectionHead(tf_keras.layers.Layer):
  """MLP projection head: [B, D] -> float32 [B, output_dim]."""

  def __init__(self,
               num_hidden_layers: int = 3,
               hidden_dim: int = 2048,
               output_dim: int = 128,
               bn_momentum: float = 0.997,
               bn_epsilon: float = 1e-5,
               use_sync_bn: bool = False,
               output_bn: bool = False,
               kernel_initializer='glorot_uniform',
               **kwargs):
    super().__init__(**kwargs)
    self._config = dict(
        num_hidden_layers=num_hidden_layers, hidden_dim=hidden_dim, output_dim=output_dim,
        bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_bn=use_sync_bn,
        output_bn=output_bn,
        kernel_initializer=tf_keras.initializers.serialize(
            tf_keras.initializers.get(kernel_initializer)))
    dtype = self.dtype_policy
    sync = video_layers.synchronize_batch_norm(use_sync_bn)
    self.hidden_layers = []
    for i in range(num_hidden_layers):
      # No bias: the BN right after has its own offset (beta).
      self.hidden_layers += [
          tf_keras.layers.Dense(hidden_dim, use_bias=False, kernel_initializer=self._init(),
                                dtype=dtype, name=f'dense_{i}'),
          tf_keras.layers.BatchNormalization(
              momentum=bn_momentum, epsilon=bn_epsilon, synchronized=sync, dtype=dtype,
              name=f'bn_{i}'),
          tf_keras.layers.ReLU(dtype=dtype, name=f'relu_{i}'),
      ]
    self.output_layer = tf_keras.layers.Dense(
        output_dim, use_bias=not output_bn, kernel_initializer=self._init(), dtype=dtype,
        name='output')
    self.output_bn = None
    if output_bn:
      self.output_bn = tf_keras.layers.BatchNormalization(
          momentum=bn_momentum, epsilon=bn_epsilon, center=False,
          synchronized=sync, dtype=dtype, name='output_bn')

  def _init(self):
    # A fresh initializer per layer: a shared seeded one would repeat the same values.
    return tf_keras.initializers.deserialize(self._config['kernel_initializer'])

  def build(self, input_shape):
    # Create every variable now, so `head.build(shape)` is enough to restore a checkpoint.
    shape = tf.TensorShape(input_shape)
    for layer in self.hidden_layers + [self.output_layer, self.output_bn]:
      if layer is None:
        continue
      layer.build(shape)
      shape = layer.compute_output_shape(shape)
    super().build(input_shape)

  def call(self, features, training=None):
    x = features
    for layer in self.hidden_layers:
      if isinstance(layer, tf_keras.layers.BatchNormalization):
        x = layer(x, training=training)
      else:
        x = layer(x)
    x = self.output_layer(x)
    if self.output_bn is not None:
      x = self.output_bn(x, training=training)
    return tf.cast(x, tf.float32)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self._config['output_dim']])

  def get_config(self):
    return {**super().get_config(), **self._config}

  def spec(self) -> dict:
    """The constructor arguments as plain JSON data: what a run saves as
    backbone/head.json (the initializer's config is a tracked dict: made plain here)."""
    return json.loads(json.dumps(self._config, default=dict))

  @classmethod
  def from_spec(cls, spec: Union[HeadSpec, dict], **kwargs) -> 'ProjectionHead':
    """The head a HeadSpec or its stored dict (head.json) describes (e.g.
    `dtype='float32'`, `name=...` in kwargs)."""
    if isinstance(spec, HeadSpec):
      spec = dataclasses.asdict(spec)
    return cls(**{**spec, **kwargs})


class LinearClassifier(tf_keras.layers.Layer):
  """[B, D] features -> float32 [B, num_classes] logits (no softmax)."""

  def __init__(self,
               num_classes: int,
               l2_normalize: bool = False,
               dropout_rate: float = 0.0,
               kernel_initializer='zeros',
               use_bias: bool = True,
               **kwargs):
    kwargs['dtype'] = 'float32'
    super().__init__(**kwargs)
    self._config = dict(
        num_classes=num_classes, l2_normalize=l2_normalize, dropout_rate=dropout_rate,
        kernel_initializer=tf_keras.initializers.serialize(
            tf_keras.initializers.get(kernel_initializer)),
        use_bias=use_bias)
    self.dropout = (tf_keras.layers.Dropout(dropout_rate, dtype='float32', name='dropout')
                    if dropout_rate > 0 else None)
    self.dense = tf_keras.layers.Dense(
        num_classes, use_bias=use_bias, kernel_initializer=kernel_initializer,
        dtype='float32', name='logits')

  def build(self, input_shape):
    self.dense.build(tf.TensorShape(input_shape))
    super().build(input_shape)

  def call(self, features, training=None):
    x = tf.cast(features, tf.float32)
    if self._config['l2_normalize']:
      # Matches NumPy x / max(||x||, 1e-6): sqrt(max(sum x^2, 1e-12)).
      x = tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)
    if self.dropout is not None:
      x = self.dropout(x, training=training)
    return self.dense(x)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self._config['num_classes']])

  def get_config(self):
    config = {**super().get_config(), **self._config}
    config.pop('dtype', None)
    return config
