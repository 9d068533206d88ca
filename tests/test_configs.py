"""Configs by name: shipped gin files resolve from any folder (bare, demo/, today's gin/
form), a user's own file wins, includes resolve, --list_configs lists them."""

import os

import gin
import pytest

from cvrl_tf import configs
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import train as train_cli


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """A working directory outside the checkout."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


@pytest.mark.parametrize('name, shipped', [
    ('pretrain.gin', 'pretrain.gin'),
    ('demo/pretrain.gin', 'demo/pretrain.gin'),
    ('gin/pretrain.gin', 'pretrain.gin'),
    ('gin/demo/knn_eval.gin', 'demo/knn_eval.gin'),
])
def test_names_resolve_to_the_shipped_file_from_any_folder(elsewhere, name, shipped):
  resolved = gin_files.resolve(name)
  assert resolved == os.path.join(configs.ROOT, *shipped.split('/'))
  assert os.path.isfile(resolved)


def test_a_users_own_file_wins_then_search_paths(elsewhere):
  (elsewhere / 'pretrain.gin').write_text('pretrain.train_steps = 7\n')
  assert gin_files.resolve('pretrain.gin') == 'pretrain.gin'
  mine = elsewhere / 'mine'
  mine.mkdir()
  (mine / 'demo.gin').write_text('')
  assert gin_files.resolve('demo.gin', [str(mine)]) == os.path.join(str(mine), 'demo.gin')
  # Outside the configs folder nothing is shipped, whatever the name says.
  assert configs.find('../cli/train.py') is None
  assert configs.find(os.path.join(configs.ROOT, 'pretrain.gin')) is None


def test_missing_file_names_where_it_looked(elsewhere):
  with pytest.raises(gin_files.ConfigError, match=r"'nope\.gin' not found.*--list_configs"):
    gin_files.resolve('nope.gin')


def test_shipped_includes_parse_from_another_folder(elsewhere):
  # pretrain_k600.gin includes pretrain.gin; demo/pretrain.gin includes demo/encoder.gin.
  gin_files.parse(['pretrain_k600.gin'], [])
  assert gin.query_parameter('pretrain.global_batch_size') == 1024
  assert gin.query_parameter('%TRAIN_FILES') == '/data/k600/train-*.tfrecord'
  gin_files.parse(['demo/pretrain.gin'], [])
  assert gin.query_parameter('encoder.width_multiplier') == 0.25
  gin.clear_config()


def test_list_configs_names_every_file_with_its_summary():
  on_disk = sorted(os.path.relpath(os.path.join(d, f), configs.ROOT).replace(os.sep, '/')
                   for d, _, fs in os.walk(configs.ROOT) for f in fs if f.endswith('.gin'))
  rows = configs.shipped()
  assert sorted(name for name, _ in rows) == on_disk
  assert len(on_disk) >= 14
  assert all(summary for _, summary in rows)
  text = train_cli.list_configs()
  for name, summary in rows:
    assert f'  {name} ' in text and summary in text
  assert dict(rows)['pretrain.gin'].startswith('CVRL pretraining on Kinetics-400')


def test_first_comment_skips_blank_comment_lines(tmp_path):
  path = tmp_path / 'x.gin'
  path.write_text('#\n#   The summary.\n# more\nfoo.bar = 1\n')
  assert configs.first_comment(str(path)) == 'The summary.'
