"""CVRLPretrainer: encoder + projection head trained with InfoNCE over the global batch.

A `tf_keras.Model` (models/train_step.py's TrainStepModel) whose `train_step` runs under
`model.fit` with any tf.distribute strategy (default, mirrored, multi-worker, TPU),
mixed precision (the loss is always computed in float32) and XLA on one replica per
process (train_step.py says where and why not).

Batch: 2b clips per replica, view 1 of b videos then view 2 of the same videos: either a
tensor [2b, T, H, W, 3] (float in [0, 1] or uint8) or a dict from input/pipeline.py (keys
of input/batch.py), which the step finishes with `batch.finish_batch` (resize / flip /
colour the pipeline deferred to the accelerator; seeded by step and replica). Both views
go through the encoder in one call (one BN batch over both views, as in the released
code).

Objective per replica: contrastive loss (losses.py, mean over local anchors, negatives
from all replicas) + wd * sum(0.5 * ||k||^2) over conv/dense kernels only (BN and biases
are not decayed; models/weight_decay.py picks the layers' kernels rather than matching
variable names) + any `model.losses`.

Gradient scaling: the optimizer all-reduces (SUMs) gradients over the R replicas, and
the all-gather's gradient already carries every replica's loss back to each replica's
embeddings. So each replica differentiates objective / R (TrainStepModel._minimize):
the summed gradient is then exactly the gradient of the mean loss over the global batch
on one device, whatever R (tests/test_distribute.py checks it). Metrics report the
unscaled values.
"""

from typing import Optional

import tensorflow as tf
import tf_keras

from cvrl_tf import losses
from cvrl_tf.input import augment
from cvrl_tf.input import batch
from cvrl_tf.models import train_step as train_step_lib
from cvrl_tf.runtime import optim


class CVRLPretrainer(train_step_lib.TrainStepModel):
  """Encoder + projection head with the CVRL training step."""

  METRICS = ('loss', 'contrastive_loss', 'contrastive_acc', 'entropy', 'weight_decay',
             'learning_rate')

  def __init__(self,
               encoder: tf_keras.layers.Layer,
               projection_head: tf_keras.layers.Layer,
               temperature: float = 0.1,
               weight_decay: float = 1e-6,
               crop_size: Optional[int] = None,
               augment_seed: int = 0,
               **kwargs):
    """Args:
      encoder: clips [B, T, H, W, 3] -> features [B, D] (e.g. r3d.build_backbone()).
      projection_head: features -> embeddings [B, d] (e.g. heads.ProjectionHead()).
      temperature: InfoNCE temperature.
      weight_decay: L2 coefficient on kernels (gradient wd * k).
      crop_size: output size S of deferred crops; needed only when the pipeline defers
        the resize (batches with a batch.CROPS key, `defer='resize'`).
      augment_seed: with the step and the replica id, seeds the deferred augmentation.
    """
    super().__init__(weight_decay=weight_decay, crop_size=crop_size,
                     augment_seed=augment_seed, **kwargs)
    self.encoder = encoder
    self.projection_head = projection_head
    self.temperature = float(temperature)

  def call(self, clips, training=None):
    features = self.encoder(clips, training=training)
    return self.projection_head(features, training=training)

  def _prepare(self, data) -> tf.Tensor:
    """Float32 clips [2b, T, S, S, 3] from whatever the dataset yields."""
    if isinstance(data, (tuple, list)):
      data = data[0]
    if not isinstance(data, dict):
      return augment.to_float(data)
    # Deferred pretraining batches keep the views apart: {VIEW1: {...}, VIEW2: {...}}.
    views = [data[batch.VIEW1], data[batch.VIEW2]] if batch.VIEW1 in data else [data]
    if not all(batch.CLIPS in v or batch.CROPS in v for v in views):
      raise KeyError(f'pretraining batches need {batch.CLIPS!r} (or deferred '
                     f'{batch.CROPS!r} / {batch.VIEW1!r}); got keys {sorted(data)}')
    if any(batch.CROPS in v for v in views) and self.crop_size is None:
      raise ValueError(f'batches carry deferred crops ({batch.CROPS!r}): build '
                       "CVRLPretrainer with crop_size=<the pipeline's crop_size>")
    return self._finish_batch(data)

  def _objective(self, clips, training):
    """(total, metric values of the parts) of the contrastive objective."""
    embeddings = self(clips, training=training)
    out = losses.contrastive_loss(embeddings, self.temperature)
    total, wd = self._regularized(out['loss'])
    return total, {'contrastive_loss': out['loss'], 'contrastive_acc': out['accuracy'],
                   'entropy': out['entropy'], 'weight_decay': wd}

  def train_step(self, data):
    clips = self._prepare(data)
    learning_rate = optim.current_learning_rate(self.optimizer)
    total, parts = self._minimize(lambda: self._objective(clips, training=True))
    logs = self._update_metrics(dict(loss=total, **parts, learning_rate=learning_rate))
    return {**logs, **optim.loss_scale_logs(self.optimizer)}

  def test_step(self, data):
    """Contrastive metrics on held-out batches (BN in inference mode)."""
    total, parts = self._objective(self._prepare(data), training=False)
    return self._update_metrics(dict(loss=total, **parts))

  def get_config(self):
    return {'temperature': self.temperature, 'weight_decay': self.weight_decay,
            'crop_size': self.crop_size, 'augment_seed': self.augment_seed}
