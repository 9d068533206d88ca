"""tf.data builders on tiny records written here: shapes, determinism, consistency,
evaluation views, label subsets, bad data and tf.distribute input contexts."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import records
from cvrl_tf.input import bad_examples
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.input import pipeline
from cvrl_tf.input import sampling
from cvrl_tf.input import shards

H, W = 48, 64  # Stored frame size.
CLIP = dict(clip_len=4, stride=2, crop_size=32)


def _timed_frames(length, video):
  """Flat frames whose colour tells (frame index, video): red = 8 t, green = 20 v."""
  frame = np.zeros((H, W, 3), np.uint8)
  out = []
  for t in range(length):
    frame[..., 0], frame[..., 1] = (8 * t) % 256, (20 * video) % 256
    out.append(tf.io.encode_jpeg(frame, quality=95).numpy())
  return out


def _still_frames(length, seed):
  """One textured JPEG repeated: a still scene."""
  rng = np.random.default_rng(seed)
  texture = np.kron(rng.integers(0, 256, size=(H // 8, W // 8, 3)), np.ones((8, 8, 1)))
  return [tf.io.encode_jpeg(texture.astype(np.uint8)).numpy()] * length


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('records')
  lengths = [1, 3, 9, 20, 11, 30]  # Single-frame, short and long videos.
  timed = []
  for shard in range(3):
    examples = []
    for k in range(2):
      v = 2 * shard + k
      fps = 50.0 if v == 5 else 25.0
      examples.append(records.make_sequence_example(
          _timed_frames(lengths[v], v), f'timed{v}', fps, H, W, label_index=v % 2))
    timed.append(_write(root / f'timed-{shard:05d}-of-00003.tfrecord', examples))
  still = [_write(root / f'still-{s:05d}-of-00002.tfrecord',
                  [records.make_sequence_example(_still_frames(12, 2 * s + k),
                                                 f'still{2 * s + k}', 25.0, H, W)
                   for k in range(2)]) for s in range(2)]
  tiny = np.zeros((8, 8, 3), np.uint8)
  jpeg = [tf.io.encode_jpeg(tiny).numpy()]
  labelled = [(c, i) for c, n in enumerate([30, 50, 100]) for i in range(n)]
  labels = [_write(root / f'labels-{s:05d}-of-00004.tfrecord',
                   [records.make_sequence_example(jpeg, f'c{c}_{i}', 25.0, 8, 8, c)
                    for c, i in labelled[s::4]]) for s in range(4)]
  return {'root': root, 'timed': timed, 'still': still, 'labels': labels,
          'lengths': lengths}


def _first(ds):
  return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


@pytest.mark.parametrize('defer', ['none', 'colour', 'resize'])
def test_pretrain_elements(data, defer):
  ds = pipeline.build_pretrain_dataset(data['timed'], 3, seed=3, deterministic=True,
                                       defer=defer, canvas=(H, W), **CLIP)
  batch = _first(ds)
  clips = batch_lib.finish_batch(batch, tf.constant([0, 1]), 32).numpy()
  assert clips.shape == (6, 4, 32, 32, 3) and clips.dtype == np.float32
  assert clips.min() >= 0.0 and clips.max() <= 1.0
  if defer == 'resize':
    assert batch['view1']['crops'].shape == (3, 4, H, W, 3)
    assert batch['view2']['crop_hw'].shape == (3, 2)
  if defer != 'none':  # Views kept apart until finish_batch.
    np.testing.assert_array_equal(batch['view1']['colour_view'], [1, 1, 1])
    np.testing.assert_array_equal(batch['view2']['colour_view'], [2, 2, 2])


@pytest.mark.parametrize('per_frame', [False, True])
def test_no_canvas_pads_to_the_batch_and_gives_the_same_clips(data, per_frame):
  """canvas=None pads deferred crops only to the largest crop of the batch; the finished
  clips equal those of a fixed canvas (same windows: both fit every frame)."""
  build = lambda canvas: _first(pipeline.build_pretrain_dataset(
      data['timed'], 3, seed=5, deterministic=True, defer='resize', canvas=canvas,
      per_frame_augment=per_frame, **CLIP))
  dynamic, fixed = build(None), build((H, W))
  for view in ('view1', 'view2'):
    crop_hw = dynamic[view]['crop_hw'].reshape(-1, 2)
    assert dynamic[view]['crops'].shape[2:4] == (
        (H, W) if per_frame else tuple(crop_hw.max(axis=0)))
    np.testing.assert_array_equal(crop_hw.reshape(-1), fixed[view]['crop_hw'].reshape(-1))
  seed = tf.constant([4, 2])
  np.testing.assert_array_equal(batch_lib.finish_batch(dynamic, seed, 32).numpy(),
                                batch_lib.finish_batch(fixed, seed, 32).numpy())


def test_pretrain_determinism(data):
  build = lambda seed: _first(pipeline.build_pretrain_dataset(
      data['timed'], 3, seed=seed, deterministic=True, defer='colour', **CLIP))
  batch = build(3)['view1']['clips']
  np.testing.assert_array_equal(batch, build(3)['view1']['clips'])
  assert not np.array_equal(batch, build(4)['view1']['clips'])


def test_views_come_from_the_same_video_in_batch_order(data):
  ds = pipeline.build_pretrain_dataset(data['timed'], 4, seed=0, deterministic=True,
                                       defer='colour', output_dtype='uint8', **CLIP)
  views = _first(ds)  # Geometry only: green still encodes the video.
  video = lambda v: np.round(views[v]['clips'][..., 1].mean(axis=(1, 2, 3)) / 20)
  np.testing.assert_array_equal(video('view1'), video('view2'))


def test_still_scene_stays_still_only_with_consistent_augmentation(data):
  def frame_spread(defer, per_frame):
    ds = pipeline.build_pretrain_dataset(data['still'], 4, seed=1, deterministic=True,
                                         defer=defer, per_frame_augment=per_frame,
                                         canvas=(H, W), **CLIP)
    clips = batch_lib.finish_batch(_first(ds), tf.constant([2, 3]), 32).numpy()
    return np.abs(clips - clips[:, :1]).max(axis=(1, 2, 3, 4))

  np.testing.assert_allclose(frame_spread('resize', False), 0.0, atol=1e-6)
  assert (frame_spread('resize', True) > 0.02).sum() >= 6
  assert (frame_spread('none', True) > 0.02).sum() >= 6  # All done in tf.data.


def test_classification_clip_label_and_uint8(data):
  ds = pipeline.build_classification_dataset(data['timed'], 4, seed=0, deterministic=True,
                                             output_dtype='uint8', **CLIP)
  batch = _first(ds)
  assert batch['clips'].shape == (4, 4, 32, 32, 3) and batch['clips'].dtype == np.uint8
  video = np.round(batch['clips'][:, 0, 0, 0, 1] / 20.0).astype(int)
  np.testing.assert_array_equal(batch['label'], video % 2)  # Labels travel with clips.


def test_eval_views_are_deterministic_and_cover_each_video(data):
  ds = pipeline.build_eval_dataset(data['timed'], 5, num_clips=3, num_crops=3,
                                   min_resize=H, target_fps=25.0, **CLIP)
  batches = [{k: v.numpy() for k, v in b.items()} for b in ds]
  again = [{k: v.numpy() for k, v in b.items()} for b in ds]
  views = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for key in views:
    np.testing.assert_array_equal(views[key], np.concatenate([b[key] for b in again]))
  assert len(views['clips']) == 6 * 9 and views['clips'].shape[1:] == (4, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(views['video_index']), [9] * 6)
  for index in range(6):
    mine = views['video_index'] == index
    np.testing.assert_array_equal(views['view_index'][mine], np.arange(9))
    video = int(round(views['clips'][mine][0, 0, 0, 0, 1] * 255 / 20))
    assert views['media_id'][mine][0].decode() == f'timed{video}'
    assert (views['label'][mine] == video % 2).all()
    stride = 4 if video == 5 else 2  # Video 5 is stored at 50 fps.
    length = data['lengths'][video]
    expected = sampling.eval_indices(length, 4, stride, 3).numpy()
    red = np.round(views['clips'][mine][::3, :, 16, 16, 0] * 255 / 8).astype(int)
    np.testing.assert_array_equal(red, expected % 32)  # 8 t wraps at 256.


def test_eval_crops_are_left_centre_right(data):
  ds = pipeline.build_eval_dataset(data['still'][:1], 3, clip_len=4, stride=2,
                                   num_clips=1, num_crops=3, min_resize=H, crop_size=H,
                                   need_label=False)
  clips = next(iter(ds))['clips'].numpy()
  frame = tf.io.decode_jpeg(_still_frames(1, 0)[0]).numpy() / 255.0
  for crop, x in zip(clips, [0, (W - H) // 2, W - H]):
    np.testing.assert_allclose(crop[0], frame[:, x:x + H], atol=1e-6)


def test_label_subset_is_per_class_sized_nested_and_stable(data):
  def counts(keys):
    ds = shards.read_records(data['labels'], False, False, None, 4, True)
    ds = shards.filter_keys(ds, keys)
    labels = [records.parse_sequence_example(r)['label'].numpy() for _, _, r in ds]
    return np.bincount(labels, minlength=3)

  ten = shards.label_subset_keys(data['labels'], 0.1, seed=0)
  one = shards.label_subset_keys(data['labels'], 0.01, seed=0)
  np.testing.assert_array_equal(counts(ten), [3, 5, 10])
  np.testing.assert_array_equal(counts(one), [1, 1, 1])  # At least one per class.
  assert set(one) <= set(ten)
  assert ten == shards.label_subset_keys(list(reversed(data['labels'])), 0.1, seed=0)
  assert ten != shards.label_subset_keys(data['labels'], 0.1, seed=1)
  ds = pipeline.build_classification_dataset(data['labels'], 12, clip_len=1, stride=1,
                                             crop_size=8, label_fraction=0.01, seed=0,
                                             deterministic=True)
  assert set(_first(ds)['label']) == {0, 1, 2}  # The 3 chosen videos, repeated.


def test_bad_data_errors_name_the_file(data):
  root = data['root']
  with pytest.raises(ValueError, match='nothing-here'):
    pipeline.build_pretrain_dataset(str(root / 'nothing-here*.tfrecord'), 2, **CLIP)
  junk = root / 'junk.tfrecord'
  junk.write_text('this is not a TFRecord file, but it is long enough')
  with pytest.raises(ValueError, match='junk.tfrecord'):
    pipeline.build_pretrain_dataset([data['timed'][0], str(junk)], 2, **CLIP)

  # Records that cannot be used are skipped and named (tests/test_bad_examples.py); a
  # set of nothing else ends the stream at the limit, naming the count.
  empty = tf.train.SequenceExample()
  empty.context.feature[records.MEDIA_ID_KEY].bytes_list.value.append(b'no_frames')
  bad = _write(root / 'noframes.tfrecord', [empty])
  tracker = bad_examples.BadExamples(None, 'pretrain', bad_examples.Limit(), False, None)
  ds = pipeline.build_pretrain_dataset(bad, 1, seed=0, deterministic=True,
                                       bad_examples=tracker, **CLIP)
  with pytest.raises(StopIteration):
    next(iter(ds))
  assert [(e['shard'], e['media_id']) for e in tracker.examples] == [(bad, 'no_frames')]
  assert tracker.bad_reads == 11 and '11 of 11 examples' in str(tracker.error)
  tracker = bad_examples.BadExamples(None, 'train', bad_examples.Limit(), True, None)
  ds = pipeline.build_classification_dataset(data['still'], 1, seed=0,
                                             bad_examples=tracker, **CLIP)
  with pytest.raises(StopIteration):
    next(iter(ds))  # Unlabelled records in a classification set.
  assert {e['reason'] for e in tracker.examples} == {
      'no label (clip/label/index missing or < 0)'}
  with pytest.raises(ValueError, match='defer'):
    pipeline.build_pretrain_dataset(data['timed'], 2, defer='later', **CLIP)


def test_input_pipelines_shard_files_and_eval_indices(data):
  seen = []
  for i in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                     num_replicas_in_sync=2)
    ds = pipeline.build_eval_dataset(data['labels'][:2], 8, num_clips=1, num_crops=1,
                                     clip_len=1, stride=1, min_resize=8, crop_size=8,
                                     input_context=ctx)
    batch = next(iter(ds))
    assert batch['clips'].shape[0] == 4  # Per-replica batch: 8 / 2.
    seen.append({(m, int(v)) for b in ds for m, v in zip(b['media_id'].numpy(),
                                                          b['video_index'].numpy())})
  assert not {m for m, _ in seen[0]} & {m for m, _ in seen[1]}  # Disjoint files.
  indices = sorted(v for s in seen for _, v in s)
  assert indices == list(range(len(indices)))  # Unique and dense across pipelines.


def test_mirrored_strategy_per_replica_batch(data):
  script = textwrap.dedent(f'''
      import tensorflow as tf
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      from cvrl_tf.input import pipeline
      strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
      ds = strategy.distribute_datasets_from_function(
          lambda ctx: pipeline.build_pretrain_dataset(
              {data['timed']!r}, 4, clip_len=4, stride=2, crop_size=32, seed=0,
              input_context=ctx))
      batch = next(iter(ds))
      shapes = [tuple(t.shape) for t in strategy.experimental_local_results(batch['clips'])]
      print('SHAPES', strategy.num_replicas_in_sync, shapes)
  ''')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'SHAPES 2 [(4, 4, 32, 32, 3), (4, 4, 32, 32, 3)]' in result.stdout
