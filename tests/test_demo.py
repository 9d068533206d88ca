"""Tests for `make demo`: the report helpers, and a scaled-down demo end to end.

The end-to-end test runs `tools/demo.py --quick` (2 videos per class, 32 px, 4 frames,
2 training steps) through the same console scripts and gin files as `make demo`, then
checks every artifact exists and parses, and that a second run redoes nothing.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import configs
from cvrl_tf.demo import report as demo_report
from cvrl_tf.demo import run as demo
import test_quiet  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------------- helpers
def test_pca_2d_recovers_the_main_axis():
  rng = np.random.default_rng(0)
  t = rng.normal(size=200)
  t -= t.mean()
  x = np.stack([3 * t, -3 * t, 0.01 * rng.normal(size=200)], axis=1) + 5.0
  proj = demo_report.pca_2d(x)
  assert proj.shape == (200, 2)
  np.testing.assert_allclose(proj.mean(axis=0), 0.0, atol=1e-9)
  # All the variance is on PC 1, which is +-t * 3 sqrt(2).
  np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(t) * 3 * np.sqrt(2), rtol=1e-3)
  assert np.var(proj[:, 1]) < 1e-3


def test_pca_2d_of_one_dimensional_data_pads():
  assert demo_report.pca_2d(np.arange(5.0)[:, None]).shape == (5, 2)


def test_format_table_has_every_row_and_chance():
  table = demo_report.format_table(
      [{'method': 'CVRL', 'linear': 0.75, 'knn': 0.5, 'train_seconds': 90},
       {'method': 'random', 'linear': 0.25, 'knn': None}], num_classes=8)
  lines = table.splitlines()
  assert lines[0].startswith('| method | linear top-1')
  assert lines[2] == '| CVRL | 75.0 | 50.0 | 1.5 min |'
  assert lines[3] == '| random | 25.0 | - | - |'
  assert lines[4] == '| chance | 12.5 | 12.5 | - |'


def test_read_scalars_merges_event_files_later_write_wins(tmp_path):
  for values in ([(1, 4.0), (2, 3.0)], [(2, 2.5), (3, 2.0)]):  # a resumed run
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
      for step, value in values:
        tf.summary.scalar('loss', value, step=step)
        tf.summary.scalar('other', -1.0, step=step)
    writer.close()
  steps, values = demo_report.read_scalars(str(tmp_path), 'loss')
  np.testing.assert_array_equal(steps, [1, 2, 3])
  np.testing.assert_allclose(values, [4.0, 2.5, 2.0])


def test_plots_are_png(tmp_path):
  rows = [{'method': 'CVRL', 'linear': 0.6, 'knn': 0.4}, {'method': 'random'}]
  paths = [
      demo_report.plot_loss_curves({'a': (np.arange(3), np.ones(3))},
                                   str(tmp_path / 'loss.png'), chance_loss=4.1),
      demo_report.plot_loss_curves({'a': (np.arange(3), np.ones(3))},
                                   str(tmp_path / 'loss_knn.png'), chance_loss=4.1,
                                   knn_curves={'a': (np.arange(2), np.full(2, 0.5))},
                                   num_classes=8),
      demo_report.plot_accuracy_bars(rows, 8, str(tmp_path / 'acc.png')),
      demo_report.plot_embeddings(np.random.default_rng(0).normal(size=(6, 4)),
                                  ['a', 'b'] * 3, str(tmp_path / 'pca.png'), 'x')]
  for path in paths:
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE


def test_side_by_side_steps_wait_for_what_they_need_and_fail_loudly(tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  stream = io.StringIO()
  d = demo.Demo(str(tmp_path / 'out'), jobs=2, stream=stream)
  marker = tmp_path / 'first_done'
  py = sys.executable
  with d.side_by_side(after={'second': 'first'}):
    d.header('first')
    d.run('first', [py, '-c', f'import time; time.sleep(0.5); open({str(marker)!r}, "w")'])
    d.header('second')  # Would fail if it started before 'first' finished.
    d.run('second', [py, '-c', f'import os; assert os.path.exists({str(marker)!r})'])
    d.header('third')
    d.run('third', [py, '-c', 'print("alongside")'])
  assert set(d.timings) == {'first', 'second', 'third'}
  assert 'alongside' in (tmp_path / 'out' / 'logs' / 'third.log').read_text()
  assert stream.getvalue().count('side by side; output in') == 3
  with pytest.raises(demo.DemoError, match='exit 3'):
    with d.side_by_side():
      d.header('failing')
      d.run('failing', [py, '-c', 'import sys; print("what went wrong"); sys.exit(3)'])
  assert 'what went wrong' in stream.getvalue()  # The log's end, shown.


def test_quick_settings_bind_the_protocol_name():
  bindings = [b.format(fn='linear_eval') for b in demo.quick_settings()['classify']]
  assert 'linear_eval.train_steps=2' in bindings


# ------------------------------------------------------------------------- end to end
@pytest.mark.skipif(
    not all(os.path.exists(configs.path(f'demo/{f}'))
            for f in ('linear_eval.gin', 'knn_eval.gin')),
    reason='demo/linear_eval.gin and knn_eval.gin (downstream protocols) not there')
def test_quick_demo_end_to_end_and_rerun_skips(tmp_path):
  out = tmp_path / 'demo'
  cmd = [sys.executable, os.path.join(REPO, 'tools', 'demo.py'), f'--out={out}', '--quick']
  env = dict(os.environ)
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # The demo sets 2 for its tools, as for a user.
  first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env=env)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  # Every tool is quiet on a healthy run (issue 26): no error-level line from any of
  # them, in what they printed here or in the logs of the steps run side by side.
  logs = ''.join(p.read_text() for p in sorted((out / 'logs').glob('*.log')))
  assert len(list((out / 'logs').glob('*.log'))) == 7
  assert not test_quiet.error_lines(first.stdout + first.stderr + logs), (
      test_quiet.error_lines(first.stdout + first.stderr + logs))

  # Results table: CVRL, random init, the supervised reference and chance, with numbers.
  results = (out / 'results.md').read_text()
  rows = [l for l in results.splitlines() if l.startswith('| ')]
  assert [r.split('|')[1].strip() for r in rows[1:]] == [
      'CVRL (pretrained)', 'random init (same encoder)',
      'supervised from scratch (labels, all weights; reference)', 'chance']
  for row in rows[1:3]:
    linear, knn = (float(c) for c in row.split('|')[2:4])
    assert 0 <= linear <= 100 and 0 <= knn <= 100
  supervised = json.loads((out / 'runs' / 'supervised' / 'eval_results.json').read_text())
  # The table prints one decimal: it is within half a unit of the last digit (0.05) of
  # the run's figure, plus the binary rounding of 100 * top1 and of the printed decimal
  # (~1e-14; a tie such as 18.75 printed as 18.8 sits exactly on 0.05).
  assert float(rows[3].split('|')[2]) == pytest.approx(100 * supervised['top1'],
                                                       abs=0.05 + 1e-9)

  # The online k-NN monitor ran at step 0 and at the end (2 steps), into the loss plot.
  steps, top1 = demo_report.read_scalars(str(out / 'runs' / 'cvrl' / 'summaries'),
                                         'knn_top1')
  np.testing.assert_array_equal(steps, [0, 2])
  assert np.all((0 <= top1) & (top1 <= 1))

  for name in ('pretrain_loss.png', 'accuracy.png', 'embeddings_pca.png'):
    with open(out / name, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE, name

  # The export loads as a Keras layer and maps clips to pooled features.
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  layer = hub.KerasLayer(str(out / 'export'), trainable=False)
  features = layer(tf.zeros([1, 4, 32, 32, 3]))
  assert len(features.shape) == 2 and features.shape[0] == 1

  # Embeddings of the 16 test videos (8 classes x 2), same width as the export.
  embeddings = np.load(out / 'embeddings' / 'test.npy')
  with open(out / 'embeddings' / 'test_index.csv', newline='') as f:
    index = list(csv.DictReader(f))
  assert embeddings.shape == (16, features.shape[1])
  assert np.all(np.isfinite(embeddings))
  assert len(index) == 16 and all(r['status'] == 'ok' for r in index)

  # Second run: every step is skipped, the report is rewritten.
  second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert second.stdout.count('already done') == 11
  assert '$ ' not in second.stdout  # no command was run
