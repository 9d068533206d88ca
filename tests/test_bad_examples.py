"""Bad input never stops a run: a bad record, frame or file is skipped, counted and named;
past the limit a run stops with one line and resumes once the data is fixed; the test
lists the videos it could not read. Checked against hand-made records whose defects and
good videos are known here."""

import io
import json
import os
import re
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import records
from cvrl_tf.input import bad_examples
from cvrl_tf.input import pipeline
from cvrl_tf.input import record_check
from cvrl_tf.protocols import classify
from cvrl_tf.protocols import knn

import gin_recipes  # tests/gin_recipes.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, FRAMES = 40, 48, 8
NOT_JPEG = b'17 bytes of text.'


def _jpegs(seed, n=FRAMES):
  rng = np.random.default_rng(seed)
  return [tf.io.encode_jpeg(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).numpy()
          for _ in range(n)]


def _video(name, label, bad_frames=False):
  frames = [NOT_JPEG] * FRAMES if bad_frames else _jpegs(hash(name) % 1000)
  return records.make_sequence_example(frames, name, 25.0, H, W, label,
                                       f'class{label}').SerializeToString()


def _write(path, serialized):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in serialized:
      writer.write(record)
  return str(path)


def _no_frames(name):
  seq = tf.train.SequenceExample()
  seq.context.feature[records.MEDIA_ID_KEY].bytes_list.value.append(name.encode())
  seq.context.feature[records.LABEL_INDEX_KEY].int64_list.value.append(0)
  return seq.SerializeToString()


def _model_garden(name, label, frames):
  """A record as Model Garden / DMVR write them: frames, label index and text only."""
  seq = tf.train.SequenceExample()
  seq.context.feature['clip/label/index'].int64_list.value.append(label)
  seq.context.feature['clip/label/text'].bytes_list.value.append(f'class{label}'.encode())
  seq.context.feature[records.MEDIA_ID_KEY].bytes_list.value.append(name.encode())
  for jpeg in frames:
    seq.feature_lists.feature_list['image/encoded'].feature.add().bytes_list.value.append(
        jpeg)
  return seq.SerializeToString()


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """good-*: 2 shards x 10 good videos; mixed: 9 good videos, a video of bad JPEGs
  (record 2), one without frames (5), bytes that are no record (7) and an unlabelled
  video (12: bad for classification only);
  cut: 5 good videos, the file cut in the middle of its 4th record."""
  root = tmp_path_factory.mktemp('bad')
  good = [_write(root / f'good-{s:05d}-of-00002.tfrecord',
                 [_video(f'g{s}_{i}', i % 2) for i in range(10)]) for s in range(2)]
  mixed = [_video(f'm{i}', i % 2) for i in range(9)]
  mixed[2:2] = [_video('bad_jpeg', 0, bad_frames=True)]
  mixed[5:5] = [_no_frames('no_frames')]
  mixed[7:7] = [b'\x00garbage, not a proto\xff']
  mixed.append(records.make_sequence_example(_jpegs(1), 'no_label', 25.0, H, W)
               .SerializeToString())
  mixed_path = _write(root / 'mixed-00000-of-00001.tfrecord', mixed)
  cut_path = _write(root / 'cut-00000-of-00001.tfrecord',
                    [_video(f'c{i}', i % 2) for i in range(5)])
  data = open(cut_path, 'rb').read()
  sizes = [16 + len(_video(f'c{i}', i % 2)) for i in range(5)]
  cut_at = sum(sizes[:3]) + sizes[3] // 2  # In the middle of record 3.
  with open(cut_path, 'wb') as f:
    f.write(data[:cut_at])
  return {'root': root, 'good': good, 'mixed': mixed_path, 'cut': cut_path,
          'cut_at': cut_at}


