"""`tfds:` sources through the pipeline builders, on TFDS's own mock data (no download):
the evaluation clips against a NumPy reference from tfds.load, the classification
builder's clips and labels, counts, class names and label subsets."""

import collections

import numpy as np
import pytest

from cvrl_tf.input import pipeline
from cvrl_tf.input import sources
from cvrl_tf.input import tfds_source
from cvrl_tf.protocols import reports

tfds = pytest.importorskip('tensorflow_datasets')
NAME = 'ucf101/ucf101_1_256:2.0.0'
TRAIN = f'tfds:{NAME}?split=train&fps=25'


def test_parse_spec():
  spec = tfds_source.parse_spec('tfds:ucf101/ucf101_1_256:2.0.0?split=train[:10%]'
                                '&data_dir=/d&fps=25&label=y')
  assert spec == tfds_source.TfdsSpec('ucf101/ucf101_1_256:2.0.0', 'train[:10%]', '/d',
                                      25.0, 'video', 'y')
  assert tfds_source.is_tfds(TRAIN) and not tfds_source.is_tfds('/data/train-*.tfrecord')
  assert not tfds_source.is_tfds(['tfds:x?split=train'])
  for bad in ('tfds:ucf101', 'tfds:?split=train', 'tfds:ucf101?split=train&colour=1',
              'tfds:ucf101?split=train&fps=fast'):
    with pytest.raises(ValueError, match='tfds:ucf101|tfds:\\?'):
      tfds_source.parse_spec(bad)
  with pytest.raises(ValueError, match="'tfds:ucf101'"):
    sources.open_source('tfds:ucf101')  # Fails as early as a pattern that matches nothing.


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=5):
    yield


def _reference():
  """The mock split, decoded by TFDS itself. (A decoder, even a no-op one, makes the mock
  encode its random frames as JPEG first, as the pipeline reads them.)"""
  ds = tfds.load(NAME, split='train', shuffle_files=False,
                 decoders={'label': tfds.decode.SkipDecoding()})
  return [(ex['video'].numpy(), int(ex['label'])) for ex in ds]


def test_eval_builder_reads_the_frames_tfds_decodes(mock):
  reference = _reference()
  assert sources.count_videos(TRAIN) == len(reference) == 5
  ds = pipeline.build_eval_dataset(TRAIN, batch_size=2, clip_len=4, stride=2, num_clips=1,
                                   num_crops=1, min_resize=256, crop_size=256)
  batches = list(ds.as_numpy_iterator())
  clips = np.concatenate([b['clips'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert clips.shape == (5, 4, 256, 256, 3)
  np.testing.assert_array_equal(labels, [label for _, label in reference])
  for clip, (frames, _) in zip(clips, reference):
    # The centre clip (eval_indices, K = 1): the last start is T - 3 * 2 - 1, halved and
    # rounded half to even, as tf.round does.
    start = round((len(frames) - 3 * 2 - 1) / 2)
    expected = frames[start + 2 * np.arange(4)].astype(np.float32) / 255
    np.testing.assert_allclose(clip, expected, atol=1e-6)


def test_classification_builder_takes_tfds(mock):
  labels = {label for _, label in _reference()}
  ds = pipeline.build_classification_dataset(TRAIN, batch_size=4, clip_len=4, stride=2,
                                             crop_size=32, shuffle_buffer=4, seed=0)
  for batch in ds.take(3).as_numpy_iterator():
    assert batch['clips'].shape == (4, 4, 32, 32, 3)
    assert 0 <= batch['clips'].min() and batch['clips'].max() <= 1
    assert set(batch['label'].tolist()) <= labels
  assert reports.class_names(101, None, sources.open_source(TRAIN))[:2] == [
      'ApplyEyeMakeup', 'ApplyLipstick']


def test_label_subset_of_a_tfds_split():
  with tfds.testing.mock_data(num_examples=9, max_value=3):  # Labels 0..2: 3 per class.
    per_class = collections.Counter(label for _, label in _reference())
    keys = sources.open_source(TRAIN).label_subset_keys(0.5, seed=0)
    assert len(keys) == sum(max(1, int(0.5 * n + 0.5)) for n in per_class.values())
    assert keys == sources.open_source(TRAIN).label_subset_keys(0.5, seed=0)  # Deterministic.
    assert all(k.endswith('\n0') for k in keys)
    ds = pipeline.build_classification_dataset(TRAIN, batch_size=2, clip_len=2, stride=1,
                                               crop_size=16, shuffle_buffer=2, seed=0,
                                               label_fraction=0.5)
    kept = {k.split('\n')[0] for k in keys}
    ids = tfds.load(NAME, split='train', shuffle_files=False,
                    read_config=tfds.ReadConfig(add_tfds_id=True))
    kept_labels = {int(ex['label']) for ex in ids if ex['tfds_id'].numpy().decode() in kept}
    seen = {int(l) for b in ds.take(4).as_numpy_iterator() for l in b['label']}
    assert seen <= kept_labels


def test_cvrl_trains_pre_run_check_lets_a_tfds_source_through_and_names_a_bad_one():
  # pylint: disable=g-import-not-at-top
  import gin
  from cvrl_tf import errors
  from cvrl_tf.cli import gin_files
  common = ['run.experiment=@finetune', "finetune.encoder_source='random'"]
  try:
    gin_files.parse([], common + ["finetune.train_files='tfds:ucf101?split=train'"])
    assert gin_files.check_protocol() == 'finetune'  # Not "matches no file".
    gin_files.parse([], common + ["finetune.train_files='tfds:ucf101'"])
    with pytest.raises(errors.UserError, match='split'):
      gin_files.check_protocol()
  finally:
    gin.clear_config()
