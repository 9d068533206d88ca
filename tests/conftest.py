"""Fixtures shared by several test modules."""

import pytest

from cvrl_tf.runtime import precision


@pytest.fixture
def bf16_policy():
  """The tf_keras 'mixed_bfloat16' policy for one test; the previous policy restored."""
  with precision.dtype_policy('mixed_bfloat16'):
    yield
