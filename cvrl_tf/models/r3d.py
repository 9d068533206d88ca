"""R3D (3D ResNet) video encoders built by name; CVRL's R3D-50 layout by default.

Layout (CVRL, Slow-pathway style; every size below is a parameter of `build_backbone`):
  stem   conv 64 x [5, 7, 7] stride (2, 2, 2) -> BN -> ReLU -> max-pool [1, 3, 3] (1, 2, 2)
  res2   widths  64, temporal kernel 1, spatial stride 1
  res3   widths 128, temporal kernel 1, spatial stride 2 (first block)
  res4   widths 256, temporal kernel 3, spatial stride 2 (first block)
  res5   widths 512, temporal kernel 3, spatial stride 2 (first block)
  global average pooling over (T, H, W) -> pooled representation
Bottleneck block: [tk, 1, 1] -> [1, 3, 3] (spatial stride here) -> [1, 1, 1] x4 filters.
Basic block (R3D-18/34): [tk, 3, 3] (spatial stride here) -> [1, 3, 3].
Every conv has no bias and is followed by BN (momentum 0.9, eps 1e-5); a 1x1x1 conv + BN
projects the shortcut when the block changes the shape. No temporal stride after the stem,
so a 16-frame clip ends as 8 time steps: 16x224x224x3 -> 8x7x7x2048 -> 2048.

The width multiplier scales every width including the stem (SimCLR convention); any
multiplier that keeps 64 * m an integer works (tests use 0.25 to stay fast).

Parameters, counting BN moving statistics, without any head (exact, see tests/test_r3d.py):
  r3d18   1x   20,071,104   (512-d output)
  r3d34   1x   39,623,872   (512-d output)
  r3d50   1x   31,725,248   (2048-d output)
  r3d50   2x  126,594,432   (4096-d output)
  r3d50   4x  505,764,608   (8192-d output)
  r3d101  1x   59,682,496   (2048-d output)
  r3d152  1x   82,187,968   (2048-d output)
  r3d200  1x   86,693,568   (2048-d output)
With all temporal kernels 1, R3D-18 has 11,223,744 (a 2D ResNet-18 with a 5x7x7 stem).

Outputs (always float32, also under the `mixed_bfloat16` policy; `output=`):
  'pooled'       [B, D]                       (default: the representation)
  'feature_map'  [B, T', H', W', D]           last stage, before pooling
  'endpoints'    dict: 'stem', 'res2'..'res5' ([B, T', H', W', C] each), 'feature_map',
                 'pooled' - for detection heads and receptive-field checks.
The input is [B, T, H, W, 3] float32 in [0, 1] with T, H, W dynamic by default.
"""

import dataclasses
import functools
import re
from typing import Any, Optional, Sequence, Tuple, Union

import tf_keras

from cvrl_tf.models import video_layers

# depth -> (block type, blocks per stage res2..res5)
LAYOUTS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_NAMES = ('res2', 'res3', 'res4', 'res5')
OUTPUTS = ('pooled', 'feature_map', 'endpoints')
_BOTTLENECK_EXPANSION = 4


def parse_name(name: str) -> int:
  """'r3d50' (also 'R3D-50', 'r3d_50') -> 50."""
  match = re.fullmatch(r'r3d[-_]?(\d+)', name.lower())
  if not match or int(match.group(1)) not in LAYOUTS:
    raise ValueError(f'unknown backbone {name!r}; known: '
                     f'{", ".join(f"r3d{d}" for d in LAYOUTS)}')
  return int(match.group(1))


def _scaled(width: int, multiplier: float) -> int:
  scaled = width * multiplier
  if scaled < 1 or abs(scaled - round(scaled)) > 1e-9:
    raise ValueError(f'width_multiplier={multiplier} makes width {width} non-integer')
  return int(round(scaled))


def output_dim(name: str = 'r3d50', width_multiplier: float = 1) -> int:
  """Size D of the pooled representation (2048 for R3D-50 1x, 512 for R3D-18 1x)."""
  block, _ = LAYOUTS[parse_name(name)]
  expansion = _BOTTLENECK_EXPANSION if block == 'bottleneck' else 1
  return _scaled(STAGE_WIDTHS[-1], width_multiplier) * expansion


def _shortcut(x, filters, stride, conv, bn, name):
  """Identity, or 1x1x1 conv + BN when the block changes channels or resolution."""
  if stride == 1 and x.shape[-1] == filters:
    return x
  x = conv(filters, (1, 1, 1), (1, stride, stride), name=f'{name}_proj')(x)
  return bn(name=f'{name}_proj_bn')(x)


