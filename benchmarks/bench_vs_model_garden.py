"""Our pretraining step against Model Garden's video_ssl step: same model, kernels, precision.

  python benchmarks/bench_vs_model_garden.py                      # R3D-50 float32 8x112x112
  python benchmarks/bench_vs_model_garden.py --dtype=bfloat16 --pairs=2
  python benchmarks/bench_vs_model_garden.py --kernels=eigen      # both on TF's default
  python benchmarks/bench_vs_model_garden.py --profile            # + time per op class
  python benchmarks/bench_vs_model_garden.py --quick              # smoke run, ~1 minute

Each measurement is a fresh process, and the processes alternate (ours, Model Garden as
released, Model Garden with plain BN, then again, --pairs times), so a drift of the
machine's speed falls on all of them alike. In every process the kernels are set the same
way, by TF_ENABLE_ONEDNN_OPTS in its environment before TensorFlow loads (--kernels).

  ours      CVRLPretrainer.train_step under model.fit (what cvrl_train runs): R3D-50 with
            the released block specs, projection head 3 x 2048 -> 128, SGD + momentum 0.9
            on warm-up + cosine, weight decay 1e-6 on conv/dense kernels.
  mg        video_ssl's pretraining task as its users get it: exp_factory's
            'video_ssl_pretrain_kinetics600' with the released yaml's overrides
            (tests/data/model_garden_cvrl_yaml.json: cvrl_pretrain_k600_200ep.yaml), the
            clip shape, batch and precision replaced by ours; task.train_step in a
            tf.function, as Model Garden's trainer calls it. The yaml asks for synchronized
            BN, which Model Garden builds even on one replica.
  mg_plain  the same with use_sync_bn=False: Model Garden's step at its fastest setting
            here. The ratio to this one is the one that compares the steps' code; the
            ratio to `mg` is what a user of the released config sees.

Each process times --reps steps after --warmup (median, end of step to end of step), then
with --profile records 3 more steps with TensorFlow's profiler and sums every op's time by
class (convolution forward, its input and kernel gradients, batch norm, ReLU, pooling,
the loss and head, weight decay, the optimizer update) and direction. Ops often run two
at a time on 2 cores; each moment is split equally among the ops running then, and a
moment with none running is 'idle', so the classes sum to the profiled step's wall time.
A convolution class's GFLOP/s is its FLOPs (models/flops.py, the same count for both
models) over its share of the wall time.
"""

import argparse
import collections
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# cvrl_tf from this checkout, and the benchmarks' shared modules (common, bench_train_step);
# nothing is imported here, so each worker process still chooses its own kernels first.
sys.path[:0] = [ROOT, HERE]
YAML_DATA = os.path.join(ROOT, 'tests', 'data', 'model_garden_cvrl_yaml.json')
EXPERIMENT = 'video_ssl_pretrain_kinetics600'
IMPLEMENTATIONS = ('ours', 'mg', 'mg_plain')
RESULT = 'RESULT '
PROFILED_STEPS = 3

# Op classes of the profile, first match wins: (class, op-type substrings, scope words).
CLASSES = (
    ('conv kernel gradient', ('Conv3DBackpropFilter',), ()),
    ('conv input gradient', ('Conv3DBackpropInput',), ()),
    ('conv forward', ('Conv3D',), ()),
    ('conv kernel gradient', (), ('_kernel_gradient',)),  # our GEMM route (video_layers)
    ('batch norm', ('BatchNorm',), ()),
    ('batch norm', (), ('batch_norm', '_bn', 'batchnorm', 'sync_batch')),
    ('ReLU', ('Relu',), ()),
    ('pooling', ('Pool',), ()),
    ('optimizer update', ('ResourceApply',), ()),
    ('weight decay', ('L2Loss',), ()),
    ('head + loss', ('MatMul', 'Softmax', 'CrossEntropy', 'BiasAdd', 'l2_normalize'), ()),
    ('gradient sums (AddN)', ('AddN',), ()),
)


def op_class(scope: str, op: str) -> str:
  low = scope.lower()
  for name, ops, scopes in CLASSES:
    if (not ops or any(o in op for o in ops)) and (not scopes or any(s in low for s in scopes)):
      return name
  return 'other'


