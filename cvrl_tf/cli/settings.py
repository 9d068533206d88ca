"""gin's only door into cvrl_tf: the settings objects gin configures, and how a recipe is
built from the bindings.

The library never asks gin anything. Its settings are frozen dataclasses (a protocol's
recipe, and the recipe's parts: clips, encoder, head, optimizer, ...); this module gives
each a gin name, and `build_recipe('pretrain')` builds the recipe with every part filled
from its own bindings:

  pretrain.train_steps = 700              # a field of Pretrain
  pretrain_clips.crop_size = 32           # Pretrain.clips (a PretrainClips)
  encoder.name = 'r3d18'                  # Pretrain.encoder (an EncoderSpec)
  knn_monitor/test_views.num_clips = 1    # Pretrain.knn_monitor.views, in gin scope
                                          # knn_monitor/ (see SCOPES)

A part is built from its gin name whatever recipe holds it, so `augmentation.flip_prob =
0.0` reaches the clips of every protocol. Parts that default to None (a downstream
`encoder`, knn_eval's `memory_views`) are built only when something is bound for them.
Binding names that changed have one-line errors (RENAMED, `check_renamed`).
"""

import contextlib
import dataclasses
import os
import re
import typing
from typing import Dict, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.input import augment
from cvrl_tf.input import bad_examples
from cvrl_tf.input import clips
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.models import r3d
from cvrl_tf.protocols import classify
from cvrl_tf.protocols import knn
from cvrl_tf.protocols import knn_monitor
from cvrl_tf.protocols import pretrain
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import train_loop

# The protocols `run.experiment` can name, by gin name.
PROTOCOLS = {'pretrain': pretrain.Pretrain, 'linear_eval': classify.LinearEval,
             'finetune': classify.Finetune, 'evaluate': classify.Evaluate,
             'knn_eval': knn.KnnEval}
# The parts recipes hold, by gin name.
PARTS = {'pretrain_clips': clips.PretrainClips, 'train_clips': clips.TrainClips,
         'test_views': clips.TestViews, 'augmentation': augment.Augmentation,
         'encoder': r3d.EncoderSpec, 'projection_head': heads.HeadSpec,
         'cvrl_optimizer': optim.OptimizerSpec, 'knn_monitor': knn_monitor.KnnMonitorRecipe,
         'bad_examples': bad_examples.Limit, 'strategy': distribute.StrategySpec}
# (holder, field) -> the gin scope its part is built in: bindings `scope/name.x` apply
# to it only (on top of the unscoped `name.x`).
SCOPES = {(knn.KnnEval, 'memory_views'): 'knn_memory',
          (knn_monitor.KnnMonitorRecipe, 'views'): 'knn_monitor'}

_NAMES = {cls: name for name, cls in {**PROTOCOLS, **PARTS}.items()}
_CONFIGURABLES = {name: gin.external_configurable(cls, name)
                  for name, cls in {**PROTOCOLS, **PARTS}.items()}


@gin.configurable
def run(model_dir: str, experiment=gin.REQUIRED):
  """Builds the recipe `run.experiment` names (e.g. `@pretrain`) and runs it in model_dir."""
  name = next((n for n, c in _CONFIGURABLES.items() if c is experiment), None)
  if name not in PROTOCOLS:
    raise errors.UserError(f'run.experiment = {experiment!r} is not a protocol; bind it '
                           f'to one of {", ".join("@" + p for p in PROTOCOLS)}')
  recipe = build_recipe(name)
  if _writes_model_dir():
    save_operative_config(model_dir)
  return recipe.run(model_dir)


def build_recipe(protocol: str, built: Optional[dict] = None):
  """The recipe of `protocol` with its fields and every part from the gin bindings.

  built: if given, filled with {(scope, gin name): object} of every part built (scope ''
  for none): what the shipped-config test compares to the settings of before.
  """
  try:
    recipe = _build(PROTOCOLS[protocol], '', {} if built is None else built)
  except (TypeError, ValueError) as e:  # A dataclass's own check of a value.
    raise errors.UserError(f'{protocol}: {e}') from e
  return _on_stored_encoder(recipe)


def _on_stored_encoder(recipe):
  """A downstream recipe on a pretraining run's backbone (encoder_source 'model_dir'):
  `encoder.*` bindings are changes to the stored architecture, not a whole new one. So
  the encoder is the stored spec with the bound fields over it: a bound field that
  contradicts the stored one is still an error (models/encoder_source.py), an unbound
  one never is (e.g. only encoder.kernel_gradient='conv')."""
  encoder = getattr(recipe, 'encoder', None)
  if (encoder is None or getattr(recipe, 'encoder_source', None) != 'model_dir' or
      not recipe.pretrain_dir):
    return recipe
  try:
    stored = backbone_io.encoder_spec(backbone_io.read_spec(recipe.pretrain_dir))
  except errors.MissingInput:
    return recipe  # The protocol reports the missing backbone, naming it.
  bound = {k: getattr(encoder, k) for k in gin.get_bindings('encoder')}
  return dataclasses.replace(recipe, encoder=dataclasses.replace(stored, **bound))


def build_part(name: str, scope: str = ''):
  """One part from its bindings, e.g. build_part('encoder') after parsing
  demo/encoder.gin."""
  return _build(PARTS[name], scope, {})


def _part_fields(cls) -> Dict[str, Tuple[type, bool]]:
  """{field: (part class, optional)} of the fields of `cls` that hold a part."""
  hints = typing.get_type_hints(cls)
  out = {}
  for field in dataclasses.fields(cls):
    if not field.init:
      continue
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) is typing.Union and len(args) == 1
    part = args[0] if optional else hint
    if part in _NAMES:
      out[field.name] = (part, optional)
  return out