def test_check_record_names_each_defect():
  good = record_check.check_record(_video('v', 1))
  assert (good.problem, good.media_id, good.num_frames, good.label, good.fps,
          good.frame_size) == (None, 'v', FRAMES, 1, 25.0, (H, W))
  assert 'not a tf.train.SequenceExample' in record_check.check_record(b'\x00junk').problem
  assert 'feature list image/encoded is missing' in record_check.check_record(
      _no_frames('x')).problem
  frames = _jpegs(0, 5)
  frames[3] = NOT_JPEG
  bad = record_check.check_record(records.make_sequence_example(
      frames, 'b', 25.0, H, W, 0).SerializeToString())
  assert bad.problem.startswith('frame 3 of 5 (17 bytes) is not a decodable JPEG')
  # Damage after the JPEG header: only a full decode finds it.
  jpeg = _jpegs(0, 1)[0]
  truncated = jpeg[:len(jpeg) * 2 // 3]
  record = records.make_sequence_example([truncated], 't', 25.0, H, W, 0).SerializeToString()
  assert record_check.check_record(record, decode='headers').problem is None
  assert 'not a decodable JPEG' in record_check.check_record(record).problem
  unlabeled = records.make_sequence_example(frames[:1], 'u', 25.0, H, W).SerializeToString()
  assert record_check.check_record(unlabeled).problem is None
  assert 'no label' in record_check.check_record(unlabeled, need_label=True).problem
  other = record_check.check_record(_model_garden('mg', 2, _jpegs(0, 3)), need_label=True)
  assert (other.problem, other.label, other.label_name, other.fps) == (None, 2, 'class2', 0)


@pytest.mark.parametrize('bad, read, stops', [
    (10, 10, False),    # Never within the floor, even when all are bad.
    (11, 1100, False),  # 1.0% is not over 1%.
    (11, 1099, True), (11, 11, True), (50, 4999, True), (50, 5000, False)])
def test_limit_needs_both_the_floor_and_the_fraction(bad, read, stops):
  assert bad_examples.Limit(0.01, 10).exceeded(bad, read) == stops


def _eval_ids(files, tracker):
  ds = pipeline.build_eval_dataset(files, 7, clip_len=2, stride=1, num_clips=2,
                                   num_crops=1, min_resize=32, crop_size=32,
                                   bad_examples=tracker)
  ids = [i.decode() for b in ds for i in b['media_id'].numpy()]
  return sorted(set(ids)), len(ids)


def _guarded(n, bad, limit, end_input=True):
  """guarded_map over n elements (x = i, (file, i, record)) whose fn fails on `bad`."""
  tracker = bad_examples.BadExamples(None, 'train', limit, progress_stream=None,
                                     end_input=end_input)
  files = tf.constant(['f'] * n)
  ds = tf.data.Dataset.from_tensor_slices((tf.range(n, dtype=tf.int64), (
      files, tf.range(n, dtype=tf.int64), tf.constant([b'rec'] * n))))

  def fn(x, triple):
    del triple
    ok = tf.reduce_all(tf.not_equal(x, tf.constant(sorted(bad) or [-1], tf.int64)))
    with tf.control_dependencies([tf.debugging.Assert(ok, ['bad', x])]):
      return x * 10

  out = [int(v) for v in bad_examples.guarded_map(ds, fn, tracker).as_numpy_iterator()]
  return out, tracker


def test_guarded_map_keeps_order_and_names_each_failure():
  # Failures first, in a run, between good ones and last (found at the stream's end).
  bad = {0, 5, 16, 17, 18, 19, 39}
  out, tracker = _guarded(40, bad, None)
  assert out == [10 * i for i in range(40) if i not in bad]  # Order kept, none lost.
  assert tracker.reads == 40 and tracker.bad_reads == len(bad)
  assert [(e['shard'], e['record']) for e in tracker.examples] == [('f', i) for i in
                                                                  sorted(bad)]
  # Over the limit (> 2 bad and > 0%): counted as if read one by one, so the stop comes at
  # the third bad read, the 17th; nothing after it passes.
  out, tracker = _guarded(40, bad, bad_examples.Limit(0.0, 2))
  assert isinstance(tracker.error, errors.TooManyBadExamples)
  assert tracker.reads == 17 and tracker.bad_reads == 3
  assert out == [10 * i for i in range(16) if i not in bad]
  # Nothing good after the failures (found by the markers that follow every 16 videos).
  out, tracker = _guarded(40, set(range(3, 40)), bad_examples.Limit(0.0, 2))
  assert out == [0, 10, 20] and tracker.reads == 6 and tracker.bad_reads == 3
  # Multi-worker (end_input=False): past the limit the stream goes on, every read counted,
  # until the workers agree to stop; unless nothing good comes any more (a worker whose
  # videos all fail would never reach that step): then it ends after STARVED_AFTER.
  out, tracker = _guarded(40, bad, bad_examples.Limit(0.0, 2), end_input=False)
  assert out == [10 * i for i in range(40) if i not in bad]
  assert tracker.error and tracker.reads == 40 and tracker.bad_reads == len(bad)
  out, tracker = _guarded(400, set(range(400)), bad_examples.Limit(0.0, 2),
                          end_input=False)
  assert out == [] and tracker.reads == tracker.bad_reads == bad_examples.STARVED_AFTER


def test_a_failure_before_the_guard_is_counted_and_said_not_a_crash():
  # E.g. a read error inside a TFDS source: the element never gets a name.
  tracker = bad_examples.BadExamples(None, 'train', None, progress_stream=None)
  ds = tf.data.Dataset.range(20).map(lambda i: (i, (tf.constant('f'), i, tf.constant(b''))))
  ds = ds.map(lambda x, t: _fail_on(x, 7, t))
  out = list(bad_examples.guarded_map(ds, lambda x, t: x, tracker).as_numpy_iterator())
  assert out == [i for i in range(20) if i != 7] and tracker.bad_reads == 1
  (entry,) = tracker.examples
  assert entry['shard'] == '(input before the guard)' and 'TFDS' in entry['reason']


def _fail_on(x, value, triple):
  with tf.control_dependencies([tf.debugging.Assert(tf.not_equal(x, value), [x])]):
    return tf.identity(x), triple


def test_eval_keeps_every_good_video_and_names_every_bad_one(shards, tmp_path):
  tracker = bad_examples.BadExamples(str(tmp_path), 'test', None, keep_earlier=False,
                                     progress_stream=None)
  files = shards['good'] + [shards['mixed'], shards['cut']]
  ids, views = _eval_ids(files, tracker)
  want = sorted([f'g{s}_{i}' for s in range(2) for i in range(10)] +
                [f'm{i}' for i in range(9)] + ['c0', 'c1', 'c2'])
  assert ids == want and views == 2 * len(want)  # Every good video, every view, once.
  found = {(os.path.basename(e['shard']), e['record']): e for e in tracker.examples}
  assert sorted(found) == [('cut-00000-of-00001.tfrecord', -1),
                           ('mixed-00000-of-00001.tfrecord', 2),
                           ('mixed-00000-of-00001.tfrecord', 5),
                           ('mixed-00000-of-00001.tfrecord', 7),
                           ('mixed-00000-of-00001.tfrecord', 12)]
  assert found[('mixed-00000-of-00001.tfrecord', 2)]['media_id'] == 'bad_jpeg'
  assert 'frame 0 of 8 (17 bytes)' in found[('mixed-00000-of-00001.tfrecord', 2)]['reason']
  assert found[('mixed-00000-of-00001.tfrecord', 5)]['media_id'] == 'no_frames'
  assert 'not a tf.train.SequenceExample' in found[
      ('mixed-00000-of-00001.tfrecord', 7)]['reason']
  assert f'after 3 records (byte {16 * 3 + sum(len(_video(f"c{i}", i % 2)) for i in range(3))}' \
      in found[('cut-00000-of-00001.tfrecord', -1)]['reason']
  stored = json.loads((tmp_path / bad_examples.FILE).read_text())['test']
  assert len(stored['examples']) == 5 and stored['this_run']['bad_reads'] == 5


def test_training_stream_skips_bad_videos_and_stops_past_the_limit(shards):
  files = shards['good'] + [shards['mixed']]
  # A floor of 8: the repeated files' first round holds several bad reads close together.
  tracker = bad_examples.BadExamples(None, 'train', bad_examples.Limit(0.2, 8), True, None)
  # deterministic: where the bad reads fall in the stream (so the running fraction at the
  # 4th) must not depend on which parallel read finishes first.
  ds = pipeline.build_classification_dataset(files, 4, clip_len=2, stride=1, crop_size=32,
                                             seed=0, deterministic=True, bad_examples=tracker)
  labels = np.concatenate([b['label'] for b in ds.take(40).as_numpy_iterator()])
  assert labels.shape == (160,) and set(labels) <= {0, 1}
  # 4 bad of 33 records per epoch (no_label is bad here): 12% < 20%, so it ran on.
  assert tracker.error is None and tracker.bad_reads >= 4
  assert {e['media_id'] for e in tracker.examples} == {'bad_jpeg', 'no_frames', '',
                                                      'no_label'}
  strict = bad_examples.BadExamples(None, 'train', bad_examples.Limit(0.05, 3), True, None)
  ds = pipeline.build_classification_dataset(files, 4, clip_len=2, stride=1, crop_size=32,
                                             seed=0, deterministic=True, bad_examples=strict)
  batches = sum(1 for _ in ds.take(1000))
  assert batches < 1000 and isinstance(strict.error, errors.TooManyBadExamples)
  assert strict.bad_reads == 4 and '4 of' in str(strict.error)


# ------------------------------------------------------------------------- end to end
TINY = [
    "encoder.name='r3d18'", 'encoder.width_multiplier=0.125',
    'pretrain_clips.clip_len=2', 'pretrain_clips.crop_size=32',
    'pretrain_clips.stride=1', 'pretrain_clips.shuffle_buffer=1',
    'projection_head.hidden_dim=16', 'projection_head.output_dim=8',
    'pretrain.global_batch_size=4', 'pretrain.log_every=1', 'pretrain.warmup_epochs=0',
    "pretrain.mixed_precision='float32'", 'pretrain.checkpoint_every=2', 'pretrain.seed=0',
]


def _train(model_dir, files, steps, *bindings):
  args = [sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py'),
          f'--model_dir={model_dir}', '--gin_file=gin/demo/pretrain.gin',
          f'--gin_bindings=pretrain.train_files={files!r}',
          f'--gin_bindings=pretrain.train_steps={steps}']
  args += [f'--gin_bindings={b}' for b in TINY + list(bindings)]
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_pretraining_stream_skips_a_bad_video_and_names_it_once(tmp_path):
  # The pretraining builder under the guard, in process (the command line end to end,
  # stop and resume included, is the CVRL_SLOW_TESTS test below).
  for s in range(2):
    _write(tmp_path / f'train-{s}.tfrecord', [_video(f'v{s}_{i}', 0) for i in range(8)])
  _write(tmp_path / 'train-2.tfrecord', [_video('the_bad_one', 0, bad_frames=True)] +
         [_video(f'o{i}', 0) for i in range(9)])
  tracker = bad_examples.BadExamples(None, 'pretrain', bad_examples.Limit(0.5, 8),
                                     progress_stream=None)
  ds = pipeline.build_pretrain_dataset(str(tmp_path / 'train-*.tfrecord'), 4, clip_len=2,
                                       stride=1, crop_size=32, shuffle_buffer=1, seed=0,
                                       deterministic=True, bad_examples=tracker)
  batches = list(ds.take(12).as_numpy_iterator())  # 48 videos: the whole set, and more
  assert len(batches) == 12 and batches[0]['clips'].shape[:2] == (8, 2)  # 2 views x 4
  assert tracker.error is None and tracker.bad_reads >= 1
  assert [e['media_id'] for e in tracker.examples] == ['the_bad_one']  # named once


@pytest.mark.skipif(not os.environ.get('CVRL_SLOW_TESTS'), reason='set CVRL_SLOW_TESTS=1')
def test_pretraining_survives_a_bad_video_stops_past_the_limit_and_resumes(tmp_path):
  """Three cvrl_train runs (~40 CPU-s): behind CVRL_SLOW_TESTS. In `make test` the
  same guard is tested in process (the test above; the classification stream's limit),
  the one-line stop at the limit through cvrl_train by the linear-eval test below, and
  a resume from the last checkpoint by test_train_cli's SIGKILL test."""
  data = tmp_path / 'data'
  data.mkdir()
  for s in range(2):
    _write(data / f'train-{s}.tfrecord', [_video(f'v{s}_{i}', 0) for i in range(8)])
  third = data / 'train-2.tfrecord'
  # First in its shard: the interleave of the repeated file list reads it in the first
  # round, and no shuffle buffer (TINY) moves it; a failure is found within 16 elements
  # (bad_examples.MARK_EVERY), so 6 steps (24 videos) always pass it.
  _write(third, [_video('the_bad_one', 0, bad_frames=True)] +
         [_video(f'o{i}', 0) for i in range(9)])
  files, run = str(data / 'train-*.tfrecord'), tmp_path / 'run'
  result = _train(run, files, 6)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 6/6' in result.stderr and ' bad=' in result.stderr
  listed = json.loads((run / bad_examples.FILE).read_text())['pretrain']['examples']
  assert [e['media_id'] for e in listed] == ['the_bad_one']
  assert sum('skipped a bad example' in line and 'the_bad_one' in line
             for line in result.stderr.splitlines()) == 1  # Named once.

  # The third shard goes bad: over the limit, one line, exit 1, checkpoints intact.
  _write(third, [_video(f'x{i}', 0, bad_frames=True) for i in range(30)])
  result = _train(run, files, 200)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('cvrl_train: error: ') and 'could not be used' in last
  assert str(run / bad_examples.FILE) in last and 'Traceback' not in result.stderr
  latest = tf.train.latest_checkpoint(str(run / 'checkpoints'))
  assert int(latest.rsplit('-', 1)[1]) >= 4
  # The shard replaced: the same command resumes from the last checkpoint and finishes.
  _write(third, [_video(f'x{i}', 0) for i in range(30)])
  steps = int(latest.rsplit('-', 1)[1]) + 2
  result = _train(run, files, steps)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from {latest}' in result.stderr and f'step {steps}/{steps}' in result.stderr


EVAL_GIN = """
encoder.name = 'r3d18'
encoder.width_multiplier = 0.125
train_clips.clip_len = 2
train_clips.stride = 1
train_clips.crop_size = 32
train_clips.shuffle_buffer = 8
test_views.clip_len = 2
test_views.stride = 1
test_views.num_clips = 2
test_views.num_crops = 1
test_views.min_resize = 32
test_views.crop_size = 32
"""


@pytest.fixture
def eval_gin():
  gin.clear_config()
  gin.parse_config(EVAL_GIN)
  yield
  gin.clear_config()


def test_linear_eval_and_knn_list_unreadable_test_videos_a_broken_train_set_stops(
    shards, tmp_path, eval_gin):  # pylint: disable=unused-argument
  kw = dict(num_classes=2, encoder_source='random', train_steps=2, global_batch_size=4,
            warmup_epochs=0, eval_batch_size=6, seed=0, mixed_precision='float32')
  test_files = [shards['mixed'], shards['cut']]
  progress = io.StringIO()
  out = gin_recipes.recipe('linear_eval', train_files=shards['good'], test_files=test_files,
                           **kw).run(str(tmp_path / 'ok'), progress_stream=progress)['test']
  # The progress line ends at the total, the unreadable videos counted as failed.
  assert re.search(r'\] 16/16 videos .* failed 4\n', progress.getvalue())
  stored = json.loads((tmp_path / 'ok' / 'eval_results.json').read_text())
  assert stored['num_videos'] == out['num_videos'] == 12  # m0..m8, c0..c2.
  unreadable = stored['unreadable_videos']  # A test video needs a label too.
  assert unreadable['count'] == 4 and sorted(unreadable['media_ids']) == [
      '', 'bad_jpeg', 'no_frames', 'no_label']
  assert unreadable['damaged_files'] == [shards['cut']]
  assert stored['accuracy_over'].startswith('12 videos that could be read; 4 could not')
  assert stored['top1_counting_unreadable_as_wrong'] == pytest.approx(
      stored['top1'] * 12 / 16)
  listed = json.loads((tmp_path / 'ok' / bad_examples.FILE).read_text())
  assert len(listed['test']['examples']) == 5 and 'train' not in listed  # None bad.

  # k-NN: the same test videos listed in knn_results.json.
  knn_out = gin_recipes.recipe('knn_eval', train_files=shards['good'], test_files=test_files,
                        encoder_source='random', ks=(1,), eval_batch_size=6,
                        mixed_precision='float32').run(str(tmp_path / 'knn'),
                                                       progress_stream=None)
  stored = json.loads((tmp_path / 'knn' / knn.KNN_FILE).read_text())
  assert stored['num_test_videos'] == 12 and knn_out['unreadable_videos']['count'] == 4
  assert sorted(stored['unreadable_videos']['media_ids']) == [
      '', 'bad_jpeg', 'no_frames', 'no_label'] and stored['memory_unreadable_videos'] == []

  broken = _write(tmp_path / 'broken.tfrecord',
                  [_video(f'x{i}', 0, bad_frames=True) for i in range(12)])
  with pytest.raises(errors.TooManyBadExamples, match='could not be used'):
    gin_recipes.recipe('linear_eval', train_files=[broken] + shards['good'],
                        **{**kw, 'train_steps': 100}).run(str(tmp_path / 'stop'),
                                                           progress_stream=None)


def test_cvrl_inspect_finds_every_bad_example_in_ours_and_model_garden_records(shards,
                                                                            tmp_path):
  garden = [_model_garden(f'mg{i}', i % 2, _jpegs(i, 4)) for i in range(4)]
  frames = _jpegs(9, 4)
  frames[2] = frames[2][:len(frames[2]) // 2]  # Damage after the JPEG header.
  garden.append(_model_garden('mg_cut_jpeg', 1, frames))
  garden.append(_model_garden('mg_wrong_name', 0, _jpegs(5, 2)).replace(b'class0',
                                                                         b'class1'))
  garden_path = _write(tmp_path / 'garden-00000-of-00001.tfrecord', garden)
  label_map = tmp_path / 'labels.txt'
  records.write_label_map(str(label_map), ['class0', 'class1'])
  report_path = tmp_path / 'report.json'
  args = [sys.executable, os.path.join(REPO, 'tools', 'cvrl_inspect.py'),
          f'--files={shards["mixed"]}', f'--files={shards["cut"]}',
          f'--files={garden_path}', f'--label_map={label_map}', '--need_label',
          f'--report={report_path}']
  result = subprocess.run(args, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  report = json.loads(report_path.read_text())
  bad = sorted((os.path.basename(e['shard']), e['record'], e['media_id'])
               for e in report['bad_examples'])
  assert bad == [('cut-00000-of-00001.tfrecord', -1, ''),
                 ('garden-00000-of-00001.tfrecord', 4, 'mg_cut_jpeg'),
                 ('mixed-00000-of-00001.tfrecord', 2, 'bad_jpeg'),
                 ('mixed-00000-of-00001.tfrecord', 5, 'no_frames'),
                 ('mixed-00000-of-00001.tfrecord', 7, ''),
                 ('mixed-00000-of-00001.tfrecord', 12, 'no_label')]
  assert report['label_problems'] == [{
      'media_id': 'mg_wrong_name', 'label': 0,
      'reason': "label 0 is 'class0' in the label map but 'class1' here"}]
  # 9 + 3 + 5 usable; 13 + 3 + 6 records (the cut file's lost ones are not counted).
  assert (report['usable_examples'], report['examples']) == (17, 22)
  assert report['frames'] == 9 * FRAMES + 3 * FRAMES + 4 * 4 + 2
  assert report['frame_sizes'] == {f'{H}x{W}': 17} and report['other_tool_records'] == 5
  assert report['fps'] == {'25.0': 12, 'missing': 5}
  lines = result.stdout.splitlines()
  assert sum(line.startswith('BAD ') for line in lines) == 6
  assert any('mg_cut_jpeg' in line and 'frame 2 of 4' in line for line in lines)
  # The headers alone miss the damage after the header; a clean set exits 0.
  clean = subprocess.run(args[:2] + [f'--files={garden_path}', '--decode=headers'],
                         capture_output=True, text=True, timeout=300)
  assert clean.returncode == 0, clean.stderr[-3000:]
  assert '0 bad' in clean.stdout.splitlines()[0]
  usage = subprocess.run(args[:2] + ['--files=/no/such/*.tfrecord'], capture_output=True,
                         text=True, timeout=300)
  assert usage.returncode == 2
  assert usage.stderr.strip().splitlines()[-1] == (
      "cvrl_inspect: error: file pattern '/no/such/*.tfrecord' matches no file")
