"""synthetic: deterministic, balanced, motion-only classes, real mp4 files."""

import collections
import csv
import os
import subprocess
import sys

import numpy as np

from cvrl_tf.data import synthetic
from cvrl_tf.data import video_io

TINY = synthetic.Config(size=32, seconds=0.6, fps=20)  # 12 frames


def test_render_is_deterministic_and_seed_dependent():
  a = synthetic.render(3, synthetic.video_rng(0, 'train', 3), TINY)
  b = synthetic.render(3, synthetic.video_rng(0, 'train', 3), TINY)
  c = synthetic.render(3, synthetic.video_rng(1, 'train', 3), TINY)
  assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).mean() > 5


def test_first_frame_does_not_depend_on_the_motion():
  """Same seed, different class: identical first frame (translations start at the same
  place, rotations at the same angle), then the motions diverge."""
  cfg = synthetic.Config(size=48, seconds=0.8, fps=25)
  videos = [synthetic.render(k, np.random.default_rng(7), cfg)
            for k in range(len(synthetic.CLASSES))]
  for k, name in enumerate(synthetic.CLASSES):
    if not name.startswith('zoom'):
      np.testing.assert_array_equal(videos[k][0], videos[0][0])
    assert k == 0 or np.abs(videos[k][-1].astype(int) - videos[0][-1]).mean() > 1


def test_motion_is_visible_in_every_shot():
  """Pixel noise changes frames by the same amount at any lag; the class motion adds a
  change that grows with the lag, in every shot, not only the first."""
  cfg = synthetic.Config(size=64, seconds=1.44, fps=25, shot_min=12, shot_max=12)
  for k in range(len(synthetic.CLASSES)):
    v = synthetic.render(k, synthetic.video_rng(0, 'test', k), cfg).astype(int)
    for t0 in (0, 12, 24):
      lag10 = np.abs(v[t0 + 10] - v[t0]).mean()
      assert lag10 > 1.3 * np.abs(v[t0 + 1] - v[t0]).mean(), (k, t0)


def test_scene_changes_at_cuts_only():
  """Fixed 6-frame shots: consecutive frames across a cut differ far more than within a
  shot; with shot_max=0 no frame-to-frame change is that large."""
  cfg = synthetic.Config(size=48, seconds=0.72, fps=25, shot_min=6, shot_max=6)  # 18
  one_shot = synthetic.Config(size=48, seconds=0.72, fps=25, shot_max=0)
  for k in range(len(synthetic.CLASSES)):
    for c, cuts in ((cfg, (6, 12)), (one_shot, ())):
      v = synthetic.render(k, synthetic.video_rng(0, 'train', k), c).astype(int)
      step = [np.abs(v[t] - v[t - 1]).mean() for t in range(1, len(v))]
      within = [d for t, d in enumerate(step, 1) if t not in cuts]
      for t in cuts:
        assert step[t - 1] > 3 * np.median(within), (k, t, step)
      assert max(within) < 3 * np.median(within), (k, cuts, step)


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def test_generate_is_deterministic_and_balanced(tmp_path):
  paths = synthetic.generate(str(tmp_path / 'a'), num_train=2, num_test=1, seed=3,
                             cfg=TINY, workers=0, log=None)
  again = synthetic.generate(str(tmp_path / 'b'), num_train=2, num_test=1, seed=3,
                             cfg=TINY, workers=0, log=None)
  for split, per_class in (('train', 2), ('test', 1)):
    with open(paths[split]) as f:
      rows = list(csv.DictReader(f))
    assert collections.Counter(r['label'] for r in rows) == {
        c: per_class for c in synthetic.CLASSES}
    for r in rows:
      assert _read(tmp_path / 'a' / r['path']) == _read(tmp_path / 'b' / r['path'])
    assert _read(paths[split]) == _read(again[split])
  with open(paths['classes']) as f:
    assert f.read().split() == list(synthetic.CLASSES)
  first = os.path.join(tmp_path, 'a', rows[0]['path'])
  with video_io.FrameReader(first) as reader:
    assert (reader.width, reader.height, reader.fps) == (32, 32, 20)
    assert len(list(reader)) == 12


def test_cli_usage_error_and_run(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  tool = os.path.join(os.path.dirname(__file__), '..', 'tools', 'cvrl_synth.py')
  bad = subprocess.run([sys.executable, tool], capture_output=True, text=True, env=env)
  assert bad.returncode == 2 and 'output_dir' in bad.stderr
  out = tmp_path / 'synth'
  ok = subprocess.run([sys.executable, tool, f'--output_dir={out}', '--num_train=1',
                       '--num_test=1', '--size=32', '--seconds=0.4', '--workers=2'],
                      capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr
  with open(out / 'train.csv') as f:
    assert len(f.read().splitlines()) == 1 + len(synthetic.CLASSES)
  # Workers and a single process produce the same bytes.
  same = synthetic.generate(str(tmp_path / 'inline'), num_train=1, num_test=1, seed=0,
                            cfg=synthetic.Config(size=32, seconds=0.4), workers=0, log=None)
  with open(same['train']) as f:
    first = f.read().splitlines()[1].split(',')[0]
  assert _read(out / first) == _read(tmp_path / 'inline' / first)
