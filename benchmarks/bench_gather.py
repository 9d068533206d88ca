"""Cross-replica cost: the pretraining step on 1 vs 2 logical CPU replicas, same global batch.

  python benchmarks/bench_gather.py          # R3D-18, 4 videos x 2 views of 8x112x112
  python benchmarks/bench_gather.py --quick  # smoke run (R3D-18 0.25x, 4x32x32, seconds)

Splits the CPU into 2 logical devices first thing (before TensorFlow initialises), then
builds the same pretrainer under two MirroredStrategy instances: one over /cpu:0 alone
(1 replica: the loss gathers nothing, the gradient 'all-reduce' is a no-op) and one over
both devices (2 replicas: each holds half the videos, both views of them; the InfoNCE
all-gathers the embeddings, the optimizer all-reduces the gradients, sync BN all-reduces
its moments). Same global batch, same model, same data shapes; jit_compile is off (XLA
cannot compile a replicated step, see models/pretrainer.py). Rows, alternated within each
repetition (warm-up excluded; median and min..max over --reps repetitions of --steps
steps each):
  train step    CVRLPretrainer.train_step under model.fit
  collectives   only the cross-replica traffic of one step: all_gather of the embeddings
                [2b, d] + one batched all_reduce(SUM) of tensors shaped like every
                trainable variable (the gradients), in a tf.function under strategy.run
The 2-replica minus 1-replica step time is the overhead of replication on these cores: the
collectives, plus running two half-batch replicas side by side on the same 2 cores (they
share one thread pool). The collectives rows isolate the communication.
"""

import argparse
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.runtime import distribute
import bench_train_step
import common
import tensorflow as tf
import tf_keras

NUM_DEVICES = 2


def distributed_clips(strategy, videos_per_replica: int, clip_shape):
  """Each replica takes whole elements of 2b clips (view 1 of b videos, then view 2)."""
  local = np.random.RandomState(0).rand(2 * videos_per_replica, *clip_shape)
  local = local.astype(np.float32)
  return strategy.distribute_datasets_from_function(
      lambda ctx: tf.data.Dataset.from_tensors({batch_lib.CLIPS: local}).repeat())


