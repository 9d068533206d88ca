"""gin at the edge: `cvrl_train` parses files and bindings here, with errors that name the
bad file or binding, before any protocol runs; `run` builds the bound recipe and runs it.

A --gin_file is looked for as typed (the user's own file wins), then in each
--gin_search_path, then among the configs shipped in the package (cvrl_tf/configs):
`pretrain.gin`, `demo/pretrain.gin` and today's `gin/pretrain.gin` all work from any
folder, also from a wheel install. Includes inside gin files resolve the same way.

Every configurable must be registered before parsing, otherwise gin cannot tell an
unknown binding from a module not yet imported; `register_configurables` imports them all.
"""

import inspect
import os
from typing import Sequence

import gin
import tensorflow as tf

from cvrl_tf import configs
from cvrl_tf import errors
from cvrl_tf.cli import quiet
from cvrl_tf.input import tfds_source
from cvrl_tf.models import backbone_io


class ConfigError(errors.UserError):
  """A gin file or binding the user gave is wrong; the message says which and why."""


def register_configurables() -> None:
  # pylint: disable=g-import-not-at-top,unused-import
  # Importing these registers every configurable (they import the rest).
  from cvrl_tf.protocols import classify  # noqa: F401
  from cvrl_tf.protocols import knn  # noqa: F401
  from cvrl_tf.protocols import pretrain  # noqa: F401


@gin.configurable
def run(model_dir: str, experiment=gin.REQUIRED):
  """Builds the recipe bound in gin (e.g. `run.experiment = @pretrain`: the Pretrain
  recipe, its fields from the `pretrain.*` bindings) and runs it in model_dir."""
  return experiment().run(model_dir)


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


def check_protocol() -> str:
  """Before any work: `run.experiment` names a protocol, its required bindings are set
  and its *_files patterns match files. Returns the protocol name; raises ConfigError
  (or errors.MissingInput) naming the binding and what to do."""
  try:
    reference = gin.query_parameter('run.experiment')
  except ValueError:
    raise ConfigError(  # pylint: disable=raise-missing-from
        'no protocol: bind run.experiment (e.g. --gin_bindings="run.experiment='
        '@pretrain"; protocols: pretrain, linear_eval, finetune, evaluate, knn_eval) or '
        'give a protocol file such as --gin_file=pretrain.gin') from None
  configurable = getattr(reference, 'configurable', None)
  if configurable is None or not callable(configurable.wrapped):
    raise ConfigError(f'run.experiment = {reference!r} is not a protocol; bind it to one '
                      'of @pretrain, @linear_eval, @finetune, @evaluate, @knn_eval')
  name, fn = configurable.name, configurable.wrapped
  bound = gin.get_bindings(name)
  for param in inspect.signature(fn).parameters.values():
    value = bound.get(param.name, param.default)
    if value is gin.REQUIRED:
      raise ConfigError(f'{name}.{param.name} is not bound: add it to the gin file or '
                        f'pass --gin_bindings="{name}.{param.name}=..."')
    if param.name.endswith('_files') and value:
      for pattern in [value] if isinstance(value, str) else list(value):
        if tfds_source.is_tfds(pattern):
          tfds_source.parse_spec(pattern)  # A malformed spec: one line; data read later.
          continue
        if not tf.io.gfile.glob(pattern):
          raise errors.MissingInput(
              f'{name}.{param.name}: file pattern {pattern!r} matches no file; write the '
              f'shards with cvrl_convert, or point the binding at them: --gin_bindings='
              f'"{name}.{param.name}=\'/path/to/shards-*.tfrecord\'"')
  if bound.get('encoder_source', _default(fn, 'encoder_source')) == 'model_dir':
    pretrain_dir = bound.get('pretrain_dir')
    if pretrain_dir:
      try:
        backbone_io.read_spec(pretrain_dir)
      except errors.MissingInput as e:
        raise errors.MissingInput(f'{name}.pretrain_dir: {e}') from None
  return name


def _default(fn, param: str):
  parameter = inspect.signature(fn).parameters.get(param)
  return None if parameter is None else parameter.default
