"""The online k-NN monitor: at step 0, every N steps and at the end, in TensorBoard and
on the progress line, with the numbers knn_eval gives on the same weights and views."""

import io
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import records
from cvrl_tf.cli import gin_files
from cvrl_tf.demo import report
from cvrl_tf.protocols import knn
from cvrl_tf.protocols import knn_monitor
from cvrl_tf.protocols import pretrain

import gin_recipes  # tests/gin_recipes.py

TINY = ["encoder.name='r3d18'", 'encoder.width_multiplier=0.125',
        'pretrain_clips.clip_len=4', 'pretrain_clips.crop_size=32',
        'pretrain_clips.shuffle_buffer=8', 'projection_head.hidden_dim=16',
        'projection_head.output_dim=8', 'pretrain.global_batch_size=4',
        'pretrain.warmup_epochs=0', 'pretrain.log_every=100', 'pretrain.seed=0',
        "pretrain.mixed_precision='float32'"]
VIEWS = ['clip_len=4', 'stride=2', 'num_clips=2', 'num_crops=1', 'min_resize=32',
         'crop_size=32']


TINTS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.float32)


def _shard(path, num_videos, seed, tint=0.12):
  """Noise videos of 4 classes, faintly tinted by class: k-NN top-1 lands between
  chance and 100% and moves with the weights, so equal numbers mean equal features."""
  rng = np.random.RandomState(seed)
  with tf.io.TFRecordWriter(path) as w:
    for v in range(num_videos):
      noise = rng.randint(0, 255, (10, 36, 40, 3)).astype(np.float32)
      frames = ((1 - tint) * noise + tint * TINTS[v % 4]).astype(np.uint8)
      jpegs = [tf.io.encode_jpeg(f).numpy() for f in frames]
      w.write(records.make_sequence_example(jpegs, f'v{seed}-{v}', 25.0, 36, 40,
                                            label_index=v % 4).SerializeToString())
  return path


def test_monitor_reports_what_knn_eval_measures(tmp_path):
  train = _shard(str(tmp_path / 'train-00000-of-00001.tfrecord'), 12, 0)
  test = _shard(str(tmp_path / 'test-00000-of-00001.tfrecord'), 12, 1)
  run = str(tmp_path / 'run')
  gin_files.parse(['demo/pretrain.gin'], TINY + [
      f"pretrain.train_files='{train}'", 'pretrain.train_steps=4',
      f"knn_monitor.train_files='{train}'", f"knn_monitor.test_files='{test}'",
      'knn_monitor.every_steps=2', 'knn_monitor.k=3', 'knn_monitor.num_classes=4'] +
      [f'knn_monitor/test_views.{v}' for v in VIEWS])
  stream = io.StringIO()
  gin_recipes.recipe('pretrain').run(run, progress_stream=stream)  # Its fields from the bindings.
  steps, top1 = report.read_scalars(os.path.join(run, 'summaries'), 'knn_top1')
  np.testing.assert_array_equal(steps, [0, 2, 4])
  lines = [l for l in stream.getvalue().splitlines() if 'knn_top1=' in l]
  assert [l.split()[1].split('/')[0] for l in lines] == ['0', '2', '4'], stream.getvalue()
  # knn_eval on the weights pretraining saved (those of step 4), the same views.
  gin_files.parse(['demo/knn_eval.gin'], [
      f"knn_eval.pretrain_dir='{run}'", f"knn_eval.train_files='{train}'",
      f"knn_eval.test_files='{test}'", 'knn_eval.label_map_file=None', 'knn_eval.ks=(3,)',
      'knn_eval.num_classes=4', "knn_eval.mixed_precision='float32'"] +
      [f'test_views.{v}' for v in VIEWS] +
      [f'knn_memory/test_views.{v}' for v in VIEWS])
  results = gin_recipes.recipe('knn_eval').run(str(tmp_path / 'knn'), progress_stream=None)
  assert top1[-1] == pytest.approx(results['results']['3']['top1'], abs=1e-6)
  gin.clear_config()


def test_monitor_is_off_unless_both_sets_are_given(tmp_path):
  shard = _shard(str(tmp_path / 'x-00000-of-00001.tfrecord'), 1, 0)
  monitor = knn_monitor.KnnMonitorRecipe
  assert knn_monitor.monitors(monitor(), encoder=None, strategy=None) == []
  assert knn_monitor.monitors(monitor(train_files='a'), encoder=None, strategy=None) == []
  with pytest.raises(ValueError, match="'a' matches no file"):  # Before any training.
    knn_monitor.monitors(monitor(train_files='a', test_files='b'), None, None)
  with pytest.raises(ValueError, match='every_steps'):
    knn_monitor.monitors(monitor(train_files=shard, test_files=shard, every_steps=0),
                         None, None)
