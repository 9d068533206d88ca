"""gin's read side: the one place the library asks gin what a configurable was bound to,
and the operative config a run writes. Parsing is the command line's (cli/gin_files.py)."""

import inspect
import os
from typing import Optional

import gin
import tensorflow as tf

from cvrl_tf import files as files_lib

OPERATIVE_CONFIG = 'operative_config.gin'
# Objects a caller passes at run time, not settings (never bound in gin, never stored).
_RUNTIME_ARGS = ('input_context', 'bad_examples')


def bindings(fn, scope: Optional[str] = None) -> dict:
  """What gin binds for configurable `fn` (in `scope`): only the explicit bindings."""
  name = fn.__name__ if scope is None else f'{scope}/{fn.__name__}'
  return gin.get_bindings(name)


def effective_args(fn, scope: Optional[str] = None) -> dict:
  """Arguments a gin-configurable runs with: its defaults, then the (scoped) bindings,
  as they read back from JSON (so they compare equal to stored settings)."""
  target = getattr(fn, '__wrapped__', fn)
  args = {k: p.default for k, p in inspect.signature(target).parameters.items()
          if p.default is not inspect.Parameter.empty}
  args.update(bindings(fn, scope))
  return files_lib.normalized({k: v for k, v in args.items() if k not in _RUNTIME_ARGS})


def save_operative_config(model_dir: str) -> str:
  """Writes the operative config (what was actually used) into model_dir, atomically."""
  tf.io.gfile.makedirs(model_dir)
  return files_lib.atomic_write(os.path.join(model_dir, OPERATIVE_CONFIG),
                                gin.operative_config_str())
