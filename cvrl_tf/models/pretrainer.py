"""CVRLPretrainer: encoder + projection head trained with InfoNCE over the global batch.

A `tf_keras.Model` whose `train_step` runs under `model.fit` with any tf.distribute
strategy (default, mirrored, multi-worker, TPU) and mixed precision (the loss is always
computed in float32). XLA (`compile(jit_compile=True)`) works on one replica per
process (default strategy; TPU steps are XLA anyway); tf_keras cannot XLA-compile a
step with several replicas, so `compile` refuses it there with a clear error. Whether
XLA pays off on CPU depends on the shapes: measure with benchmarks/bench_train_step.py.

Batch: 2b clips per replica, view 1 of b videos then view 2 of the same videos: either a
tensor [2b, T, H, W, 3] (float in [0, 1] or uint8) or a dict from data/pipeline.py (keys
of data/batch.py), which the step finishes with `batch.finish_batch` (resize / flip /
colour the pipeline deferred to the accelerator; seeded by step and replica). Both views
go through the encoder in one call (one BN batch over both views, as in the released
code).

Objective per replica: contrastive loss (losses.py, mean over local anchors, negatives
from all replicas) + wd * sum(0.5 * ||k||^2) over conv/dense kernels only (BN and biases
are not decayed; models/weight_decay.py picks the layers' kernels rather than matching
variable names) + any `model.losses`.

Gradient scaling: the optimizer all-reduces (SUMs) gradients over the R replicas, and
the all-gather's gradient already carries every replica's loss back to each replica's
embeddings. So each replica differentiates objective / R: the summed gradient is then
exactly the gradient of the mean loss over the global batch on one device, whatever R
(tests/test_distribute.py checks it). Metrics report the unscaled values.
"""

from typing import Optional

import gin
import tensorflow as tf
import tf_keras

from cvrl_tf import losses
from cvrl_tf import optim
from cvrl_tf.data import augment
from cvrl_tf.data import batch
from cvrl_tf.models import weight_decay as weight_decay_lib

METRICS = ('loss', 'contrastive_loss', 'contrastive_acc', 'entropy', 'weight_decay',
           'learning_rate')


@gin.configurable(denylist=['encoder', 'projection_head'])
class CVRLPretrainer(tf_keras.Model):
  """Encoder + projection head with the CVRL training step."""

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
    super().__init__(**kwargs)
    self.encoder = encoder
    self.projection_head = projection_head
    self.temperature = float(temperature)
    self.weight_decay = float(weight_decay)
    self.crop_size = crop_size
    self.augment_seed = int(augment_seed)
    self._create_trackers()
    self._decayed = None

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _create_trackers(self):
    # Untracked, like compile()'s metrics: running means belong neither in
    # get_weights() nor in checkpoints (a resumed run starts fresh averages).
    self._trackers = {name: tf_keras.metrics.Mean(name) for name in METRICS}

  def compile(self, optimizer='sgd', jit_compile=None, **kwargs):  # pylint: disable=arguments-differ
    """tf_keras compile; refuses XLA where tf_keras cannot compile a replicated step."""
    strategy = self.distribute_strategy
    if (jit_compile and strategy.num_replicas_in_sync > 1 and
        not isinstance(strategy, (tf.distribute.TPUStrategy,
                                  tf.distribute.experimental.TPUStrategy))):
      # Checked in TF 2.20 on CPU: with several devices per process the compiled step
      # reads other devices' variables (the optimizer's cross-replica update), and
      # collectives (all-gather, all-reduce) have no XLA kernel. TPU steps are XLA anyway.
      raise ValueError(
          f'jit_compile=True is not supported with {type(strategy).__name__} over '
          f'{strategy.num_replicas_in_sync} replicas (tf_keras cannot XLA-compile a step '
          f'with cross-device updates and collectives); use jit_compile=False, or XLA '
          f'with the default strategy / on TPU.')
    super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

  @property
  def metrics(self):
    # Listed here so fit() resets them each epoch and reset_metrics() finds them.
    return list(self._trackers.values())

  def call(self, clips, training=None):
    features = self.encoder(clips, training=training)
    return self.projection_head(features, training=training)

  def build_for_training(self, clip_shape=(None, None, None, 3)):
    """Creates every variable now (model, then optimizer slots if compiled).

    Call under the strategy scope after `compile`, before restoring a checkpoint, so
    the restore is complete and checked instead of deferred to the first step.
    """
    optim.build_model_and_slots(self, clip_shape)

  def decayed_variables(self):
    """Conv/dense kernels that get weight decay (collected once: a Python layer walk)."""
    if self._decayed is None:
      self._set_decayed(weight_decay_lib.weight_decay_variables(self))
    return self._decayed

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _set_decayed(self, variables):
    # Untracked: a tracked list would become the kernels' first checkpoint path
    # ('model/_decayed/N' instead of 'model/encoder/...').
    self._decayed = variables

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
    seed = batch.step_seed(self.augment_seed, self.optimizer.iterations,
                           tf.distribute.get_replica_context())
    return batch.finish_batch(data, seed, self.crop_size)

  def _objective(self, clips, training):
    embeddings = self(clips, training=training)
    out = losses.contrastive_loss(embeddings, self.temperature)
    wd = weight_decay_lib.l2_weight_decay(self.decayed_variables(), self.weight_decay)
    total = out['loss'] + wd
    if self.losses:  # Regularizers a user put on layers, if any.
      total += tf.add_n([tf.cast(l, tf.float32) for l in self.losses])
    return total, wd, out

  def _update_metrics(self, total, wd, out, **extra):
    values = {'loss': total, 'contrastive_loss': out['loss'],
              'contrastive_acc': out['accuracy'], 'entropy': out['entropy'],
              'weight_decay': wd, **extra}
    for name, value in values.items():
      self._trackers[name].update_state(value)
    return {name: self._trackers[name].result() for name in values}

  def train_step(self, data):
    clips = self._prepare(data)
    learning_rate = optim.current_learning_rate(self.optimizer)
    num_replicas = losses.num_replicas_in_sync()
    with tf.GradientTape() as tape:
      total, wd, out = self._objective(clips, training=True)
      # The optimizer SUMs replica gradients: divide so the sum is the global mean.
      scaled = total / tf.cast(num_replicas, tf.float32)
    # Under mixed_float16 `optimizer` is a LossScaleOptimizer: minimize scales `scaled`,
    # unscales the gradients and skips the update when they overflow (precision.py).
    self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)
    logs = self._update_metrics(total, wd, out, learning_rate=learning_rate)
    return {**logs, **optim.loss_scale_logs(self.optimizer)}

  def test_step(self, data):
    """Contrastive metrics on held-out batches (BN in inference mode)."""
    total, wd, out = self._objective(self._prepare(data), training=False)
    return self._update_metrics(total, wd, out)

  def get_config(self):
    return {'temperature': self.temperature, 'weight_decay': self.weight_decay,
            'crop_size': self.crop_size, 'augment_seed': self.augment_seed}

