"""gin at the edge: `cvrl_train` parses files and bindings here, with errors that name the
bad file or binding, before any protocol runs; settings.py builds the bound recipe.

A --gin_file is looked for as typed (the user's own file wins), then in each
--gin_search_path, then among the configs shipped in the package (cvrl_tf/configs):
`pretrain.gin`, `demo/pretrain.gin` and today's `gin/pretrain.gin` all work from any
folder, also from a wheel install. Includes inside gin files resolve the same way.

Every configurable is registered before parsing (importing settings.py registers them),
otherwise gin could not tell an unknown binding from a module not yet imported. A
binding whose name changed fails with the new name (settings.RENAMED) before gin reads it.
"""

import dataclasses
import os
from typing import Sequence

import gin
import tensorflow as tf

from cvrl_tf import configs
from cvrl_tf import errors
from cvrl_tf.cli import quiet
from cvrl_tf.cli import settings
from cvrl_tf.input import sources
from cvrl_tf.models import backbone_io

ConfigError = settings.ConfigError
run = settings.run


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


def _check_names(path: str, search_paths: Sequence[str], seen: set) -> None:
  """settings.check_renamed on a gin file and, recursively, the files it includes."""
  if path in seen:
    return
  seen.add(path)
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  settings.check_renamed(text, path)
  for include in settings.included(text):
    try:
      child = resolve(include, list(search_paths) + [os.path.dirname(path)])
    except ConfigError:
      continue  # gin reports the missing include, naming it.
    _check_names(child, search_paths, seen)


def parse(files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; raises ConfigError naming the bad file or binding."""
  gin.clear_config()
  for path in search_paths:
    gin.add_config_file_search_path(path)
  # Includes: gin tries the working directory, then these folders, in order.
  gin.add_config_file_search_path(configs.ROOT)
  resolved = [resolve(f, search_paths) for f in files]
  seen = set()
  for path in resolved:
    _check_names(path, search_paths, seen)
  for binding in bindings:
    settings.check_renamed(binding, f'--gin_bindings={binding!r}')
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


def check_protocol() -> str:
  """Before any work: `run.experiment` names a protocol, its required fields are bound
  and its *_files patterns match files. Returns the protocol name; raises ConfigError
  (or errors.MissingInput) naming the binding and what to do."""
  names = ', '.join('@' + p for p in settings.PROTOCOLS)
  try:
    reference = gin.query_parameter('run.experiment')
  except ValueError:
    raise ConfigError(  # pylint: disable=raise-missing-from
        'no protocol: bind run.experiment (e.g. --gin_bindings="run.experiment='
        f'@pretrain"; protocols: {names.replace("@", "")}) or give a protocol file such '
        'as --gin_file=pretrain.gin') from None
  configurable = getattr(reference, 'configurable', None)
  if configurable is None or configurable.name not in settings.PROTOCOLS:
    raise ConfigError(f'run.experiment = {reference!r} is not a protocol; bind it to one '
                      f'of {names}')
  name = configurable.name
  cls = settings.PROTOCOLS[name]
  bound = gin.get_bindings(name)
  defaults = {f.name: f.default for f in dataclasses.fields(cls)}
  for field in getattr(cls, 'REQUIRED', ()):
    if bound.get(field, defaults[field]) in (None, '', ()):
      raise ConfigError(f'{name}.{field} is not bound: add it to the gin file or '
                        f'pass --gin_bindings="{name}.{field}=..."')
  for field, default in defaults.items():
    value = bound.get(field, default)
    if not field.endswith('_files') or not value:
      continue
    try:
      sources.open_source(value, validate=False)  # A tfds: spec is read later.
    except errors.MissingInput as e:
      raise errors.MissingInput(
          f'{name}.{field}: {e}; write the shards with cvrl_convert, or point the '
          f'binding at them: --gin_bindings="{name}.{field}=\'/path/to/shards-*.tfrecord\'"'
      ) from None
  if bound.get('encoder_source', defaults.get('encoder_source')) == 'model_dir':
    pretrain_dir = bound.get('pretrain_dir')
    if pretrain_dir:
      try:
        backbone_io.read_spec(pretrain_dir)
      except errors.MissingInput as e:
        raise errors.MissingInput(f'{name}.pretrain_dir: {e}') from None
  return name
