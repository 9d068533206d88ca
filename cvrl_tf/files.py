"""Writing result files: atomically, and JSON through one normaliser; reading JSON back.

Local paths are written with `os` and never import TensorFlow, so the converter's and the
synthesizer's modules (and their spawned workers) stay free of it; any other path
(gs://, hdfs://, file:// ...) goes through tf.io.gfile, imported only then.
"""

import json
import os
import uuid

import numpy as np


def _is_local(path: str) -> bool:
  return '://' not in path


def atomic_write(path: str, data, mode: str = 'w') -> str:
  """Writes `data` (str for mode 'w', bytes for 'wb') to `path` all or nothing.

  Why: a reader (a resumed run, a concurrent evaluation) sees the old file or the new
  one, never a part. The temp file beside `path` has a name of its own per call, so two
  processes writing the same file do not write into each other's temp file (the last
  rename wins), and it is removed when the write fails.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  local = _is_local(path)
  try:
    if local:
      text = {'encoding': 'utf-8', 'newline': ''} if mode == 'w' else {}
      with open(tmp, mode, **text) as f:  # pylint: disable=unspecified-encoding
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # The data is on disk before the rename makes it visible.
      os.replace(tmp, path)
    else:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with tf.io.gfile.GFile(tmp, mode) as f:
        f.write(data)
      tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    _remove_quietly(tmp, local)
    raise
  return path


def _remove_quietly(path: str, local: bool) -> None:
  try:
    if local:
      os.remove(path)
    else:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.io.gfile.remove(path)
  except Exception:  # pylint: disable=broad-except
    pass  # Nothing was written, or it is gone already.


def jsonable(value):
  """json's `default`: NumPy arrays -> lists, NumPy scalars -> numbers, else str."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return str(value)


def normalized(value):
  """`value` as it reads back from a JSON file (tuples -> lists, NumPy -> numbers, others
  -> str), so settings in memory and settings stored by `write_json` compare equal."""
  return json.loads(json.dumps(value, default=jsonable))


def write_json(path: str, obj) -> str:
  """Atomic, sorted, indented JSON (`jsonable` for what json cannot hold); the path."""
  return atomic_write(
      path, json.dumps(obj, indent=2, sort_keys=True, default=jsonable) + '\n')


def read_json(path: str):
  """The JSON object stored at `path`, or None when there is no such file."""
  if _is_local(path):
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
