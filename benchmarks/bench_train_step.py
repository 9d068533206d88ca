"""Pretraining train-step throughput and FLOP utilisation on this machine.

  python benchmarks/bench_train_step.py                 # R3D-50, 2 videos x 8x112x112
  python benchmarks/bench_train_step.py --quick         # smoke run (tiny R3D-18, seconds)
  python benchmarks/bench_train_step.py --frames=16 --size=224 --batch=4 --jit_compile

Measures `CVRLPretrainer.train_step` under `model.fit` (default strategy) on an in-memory
batch, so the input pipeline is excluded (see bench_input.py for that side):
  clips/s       2 x videos per step / median step time (warm-up and tracing excluded)
  model FLOP/s  3 x forward FLOPs per clip (encoder + head, models/flops.py; backward
                ~ 2 x forward) x clips/s
  peak FLOP/s   a large Conv3D (forward, same dtype) timed on the same cores, before and
                after the model; the better of the two
  utilisation   model FLOP/s / peak FLOP/s
Both rates are also given per CPU-second of this process, the steadier figure when the
machine is shared with other jobs.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,g-bad-import-order
from cvrl_tf import optim
from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer
from cvrl_tf.models import r3d


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


class _StepTimer(tf_keras.callbacks.Callback):
  """Wall and CPU time of every training batch."""

  def __init__(self):
    super().__init__()
    self.wall, self.cpu = [], []

  def on_train_batch_begin(self, batch, logs=None):
    self._t, self._c = time.perf_counter(), _cpu_seconds()

  def on_train_batch_end(self, batch, logs=None):
    self.wall.append(time.perf_counter() - self._t)
    self.cpu.append(_cpu_seconds() - self._c)


def conv_peak(dtype: str, repeats: int, shape=(2, 8, 28, 28, 128), filters: int = 128):
  """(FLOP/s wall, FLOP/s per CPU-second) of a 3x3x3 'same' Conv3D, a dense-math ceiling."""
  x = tf.random.uniform(shape, dtype=dtype)
  k = tf.random.uniform((3, 3, 3, shape[-1], filters), dtype=dtype) * 0.01
  conv = tf.function(lambda a: tf.nn.conv3d(a, k, [1] * 5, 'SAME'))
  flop = 2 * np.prod(shape[:-1]) * 27 * shape[-1] * filters
  conv(x).numpy()  # trace + warm-up
  walls, cpus = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), _cpu_seconds()
    conv(x).numpy()
    walls.append(time.perf_counter() - t)
    cpus.append(_cpu_seconds() - c)
  return flop / statistics.median(walls), flop / max(statistics.median(cpus), 1e-9)


def build(args):
  encoder = r3d.build_backbone(args.backbone, width_multiplier=args.width_multiplier)
  head = heads.ProjectionHead(hidden_dim=args.head_dim)
  model = pretrainer.CVRLPretrainer(encoder, head)
  model.compile(optimizer=optim.build_optimizer(total_steps=10_000, warmup_steps=10),
                jit_compile=args.jit_compile)
  model.build_for_training()
  return model


def model_flops(model, clip_shape) -> int:
  """Forward FLOPs per clip of encoder + projection head."""
  encoder_flops = flops.count_flops(model.encoder, clip_shape)
  dim = model.encoder.output_shape[-1]
  head_flops = flops.count_flops(
      tf_keras.Sequential([tf_keras.Input((dim,)), model.projection_head]), (dim,))
  return encoder_flops + head_flops


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny smoke run')
  parser.add_argument('--backbone', default='r3d50')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head_dim', type=int, default=2048)
  parser.add_argument('--batch', type=int, default=2, help='videos per step (2 clips each)')
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--steps', type=int, default=5, help='timed steps')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps (tracing)')
  parser.add_argument('--mixed_precision', default=None, help="e.g. 'mixed_bfloat16'")
  parser.add_argument('--jit_compile', action='store_true')
  args = parser.parse_args(argv)
  if args.quick:
    args.backbone, args.width_multiplier, args.head_dim = 'r3d18', 0.25, 64
    args.batch, args.frames, args.size, args.steps, args.warmup = 2, 4, 32, 3, 1

  tf_keras.mixed_precision.set_global_policy(args.mixed_precision or 'float32')
  dtype = tf_keras.mixed_precision.global_policy().compute_dtype
  clip_shape = (args.frames, args.size, args.size, 3)
  clips = 2 * args.batch
  peak_repeats = 3 if args.quick else 10
  peak_before = conv_peak(dtype, peak_repeats)

  model = build(args)
  fwd = model_flops(model, clip_shape)
  data = np.random.RandomState(0).rand(clips, *clip_shape).astype(np.float32)
  ds = tf.data.Dataset.from_tensors({'clips': data}).repeat()
  timer = _StepTimer()
  model.fit(ds, steps_per_epoch=args.warmup + args.steps, epochs=1, verbose=0,
            callbacks=[timer])
  wall = statistics.median(timer.wall[args.warmup:])
  cpu = statistics.median(timer.cpu[args.warmup:])
  peak_after = conv_peak(dtype, peak_repeats)
  peak_wall = max(peak_before[0], peak_after[0])
  peak_cpu = max(peak_before[1], peak_after[1])

  train_flop_per_clip = 3 * fwd
  rate = clips / wall
  rate_cpu = clips / max(cpu, 1e-9)
  print(f'{model.encoder.name} + head {args.head_dim}, {clips} clips of '
        f'{"x".join(map(str, clip_shape[:3]))}, dtype {dtype}, XLA {args.jit_compile}, '
        f'{os.cpu_count()} CPU(s) visible')
  print(f'  forward            {fwd / 1e9:9.3f} GFLOP/clip (train step ~3x: '
        f'{train_flop_per_clip / 1e9:.3f})')
  print(f'  step time          {wall:9.3f} s median over {args.steps} '
        f'(min {min(timer.wall[args.warmup:]):.3f}, CPU {cpu:.3f} s)')
  print(f'  throughput         {rate:9.2f} clips/s  ({rate_cpu:.2f} clips per CPU-s)')
  print(f'  model              {train_flop_per_clip * rate / 1e9:9.2f} GFLOP/s  '
        f'({train_flop_per_clip * rate_cpu / 1e9:.2f} per CPU-s)')
  print(f'  Conv3D peak        {peak_wall / 1e9:9.2f} GFLOP/s  '
        f'({peak_cpu / 1e9:.2f} per CPU-s)')
  print(f'  utilisation        {100 * train_flop_per_clip * rate / peak_wall:8.1f} %  '
        f'({100 * train_flop_per_clip * rate_cpu / peak_cpu:.1f} % per CPU-s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
