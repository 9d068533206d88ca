"""video_io: frame streaming (trim, fps resampling, resize), writing, per-frame JPEG."""

import io

import numpy as np
from PIL import Image
import pytest

from cvrl_tf.convert import video_io

W, H, FPS, N = 48, 32, 10, 20  # a 2-second clip


def _frames(n=N, w=W, h=H):
  """Frame i is a flat grey of level 10 * i (left half inverted): index readable back."""
  frames = []
  for i in range(n):
    f = np.full((h, w, 3), 10 * i, np.uint8)
    f[:, : w // 2] = 255 - 10 * i
    frames.append(f)
  return frames


def _index(frame):
  """Recovers the source index of a frame written by _frames (robust to compression)."""
  return int(round(float(frame[:, frame.shape[1] * 3 // 4:].mean()) / 10))


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('v') / 'clip.mp4')
  with video_io.VideoWriter(path, FPS, W, H) as writer:
    for f in _frames():
      writer.write(f)
  return path


def test_reads_back_every_frame_in_order(clip):
  with video_io.FrameReader(clip) as reader:
    assert (reader.fps, reader.width, reader.height) == (FPS, W, H)
    frames = [f.copy() for f in reader]
  assert len(frames) == N
  assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
  assert [_index(f) for f in frames] == list(range(N))
  err = np.mean([np.abs(f.astype(int) - g).mean() for f, g in zip(frames, _frames())])
  assert err < 4


def test_writer_is_deterministic(clip, tmp_path):
  again = str(tmp_path / 'again.mp4')
  with video_io.VideoWriter(again, FPS, W, H) as writer:
    for f in _frames():
      writer.write(f)
  assert open(clip, 'rb').read() == open(again, 'rb').read()


@pytest.mark.parametrize('fps', [5, 25, 7.5, 10])
def test_fps_resampling_frame_count_and_choice(clip, fps):
  frames = video_io.read_frames(clip, fps=fps)
  assert len(frames) == video_io.frame_count_hint(N / FPS, fps) == int(np.ceil(2.0 * fps))
  # Output frame k (time k / fps) shows the source frame on screen at that time.
  assert [_index(f) for f in frames] == [int(k * FPS / fps + 1e-6) for k in range(len(frames))]
  with video_io.FrameReader(clip, fps=fps) as reader:
    assert reader.fps == fps


def test_trimming_keeps_the_window(clip):
  frames = video_io.read_frames(clip, start=0.5, end=1.5)
  assert [_index(f) for f in frames] == list(range(5, 15))
  resampled = video_io.read_frames(clip, start=1.0, end=2.0, fps=20)
  assert len(resampled) == 20 and _index(resampled[0]) == 10 and _index(resampled[-1]) == 19
  assert video_io.read_frames(clip, start=1.5) and _index(
      video_io.read_frames(clip, start=1.5)[0]) == 15
  with pytest.raises(ValueError):
    video_io.FrameReader(clip, start=2, end=1)


@pytest.mark.parametrize('size,short,expected', [
    ((48, 32), 16, (24, 16)), ((32, 48), 16, (16, 24)), ((1920, 1080), 256, (455, 256)),
    ((320, 240), 0, (320, 240)), ((100, 100), 50, (50, 50))])
def test_output_size_keeps_aspect(size, short, expected):
  assert video_io.output_size(*size, short) == expected


def test_resize_keeps_aspect(clip, tmp_path):
  assert video_io.read_frames(clip, short_side=16)[0].shape == (16, 24, 3)
  assert video_io.read_frames(clip, short_side=64)[0].shape == (64, 96, 3)
  portrait = str(tmp_path / 'portrait.mp4')
  with video_io.VideoWriter(portrait, FPS, 32, 48) as writer:
    for f in _frames(4, 32, 48):
      writer.write(f)
  assert video_io.read_frames(portrait, short_side=16)[0].shape == (24, 16, 3)


def test_mpeg4_in_avi(tmp_path):
  path = str(tmp_path / 'clip.avi')
  with video_io.VideoWriter(path, FPS, W, H, codec='mpeg4') as writer:
    for f in _frames():
      writer.write(f)
  assert [_index(f) for f in video_io.read_frames(path)] == list(range(N))


def test_encode_video_jpeg_round_trip(clip):
  result = video_io.encode_video_jpeg(clip, short_side=0, quality=90)
  assert result['ok'] and (result['height'], result['width'], result['fps']) == (H, W, FPS)
  decoded = [np.asarray(Image.open(io.BytesIO(j))) for j in result['jpegs']]
  source = video_io.read_frames(clip)
  assert len(decoded) == len(source) == N
  assert max(np.abs(d.astype(int) - s).mean() for d, s in zip(decoded, source)) < 3


def test_bad_files_are_reported_not_raised(clip, tmp_path):
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  text = tmp_path / 'text.mp4'
  text.write_text('not a video\n' * 50)
  truncated = tmp_path / 'truncated.mp4'
  data = open(clip, 'rb').read()
  truncated.write_bytes(data[: len(data) // 2])
  reasons = {name: video_io.encode_video_jpeg(str(path))
             for name, path in [('missing', tmp_path / 'nope.mp4'), ('empty', empty),
                                ('text', text), ('truncated', truncated)]}
  assert not any(r['ok'] for r in reasons.values())
  assert reasons['missing']['reason'] == 'file not found'
  assert 'empty' in reasons['empty']['reason']
  assert 'cannot open' in reasons['text']['reason']
  with pytest.raises(video_io.VideoError):
    video_io.FrameReader(str(text))


def test_writer_rejects_wrong_frames(tmp_path):
  with pytest.raises(ValueError):
    video_io.VideoWriter(str(tmp_path / 'odd.mp4'), FPS, 33, 32)
  with video_io.VideoWriter(str(tmp_path / 'ok.mp4'), FPS, W, H) as writer:
    with pytest.raises(ValueError):
      writer.write(np.zeros((H, W + 2, 3), np.uint8))
    writer.write(np.zeros((H, W, 3), np.uint8))
