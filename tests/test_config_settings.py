"""Every shipped gin file sets what it set before settings became typed objects, and the
binding names that changed fail in one line naming the new one.

tests/data/shipped_config_settings.json was taken from the code before the change: for
each shipped file, every old configurable's effective arguments (its defaults, then the
bindings; scoped views too) and which of them the file bound. Here each file is parsed
and its recipe built (cli/settings.py); every old argument is looked up in the built
objects under its new name (settings.RENAMED) and must be equal.
"""

import dataclasses
import json
import os

import pytest

from cvrl_tf import configs
from cvrl_tf import files as files_lib
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import settings

HERE = os.path.dirname(__file__)
BEFORE = json.load(open(os.path.join(HERE, 'data', 'shipped_config_settings.json')))
# Old arguments that were never settings: the protocols passed them (or they were
# runtime objects), so no shipped file may bind them; they have no new home to compare.
NOT_SETTINGS = {('build_pretrain_dataset', 'seed'), ('build_classification_dataset', 'seed'),
                ('build_classification_dataset', 'label_fraction'),
                ('build_classification_dataset', 'label_seed'),
                ('CVRLPretrainer', 'crop_size'), ('CVRLPretrainer', 'augment_seed'),
                ('cvrl_optimizer', 'warmup_steps'), ('cvrl_optimizer', 'global_batch_size')}


def _new_place(old: str, param: str):
  """(scope, gin name, field path) of an old configurable's argument."""
  scope, _, configurable = old.rpartition('/')
  new = settings.renamed(configurable, param) or f'{configurable}.{param}'
  name, _, path = new.partition('.')
  return scope, name, path


def _value(obj, path: str):
  for part in path.split('.'):
    obj = getattr(obj, part)
  return files_lib.normalized(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj)
                              else obj)


def _protocol_files():
  return [name for name, entry in sorted(BEFORE.items()) if '__protocol__' in entry]


def test_snapshot_covers_every_file_shipped_before():
  shipped = {name for name, _ in configs.shipped()}
  assert set(BEFORE) <= shipped


@pytest.mark.parametrize('config_name', sorted(
    name for name, _ in configs.shipped() if name not in BEFORE))
def test_files_shipped_since_build_their_recipes(config_name):
  """Files added after the snapshot: parsed (renamed names would fail) and, for a
  protocol file, its recipe built."""
  gin_files.parse([config_name], [])
  try:
    protocol = settings.protocol_of_config()
  except ValueError:
    return  # A file of parts only (e.g. an encoder), included by protocol files.
  assert dataclasses.is_dataclass(settings.build_recipe(protocol))


@pytest.mark.parametrize('config_name', _protocol_files())
def test_shipped_config_settings_unchanged(config_name):
  before = BEFORE[config_name]
  protocol = before['__protocol__']
  gin_files.parse([config_name], [])
  built = {}
  recipe = settings.build_recipe(protocol, built)
  # The protocol's own fields: every old one, same value (new fields are the parts).
  new_fields = files_lib.normalized(dataclasses.asdict(recipe))
  for field, value in before[protocol].items():
    assert new_fields[field] == value, (config_name, protocol, field)
  compared = 0
  for old, arguments in before.items():
    if old.startswith('__') or old in settings.PROTOCOLS:
      continue
    for param, value in arguments.items():
      scope_name, _, configurable = old.rpartition('/')
      bound = param in before['__bound__'].get(old, [])
      if scope_name:  # The old snapshot's scoped bindings include the unscoped ones.
        bound = bound and param not in before['__bound__'].get(configurable, [])
      if (configurable, param) in NOT_SETTINGS or (
          settings.renamed(configurable, param) or '').startswith('-'):
        assert not bound, f'{config_name} binds {old}.{param}, which has no new home'
        continue
      scope, name, path = _new_place(old, param)
      if name == '<protocol>':
        name, scope = protocol, ''
      holder = built.get((scope, name))
      if holder is None:
        # Not a part of this protocol (e.g. pretrain_clips in linear_eval); then the
        # file must not have bound it either, or the binding would be lost.
        assert not bound, f'{config_name}: {old}.{param} is bound but unused'
        continue
      assert _value(holder, path) == value, (config_name, old, param)
      compared += 1
  assert compared > 10


