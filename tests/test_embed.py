"""Tests of cvrl_embed: folder/CSV inputs, the evaluation clip protocol, K-clip averaging
against a NumPy reference, a corrupt file (exit code 1, index), usage errors (exit 2)."""

import csv
import os

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from cvrl_tf.cli import embed as embed_cli
from cvrl_tf.convert import video_io
from cvrl_tf.models import rounding
from cvrl_tf.serving import embed
from cvrl_tf.serving import embed_store
from cvrl_tf.serving import export

# Frame i of a "coded" video is flat grey 10 + 9 i: a clip's frame means tell its indices.
CODE_BASE, CODE_STEP = 10, 9


def _write(path, frames):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with video_io.VideoWriter(path, fps=25, width=frames.shape[2], height=frames.shape[1]) as w:
    for frame in frames:
      w.write(frame)


def _coded(num_frames):
  values = CODE_BASE + CODE_STEP * np.arange(num_frames, dtype=np.uint8)
  return np.broadcast_to(values[:, None, None, None], (num_frames, 48, 64, 3)).copy()


def _smooth(num_frames, seed):
  """Moving colour gradients: content JPEG keeps well, unlike noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:48, 0:64] / 64.0
  phase = rng.uniform(0, 6, 3)
  frames = [np.stack([np.sin(3 * x + 2 * y + p + 0.3 * t) for p in phase], -1)
            for t in range(num_frames)]
  return ((np.stack(frames) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tf_keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('embed')
  # Any hub video encoder works; a small space-time conv one keeps the test fast.
  clips = tf_keras.Input([None, None, None, 3])
  features = tf_keras.layers.Conv3D(16, (2, 3, 3), strides=(1, 2, 2), activation='relu')(clips)
  encoder = tf_keras.Model(clips, tf_keras.layers.GlobalAveragePooling3D()(features))
  metadata = export.build_metadata(
      None, {'num_frames': 4, 'frame_stride': 2, 'crop_size': 32})
  hub_dir = export.export_encoder(encoder, str(root / 'hub'), metadata, verify=False)
  videos = root / 'videos'
  _write(str(videos / 'a.mp4'), _coded(20))
  _write(str(videos / 'walk' / 'b.mp4'), _smooth(12, 0))
  _write(str(videos / 'walk' / 'c.avi'), _coded(5))  # shorter than one clip: wraps
  (videos / 'walk' / 'broken.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
  (videos / 'walk' / 'notes.txt').write_text('not a video')
  return dict(root=root, hub_dir=hub_dir, videos=str(videos), encoder=encoder,
              layer=hub.KerasLayer(hub_dir))


def _run_main(args):
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_embed'] + args)
    return embed_cli.main([])


def _reference_embedding(encoder, path, num_clips, num_frames, stride, size):
  """NumPy version of the protocol on the converter's JPEGs (TF's decoder, as the
  evaluation pipeline: PIL's IDCT differs by a few grey levels)."""
  decoded = video_io.encode_video_jpeg(path, short_side=size)
  frames = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in decoded['jpegs']])
  length = len(frames)
  last = max(length - (num_frames - 1) * stride - 1, 0)
  starts = np.round(np.linspace(0, last, num_clips)).astype(int)
  indices = (starts[:, None] + stride * np.arange(num_frames)[None]) % length
  h, w = frames.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  clips = frames[indices][:, :, top:top + size, left:left + size] / np.float32(255)
  return encoder(clips.astype(np.float32), training=False).numpy().mean(0)


def _assert_features_match(got, expected, encoder):
  """The exported encoder (a SavedModel's graph) against the Keras one it came from:
  float32 rounding alone, relative to the features' scale (models/rounding.py)."""
  bound = rounding.float32_bound(rounding.encoder_fan_ins(encoder))
  assert rounding.relative_difference(got, expected) <= bound


