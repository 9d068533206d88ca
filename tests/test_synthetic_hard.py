"""synthetic_hard (the quality benchmark's data, docs/quality.md): appearance shared across
classes, classes that differ only in speed or direction, drift within a video, and the
demo set left as it was."""

import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from cvrl_tf.convert import synthetic
from cvrl_tf.convert import synthetic_hard as hard

SMALL = hard.Config(size=32, seconds=1.0, fps=25)  # 25 frames
C = {name: i for i, name in enumerate(hard.CLASSES)}


def test_sixteen_classes_the_demo_flows_at_two_paces():
  assert len(hard.CLASSES) == len(set(hard.CLASSES)) == 16
  assert hard.CLASSES[:2] == ('translate_left_slow', 'translate_left_fast')


def test_same_scene_for_every_class_where_the_dots_stand_still():
  """Every draw happens whatever the class: with one RNG seed, frames outside the motion
  window are byte-identical across classes; inside it they differ."""
  rng = lambda: synthetic.video_rng(3, 'train', 7)
  weight = hard.motion_weight(hard.scene(rng(), SMALL), SMALL)
  still, moving = weight == 0, weight >= 1
  assert still.any() and moving.any()
  videos = [hard.render(label, rng(), SMALL) for label in range(16)]
  for v in videos[1:]:
    np.testing.assert_array_equal(v[still], videos[0][still])
  for label in range(1, 16):
    assert np.abs(videos[label][moving].astype(int) - videos[0][moving]).max() > 20


def _velocity(points: np.ndarray) -> np.ndarray:
  """Median per-frame displacement of the dots [T, N, 2], over steps within a dot's life
  (a redrawn dot jumps by many pixels)."""
  d = np.diff(points, axis=0).reshape(-1, 2)
  return np.median(d[np.linalg.norm(d, axis=1) < 5], axis=0)


def test_speed_and_direction_pairs_differ_only_there():
  cfg = hard.Config()
  sc = hard.scene(synthetic.video_rng(0, 'test', 1), cfg)
  field = lambda name: hard.dot_field(C[name], sc, cfg)
  slow, fast = field('translate_left_slow'), field('translate_left_fast')
  right = field('translate_right_slow')
  v_slow, v_fast, v_right = (_velocity(f[0][0]) for f in (slow, fast, right))
  # Same direction, speed ratio fast / slow; mirror: the opposite velocity.
  np.testing.assert_allclose(v_fast, v_slow * cfg.fast / cfg.slow, rtol=1e-6)
  np.testing.assert_allclose(v_right, -v_slow, atol=1e-9)
  assert v_slow[0] < 0 and 0.5 < np.linalg.norm(v_slow) < 1.3  # left, 1.6 x 0.55 +-30%
  # Same dots, same colours: only where they go differs; the still set is shared.
  np.testing.assert_array_equal(slow[1][0], fast[1][0])
  np.testing.assert_array_equal(slow[0][1], fast[0][1])
  np.testing.assert_array_equal(_velocity(slow[1][0]), [0.0, 0.0])
  np.testing.assert_array_equal(hard.dot_field(C['zoom_in_fast'], sc, cfg)[1][0],
                                slow[1][0])


