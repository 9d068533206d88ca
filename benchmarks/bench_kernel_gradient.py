"""Each conv layer's kernel gradient: oneDNN's 3-D kernel against one GEMM per tap.

  python benchmarks/bench_kernel_gradient.py                 # demo encoder and R3D-50
  python benchmarks/bench_kernel_gradient.py --threads=1     # as each bench-quality chain
  ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_kernel_gradient.py --precisions=float32
  python benchmarks/bench_kernel_gradient.py --quick         # smoke run (seconds)

Builds each encoder, records the input shape of every Conv3D layer on a clip batch, then
times on random tensors of those shapes (warm-up excluded, median of --reps calls):
  Mmac      millions of multiply-adds in the kernel gradient (as many as the forward)
  forward   the layer's convolution (the scale: a kernel gradient costs as many FLOPs)
  conv      Conv3DBackpropFilterV2, oneDNN's weight-gradient kernel ('conv' route)
  gemm      video_layers.tap_kernel_gradient, one [Ci, M] x [M, Co] product per kernel
            tap (the 'matmul' route; strided axes split into phases)
  auto      the route `kernel_gradient='auto'` takes for that layer here
Models: the demo encoder (configs/demo/encoder.gin, 2 x --batch clips of 8x32x32: a
pretraining step's) and R3D-50 as CVRL releases it (2 x --batch clips of 8x112x112, the
side-by-side with Model Garden's). The 'sum' rows add every layer's time per route, and
what 'auto' picks: the kernel-gradient share of one step. Both routes are checked to
agree (float32: 1e-4 of the largest entry, bfloat16: 3e-2) before they are timed.
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
import tf_keras

import common
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import settings
from cvrl_tf.models import r3d
from cvrl_tf.models import video_layers
from cvrl_tf.runtime import precision


def conv_layers(model):
  """Every video_layers.Conv3D of a (nested) functional model, in order."""
  found = []
  for layer in model.layers:
    if isinstance(layer, video_layers.Conv3D):
      found.append(layer)
    elif isinstance(layer, tf_keras.Model):
      found += conv_layers(layer)
  return found


def layer_inputs(encoder, clip_shape):
  """[(layer, input shape)] of every conv for a batch of clips of clip_shape."""
  layers = conv_layers(encoder)
  probe = tf_keras.Model(encoder.inputs, [layer.input for layer in layers])
  shapes = probe(tf.zeros(clip_shape, encoder.inputs[0].dtype))
  return [(layer, tuple(s.shape)) for layer, s in zip(layers, shapes)]


def time_layer(layer, shape, dtype, reps):
  """(forward, conv, gemm) ms (median) for one layer's shapes, both routes checked equal."""
  rng = np.random.default_rng(0)
  kernel_shape = tuple(layer.kernel.shape)
  strides, padding = [1, *layer.strides, 1], layer.padding.upper()
  x = tf.cast(rng.normal(0, 1, shape).astype(np.float32), dtype)
  kernel = tf.cast(rng.normal(0, 0.1, kernel_shape).astype(np.float32), dtype)
  forward = tf.function(lambda: tf.nn.conv3d(x, kernel, strides, padding))
  dy = tf.cast(rng.normal(0, 1, forward().shape).astype(np.float32), dtype)
  conv = tf.function(lambda: tf.raw_ops.Conv3DBackpropFilterV2(
      input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=strides,
      padding=padding))
  gemm = tf.function(lambda: video_layers.tap_kernel_gradient(
      x, dy, kernel_shape, padding, layer.strides))
  a, b = (tf.cast(f(), tf.float32).numpy() for f in (conv, gemm))
  tolerance = 1e-4 if dtype == tf.float32 else 3e-2
  if np.abs(a - b).max() > tolerance * np.abs(a).max():
    raise AssertionError(f'{layer.name}: the GEMMs differ from the conv kernel')
  return [1000 * np.median(common.time_calls(lambda f=f: f().numpy(), reps, 2)[0])
          for f in (forward, conv, gemm)]


