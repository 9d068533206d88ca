"""Every benchmark runs with --quick and prints its table (its timings are not checked).

The scripts run as subprocesses, two at a time (one per core of the target machine; more
at once only makes TensorFlow's thread pools spin against each other), the slowest
first, all scheduled when this module's fixture is first used; each test then waits for
its own. Each imports TensorFlow (~5 CPU-seconds), so the module takes about a minute.

Six run only with CVRL_SLOW_TESTS=1 (`make test` within its 10 minutes on an AVX2-only
CPU; ~200 CPU-seconds together): bench_train_step.py, bench_gather.py,
bench_demo_step.py, bench_e2e.py, bench_embed.py and bench_vs_model_garden.py (three
processes each building R3D-50). What they time is tested in
`make test` all the same: the train step in float32, bfloat16 and XLA
(test_pretrainer.py, test_train_loop.py), the cross-replica gather (test_losses.py,
test_distribute.py), the demo's steps (test_demo.py's quick demo), the input pipeline
feeding a step (test_pipeline.py, test_train_cli.py), feature extraction (test_embed.py).
Every `make test` runs bench_convert, bench_input, bench_export and bench_kernel_gradient.
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, 'benchmarks')
TIMEOUT_S = 600  # Per run, from its start.
PARALLEL = 2
SLOWEST_FIRST = ('bench_train_step.py', 'bench_gather.py', 'bench_input.py',
                 'bench_e2e.py', 'bench_convert.py')

SLOW = ('bench_train_step.py', 'bench_gather.py', 'bench_demo_step.py', 'bench_e2e.py',
        'bench_embed.py', 'bench_vs_model_garden.py')
RUN_SLOW = bool(os.environ.get('CVRL_SLOW_TESTS'))
slow = pytest.mark.skipif(not RUN_SLOW, reason='set CVRL_SLOW_TESTS=1')

sys.path.insert(0, BENCH_DIR)
import bench_vs_model_garden  # noqa: E402  pylint: disable=wrong-import-position
import run_all  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


class _Run:
  """`python benchmarks/NAME --quick` with its output in a file."""

  def __init__(self, name, tmp_path):
    self.name = name
    self.log = tmp_path / f'{name}.log'
    self.proc = None
    self.deadline = None
    self.finished = threading.Event()

  def start(self):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
    with open(self.log, 'w') as log:
      self.proc = subprocess.Popen(
          [sys.executable, os.path.join(BENCH_DIR, self.name), '--quick'], stdout=log,
          stderr=subprocess.STDOUT, env=env, cwd=str(self.log.parent))
    self.deadline = time.monotonic() + TIMEOUT_S

  def output(self) -> str:
    """The whole output once the run has finished; fails the test if it did not pass."""
    self.finished.wait()
    assert self.proc is not None, f'{self.name} never started'
    assert self.proc.returncode == 0, (
        f'{self.name} --quick exited with {self.proc.returncode} (-9: killed after '
        f'{TIMEOUT_S} s); tail:\n{self.tail()}')
    return self.log.read_text()

  def kill(self):
    if self.proc is not None and self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(timeout=30)

  def tail(self, n=4000):
    return self.log.read_text()[-n:]


def _schedule(runs, stop: threading.Event):
  """Keeps PARALLEL runs going, in order; kills those past their deadline."""
  pending, running = list(runs), []
  while (pending or running) and not stop.is_set():
    for run in list(running):
      if run.proc.poll() is None and time.monotonic() > run.deadline:
        run.kill()
      if run.proc.poll() is not None:
        running.remove(run)
        run.finished.set()
    while pending and len(running) < PARALLEL:
      run = pending.pop(0)
      run.start()
      running.append(run)
    time.sleep(0.2)
  for run in list(running) + pending:
    run.kill()
    run.finished.set()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('bench')
  names = [n for n in SLOWEST_FIRST if n in run_all.BENCHMARKS]
  names += [n for n in run_all.BENCHMARKS if n not in names]
  names = [n for n in names if RUN_SLOW or n not in SLOW]
  started = {name: _Run(name, tmp) for name in names}
  stop = threading.Event()
  scheduler = threading.Thread(target=_schedule,
                               args=([started[n] for n in names], stop), daemon=True)
  scheduler.start()
  yield started
  stop.set()
  scheduler.join(timeout=60)


def _table_rows(out: str, header_start: str):
  """Rows of the common.print_table table whose header line starts with header_start:
  lists of cells (split on 2+ spaces), up to the first blank line."""
  lines = out.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
  assert set(lines[start + 1].replace(' ', '')) == {'-'}, lines[start + 1]
  rows = []
  for line in lines[start + 2:]:
    if not line.strip():
      break
    rows.append(re.split(r'\s{2,}', line.strip()))
  return rows


def test_run_all_lists_every_benchmark():
  scripts = sorted(f for f in os.listdir(BENCH_DIR)
                   if f.startswith('bench_') and f.endswith('.py'))
  assert sorted(run_all.BENCHMARKS + tuple(run_all.SEPARATE)) == scripts


def test_convert_quick(runs):
  out = runs['bench_convert.py'].output()
  for w in (1, 2):
    for kind in ('decode_only', 'convert'):
      assert re.search(rf'^{kind} W={w}\s+[\d.]+ videos/s', out, re.M), out
  assert re.search(r'^pillow\s+[\d.]+ ms', out, re.M), out
  assert re.search(r'3 s video:\s+75 frames, peak RSS', out), out


def test_input_quick(runs):
  out = runs['bench_input.py'].output()
  lines = out.splitlines()
  header = next(i for i, l in enumerate(lines) if l.startswith('variant '))
  table = lines[header + 1:]
  table = table[:table.index('')] if '' in table else table
  names = [l.split()[0] for l in table]
  assert names == ['decode_only', 'defer=resize', 'resize/c456', 'resize/cNone',
                   'defer=colour/u8', 'defer=none', 'step:resize+col', 'step:colour',
                   'classify', 'classify/resize', 'eval'], out
  for line in lines[header + 1:header + 1 + len(names)]:
    assert float(line.split()[1]) > 0, line
  assert re.search(r'^guard fixed cost: -?\d+ us of CPU per video', out, re.M), out


@slow
def test_train_step_quick_covers_bf16_and_xla(runs):
  out = runs['bench_train_step.py'].output()
  rows = _table_rows(out, 'model ')
  combos = {(r[0], r[1], r[2]) for r in rows}
  assert combos == {('r3d18_0.25x', d, x) for d in ('float32', 'bfloat16')
                    for x in ('off', 'on')}, out
  for row in rows:
    assert len(row) == 10 and 'FAILED' not in row, row
    assert float(row[3].split()[0]) > 0 and float(row[-2]) > 0, row
  assert 'Conv3D peak bfloat16' in out and 'Conv3D peak float32' in out, out
  # Convolution ceiling: R3D-18 has 20 convs (stem, 8 blocks x 2, 3 projections).
  ceiling = _table_rows(out.split('Convolution ceiling')[1], 'model ')
  assert [(r[0], r[1], r[2]) for r in ceiling] == [
      ('r3d18_0.25x', d, '20 (13)') for d in ('float32', 'bfloat16')], out
  for row in ceiling:
    assert float(row[3]) > 0 and float(row[5]) > 0 and float(row[6]) > 0, row


@slow
def test_e2e_quick(runs):
  out = runs['bench_e2e.py'].output()
  rows = _table_rows(out, 'variant ')
  assert [r[0] for r in rows] == ['pipeline alone', 'step alone (cached batch)',
                                  'end to end'], out
  for row in rows:
    assert float(row[3].split()[0]) > 0, row
  assert re.search(r'^input pipeline is the bottleneck: (YES|no) ', out, re.M), out


@slow
def test_gather_quick(runs):
  out = runs['bench_gather.py'].output()
  rows = _table_rows(out, 'measured ')
  assert [(r[0], r[1]) for r in rows] == [('train step', '1'), ('train step', '2'),
                                          ('collectives', '1'), ('collectives', '2')], out
  assert [r[2] for r in rows] == ['2', '1', '2', '1'], out  # videos per replica
  assert re.search(r'^replication overhead: 2 replicas take [+-][\d.]+ s', out, re.M), out


def test_every_benchmark_names_the_machine_and_precision(runs):
  from cvrl_tf.runtime import hardware  # pylint: disable=g-import-not-at-top
  cpu = re.escape(hardware.read_cpu().describe())
  for name in runs:
    out = runs[name].output()
    assert re.search(rf'^machine: CPU {cpu}, oneDNN (on|off).* cores, load average '
                     rf'[\d.]+; precision: \S', out, re.M), (name, out[-3000:])


@slow
def test_demo_step_quick(runs):
  out = runs['bench_demo_step.py'].output()
  rows = _table_rows(out, 'step ')
  assert [(r[0], r[1]) for r in rows] == [
      (s, p) for s in ('pretrain', 'supervised') for p in ('float32', 'mixed_bfloat16')], out
  for row in rows:
    if row[1] == 'float32':  # bfloat16 may be refused where oneDNN is capped below it
      assert len(row) == 8 and float(row[-1]) > 0, row


@slow
def test_embed_quick(runs):
  out = runs['bench_embed.py'].output()
  rows = _table_rows(out, 'model ')
  assert [(r[0], r[1]) for r in rows] == [('demo', 'video, 4 clips'),
                                          ('demo', 'windows of 16 frames')], out
  for row in rows:
    assert row[3] == '2' and float(row[4].split()[0]) > 0 and float(row[-1]) > 0, row
  # 2 videos of 1 s at 25 fps: 25 frames each, 50 decoded frames per repetition.
  videos_per_s, frames_per_s = (float(rows[0][i].split()[0]) for i in (4, 5))
  assert abs(frames_per_s - 25 * videos_per_s) <= 0.01 * frames_per_s + 1, rows[0]


def test_kernel_gradient_quick(runs):
  out = runs['bench_kernel_gradient.py'].output()
  rows = _table_rows(out, 'policy ')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from cvrl_tf.models import video_layers  # pylint: disable=g-import-not-at-top
  layers = [r for r in rows if r[2] != 'sum']
  assert len(layers) == 20 and all(r[:2] == ['float32', 'demo'] for r in rows), out
  on_cpu = not tf.config.list_physical_devices('GPU')  # 'auto' keeps conv on a GPU
  for row in layers:  # the route 'auto' took, by the rule video_layers.Conv3D states
    time_only = row[4].endswith('x1x1')
    small = (int(row[6]) <= video_layers.SMALL_MAP and
             float(row[7]) * 1e6 >= video_layers.MIN_GEMM_MACS)
    assert row[-1] == ('gemm' if on_cpu and (time_only or small) else 'conv'), row
    assert all(float(v) > 0 for v in row[7:12]), row
  assert rows[-1][2] == 'sum' and rows[-1][-1].endswith('x)'), rows[-1]


def test_export_quick(runs):
  out = runs['bench_export.py'].output()
  rows = _table_rows(out, 'variant ')
  assert [(r[0], r[1], r[3]) for r in rows] == [('off', 'TF_ENABLE_ONEDNN_OPTS=0', 'off')], out
  assert float(rows[0][5].split()[0]) > 0, rows


def test_wall_shares_split_overlaps_and_count_idle():
  """Hand-computed: A [0, 10) and B [5, 15) overlap for 5 units (2.5 each), C [20, 30)
  runs alone after 5 idle units; the shares sum to the span, 30."""
  shares = bench_vs_model_garden.wall_shares([(0, 10, 'A'), (5, 15, 'B'), (20, 30, 'C')])
  assert dict(shares) == {'A': 7.5, 'B': 7.5, 'C': 10, ('idle', ''): 5}
  # Three at once, one of them twice (two runs of the same class): 2/3 and 1/3.
  shares = bench_vs_model_garden.wall_shares([(0, 3, 'A'), (0, 3, 'A'), (0, 3, 'B')])
  assert shares['A'] == pytest.approx(2) and shares['B'] == pytest.approx(1)


@pytest.mark.parametrize('scope, op, expected', [
    ('gradient_tape/cvrl_pretrainer/r3d50/res2_block1_conv_a/Conv3D/Conv3DBackpropFilterV2',
     '_MklNativeConv3DBackpropFilterV2', 'conv kernel gradient'),
    ('gradient_tape/model/res_block/conv3d_4/Conv3D/Conv3DBackpropInputV2',
     'Conv3DBackpropInputV2', 'conv input gradient'),
    ('cvrl_pretrainer/r3d50/stem_conv/Conv3D', '_MklNativeConv3D', 'conv forward'),
    ('SGD/gradients/res4_block2_conv_a_kernel_gradient/MatMul', '_MklMatMul',
     'conv kernel gradient'),
    ('cvrl_pretrainer/r3d50/res2_block1_bn_a/FusedBatchNormV3',
     '_MklNativeFusedBatchNormV3', 'batch norm'),
    ('video_ssl_model/resnet3d/sync_batch_normalization_3/moments/mean', 'Mean',
     'batch norm'),
    ('cvrl_pretrainer/projection_head/hidden_0/MatMul', '_MklMatMul', 'head + loss'),
    ('SGD/SGD/update_12/ResourceApplyKerasMomentum', 'ResourceApplyKerasMomentum',
     'optimizer update'),
    ('cvrl_pretrainer/r3d50/res2_block1_add/add', 'AddV2', 'other'),
])
def test_profile_op_classes(scope, op, expected):
  assert bench_vs_model_garden.op_class(scope, op) == expected


@slow
def test_vs_model_garden_quick(runs):
  out = runs['bench_vs_model_garden.py'].output()
  rows = _table_rows(out, 'step ')
  assert [r[0] for r in rows] == ['ours', 'mg', 'mg_plain'], out
  for row in rows:
    assert float(row[2].split()[0]) > 0, row
  assert re.search(r'^  mg_plain / ours step time: [\d.]+x$', out, re.M), out
  # The same encoder in all three (R3D-50 with the released block specs), counted in each
  # process; the heads differ by Model Garden's 3 x 2048 redundant hidden biases.
  counts = re.search(r'^trainable parameters, encoder \(whole model\): ours ([\d,]+) '
                     r'\(([\d,]+)\), mg ([\d,]+) \(([\d,]+)\), mg_plain ([\d,]+) '
                     r'\(([\d,]+)\)$', out, re.M)
  assert counts and 'WARNING' not in out, out
  encoders = {int(c.replace(',', '')) for c in counts.groups()[::2]}
  wholes = [int(c.replace(',', '')) for c in counts.groups()[1::2]]
  assert len(encoders) == 1, out
  assert wholes[1] == wholes[2] == wholes[0] + 3 * 2048, out
  profile = {r[0]: r for r in _table_rows(out, 'op class ')}
  assert 'GFLOP/s' in profile['conv forward'][1], out
  assert profile['profiled step'][1].endswith('(100.0%)'), out
