"""tf_keras layers for 5-D video tensors [N, T, H, W, C], computed through faster kernels.

Each class is its tf_keras namesake (same arguments, variables, checkpoints and results
up to float rounding; tests/test_video_layers.py compares them), with a different route
to the same numbers where the CPU kernel for 5-D tensors is slow (benchmarks/README.md):
  BatchNormalization  the fused kernel sees [N, T, H, W, C] as [N, T * H, W, C]: the
                      statistics are the same (per channel, over all other axes), but
                      oneDNN implements only the 4-D fused batch norm and TensorFlow's
                      5-D kernel takes about twice as long forward + backward. The
                      synchronized (cross-replica) variant is not fused, and unchanged.
  Conv3D              the kernel gradient as one matrix product per kernel tap over
                      shifted slices where oneDNN's 3-D weight-gradient kernel is slow
                      on CPU: kernels spanning time only ([kt, 1, 1], up to 8x) and
                      small maps (res3-res5 of small clips: up to 40x). Forward and
                      input gradient are the usual kernels.
`synchronize_batch_norm` decides when the synchronized variant is worth its cost.
"""

import itertools
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras


def synchronize_batch_norm(use_sync_bn: bool) -> bool:
  """Whether a layer asked for synchronized BN gets it: only with several replicas.

  On one replica it computes the same statistics as plain BN, through the unfused path
  (R3D-50 pretraining step, 8 clips of 8x112x112 on CPU: 1.90 s instead of 1.51 s in
  float32, 1.40 s instead of 1.02 s in bfloat16). Decided when the layer is built, so
  build models under the strategy's scope (the training commands do).
  """
  return bool(use_sync_bn) and tf.distribute.get_strategy().num_replicas_in_sync > 1


@tf_keras.utils.register_keras_serializable(package='cvrl_tf')
class BatchNormalization(tf_keras.layers.BatchNormalization):
  """tf_keras.layers.BatchNormalization; 5-D channels-last inputs use the 4-D kernel."""

  def build(self, input_shape):
    super().build(input_shape)
    self._fold_time = bool(self.fused) and self._data_format == 'NDHWC'
    if self._fold_time:
      self._data_format = 'NHWC'

  def _fused_batch_norm(self, inputs, mask, training):
    if not getattr(self, '_fold_time', False):
      return super()._fused_batch_norm(inputs, mask, training)
    shape = tf.shape(inputs)
    folded = tf.reshape(inputs, tf.concat([shape[:1], shape[1:2] * shape[2:3], shape[3:]],
                                          axis=0))
    outputs = tf.reshape(super()._fused_batch_norm(folded, mask, training), shape)
    outputs.set_shape(inputs.shape)
    return outputs


KERNEL_GRADIENTS = ('auto', 'matmul', 'conv')
# Output positions per frame (H' x W') at or below which 'auto' takes the GEMMs for
# kernels with a spatial extent. At 4 x 4 they were faster on AVX2 (1.1-3x) and in
# bfloat16 on AVX-512 but for one strided layer, and about even in float32 on AVX-512
# (0.56-1.5x); at 7 x 7 and 8 x 8 oneDNN's kernel won in float32 on AVX-512
# (benchmarks/README.md, "Kernel gradients as GEMMs").
SMALL_MAP = 16
# Multiply-adds of a kernel gradient below which 'auto' keeps the usual kernel for
# kernels with a spatial extent, small map or not. There both routes take a millisecond
# or so (bench_kernel_gradient.py --quick, AMD EPYC Zen 4: 0.6-3.1 ms either way; an
# AVX2-only CPU's conv kernel is slower, which costs a toy model a few ms a step), while
# the GEMMs' graph (a slice pair and a product per tap: 27 for [3, 3, 3]) costs tens of
# ms to build in every traced function: a tiny R3D-18's train step took ~1 s longer to
# trace. The demo encoder's smallest such layer has 75M (2 x 32 clips of 8 x 32 x 32),
# R3D-50's (res5 at 4 x 4, 8 clips of 8 x 112 x 112) over 1G: a choice between toy
# models and real ones, not a bound that depends on the CPU.
MIN_GEMM_MACS = 2 ** 24


