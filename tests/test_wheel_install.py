"""A non-editable wheel install runs `cvrl_train --gin_file=pretrain.gin` from another
folder: the gin files ship as package data and resolve by name; the start is quiet."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import records
from test_quiet import error_lines

pytest.importorskip('setuptools')
pytest.importorskip('wheel')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["encoder.name='r3d18'", 'encoder.width_multiplier=0.125',
        'pretrain_clips.clip_len=4', 'pretrain_clips.crop_size=32',
        'pretrain_clips.shuffle_buffer=8', 'projection_head.hidden_dim=16',
        'projection_head.output_dim=8', 'pretrain.global_batch_size=4',
        'pretrain.train_steps=1', 'pretrain.warmup_epochs=0']


def _pip(*args, cwd):
  result = subprocess.run([sys.executable, '-m', 'pip', *args, '--no-deps', '-q',
                           '--disable-pip-version-check'], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """The project built as a wheel (from a copy: the build writes build/ and egg-info)
  and installed into a folder of its own."""
  root = tmp_path_factory.mktemp('wheel')
  src = root / 'src'
  shutil.copytree(os.path.join(REPO, 'cvrl_tf'), src / 'cvrl_tf',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), src / name)
  _pip('wheel', '--no-build-isolation', '-w', str(root / 'dist'), str(src), cwd=root)
  wheel, = (root / 'dist').glob('cvrl_tf-*.whl')
  _pip('install', '--target', str(root / 'site'), str(wheel), cwd=root)
  shutil.rmtree(src)
  elsewhere = root / 'elsewhere'
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(root / 'site'))
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  env.pop('TF_USE_LEGACY_KERAS', None)  # A fresh user environment (conftest.py sets it).
  return dict(site=root / 'site', cwd=elsewhere, env=env)


def _python(installed, code):
  return subprocess.run([sys.executable, '-c', code], cwd=installed['cwd'],
                        env=installed['env'], capture_output=True, text=True, timeout=120)


def test_every_shipped_config_parses_from_the_install(installed):
  result = _python(installed, (
      'import cvrl_tf, gin\n'
      'from cvrl_tf import configs\n'
      'from cvrl_tf.cli import gin_files\n'
      'print(cvrl_tf.__file__)\n'
      'for name, _ in configs.shipped():\n'
      '  gin_files.parse([name], [])\n'
      '  bound = "run.experiment" in gin.config_str()\n'
      '  print(name, gin.query_parameter("run.experiment").selector if bound else "-")\n'))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith(str(installed['site'])), lines[0]  # Not the checkout's.
  parsed = dict(line.split() for line in lines[1:])
  assert parsed['pretrain.gin'] == 'pretrain'
  assert parsed['demo/linear_eval.gin'] == 'linear_eval'
  assert parsed['demo/encoder.gin'] == '-'  # Bindings of the encoder only.
  assert len(parsed) >= 14


def test_cvrl_train_pretrains_from_another_folder(installed, tmp_path):
  shards = tmp_path / 'train-00000-of-00001.tfrecord'
  rng = np.random.RandomState(0)
  with tf.io.TFRecordWriter(str(shards)) as w:
    for v in range(8):
      jpegs = [tf.io.encode_jpeg(f).numpy()
               for f in rng.randint(0, 255, (12, 40, 48, 3), np.uint8)]
      w.write(records.make_sequence_example(jpegs, f'v{v}', 25.0, 40, 48)
              .SerializeToString())
  model_dir = tmp_path / 'run'
  script = installed['site'] / 'bin' / 'cvrl_train'  # The console script pip wrote.
  result = subprocess.run(
      [sys.executable, str(script), '--gin_file=pretrain.gin', f'--model_dir={model_dir}',
       f"--gin_bindings=TRAIN_FILES='{tmp_path}/train-*.tfrecord'"] +
      [f'--gin_bindings={b}' for b in TINY],
      cwd=installed['cwd'], env=installed['env'], capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 1/1' in result.stderr
  assert not error_lines(result.stderr), result.stderr
  assert (model_dir / 'backbone' / 'backbone.json').exists()
  config = (model_dir / 'operative_config.gin').read_text()
  assert 'pretrain.global_batch_size = 4' in config