def collectives_fn(strategy, variable_shapes, embedding_shape):
  """A no-argument callable running one step's all-gather + all-reduce on every replica."""
  values = strategy.experimental_distribute_values_from_function(
      lambda ctx: ([tf.ones(s) for s in variable_shapes], tf.ones(embedding_shape)))

  @tf.function
  def run(values):
    def replica_fn(grads, embeddings):
      ctx = tf.distribute.get_replica_context()
      # Identities (no copies on CPU) give the inputs a device: with one replica the
      # distributed values are plain tensors and all_reduce finds no destination.
      grads = [tf.identity(g) for g in grads]
      embeddings = tf.identity(embeddings)
      return (ctx.all_gather(embeddings, axis=0),
              ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads))
    return strategy.run(replica_fn, args=values)

  return lambda: run(values)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bench_train_step.add_model_flags(parser)
  parser.add_argument('--no_sync_bn', action='store_true',
                      help='plain BN (CVRL pretraining uses sync BN)')
  parser.add_argument('--batch', type=int, default=4,
                      help='global videos per step (2 clips each), split over replicas')
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3, help='timed steps per repetition')
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps per repetition')
  args = parser.parse_args(argv)
  if args.quick:
    args.backbone, args.width_multiplier, args.head_dim = 'r3d18', 0.25, 64
    args.batch, args.frames, args.size, args.reps, args.steps = 2, 4, 32, 1, 1
  if args.batch % NUM_DEVICES:
    parser.error(f'--batch must split evenly over {NUM_DEVICES} replicas')

  devices = distribute.configure_cpu_devices(NUM_DEVICES)  # Before any TensorFlow op.
  strategies = {1: tf.distribute.MirroredStrategy(devices[:1]),
                2: tf.distribute.MirroredStrategy(devices[:NUM_DEVICES])}
  tf_keras.mixed_precision.set_global_policy(bench_train_step.POLICIES[args.dtype])
  clip_shape = (args.frames, args.size, args.size, 3)
  clips = 2 * args.batch
  runs = {}
  for replicas, strategy in strategies.items():
    b = args.batch // replicas
    with strategy.scope():
      model = bench_train_step.build(args.backbone, args.width_multiplier, args.head_dim,
                                     use_sync_bn=not args.no_sync_bn)
    shapes = [v.shape for v in model.trainable_variables]
    embedding_shape = (2 * b, model.projection_head.compute_output_shape(
        (None, model.encoder.output_shape[-1]))[-1])
    runs[replicas] = dict(model=model, data=distributed_clips(strategy, b, clip_shape),
                          collectives=collectives_fn(strategy, shapes, embedding_shape),
                          embedding_shape=embedding_shape,
                          grad_mb=sum(int(np.prod(s)) for s in shapes) * 4 / 2**20)

  rows = [(r, kind) for kind in ('train step', 'collectives') for r in strategies]
  walls = {row: [] for row in rows}
  cpus = {row: [] for row in rows}
  load_before = common.load_average()
  for rep in range(args.reps):
    for replicas, kind in rows:
      run = runs[replicas]
      if kind == 'train step':
        w, c = common.fit_step_times(run['model'], run['data'], args.warmup, args.steps)
      else:  # each call blocks until the collectives are done
        w, c = common.time_calls(run['collectives'], args.steps, max(1, args.warmup))
      wall, cpu = sum(w) / len(w), sum(c) / len(c)
      walls[(replicas, kind)].append(wall)
      cpus[(replicas, kind)].append(cpu)
      print(f'  rep {rep} {kind:11s} {replicas} replica(s) {wall:8.4f} s', flush=True)
  load_after = common.load_average()

  model = runs[1]['model']
  print('\n' + common.machine_line(bench_train_step.POLICIES[args.dtype]))
  print(f'\n{model.encoder.name} + head {args.head_dim}, {args.dtype}, sync BN '
        f'{not args.no_sync_bn}; global batch {clips} clips ({args.batch} videos x 2 '
        f'views) of {"x".join(map(str, clip_shape[:3]))}; {os.cpu_count()} CPU(s) split '
        f'into {NUM_DEVICES} logical devices; {args.reps} reps of {args.steps} steps '
        f'(warm-up {args.warmup}); tf {tf.__version__}; load average before/after '
        f'{load_before:.1f}/{load_after:.1f}')
  print(f'  collectives per step: all_gather of embeddings {runs[2]["embedding_shape"]} '
        f'per replica, all_reduce of {len(model.trainable_variables)} gradients '
        f'({runs[2]["grad_mb"]:.1f} MB fp32)\n')
  step = {r: statistics.median(walls[(r, 'train step')]) for r in strategies}
  table = []
  for replicas, kind in rows:
    w = walls[(replicas, kind)]
    if kind == 'train step':
      cells = common.rate_cells(clips, w, cpus[(replicas, kind)])
    else:  # Seconds to 4 decimals; no clips go through the collectives.
      cells = [common.median_range(w, '.4f'),
               f'{statistics.median(cpus[(replicas, kind)]):.4f}', '-', '-']
    extra = statistics.median(w) - statistics.median(walls[(1, kind)])
    table.append([kind, str(replicas), str(args.batch // replicas)] + cells +
                 [f'{extra:+.4f}'])
  common.print_table(['measured', 'replicas', 'videos/replica', 's', 'CPU-s', 'clips/s',
                      'clips/CPU-s', 's vs 1 replica'], table)
  overhead = step[2] - step[1]
  gather = (statistics.median(walls[(2, 'collectives')]) -
            statistics.median(walls[(1, 'collectives')]))
  print(f'\nreplication overhead: 2 replicas take {overhead:+.4f} s per step '
        f'({100 * overhead / step[1]:+.1f}% of the 1-replica step); the collectives '
        f'alone {gather:+.4f} s ({100 * gather / step[1]:+.1f}%)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
