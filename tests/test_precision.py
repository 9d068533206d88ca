"""precision.dtype_policy: set for a block, restored after it (also after an error)."""

import pytest
import tf_keras

from cvrl_tf import precision


def _current():
  return tf_keras.mixed_precision.global_policy().name


def test_dtype_policy_sets_and_restores():
  assert _current() == 'float32'
  with precision.dtype_policy('mixed_bfloat16'):
    assert _current() == 'mixed_bfloat16'
    assert tf_keras.layers.Dense(2).compute_dtype == 'bfloat16'
    with precision.dtype_policy(None):  # None means float32
      assert _current() == 'float32'
    assert _current() == 'mixed_bfloat16'
  assert _current() == 'float32'
  with pytest.raises(RuntimeError):
    with precision.dtype_policy('mixed_bfloat16'):
      raise RuntimeError('a failing protocol')
  assert _current() == 'float32'
