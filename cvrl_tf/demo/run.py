"""`make demo`: the whole CVRL pipeline on the embedded synthetic dataset, step by step.

Every step runs the command a user would type (console scripts of this venv, gin files
shipped under cvrl_tf/configs/demo/), as a subprocess whose progress output is passed through:

  1. cvrl_synth                          -> OUT/videos (8 motion classes, train/test CSVs)
  2. cvrl_convert (train, test)          -> OUT/records
  3. cvrl_train demo/pretrain.gin        -> OUT/runs/cvrl
  4. cvrl_train demo/linear_eval.gin     -> OUT/runs/cvrl_linear, random_linear
  5. cvrl_train demo/knn_eval.gin        -> OUT/runs/cvrl_knn, random_knn
  6. cvrl_export                         -> OUT/export (TF Hub SavedModel)
  7. cvrl_embed (hub.KerasLayer)         -> OUT/embeddings/test.npy
  8. cvrl_train demo/supervised.gin      -> OUT/runs/supervised (reference: the same
                                            encoder trained from scratch with labels)
  9. results.md + plots                  -> OUT/results.md, OUT/*.png

Steps 4-8 run two at a time after pretraining (--jobs; each step's output then goes to
OUT/logs/STEP.log): each cvrl_train spends much of its time in one thread (imports,
tracing, the input), so two use 2 cores better (2:15 instead of 2:43 for these steps,
AMD EPYC Zen 4 with ONEDNN_MAX_CPU_ISA=AVX2). Pretraining runs alone: its time is a
figure of the results table.
--ablations adds pretraining + linear (and k-NN) evaluation with per-frame augmentation
and with uniform interval sampling. A step whose outputs exist is skipped, so re-running
reuses everything already done (`make demo-clean` starts over); an interrupted
pretraining resumes from its last checkpoint. --quick is a seconds-long smoke run of the
same steps (tiny dataset and model, a few steps) used by the tests.
"""

import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Iterator, List, Optional, Sequence

from cvrl_tf import files as files_lib
from cvrl_tf.demo import report as demo_report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN_DIR = 'demo'  # A shipped config folder (cvrl_tf/configs/demo) or one of yours.
TIMINGS_FILE = 'timings.json'
NUM_CLASSES = 8  # of the synthetic dataset (cvrl_tf/convert/synthetic.py)
# Evaluation steps run two at a time on 2+ cores (Demo.side_by_side).
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


class DemoError(RuntimeError):
  """A step failed; the message names the command to re-run by hand."""


# Pretraining variants: (run name, table label, extra bindings).
MAIN_RUN = ('cvrl', 'CVRL (pretrained)', [])
SUPERVISED_RUN = 'supervised'
ABLATIONS = [
    ('cvrl_per_frame', 'CVRL, per-frame augmentation',
     ['pretrain_clips.per_frame_augment=True']),
    ('cvrl_uniform', 'CVRL, uniform interval sampling',
     ["pretrain_clips.interval_family='uniform'"]),
]


def quick_settings() -> dict:
  """Scaled-down settings of every step (tests): 2 videos per class, 32 px, 4 frames."""
  return {
      'synth': ['--num_train=2', '--num_test=2', '--size=32', '--seconds=1'],
      'shards': {'train': 2, 'test': 1},
      'convert': ['--workers=0'],  # a pool costs more than 32 tiny videos.
      'pretrain': ['pretrain.train_steps=2', 'pretrain.global_batch_size=8',
                   'pretrain.warmup_epochs=0',
                   'pretrain.checkpoint_every=1', 'pretrain.log_every=1',
                   'pretrain_clips.clip_len=4', 'pretrain_clips.crop_size=32',
                   'pretrain_clips.shuffle_buffer=16'],
      'classify': ['{fn}.train_steps=2', '{fn}.global_batch_size=8', '{fn}.warmup_epochs=0',
                   '{fn}.log_every=1', '{fn}.checkpoint_every=1', '{fn}.cache_passes=1',
                   'train_clips.clip_len=4',
                   'train_clips.crop_size=32'],
      'views': ['test_views.clip_len=4', 'test_views.num_clips=1',
                'test_views.num_crops=1', 'test_views.min_resize=32',
                'test_views.crop_size=32'],
      'embed': ['--num_clips=2', '--short_side=32', '--batch_size=4'],
      'supervised': ['finetune.train_steps=2', 'finetune.global_batch_size=8',
                     'finetune.warmup_epochs=0', 'finetune.log_every=1',
                     'finetune.checkpoint_every=1', 'finetune.eval_batch_size=8',
                     'train_clips.clip_len=4',
                     'train_clips.crop_size=32'],
  }


