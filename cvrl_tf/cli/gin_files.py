"""gin at the edge: `cvrl_train` parses files and bindings here, with errors that name the
bad file or binding, before any protocol runs.

A --gin_file is looked for as typed (the user's own file wins), then in each
--gin_search_path, then among the configs shipped in the package (cvrl_tf/configs):
`pretrain.gin`, `demo/pretrain.gin` and today's `gin/pretrain.gin` all work from any
folder, also from a wheel install. Includes inside gin files resolve the same way.

Every configurable must be registered before parsing, otherwise gin cannot tell an
unknown binding from a module not yet imported; `register_configurables` imports them all.
"""

import os
from typing import Sequence

import gin
import tensorflow as tf

from cvrl_tf import configs
from cvrl_tf.cli import quiet


class ConfigError(ValueError):
  """A gin file or binding the user gave is wrong; the message says which and why."""


def register_configurables() -> None:
  # pylint: disable=g-import-not-at-top,unused-import
  # Importing these registers every configurable (they import the rest).
  from cvrl_tf.cli import train  # noqa: F401  (`run`)
  from cvrl_tf.protocols import classify  # noqa: F401
  from cvrl_tf.protocols import knn  # noqa: F401
  from cvrl_tf.protocols import pretrain  # noqa: F401


def resolve(path: str, search_paths: Sequence[str] = ()) -> str:
  """The file a --gin_file names: as typed, in a search path, or shipped (see above)."""
  candidates = [path] + [os.path.join(p, path) for p in search_paths]
  for candidate in candidates:
    if tf.io.gfile.exists(candidate):
      return candidate
  shipped = configs.find(path)
  if shipped:
    return shipped
  raise ConfigError(
      f'gin file {path!r} not found (looked in: {", ".join(candidates)} and the configs '
      f'shipped with cvrl_tf). Check the --gin_file path, add its folder with '
      f'--gin_search_path, or see `cvrl_train --list_configs`.')


def parse(files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; raises ConfigError naming the bad file or binding."""
  register_configurables()
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  # Includes: gin tries the working directory, then these folders, in order.
  gin.add_config_file_search_path(configs.ROOT)
  resolved = [resolve(f, search_paths) for f in files]
  for path in resolved:
    try:
      with quiet.gin_probing_silenced():
        gin.parse_config_file(path)
    except Exception as e:  # gin raises ValueError, KeyError, SyntaxError, IOError ...
      raise ConfigError(f'in gin file {path}: {e}') from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise ConfigError(f'in --gin_bindings={binding!r}: {e}') from e
