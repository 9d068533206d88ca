"""Quality benchmark (`make bench-quality`, issue #31): the paper's ablations on the hard
synthetic dataset, several seeds each, mean and 95% interval per row.

Drives the real tools with the gin files shipped under cvrl_tf/configs/quality/:

  cvrl_synth --dataset=hard -> cvrl_convert (train, test) -> per variant and seed:
  quality/pretrain.gin, then quality/linear_eval.gin and quality/knn_eval.gin on the
  pretrained encoder; random init (linear + k-NN on the untrained encoder) and the
  supervised reference (quality/supervised.gin) per seed.

The protocols of one chain (pretraining -> linear -> k-NN of a variant and seed; random
init's linear -> k-NN -> supervised of a seed) run in one Python process, each stage
exactly as `cvrl_train --gin_file=... --gin_bindings=... --model_dir=...` runs it
(cli/gin_files.py: parse, check, run; gin cleared and a fresh Keras session between
stages): one TensorFlow start-up per chain instead of one per protocol. `--separate`
runs every stage as its own `cvrl_train` process (as before; for comparing the cost).
Per-stage wall and CPU seconds: OUT/logs/<chain>.stages.json.

Rows (docs/quality.md): main recipe (decreasing intervals, temporally consistent
augmentation, 3-hidden-layer head, 1x steps); per-frame augmentation; uniform and
increasing intervals; 2x steps; heads with 0 and 1 hidden layers; random init;
supervised. --quick: one seed, main + per-frame + random init (the supervised reference
only in the full table: it was a fifth of --quick's CPU time).

Each row: mean over seeds and a 95% interval, mean +- t(0.975, n-1) * s / sqrt(n)
(Student t; none with one seed). Below the table the report judges it: each target of
docs/quality.md section 2 met or not, and each of the paper's directions (the row's
paired difference from the main recipe; increasing against uniform intervals)
reproduced at 95%, reversed at 95%, or not significant with the mean on either side.
Output in OUT: quality.md (the table, the machine, the wall time, the verdicts),
quality.png (the rows with their intervals), results.json, logs/. Commands run `--jobs`
at a time (default: one per core), each with cores / jobs TensorFlow intra-op threads
(TF_NUM_INTRAOP_THREADS, unless set): two chains of two threads each on two cores kept
1.5 cores busy, one starved behind the other; one thread each keeps both busy
(docs/quality.md, section 6e). A step whose output exists is skipped, so an
interrupted run resumes.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from cvrl_tf.convert import pool as pool_lib  # The cores (affinity); no TensorFlow import.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 16
CHANCE = 100 / NUM_CLASSES  # top-1 (%) of a guess
BASE_STEPS = 600  # quality/pretrain.gin's pretrain.train_steps

# (name, label, extra pretraining bindings; {steps} is BASE_STEPS)
VARIANTS = [
    ('main', 'CVRL main recipe (decreasing, consistent, head 3, 1x steps)', []),
    ('per_frame', 'per-frame augmentation', ['pretrain_clips.per_frame_augment=True']),
    ('uniform', 'uniform intervals', ["pretrain_clips.interval_family='uniform'"]),
    ('increasing', 'increasing intervals', ["pretrain_clips.interval_family='increasing'"]),
    ('steps_2x', '2x pretraining steps', ['pretrain.train_steps={steps2}']),
    ('head0', 'projection head: 0 hidden layers',
     ['projection_head.num_hidden_layers=0']),
    ('head1', 'projection head: 1 hidden layer', ['projection_head.num_hidden_layers=1']),
]
QUICK_VARIANTS = ('main', 'per_frame')
# The paper's finding for each ablation, as the sign of (row - main recipe), as issue #31
# lists them from the paper (shared/CVRL_REFERENCE.md states the first two and the
# length's +2.3): per-frame augmentation much worse, uniform and increasing intervals
# worse than decreasing, longer pretraining better, a deeper projection head better.
PAPER_SIGN = {'per_frame': -1, 'uniform': -1, 'increasing': -1, 'steps_2x': +1,
              'head0': -1, 'head1': -1}
# Comparisons the paper makes between two ablation rows (row, against, sign of
# row - against): uniform intervals better than increasing (issue #31, from the paper).
PAPER_PAIRS = [('increasing', 'uniform', -1)]
# docs/quality.md section 2: random init <= chance + 15; the main recipe in 40-85 (not
# saturated); supervised >= main + 5 with the main recipe's interval below its own.
RANDOM_MARGIN, MAIN_RANGE, SUPERVISED_MARGIN = 15.0, (40.0, 85.0), 5.0


def chain_env(jobs: int, cores: Optional[int] = None, environ=None) -> Dict[str, str]:
  """The environment of every command: cores // jobs intra-op threads each (at least
  one), unless the caller set TF_NUM_INTRAOP_THREADS; TensorFlow's C++ logs quiet.
  (tf.data and the inter-op pool keep their own threads: one is not strict.)"""
  env = dict(os.environ if environ is None else environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  cores = cores or pool_lib.default_workers()
  env.setdefault('TF_NUM_INTRAOP_THREADS', str(max(1, cores // max(1, jobs))))
  return env

# Two-sided 95% Student t quantiles, t(0.975, df).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
         8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
  if df in _T975:
    return _T975[df]
  below = max(k for k in _T975 if k <= df)
  return _T975[below] if df < 30 else 1.96 + (2.042 - 1.96) * 30 / df


def mean_interval(values: Sequence[float]):
  """(mean, half-width of the 95% t interval or None, n)."""
  vals = [v for v in values if v is not None]
  n = len(vals)
  if not n:
    return None, None, 0
  mean = sum(vals) / n
  if n < 2:
    return mean, None, n
  sd = math.sqrt(sum((v - mean)**2 for v in vals) / (n - 1))
  return mean, t975(n - 1) * sd / math.sqrt(n), n


def paired_differences(values: Sequence[Optional[float]],
                       reference: Sequence[Optional[float]]) -> List[float]:
  """values[i] - reference[i] for the seeds both have. A seed fixes the initial weights
  and the input's shuffle of every row (not the order shards arrive in: docs/quality.md
  section 8), so the per-seed difference removes part of what the rows share: its
  interval is narrower than the two rows' side by side when that part matters."""
  return [v - r for v, r in zip(values, reference) if v is not None and r is not None]


