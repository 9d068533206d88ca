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
from cvrl_tf.data import video_io
from cvrl_tf.serving import embed
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
    np.testing.assert_allclose(embeddings[int(rows[row]['row'])], expected,
                               rtol=1e-4, atol=1e-4)


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