def test_folder_with_a_corrupt_file(setup, capsys):
  prefix = str(setup['root'] / 'out' / 'emb')
  code = _run_main([f'--input={setup["videos"]}', f'--output={prefix}',
                    f'--hub_model={setup["hub_dir"]}', '--short_side=32', '--num_clips=3',
                    '--batch_size=2'])
  assert code == 1
  err = capsys.readouterr().err
  assert 'broken.mp4' in err and '1 of 4 failed' in err
  assert '3 clips x 4 frames (stride 2)' in err  # frames/stride from the metadata
  with open(prefix + embed.INDEX_SUFFIX) as f:
    rows = list(csv.DictReader(f))
  assert [os.path.relpath(r['path'], setup['videos']) for r in rows] == [
      'a.mp4', 'walk/b.mp4', 'walk/broken.mp4', 'walk/c.avi']
  assert [r['row'] for r in rows] == ['0', '1', '-1', '2']
  assert [r['status'] for r in rows] == ['ok', 'ok', 'failed', 'ok']
  assert [r['label'] for r in rows] == ['', 'walk', 'walk', 'walk']
  assert [r['num_frames_decoded'] for r in rows] == ['20', '12', '0', '5']
  assert rows[2]['error'] and not rows[0]['error']
  embeddings = np.load(prefix + '.npy')
  assert embeddings.shape == (3, 16) and embeddings.dtype == np.float32
  for row in (0, 1, 3):
    expected = _reference_embedding(setup['encoder'], rows[row]['path'], 3, 4, 2, 32)
    _assert_features_match(embeddings[int(rows[row]['row'])], expected, setup['encoder'])


def test_clips_follow_the_evaluation_protocol(setup):
  clip_fn = embed.make_clip_fn(num_frames=4, frame_stride=2, num_clips=4, short_side=32,
                               crop_size=24)
  for name, length, starts in (('a.mp4', 20, [0, 4, 9, 13]),  # round(linspace(0, 13, 4))
                               ('walk/c.avi', 5, [0, 0, 0, 0])):  # short: wraps
    decoded = embed.decode_video(os.path.join(setup['videos'], name), 0, 32)
    assert len(decoded['jpegs']) == length
    clips = clip_fn(decoded['jpegs']).numpy()
    assert clips.shape == (4, 4, 24, 24, 3) and clips.dtype == np.float32
    assert 0 <= clips.min() and clips.max() <= 1
    indices = (np.array(starts)[:, None] + 2 * np.arange(4)[None]) % length
    means = clips.mean(axis=(2, 3, 4)) * 255
    np.testing.assert_allclose(means, CODE_BASE + CODE_STEP * indices, atol=2.5)


def test_single_file_csv_and_usage_errors(setup, tmp_path, capsys):
  path = os.path.join(setup['videos'], 'a.mp4')
  assert embed.list_videos(path) == [embed.Video(path)]
  listing = tmp_path / 'list.csv'
  listing.write_text(f'path,label\n{path},walking\n{setup["videos"]}/walk/b.mp4\n'
                     'x.mp4,a,b\n')
  videos = embed.list_videos(str(listing))
  assert [(v.path, v.label, bool(v.error)) for v in videos] == [
      (path, 'walking', False), (f'{setup["videos"]}/walk/b.mp4', '', False),
      ('list.csv:4', '', True)]
  prefix = str(tmp_path / 'csv')
  assert _run_main([f'--input={listing}', f'--output={prefix}', '--short_side=32',
                    f'--hub_model={setup["hub_dir"]}', '--num_clips=2', '--num_frames=2',
                    '--frame_stride=1']) == 1  # the malformed row counts as a failure
  assert np.load(prefix + '.npy').shape == (2, 16)
  capsys.readouterr()
  empty = tmp_path / 'empty'
  empty.mkdir()
  for args in ([f'--input={empty}'], [f'--input={tmp_path}/missing.mp4'],
               [f'--input={path}', '--crop_size=64'],
               [f'--input={path}', f'--hub_model={tmp_path}']):
    args = [f'--output={tmp_path}/x', f'--hub_model={setup["hub_dir"]}',
            '--short_side=32'] + args
    assert _run_main(args) == 2, args
    assert 'cvrl_embed: error:' in capsys.readouterr().err
  assert not os.path.exists(f'{tmp_path}/x.npy')


def test_settings_from_metadata_or_flags():
  metadata = {'training': {'num_frames': 16, 'frame_stride': 2}}
  assert embed.resolve_settings(metadata, None, None) == (16, 2)
  assert embed.resolve_settings(metadata, 32, None) == (32, 2)
  with pytest.raises(embed.UsageError, match='--num_frames'):
    embed.resolve_settings(None, 8, None)


def test_embed_batch_accepts_dict_outputs(setup):
  class DictModel:
    def __call__(self, x):
      return {'embedding': tf.reduce_mean(x, axis=[1, 2, 3])}
  clips = np.ones([2, 2, 4, 4, 3], np.float32)
  np.testing.assert_allclose(embed.embed_batch(DictModel(), clips), np.ones([2, 3]))