def direction(stats, sign: int) -> str:
  """How a paired difference (mean, half-width or None, n) from the main recipe stands
  against the paper's direction `sign` (+1: the row should be above main, -1: below)."""
  mean, half, n = stats
  if mean is None:
    return 'not run'
  if half is None:
    return ('the paper\'s direction' if sign * mean > 0 else 'against the paper') + (
        f' in its one seed ({mean:+.1f}; no interval)')
  low, high = sorted((sign * (mean - half), sign * (mean + half)))
  shown = f'{mean:+.1f} +- {half:.1f}, {n} seeds'
  if low > 0:
    return f'**reproduced at 95%** ({shown})'
  if high < 0:
    return f'**reversed at 95%** ({shown})'
  return (f'not significant; the mean is in the paper\'s direction ({shown})'
          if sign * mean > 0 else f'not significant; the mean is against the paper ({shown})')


def target_lines(main_stats, random_stats, supervised_stats) -> List[str]:
  """docs/quality.md section 2's targets against the measured rows (linear top-1, %):
  each (mean, half-width or None, n); a row not run is said so."""
  verdict = lambda ok: 'met' if ok else '**not met**'
  out = []
  if random_stats[0] is not None:
    limit = CHANCE + RANDOM_MARGIN
    out.append(f'random init <= chance + {RANDOM_MARGIN:.0f} ({limit:.2f}): '
               f'{random_stats[0]:.1f} -> {verdict(random_stats[0] <= limit)}')
  if main_stats[0] is None:
    return out + ['main recipe: not run']
  low, high = MAIN_RANGE
  out.append(f'main recipe in {low:.0f}-{high:.0f} (not saturated): {main_stats[0]:.1f} -> '
             f'{verdict(low <= main_stats[0] <= high)}')
  if supervised_stats[0] is not None:
    gap = supervised_stats[0] - main_stats[0]
    out.append(f'supervised >= main + {SUPERVISED_MARGIN:.0f}: {supervised_stats[0]:.1f} vs '
               f'{main_stats[0]:.1f} -> {verdict(gap >= SUPERVISED_MARGIN)}')
    if main_stats[1] is None or supervised_stats[1] is None:
      out.append('main\'s interval below supervised\'s: needs 2+ seeds of both')
    else:
      top, bottom = main_stats[0] + main_stats[1], supervised_stats[0] - supervised_stats[1]
      out.append(f'main\'s 95% interval below supervised\'s: main up to {top:.1f}, '
                 f'supervised from {bottom:.1f} -> {verdict(top < bottom)}')
  return out


