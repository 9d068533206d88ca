"""Downstream protocols end to end on tiny records: linear eval (online and cached),
fine-tuning / semi-supervised subsets, the multi-view test, k-NN, and source errors.

A toy set whose classes differ in colour (3 classes, 40x48 frames) and a randomly
initialized R3D-18 x0.25 "pretraining run" written with backbone_io: a frozen random
encoder already separates colours, so a linear classifier on it must reach high accuracy.
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf import records
from cvrl_tf.cli import settings
from cvrl_tf.models import backbone_io
from cvrl_tf.models import r3d
from cvrl_tf.protocols import classify
from cvrl_tf.protocols import knn
from cvrl_tf.protocols import multiview
from cvrl_tf.runtime import precision
from cvrl_tf.serving import export

import gin_recipes  # tests/gin_recipes.py

H, W, FRAMES, CLASSES = 40, 48, 8, ('red', 'green', 'blue')
NUM_CLIPS, NUM_CROPS = 2, 3
GIN = f"""
train_clips.clip_len = 4
train_clips.stride = 1
train_clips.crop_size = 32
train_clips.shuffle_buffer = 32
train_clips.cycle_length = 2
test_views.clip_len = 4
test_views.stride = 1
test_views.num_clips = {NUM_CLIPS}
test_views.num_crops = {NUM_CROPS}
test_views.min_resize = 36
test_views.crop_size = 32
"""
# float32: these toy models (maps of 1-2 px at res4/res5, BN over 8 values) diverge in
# bfloat16 within a few steps, and the tests must behave alike on every CPU class.
TRAIN = dict(global_batch_size=8, warmup_epochs=0, checkpoint_every=10, log_every=10,
             eval_batch_size=12, seed=0, mixed_precision='float32')


def _frames(label, rng):
  out = []
  for _ in range(FRAMES):
    frame = rng.integers(0, 90, size=(H, W, 3))
    frame[..., label] += 150
    out.append(tf.io.encode_jpeg(frame.astype(np.uint8), quality=90).numpy())
  return out


def _write(path, videos, rng):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for name, label in videos:
      writer.write(records.make_sequence_example(
          _frames(label, rng), name, 25.0, H, W, label, CLASSES[label]).SerializeToString())


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('downstream')
  rng = np.random.default_rng(0)
  train = [(f'train{i}', i % 3) for i in range(24)]
  for shard in range(2):
    _write(root / f'train-{shard:05d}-of-00002.tfrecord', train[shard::2], rng)
  _write(root / 'test-00000-of-00001.tfrecord', [(f'test{i}', i % 3) for i in range(9)],
         rng)
  records.write_label_map(str(root / 'train_label_map.txt'), CLASSES)
  pretrain = root / 'pretrain'
  spec = dict(name='r3d18', width_multiplier=0.25)
  tf_keras.utils.set_random_seed(0)
  encoder = r3d.build_backbone(**spec)
  backbone_io.save_backbone(encoder, backbone_io.spec_dict(**spec), str(pretrain), 7)
  return {'root': root, 'train': str(root / 'train-*.tfrecord'),
          'test': str(root / 'test-*.tfrecord'), 'pretrain': str(pretrain)}


@pytest.fixture(autouse=True)
def gin_config():
  gin.clear_config()
  gin.parse_config(GIN)
  yield
  gin.clear_config()


def _ckpt_values(prefix, scope):
  reader = tf.train.load_checkpoint(prefix)
  return {name[len(scope):]: reader.get_tensor(name)
          for name, _ in tf.train.list_variables(prefix)
          if name.startswith(scope) and 'OPTIMIZER_SLOT' not in name}


@pytest.fixture(scope='module')
def linear_run(data, tmp_path_factory):
  gin.clear_config()
  gin.parse_config(GIN)
  model_dir = str(tmp_path_factory.mktemp('linear'))
  out = gin_recipes.recipe('linear_eval', train_files=data['train'], test_files=data['test'],
                            num_classes=3, pretrain_dir=data['pretrain'], train_steps=60,
                            learning_rate=32.0, **TRAIN).run(model_dir)
  return model_dir, out


def test_linear_eval_learns_with_a_bit_identical_frozen_encoder(data, linear_run):
  model_dir, out = linear_run
  assert out['test']['top1'] >= 0.85, out['test']
  assert out['test']['views_per_video'] == NUM_CLIPS * NUM_CROPS
  assert out['test']['num_videos'] == 9
  # Every encoder variable, BN moving statistics included, equals the pretrained one.
  pretrained = _ckpt_values(backbone_io.latest_backbone(data['pretrain']), 'encoder/')
  trained = _ckpt_values(tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')),
                         'model/encoder/')
  assert len(trained) == len(pretrained) and any('moving_mean' in k for k in trained)
  for name, value in pretrained.items():
    np.testing.assert_array_equal(trained[name], value, err_msg=name)
  for name in ('eval_results.json', 'confusion_matrix.png', 'eval_predictions.csv',
               'classifier.json', 'run_info.json'):
    assert os.path.exists(os.path.join(model_dir, name)), name
  start = json.load(open(os.path.join(model_dir, 'run_info.json')))['starts'][0]
  assert start['settings']['train_clips']['crop_size'] == 32  # GIN's, as the run used it
  results = json.load(open(os.path.join(model_dir, 'eval_results.json')))
  assert results['class_names'] == list(CLASSES)  # From the label map beside the shards.
  assert set(results['per_class']) == set(CLASSES)
  assert np.sum(results['confusion_matrix']) == 9
  assert results['checkpoint_step'] == 60
  # The precision it ran in, recorded (an explicit one here, see TRAIN).
  assert json.load(open(os.path.join(model_dir, 'classifier.json')))['mixed_precision'] == (
      'float32')
  starts = json.load(open(os.path.join(model_dir, precision.RUN_INFO_FILE)))['starts']
  assert [(s['protocol'], s['precision']['requested'], s['precision']['policy'])
          for s in starts] == [('linear_eval', 'float32', 'float32')]


def test_rerun_resumes_and_evaluate_restores_the_same_model(data, linear_run, capfd):
  model_dir, out = linear_run
  again = gin_recipes.recipe('linear_eval', train_files=data['train'], test_files=data['test'],
                              num_classes=3, pretrain_dir=data['pretrain'], train_steps=60,
                              learning_rate=32.0, **TRAIN).run(model_dir)
  assert 'already evaluated at step 60' in capfd.readouterr().err
  assert again['test']['top1'] == out['test']['top1']
  before = open(os.path.join(model_dir, 'eval_predictions.csv')).read()
  os.remove(os.path.join(model_dir, 'eval_predictions.csv'))
  # evaluate rebuilds the classifier from classifier.json and the latest checkpoint.
  results = gin_recipes.recipe('evaluate', test_files=data['test'],
                               eval_batch_size=12).run(model_dir)
  assert results['top1'] == out['test']['top1'] and results['checkpoint_step'] == 60
  assert open(os.path.join(model_dir, 'eval_predictions.csv')).read() == before
  assert '9/9 videos' in capfd.readouterr().err  # Progress of the evaluation loop.
  with pytest.raises(ValueError, match='different classifier'):
    gin_recipes.recipe('finetune', train_files=data['train'], num_classes=3,
                      pretrain_dir=data['pretrain'], train_steps=1, **TRAIN).run(model_dir)


def test_evaluate_falls_back_to_auto_where_the_trained_precision_is_not_native(
    data, linear_run, tmp_path, capfd, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'copy')
  shutil.copytree(linear_run[0], model_dir)
  info_path = os.path.join(model_dir, 'classifier.json')
  info = json.load(open(info_path))
  info['mixed_precision'] = 'mixed_float16'  # As if trained on a V100; no CPU runs it.
  json.dump(info, open(info_path, 'w'))
  # The same answer on every CPU CI lands on: an AVX2-only machine's facts.
  from cvrl_tf.runtime import hardware  # pylint: disable=g-import-not-at-top
  facts = precision.DeviceFacts(cpu=hardware.CpuInfo('Test CPU', frozenset({'avx2'})))
  monkeypatch.setattr(precision, 'detect_devices', lambda strategy=None: facts)
  results = gin_recipes.recipe('evaluate', test_files=data['test'],
                               eval_batch_size=12).run(model_dir)
  assert 'precision: float32 (auto: CPU Test CPU (AVX2)' in capfd.readouterr().err
  assert results['top1'] == linear_run[1]['test']['top1']  # Trained in float32 really.
  starts = json.load(open(os.path.join(model_dir, precision.RUN_INFO_FILE)))['starts']
  assert (starts[-1]['protocol'], starts[-1]['precision']['requested']) == ('evaluate', 'auto')


def test_multiview_averages_exactly_k_times_3_views_per_video(data):
  """A stub encoder (mean colour of each view) against a per-view NumPy recomputation."""
  stub = lambda clips: tf.reduce_mean(clips, axis=[1, 2, 3])
  views = settings.build_part('test_views')  # GIN's views
  videos = multiview.run_views(tf.distribute.get_strategy(), data['test'], 5, stub, views)
  assert list(videos['num_views']) == [NUM_CLIPS * NUM_CROPS] * 9
  from cvrl_tf.input import pipeline  # pylint: disable=g-import-not-at-top
  per_view = {}
  for batch in pipeline.build_eval_dataset(data['test'], 7, views).as_numpy_iterator():
    for clip, media, view in zip(batch['clips'], batch['media_id'], batch['view_index']):
      per_view.setdefault(media.decode(), {})[int(view)] = clip.mean(axis=(0, 1, 2))
  for media, score, label in zip(videos['media_id'], videos['scores'], videos['label']):
    assert sorted(per_view[media]) == list(range(NUM_CLIPS * NUM_CROPS))
    np.testing.assert_allclose(score, np.mean(list(per_view[media].values()), axis=0),
                               rtol=1e-5)
    assert score.argmax() == label  # The dominant colour is the class.


def test_finetune_semi_supervised_subset_and_changed_encoder(data, tmp_path):
  out = gin_recipes.recipe('finetune', train_files=data['train'], num_classes=3,
                          pretrain_dir=data['pretrain'], train_steps=3, label_fraction=0.25,
                          learning_rate=0.05, **TRAIN).run(str(tmp_path))
  assert out['test'] is None
  subset = json.load(open(tmp_path / 'label_subset.json'))
  # 8 videos per class: max(1, floor(0.25 * 8 + 0.5)) = 2 kept per class.
  labels = []
  for key in subset['keys']:
    path, index = key.split('\n')
    record = list(tf.data.TFRecordDataset(path).skip(int(index)).take(1))[0]
    labels.append(int(records.parse_sequence_example(record)['label']))
  assert subset['num_videos'] == 6 and np.bincount(labels).tolist() == [2, 2, 2]
  pretrained = _ckpt_values(backbone_io.latest_backbone(data['pretrain']), 'encoder/')
  tuned = _ckpt_values(tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')),
                       'model/encoder/')
  changed = [k for k in pretrained if not np.array_equal(pretrained[k], tuned[k])]
  assert any('moving_mean' in k for k in changed)
  assert any('kernel' in k for k in changed)


@pytest.fixture
def deterministic_input():
  """Element order fixed too (not only seeds): at LR 32 a different order of the same
  cached features changes the last-steps training accuracy."""
  gin.bind_parameter('train_clips.deterministic', True)
  yield
  gin.clear_config()


def test_cached_linear_eval_reuses_its_cache(data, tmp_path, capfd, deterministic_input):
  cache = str(tmp_path / 'cache')
  common = dict(train_files=data['train'], num_classes=3, pretrain_dir=data['pretrain'],
                train_steps=60, learning_rate=32.0, cache_features=True, cache_passes=2,
                cache_dir=cache, **TRAIN)
  gin_recipes.recipe('linear_eval', **common).run(str(tmp_path / 'a'))
  err = capfd.readouterr().err
  assert 'feature cache: pass 2/2, 24 clips' in err
  assert os.path.getsize(os.path.join(cache, 'pass-00001.features')) == 24 * 128 * 4
  out = gin_recipes.recipe('linear_eval', **common).run(str(tmp_path / 'b'))
  assert 'feature cache: pass' not in capfd.readouterr().err  # Reused.
  assert out['train']['accuracy'] >= 0.9  # Over the last 10 steps.
  with pytest.raises(ValueError, match='other settings'):
    gin.bind_parameter('train_clips.crop_size', 24)
    gin_recipes.recipe('linear_eval', **common).run(str(tmp_path / 'c'))


def test_knn_eval_on_an_exported_hub_encoder(data, tmp_path):
  encoder = backbone_io.load_backbone(data['pretrain'])
  hub_dir = export.export_encoder(encoder, str(tmp_path / 'hub'), verify=False)
  gin.parse_config('knn_memory/test_views.num_clips = 1')
  out = gin_recipes.recipe('knn_eval', train_files=data['train'], test_files=data['test'],
                    encoder_source='hub', hub_handle=hub_dir, ks=(1, 5),
                    eval_batch_size=12).run(str(tmp_path / 'knn'))
  assert out['results']['1']['top1'] >= 0.85 and out['num_memory_videos'] == 24
  assert out['views']['memory']['num_clips'] == 1 and out['views']['test']['num_clips'] == 2
  saved = json.load(open(tmp_path / 'knn' / 'knn_results.json'))
  assert saved['results'] == out['results'] and saved['class_names'] == list(CLASSES)
  want = precision.choose('auto', precision.detect_devices()).policy
  assert saved['mixed_precision'] == want
  starts = json.load(open(tmp_path / 'knn' / precision.RUN_INFO_FILE))['starts']
  assert [(s['protocol'], s['precision']['policy']) for s in starts] == [('knn_eval', want)]


def test_encoder_source_errors_name_the_problem(data, tmp_path):
  common = dict(train_files=data['train'], num_classes=3, train_steps=1)
  with pytest.raises(FileNotFoundError, match='no backbone found'):
    gin_recipes.recipe('linear_eval', pretrain_dir=str(tmp_path / 'nope'),
                        **common).run(str(tmp_path / 'a'))
  unfinished = tmp_path / 'unfinished' / 'backbone'
  unfinished.mkdir(parents=True)
  (unfinished / 'backbone.json').write_text(json.dumps({'name': 'r3d18'}))
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    gin_recipes.recipe('linear_eval', pretrain_dir=str(unfinished.parent),
                        **common).run(str(tmp_path / 'u'))
  with pytest.raises(ValueError, match='needs pretrain_dir'):
    gin_recipes.recipe('linear_eval', **common).run(str(tmp_path / 'b'))
  with pytest.raises(ValueError, match="name: asked 'r3d50' but stored 'r3d18'"):
    gin.bind_parameter('encoder.name', 'r3d50')
    gin_recipes.recipe('linear_eval', pretrain_dir=data['pretrain'], **common).run(
        str(tmp_path / 'c'))
  with pytest.raises(FileNotFoundError, match='not a SavedModel'):
    gin_recipes.recipe('knn_eval', train_files=data['train'], test_files=data['test'],
                       encoder_source='hub', hub_handle=str(tmp_path)).run(str(tmp_path / 'd'))
  with pytest.raises(ValueError, match='encoder_source must be one of'):
    gin_recipes.recipe('knn_eval', train_files=data['train'], test_files=data['test'],
                encoder_source='imagenet').run(str(tmp_path / 'e'))
  with pytest.raises(FileNotFoundError, match='not the model_dir of a linear_eval'):
    gin_recipes.recipe('evaluate', test_files=data['test']).run(str(tmp_path))


@pytest.mark.parametrize('path, protocol, expected', [
    ('linear_eval_k400.gin', 'linear_eval', dict(learning_rate=32.0, train_epochs=100,
                                                 global_batch_size=1024, num_classes=400)),
    ('linear_eval_k600.gin', 'linear_eval', dict(learning_rate=32.0, num_classes=600)),
    ('finetune_ucf101.gin', 'finetune', dict(num_classes=101, dropout_rate=0.5)),
    ('finetune_hmdb51.gin', 'finetune', dict(num_classes=51, dropout_rate=0.5)),
    ('semi_supervised_k400_1pct.gin', 'finetune', dict(label_fraction=0.01)),
    ('semi_supervised_k400_10pct.gin', 'finetune', dict(label_fraction=0.1)),
    ('demo/linear_eval.gin', 'linear_eval', dict(num_classes=8, cache_features=True)),
    ('demo/knn_eval.gin', 'knn_eval', dict(ks=(5, 1, 20))),
    ('demo/finetune.gin', 'finetune', dict(num_classes=8, dropout_rate=0.5)),
    ('demo/supervised.gin', 'finetune', dict(encoder_source='random', train_steps=500,
                                             dropout_rate=0.0, num_classes=8)),
])
def test_protocol_gin_files(path, protocol, expected):
  from cvrl_tf.cli import gin_files  # pylint: disable=g-import-not-at-top
  gin_files.parse([path], [])  # By name: the shipped configs.
  assert gin.query_parameter('run.experiment').selector == protocol
  for key, value in expected.items():
    assert gin.query_parameter(f'{protocol}.{key}') == value, key
  if not path.startswith('demo/'):  # The paper's test: 10 clips x 3 crops of 256 px.
    assert [gin.query_parameter(f'test_views.{k}') for k in
            ('num_clips', 'num_crops', 'min_resize', 'crop_size', 'clip_len')] == [
                10, 3, 256, 256, 32]


@pytest.mark.parametrize('cache_features', [False, True])
def test_linear_eval_with_deferred_resize_learns(data, tmp_path, cache_features):
  """The paper gin files defer resize + flip to the step (defer='resize', canvas=None):
  the classifier's step (online) and the feature cache finish those batches."""
  gin.bind_parameter('train_clips.defer', 'resize')
  gin.bind_parameter('train_clips.canvas', None)
  gin.bind_parameter('train_clips.deterministic', True)
  out = gin_recipes.recipe('linear_eval', train_files=data['train'], test_files=data['test'],
                            num_classes=3, pretrain_dir=data['pretrain'], train_steps=60,
                            learning_rate=32.0, cache_features=cache_features,
                            cache_passes=2, cache_dir=str(tmp_path / 'cache'),
                            **TRAIN).run(str(tmp_path))
  assert out['train']['accuracy'] >= 0.9
  assert out['test']['top1'] >= 0.8


def test_finetune_with_deferred_resize_runs(data, tmp_path):
  gin.bind_parameter('train_clips.defer', 'resize')
  gin.bind_parameter('train_clips.canvas', None)
  out = gin_recipes.recipe('finetune', train_files=data['train'], num_classes=3,
                          pretrain_dir=data['pretrain'], train_steps=3, learning_rate=0.05,
                          **TRAIN).run(str(tmp_path))
  assert np.isfinite(out['train']['loss'])
