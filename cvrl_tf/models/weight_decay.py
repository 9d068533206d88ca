"""Weight decay on conv and dense kernels only, added to the loss by the training step.

Why not keras regularizers: they would also live in a frozen encoder's `model.losses`,
be easy to apply twice, and are hard to restrict to kernels in nested models. Here the
training step asks for the variables and adds the term itself.

Convention (the same as the released CVRL code in TF Model Garden, which computes
`weight_decay * sum(tf.nn.l2_loss(v))`):

    l2_weight_decay(model, wd) = wd * sum_k 0.5 * ||k||^2

so the gradient on each kernel is exactly wd * k, and CVRL's wd = 1e-6 means the same
thing here as in the reference. (A keras `l2(x)` regularizer computes x * ||k||^2, i.e.
it needs x = wd / 2 for the same effect.)

Decayed: `kernel` of Conv1D/2D/3D (and transposed), Dense and EinsumDense, plus
`depthwise_kernel` / `pointwise_kernel` of depthwise and separable convs.
Not decayed: BN gamma/beta (and moving statistics), biases, anything else.
"""

from typing import List, Union

import tensorflow as tf
import tf_keras

_KERNEL_ATTRS = ('kernel', 'depthwise_kernel', 'pointwise_kernel')


def _is_kernel_layer(layer) -> bool:
  # tf_keras has no public conv base class; the attribute plus a known conv/dense name
  # covers Conv*D, Conv*DTranspose, DepthwiseConv*D, SeparableConv*D, Dense, EinsumDense.
  name = type(layer).__name__
  return isinstance(layer, tf_keras.layers.Layer) and (
      'Conv' in name or name in ('Dense', 'EinsumDense'))


def weight_decay_variables(model: tf_keras.layers.Layer,
                           trainable_only: bool = True) -> List[tf.Variable]:
  """Conv and dense kernels of `model` and all its nested layers, each once.

  Args:
    model: any tf_keras layer or model (e.g. a pretrainer holding encoder and head).
    trainable_only: skip kernels of frozen layers (a frozen encoder in linear eval): they
      get no gradient, so decaying them would only add a constant to the loss.
  """
  trainable = {v.ref() for v in model.trainable_variables}
  seen, result = set(), []
  for layer in [model] + list(model.submodules):
    if not _is_kernel_layer(layer):
      continue
    for attr in _KERNEL_ATTRS:
      var = getattr(layer, attr, None)
      if not isinstance(var, tf.Variable) or var.ref() in seen:
        continue
      if trainable_only and var.ref() not in trainable:
        continue
      seen.add(var.ref())
      result.append(var)
  return result


def l2_weight_decay(model_or_variables: Union[tf_keras.layers.Layer, List[tf.Variable]],
                    weight_decay: float) -> tf.Tensor:
  """wd * sum(0.5 * ||k||^2) over decayed kernels, as a float32 scalar.

  Pass a model (its `weight_decay_variables`) or an explicit variable list (to avoid the
  layer walk inside a compiled train step, collect the list once outside).
  """
  if isinstance(model_or_variables, tf_keras.layers.Layer):
    variables = weight_decay_variables(model_or_variables)
  else:
    variables = list(model_or_variables)
  if not variables or weight_decay == 0:
    return tf.constant(0.0, tf.float32)
  total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
  return tf.cast(weight_decay, tf.float32) * total
