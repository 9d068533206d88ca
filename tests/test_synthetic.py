"""synthetic: deterministic, balanced, motion-only classes, real mp4 files."""

import collections
import csv
import math
import os
import subprocess
import sys

import numpy as np

from cvrl_tf.convert import synthetic
from cvrl_tf.convert import video_io

TINY = synthetic.Config(size=32, seconds=0.6, fps=20)  # 12 frames


def test_render_is_deterministic_and_seed_dependent():
  a = synthetic.render(3, synthetic.video_rng(0, 'train', 3), TINY)
  b = synthetic.render(3, synthetic.video_rng(0, 'train', 3), TINY)
  c = synthetic.render(3, synthetic.video_rng(1, 'train', 3), TINY)
  assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).mean() > 5


STILL = synthetic.Config(noise=0.0, shake=0.0)  # 64 px, 50 frames, no nuisance


def _energy(video):
  """|pixel - grey| per pixel, averaged over channels: float [T, H, W]."""
  return np.abs(video.astype(float) - 127.5).mean(-1)


def test_frames_look_alike_across_classes():
  """A single frame carries no class information: dot energy in the centre and along
  the border of the frame is the same for every class (a contraction with dots only
  inside the frame would crowd its centre and empty its border)."""
  centre, border = {}, {}
  for k, name in enumerate(synthetic.CLASSES):
    e = np.stack([_energy(synthetic.render(k, synthetic.video_rng(0, 'train', 8 * i + k),
                                           STILL)) for i in range(6)])
    centre[name] = e[:, :, 16:48, 16:48].mean()
    border[name] = np.concatenate([e[:, :, :8].ravel(), e[:, :, -8:].ravel()]).mean()
  for region in (centre, border):
    mean = np.mean(list(region.values()))
    for name, value in region.items():
      assert abs(value / mean - 1) < 0.12, (name, region)


def test_dots_in_frame_are_as_many_for_every_class():
  """Counted from the tracks: the mean number of dots inside the frame is the class-free
  density (cfg.dots) for every class, zooms included (their crowding is corrected)."""
  for k, name in enumerate(synthetic.CLASSES):
    counts = []
    for i in range(20):
      pos, _ = synthetic.dot_tracks(k, synthetic.video_rng(5, 'train', 8 * i + k), STILL)
      counts.append(((pos >= 0) & (pos < STILL.size)).all(-1).sum(-1).mean())
    assert abs(np.mean(counts) / STILL.dots - 1) < 0.03, (name, np.mean(counts))


def test_same_bytes_whatever_the_blas_threads():
  """The renderer's sums are float64, so the BLAS thread count (workers use 1) cannot
  change a rounded pixel, at a size where float32 GEMMs did."""
  code = ('import hashlib; from cvrl_tf.convert import synthetic as s; '
          'v = s.render(6, s.video_rng(0, "train", 6), s.Config(size=224, seconds=2.0)); '
          'print(hashlib.sha1(v.tobytes()).hexdigest())')
  digests = set()
  for threads in ('1', '2'):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=env, check=True)
    digests.add(out.stdout.strip())
  assert len(digests) == 1, digests


def _block_flow(a, b, patch=12, step=8, reach=6):
  """Independent motion estimate from frame a to frame b (grey float [H, W]): the integer
  shift minimising the patch SSD, on a grid of textured patches -> centres, shifts."""
  h, w = a.shape
  centres, shifts = [], []
  for y in range(reach, h - patch - reach + 1, step):
    for x in range(reach, w - patch - reach + 1, step):
      ref = a[y:y + patch, x:x + patch]
      if ref.std() < 8:
        continue
      ssd = {(dx, dy): np.square(b[y + dy:y + dy + patch, x + dx:x + dx + patch] - ref).sum()
             for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)}
      centres.append((x + patch / 2, y + patch / 2))
      shifts.append(min(ssd, key=ssd.get))
  return np.array(centres, float), np.array(shifts, float)


def test_block_matching_recovers_each_class_flow():
  """Fit v = b + A (p - mean p) to block-matched shifts over 2 frames: translations have
  the class direction, rotations the sign of the curl, zooms the sign of the divergence."""
  for k, name in enumerate(synthetic.CLASSES):
    v = synthetic.render(k, synthetic.video_rng(0, 'test', k), STILL).astype(float).mean(-1)
    centres, shifts = [], []
    for t in range(0, 46, 3):
      c, s = _block_flow(v[t], v[t + 2])
      centres.append(c)
      shifts.append(s)
    c, s = np.concatenate(centres), np.concatenate(shifts)
    design = np.concatenate([np.ones((len(c), 1)), c - c.mean(0)], axis=1)
    coef = np.linalg.lstsq(design, s, rcond=None)[0]  # rows: b, d/dx, d/dy
    b, jac = coef[0], coef[1:].T  # jac[i, j] = d v_i / d p_j
    curl, div = jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]
    if name.startswith('translate'):
      expected = {'left': 180, 'right': 0, 'up': -90, 'down': 90}[name.split('_')[1]]
      angle = math.degrees(math.atan2(b[1], b[0]))
      assert abs((angle - expected + 180) % 360 - 180) < 35, (name, b)
      # 2 frames at 1.6 px/frame +-30%.
      assert 0.6 * 3.2 < np.hypot(*b) < 1.4 * 3.2, (name, b)
      assert max(abs(curl), abs(div)) < 0.06, (name, jac)
    elif name.startswith('rotate'):
      # Expected curl 2 x 2 frames x 4 deg/frame = 0.28 rad, +-30%.
      assert (curl > 0) == (name == 'rotate_cw'), (name, jac)
      assert abs(curl) > 0.1 and abs(curl) > 3 * abs(div), (name, jac)
    else:
      # Expected divergence 2 x 2 frames x 0.05 = 0.2, +-30%.
      assert (div > 0) == (name == 'zoom_in'), (name, jac)
      assert abs(div) > 0.1 and abs(div) > 3 * abs(curl), (name, jac)


def _best_alignment(a, b):
  """Max over all circular shifts of the normalised cross-correlation of two frames."""
  a, b = a - a.mean(), b - b.mean()
  corr = np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real
  return corr.max() / np.sqrt((a * a).sum() * (b * b).sum())


def test_dots_do_not_persist():
  """Two frames a few steps apart align under a shift (the same dots, moved); frames
  twice the dot lifetime apart align no better than frames of different videos."""
  k = synthetic.CLASSES.index('translate_right')
  v = synthetic.render(k, synthetic.video_rng(0, 'train', k), STILL).astype(float).mean(-1)
  other = synthetic.render(k, synthetic.video_rng(0, 'train', k + 8), STILL)
  other = other.astype(float).mean(-1)
  near = _best_alignment(v[20], v[22])
  far = _best_alignment(v[20], v[20 + 2 * STILL.dot_lifetime])
  unrelated = _best_alignment(v[20], other[20])
  assert near > 0.5, near
  assert far < 1.5 * unrelated and far < 0.3, (far, unrelated)


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