def machine_line() -> str:
  model, flags = platform.processor() or '?', set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name') and model in ('?', '', 'x86_64'):
          model = line.split(':', 1)[1].strip()
        if line.startswith('flags'):
          flags = set(line.split(':', 1)[1].split())
  except OSError:
    pass
  isa = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
  env = {k: os.environ[k] for k in ('ONEDNN_MAX_CPU_ISA', 'TF_ENABLE_ONEDNN_OPTS')
         if k in os.environ}
  missing = [f for f in ('avx512_bf16', 'amx_bf16') if f not in flags]
  return (f'{model}; {os.cpu_count()} cores; flags: {" ".join(isa) or "none"}'
          + (f' (no {", no ".join(missing)})' if missing else '')
          + (f'; env {env}' if env else ''))


def tool(name: str) -> List[str]:
  script = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.exists(script):
    return [script]
  return [sys.executable, os.path.join(REPO, 'tools', f'{name}.py')]


class Task:
  """A command; done when every one of done_files exists."""

  def __init__(self, key: str, cmd: List[str], done_files, after: Sequence[str] = ()):
    self.key, self.cmd, self.after = key, cmd, list(after)
    self.done_files = [done_files] if isinstance(done_files, str) else list(done_files)

  def done(self) -> bool:
    return all(os.path.exists(f) for f in self.done_files)


class Stage:
  """One protocol run: what `cvrl_train --gin_file=quality/F ... --gin_bindings=B
  --model_dir=D` runs; done when done_file exists."""

  def __init__(self, key: str, gin_files: Sequence[str], model_dir: str,
               bindings: Sequence[str], done_file: str):
    self.key, self.gin_files, self.model_dir = key, list(gin_files), model_dir
    self.bindings, self.done_file = list(bindings), done_file

  def cmd(self) -> List[str]:
    return (tool('cvrl_train') + [f'--gin_file=quality/{g}' for g in self.gin_files] +
            [f'--model_dir={self.model_dir}'] +
            [f'--gin_bindings={b}' for b in self.bindings])

  def as_json(self) -> dict:
    return dict(key=self.key, gin_files=self.gin_files, model_dir=self.model_dir,
                bindings=self.bindings, done_file=self.done_file)


def hard_config(overrides: Optional[str]):
  """synthetic_hard.Config with the fields of the JSON `overrides` changed (lists become
  tuples); unknown fields fail."""
  from cvrl_tf.convert import synthetic_hard  # pylint: disable=g-import-not-at-top
  changes = json.loads(overrides) if overrides else {}
  changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
  return dataclasses.replace(synthetic_hard.Config(), **changes)


def synth_variant(output_dir: str, overrides: str, seed: int, workers: Optional[int]) -> int:
  """`cvrl_synth --dataset=hard` with changed Config fields (the worker of
  --hard_config)."""
  from cvrl_tf.convert import synthetic_hard  # pylint: disable=g-import-not-at-top
  synthetic_hard.generate(output_dir, seed=seed, cfg=hard_config(overrides),
                          workers=pool_lib.default_workers() if workers is None else workers)
  return 0


