"""benchmarks/bench_quality.py's bookkeeping (its runs are `make bench-quality`, not tests):
the 95% interval, what --quick and the full table schedule, and the threads per chain."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'benchmarks'))
import bench_quality  # noqa: E402  pylint: disable=wrong-import-position


def test_mean_interval_by_hand():
  # 10, 20, 30: mean 20, s = 10, half-width t(0.975, 2) * 10 / sqrt(3) = 4.303 * 5.7735.
  mean, half, n = bench_quality.mean_interval([10.0, 20.0, 30.0])
  assert (mean, n) == (20.0, 3)
  assert half == pytest.approx(24.843, abs=1e-3)
  # A missing seed is left out; one value has no interval.
  assert bench_quality.mean_interval([None, 7.0]) == (7.0, None, 1)
  assert bench_quality.mean_interval([]) == (None, None, 0)
  # Between tabulated degrees of freedom the next smaller one (wider interval) is used.
  assert bench_quality.t975(12) == bench_quality.t975(10)


@pytest.mark.parametrize('jobs, cores, threads', [(2, 2, '1'), (1, 2, '2'), (3, 2, '1'),
                                                  (2, 8, '4')])
def test_each_chain_gets_its_share_of_the_cores(jobs, cores, threads):
  env = bench_quality.chain_env(jobs, cores, environ={})
  assert env['TF_NUM_INTRAOP_THREADS'] == threads
  assert env['TF_CPP_MIN_LOG_LEVEL'] == '2'
  # What the user set wins.
  env = bench_quality.chain_env(jobs, cores, environ={'TF_NUM_INTRAOP_THREADS': '5'})
  assert env['TF_NUM_INTRAOP_THREADS'] == '5'


def stage_keys(tasks):
  """The run folder (OUT/runs/<key>/...) of every stage's done file."""
  keys = []
  for task in tasks:
    for f in task.done_files:
      parts = os.path.normpath(f).split(os.sep)
      if 'runs' in parts:
        keys.append(parts[parts.index('runs') + 1])
  return keys


def test_quick_runs_main_per_frame_and_random_init_only(tmp_path):
  bench = bench_quality.Bench(bench_quality.parse([f'--out={tmp_path}', '--quick']))
  keys = stage_keys(bench.tasks())
  assert 'main_s0' in keys and 'per_frame_s0' in keys
  assert 'random_s0_linear_eval' in keys and 'random_s0_knn_eval' in keys
  assert not any(k.startswith('supervised') or k.startswith('uniform') for k in keys)
  assert [r['name'] for r in bench.rows()] == ['main', 'per_frame', 'random']


def test_full_table_runs_every_row_for_every_seed(tmp_path):
  bench = bench_quality.Bench(bench_quality.parse([f'--out={tmp_path}', '--seeds=3']))
  keys = stage_keys(bench.tasks())
  for seed in range(3):
    for name, _, _ in bench_quality.VARIANTS:
      assert {f'{name}_s{seed}', f'{name}_s{seed}_linear_eval',
              f'{name}_s{seed}_knn_eval'} <= set(keys)
    assert f'supervised_s{seed}' in keys
  assert [r['name'] for r in bench.rows()][-2:] == ['random', 'supervised']
