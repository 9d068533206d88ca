"""How far two float32 evaluations of one network may differ: the bound every comparison
of two implementations or two kernel sets uses (Model Garden's R3D and ours, a SavedModel
and its Keras model, one model on two CPUs), relative to the outputs' scale.

Two float32 evaluations of one network (Model Garden's and ours, or one model on two
CPUs) differ by rounding alone. A dot product of n terms carries a rounding error that
grows like sqrt(n) * u times the terms' magnitudes when the rounding errors have random
signs (n * u at worst; Higham & Mary 2019), u = eps / 2 the unit roundoff. Layer after
layer these relative errors add like independent random errors (batch norm keeps each
layer's scale near its input's), so through layers of fan-ins n_1 .. n_d the output's
relative error is about u * sqrt(n_1 + ... + n_d): sqrt growth in depth and in
reduction length at once (R3D-50: sum 73,119 along its deepest path, 49 convs; R3D-101:
168,863). The global average pool adds sqrt(positions) * u, below one layer's share.
The bound takes eps (= 2u) and a margin of 10 for what this leaves out: other CPUs'
summation orders and vector widths (oneDNN blocks sums differently on AVX2 and AVX-512
machines: an AVX2-only Zen 3 measured 1.14e-5 on R3D-101 features of scale above 1,
over the absolute 1e-5 a test had) and sums that cancel. R3D-50: 3.2e-4 of the
outputs' scale, R3D-101 4.9e-4; measured on a Zen 4 (AVX-512): 3e-7 and 4e-7. A wrong
batch-norm epsilon (1e-3 for 1e-5) misses by ~0.4 of the scale on random statistics.
Relative to the outputs' scale (max |output|): an absolute bound means nothing for
outputs of any size.
"""

import math
from typing import List, Sequence

import numpy as np
import tf_keras

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7
ROUNDING_MARGIN = 10.0


def float32_bound(fan_ins: Sequence[int]) -> float:
  """Bound on max |a - b| / max |b| for float32 evaluations of layers of these fan-ins."""
  return ROUNDING_MARGIN * FLOAT32_EPS * math.sqrt(float(sum(fan_ins)))


def fan_ins(layers: Sequence[tf_keras.layers.Layer]) -> List[int]:
  """Inputs per output of each conv / dense layer: the kernel's size but its last dim."""
  return [int(np.prod(layer.kernel.shape[:-1])) for layer in layers
          if isinstance(layer, (tf_keras.layers.Conv3D, tf_keras.layers.Dense))]


def encoder_fan_ins(encoder: tf_keras.Model) -> List[int]:
  """Fan-ins of an encoder's convs along its longest path (our R3D's shortcut
  projections run beside the block they belong to: not counted); nested models and
  layers are walked too."""
  return fan_ins([layer for layer in encoder.submodules
                  if not layer.name.endswith('_proj')])


def relative_difference(got, expected) -> float:
  """max |got - expected| / max |expected|: a difference at the outputs' scale."""
  expected = np.asarray(expected, np.float64)
  scale = float(np.abs(expected).max())
  if scale == 0:
    raise ValueError('comparing with all-zero outputs says nothing')
  return float(np.abs(np.asarray(got, np.float64) - expected).max()) / scale
