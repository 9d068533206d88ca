"""TrainStepModel: what the pretrainer's and the classifier's train steps share.

The subclasses (models/pretrainer.py, models/classifier.py) write their objective and
their `train_step` / `test_step`; this base holds the rest once:

Metrics: one untracked `tf_keras.metrics.Mean` per name in the subclass's METRICS,
listed by `metrics` (so fit() resets them each epoch and reset_metrics() finds them),
updated by `_update_metrics`. Running means belong neither in get_weights() nor in
checkpoints: a resumed run starts fresh averages.

Regularisation (`_regularized`): the objective + wd * sum(0.5 * ||k||^2) over the
conv/dense kernels of `decayed_variables` (models/weight_decay.py; BN and biases are
not decayed) + any `model.losses`, in float32.

Gradient scaling (`_minimize`): the optimizer all-reduces (SUMs) the gradients of the
R replicas, so each replica differentiates objective / R: for a mean over the local
batch the summed gradient is then exactly the gradient of the mean over the global
batch on one device, whatever R. Under mixed_float16 the optimizer is a
LossScaleOptimizer: `minimize` scales the loss, unscales the gradients and skips the
update when they overflow (precision.py).

Deferred augmentation (`_finish_batch`): input/batch.py's `finish_batch`, seeded by
`batch.step_seed` from `augment_seed`, the optimizer step and the replica.

XLA (`compile(jit_compile=True)`) works on one replica per process (default strategy;
TPU steps are XLA anyway); tf_keras cannot XLA-compile a step with several replicas, so
`compile` refuses it there with a clear error. Whether XLA pays off on CPU depends on
the shapes: measure with benchmarks/bench_train_step.py.

Checkpoints: trackers and the decayed-variable list are untracked, so a subclass's
variables keep their paths under its own attributes (model/encoder/..., model/head/...).
"""

from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from cvrl_tf import losses
from cvrl_tf.input import augment
from cvrl_tf.input import batch
from cvrl_tf.models import weight_decay as weight_decay_lib
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim

Values = Dict[str, tf.Tensor]


class TrainStepModel(tf_keras.Model):
  """tf_keras.Model with the metric, weight-decay, seeding and XLA scaffolding of a
  custom train step. Subclasses set METRICS, the names their steps report."""

  METRICS: Tuple[str, ...] = ()

  def __init__(self,
               weight_decay: float = 0.0,
               crop_size: Optional[int] = None,
               augment_seed: int = 0,
               augmentation: augment.Augmentation = augment.Augmentation(),
               **kwargs):
    """Args:
      weight_decay: coefficient wd of wd * sum(0.5 ||k||^2) on the decayed kernels.
      crop_size: output size S of deferred crops; needed only when the pipeline defers
        the resize (batches with a batch.CROPS key, `defer='resize'`).
      augment_seed: with the step and the replica id, seeds the deferred augmentation.
      augmentation: the colour settings of deferred colour (the pipeline's clips').
    """
    super().__init__(**kwargs)
    self.weight_decay = float(weight_decay)
    self.crop_size = crop_size
    self.augment_seed = int(augment_seed)
    self.augmentation = augmentation
    self._create_trackers()
    self._decayed = None

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _create_trackers(self):
    # Untracked, like compile()'s metrics: not weights, not in checkpoints.
    self._trackers = {name: tf_keras.metrics.Mean(name) for name in self.METRICS}

  @property
  def metrics(self):
    return list(self._trackers.values())

  def _update_metrics(self, values: Values) -> Values:
    """Adds values (keyed by METRICS names) to the running means; returns the means,
    in the order of `values` (the order of the step's logs)."""
    for name, value in values.items():
      self._trackers[name].update_state(value)
    return {name: self._trackers[name].result() for name in values}

  def compile(self, optimizer='sgd', jit_compile=None, **kwargs):  # pylint: disable=arguments-differ
    """tf_keras compile; refuses XLA where tf_keras cannot compile a replicated step."""
    strategy = self.distribute_strategy
    if (jit_compile and strategy.num_replicas_in_sync > 1 and
        not distribute.is_tpu(strategy)):
      # Checked in TF 2.20 on CPU: with several devices per process the compiled step
      # reads other devices' variables (the optimizer's cross-replica update), and
      # collectives (all-gather, all-reduce) have no XLA kernel. TPU steps are XLA anyway.
      raise ValueError(
          f'jit_compile=True is not supported with {type(strategy).__name__} over '
          f'{strategy.num_replicas_in_sync} replicas (tf_keras cannot XLA-compile a step '
          f'with cross-device updates and collectives); use jit_compile=False, or XLA '
          f'with the default strategy / on TPU.')
    super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

  def build_for_training(self, clip_shape=(None, None, None, 3)):
    """Creates every variable now (model, then optimizer slots if compiled).

    Call under the strategy scope after `compile`, before restoring a checkpoint, so
    the restore is complete and checked instead of deferred to the first step.
    """
    optim.build_model_and_slots(self, clip_shape)

  def decayed_variables(self) -> List[tf.Variable]:
    """The kernels that get weight decay, collected once (a Python layer walk)."""
    if self._decayed is None:
      self._set_decayed(self._collect_decayed())
    return self._decayed

  def _collect_decayed(self) -> List[tf.Variable]:
    """Conv/dense kernels of the model's layers; subclasses may add others."""
    return weight_decay_lib.weight_decay_variables(self)

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _set_decayed(self, variables):
    # Untracked: a tracked list would become the kernels' first checkpoint path
    # ('model/_decayed/N' instead of 'model/encoder/...').
    self._decayed = variables

  def _regularized(self, loss: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(loss + weight decay + model.losses, the weight-decay term)."""
    wd = weight_decay_lib.l2_weight_decay(self.decayed_variables(), self.weight_decay)
    total = loss + wd
    if self.losses:  # Regularizers a user put on layers, if any.
      total += tf.add_n([tf.cast(l, tf.float32) for l in self.losses])
    return total, wd

  def _minimize(self, objective: Callable[[], Tuple[tf.Tensor, Values]]
               ) -> Tuple[tf.Tensor, Values]:
    """One optimizer step on objective() -> (total, parts), its replica's share of the
    global mean (module docstring); returns (total, parts) unscaled, for the metrics."""
    with tf.GradientTape() as tape:
      total, parts = objective()
      # The optimizer SUMs replica gradients: divide so the sum is the global mean.
      scaled = total / tf.cast(losses.num_replicas_in_sync(), tf.float32)
    # A LossScaleOptimizer (mixed_float16) scales / unscales here (precision.py).
    self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)
    return total, parts

  def _finish_batch(self, data: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Float32 clips from a pipeline batch: whatever it deferred, done here with a seed
    of this step and replica."""
    seed = batch.step_seed(self.augment_seed, self.optimizer.iterations,
                           tf.distribute.get_replica_context())
    return batch.finish_batch(data, seed, self.crop_size, self.augmentation)
