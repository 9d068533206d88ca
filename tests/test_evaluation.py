"""protocols/collection.py, metrics.py and reports.py against independent NumPy references:
view aggregation, top-k, per-class accuracy, confusion matrix, cosine k-NN, padding for
replicas, outputs."""

import json

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import files
from cvrl_tf.input import sources
from cvrl_tf.protocols import collection
from cvrl_tf.protocols import metrics
from cvrl_tf.protocols import reports


# ------------------------------------------------------------------------- aggregation
def test_accumulator_averages_every_view_of_each_video():
  rng = np.random.default_rng(0)
  views, videos = 6, 5
  outputs = rng.random((videos * views, 4)).astype(np.float32)
  video_index = np.repeat(np.arange(videos) * 7 + 3, views)  # Non-contiguous indices.
  labels = np.repeat(np.arange(videos) % 3, views)
  view_index = np.tile(np.arange(views), videos)
  order = rng.permutation(len(outputs))  # Views arrive in any order, in any batches.
  acc = collection.ViewAccumulator(expected_views=views)
  completed = 0
  for chunk in np.array_split(order, 4):
    completed += acc.add(outputs[chunk], video_index[chunk], labels[chunk],
                         [b'v%d' % v for v in video_index[chunk]], view_index[chunk])
  assert completed == videos
  out = acc.result()
  np.testing.assert_array_equal(out['video_index'], np.arange(videos) * 7 + 3)
  np.testing.assert_array_equal(out['num_views'], [views] * videos)
  np.testing.assert_array_equal(out['label'], np.arange(videos) % 3)
  assert list(out['media_id']) == ['v%d' % v for v in out['video_index']]
  expected = outputs.reshape(videos, views, 4).mean(axis=1)
  np.testing.assert_allclose(out['scores'], expected, rtol=1e-6)


def test_accumulator_rejects_missing_duplicated_and_inconsistent_views():
  acc = collection.ViewAccumulator(expected_views=3)
  acc.add(np.ones((3, 2)), [0, 0, 1], [1, 1, 0], None, [0, 1, 0])
  with pytest.raises(ValueError, match='got 2 views'):
    acc.result()
  acc = collection.ViewAccumulator(expected_views=2)
  acc.add(np.ones((2, 2)), [0, 0], [1, 1], None, [0, 0])
  with pytest.raises(ValueError, match='duplicated'):
    acc.result()
  with pytest.raises(ValueError, match='different labels'):
    collection.ViewAccumulator(2).add(np.ones((2, 2)), [0, 0], [1, 2], None, [0, 1])
  acc = collection.ViewAccumulator(2)
  acc.add(np.ones((2, 2)), [-1, -1], [-1, -1], None, [0, 0])  # Padding only.
  with pytest.raises(ValueError, match='no views'):
    acc.result()


