"""Optimizers and learning-rate schedules, built with tf-models-official.

Schedule (`build_schedule`): linear warm-up from 0 to the peak over `warmup_steps`, then
cosine decay from the peak (at the end of warm-up) to `alpha * peak` at `total_steps`:

    lr(s) = peak * s / W                                          s < W
    lr(s) = peak * (alpha + (1 - alpha) * (1 + cos(pi * (s - W) / (N - W))) / 2)   W <= s <= N

(Model Garden's `LinearWarmup` over `CosineDecayWithOffset(offset=W)`; the offset makes
the cosine start at the peak when warm-up ends rather than at step 0.)

Peak: `base_learning_rate`, times global_batch_size / 256 with `linear_scaling=True`
(SimCLR convention). CVRL's released config is SGD, momentum 0.9, peak 0.32 at global
batch 1024, 5 warm-up epochs, i.e. no linear scaling.

Optimizers (`build_optimizer` of an `OptimizerSpec`; gin name `cvrl_optimizer`):
  'sgd'   tf_keras.optimizers.legacy.SGD with momentum (the released CVRL config).
  'lars'  official.modeling.optimization.lars.LARS; BN parameters (gamma, beta) and
          biases are excluded from the layer-wise trust ratio and from its decay.
Both are legacy tf_keras optimizers, which is what `OptimizerFactory` builds by default
(LARS exists only as one); they work with `tf_keras.Model.fit`, mixed precision and every
tf.distribute strategy, and sum gradients across replicas in `apply_gradients`.

Weight decay is *not* done here: the pretrainer adds wd * sum(0.5 ||k||^2) over kernels
to the loss (models/weight_decay.py), so SGD and LARS see the same objective. LARS's own
decoupled decay (`lars_weight_decay`) stays 0 unless asked for.

The loss scale matters for SGD: the pretrainer makes gradients equal those of the mean
loss over the global batch on one device. Model Garden's video_ssl sums the two view
directions and sums replica gradients unscaled, so its LR x corresponds to 2 R x here
(R replicas; configs/pretrain.gin uses 2 x 0.32, the part independent of R); LARS is
insensitive to the gradient scale (trust ratio).
"""

import dataclasses
import math
import re
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras
from official.modeling.optimization import lr_schedule
from official.modeling.optimization.configs import optimization_config
from official.modeling.optimization import optimizer_factory

SCALING_BATCH_SIZE = 256
OPTIMIZERS = ('sgd', 'lars')
# Variable names, also per-replica copies: 'bn/gamma:0', 'dense/bias/replica_1:0'.
NO_ADAPTATION_PATTERNS = (r'(^|/)(gamma|beta|bias)($|[:/])',)


def peak_learning_rate(base_learning_rate: float,
                       global_batch_size: Optional[int] = None,
                       linear_scaling: bool = False) -> float:
  """base, or base * global_batch_size / 256 with linear scaling."""
  if not linear_scaling:
    return float(base_learning_rate)
  if not global_batch_size or global_batch_size <= 0:
    raise ValueError('linear_scaling=True needs the global batch size, got '
                     f'{global_batch_size!r}')
  return float(base_learning_rate) * global_batch_size / SCALING_BATCH_SIZE


def build_schedule(peak: float, total_steps: int, warmup_steps: int = 0,
                   alpha: float = 0.0) -> tf_keras.optimizers.schedules.LearningRateSchedule:
  """Linear warm-up to `peak`, then cosine decay to `alpha * peak` at `total_steps`."""
  total_steps, warmup_steps = int(total_steps), int(warmup_steps)
  if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'need 0 <= warmup_steps <= total_steps and total_steps > 0; got '
                     f'warmup_steps={warmup_steps}, total_steps={total_steps}')
  cosine = lr_schedule.CosineDecayWithOffset(
      offset=warmup_steps, initial_learning_rate=peak,
      decay_steps=max(total_steps - warmup_steps, 1), alpha=alpha)
  if warmup_steps == 0:
    return cosine
  return lr_schedule.LinearWarmup(cosine, warmup_steps=warmup_steps,
                                  warmup_learning_rate=0.0)


def schedule_value(step: float, peak: float, total_steps: int, warmup_steps: int = 0,
                   alpha: float = 0.0) -> float:
  """The schedule in plain Python: the formula above, for tests and plots."""
  if step < warmup_steps:
    return peak * step / warmup_steps
  progress = min(step - warmup_steps, total_steps - warmup_steps) / max(
      total_steps - warmup_steps, 1)
  return peak * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """SGD+momentum or LARS with warm-up + cosine: the settings a schedule does not give.

  name: 'sgd' (released CVRL config) or 'lars'.
  base_learning_rate: the peak, or the peak at batch 256 with `linear_scaling`.
  momentum, nesterov: for both optimizers.
  cosine_alpha: final learning rate as a fraction of the peak.
  lars_eeta: LARS trust coefficient.
  lars_weight_decay: LARS's decoupled decay; keep 0 when the loss has weight decay.
  lars_exclude: regexes on variable names kept out of LARS adaptation and decay.
  """
  name: str = 'sgd'
  base_learning_rate: float = 0.32
  linear_scaling: bool = False
  momentum: float = 0.9
  nesterov: bool = False
  cosine_alpha: float = 0.0
  lars_eeta: float = 0.001
  lars_weight_decay: float = 0.0
  lars_exclude: Sequence[str] = NO_ADAPTATION_PATTERNS