def run_stages(spec_path: str) -> int:
  """The chain worker (`bench_quality.py --_chain=SPEC.json`): each stage not yet done,
  in order, in this process, as cvrl_train runs it; per-stage times to SPEC's
  `timings` file."""
  t_start, c_start = time.perf_counter(), time.process_time()
  with open(spec_path, encoding='utf-8') as f:
    spec = json.load(f)
  from cvrl_tf import cli  # pylint: disable=g-import-not-at-top
  cli.prefer_tf_keras()  # As cvrl_train: TensorFlow starts without Keras 3.
  import gin  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from cvrl_tf.cli import gin_files  # pylint: disable=g-import-not-at-top
  times = {'import': {'wall': time.perf_counter() - t_start,
                      'cpu': time.process_time() - c_start}}
  for stage in spec['stages']:
    if os.path.exists(stage['done_file']):
      print(f'--- {stage["key"]}: already done', flush=True)
      continue
    equivalent = ' '.join(shlex.quote(c) for c in Stage(**stage).cmd())
    print(f'=== {stage["key"]}: as {equivalent}', flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    gin_files.parse([f'quality/{g}' for g in stage['gin_files']], stage['bindings'])
    gin_files.check_protocol()
    gin_files.run(model_dir=stage['model_dir'])
    gin.clear_config()
    tf_keras.backend.clear_session()  # our models' Keras (not Keras 3)
    times[stage['key']] = {'wall': time.perf_counter() - t0,
                           'cpu': time.process_time() - c0}
    with open(spec['timings'], 'w', encoding='utf-8') as f:
      json.dump(times, f, indent=1)
  return 0


class Bench:

  def __init__(self, args):
    self.args = args
    self.out = os.path.abspath(args.out)
    self.seeds = [0] if args.quick else list(range(args.seeds))
    names = QUICK_VARIANTS if args.quick else [v[0] for v in VARIANTS]
    self.variants = [v for v in VARIANTS if v[0] in names]
    self.timings_path = self.path('timings.json')
    self.timings = {}
    if os.path.exists(self.timings_path):
      with open(self.timings_path, encoding='utf-8') as f:
        self.timings = json.load(f)

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def say(self, text: str) -> None:
    print(text, flush=True)

  # ---------------------------------------------------------------- the commands
  def records(self, split: str) -> str:
    return self.path('records', f'{split}-*.tfrecord')

  def data(self, protocol: str) -> List[str]:
    return [f"{protocol}.train_files='{self.records('train')}'",
            f"{protocol}.test_files='{self.records('test')}'",
            f"{protocol}.label_map_file='{self.path('records', 'train_label_map.txt')}'"]

  def chain(self, key: str, stages: Sequence[Stage], after: Sequence[str]) -> List[Task]:
    """One task running the stages in one process, or (--separate) one cvrl_train task a
    stage, each waiting on the one before."""
    if self.args.separate:
      tasks, before = [], list(after)
      for stage in stages:
        tasks.append(Task(stage.key, stage.cmd(), stage.done_file, after=before))
        before = [stage.key]
      return tasks
    spec = self.path('logs', f'{key}.chain.json')
    os.makedirs(os.path.dirname(spec), exist_ok=True)
    with open(spec, 'w', encoding='utf-8') as f:
      json.dump(dict(stages=[s.as_json() for s in stages],
                     timings=self.path('logs', f'{key}.stages.json')), f, indent=1)
    return [Task(key, [sys.executable, os.path.abspath(__file__), f'--_chain={spec}'],
                 [s.done_file for s in stages], after=after)]

  def eval_stages(self, name: str, seed: int, encoder: Sequence[str],
                  source: Sequence[str]) -> List[Stage]:
    """Linear and k-NN evaluation of one encoder (source: its encoder_source bindings)."""
    stages = []
    for protocol, done in (('linear_eval', 'eval_results.json'),
                           ('knn_eval', 'knn_results.json')):
      out = self.path('runs', f'{name}_{protocol}')
      b = self.data(protocol) + [f'{protocol}.{x}' for x in source]
      b += [f'{protocol}.seed={seed}']  # k-NN: the random-init encoder's weights
      stages.append(Stage(f'{protocol}_{name}', list(encoder) + [f'{protocol}.gin'], out,
                          b + self.args.eval_bindings, os.path.join(out, done)))
    return stages

  def tasks(self) -> List[Task]:
    a, tasks = self.args, []
    videos = self.path('videos')
    if a.hard_config:  # A variant of the design (calibration): its Config fields.
      synth = [sys.executable, os.path.abspath(__file__), f'--_synth={videos}',
               f'--hard_config={a.hard_config}', f'--data_seed={a.data_seed}']
    else:
      synth = tool('cvrl_synth') + ['--dataset=hard', f'--output_dir={videos}',
                                    f'--seed={a.data_seed}']
    tasks.append(Task('synth', synth + (['--workers=0'] if a.smoke else []) + a.synth_flags,
                      os.path.join(videos, 'synthetic.json')))
    for split, shards in (('train', 4), ('test', 2)):
      tasks.append(Task(f'convert_{split}', tool('cvrl_convert') + [
          f'--csv={os.path.join(videos, split + ".csv")}',
          f'--class_list={os.path.join(videos, "classes.txt")}',
          f'--output_dir={self.path("records")}', f'--prefix={split}',
          f'--num_shards={shards}', '--short_side=0'] + (['--workers=0'] if a.smoke else []),
                        self.path('records', f'{split}_manifest.json'), after=['synth']))
    data = ['convert_train', 'convert_test']
    steps = a.steps or BASE_STEPS
    chains = []
    for seed in self.seeds:
      for name, _, extra in self.variants:
        run = self.path('runs', f'{name}_s{seed}')
        bindings = [f"pretrain.train_files='{self.records('train')}'",
                    f'pretrain.seed={seed}', f'pretrain.train_steps={steps}']
        bindings += [b.format(steps2=2 * steps) for b in extra] + a.pretrain_bindings
        stages = [Stage(f'pretrain_{name}_s{seed}', ['pretrain.gin'], run, bindings,
                        os.path.join(run, 'backbone', 'backbone.json'))]
        stages += self.eval_stages(f'{name}_s{seed}', seed, [],
                                   ["encoder_source='model_dir'", f"pretrain_dir='{run}'"])
        chains.append((f'chain_{name}_s{seed}', stages))
      if seed not in self.seeds[:a.reference_seeds]:
        continue
      stages = self.eval_stages(f'random_s{seed}', seed, ['encoder.gin'],
                                ["encoder_source='random'"])
      out = self.path('runs', f'supervised_s{seed}')
      if not a.quick:
        stages.append(Stage(f'supervised_s{seed}', ['encoder.gin', 'supervised.gin'], out,
                            self.data('finetune') + [f'finetune.seed={seed}'] +
                            a.supervised_bindings, os.path.join(out, 'eval_results.json')))
      chains.append((f'chain_random_s{seed}', stages))
    # The longest chains first (2x steps, then the other pretraining chains), random init
    # and supervised last: the tail where one chain runs alone is then a short one.
    chains.sort(key=lambda chain: (not chain[0].startswith('chain_steps_2x'),
                                   chain[0].startswith('chain_random')))
    for key, stages in chains:
      tasks += self.chain(key, stages, data)
    order = {'synth': 0, 'convert': 1, 'pretrain': 2, 'chain': 2}
    return sorted(tasks, key=lambda t: order.get(t.key.split('_')[0], 3))

  # ---------------------------------------------------------------- running
  def run(self) -> None:
    os.makedirs(self.path('logs'), exist_ok=True)
    tasks = self.tasks()
    done = {t.key for t in tasks if t.done()}
    for key in sorted(done):
      self.say(f'--- {key}: already done')
    queue = [t for t in tasks if t.key not in done]
    if queue:
      self.record_settings()
    running = {}  # pid -> (task, start, log file)
    env = chain_env(self.args.jobs)
    try:
      while queue or running:
        for task in list(queue):
          if len(running) >= self.args.jobs:
            break
          if any(dep not in done for dep in task.after):
            continue
          queue.remove(task)
          log_path = self.path('logs', f'{task.key}.log')
          log = open(log_path, 'w', encoding='utf-8')
          log.write('$ ' + ' '.join(shlex.quote(c) for c in task.cmd) + '\n')
          log.flush()
          proc = subprocess.Popen(task.cmd, cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
          running[proc.pid] = (task, time.perf_counter(), log, proc)
          self.say(f'[{self.elapsed()}] start {task.key} (log: {log_path})')
        if not running:
          if queue:
            raise RuntimeError('tasks wait on steps that failed: '
                               + ', '.join(t.key for t in queue))
          break
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
          continue
        task, start, log, proc = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
          with open(self.path('logs', f'{task.key}.log'), encoding='utf-8',
                    errors='replace') as f:
            tail = ''.join(f.readlines()[-15:])
          raise RuntimeError(f'{task.key} failed (exit {proc.returncode}):\n{tail}')
        done.add(task.key)
        self.timings[task.key] = {'wall': seconds, 'cpu': usage.ru_utime + usage.ru_stime,
                                  'load1': os.getloadavg()[0]}
        with open(self.timings_path, 'w', encoding='utf-8') as f:
          json.dump(self.timings, f, indent=1)
        self.say(f'[{self.elapsed()}] done  {task.key} in {seconds:.0f} s '
                 f'(CPU {self.timings[task.key]["cpu"]:.0f} s, load {os.getloadavg()[0]:.1f})')
    finally:
      for task, _, log, proc in running.values():
        proc.kill()
        proc.wait()
        log.close()

  def elapsed(self) -> str:
    s = int(time.perf_counter() - self.t0)
    return f'{s // 60}:{s % 60:02d}'

  # ---------------------------------------------------------------- report
  def read(self, path: str, knn: bool = False) -> Optional[float]:
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      r = json.load(f)
    if knn:
      return 100 * float(r['results'][str(r['ks'][0])]['top1'])
    return 100 * float(r['top1'])

  def variant_row(self, name: str, label: str) -> dict:
    runs = [self.path('runs', f'{name}_s{s}') for s in self.seeds]
    return dict(name=name, label=label,
                linear=[self.read(os.path.join(f'{r}_linear_eval', 'eval_results.json'))
                        for r in runs],
                knn=[self.read(os.path.join(f'{r}_knn_eval', 'knn_results.json'), True)
                     for r in runs])

  def rows(self) -> List[dict]:
    rows = [self.variant_row(name, label) for name, label, _ in self.variants]
    rows.append(self.variant_row('random', 'random init (same encoder)'))
    if self.args.quick:
      return rows
    rows.append(dict(name='supervised', label='supervised from scratch (labels; reference)',
                     linear=[self.read(self.path('runs', f'supervised_s{s}',
                                                 'eval_results.json')) for s in self.seeds],
                     knn=[None] * len(self.seeds)))
    return rows

  def report(self, wall: float, load: tuple) -> str:
    rows = self.rows()
    fmt = lambda m, h: '-' if m is None else (f'{m:.1f}' if h is None
                                              else f'{m:.1f} +- {h:.1f}')
    seeds = lambda vals: ', '.join('-' if v is None else f'{v:.1f}' for v in vals)
    lines = ['| row | linear top-1 (%) mean +- 95% | kNN top-1 (%) mean +- 95% | '
             'linear - main, same seed | kNN - main, same seed | linear per seed | '
             'kNN per seed |', '|---|---:|---:|---:|---:|---|---|']
    # The main recipe's results, from disk also when --variants leaves its row out.
    main = self.variant_row('main', VARIANTS[0][1])
    for r in rows:
      r['linear_stats'] = mean_interval(r['linear'])
      r['knn_stats'] = mean_interval(r['knn'])
      paired = []
      for key in ('linear', 'knn'):
        stats = (None, None, 0)
        if r['name'] != 'main':
          stats = mean_interval(paired_differences(r[key], main[key]))
        r[f'{key}_minus_main'] = stats
        paired.append(fmt(*stats[:2]))
      lines.append(f'| {r["label"]} | {fmt(*r["linear_stats"][:2])} | '
                   f'{fmt(*r["knn_stats"][:2])} | {paired[0]} | {paired[1]} | '
                   f'{seeds(r["linear"])} | {seeds(r["knn"])} |')
    lines.append(f'| chance | {CHANCE:.2f} | {CHANCE:.2f} | | | | |')
    by_name = {r['name']: r for r in rows}
    none = (None, None, 0)
    checks = ['', '**Targets** (docs/quality.md section 2; linear):', ''] + [
        f'- {line}' for line in target_lines(
            mean_interval(main['linear']), by_name.get('random', {}).get('linear_stats', none),
            by_name.get('supervised', {}).get('linear_stats', none))]
    checks += ['', '**The paper\'s directions** (linear, paired with the main recipe):', '']
    checks += [f'- {r["label"]}: {direction(r["linear_minus_main"], PAPER_SIGN[r["name"]])}'
               for r in rows if r['name'] in PAPER_SIGN]
    for name, against, sign in PAPER_PAIRS:
      if name in by_name and against in by_name:
        stats = mean_interval(paired_differences(by_name[name]['linear'],
                                                 by_name[against]['linear']))
        checks.append(f'- {by_name[name]["label"]} against {by_name[against]["label"]}: '
                      f'{direction(stats, sign)}')
    lines += checks
    stages = self.stage_timings()
    pretrain_wall = sum(v['wall'] for k, v in stages.items() if k.startswith('pretrain_'))
    cpu = sum(v['cpu'] for v in self.timings.values())
    text = '\n'.join([
        '# Quality benchmark (benchmarks/bench_quality.py)', '',
        f'machine: {machine_line()}',
        f'seeds: {self.seeds}; base pretraining steps: {self.args.steps or BASE_STEPS}; '
        f'{self.settings_line()}' + ('; --quick' if self.args.quick else ''),
        f'wall time of this invocation: {wall / 60:.1f} min; CPU seconds of all commands '
        f'(all invocations): {cpu:.0f}; pretraining wall (sum): {pretrain_wall:.0f} s; '
        f'load average at start / end: {load[0]:.1f} / {os.getloadavg()[0]:.1f}', '',
        *lines, '',
        'Interval: mean +- t(0.975, n-1) s / sqrt(n) over the seeds (none with one seed); '
        '"- main, same seed": the same over the per-seed differences from the main '
        'recipe (a seed fixes the initial weights and the shuffle; a direction holds at '
        '95% when that interval excludes 0). '
        'Test split of the hard synthetic dataset (docs/quality.md), 128 videos.', ''])
    with open(self.path('quality.md'), 'w', encoding='utf-8') as f:
      f.write(text)
    with open(self.path('results.json'), 'w', encoding='utf-8') as f:
      json.dump(dict(rows=rows, seeds=self.seeds, wall=wall, machine=machine_line(),
                     stages=self.stage_timings()), f,
                indent=1)
    self.plot(rows)
    return text

  def recorded_settings(self) -> List[dict]:
    """--jobs and threads of each invocation that ran commands (OUT/settings.json)."""
    path = self.path('settings.json')
    if not os.path.exists(path):
      return []
    with open(path, encoding='utf-8') as f:
      return json.load(f)

  def settings_line(self) -> str:
    """How the commands ran (not how this invocation would, e.g. a --report_only)."""
    shown = sorted({f'{r["jobs"]} x {r["threads"]}' for r in self.recorded_settings()})
    return ('jobs x intra-op threads: ' + (', '.join(shown) if shown else 'none recorded')
            + ' (per invocation that ran commands)')

  def record_settings(self) -> None:
    runs = self.recorded_settings() + [dict(
        jobs=self.args.jobs, threads=chain_env(self.args.jobs)['TF_NUM_INTRAOP_THREADS'])]
    with open(self.path('settings.json'), 'w', encoding='utf-8') as f:
      json.dump(runs, f, indent=1)

  def stage_timings(self) -> Dict[str, dict]:
    """Wall and CPU seconds per protocol run: the chains' own records (logs/*.stages.json,
    'import' = a chain's start-up), and the separate commands' (timings.json)."""
    stages = {k: v for k, v in self.timings.items() if not k.startswith('chain_')}
    logs = self.path('logs')
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
      if name.endswith('.stages.json'):
        with open(os.path.join(logs, name), encoding='utf-8') as f:
          for key, value in json.load(f).items():
            stages[f'import_{name[:-len(".stages.json")]}' if key == 'import' else key] = value
    return stages

  def plot(self, rows: List[dict]) -> None:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    for offset, key, colour in ((0.15, 'linear', 'C0'), (-0.15, 'knn', 'C1')):
      for yi, r in zip(y, rows):
        m, h, _ = r[f'{key}_stats']
        if m is None:
          continue
        ax.errorbar(m, yi + offset, xerr=h or 0, fmt='o', color=colour, capsize=3,
                    label=key if yi == y[0] else None)
        vals = [v for v in r[key] if v is not None]
        ax.scatter(vals, [yi + offset] * len(vals), s=8, color=colour, alpha=0.4)
    ax.axvline(CHANCE, color='grey', ls='--', lw=1, label='chance')
    ax.set_yticks(y)
    ax.set_yticklabels([r['label'] for r in rows], fontsize=8)
    ax.set_xlabel('top-1 (%), mean and 95% interval over seeds (dots: seeds)')
    ax.set_xlim(0, 100)
    # Outside the axes: inside, it hid the last row's (supervised) interval.
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(self.path('quality.png'), dpi=100)
    plt.close(fig)


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', default='quality_out')
  p.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1 per row')
  p.add_argument('--quick', action='store_true',
                 help='one seed: main recipe, per-frame augmentation, random init')
  p.add_argument('--jobs', type=int, default=pool_lib.default_workers(),
                 help='commands at a time, each with cores / jobs intra-op threads')
  p.add_argument('--steps', type=int, default=None,
                 help=f'base pretraining steps (default {BASE_STEPS}, quality/pretrain.gin; '
                 'the 2x row runs twice as many)')
  p.add_argument('--data_seed', type=int, default=0, help='cvrl_synth --seed')
  p.add_argument('--variants', default=None,
                 help='comma-separated subset of: ' + ','.join(v[0] for v in VARIANTS))
  p.add_argument('--report_only', action='store_true')
  p.add_argument('--separate', action='store_true',
                 help='one cvrl_train process per protocol (as before chains; slower)')
  p.add_argument('--reference_seeds', type=int, default=None,
                 help='random init and supervised for the first N seeds only (default: all)')
  p.add_argument('--hard_config', default=None,
                 help='JSON of synthetic_hard.Config fields to change (calibration '
                 'probes), e.g. \'{"visible": [1, 1], "pan": 0}\'; default: the design as '
                 'shipped (cvrl_synth --dataset=hard)')
  p.add_argument('--pretrain_binding', action='append', default=[],
                 help='an extra gin binding of every pretraining run (calibration probes)')
  p.add_argument('--_chain', default=None, help=argparse.SUPPRESS)
  p.add_argument('--_synth', default=None, help=argparse.SUPPRESS)
  p.add_argument('--workers', type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument('--smoke', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.synth_flags, args.eval_bindings = [], []
  args.pretrain_bindings = list(args.pretrain_binding)
  args.supervised_bindings = []
  return args


def main(argv=None) -> int:
  args = parse(argv)
  if args._chain:  # pylint: disable=protected-access
    return run_stages(args._chain)  # pylint: disable=protected-access
  if args._synth:  # pylint: disable=protected-access
    return synth_variant(args._synth, args.hard_config, args.data_seed,  # pylint: disable=protected-access
                         args.workers)
  bench = Bench(args)
  if args.variants:
    keep = set(args.variants.split(','))
    bench.variants = [v for v in VARIANTS if v[0] in keep]
  bench.t0 = time.perf_counter()
  load = os.getloadavg()
  os.makedirs(bench.out, exist_ok=True)
  print(f'machine: {machine_line()}', flush=True)
  if not args.report_only:
    bench.run()
  print(bench.report(time.perf_counter() - bench.t0, load), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
