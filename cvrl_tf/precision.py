"""The tf_keras dtype policy for one block of code, restored afterwards.

Layers take the global policy when they are built, so a model built inside
`with dtype_policy('mixed_bfloat16'):` computes in bfloat16 (float32 variables) and one
built after it in whatever was set before.
"""

import contextlib
from typing import Optional

import tf_keras


@contextlib.contextmanager
def dtype_policy(policy: Optional[str]):
  """Sets the global policy ('float32', 'mixed_bfloat16', ...; None = 'float32')."""
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy or 'float32')
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)