def _bottleneck_block(x, width, temporal_kernel, stride, conv, bn, name):
  out_filters = _BOTTLENECK_EXPANSION * width
  shortcut = _shortcut(x, out_filters, stride, conv, bn, name)
  x = conv(width, (temporal_kernel, 1, 1), 1, name=f'{name}_conv_a')(x)
  x = bn(name=f'{name}_bn_a')(x)
  x = tf_keras.layers.ReLU(name=f'{name}_relu_a')(x)
  x = conv(width, (1, 3, 3), (1, stride, stride), name=f'{name}_conv_b')(x)
  x = bn(name=f'{name}_bn_b')(x)
  x = tf_keras.layers.ReLU(name=f'{name}_relu_b')(x)
  x = conv(out_filters, (1, 1, 1), 1, name=f'{name}_conv_c')(x)
  x = bn(name=f'{name}_bn_c')(x)
  x = tf_keras.layers.Add(name=f'{name}_add')([x, shortcut])
  return tf_keras.layers.ReLU(name=f'{name}_out')(x)


def _basic_block(x, width, temporal_kernel, stride, conv, bn, name):
  shortcut = _shortcut(x, width, stride, conv, bn, name)
  x = conv(width, (temporal_kernel, 3, 3), (1, stride, stride), name=f'{name}_conv_a')(x)
  x = bn(name=f'{name}_bn_a')(x)
  x = tf_keras.layers.ReLU(name=f'{name}_relu_a')(x)
  x = conv(width, (1, 3, 3), 1, name=f'{name}_conv_b')(x)
  x = bn(name=f'{name}_bn_b')(x)
  x = tf_keras.layers.Add(name=f'{name}_add')([x, shortcut])
  return tf_keras.layers.ReLU(name=f'{name}_out')(x)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """An R3D encoder's architecture and how it computes (what backbone.json stores).

  name: 'r3d18', 'r3d34', 'r3d50', 'r3d101', 'r3d152' or 'r3d200'.
  width_multiplier: scales all widths (stem included); 1, 2 and 4 in the paper.
  temporal_kernel_sizes: temporal kernel of res2..res5 ((3, 3, 3, 3) is fully 3D).
  stem_kernel, stem_strides: stem conv [t, h, w]; strides (1, 2, 2) keep every frame
    (e.g. for short clips).
  stem_pool, pool_size, pool_strides: the max-pool after the stem conv.
  spatial_strides: spatial stride of the first block of res2..res5.
  bn_momentum, bn_epsilon: every BN of the encoder.
  use_sync_bn: batch statistics over all replicas (pretraining with small per-core
    batches); identical to plain BN on one replica, where the faster plain BN is used
    (video_layers.synchronize_batch_norm: build under the strategy's scope).
  kernel_initializer: of every conv. No regularizers here: weight decay is added by the
    training step (see weight_decay.py) so a frozen encoder carries no hidden losses.
  kernel_gradient: route of the convs' kernel gradients ('auto', 'matmul', 'conv'); see
    video_layers.Conv3D. Same numbers up to rounding, only speed.
  """
  name: str = 'r3d50'
  width_multiplier: float = 1
  temporal_kernel_sizes: Sequence[int] = (1, 1, 3, 3)
  stem_kernel: Tuple[int, int, int] = (5, 7, 7)
  stem_strides: Tuple[int, int, int] = (2, 2, 2)
  stem_pool: bool = True
  pool_size: Tuple[int, int, int] = (1, 3, 3)
  pool_strides: Tuple[int, int, int] = (1, 2, 2)
  spatial_strides: Sequence[int] = (1, 2, 2, 2)
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  use_sync_bn: bool = False
  kernel_initializer: Any = 'he_normal'
  kernel_gradient: str = 'auto'

  def __post_init__(self):
    for key in ('temporal_kernel_sizes', 'stem_kernel', 'stem_strides', 'pool_size',
                'pool_strides', 'spatial_strides'):  # JSON gives lists.
      object.__setattr__(self, key, tuple(getattr(self, key)))


# Fields of EncoderSpec that do not change the weights' layout (a stored encoder can be
# rebuilt with other values of these).
NON_ARCHITECTURE = ('use_sync_bn', 'kernel_initializer', 'kernel_gradient')