def test_own_flag_defaults_when_another_module_owns_the_name():
  from cvrl_tf.cli import synth  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_embed'])  # synthetic's --fps defaults to 25 when it owns the flag
    assert embed_cli._flag_values().fps == 0.0
    assert embed_cli._flag_values().num_clips == 10


# ------------------------------------------------------------------------- windows
def _window_reference(encoder, frames, clip_starts, stride, size):
  """Mean embedding of clips of 4 frames at `stride` from `clip_starts` (NumPy crops)."""
  indices = np.array(clip_starts)[:, None] + stride * np.arange(4)[None]
  h, w = frames.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  clips = frames[indices][:, :, top:top + size, left:left + size] / np.float32(255)
  return encoder(clips.astype(np.float32), training=False).numpy().mean(0)


@pytest.fixture(scope='module')
def long_video(setup):
  """2 s at 25 fps (48 frames), frame i flat grey 5 + 5 i."""
  path = str(setup['root'] / 'long' / 'ramp.mp4')
  values = (5 + 5 * np.arange(48)).astype(np.uint8)
  _write(path, np.broadcast_to(values[:, None, None, None], (48, 48, 64, 3)).copy())
  return path


@pytest.mark.parametrize('window, stride, fps, frames_per_window', [
    ('16', '8', 0.0, 16),          # frames at the source rate (25 fps)
    ('0.64s', '0.32s', 0.0, 16),   # the same in seconds
    ('0.64s', '0.32s', 12.5, 8),   # resampled: half the frames, the same times
])
def test_window_features_with_times(setup, long_video, tmp_path, capsys, window, stride,
                                    fps, frames_per_window):
  prefix = str(tmp_path / 'win')
  code = _run_main([f'--input={long_video}', f'--output={prefix}',
                    f'--hub_model={setup["hub_dir"]}', '--short_side=32', f'--fps={fps}',
                    f'--window={window}', f'--window_stride={stride}', '--batch_size=3'])
  assert code == 0, capsys.readouterr().err
  with open(prefix + embed.INDEX_SUFFIX) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['row', 'path', 'label', 'num_frames_decoded', 'status', 'error',
                           'video_row', 'start_s', 'end_s']
  # 2 s of video, windows of 0.64 s every 0.32 s: starts 0 .. 1.28 s (the last whole one).
  np.testing.assert_allclose([float(r['start_s']) for r in rows], [0, .32, .64, .96, 1.28])
  np.testing.assert_allclose([float(r['end_s']) for r in rows], [.64, .96, 1.28, 1.6, 1.92])
  assert [r['row'] for r in rows] == ['0', '1', '2', '3', '4']
  assert {r['video_row'] for r in rows} == {'0'}
  assert {r['num_frames_decoded'] for r in rows} == {str(48 * frames_per_window // 16)}
  features = np.load(prefix + '.npy')
  assert features.shape == (5, 16)
  # Clips of 4 frames at stride 2 (8-frame span): 16-frame windows take 2 clips, at 0 and
  # 9 within the window (round(linspace(0, 16 - 7, 2))); 8-frame windows take 1, at 0.
  decoded = video_io.encode_video_jpeg(long_video, fps=fps, short_side=32)
  frames = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in decoded['jpegs']])
  step = frames_per_window // 2
  for i in range(5):
    starts = [i * step, i * step + 9] if frames_per_window == 16 else [i * step]
    _assert_features_match(
        features[i], _window_reference(setup['encoder'], frames, starts, 2, 32),
        setup['encoder'])


def test_window_usage_errors(setup, long_video, tmp_path, capsys):
  base = [f'--input={long_video}', f'--output={tmp_path}/x',
          f'--hub_model={setup["hub_dir"]}', '--short_side=32']
  for args, message in ((['--window=2x'], '--window=\'2x\''),
                        (['--window_stride=8'], '--window_stride goes with --window'),
                        (['--window=16', '--num_clips=3'], '--num_clips is for whole-video')):
    assert _run_main(base + args) == 2
    assert message in capsys.readouterr().err
  assert not os.path.exists(f'{tmp_path}/x.npy')


# ------------------------------------------------------------------------- resume
def _index(prefix):
  with open(prefix + embed.INDEX_SUFFIX) as f:
    return list(csv.DictReader(f))


