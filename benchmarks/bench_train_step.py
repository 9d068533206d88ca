"""Pretraining train-step throughput and FLOP utilisation: R3D-18/50, fp32/bf16, XLA off/on.

  python benchmarks/bench_train_step.py         # R3D-18 and R3D-50, 4 videos x 8x112x112
  python benchmarks/bench_train_step.py --quick # smoke run (R3D-18 0.25x, 4x32x32, seconds)
  python benchmarks/bench_train_step.py --backbones=r3d50 --dtypes=bfloat16 --xla=on

One table row per backbone x dtype x XLA. Each row times `CVRLPretrainer.train_step`
under `model.fit` (default strategy) on one in-memory batch, so the input pipeline is
excluded (bench_input.py measures that side, bench_e2e.py both together):
  step s        median (min..max) over --reps timed steps, end of step to end of step;
                --warmup steps (tracing, XLA compilation) excluded
  clips/s       2 x videos per step / step time (and per CPU-second of this process)
  GFLOP/s       train-step FLOPs per clip x clips/s: forward + input gradients + kernel
                gradients, each the layer's forward FLOPs (models/flops.py; encoder +
                head), less the first conv's input gradient, which nothing needs:
                3 x forward - stem forward
  % peak        GFLOP/s / peak, the peak being the rate of the faster of two large
                'same' 3x3x3 Conv3Ds (128 and 256 channels, forward, same dtype): median
                of its calls before and after all rows, on the same cores (also per
                CPU-second)
A second table gives each model's convolution ceiling: every Conv3D of the encoder timed
alone (forward + the gradients the step needs, through the layer's own route, on an input
of its in-model shape, median of --reps; repeated layers timed once and counted), summed
per step. A step made of these kernels beats it only by running ops side by side, so it
tells how close to the peak a step of that model can get here (--no-conv_ceiling skips
it; XLA rows have none).
dtype 'bfloat16' is the tf_keras 'mixed_bfloat16' policy (bf16 compute, fp32 variables;
the loss stays fp32). --quick compiles XLA at -O0 so its rows take seconds: its XLA
figures say nothing about XLA's speed.
"""

import argparse
import gc
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import cvrl_tf  # noqa: F401  (first: turns TensorFlow's oneDNN kernels on before TF loads)
import numpy as np
import tensorflow as tf
import tf_keras

import common
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer
from cvrl_tf.models import r3d
from cvrl_tf.runtime import optim

POLICIES = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16'}
QUICK_XLA_FLAG = '--xla_backend_optimization_level=0'


def conv_peak(dtype: str, repeats: int, shape=(2, 8, 28, 28, 128), filters: int = 128):
  """([FLOP/s wall], [FLOP/s per CPU-second]) of each call of a 3x3x3 'same' Conv3D."""
  x = tf.cast(tf.random.uniform(shape), dtype)
  k = tf.cast(tf.random.uniform((3, 3, 3, shape[-1], filters)) * 0.01, dtype)
  conv = tf.function(lambda a: tf.nn.conv3d(a, k, [1] * 5, 'SAME'))
  flop = 2 * np.prod(shape[:-1]) * 27 * shape[-1] * filters
  walls, cpus = common.time_calls(lambda: conv(x).numpy(), repeats)
  return [flop / w for w in walls], [flop / max(c, 1e-9) for c in cpus]


def pooled_peak(samples):
  """(FLOP/s wall, per CPU-s): the best convolution's median over all its calls.

  samples: {conv: [conv_peak(...) results]}. Pooling the calls made before and after the
  rows and taking the median keeps one fast or slow stretch of the machine from moving
  the peak (a max over a few medians moved it by 17% between two runs).
  """
  pooled = [([r for s in runs for r in s[0]], [r for s in runs for r in s[1]])
            for runs in samples.values()]
  return (max(statistics.median(w) for w, _ in pooled),
          max(statistics.median(c) for _, c in pooled))


def first_conv(encoder) -> tf_keras.layers.Conv3D:
  """The conv reading the clips: the step never computes its input gradient."""
  return next(l for l in encoder.layers
              if isinstance(l, tf_keras.layers.Conv3D) and l.input is encoder.inputs[0])


