"""Writing result files: atomically, and JSON through one normaliser; reading JSON back;
the few folder operations the converter needs, on any filesystem.

Local paths are written with `os` and never import TensorFlow, so the converter's and the
synthesizer's modules (and their spawned workers) stay free of it; any other path
(gs://, hdfs://, ram://, file:// ...) goes through tf.io.gfile, imported only then.
Object stores have no atomic rename: there `rename` copies, and the final name appears
only when the copy is complete (an object is visible whole or not at all).
"""

import glob
import json
import os
import shutil
import time
import uuid

import numpy as np


def is_local(path: str) -> bool:
  return '://' not in path


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
  return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def makedirs(path: str) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _gfile().makedirs(path)


def listdir(path: str) -> list:
  """Names in a folder (none when it does not exist)."""
  if not exists(path):
    return []
  names = os.listdir(path) if is_local(path) else _gfile().listdir(path)
  return sorted(n.rstrip('/') for n in names)


def remove_tree(path: str) -> None:
  """Deletes a folder and what it holds; nothing when it is gone already."""
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  elif _gfile().exists(path):
    _gfile().rmtree(path)


def remove(path: str) -> None:
  if is_local(path):
    os.remove(path)
  else:
    _gfile().remove(path)


def abspath(path: str) -> str:
  """os.path.abspath for local paths; a URL as it is."""
  return os.path.abspath(path) if is_local(path) else path


def open_file(path: str, mode: str = 'rb', **kwargs):
  """A file object for reading, on any filesystem (kwargs: open's, local paths only)."""
  if is_local(path):
    return open(path, mode, **kwargs)  # pylint: disable=unspecified-encoding
  return _gfile().GFile(path, mode)


def publish(tmp: str, final: str) -> None:
  """Gives the complete file `tmp` its final name: fsync + atomic rename on a local disk;
  elsewhere a copy, after which the object exists whole under `final`."""
  if is_local(final):
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, final)
  else:
    _gfile().rename(tmp, final, overwrite=True)


def replace_dir(tmp: str, final: str) -> None:
  """Moves the complete folder `tmp` to `final` (same filesystem). An existing `final` is
  swapped out by two renames and then deleted: no half-written folder is ever visible
  under the final name."""
  gfile = _gfile()
  if gfile.exists(final):
    old = f'{final}.old-{uuid.uuid4().hex[:8]}'
    gfile.rename(final, old)
    gfile.rename(tmp, final)
    gfile.rmtree(old)
  else:
    gfile.rename(tmp, final)


def size(path: str) -> int:
  return os.path.getsize(path) if is_local(path) else _gfile().stat(path).length


def atomic_write(path: str, data, mode: str = 'w') -> str:
  """Writes `data` (str for mode 'w', bytes for 'wb') to `path` all or nothing.

  Why: a reader (a resumed run, a concurrent evaluation) sees the old file or the new
  one, never a part. The temp file beside `path` has a name of its own per call, so two
  processes writing the same file do not write into each other's temp file (the last
  rename wins), and it is removed when the write fails. On a local disk, one a killed
  process left (SIGKILL runs no clean-up) goes with the next write of the same file
  (_sweep_stale).
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  local = is_local(path)
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
  if local:
    _sweep_stale(path)
  return path


STALE_AFTER_S = 600.0  # A temp file this old, of a process gone, is garbage.


def _sweep_stale(path: str) -> None:
  """Removes `path`'s temp files (atomic_write's `<path>.tmp-<pid>-<hex>`) left by a process
  that is gone from this machine, untouched for STALE_AFTER_S (so a writer on another
  machine sharing the folder, whose pid means nothing here, keeps its file)."""
  for tmp in glob.glob(glob.escape(path) + '.tmp-*-*'):
    try:
      pid = int(tmp[len(path) + len('.tmp-'):].split('-', 1)[0])
      if (pid != os.getpid() and not _alive(pid) and
          time.time() - os.path.getmtime(tmp) > STALE_AFTER_S):
        os.remove(tmp)
    except (ValueError, OverflowError, OSError):
      pass  # Not one of ours, gone already, or not ours to remove.


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # Exists, another user's.
  return True


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
  if is_local(path):
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