def test_rerun_skips_what_is_done_and_appends_the_rest(setup, tmp_path, capsys):
  videos = setup['videos']
  common = [f'--hub_model={setup["hub_dir"]}', '--short_side=32', '--window=8',
            '--window_stride=6']
  fresh = str(tmp_path / 'fresh')
  assert _run_main([f'--input={videos}', f'--output={fresh}'] + common) == 1
  # The same output, first from a listing of two videos, then from the whole folder.
  listing = tmp_path / 'two.csv'
  listing.write_text(f'{videos}/walk/b.mp4\n{videos}/a.mp4\n')
  prefix = str(tmp_path / 'resumed')
  assert _run_main([f'--input={listing}', f'--output={prefix}'] + common) == 0
  first = np.load(prefix + '.npy')
  capsys.readouterr()
  assert _run_main([f'--input={videos}', f'--output={prefix}'] + common) == 1
  err = capsys.readouterr().err
  assert '1 videos embedded, 2 already done, 1 of 2 failed' in err
  rows, features = _index(prefix), np.load(prefix + '.npy')
  np.testing.assert_array_equal(features[:len(first)], first)  # Kept, not recomputed.
  # 12, 20 and 5 frames: windows of 8 every 6 start at 0; 0, 6, 12; 0 (a short one).
  assert [os.path.basename(r['path']) for r in rows] == (
      ['b.mp4'] + ['a.mp4'] * 3 + ['broken.mp4', 'c.avi'])
  assert [r['video_row'] for r in rows] == ['0', '1', '1', '1', '2', '3']
  assert [r['row'] for r in rows] == ['0', '1', '2', '3', '-1', '4']
  assert [r['start_s'] for r in rows if r['status'] == 'ok'] == ['0', '0', '0.24', '0.48',
                                                                 '0']
  # Per video, the same features as a run that did everything at once.
  fresh_rows, fresh_features = _index(fresh), np.load(fresh + '.npy')
  by_window = {(r['path'], r['start_s']): fresh_features[int(r['row'])]
               for r in fresh_rows if r['status'] == 'ok'}
  for r in rows[:4] + rows[5:]:
    np.testing.assert_allclose(features[int(r['row'])], by_window[(r['path'], r['start_s'])],
                               rtol=1e-5, atol=1e-6)
  # A third run has nothing left but the failed video, tried again.
  assert _run_main([f'--input={videos}', f'--output={prefix}'] + common) == 1
  assert '0 videos embedded, 3 already done, 1 of 1 failed' in capsys.readouterr().err
  assert [r['status'] for r in _index(prefix)].count('failed') == 1
  # Other settings: refused, naming what changed; the output stays as it was.
  assert _run_main([f'--input={videos}', f'--output={prefix}', '--window=16'] +
                   common[:2]) == 2
  assert "window: '8' then, '16' now" in capsys.readouterr().err
  np.testing.assert_array_equal(np.load(prefix + '.npy'), features)


class _Interrupting:
  """A model that stops the run (Ctrl-C) at its `after`-th call."""

  def __init__(self, layer, after):
    self.layer, self.calls, self.after = layer, 0, after

  def __call__(self, clips):
    self.calls += 1
    if self.calls == self.after:
      raise KeyboardInterrupt
    return self.layer(clips)


def test_interrupted_run_keeps_what_is_done_and_resumes(setup, tmp_path):
  videos = [embed.Video(os.path.join(setup['videos'], p)) for p in ('a.mp4', 'walk/b.mp4')]
  settings = embed.ClipSettings(num_frames=4, frame_stride=2, num_clips=2, short_side=32,
                                crop_size=32, batch_size=2)
  prefix = str(tmp_path / 'emb')

  def store():
    return embed_store.Store(prefix, dict(settings.record(), hub_model='m'), False)

  with pytest.raises(KeyboardInterrupt):
    embed.embed_videos(videos, _Interrupting(setup['layer'], 2), settings, store())
  assert [r['path'] for r in _index(prefix)] == [videos[0].path]
  assert np.load(prefix + '.npy').shape == (1, 16)
  # A kill between the two renames: the .npy holds a row the index does not name.
  np.save(prefix + '.npy', np.concatenate([np.load(prefix + '.npy'), np.ones([1, 16])]))
  counts = embed.embed_videos(videos, setup['layer'], settings, store())
  assert counts == {'skipped': 1, 'embedded': 1, 'failed': 0, 'rows': 2}
  features = np.load(prefix + '.npy')
  assert [r['row'] for r in _index(prefix)] == ['0', '1']
  for video, feature in zip(videos, features):
    expected = _reference_embedding(setup['encoder'], video.path, 2, 4, 2, 32)
    _assert_features_match(feature, expected, setup['encoder'])
