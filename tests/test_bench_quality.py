"""benchmarks/bench_quality.py's bookkeeping (its runs are `make bench-quality`, not tests):
the 95% interval, what --quick and the full table schedule, and the threads per chain."""

import json
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


def test_paired_differences_use_the_seeds_both_rows_have():
  # Seed-to-seed spread shared by both rows cancels: 50/30/10 vs 40/20/0 differ by 10
  # in every seed, so the paired interval has width 0 while the rows' own are wide.
  diffs = bench_quality.paired_differences([50.0, 30.0, 10.0], [40.0, 20.0, 0.0])
  assert diffs == [10.0, 10.0, 10.0]
  assert bench_quality.mean_interval(diffs)[:2] == (10.0, 0.0)
  assert bench_quality.mean_interval([50.0, 30.0, 10.0])[1] > 40
  assert bench_quality.paired_differences([None, 5.0, 7.0], [1.0, None, 2.0]) == [5.0]


def write_results(root, name, seed, linear, knn):
  for protocol, doc, done in (
      ('linear_eval', {'top1': linear}, 'eval_results.json'),
      ('knn_eval', {'ks': [5], 'results': {'5': {'top1': knn}}}, 'knn_results.json')):
    out = root / 'runs' / f'{name}_s{seed}_{protocol}'
    out.mkdir(parents=True)
    (out / done).write_text(json.dumps(doc))


def report_rows(bench):
  text = bench.report(60.0, (0.0, 0.0, 0.0))
  return {line.split(' | ')[0][2:]: line.split(' | ')[1:5]
          for line in text.splitlines() if line.startswith('| ') and ' | ' in line}


def test_report_pairs_each_row_with_the_main_recipe_by_seed(tmp_path):
  # linear: main 50 / 30, per-frame 10 / 20 -> differences -40, -10: mean -25,
  # s = 21.21, t(0.975, 1) = 12.706 -> +- 190.6. kNN: main 40 / 20, per-frame 30 / 20
  # -> -10, 0: mean -5 +- 63.5.
  for seed, (ml, mk, pl, pk) in enumerate(((0.5, 0.4, 0.1, 0.3), (0.3, 0.2, 0.2, 0.2))):
    write_results(tmp_path, 'main', seed, ml, mk)
    write_results(tmp_path, 'per_frame', seed, pl, pk)
  args = bench_quality.parse([f'--out={tmp_path}', '--seeds=2'])
  bench = bench_quality.Bench(args)
  bench.variants = [v for v in bench_quality.VARIANTS if v[0] in ('main', 'per_frame')]
  rows = report_rows(bench)
  assert rows['per-frame augmentation'] == ['15.0 +- 63.5', '25.0 +- 63.5',
                                            '-25.0 +- 190.6', '-5.0 +- 63.5']
  main = next(v for k, v in rows.items() if k.startswith('CVRL main'))
  assert main[2:] == ['-', '-']
  # The paper's direction for per-frame augmentation: below main; -25 +- 190.6 is not
  # significant, its mean on the paper's side.
  text = bench.report(60.0, (0.0, 0.0, 0.0))
  assert ("- per-frame augmentation: not significant; the mean is in the paper's "
          "direction (-25.0 +- 190.6, 2 seeds)") in text
  assert '- main recipe in 40-85 (not saturated): 40.0 -> met' in text
  # Without the main row (--variants=per_frame, e.g. --report_only on a finished run)
  # the pairing still reads the main recipe's results.
  bench.variants = [v for v in bench_quality.VARIANTS if v[0] == 'per_frame']
  rows = report_rows(bench)
  assert rows['per-frame augmentation'][2:] == ['-25.0 +- 190.6', '-5.0 +- 63.5']
  assert not any(k.startswith('CVRL main') for k in rows)


@pytest.mark.parametrize('stats, sign, starts', [
    ((-26.6, 19.1, 6), -1, '**reproduced at 95%**'),  # below main, as the paper
    ((21.2, 21.0, 6), -1, '**reversed at 95%**'),  # above main where the paper is below
    ((11.6, 17.9, 6), +1, 'not significant; the mean is in the paper'),
    ((-7.9, 25.9, 6), +1, 'not significant; the mean is against the paper'),
    ((5.0, 4.0, 3), +1, '**reproduced at 95%**'),  # 1..9 excludes 0
    ((5.0, 6.0, 3), +1, 'not significant'),  # -1..11 does not
    ((5.0, 5.0, 3), +1, 'not significant'),  # 0..10 touches 0: not excluded
    ((-5.0, 5.0, 3), +1, 'not significant; the mean is against'),
    ((-3.0, None, 1), -1, "the paper's direction in its one seed"),
    ((None, None, 0), -1, 'not run'),
])
def test_direction_against_the_paper(stats, sign, starts):
  assert bench_quality.direction(stats, sign).startswith(starts)


