"""A recipe's seed fixes the model it builds (protocols/recipe.py, seed_initialization):
two openings with one seed build the same initial weights, another seed other weights.
Before this, only the input stream followed the seed, and the quality benchmark's paired
rows (same seed) started from different weights."""

import numpy as np

from cvrl_tf.models import r3d
from cvrl_tf.protocols import pretrain
from cvrl_tf.protocols import recipe as recipe_lib

TINY = r3d.EncoderSpec(name='r3d18', width_multiplier=0.125)


def _initial_weights(seed):
  """The encoder a pretraining run with this seed starts from (the protocol's opening,
  then the build, as protocols/pretrain.py does)."""
  recipe = pretrain.Pretrain(train_files='unused-*.tfrecord', seed=seed,
                             mixed_precision='float32', encoder=TINY)
  recipe_lib.open_protocol(recipe, 'pretrain', None)
  return [w.numpy() for w in r3d.build_backbone(recipe.encoder).weights]


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_seed_fixes_the_initial_weights():
  first, again, other = _initial_weights(3), _initial_weights(3), _initial_weights(4)
  assert _same(first, again)
  assert not _same(first, other)
  # The kernels are random draws (a seed that fixed them to a constant would pass above).
  kernels = [w for w in first if w.ndim == 5]
  assert kernels and all(np.std(k) > 0 for k in kernels)


def test_no_seed_leaves_the_draws_free():
  assert not _same(_initial_weights(None), _initial_weights(None))