def conv_ceiling(encoder, batch_shape, repeats: int):
  """(seconds per step, layers, distinct shapes) of the encoder's convolutions alone.

  Each Conv3D runs forward and backward on its own (dkernel, plus dinput except for the
  layer reading the clips, whose input gradient the step never computes), on random
  inputs of the shape it sees in the model at `batch_shape`: tf.function, 2 warm-up
  calls, median of `repeats`. Layers with the same config and input shape are timed once.
  """
  convs = [l for l in encoder.layers if isinstance(l, tf_keras.layers.Conv3D)]
  probe = tf_keras.Model(encoder.inputs, [l.input for l in convs])
  shapes = [tuple(t.shape) for t in probe(tf.zeros(batch_shape))]
  groups = {}
  for layer, shape in zip(convs, shapes):
    config = {k: v for k, v in layer.get_config().items() if k != 'name'}
    groups.setdefault((repr(sorted(config.items())), shape), []).append(layer)
  total, stem = 0.0, first_conv(encoder)
  for (_, shape), layers in groups.items():
    layer = layers[0]
    reads_clips = layer is stem
    x = tf.cast(tf.random.uniform(shape), 'float32' if reads_clips else layer.compute_dtype)
    dy = tf.cast(tf.random.normal(layer.compute_output_shape(shape)), layer.compute_dtype)

    @tf.function
    def forward_backward(layer=layer, x=x, dy=dy, reads_clips=reads_clips):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
      sources = [layer.kernel] if reads_clips else [x, layer.kernel]
      # y is returned too: the gradients do not need it, so it would be pruned.
      return [y] + tape.gradient(y, sources, output_gradients=dy)

    walls, _ = common.time_calls(
        lambda fn=forward_backward: [out.numpy() for out in fn()], repeats, warmup=2)
    total += len(layers) * statistics.median(walls)
  return total, len(convs), len(groups)


def build(backbone: str = 'r3d50', width_multiplier: float = 1.0, head_dim: int = 2048,
          jit_compile: bool = False, crop_size=None, use_sync_bn: bool = False):
  """A compiled CVRLPretrainer with every variable created (under the current policy and
  strategy scope)."""
  encoder = r3d.build_backbone(backbone, width_multiplier=width_multiplier,
                               use_sync_bn=use_sync_bn)
  head = heads.ProjectionHead(hidden_dim=head_dim, use_sync_bn=use_sync_bn)
  model = pretrainer.CVRLPretrainer(encoder, head, crop_size=crop_size)
  model.compile(optimizer=optim.build_optimizer(total_steps=10_000, warmup_steps=10),
                jit_compile=jit_compile)
  model.build_for_training()
  return model


def add_model_flags(parser) -> None:
  """The flags of the one-model benchmarks (bench_e2e.py, bench_gather.py)."""
  parser.add_argument('--quick', action='store_true', help='tiny smoke run')
  parser.add_argument('--backbone', default='r3d18')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head_dim', type=int, default=2048)
  parser.add_argument('--dtype', default='float32', choices=sorted(POLICIES))