def test_paper_signs_are_the_papers_findings():
  # The paper, as issue #31 lists it: consistent > per-frame, decreasing > uniform and
  # increasing, longer better, deeper head better (main has 3 hidden layers).
  assert bench_quality.PAPER_SIGN == {'per_frame': -1, 'uniform': -1, 'increasing': -1,
                                      'steps_2x': +1, 'head0': -1, 'head1': -1}
  assert set(bench_quality.PAPER_SIGN) == {v[0] for v in bench_quality.VARIANTS[1:]}
  assert bench_quality.PAPER_PAIRS == [('increasing', 'uniform', -1)]


def test_targets_by_hand():
  # Chance is 6.25 with 16 classes: random init may reach 21.25.
  lines = bench_quality.target_lines((34.0, 18.6, 6), (6.4, 0.3, 6), (93.5, 1.6, 6))
  assert lines[0].endswith('6.4 -> met')
  assert lines[1].endswith('34.0 -> **not met**')  # below 40
  assert lines[2].endswith('-> met')  # 93.5 >= 34.0 + 5
  # The intervals: main up to 34.0 + 18.6 = 52.6, supervised from 93.5 - 1.6 = 91.9.
  assert 'main up to 52.6, supervised from 91.9 -> met' in lines[3]
  lines = bench_quality.target_lines((60.0, 20.0, 3), (21.3, None, 1), (70.0, 5.0, 3))
  assert lines[0].endswith('21.3 -> **not met**')
  assert lines[1].endswith('60.0 -> met')
  assert lines[2].endswith('-> met')  # 70 >= 65
  assert lines[3].endswith('main up to 80.0, supervised from 65.0 -> **not met**')
  # Edges, in exactly representable values: 40 is inside 40-85, 21.25 is allowed,
  # supervised exactly main + 5 passes, 4.5 short fails; touching intervals fail.
  lines = bench_quality.target_lines((40.0, 10.0, 3), (21.25, None, 1), (45.0, 5.0, 3))
  assert lines[0].endswith('21.2 -> met')  # 21.25, printed to one decimal
  assert lines[1].endswith('40.0 -> met')
  assert lines[2].endswith('-> met')
  assert lines[3].endswith('main up to 50.0, supervised from 40.0 -> **not met**')
  lines = bench_quality.target_lines((40.0, 10.0, 3), (6.0, None, 1), (55.0, 5.0, 3))
  assert lines[3].endswith('main up to 50.0, supervised from 50.0 -> **not met**')  # touch
  lines = bench_quality.target_lines((39.5, 0.5, 3), (6.0, None, 1), (44.0, 0.25, 3))
  assert lines[1].endswith('39.5 -> **not met**')
  assert lines[2].endswith('44.0 vs 39.5 -> **not met**')  # 4.5 points above
  assert lines[3].endswith('main up to 40.0, supervised from 43.8 -> met')
  assert bench_quality.target_lines((None, None, 0), (6.0, None, 1),
                                    (None, None, 0))[-1] == 'main recipe: not run'


def test_report_compares_increasing_with_uniform_intervals(tmp_path):
  # Increasing 20 points below uniform in every seed: -20 +- 0, the paper's order.
  for seed, (u, i) in enumerate(((0.3, 0.1), (0.4, 0.2), (0.5, 0.3))):
    write_results(tmp_path, 'uniform', seed, u, u)
    write_results(tmp_path, 'increasing', seed, i, i)
  bench = bench_quality.Bench(bench_quality.parse([f'--out={tmp_path}', '--seeds=3']))
  bench.variants = [v for v in bench_quality.VARIANTS if v[0] in ('uniform', 'increasing')]
  text = bench.report(60.0, (0.0, 0.0, 0.0))
  assert ('- increasing intervals against uniform intervals: **reproduced at 95%** '
          '(-20.0 +- 0.0, 3 seeds)') in text
  assert '- main recipe: not run' in text  # No main results: the targets say so.


def test_longest_chains_start_first(tmp_path):
  bench = bench_quality.Bench(bench_quality.parse([f'--out={tmp_path}', '--seeds=2']))
  chains = [t.key for t in bench.tasks() if t.key.startswith('chain_')]
  assert chains[:2] == ['chain_steps_2x_s0', 'chain_steps_2x_s1']
  assert chains[-2:] == ['chain_random_s0', 'chain_random_s1']


def test_base_steps_are_the_gin_files():
  """The table's labels and the 2x row use BASE_STEPS; the runs take quality/pretrain.gin's
  train_steps. They must be one number."""
  path = os.path.join(bench_quality.REPO, 'cvrl_tf', 'configs', 'quality', 'pretrain.gin')
  with open(path) as f:
    steps = [line.split('=')[1].split('#')[0].strip() for line in f
             if line.startswith('pretrain.train_steps')]
  assert steps == [str(bench_quality.BASE_STEPS)]