def tap_kernel_gradient(inputs: tf.Tensor, output_grad: tf.Tensor,
                        kernel_shape: Sequence[int], padding: str,
                        strides: Sequence[int] = (1, 1, 1)) -> tf.Tensor:
  """dL/dkernel of a Conv3D as one matrix product per kernel tap.

  With stride s_d and front padding p_d on each axis d (VALID: 0; SAME: TensorFlow's,
  (k_d - 1) // 2 at stride 1), output position u reads input position s u + a - p
  through tap a = (a_t, a_h, a_w), so

      dkernel[a] = sum over n and u of  x[n, s u + a - p, :]^T dy[n, u, :]

  over the positions where both exist: one [Ci, M] x [M, Co] product per tap, on slices
  that leave the padding out (a tap that reads only padding is a product over no
  positions, zero). Shapes: inputs [N, T, H, W, Ci], output_grad [N, T', H', W', Co],
  kernel_shape [kt, kh, kw, Ci, Co]. Sizes along unit-stride axes may be dynamic. A
  strided axis needs its input size known when the graph is built: it is split into
  [n / s, s] (n zero-padded up to a multiple of s: the only padded copy), so that each
  tap reads a unit-stride slice of one phase (TensorFlow's strided slices are far slower).
  """
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  ci, co = kernel_shape[3], kernel_shape[4]
  strides = tuple(strides)
  size_in, size_out = tf.shape(inputs), tf.shape(output_grad)
  static_in = inputs.shape
  split = any(s > 1 for s in strides)
  if split:
    inputs = _split_strided_axes(inputs, strides, ci)
  taps, zero = [], None
  x_rows, dy_rows = tf.constant([-1, ci]), tf.constant([-1, co])  # one of each per layer
  for tap in itertools.product(*(range(k) for k in kernel_shape[:3])):
    # tf.slice's (begin, size) per axis, size -1: to the end. Plain ints where the
    # shapes are static: a slice is then one op and two constants (indexing with [...]
    # builds several more, and tracing them dominated a small model's first step).
    x_begin, x_size, dy_begin, dy_size = [0], [-1], [0], [-1]
    for axis, (a, k, s) in enumerate(zip(tap, kernel_shape[:3], strides), start=1):
      if s > 1:
        x0, y0, length = _strided_tap(a, k, s, padding, static_in[axis])
        x_begin += [x0 // s, x0 % s]
        x_size += [length, 1]
      elif k == 1:  # No shift along this axis: the whole extent of both.
        y0, length = 0, -1
        x_begin += [0] + ([0] if split else [])
        x_size += [-1] + ([1] if split else [])
      else:
        shift = a - ((k - 1) // 2 if padding == 'SAME' else 0)
        x0, y0 = max(shift, 0), max(-shift, 0)
        n_in, n_out = static_in[axis], output_grad.shape[axis]
        if n_in is not None and n_out is not None:
          length = max(min(n_in - x0, n_out - y0), 0)
        else:
          length = tf.maximum(tf.minimum(size_in[axis] - x0, size_out[axis] - y0), 0)
        x_begin += [x0] + ([0] if split else [])
        x_size += [length] + ([1] if split else [])
      dy_begin.append(y0)
      dy_size.append(length)
    if any(isinstance(n, int) and n == 0 for n in dy_size):
      # A tap that reads only padding on this shape: zero, without ops to trace or run.
      zero = tf.zeros([ci, co], output_grad.dtype) if zero is None else zero
      taps.append(zero)
      continue
    x = tf.reshape(tf.slice(inputs, x_begin + [0], x_size + [-1]), x_rows)
    dy = tf.reshape(tf.slice(output_grad, dy_begin + [0], dy_size + [-1]), dy_rows)
    taps.append(tf.matmul(x, dy, transpose_a=True))
  return tf.reshape(tf.stack(taps), kernel_shape)


def _split_strided_axes(inputs: tf.Tensor, strides: Sequence[int], channels: int) -> tf.Tensor:
  """[N, T, H, W, C] -> [N, T / s_t, s_t, H / s_h, s_h, W / s_w, s_w, C], each strided
  axis zero-padded at its end to a multiple of its stride (unit-stride axes: [n, 1])."""
  size = tf.shape(inputs)
  paddings, shape = [[0, 0]], [size[0]]
  for axis, s in enumerate(strides, start=1):
    if s > 1:
      n = inputs.shape[axis]
      if n is None:
        raise ValueError(f'a strided axis (axis {axis}, stride {s}) needs a static size')
      paddings.append([0, -n % s])
      shape += [-(-n // s), s]
    else:
      paddings.append([0, 0])
      shape += [size[axis], 1]
  if any(p[1] for p in paddings):
    inputs = tf.pad(inputs, paddings + [[0, 0]])
  return tf.reshape(inputs, shape + [channels])


def _output_size(n: int, k: int, s: int, padding: str) -> int:
  """Outputs along an axis of n inputs, kernel k, stride s ('SAME'/'VALID', any case)."""
  return -(-n // s) if padding.upper() == 'SAME' else max((n - k) // s + 1, 0)


def _strided_tap(a: int, k: int, s: int, padding: str, n: int):
  """(first input index, first output index, count) of the input / output pairs that
  tap a joins along an axis of static size n, stride s: output u reads s u + a - p."""
  out = _output_size(n, k, s, padding)
  front = max((out - 1) * s + k - n, 0) // 2 if padding == 'SAME' else 0
  first = max(-((a - front) // s), 0)  # ceil((front - a) / s): the input index >= 0
  stop = min((n - 1 - a + front) // s + 1, out)  # the input index <= n - 1
  length = max(stop - first, 0)
  return s * first + a - front, first, length


@tf_keras.utils.register_keras_serializable(package='cvrl_tf')
class Conv3D(tf_keras.layers.Conv3D):
  """tf_keras.layers.Conv3D; where oneDNN's weight gradient is slow, it is taken as GEMMs.

  kernel_gradient: 'auto', 'matmul' (GEMMs, `tap_kernel_gradient`, whenever the shapes
  allow it: a strided layer needs static sizes along its strided axes) or 'conv' (always
  the usual kernel). 'auto' takes the GEMMs on CPU (no GPU or TPU visible) in two cases
  (benchmarks/README.md, "Kernel gradients as GEMMs", measured on AVX2 and AVX-512, in
  float32 and bfloat16):
    - kernels spanning time only ([kt, 1, 1]: ResNet's pointwise, temporal and projection
      convs), any map size: one product per frame tap, slices across space only to take
      a strided projection's phase (which needs static H, W); e.g. R3D-50's [1, 1, 1]
      convs 1.0-1.6x in float32, its strided projections up to 8x in bfloat16;
    - any kernel on small maps: at most SMALL_MAP output positions per frame (H' x W').
      oneDNN's 3-D weight-gradient kernels are tuned for large maps: on the demo
      encoder's res3-res5 (4 x 4 to 1 x 1 maps) they took up to 40x the GEMMs' time on
      AVX2, and 1.2-1.5x on R3D-50's 4 x 4 res5 in float32 (but a few 4 x 4 layers of
      the demo encoder ran 0.56-0.9x as GEMMs in float32 on AVX-512: SMALL_MAP); but
      not below MIN_GEMM_MACS, where both routes are fast and the GEMMs' graph of many
      taps is slower to build than the time it saves.
  Elsewhere (GPU / TPU; larger maps with spatial kernels, where oneDNN's kernel wins, the
  stem by 8x) the usual kernel. Forward and input gradient are always the usual kernels.
  """

  def __init__(self, *args, kernel_gradient: str = 'auto', **kwargs):
    super().__init__(*args, **kwargs)
    if kernel_gradient not in KERNEL_GRADIENTS:
      raise ValueError(f'kernel_gradient must be one of {KERNEL_GRADIENTS}, '
                       f'got {kernel_gradient!r}')
    self.kernel_gradient = kernel_gradient

  def uses_matmul_kernel_gradient(self, input_shape=None) -> bool:
    """Whether the kernel gradient is `tap_kernel_gradient`'s GEMMs for inputs of
    `input_shape` ([N, T, H, W, C]; None or None entries: unknown, dynamic)."""
    strided = any(s > 1 for s in self.strides)
    eligible = (set(self.dilation_rate) == {1} and self.groups == 1 and
                self.data_format == 'channels_last')
    if strided:  # tap_kernel_gradient splits strided axes: their sizes must be static.
      eligible = eligible and input_shape is not None and all(
          input_shape[axis] is not None for axis, s in enumerate(self.strides, 1) if s > 1)
    if self.kernel_gradient == 'conv' or not eligible:
      return False
    if self.kernel_gradient == 'matmul':
      return True
    if tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('TPU'):
      return False
    if tuple(self.kernel_size[1:]) == (1, 1):
      return True
    map_size = None if input_shape is None else self._map_size(input_shape)
    if map_size is None or map_size > SMALL_MAP:
      return False
    macs = self._kernel_gradient_macs(input_shape, map_size)
    return macs is None or macs >= MIN_GEMM_MACS

  def convolution_op(self, inputs, kernel):
    if not self.uses_matmul_kernel_gradient(inputs.shape):
      return super().convolution_op(inputs, kernel)
    padding = self.padding.upper()
    strides = [1, *self.strides, 1]

    @tf.custom_gradient
    def conv(x, k):
      def grad(dy):
        dx = tf.raw_ops.Conv3DBackpropInputV2(
            input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=strides,
            padding=padding)
        # Named after the layer, so profiles attribute these GEMMs to it.
        with tf.name_scope(f'{self.name}_kernel_gradient'):
          return dx, tap_kernel_gradient(x, dy, k.shape, padding, self.strides)
      return tf.nn.conv3d(x, k, strides, padding), grad

    return conv(inputs, tf.convert_to_tensor(kernel))

  def _map_size(self, input_shape) -> Optional[int]:
    """H' x W' of the output for an input of `input_shape`, or None when H or W is dynamic."""
    size = 1
    for n, k, s in zip(input_shape[2:4], self.kernel_size[1:], self.strides[1:]):
      if n is None:
        return None
      size *= _output_size(n, k, s, self.padding)
    return size

  def _kernel_gradient_macs(self, input_shape, map_size: int) -> Optional[int]:
    """N T' H'W' kt kh kw Ci Co, or None when N, T or Ci is dynamic (taken as large)."""
    n, t, channels = input_shape[0], input_shape[1], input_shape[-1]
    if n is None or t is None or channels is None:
      return None
    frames = _output_size(t, self.kernel_size[0], self.strides[0], self.padding)
    taps = self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
    return n * frames * map_size * taps * channels * self.filters

  def get_config(self):
    return {**super().get_config(), 'kernel_gradient': self.kernel_gradient}
