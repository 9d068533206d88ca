"""gin at the edges: parse files and bindings with errors that name the problem, and
the one place the library asks gin what a configurable was bound to.

Every configurable must be registered before parsing, otherwise gin cannot tell an
unknown binding from a module not yet imported; `register_configurables` imports them all.
"""

import inspect
import os
from typing import Optional, Sequence

import gin
import tensorflow as tf

from cvrl_tf import files as files_lib

OPERATIVE_CONFIG = 'operative_config.gin'


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
  return files_lib.normalized({k: v for k, v in args.items() if k != 'input_context'})


class ConfigError(ValueError):
  """A gin file or binding the user gave is wrong; the message says which and why."""


def register_configurables() -> None:
  # pylint: disable=g-import-not-at-top,unused-import
  # Importing these registers every configurable (they import the rest).
  from cvrl_tf import downstream  # noqa: F401
  from cvrl_tf import experiments  # noqa: F401


def _resolve(path: str, search_paths: Sequence[str]) -> str:
  candidates = [path] + [os.path.join(p, path) for p in search_paths]
  for candidate in candidates:
    if tf.io.gfile.exists(candidate):
      return candidate
  raise ConfigError(
      f'gin file {path!r} not found (looked in: {", ".join(candidates)}). Check the '
      f'--gin_file path, or add its folder with --gin_search_path.')


def parse(files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; raises ConfigError naming the bad file or binding."""
  register_configurables()
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  # Files are resolved before parsing, relative to the working directory, the search
  # paths and the folder of the repo's gin/ files, so include statements also work.
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.add_config_file_search_path(os.path.join(here, 'gin'))
  gin.add_config_file_search_path(here)
  resolved = [_resolve(f, list(search_paths) + [here]) for f in files]
  for path in resolved:
    try:
      gin.parse_config_file(path)
    except Exception as e:  # gin raises ValueError, KeyError, SyntaxError, IOError ...
      raise ConfigError(f'in gin file {path}: {e}') from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise ConfigError(f'in --gin_bindings={binding!r}: {e}') from e


def save_operative_config(model_dir: str) -> str:
  """Writes the operative config (what was actually used) into model_dir, atomically."""
  tf.io.gfile.makedirs(model_dir)
  return files_lib.atomic_write(os.path.join(model_dir, OPERATIVE_CONFIG),
                                gin.operative_config_str())
