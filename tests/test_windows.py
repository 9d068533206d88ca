"""Window specs, windows of a video and their times, clips covering a window: against
hand-computed cases."""

import numpy as np
import pytest

from cvrl_tf.serving import windows


def test_parse_span_frames_or_seconds():
  assert windows.parse_span('32', '--window') == windows.Span(32.0, False)
  assert windows.parse_span(' 1.28s', '--window') == windows.Span(1.28, True)
  assert str(windows.Span(1.28, True)) == '1.28s' and str(windows.Span(32.0)) == '32'
  for bad in ('0', '-3', '1.5', 'abc', 's', 'nans', '0s'):
    with pytest.raises(ValueError, match='--window_stride'):
      windows.parse_span(bad, '--window_stride')


def test_span_in_frames_depends_on_fps_only_for_seconds():
  assert windows.Span(16).frames(12.5) == 16
  assert windows.Span(0.64, True).frames(25) == 16
  assert windows.Span(0.64, True).frames(12.5) == 8
  assert windows.Span(0.01, True).frames(25) == 1  # at least one frame


def test_whole_windows_with_times():
  # 48 frames at 25 fps, windows of 16 every 8: starts 0, 8, ..., 32 (48 - 16).
  got = windows.video_windows(48, 25.0, windows.Span(16), windows.Span(8))
  assert [(w.start, w.length) for w in got] == [(s, 16) for s in (0, 8, 16, 24, 32)]
  np.testing.assert_allclose([w.start_s for w in got], [0, 0.32, 0.64, 0.96, 1.28])
  np.testing.assert_allclose([w.end_s for w in got], [0.64, 0.96, 1.28, 1.6, 1.92])
  # No stride: back to back; the 10-frame tail (50 - 40) is not a whole window.
  assert [w.start for w in windows.video_windows(50, 25.0, windows.Span(20))] == [0, 20]
  # Shorter than a window, or no window: one over the whole video.
  assert windows.video_windows(10, 25.0, windows.Span(16)) == [windows.Window(0, 10, 25.0)]
  assert windows.video_windows(48, 25.0, None) == [windows.Window(0, 48, 25.0)]
  with pytest.raises(ValueError):
    windows.video_windows(0, 25.0, None)


def test_clips_cover_the_window():
  assert windows.clips_to_cover(16, 4, 2) == 2 and windows.clips_to_cover(8, 4, 2) == 1
  assert windows.clips_to_cover(9, 4, 2) == 2 and windows.clips_to_cover(3, 4, 2) == 1
  # Window [8, 24): eval_indices over 16 frames: last start 16 - 6 - 1 = 9 -> 0 and 9.
  got = windows.clip_indices(windows.Window(8, 16, 25.0), 2, 4, 2)
  np.testing.assert_array_equal(got, [[8, 10, 12, 14], [17, 19, 21, 23]])
  # A window shorter than a clip wraps inside itself: [5, 8), one centred clip.
  np.testing.assert_array_equal(windows.clip_indices(windows.Window(5, 3, 25.0), 1, 4, 2),
                                [[5, 7, 6, 5]])