def model_rows(name, encoder, clip_shape, dtype, reps):
  rows, totals = [], np.zeros(4)
  for layer, shape in layer_inputs(encoder, clip_shape):
    fwd, conv, gemm = time_layer(layer, shape, dtype, reps)
    auto = layer.uses_matmul_kernel_gradient(shape)
    totals += [fwd, conv, gemm, gemm if auto else conv]
    out_hw = layer._map_size(shape)  # pylint: disable=protected-access
    # Multiply-adds of the kernel gradient: every output position times the kernel.
    macs = (np.prod(layer.compute_output_shape(shape)[:-1]) * np.prod(layer.kernel_size)
            * shape[-1] * layer.filters)
    rows.append([name, layer.name, 'x'.join(map(str, shape[1:])),
                 'x'.join(map(str, layer.kernel_size)), 'x'.join(map(str, layer.strides)),
                 out_hw, f'{macs / 1e6:.1f}', f'{fwd:.2f}', f'{conv:.2f}', f'{gemm:.2f}',
                 f'{conv / gemm:.2f}', 'gemm' if auto else 'conv'])
  rows.append([name, 'sum', '', '', '', '', '', f'{totals[0]:.1f}', f'{totals[1]:.1f}',
               f'{totals[2]:.1f}', f'{totals[1] / totals[2]:.2f}',
               f'{totals[3]:.1f} ms ({totals[1] / totals[3]:.2f}x)'])
  return rows


def build_models(quick: bool, batch):
  """[(name, encoder, clip batch shape)]: 2 x batch clips (a pretraining step's); batch
  None: each model's own (the demo's 32 videos, the Model Garden side-by-side's 4)."""
  gin_files.parse(['demo/encoder.gin'], [])
  models = [('demo', r3d.build_backbone(settings.build_part('encoder')), 32, 8, 32)]
  if not quick:
    models.append(('r3d50', r3d.build_backbone('r3d50'), 4, 8, 112))
  return [(name, encoder, (2 * (batch or own), frames, size, size, 3))
          for name, encoder, own, frames, size in models]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smoke run: demo encoder, tiny')
  parser.add_argument('--precisions', default='float32,mixed_bfloat16')
  parser.add_argument('--batch', type=int, default=None,
                      help='videos per step (default: the demo 32, R3D-50 4)')
  parser.add_argument('--reps', type=int, default=10, help='timed calls per route')
  parser.add_argument('--threads', type=int, default=0,
                      help='intra- and inter-op threads (0: TensorFlow default)')
  args = parser.parse_args(argv)
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  if args.quick:
    args.precisions, args.reps = 'float32', 2
  rows = []
  for policy in args.precisions.split(','):
    dtype = tf.float32 if policy == 'float32' else tf.bfloat16
    with precision.dtype_policy(policy):
      for name, encoder, clip_shape in build_models(args.quick,
                                                    1 if args.quick else args.batch):
        try:
          rows += [[policy] + r for r in model_rows(name, encoder, clip_shape, dtype,
                                                    args.reps)]
        except (tf.errors.OpError, AssertionError) as e:
          rows.append([policy, name, 'FAILED: ' + str(e).splitlines()[0][:60]] + [''] * 9)
        print(f'  {policy} {name} done', flush=True)
  print('\n' + common.machine_line('per row'))
  print(f'threads: {args.threads or "TensorFlow default"}; ms per call, median of '
        f'{args.reps}; ratio = conv / gemm; sum: every layer, and what auto takes')
  common.print_table(['policy', 'model', 'layer', 'input', 'kernel', 'strides', "H'xW'",
                      'Mmac', 'forward', 'conv', 'gemm', 'ratio', 'auto'], rows)
  return 0


if __name__ == '__main__':
  sys.exit(main())
