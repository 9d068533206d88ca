"""The demo's train steps per precision: what `make demo` costs on this machine.

  python benchmarks/bench_demo_step.py                  # float32 and mixed_bfloat16
  python benchmarks/bench_demo_step.py --policies=float32 --reps=10
  TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/bench_demo_step.py   # TensorFlow's default
                                                  # on AVX2-only CPUs: Eigen kernels

Builds the demo's models from its gin files (configs/demo/encoder.gin: R3D-18 at 0.25x,
8 x 32 x 32 clips) and times, under `model.fit` on one in-memory batch (input pipeline
excluded; bench_e2e.py has it):
  pretrain    CVRLPretrainer.train_step, 2 x --batch clips (configs/demo/pretrain.gin: 32
              videos, head 256-256-64)
  supervised  VideoClassifier.train_step (fine-tuning, all weights), --batch clips
              (configs/demo/supervised.gin)
One row per step x policy: s/step median (min..max), clips/s, GFLOP/s (train FLOPs =
3 x forward - stem forward, as bench_train_step.py). A policy the CPU cannot run
(e.g. bfloat16 under ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 CPU) is a FAILED row.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import cvrl_tf  # noqa: F401  (first: turns TensorFlow's oneDNN kernels on before TF loads)
import numpy as np
import tensorflow as tf

import bench_train_step
import common
from cvrl_tf import configs
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import settings
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.models import classifier
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer
from cvrl_tf.models import r3d
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision

STEPS = ('pretrain', 'supervised')


def build(step: str, policy: str, encoder_spec: r3d.EncoderSpec):
  """The demo's model for `step` under `policy`, compiled, every variable created."""
  with precision.dtype_policy(policy):
    encoder = r3d.build_backbone(encoder_spec)  # configs/demo/encoder.gin's
    if step == 'pretrain':
      model = pretrainer.CVRLPretrainer(encoder, heads.ProjectionHead(
          num_hidden_layers=2, hidden_dim=256, output_dim=64), weight_decay=1e-6)
    else:
      model = classifier.VideoClassifier(encoder, 8, weight_decay=1e-4)
    model.compile(optimizer=optim.build_optimizer(total_steps=10_000, warmup_steps=10))
    model.build_for_training()
  return model


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smoke run (2 steps per row)')
  parser.add_argument('--policies', default='float32,mixed_bfloat16')
  parser.add_argument('--batch', type=int, default=32, help='videos per step (the demo\'s)')
  parser.add_argument('--reps', type=int, default=8, help='timed steps per row')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps (tracing)')
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.reps, args.warmup = 4, 2, 1
  gin_files.parse(['demo/encoder.gin'], [])
  encoder_spec = settings.build_part('encoder')
  clip_shape = (8, 32, 32, 3)
  rng = np.random.RandomState(0)
  rows = []
  for step in STEPS:
    clips = 2 * args.batch if step == 'pretrain' else args.batch
    data = {batch_lib.CLIPS: rng.rand(clips, *clip_shape).astype(np.float32)}
    if step == 'supervised':
      data[batch_lib.LABEL] = rng.randint(0, 8, clips).astype(np.int32)
    ds = tf.data.Dataset.from_tensors(data).repeat()
    for policy in args.policies.split(','):
      try:
        model = build(step, policy, encoder_spec)
        walls, cpus = common.fit_step_times(model, ds, args.warmup, args.reps)
      except (tf.errors.OpError, ValueError) as e:
        rows.append([step, policy, 'FAILED: ' + str(e).splitlines()[0][:60]] + ['-'] * 5)
        continue
      _, train_flops = bench_train_step.model_flops(model, clip_shape)
      gflops = train_flops * clips / np.median(walls) / 1e9
      rows.append([step, policy, clips] + common.rate_cells(clips, walls, cpus) +
                  [f'{gflops:.1f}'])
      print(f'  {step:10s} {policy:15s} {np.median(walls):.3f} s/step', flush=True)
  print('\n' + common.machine_line('per row'))
  print(f'demo models (configs/demo/encoder.gin), clips of {"x".join(map(str, clip_shape[:3]))}, '
        f'{args.reps} timed steps per row (warm-up {args.warmup} excluded)')
  common.print_table(['step', 'policy', 'clips', 's/step', 'CPU-s', 'clips/s',
                      'clips/CPU-s', 'GFLOP/s'], rows)
  return 0


if __name__ == '__main__':
  sys.exit(main())