def _build(cls, scope: str, built: dict):
  name = _NAMES[cls]
  scoped = f'{scope}/{name}' if scope else name
  bound = gin.get_bindings(scoped)
  parts = {}
  for field, (part, optional) in _part_fields(cls).items():
    if field in bound:
      continue  # Bound explicitly (e.g. `pretrain.clips = @pretrain_clips()`).
    part_scope = SCOPES.get((cls, field), scope)
    part_name = _NAMES[part]
    probe = f'{part_scope}/{part_name}' if part_scope else part_name
    if optional and not gin.get_bindings(probe):
      continue  # Nothing bound for an optional part: it stays None.
    parts[field] = _build(part, part_scope, built)
  with gin.config_scope(scope) if scope else contextlib.nullcontext():
    obj = _CONFIGURABLES[name](**parts)
  built[(scope, name)] = obj
  return obj


def protocol_of_config() -> str:
  """The gin name of the protocol `run.experiment` is bound to (ConfigError-free: the
  caller checks that one is bound)."""
  return gin.query_parameter('run.experiment').configurable.name


# ----------------------------------------------------------------- operative config
def _writes_model_dir() -> bool:
  """Whether this process is the one of its cluster that writes model_dir files (the
  chief: TF_CONFIG's 'chief' task, else worker 0; every single process)."""
  return train_loop.is_chief_task(os.environ.get('TF_CONFIG'))


def save_operative_config(model_dir: str) -> str:
  """Writes what gin actually set (operative_config.gin) into model_dir, atomically."""
  tf.io.gfile.makedirs(model_dir)
  return files_lib.atomic_write(os.path.join(model_dir, train_loop.OPERATIVE_CONFIG),
                                gin.operative_config_str())


# ------------------------------------------------------------------- renamed bindings
_ALL = '*'
# (old configurable, old parameter or '*') -> the new binding ('*' keeps the parameter
# name; '<protocol>': the protocol's own), or '-' and why it is no setting any more.
RENAMED = {
    ('build_pretrain_dataset', 'seed'): 'pretrain.seed',
    ('build_pretrain_dataset', 'batch_size'): 'pretrain.global_batch_size',
    ('build_pretrain_dataset', _ALL): 'pretrain_clips.*',
    ('build_classification_dataset', 'label_fraction'): '<protocol>.label_fraction',
    ('build_classification_dataset', 'label_seed'): '<protocol>.label_seed',
    ('build_classification_dataset', 'seed'): '<protocol>.seed',
    ('build_classification_dataset', _ALL): 'train_clips.*',
    ('build_eval_dataset', _ALL): 'test_views.*',
    ('build_backbone', 'input_shape'): '-the protocols choose the input shape',
    ('build_backbone', 'output'): '-the protocols choose the output',
    ('build_backbone', 'model_name'): '-the model name follows encoder.name',
    ('build_backbone', _ALL): 'encoder.*',
    ('ProjectionHead', _ALL): 'projection_head.*',
    ('CVRLPretrainer', 'temperature'): 'pretrain.temperature',
    ('CVRLPretrainer', 'weight_decay'): 'pretrain.weight_decay',
    ('CVRLPretrainer', 'augment_seed'): 'pretrain.seed',
    ('random_flip', 'prob'): 'augmentation.flip_prob',
    ('colour_augment', 'strength'): 'augmentation.colour_strength',
    ('colour_augment', 'probs'): 'augmentation.colour_probs',
    ('colour_augment', 'jitter_ops'): 'augmentation.jitter_ops',
    ('get_strategy', _ALL): 'strategy.*',
    ('LinearClassifier', _ALL): '<protocol>.* (linear_eval / finetune: l2_normalize, '
                                'dropout_rate)',
}
_BINDING = re.compile(r'^\s*(?:([\w.]+)/)?([A-Za-z_][\w.]*)\.(\w+)\s*=')
_INCLUDE = re.compile(r'''^\s*include\s+['"]([^'"]+)['"]''')


def renamed(configurable: str, param: str) -> Optional[str]:
  """The new binding of `configurable.param`, or None if the name did not change."""
  new = RENAMED.get((configurable, param)) or RENAMED.get((configurable, _ALL))
  return None if new is None else new.replace('*', param, 1)


def check_renamed(text: str, where: str) -> None:
  """Raises ConfigError at the first binding in `text` whose name changed, naming the
  new one. where: the file (lines are numbered) or 'the binding ...'."""
  for number, line in enumerate(text.splitlines(), 1):
    match = _BINDING.match(line.split('#', 1)[0])
    if not match:
      continue
    scope, configurable, param = match.groups()
    new = renamed(configurable, param)
    if new:
      old = f'{(scope + "/") if scope else ""}{configurable}.{param}'
      place = f'{where}:{number}' if where.endswith('.gin') else where
      if new.startswith('-'):
        raise ConfigError(f'{place}: {old} is no setting any more ({new[1:]}); remove '
                          f'the binding')
      new = f'{scope}/{new}' if scope and not new.startswith('<') else new
      raise ConfigError(f'{place}: {old} is now {new}; rename the binding '
                        f'(docs/train.md lists the renamed names)')


def included(text: str) -> Sequence[str]:
  """The files a gin file includes, as written."""
  return [m.group(1) for m in map(_INCLUDE.match, text.splitlines()) if m]


class ConfigError(errors.UserError):
  """A gin file or binding the user gave is wrong; the message says which and why."""