def test_pad_for_replicas_fills_batches_and_steps():
  views = {'clips': np.arange(7 * 2, dtype=np.float32).reshape(7, 2),
           'label': np.arange(7), 'video_index': np.arange(7) // 3,
           'view_index': np.arange(7, dtype=np.int32) % 3,
           'media_id': np.array([b'm%d' % (i // 3) for i in range(7)])}
  ds = tf.data.Dataset.from_tensor_slices(views).batch(2)  # 4 batches: 2, 2, 2, 1.
  padded = list(collection.pad_for_replicas(ds, 2, replicas_per_pipeline=3)
                .as_numpy_iterator())
  assert len(padded) == 6  # 4 batches -> 2 steps of 3 replicas.
  assert all(b['clips'].shape == (2, 2) for b in padded)
  flat = {k: np.concatenate([b[k] for b in padded]) for k in views}
  real = flat['video_index'] >= 0
  assert real.sum() == 7
  np.testing.assert_array_equal(flat['clips'][real], views['clips'])
  assert set(flat['label'][~real]) == {-1} and set(flat['media_id'][~real]) == {b''}


# ------------------------------------------------------------------------- metrics
def _reference_metrics(scores, labels, num_classes):
  ranking = np.argsort(-scores, axis=1)
  top1 = np.mean(ranking[:, 0] == labels)
  top5 = np.mean([labels[i] in ranking[i, :5] for i in range(len(labels))])
  cm = np.zeros((num_classes, num_classes), np.int64)
  for t, p in zip(labels, ranking[:, 0]):
    cm[t, p] += 1
  per_class = []
  for c in range(num_classes):
    mine = labels == c
    per_class.append(np.mean(ranking[mine, 0] == c) if mine.any() else np.nan)
  return top1, top5, cm, np.array(per_class)


def test_classification_metrics_match_numpy_reference():
  rng = np.random.default_rng(1)
  num_classes, n = 9, 200
  labels = rng.integers(0, num_classes - 1, n)  # The last class has no video.
  scores = rng.random((n, num_classes)) + 0.6 * np.eye(num_classes)[labels]
  got = metrics.classification_metrics(scores, labels, num_classes)
  top1, top5, cm, per_class = _reference_metrics(scores, labels, num_classes)
  assert got['top1'] == pytest.approx(top1)
  assert got['top5'] == pytest.approx(top5)
  assert 0 < top1 < top5 < 1
  np.testing.assert_array_equal(got['confusion'], cm)
  np.testing.assert_allclose(got['per_class_accuracy'], per_class)
  assert np.isnan(got['per_class_accuracy'][-1])
  assert got['mean_class_accuracy'] == pytest.approx(np.nanmean(per_class))
  np.testing.assert_array_equal(got['per_class_count'], np.bincount(labels, minlength=9))
  with pytest.raises(ValueError, match='num_classes'):
    metrics.classification_metrics(scores, labels + 5, num_classes)


# ------------------------------------------------------------------------- k-NN
def _reference_knn(memory, memory_labels, queries, k, num_classes, vote, temperature):
  memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  out = []
  for q in queries:
    sims = memory @ q
    nn = sorted(range(len(memory)), key=lambda i: (-sims[i], i))[:k]
    best, best_key = None, None
    for c in range(num_classes):
      members = [i for i in nn if memory_labels[i] == c]
      if vote == 'weighted':
        key = (sum(np.exp(sims[i] / temperature) for i in members),)
      else:
        key = (len(members), sum(sims[i] for i in members) if members else -np.inf)
      if best_key is None or key > best_key:
        best, best_key = c, key
    out.append(best)
  return np.array(out)


@pytest.mark.parametrize('vote', ['weighted', 'majority'])
def test_knn_matches_numpy_reference(vote):
  rng = np.random.default_rng(2)
  num_classes = 4
  centres = rng.normal(size=(num_classes, 16))
  memory_labels = rng.integers(0, num_classes, 120)
  memory = centres[memory_labels] + 1.2 * rng.normal(size=(120, 16))
  query_labels = rng.integers(0, num_classes, 40)
  queries = centres[query_labels] + 1.2 * rng.normal(size=(40, 16))
  got = metrics.knn_classify(memory, memory_labels, queries, ks=(1, 5, 20),
                                num_classes=num_classes, vote=vote, temperature=0.1,
                                max_block=120 * 7)  # Several query chunks.
  for k in (1, 5, 20):
    expected = _reference_knn(memory, memory_labels, queries, k, num_classes, vote, 0.1)
    np.testing.assert_array_equal(got[k], expected, err_msg=f'k={k}')
  assert np.mean(got[20] == query_labels) > 0.5


def test_knn_k_larger_than_memory_and_bad_vote():
  memory = np.eye(3, dtype=np.float32)
  got = metrics.knn_classify(memory, [0, 1, 1], np.array([[1.0, 0.1, 0.0]]), ks=(1, 5),
                                vote='majority')
  assert got[1][0] == 0 and got[5][0] == 1  # k=5 uses all 3: class 1 has 2 votes.
  with pytest.raises(ValueError, match='vote'):
    metrics.knn_classify(memory, [0, 1, 1], memory, vote='mean')


# ------------------------------------------------------------------------- outputs
def test_outputs_png_json_csv_and_class_names(tmp_path):
  cm = np.array([[3, 1], [0, 4]])
  png = reports.plot_confusion_matrix(cm, ['a', 'b'], str(tmp_path / 'cm.png'), 't')
  assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  path = files.write_json(str(tmp_path / 'r.json'),
                          {'x': np.float32(0.5), 'cm': cm, 'nan': None})
  assert json.load(open(path)) == {'x': 0.5, 'cm': [[3, 1], [0, 4]], 'nan': None}
  videos = {'scores': np.array([[0.2, 0.8], [0.9, 0.1]]), 'label': np.array([1, 1]),
            'media_id': np.array(['v,1', 'v2'], object)}
  lines = open(reports.write_predictions_csv(str(tmp_path / 'p.csv'), videos,
                                                ['a', 'b'], k=2)).read().splitlines()
  assert lines[1] == '"v,1",1,b,1,b,1 0,0.8000 0.2000'
  assert lines[2].startswith('v2,1,b,0,a,')
  label_map = tmp_path / 'labels.txt'
  label_map.write_text('run\njump\n')
  assert reports.class_names(2, str(label_map)) == ['run', 'jump']
  assert reports.class_names(3) == ['class_0', 'class_1', 'class_2']
  with pytest.raises(ValueError, match='num_classes=3'):
    reports.class_names(3, str(label_map))


def test_class_names_found_beside_the_shards_or_in_the_records(tmp_path):
  from cvrl_tf import records  # pylint: disable=g-import-not-at-top
  jpeg = tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
  shard = str(tmp_path / 'test-00000-of-00001.tfrecord')
  with tf.io.TFRecordWriter(shard) as writer:
    for label, name in [(1, 'jump'), (0, 'run'), (1, 'jump')]:
      writer.write(records.make_sequence_example([jpeg], name, 25.0, 8, 8, label,
                                                 name).SerializeToString())
  assert reports.class_names(3, source=sources.Shards([shard])) == ['run', 'jump', 'class_2']
  records.write_label_map(str(tmp_path / 'train_label_map.txt'), ['a', 'b'])
  assert reports.class_names(2, source=sources.Shards([shard])) == ['a', 'b']  # The only map there.
  records.write_label_map(str(tmp_path / 'test_label_map.txt'), ['x', 'y'])
  # The shard's own map:
  assert reports.class_names(2, source=sources.Shards([shard])) == ['x', 'y']
