"""Fixtures shared by several test modules."""

import pytest
import tf_keras


@pytest.fixture
def bf16_policy():
  """The tf_keras 'mixed_bfloat16' policy for one test; the previous policy restored."""
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