def model_flops(model, clip_shape):
  """(forward, train step) FLOPs per clip of encoder + projection head (if it has one).

  Train step: 3 x forward (forward, input gradient, kernel gradient of every layer) less
  the input gradient of the layer that reads the clips, which is never computed.
  """
  rows = flops.flops_table(model.encoder, clip_shape)
  first = first_conv(model.encoder).name
  dim = model.encoder.output_shape[-1]
  head = getattr(model, 'projection_head', None)  # A classifier's Dense head: ~0.
  head_flops = 0 if head is None else flops.count_flops(
      tf_keras.Sequential([tf_keras.Input((dim,)), head]), (dim,))
  forward = sum(r.flops for r in rows) + head_flops
  return forward, 3 * forward - sum(r.flops for r in rows if r.layer == first)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny smoke run')
  parser.add_argument('--backbones', default='r3d18,r3d50')
  parser.add_argument('--dtypes', default='float32,bfloat16', help='float32, bfloat16')
  parser.add_argument('--xla', default='off,on', help='off, on')
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head_dim', type=int, default=2048)
  parser.add_argument('--batch', type=int, default=4, help='videos per step (2 clips each)')
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--reps', type=int, default=5, help='timed steps per row')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps (tracing)')
  parser.add_argument('--conv_ceiling', action=argparse.BooleanOptionalAction,
                      default=True, help='time each model\'s convolutions alone')
  args = parser.parse_args(argv)
  # Two sizes: on this kind of CPU the wider one runs ~10% faster in float32.
  peak_convs, peak_repeats = [((2, 8, 28, 28, 128), 128), ((2, 8, 28, 28, 256), 256)], 10
  if args.quick:
    args.backbones, args.width_multiplier, args.head_dim = 'r3d18', 0.25, 64
    args.batch, args.frames, args.size, args.reps, args.warmup = 2, 4, 32, 2, 1
    peak_convs, peak_repeats = [((1, 4, 14, 14, 32), 32)], 2
    # XLA reads its flags at the first compilation, which is still to come.
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {QUICK_XLA_FLAG}'.strip()

  backbones = args.backbones.split(',')
  dtypes = args.dtypes.split(',')
  xlas = [{'off': False, 'on': True}[x] for x in args.xla.split(',')]
  clip_shape = (args.frames, args.size, args.size, 3)
  clips = 2 * args.batch
  load_before = common.load_average()
  peaks = {d: {f: [conv_peak(d, peak_repeats, shape, f)] for shape, f in peak_convs}
           for d in dtypes}

  data = np.random.RandomState(0).rand(clips, *clip_shape).astype(np.float32)
  ds = tf.data.Dataset.from_tensors({batch_lib.CLIPS: data}).repeat()
  results, fwd_flops, failed, ceilings = [], {}, [], []
  for backbone in backbones:
    for dtype in dtypes:
      for xla in xlas:
        tf_keras.mixed_precision.set_global_policy(POLICIES[dtype])
        try:
          model = build(backbone, args.width_multiplier, args.head_dim, xla)
          if backbone not in fwd_flops:
            fwd_flops[backbone] = model_flops(model, clip_shape)
          walls, cpus = common.fit_step_times(model, ds, args.warmup, args.reps)
          results.append((backbone, model.encoder.name, dtype, xla, walls, cpus))
          print(f'  {model.encoder.name:12s} {dtype:8s} XLA {"on " if xla else "off"}  '
                f'step {common.median_range(walls, ".3f")} s', flush=True)
          if args.conv_ceiling and not xla:
            seconds, layers, distinct = conv_ceiling(model.encoder, (clips,) + clip_shape,
                                                     args.reps)
            ceilings.append((backbone, model.encoder.name, dtype, seconds, layers, distinct,
                             statistics.median(walls)))
            print(f'  {model.encoder.name:12s} {dtype:8s} convolutions alone '
                  f'{seconds:.3f} s per step', flush=True)
          del model
        except Exception as e:  # pylint: disable=broad-except
          failed.append(f'{backbone} {dtype} XLA {xla}: {type(e).__name__}: {e}'[:500])
          results.append((backbone, backbone, dtype, xla, None, None))
        tf_keras.backend.clear_session()
        gc.collect()
  tf_keras.mixed_precision.set_global_policy('float32')
  for d in dtypes:
    for shape, f in peak_convs:
      peaks[d][f].append(conv_peak(d, peak_repeats, shape, f))
  peak = {d: pooled_peak(v) for d, v in peaks.items()}

  print('\n' + common.machine_line("per row (dtype bfloat16 = the 'mixed_bfloat16' policy)"))
  print(f'\n{clips} clips ({args.batch} videos x 2 views) of '
        f'{"x".join(map(str, clip_shape[:3]))}, head {args.head_dim}, '
        f'{os.cpu_count()} CPU(s), tf {tf.__version__}, load average before/after '
        f'{load_before:.1f}/{common.load_average():.1f}')
  for backbone, f in fwd_flops.items():
    print(f'  {backbone}: forward {f[0] / 1e9:.3f} GFLOP/clip, train step (3x forward '
          f'- stem forward) {f[1] / 1e9:.3f} GFLOP/clip')
  for d, (p_wall, p_cpu) in peak.items():
    print(f'  Conv3D peak {d}: {p_wall / 1e9:.2f} GFLOP/s ({p_cpu / 1e9:.2f} per CPU-s)')
  print(f'  {args.reps} timed steps per row (warm-up {args.warmup} excluded): '
        'median (min..max)\n')
  rows = []
  for backbone, name, dtype, xla, walls, cpus in results:
    if walls is None:
      rows.append([name, dtype, 'on' if xla else 'off', 'FAILED'] + ['-'] * 6)
      continue
    train_flop = fwd_flops[backbone][1]
    rate, rate_cpu = clips / statistics.median(walls), clips / max(
        statistics.median(cpus), 1e-9)
    rows.append([name, dtype, 'on' if xla else 'off'] + common.rate_cells(
        clips, walls, cpus) + [
            f'{train_flop * rate / 1e9:.2f}',
            f'{100 * train_flop * rate / peak[dtype][0]:.1f}',
            f'{100 * train_flop * rate_cpu / peak[dtype][1]:.1f}'])
  common.print_table(['model', 'dtype', 'XLA', 'step s', 'CPU-s/step', 'clips/s',
                      'clips/CPU-s', 'GFLOP/s', '% peak', '% peak/CPU-s'], rows)
  if ceilings:
    print('\nConvolution ceiling: the encoder\'s Conv3Ds alone, one at a time (forward + '
          'gradients), summed per step; % peak with the same FLOP count as above.\n')
    rows = []
    for backbone, name, dtype, seconds, layers, distinct, step in ceilings:
      rate = fwd_flops[backbone][1] * clips / seconds
      rows.append([name, dtype, f'{layers} ({distinct})', f'{seconds:.3f}',
                   f'{rate / 1e9:.2f}', f'{100 * rate / peak[dtype][0]:.1f}',
                   f'{step / seconds:.2f}'])
    common.print_table(['model', 'dtype', 'convs (distinct)', 'convs alone s/step',
                        'GFLOP/s', 'ceiling % peak', 'step / convs'], rows)
  for f in failed:
    print(f'failed: {f}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