def test_knn_memory_views_keep_their_own_bindings():
  gin_files.parse(['demo/knn_eval.gin'], ['knn_memory/test_views.num_clips = 2'])
  recipe = settings.build_recipe('knn_eval')
  assert recipe.test_views.num_clips == 4 and recipe.memory_views.num_clips == 2
  assert recipe.memory_views.crop_size == recipe.test_views.crop_size == 32


def test_planted_change_is_caught():
  """The comparison fails when a shipped value changes (here: the demo's crop size)."""
  gin_files.parse(['demo/pretrain.gin'], ['pretrain_clips.crop_size = 48'])
  built = {}
  settings.build_recipe('pretrain', built)
  before = BEFORE['demo/pretrain.gin']['build_pretrain_dataset']['crop_size']
  assert _value(built[('', 'pretrain_clips')], 'crop_size') != before


@pytest.mark.parametrize('binding,new', [
    ("build_pretrain_dataset.crop_size = 32", 'pretrain_clips.crop_size'),
    ("knn_monitor/build_eval_dataset.num_clips = 1", 'knn_monitor/test_views.num_clips'),
    ("random_flip.prob = 0.0", 'augmentation.flip_prob'),
    ("get_strategy.name = 'mirrored'", 'strategy.name'),
    ("CVRLPretrainer.temperature = 0.2", 'pretrain.temperature'),
])
def test_renamed_binding_names_the_new_one(binding, new):
  with pytest.raises(settings.ConfigError) as info:
    gin_files.parse(['demo/pretrain.gin'], [binding])
  message = str(info.value)
  assert '\n' not in message and f'is now {new};' in message and binding in message


def test_renamed_binding_in_a_file_names_file_and_line(tmp_path):
  path = tmp_path / 'old.gin'
  path.write_text("include 'demo/pretrain.gin'\n\n# old name:\nbuild_backbone.name = 'r3d18'\n")
  with pytest.raises(settings.ConfigError, match=rf'{path}:4: build_backbone.name is now '
                     r'encoder.name;'):
    gin_files.parse([str(path)], [])


def test_encoder_bindings_on_a_stored_backbone_change_only_what_they_bind(tmp_path):
  """linear_eval on a run's backbone with only encoder.kernel_gradient bound: the stored
  architecture with that one change (no contradiction); a bound architecture field that
  differs from the stored one stays a contradiction for the protocol to refuse."""
  from cvrl_tf.models import backbone_io  # pylint: disable=g-import-not-at-top
  stored = dict(name='r3d18', width_multiplier=0.25, stem_kernel=(3, 7, 7))
  run = tmp_path / 'run' / 'backbone'
  run.mkdir(parents=True)
  (run / 'backbone.json').write_text(json.dumps(backbone_io.spec_dict(**stored)))
  bindings = [f"linear_eval.pretrain_dir='{tmp_path / 'run'}'"]
  gin_files.parse(['linear_eval_k400.gin'], bindings + ["encoder.kernel_gradient='conv'"])
  encoder = settings.build_recipe('linear_eval').encoder
  assert (encoder.name, encoder.width_multiplier, encoder.stem_kernel) == (
      'r3d18', 0.25, (3, 7, 7))
  assert encoder.kernel_gradient == 'conv'
  gin_files.parse(['linear_eval_k400.gin'], bindings + ["encoder.name='r3d50'"])
  encoder = settings.build_recipe('linear_eval').encoder
  assert (encoder.name, encoder.width_multiplier) == ('r3d50', 0.25)  # Refused later.
  gin_files.parse(['linear_eval_k400.gin'], bindings)
  assert settings.build_recipe('linear_eval').encoder is None  # Nothing bound: none.
