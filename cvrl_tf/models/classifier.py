"""VideoClassifier: encoder + LinearClassifier, for linear eval, fine-tuning and testing.

One model for every downstream protocol, so a trained classifier's checkpoint always has
the same layout (`model/encoder`, `model/head`) and `evaluate` can restore any of them:
  linear eval   freeze_encoder=True: the encoder is not trainable AND is always called
                with training=False, so BN uses (and never updates) its moving statistics
                and dropout-free features are identical in training and test. Features
                are L2-normalized (l2_normalize=True), weight_decay=0.
  fine-tuning   freeze_encoder=False: everything trains, BN in training mode; dropout
                before the Dense layer; weight decay on conv/dense kernels.

Objective per replica: mean softmax cross-entropy over the local batch
  + weight_decay * sum(0.5 * ||k||^2) over *trainable* conv/dense kernels
    (models/weight_decay.py; added in `train_step`, not as keras regularizers, so a
    frozen encoder carries no hidden loss and the decay is the same as pretraining's)
  + model.losses (regularizers a user put on layers, if any),
divided by the number of replicas because the optimizer sums replica gradients: the
update equals that of the global-batch mean on one device (models/train_step.py, whose
TrainStepModel also holds the metrics, seeding and XLA guard shared with pretraining).

Batches (keys of input/batch.py): the classification pipeline's dicts (CLIPS or deferred
CROPS, ..., LABEL; `batch.finish_batch` completes whatever was deferred), or
{FEATURES, LABEL} from a feature cache (linear eval only: the head trains on
precomputed encoder outputs).
"""

import re
from typing import List, Optional

import tensorflow as tf
import tf_keras

from cvrl_tf.input import batch
from cvrl_tf.models import heads
from cvrl_tf.models import train_step as train_step_lib
from cvrl_tf.runtime import optim


class VideoClassifier(train_step_lib.TrainStepModel):
  """clips [B, T, H, W, 3] -> float32 logits [B, num_classes]."""

  METRICS = ('loss', 'cross_entropy', 'weight_decay', 'accuracy', 'learning_rate')

  def __init__(self,
               encoder: tf_keras.layers.Layer,
               num_classes: int,
               freeze_encoder: bool = False,
               l2_normalize: bool = False,
               dropout_rate: float = 0.0,
               weight_decay: float = 0.0,
               crop_size: Optional[int] = None,
               augment_seed: int = 0,
               **kwargs):
    """Args:
      encoder: clips -> [B, D] features (R3D backbone or hub.KerasLayer).
      num_classes: outputs of the Dense layer.
      freeze_encoder: linear evaluation (see the module docstring).
      l2_normalize, dropout_rate: of the LinearClassifier head.
      weight_decay: coefficient wd of wd * sum(0.5 ||k||^2) on trainable kernels.
      crop_size: size of deferred crops (pipelines with defer='resize').
      augment_seed: with step and replica, seeds augmentation deferred to the step.
    """
    super().__init__(weight_decay=weight_decay, crop_size=crop_size,
                     augment_seed=augment_seed, **kwargs)
    self.encoder = encoder
    self.head = heads.LinearClassifier(num_classes, l2_normalize=l2_normalize,
                                       dropout_rate=dropout_rate, name='classifier')
    self.num_classes = int(num_classes)
    self.freeze_encoder = bool(freeze_encoder)
    if self.freeze_encoder:
      encoder.trainable = False

  def features(self, clips, training=None):
    """Encoder output [B, D]; always inference mode (and no gradient) when frozen."""
    if self.freeze_encoder:
      return tf.stop_gradient(self.encoder(clips, training=False))
    return self.encoder(clips, training=training)

  def call(self, clips, training=None):
    return self.head(self.features(clips, training=training), training=training)

  def probabilities(self, clips):
    """Softmax over classes in inference mode: what the multi-view test averages."""
    return tf.nn.softmax(self(clips, training=False), axis=-1)

  def _collect_decayed(self) -> List[tf.Variable]:
    """Trainable conv/dense kernels.

    A hub.KerasLayer encoder has no Keras conv layers to walk: its trainable variables
    named '.../kernel' (what the R3D export keeps) are decayed instead.
    """
    variables = super()._collect_decayed()
    known = {v.ref() for v in variables}
    if not any(v.ref() in known for v in self.encoder.trainable_variables):
      variables += [v for v in self.encoder.trainable_variables
                    if re.search(r'(^|/)(depthwise_|pointwise_)?kernel(:\d+)?$', v.name)]
    return variables

  def _logits(self, data, training):
    if batch.FEATURES in data:
      return self.head(data[batch.FEATURES], training=training)
    if batch.CLIPS not in data and batch.CROPS not in data:
      raise KeyError(f'classification batches need {batch.CLIPS!r}, deferred '
                     f'{batch.CROPS!r} or cached {batch.FEATURES!r}; got keys '
                     f'{sorted(data)}')
    return self(self._finish_batch(data), training=training)

  def _objective(self, data, training):
    """(total, metric values of the parts) of the classification objective."""
    labels = tf.cast(data[batch.LABEL], tf.int32)
    check = tf.debugging.assert_less(
        labels, self.num_classes,
        message=f'a label is >= num_classes={self.num_classes}: set num_classes to the '
                f'number of classes of the training data')
    with tf.control_dependencies([check]):
      logits = self._logits(data, training)
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    total, wd = self._regularized(cross_entropy)
    accuracy = tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32))
    return total, {'cross_entropy': cross_entropy, 'weight_decay': wd,
                   'accuracy': accuracy}

  def train_step(self, data):
    learning_rate = optim.current_learning_rate(self.optimizer)
    total, parts = self._minimize(lambda: self._objective(data, training=True))
    logs = self._update_metrics(dict(loss=total, learning_rate=learning_rate, **parts))
    return {**logs, **optim.loss_scale_logs(self.optimizer)}

  def test_step(self, data):
    total, parts = self._objective(data, training=False)
    return self._update_metrics(dict(loss=total, **parts))

  def get_config(self):
    return {'num_classes': self.num_classes, 'freeze_encoder': self.freeze_encoder,
            'weight_decay': self.weight_decay, 'crop_size': self.crop_size,
            'augment_seed': self.augment_seed}