def _anova_f(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """One-way ANOVA F statistic per feature column (between- over within-class variance)."""
  classes = np.unique(labels)
  grand = features.mean(0)
  between = sum((labels == c).sum() * (features[labels == c].mean(0) - grand)**2
                for c in classes) / (len(classes) - 1)
  within = sum(((features[labels == c] - features[labels == c].mean(0))**2).sum(0)
               for c in classes) / (len(features) - len(classes))
  return between / within


def test_appearance_statistics_do_not_tell_the_class():
  """Per-video colour statistics of the frames (mean and spread per channel) are drawn
  from one pool: their between-class variance is no larger than chance allows (F below
  the 99.9% quantile of F(15, 80), about 2.9)."""
  cfg = hard.Config(size=32, seconds=0.4, fps=25)
  feats, labels = [], []
  for index in range(16 * 6):
    v = hard.render(index % 16, synthetic.video_rng(0, 'train', index), cfg) / 255.0
    feats.append(np.concatenate([v.mean((0, 1, 2)), v.std((0, 1, 2))]))
    labels.append(index % 16)
  f = _anova_f(np.array(feats), np.array(labels))
  assert f.max() < 2.9, f
  # The check can fail: a class-dependent colour shows up at once.
  tinted = np.array(feats) + 0.2 * np.array(labels)[:, None] / 15  # up to +0.2
  assert _anova_f(tinted, np.array(labels)).max() > 2.9


def _near_far(cfg: hard.Config):
  """Mean absolute difference of 10-frame averages (the dots' blinking averaged out): two
  windows 2 frames apart, and 60 frames apart; over 6 videos."""
  near, far = [], []
  for index in range(6):
    v = hard.render(index, synthetic.video_rng(0, 'train', index), cfg).astype(float)
    near.append(np.abs(v[20:30].mean(0) - v[22:32].mean(0)).mean())
    far.append(np.abs(v[0:10].mean(0) - v[60:70].mean(0)).mean())
  return np.mean(near), np.mean(far)


def test_distant_frames_share_less_than_close_ones():
  near, far = _near_far(hard.Config(size=32, noise=0.0, shake=0.0))
  assert far > 3 * near, (near, far)
  # Without the window, the drifts and the objects entering, distant windows differ by
  # the dots alone (redrawn, moving): about half as much.
  _, far_static = _near_far(hard.Config(size=32, noise=0.0, shake=0.0, visible=(1.0, 1.0),
                                        cast=0.0, camera_zoom=0.0, distractors=0,
                                        occluder_speed=(0.0, 0.0)))
  assert far > 1.5 * far_static, (far, far_static)


def test_lighting_without_drift_holds_the_start_for_the_whole_video():
  """lighting_drift=False: the start's gain and cast in every frame (the same RNG stream,
  so frame 0 is the drifting video's frame 0); with drift the last frame differs."""
  still = dict(size=32, noise=0.0, shake=0.0, pan=0.0, camera_zoom=0.0, distractors=0,
               occluder_speed=(0.0, 0.0), visible=(1.0, 1.0), gain=(0.7, 1.3), cast=0.1)
  drift, fixed = hard.Config(**still), hard.Config(**still, lighting_drift=False)
  rng = lambda: synthetic.video_rng(0, 'train', 4)
  light = hard.scene(rng(), fixed)['lighting']
  np.testing.assert_array_equal(light['gain'][0], light['gain'][1])
  np.testing.assert_array_equal(light['cast'][0], light['cast'][1])
  a, b = hard.render(0, rng(), drift), hard.render(0, rng(), fixed)
  np.testing.assert_array_equal(a[0], b[0])
  # The last frames differ by the drift's end / start lighting, channel by channel.
  drawn = hard.scene(rng(), drift)['lighting']
  expected = (drawn['gain'][1] * (1 + drawn['cast'][1])) / (drawn['gain'][0] *
                                                             (1 + drawn['cast'][0]))
  assert np.abs(expected - 1).max() > 0.1
  np.testing.assert_allclose(a[-1].mean((0, 1)) / b[-1].mean((0, 1)), expected, rtol=0.02)


def test_demo_set_unchanged():
  """The demo renderer's bytes, recorded before the hard set was added."""
  cfg = synthetic.Config(size=32, seconds=0.6, fps=20)
  h = hashlib.sha256()
  for i in (0, 5, 11):
    h.update(synthetic.render(i % 8, synthetic.video_rng(0, 'train', i), cfg).tobytes())
  assert h.hexdigest() == 'f005051e90370d396002adf439281eb28407aa53496d0050a5fffa03422b7ddd'


@pytest.mark.parametrize('dataset', [None, 'hard'])
def test_cvrl_synth_writes_the_chosen_dataset(tmp_path, dataset):
  out = tmp_path / 'videos'
  cmd = [sys.executable, '-m', 'cvrl_tf.cli.synth', f'--output_dir={out}', '--num_train=1',
         '--num_test=0', '--size=16', '--workers=0'] + (
             [f'--dataset={dataset}'] if dataset else [])
  subprocess.run(cmd, check=True, capture_output=True, timeout=120)
  meta = json.loads((out / 'synthetic.json').read_text())
  module = hard if dataset else synthetic
  assert meta['classes'] == list(module.CLASSES)
  assert meta['seconds'] == module.Config().seconds  # demo 2 s, hard 3 s
  assert meta.get('dataset') == dataset
  rows = (out / 'train.csv').read_text().splitlines()
  assert len(rows) == 1 + len(module.CLASSES)
  assert os.path.getsize(out / rows[1].split(',')[0]) > 0
  assert not math.isnan(meta['fps'])