def build_optimizer(total_steps: int,
                    warmup_steps: int = 0,
                    global_batch_size: Optional[int] = None,
                    spec: OptimizerSpec = OptimizerSpec(),
                    **overrides):
  """The optimizer `spec` describes (keyword `overrides` replace its fields), as a
  legacy tf_keras optimizer, on a warm-up + cosine schedule of total_steps.

  total_steps, warmup_steps: schedule length (the caller derives them from epochs).
  global_batch_size: for `spec.linear_scaling`.
  """
  if overrides:
    spec = dataclasses.replace(spec, **overrides)
  name, momentum, nesterov = spec.name, spec.momentum, spec.nesterov
  base_learning_rate, linear_scaling = spec.base_learning_rate, spec.linear_scaling
  cosine_alpha, lars_eeta = spec.cosine_alpha, spec.lars_eeta
  lars_weight_decay, lars_exclude = spec.lars_weight_decay, spec.lars_exclude
  name = name.lower()
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; choose one of {OPTIMIZERS}')
  peak = peak_learning_rate(base_learning_rate, global_batch_size, linear_scaling)
  schedule = build_schedule(peak, total_steps, warmup_steps, cosine_alpha)
  if name == 'sgd':
    params = {'type': 'sgd', 'sgd': {'momentum': momentum, 'nesterov': nesterov}}
  else:
    params = {'type': 'lars', 'lars': {
        'momentum': momentum, 'nesterov': nesterov, 'eeta': lars_eeta,
        'weight_decay_rate': lars_weight_decay,
        'exclude_from_weight_decay': list(lars_exclude),
        'exclude_from_layer_adaptation': list(lars_exclude)}}
  # The learning-rate part of the config is unused: the schedule is passed in directly.
  config = optimization_config.OptimizationConfig({
      'optimizer': params, 'learning_rate': {'type': 'constant'}})
  factory = optimizer_factory.OptimizerFactory(config)
  return factory.build_optimizer(schedule, use_legacy_optimizer=True)


def is_adapted(variable_name: str,
               patterns: Sequence[str] = NO_ADAPTATION_PATTERNS) -> bool:
  """Whether LARS scales (and decays) this variable, with the default exclusions."""
  return not any(re.search(p, variable_name) for p in patterns)


def base_optimizer(optimizer):
  """The optimizer inside a LossScaleOptimizer (mixed_float16), else itself."""
  return getattr(optimizer, 'inner_optimizer', optimizer)


def loss_scale_logs(optimizer) -> dict:
  """{'loss_scale': current scale} under a LossScaleOptimizer (a halving = a skipped
  step: its gradients overflowed in float16), else {}."""
  if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
    return {'loss_scale': tf.cast(optimizer.loss_scale, tf.float32)}
  return {}


def current_learning_rate(optimizer) -> tf.Tensor:
  """Learning rate of the next step as a float32 tensor (graph-safe, for summaries).

  Works for legacy and new tf_keras optimizers, with a schedule or a constant, and
  through a LossScaleOptimizer.
  """
  opt = base_optimizer(optimizer)
  schedules = tf_keras.optimizers.schedules.LearningRateSchedule
  if isinstance(opt, tf_keras.optimizers.legacy.Optimizer):
    lr = opt._get_hyper('learning_rate')  # pylint: disable=protected-access
  else:
    lr = getattr(opt, '_learning_rate', None)
    if lr is None:
      lr = opt.learning_rate
  if isinstance(lr, schedules):
    lr = lr(opt.iterations)
  return tf.cast(tf.convert_to_tensor(lr), tf.float32)


def build_model_and_slots(model, clip_shape=(None, None, None, 3)) -> None:
  """Creates every variable of a compiled model now: its weights, then the optimizer's
  slots. Call under the strategy scope before restoring a checkpoint, so the restore is
  complete and checked instead of deferred to the first step."""
  if not model.built:
    model.build(tf.TensorShape([None, *clip_shape]))
  optimizer = getattr(model, 'optimizer', None)
  if optimizer is None:
    return
  inner = base_optimizer(optimizer)
  if isinstance(inner, tf_keras.optimizers.legacy.Optimizer):
    inner._create_all_weights(model.trainable_variables)  # pylint: disable=protected-access
  else:
    inner.build(model.trainable_variables)
