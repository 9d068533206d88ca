"""One strategy per process: `get_strategy` returns the same object for the same request,
refuses a different one clearly, and protocols run back to back under one strategy.

The mirrored checks need 2 logical CPU devices, which can only be configured before
TensorFlow initialises (the pytest process has long done so): they run in a fresh
process, this file run as a script (`python test_strategy_cache.py worker OUT.json`),
which writes what it saw to a JSON file the tests read.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TIMEOUT_S = 540
TINY = """
# float32: toy maps of 1-2 px at res4/res5 diverge in bfloat16; the same on every CPU.
pretrain.mixed_precision = 'float32'
linear_eval.mixed_precision = 'float32'
knn_eval.mixed_precision = 'float32'
strategy.name = 'mirrored'
strategy.num_cpu_devices = 2
encoder.name = 'r3d18'
encoder.width_multiplier = 0.125
encoder.use_sync_bn = True
projection_head.hidden_dim = 16
projection_head.output_dim = 8
projection_head.use_sync_bn = True
pretrain_clips.clip_len = 4
pretrain_clips.crop_size = 32
pretrain_clips.shuffle_buffer = 8
train_clips.clip_len = 4
train_clips.crop_size = 32
train_clips.shuffle_buffer = 8
test_views.clip_len = 4
test_views.num_clips = 1
test_views.num_crops = 1
test_views.min_resize = 32
test_views.crop_size = 32
"""
STEPS = dict(global_batch_size=4, train_steps=2, warmup_epochs=0, checkpoint_every=2,
             log_every=1)


# ------------------------------------------------------------------ subprocess side
def _write_records(root):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from cvrl_tf import records  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  for split, n in (('train', 8), ('test', 4)):
    with tf.io.TFRecordWriter(os.path.join(root, f'{split}-00000-of-00001.tfrecord')) as w:
      for v in range(n):
        frames = rng.randint(0, 255, (8, 40, 48, 3), np.uint8)
        frames[..., v % 2] //= 4  # Two classes, by colour.
        jpegs = [tf.io.encode_jpeg(f).numpy() for f in frames]
        w.write(records.make_sequence_example(
            jpegs, f'{split}{v}', 25.0, 40, 48, label_index=v % 2).SerializeToString())
  return (os.path.join(root, 'train-*.tfrecord'), os.path.join(root, 'test-*.tfrecord'))


def run_worker(out_path: str) -> None:
  """Mirrored over 2 logical CPUs: cache checks, then pretrain -> linear eval -> k-NN."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from cvrl_tf.cli import settings  # pylint: disable=g-import-not-at-top
  from cvrl_tf.runtime import distribute  # pylint: disable=g-import-not-at-top
  gin.parse_config(TINY)
  recipe = lambda name, **fields: dataclasses.replace(settings.build_recipe(name), **fields)
  built = []
  make_mirrored = distribute._mirrored  # pylint: disable=protected-access

  def counting_mirrored(num_cpu_devices):
    built.append(num_cpu_devices)
    return make_mirrored(num_cpu_devices)

  distribute._mirrored = counting_mirrored  # pylint: disable=protected-access
  result = {}
  spec = settings.build_part('strategy')  # From gin.
  strategy = spec.build()  # The first TensorFlow work.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  result['replicas'] = strategy.num_replicas_in_sync
  result['same_explicit'] = distribute.get_strategy('mirrored', num_cpu_devices=2) is strategy
  result['same_gin'] = spec.build() is strategy
  result['same_gin_name'] = distribute.get_strategy('Mirrored', 2) is strategy
  result['default_replicas'] = distribute.get_strategy('default').num_replicas_in_sync
  for name, kwargs in (('mirrored3', dict(name='mirrored', num_cpu_devices=3)),
                       ('mirrored_gpus', dict(name='mirrored', num_cpu_devices=None)),
                       ('tpu', dict(name='tpu'))):
    try:
      distribute.get_strategy(**kwargs)
      result[f'{name}_error'] = None
    except distribute.StrategyError as e:
      result[f'{name}_error'] = str(e)

  root = os.path.dirname(os.path.abspath(out_path))
  train, test = _write_records(root)
  pretrain_dir = os.path.join(root, 'pretrain')
  result['pretrain'] = recipe('pretrain', train_files=train, **STEPS).run(
      pretrain_dir, progress_stream=None)
  linear = recipe('linear_eval', train_files=train, test_files=test, num_classes=2,
                  pretrain_dir=pretrain_dir, eval_batch_size=4, **STEPS).run(
                      os.path.join(root, 'linear'), progress_stream=None)
  result['linear_top1'] = linear['test']['top1']
  result['linear_videos'] = linear['test']['num_videos']
  knn_out = recipe('knn_eval', train_files=train, test_files=test,
                   pretrain_dir=pretrain_dir, ks=(1,), eval_batch_size=4).run(
                       os.path.join(root, 'knn'), progress_stream=None)
  result['knn_test_videos'] = knn_out['num_test_videos']
  result['mirrored_built'] = len(built)
  result['same_after'] = spec.build() is strategy
  assert tf.distribute.get_strategy() is not strategy  # No scope left open.
  with open(out_path, 'w') as f:
    json.dump(result, f)


# ------------------------------------------------------------------- pytest side
@pytest.fixture(scope='module')
def worker(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('strategy_cache')
  out = tmp / 'result.json'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  env.pop('TF_CONFIG', None)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), 'worker', str(out)],
                        cwd=str(tmp), capture_output=True, text=True, timeout=TIMEOUT_S,
                        env=env)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
  return json.loads(out.read_text())


def test_same_arguments_same_strategy_in_process():
  from cvrl_tf.runtime import distribute  # pylint: disable=g-import-not-at-top
  assert distribute.get_strategy('default') is distribute.get_strategy('DEFAULT')
  assert distribute.get_strategy('default').num_replicas_in_sync == 1


def test_mirrored_is_built_once_and_reused(worker):
  assert worker['replicas'] == 2
  assert worker['same_explicit'] and worker['same_gin'] and worker['same_after']
  assert worker['same_gin_name']
  assert worker['default_replicas'] == 1  # 'default' is always available.
  assert worker['mirrored_built'] == 1  # Three protocols, one MirroredStrategy.


def test_a_different_configuration_is_refused_naming_both(worker):
  err = worker['mirrored3_error']
  assert err and "'mirrored' with num_cpu_devices=3" in err, err
  assert "'mirrored' with num_cpu_devices=2" in err, err
  assert 'fresh process' in err
  assert "'mirrored' on all GPUs" in worker['mirrored_gpus_error']
  assert "'tpu'" in worker['tpu_error'] and 'num_cpu_devices=2' in worker['tpu_error']


def test_protocols_run_back_to_back_under_one_mirrored_strategy(worker):
  assert set(worker['pretrain']) >= {'loss', 'contrastive_acc'}
  assert worker['linear_videos'] == 4 and 0.0 <= worker['linear_top1'] <= 1.0
  assert worker['knn_test_videos'] == 4


if __name__ == '__main__':
  if len(sys.argv) != 3 or sys.argv[1] != 'worker':
    sys.exit(f'usage: {sys.argv[0]} worker OUT.json')
  sys.path.insert(0, REPO)
  run_worker(sys.argv[2])