def default_settings() -> dict:
  return {'synth': [], 'shards': {'train': 4, 'test': 2}, 'convert': [], 'pretrain': [],
          'classify': [], 'views': [], 'embed': ['--num_clips=4', '--short_side=64'],
          'supervised': []}


def tool_command(name: str) -> List[str]:
  """The console script of this interpreter's venv, else the tools/ script."""
  script = os.path.join(os.path.dirname(sys.executable), name)
  if os.path.exists(script):
    return [script]
  return [sys.executable, os.path.join(REPO, 'tools', f'{name}.py')]


def _quoted(cmd: Sequence[str]) -> str:
  return ' '.join(shlex.quote(c) for c in cmd)


def _tool_env() -> dict:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))


def format_seconds(seconds: float) -> str:
  minutes, secs = divmod(int(round(seconds)), 60)
  return f'{minutes}:{secs:02d}'


class Demo:
  """Runs the steps in order, skipping those already done; records their durations."""

  def __init__(self, out: str, quick: bool = False, ablations: bool = False,
               gin_dir: str = GIN_DIR, stream=sys.stdout, jobs: int = DEFAULT_JOBS):
    self.out = os.path.abspath(out)
    self.jobs = max(1, jobs)
    self._pending = None  # While collecting steps to run side by side: [(title, key, cmd)].
    self._title = ''
    self.gin_dir = gin_dir
    self.quick = quick
    self.ablations = ablations
    self.settings = quick_settings() if quick else default_settings()
    self.stream = stream
    self.t0 = time.perf_counter()
    self.step_number = 0
    os.makedirs(self.out, exist_ok=True)
    self.timings = demo_report.read_json(self.path(TIMINGS_FILE)) or {}

  # ----------------------------------------------------------------------- helpers
  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def say(self, text: str) -> None:
    print(text, file=self.stream, flush=True)

  def header(self, title: str) -> None:
    """Starts a step; while steps are being collected (side_by_side), it is said when the
    step starts or is found done."""
    self._title = title
    if self._pending is None:
      self._print_header(title)

  def _print_header(self, title: str, note: str = '') -> None:
    self.step_number += 1
    elapsed = format_seconds(time.perf_counter() - self.t0)
    self.say(f'\n=== [{elapsed} elapsed] step {self.step_number}: {title}{note}')

  def run(self, key: str, cmd: Sequence[str]) -> None:
    """Runs cmd with its output passed through (or, while collecting, queues it); adds
    its duration to timings[key]."""
    if self._pending is not None:
      self._pending.append((self._title, key, list(cmd)))
      return
    self.say('$ ' + _quoted(cmd))
    start = time.perf_counter()
    code = subprocess.call(list(cmd), cwd=REPO, env=_tool_env())
    self._finished(key, cmd, code, time.perf_counter() - start)

  def _finished(self, key: str, cmd: Sequence[str], code: int, seconds: float,
                log: Optional[str] = None) -> None:
    if code != 0:
      tail = ''
      if log:
        with open(log, encoding='utf-8', errors='replace') as f:
          tail = ''.join(f.readlines()[-20:])
        self.say(f'--- failed; the end of {log}:\n{tail}')
      raise DemoError(f'step failed (exit {code}): {_quoted(cmd)}')
    self.timings[key] = self.timings.get(key, 0.0) + seconds
    files_lib.atomic_write(self.path(TIMINGS_FILE), json.dumps(self.timings, indent=1))
    self.say(f'--- done in {format_seconds(seconds)}' + (f': {key} ({log})' if log else ''))

  def skip(self, what: str) -> None:
    if self._pending is not None:
      self._print_header(self._title)
    self.say(f'--- already done ({what}); `make demo-clean` to redo')

  @contextlib.contextmanager
  def side_by_side(self, after: Optional[dict] = None) -> Iterator[None]:
    """The steps called in the block run `self.jobs` at a time once it ends (each
    cvrl_train spends much of its time in one thread: imports, tracing, the input), their
    output in OUT/logs/<key>.log; after maps a step's key to one it must wait for (if
    queued too)."""
    self._pending = []
    try:
      yield
      queue, self._pending = self._pending, None
      self._run_queue(queue, after or {})
    finally:
      self._pending = None

  def _run_queue(self, queue: List[tuple], after: dict) -> None:
    if self.jobs == 1:
      for title, key, cmd in queue:
        self._print_header(title)
        self.run(key, cmd)
      return
    files_lib.makedirs(self.path('logs'))
    queued = {key for _, key, _ in queue}
    running = {}  # key -> (process, cmd, start, log path, log file)
    done = set()
    try:
      while queue or running:
        for key, (proc, cmd, start, log, f) in list(running.items()):
          if proc.poll() is not None:
            f.close()
            del running[key]
            self._finished(key, cmd, proc.returncode, time.perf_counter() - start, log)
            done.add(key)
        for item in list(queue):
          title, key, cmd = item
          waits_for = after.get(key)
          if len(running) >= self.jobs or (waits_for in queued and waits_for not in done):
            continue
          queue.remove(item)
          log = self.path('logs', f'{key}.log')
          self._print_header(title, f' (side by side; output in {log})')
          self.say('$ ' + _quoted(cmd))
          f = open(log, 'w', encoding='utf-8')
          proc = subprocess.Popen(cmd, cwd=REPO, env=_tool_env(), stdout=f,
                                  stderr=subprocess.STDOUT)
          running[key] = (proc, cmd, time.perf_counter(), log, f)
        time.sleep(0.2)
    finally:
      for proc, _, _, _, f in running.values():  # A failure or Ctrl-C: stop the others.
        proc.kill()
        proc.wait()
        f.close()

  def train(self, gin_files: Sequence[str], model_dir: str,
            bindings: Sequence[str]) -> List[str]:
    cmd = tool_command('cvrl_train')
    cmd += [f'--gin_file={os.path.join(self.gin_dir, g)}' for g in gin_files]
    cmd += [f'--model_dir={model_dir}']
    cmd += [f'--gin_bindings={b}' for b in bindings]
    return cmd

  def records(self, split: str) -> str:
    return self.path('records', f'{split}-*.tfrecord')

  def data_bindings(self, protocol: str) -> List[str]:
    """The demo's train / test records and label map for a downstream protocol."""
    return [f"{protocol}.train_files='{self.records('train')}'",
            f"{protocol}.test_files='{self.records('test')}'",
            f"{protocol}.label_map_file='{self.path('records', 'train_label_map.txt')}'"]

  # ----------------------------------------------------------------------- steps
  def make_dataset(self) -> None:
    self.header('synthetic dataset (cvrl_synth)')
    videos = self.path('videos')
    if all(os.path.exists(os.path.join(videos, f))
           for f in ('train.csv', 'test.csv', 'classes.txt')):
      return self.skip(videos)
    self.run('synth', tool_command('cvrl_synth') + [f'--output_dir={videos}'] +
             self.settings['synth'])

  def convert(self) -> None:
    for split in ('train', 'test'):
      self.header(f'{split} videos -> TFRecord shards (cvrl_convert)')
      manifest = self.path('records', f'{split}_manifest.json')
      if os.path.exists(manifest):
        self.skip(manifest)
        continue
      self.run(f'convert_{split}', tool_command('cvrl_convert') + [
          f'--csv={self.path("videos", split + ".csv")}',
          f'--class_list={self.path("videos", "classes.txt")}',
          f'--output_dir={self.path("records")}', f'--prefix={split}',
          f'--num_shards={self.settings["shards"][split]}', '--short_side=0'] +
               self.settings['convert'])

  def pretrain(self, name: str, label: str, extra: Sequence[str]) -> None:
    self.header(f'CVRL pretraining: {label} (cvrl_train {self.gin_dir}/pretrain.gin)')
    model_dir = self.path('runs', name)
    if os.path.exists(os.path.join(model_dir, 'backbone', 'backbone.json')):
      return self.skip(model_dir)
    bindings = [f"pretrain.train_files='{self.records('train')}'",
                f"knn_monitor.train_files='{self.records('train')}'",
                f"knn_monitor.test_files='{self.records('test')}'"]
    bindings += ['knn_monitor/' + b for b in self.settings['views']]
    self.run(f'pretrain_{name}', self.train(
        ['pretrain.gin'], model_dir, bindings + self.settings['pretrain'] + list(extra)))

  def _downstream(self, protocol: str, encoder: str, model_dir: str,
                  done_file: str) -> None:
    """protocol: 'linear_eval' or 'knn_eval'; encoder: a pretraining run name or
    'random' (the same architecture, randomly initialized)."""
    if os.path.exists(os.path.join(model_dir, done_file)):
      return self.skip(os.path.join(model_dir, done_file))
    gin_files = [f'{protocol}.gin']
    bindings = self.data_bindings(protocol)
    if encoder == 'random':
      gin_files.insert(0, 'encoder.gin')
      bindings.append(f"{protocol}.encoder_source='random'")
    else:
      bindings += [f"{protocol}.encoder_source='model_dir'",
                   f"{protocol}.pretrain_dir='{self.path('runs', encoder)}'"]
    if protocol == 'linear_eval':
      bindings += [b.format(fn=protocol) for b in self.settings['classify']]
    bindings += self.settings['views']
    if protocol == 'knn_eval':
      bindings += ['knn_memory/' + b for b in self.settings['views']]
    self.run(f'{protocol}_{encoder}', self.train(gin_files, model_dir, bindings))

  def linear_eval(self, encoder: str, label: str) -> None:
    self.header(f'linear evaluation: {label} (cvrl_train {self.gin_dir}/linear_eval.gin)')
    self._downstream('linear_eval', encoder, self.path('runs', f'{encoder}_linear'),
                     'eval_results.json')

  def knn_eval(self, encoder: str, label: str) -> None:
    self.header(f'k-NN evaluation: {label} (cvrl_train {self.gin_dir}/knn_eval.gin)')
    self._downstream('knn_eval', encoder, self.path('runs', f'{encoder}_knn'),
                     'knn_results.json')

  def export(self) -> None:
    self.header('export the encoder as a TF Hub SavedModel (cvrl_export)')
    export_dir = self.path('export')
    if os.path.exists(os.path.join(export_dir, 'saved_model.pb')):
      return self.skip(export_dir)
    self.run('export', tool_command('cvrl_export') + [
        f'--model_dir={self.path("runs", MAIN_RUN[0])}', f'--export_dir={export_dir}'])

  def embed(self) -> None:
    self.header('embed the test videos with hub.KerasLayer (cvrl_embed)')
    prefix = self.path('embeddings', 'test')
    if os.path.exists(prefix + '.npy'):
      return self.skip(prefix + '.npy')
    # Frames and stride: cvrl_embed reads those of pretraining from the export's metadata.
    self.run('embed', tool_command('cvrl_embed') + [
        f'--input={self.path("videos", "test.csv")}', f'--output={prefix}',
        f'--hub_model={self.path("export")}'] + self.settings['embed'])

  def supervised(self) -> None:
    self.header(f'supervised reference: the same encoder from scratch, with labels '
                f'(cvrl_train {self.gin_dir}/supervised.gin)')
    model_dir = self.path('runs', SUPERVISED_RUN)
    if os.path.exists(os.path.join(model_dir, 'eval_results.json')):
      return self.skip(os.path.join(model_dir, 'eval_results.json'))
    self.run(SUPERVISED_RUN, self.train(
        ['encoder.gin', 'supervised.gin'], model_dir, self.data_bindings('finetune') +
        self.settings['supervised'] + self.settings['views']))

  # ----------------------------------------------------------------------- report
  def report(self, variants: Sequence[tuple]) -> str:
    self.header('results: table and plots')
    rows = []
    for name, label, _ in variants:
      rows.append({'method': label,
                   'linear': demo_report.linear_top1(self.path('runs', f'{name}_linear')),
                   'knn': demo_report.knn_top1(self.path('runs', f'{name}_knn'))[0],
                   'train_seconds': self.timings.get(f'pretrain_{name}')})
    rows.insert(1, {'method': 'random init (same encoder)',
                    'linear': demo_report.linear_top1(self.path('runs', 'random_linear')),
                    'knn': demo_report.knn_top1(self.path('runs', 'random_knn'))[0]})
    rows.append({'method': 'supervised from scratch (labels, all weights; reference)',
                 'linear': demo_report.linear_top1(self.path('runs', SUPERVISED_RUN)),
                 'train_seconds': self.timings.get(SUPERVISED_RUN)})
    table = demo_report.format_table(rows, NUM_CLASSES)
    _, k = demo_report.knn_top1(self.path('runs', f'{MAIN_RUN[0]}_knn'))
    total = sum(v for key, v in self.timings.items())
    notes = [
        f'Test split of the synthetic motion dataset ({NUM_CLASSES} classes, chance '
        f'{100 / NUM_CLASSES:.1f}%). Linear: frozen encoder + one Dense layer '
        f'({self.gin_dir}/linear_eval.gin), multi-view test. kNN: cosine k-NN'
        + (f', k={k}' if k else '') + f' ({self.gin_dir}/knn_eval.gin). The supervised '
        f'row trains the whole encoder with the labels ({self.gin_dir}/supervised.gin; '
        f'its time column is its training time): what labels reach on this data.',
        f'Pretraining time: wall clock of cvrl_train ({self.gin_dir}/pretrain.gin). '
        f'All steps: '
        f'{format_seconds(total)} (sum of the commands actually run, over all '
        f'invocations of the demo; the evaluation steps ran {self.jobs} at a time, so '
        f'the wall clock was shorter; load average at the end: '
        f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores).']
    text = '# CVRL demo results\n\n' + table + '\n\n' + '\n\n'.join(notes) + '\n'
    with open(self.path('results.md'), 'w', encoding='utf-8') as f:
      f.write(text)
    self.say(table)

    curves, knn_curves = {}, {}
    for name, label, _ in variants:
      summaries = self.path('runs', name, 'summaries')
      if os.path.isdir(summaries):
        curves[label] = demo_report.read_scalars(summaries, 'loss')
        knn_curves[label] = demo_report.read_scalars(summaries, 'knn_top1')
    batch = self._pretrain_batch_size()
    demo_report.plot_loss_curves(
        curves, self.path('pretrain_loss.png'),
        None if batch is None else math.log(2 * batch - 1),
        knn_curves=knn_curves, num_classes=NUM_CLASSES)
    demo_report.plot_accuracy_bars(rows, NUM_CLASSES, self.path('accuracy.png'))
    embeddings, labels = demo_report.read_embeddings(self.path('embeddings', 'test'))
    demo_report.plot_embeddings(
        embeddings, labels, self.path('embeddings_pca.png'),
        f'Test videos, exported CVRL encoder ({embeddings.shape[1]}-d), PCA')
    self.say(f'wrote {self.path("results.md")}, pretrain_loss.png, accuracy.png, '
             f'embeddings_pca.png in {self.out}')
    return text

  def _pretrain_batch_size(self) -> int:
    """pretrain.global_batch_size of the main run: its gin file and bindings, parsed."""
    # pylint: disable-next=g-import-not-at-top
    from cvrl_tf.cli import gin_files, settings
    gin_files.parse([os.path.join(self.gin_dir, 'pretrain.gin')],
                    self.settings['pretrain'] + list(MAIN_RUN[2]))
    return settings.build_recipe('pretrain').global_batch_size

  # ----------------------------------------------------------------------- all
  def run_all(self) -> str:
    variants = [MAIN_RUN] + (ABLATIONS if self.ablations else [])
    self.say(f'CVRL demo -> {self.out}' + (' (quick)' if self.quick else '') +
             (' with ablations' if self.ablations else ''))
    self.make_dataset()
    self.convert()
    for variant in variants:  # Alone: the pretraining time is a figure of the table.
      self.pretrain(*variant)
    with self.side_by_side(after={'embed': 'export'}):
      self.export()
      self.supervised()  # The longest evaluation step first.
      self.embed()
      self.linear_eval(MAIN_RUN[0], MAIN_RUN[1])
      self.linear_eval('random', 'random init (same encoder)')
      self.knn_eval(MAIN_RUN[0], MAIN_RUN[1])
      self.knn_eval('random', 'random init (same encoder)')
      for variant in ABLATIONS if self.ablations else []:
        self.linear_eval(variant[0], variant[1])
        self.knn_eval(variant[0], variant[1])
    text = self.report(variants)
    self.say(f'\n=== demo finished in {format_seconds(time.perf_counter() - self.t0)}')
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='demo_out', help='output folder (default demo_out)')
  parser.add_argument('--ablations', action='store_true',
                      help='also pretrain with per-frame augmentation and with uniform '
                      'interval sampling, and evaluate them')
  parser.add_argument('--quick', action='store_true',
                      help='tiny smoke run (tests): 2 videos per class, 32 px, 4 frames')
  parser.add_argument('--jobs', type=int, default=DEFAULT_JOBS,
                      help=f'evaluation steps run at once after pretraining (default '
                      f'{DEFAULT_JOBS} here; 1: one by one, output passed through)')
  parser.add_argument('--gin_dir', default=GIN_DIR,
                      help=f'folder of pretrain.gin, linear_eval.gin, knn_eval.gin and '
                      f'encoder.gin (default {GIN_DIR}: the shipped demo configs)')
  args = parser.parse_args(argv)
  try:
    Demo(args.out, quick=args.quick, ablations=args.ablations,
         gin_dir=args.gin_dir, jobs=args.jobs).run_all()
  except DemoError as e:
    print(f'demo: {e}', file=sys.stderr)
    return 1
  return 0