def build_backbone(spec: Union[EncoderSpec, str] = EncoderSpec(),
                   input_shape: Sequence[Optional[int]] = (None, None, None, 3),
                   output: str = 'pooled',
                   model_name: Optional[str] = None,
                   **overrides) -> tf_keras.Model:
  """Builds the R3D encoder `spec` describes as a functional tf_keras.Model.

  Args:
    spec: the architecture (EncoderSpec), or a name ('r3d18') for EncoderSpec(name=...);
      keyword `overrides` replace its fields, e.g. build_backbone('r3d18',
      width_multiplier=0.25).
    input_shape: [T, H, W, 3]; None dims stay dynamic so an exported encoder takes any
      clip the strides allow.
    output: 'pooled', 'feature_map' or 'endpoints' (see module docstring).
    model_name: defaults to e.g. 'r3d50' or 'r3d50_2x'.

  Returns:
    A tf_keras.Model from [B, T, H, W, 3] to the requested float32 output(s).
  """
  if isinstance(spec, str):
    spec = EncoderSpec(name=spec)
  if overrides:
    spec = dataclasses.replace(spec, **overrides)
  name, width_multiplier = spec.name, spec.width_multiplier
  temporal_kernel_sizes, spatial_strides = spec.temporal_kernel_sizes, spec.spatial_strides
  depth = parse_name(name)
  block_type, blocks = LAYOUTS[depth]
  if len(temporal_kernel_sizes) != 4 or len(spatial_strides) != 4:
    raise ValueError('temporal_kernel_sizes and spatial_strides need one entry per stage '
                     f'res2..res5, got {temporal_kernel_sizes}, {spatial_strides}')
  if output not in OUTPUTS:
    raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')
  if model_name is None:
    model_name = f'r3d{depth}' + ('' if width_multiplier == 1 else f'_{width_multiplier:g}x')

  conv = functools.partial(
      video_layers.Conv3D, padding='same', use_bias=False,
      kernel_initializer=spec.kernel_initializer, kernel_gradient=spec.kernel_gradient)
  bn = functools.partial(
      video_layers.BatchNormalization, momentum=spec.bn_momentum, epsilon=spec.bn_epsilon,
      synchronized=video_layers.synchronize_batch_norm(spec.use_sync_bn))
  block_fn = _bottleneck_block if block_type == 'bottleneck' else _basic_block

  inputs = tf_keras.Input(shape=tuple(input_shape), name='clips')
  x = conv(_scaled(64, width_multiplier), spec.stem_kernel, spec.stem_strides,
           name='stem_conv')(inputs)
  x = bn(name='stem_bn')(x)
  x = tf_keras.layers.ReLU(name='stem_relu')(x)
  if spec.stem_pool:
    x = tf_keras.layers.MaxPool3D(spec.pool_size, spec.pool_strides, padding='same',
                                  name='stem_pool')(x)
  endpoints = {'stem': x}
  for stage, (width, num_blocks, t_kernel, stride) in enumerate(
      zip(STAGE_WIDTHS, blocks, temporal_kernel_sizes, spatial_strides)):
    stage_name = STAGE_NAMES[stage]
    for i in range(num_blocks):
      x = block_fn(x, _scaled(width, width_multiplier), t_kernel, stride if i == 0 else 1,
                   conv, bn, name=f'{stage_name}_block{i + 1}')
    endpoints[stage_name] = x

  # Cast before pooling: the mean over T'H'W' positions is more accurate in float32.
  feature_map = tf_keras.layers.Activation('linear', dtype='float32', name='feature_map')(x)
  pooled = tf_keras.layers.GlobalAveragePooling3D(dtype='float32', name='pooled')(feature_map)
  if output == 'pooled':
    outputs = pooled
  elif output == 'feature_map':
    outputs = feature_map
  else:
    outputs = {k: tf_keras.layers.Activation('linear', dtype='float32', name=f'{k}_f32')(v)
               for k, v in endpoints.items()}
    outputs.update(feature_map=feature_map, pooled=pooled)
  return tf_keras.Model(inputs, outputs, name=model_name)


def temporal_receptive_field(frame: int,
                             num_frames: int,
                             stem_kernel: int = 5,
                             stem_stride: int = 2,
                             temporal_kernel_sizes: Sequence[int] = (1, 1, 3, 3),
                             blocks: Sequence[int] = (3, 4, 6, 3)) -> dict:
  """Which output time steps of each stage can change when input `frame` changes.

  Pure arithmetic of 'same' padding (TF pads total max((out-1)*s + k - n, 0), the smaller
  half before); no model needed, so tests can check the built model against it. Assumes
  the stem pool has temporal size 1 and stride 1 (the CVRL layout). Returns
  {'stem': set, 'res2': set, ...} of output time indices.
  """
  def conv_outputs(inputs, n, k, s):
    out_len = -(-n // s)
    pad_before = max((out_len - 1) * s + k - n, 0) // 2
    # Output t reads inputs t*s - pad_before .. t*s - pad_before + k - 1.
    return {t for t in range(out_len)
            if any(0 <= t * s - pad_before + j < n and t * s - pad_before + j in inputs
                   for j in range(k))}, out_len

  touched, n = conv_outputs({frame}, num_frames, stem_kernel, stem_stride)
  result = {'stem': touched}
  for name, k, num_blocks in zip(STAGE_NAMES, temporal_kernel_sizes, blocks):
    # Only one conv per block has a temporal kernel > 1 (both block types); the shortcut
    # and the other convs are pointwise in time.
    for _ in range(num_blocks):
      touched, n = conv_outputs(touched, n, k, 1)
    result[name] = touched
  return result