def op_profile(run_steps, steps: int):
  """{(class, 'fwd'|'bwd'): wall ms per step} over `steps` steps run by run_steps(steps).

  Two ops often run at once on 2 cores (a layer's input and kernel gradients), so op
  durations overlap; each moment is shared equally among the ops running then, and a
  moment when none runs goes to ('idle', ''). The classes then sum to the profiled wall
  time from the first op to the last.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  logdir = tempfile.mkdtemp(prefix='cvrl_profile_')
  try:
    tf.profiler.experimental.start(logdir)
    run_steps(steps)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True)[0], 'rb') as f:
      space.ParseFromString(f.read())
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  intervals = []
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith('tf_Compute'):
        continue  # executor threads: one event per op run, named 'scope/name:OpType'
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ':' not in name or '::' in name or not event.duration_ps:
          continue
        scope, op = name.rsplit(':', 1)
        start = line.timestamp_ns * 1000 + event.offset_ps
        intervals.append((start, start + event.duration_ps, (
            op_class(scope, op), 'bwd' if 'gradient' in scope.lower() else 'fwd')))
  return {k: v / 1e9 / steps for k, v in wall_shares(intervals).items()}


def wall_shares(intervals):
  """{key: time} from [(start, end, key)]: each moment split equally among the intervals
  open then; moments inside the span with none open go to ('idle', '')."""
  edges = sorted([(a, 1, k) for a, _, k in intervals] + [(b, -1, k) for _, b, k in intervals],
                 key=lambda e: (e[0], e[1]))
  totals, running, last = collections.Counter(), collections.Counter(), None
  for time_ps, change, key in edges:
    if last is not None and time_ps > last:
      active = sum(running.values())
      for k, n in running.items():
        if n:
          totals[k] += (time_ps - last) * n / active
      if not active:
        totals[('idle', '')] += time_ps - last
    running[key] += change
    last = time_ps
  return totals


def _clips(batch, frames, size):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.random.RandomState(0).rand(2 * batch, frames, size, size, 3).astype(np.float32)


def run_ours(args):
  # pylint: disable=import-outside-toplevel
  import cvrl_tf  # noqa: F401
  import tensorflow as tf
  import tf_keras
  import bench_train_step
  import common
  from cvrl_tf.input import batch as batch_lib
  # pylint: enable=import-outside-toplevel
  tf_keras.mixed_precision.set_global_policy(bench_train_step.POLICIES[args.dtype])
  model = bench_train_step.build(f'r3d{args.depth}', 1.0, args.head_dim)
  ds = tf.data.Dataset.from_tensors(
      {batch_lib.CLIPS: _clips(args.batch, args.frames, args.size)}).repeat()
  walls, cpus = common.fit_step_times(model, ds, args.warmup, args.reps)
  profile = None
  if args.profile:
    profile = op_profile(
        lambda n: model.fit(ds, steps_per_epoch=n, epochs=1, verbose=0), PROFILED_STEPS)
  return walls, cpus, profile, _parameters(model, model.encoder)


def _parameters(model, encoder):
  """(encoder's, whole model's) trainable parameters. The encoders must be equal; the
  heads differ by Model Garden's hidden Dense biases (3 x 2048), which the BN after each
  makes redundant (interop/model_garden.py folds them into its moving mean)."""
  def count(layer):
    return int(sum(v.shape.num_elements() for v in layer.trainable_variables))
  return count(encoder), count(model)


def mg_config(args, use_sync_bn: bool):
  """exp_factory's experiment + the released yaml's overrides (strict), then our shapes."""
  # pylint: disable=import-outside-toplevel,unused-import
  from official.core import exp_factory
  from official.projects.video_ssl.configs import video_ssl
  from official.projects.video_ssl.tasks import pretrain
  # pylint: enable=import-outside-toplevel,unused-import
  from cvrl_tf.interop import model_garden  # pylint: disable=import-outside-toplevel
  with open(YAML_DATA) as f:
    overrides = json.load(f)[model_garden.PRETRAIN_YAML]['overrides']
  config = exp_factory.get_exp_config(EXPERIMENT)
  config.override(overrides, is_strict=True)
  blocks = config.task.model.backbone.resnet_3d.block_specs
  config.override({
      'runtime': {'mixed_precision_dtype': args.dtype},
      'task': {
          'train_data': {'feature_shape': (args.frames, args.size, args.size, 3),
                         'global_batch_size': args.batch, 'dtype': args.dtype},
          'model': {
              'backbone': {'resnet_3d': {'model_id': args.depth, 'block_specs': [
                  b.as_dict() for b in blocks]}},
              'norm_activation': {'use_sync_bn': use_sync_bn},
              'hidden_norm_activation': {'use_sync_bn': use_sync_bn}}}})
  if args.head_dim != 2048:
    config.override({'task': {'model': {'hidden_dim': args.head_dim}}})
  return config


def run_model_garden(args, use_sync_bn: bool):
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from official.core import task_factory
  from official.modeling import performance
  # pylint: enable=import-outside-toplevel
  config = mg_config(args, use_sync_bn)
  performance.set_mixed_precision_policy(config.runtime.mixed_precision_dtype)
  task = task_factory.get_task(config.task)
  model = task.build_model()
  optimizer = task.create_optimizer(config.trainer.optimizer_config, config.runtime)
  metrics = task.build_metrics(training=True)
  inputs = ({'image': tf.constant(_clips(args.batch, args.frames, args.size))},
            {'label': tf.zeros([2 * args.batch, 1], tf.int32)})
  iterator = iter(tf.data.Dataset.from_tensors(inputs).repeat())

  @tf.function
  def train_step(iterator):  # as orbit's trainer: strategy.run of task.train_step
    return tf.distribute.get_strategy().run(
        task.train_step, args=(next(iterator), model, optimizer, metrics))

  def run(n):
    for _ in range(n):
      train_step(iterator)['total_loss'].numpy()

  import common  # pylint: disable=import-outside-toplevel
  walls, cpus = common.time_calls(lambda: run(1), args.reps, warmup=max(1, args.warmup))
  profile = op_profile(run, PROFILED_STEPS) if args.profile else None
  return walls, cpus, profile, _parameters(model, model.backbone)


def worker(args) -> int:
  if args.worker == 'ours':
    walls, cpus, profile, parameters = run_ours(args)
  else:
    walls, cpus, profile, parameters = run_model_garden(args, use_sync_bn=args.worker == 'mg')
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  profile = None if profile is None else [[k[0], k[1], v] for k, v in profile.items()]
  print(RESULT + json.dumps({'impl': args.worker, 'walls': walls, 'cpus': cpus,
                             'peak_mb': peak_mb, 'profile': profile,
                             'parameters': parameters}), flush=True)
  return 0


def spawn(args, impl):
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS='1' if args.kernels == 'onednn' else '0',
             TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, os.path.abspath(__file__), f'--worker={impl}'] + [
      f'--{k}={v}' for k, v in vars(args).items()
      if k not in ('worker', 'pairs', 'implementations', 'profile', 'quick')] + (
          ['--profile'] if args.profile else [])
  started = time.perf_counter()
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith(RESULT)]
  if done.returncode or not lines:
    sys.exit(f'{impl} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
  result = json.loads(lines[-1][len(RESULT):])
  result['process_s'] = time.perf_counter() - started
  return result


def conv_flops(args):
  """{'conv forward' / 'conv input gradient' / 'conv kernel gradient': FLOPs per step}."""
  # pylint: disable=import-outside-toplevel
  import bench_train_step
  from cvrl_tf.models import flops
  from cvrl_tf.models import r3d
  # pylint: enable=import-outside-toplevel
  encoder = r3d.build_backbone(f'r3d{args.depth}')
  clip = (args.frames, args.size, args.size, 3)
  rows = flops.flops_table(encoder, clip)
  first = bench_train_step.first_conv(encoder).name
  convs = {l.name for l in encoder.layers if 'Conv' in type(l).__name__}
  forward = 2 * args.batch * sum(r.flops for r in rows if r.layer in convs)
  stem = 2 * args.batch * sum(r.flops for r in rows if r.layer == first)
  return {'conv forward': forward, 'conv kernel gradient': forward,
          'conv input gradient': forward - stem}


def report(args, results):
  import common  # pylint: disable=import-outside-toplevel
  clips = 2 * args.batch
  print('\n' + common.machine_line(args.dtype) + f'; kernels: {args.kernels} in every process')
  print(f'R3D-{args.depth}, head {args.head_dim}, {clips} clips '
        f'({args.batch} videos x 2 views) of {args.frames}x{args.size}x{args.size}; '
        f'{args.pairs} alternations, {args.reps} timed steps each after {args.warmup}\n')
  by_impl = collections.defaultdict(list)
  for r in results:
    by_impl[r['impl']].append(r)
  medians = {}
  rows = []
  for impl, runs in by_impl.items():
    per_run = [statistics.median(r['walls']) for r in runs]
    walls = [w for r in runs for w in r['walls']]
    cpus = [c for r in runs for c in r['cpus']]
    medians[impl] = statistics.median(per_run)
    rows.append([impl, ' '.join(f'{m:.3f}' for m in per_run)] +
                common.rate_cells(clips, walls, cpus) +
                [f'{max(r["peak_mb"] for r in runs):.0f}'])
  common.print_table(['step', 'median s per process', 'step s (all)', 'CPU-s/step',
                      'clips/s', 'clips/CPU-s', 'peak RSS MB'], rows)
  parameters = {impl: runs[0]['parameters'] for impl, runs in by_impl.items()}
  print('\ntrainable parameters, encoder (whole model): ' + ', '.join(
      f'{k} {e:,} ({m:,})' for k, (e, m) in parameters.items()))
  if len({e for e, _ in parameters.values()}) > 1:
    print('  WARNING: the encoders differ; the ratios compare unlike work')
  for impl in medians:
    if impl != 'ours' and 'ours' in medians:
      print(f'  {impl} / ours step time: {medians[impl] / medians["ours"]:.3f}x')
  if not args.profile:
    return
  flop = conv_flops(args)
  print(f'\nWall time per step by op class (ms, share; {PROFILED_STEPS} profiled steps; '
        'a moment two ops share counts half to each; conv GFLOP/s = FLOPs / its ms)\n')
  tables = {}
  for impl, runs in by_impl.items():
    summed = collections.Counter()
    for r in runs:
      for name, direction, ms in r['profile']:
        label = name if name.startswith('conv') or not direction else f'{name} ({direction})'
        summed[label] += ms / len(runs)
    tables[impl] = summed
  names = sorted({n for t in tables.values() for n in t},
                 key=lambda n: -max(t.get(n, 0) for t in tables.values()))
  rows = []
  for name in names + ['profiled step']:
    row = [name]
    for impl, t in tables.items():
      total = sum(t.values())
      ms = total if name == 'profiled step' else t.get(name, 0.0)
      cell = f'{ms:.1f} ({100 * ms / total:.1f}%)'
      if name in flop and ms:
        cell += f' {flop[name] / ms / 1e6:.0f} GFLOP/s'
      row.append(cell)
    rows.append(row)
  common.print_table(['op class'] + list(tables), rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--worker', choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
  parser.add_argument('--quick', action='store_true', help='smoke run (~1 minute)')
  parser.add_argument('--implementations', default=','.join(IMPLEMENTATIONS))
  parser.add_argument('--depth', type=int, default=50, help="Model Garden's: 50, 101, ...")
  parser.add_argument('--head_dim', type=int, default=2048)
  parser.add_argument('--batch', type=int, default=4, help='videos per step (2 clips each)')
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--kernels', default='onednn', choices=('onednn', 'eigen'))
  parser.add_argument('--pairs', type=int, default=2, help='alternations of the processes')
  parser.add_argument('--reps', type=int, default=5, help='timed steps per process')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--profile', action='store_true', help='time per op class')
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args)
  if args.quick:
    args.batch, args.frames, args.size, args.reps, args.warmup, args.pairs = 1, 4, 32, 2, 1, 1
    args.profile = True
  implementations = args.implementations.split(',')
  unknown = sorted(set(implementations) - set(IMPLEMENTATIONS))
  if unknown:
    parser.error(f'--implementations: unknown {unknown}; choose from {IMPLEMENTATIONS}')
  results = []
  for pair in range(args.pairs):
    for impl in implementations:
      result = spawn(args, impl)
      print(f'  [{pair + 1}/{args.pairs}] {impl:8s} step '
            f'{statistics.median(result["walls"]):.3f} s (process {result["process_s"]:.0f} s)',
            flush=True)
      results.append(result)
  report(args, results)
  return 0


if __name__ == '__main__':
  sys.exit(main())
