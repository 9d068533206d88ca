"""Forward FLOPs of a tf_keras model per clip, counted analytically.

Method: trace `model(x, training=False)` once with a concrete [1, T, H, W, C] input (no
compute runs) and, for every matmul-like op in the graph, count multiply-adds from its
static shapes; FLOPs = 2 x multiply-adds (papers quoting "FLOPs" for 3D ResNets, e.g.
SlowFast, usually mean multiply-adds: halve our figure to compare). Counted ops:
  Conv2D, Conv3D        out_elements * (kernel volume * in_channels)
  DepthwiseConv2dNative out_elements * kernel area
  MatMul, BatchMatMul*  out_elements * contracted size   (Dense, including on 5D inputs)
Not counted: bias adds, BN, activations, pooling, residual adds (together < 1% of an
R3D), and ops inside nested tf.functions (tf_keras layers are inlined, so none here).
Tracing instead of reading layer configs means custom layers and nested models (a backbone
inside a pretrainer) are covered, and a dynamic-shape encoder is measured at any size.

R3D-50 1x (CVRL layout, this repo's `build_backbone()`), per clip, without head:
  16 x 224 x 224   91.03 GFLOPs (45.5 G multiply-adds; 9.4 GFLOPs of it in the 5x7x7 stem)
   8 x 112 x 112   11.94 GFLOPs
  32 x 224 x 224  182.07 GFLOPs (linear-eval clips)
R3D-18 1x at 16 x 224 x 224: 47.67 GFLOPs. The 3 x 2048 -> 128 projection head adds
0.026 GFLOPs per clip.
"""

import collections
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

_CONV_OPS = ('Conv2D', 'Conv3D')
_MATMUL_OPS = ('MatMul', 'BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3')

Row = collections.namedtuple('Row', ['layer', 'op', 'output_shape', 'flops'])


def _static_shape(tensor) -> Optional[List[int]]:
  shape = tensor.shape
  if shape.rank is None or any(d is None for d in shape.as_list()):
    return None
  return shape.as_list()


def _op_macs(op) -> Optional[int]:
  """Multiply-adds of one graph op, None when it is not a counted op."""
  if op.type not in _CONV_OPS + _MATMUL_OPS + ('DepthwiseConv2dNative',):
    return None
  out = _static_shape(op.outputs[0])
  if out is None:
    raise ValueError(f'op {op.name} has a dynamic output shape {op.outputs[0].shape}; '
                     'pass a fully defined input_shape')
  out_elements = int(np.prod(out, dtype=np.int64))
  if op.type in _CONV_OPS:
    kernel = _static_shape(op.inputs[1])  # [k..., in_channels, out_channels]
    return out_elements * int(np.prod(kernel[:-1], dtype=np.int64))
  if op.type == 'DepthwiseConv2dNative':
    kernel = _static_shape(op.inputs[1])  # [kh, kw, in_channels, multiplier]
    return out_elements * kernel[0] * kernel[1]
  a = _static_shape(op.inputs[0])
  if op.type == 'MatMul':
    transposed = op.get_attr('transpose_a')
  else:
    transposed = op.get_attr('adj_x')
  contracted = a[-2] if transposed else a[-1]
  return out_elements * contracted


def _layer_name(op_name: str, layer_names: set) -> str:
  """'r3d50/res2_block1_conv_a/Conv3D' -> 'res2_block1_conv_a'.

  Keeps the scope path from the first to the last component that names a layer, which
  drops the model's own scope and op-internal scopes such as Dense's 'Tensordot', and
  keeps nesting ('head/dense_0').
  """
  parts = op_name.split('/')[:-1]
  known = [i for i, part in enumerate(parts) if part in layer_names]
  if not known:
    return '/'.join(parts) or op_name
  return '/'.join(parts[known[0]:known[-1] + 1])


def _graph(model: tf_keras.Model, input_shape: Optional[Sequence[int]]):
  if input_shape is None:
    input_shape = model.input_shape[1:]
  input_shape = tuple(input_shape)
  if any(d is None for d in input_shape):
    raise ValueError(f'input_shape must be fully defined, got {input_shape}')
  fn = tf.function(lambda x: model(x, training=False))
  concrete = fn.get_concrete_function(tf.TensorSpec((1,) + input_shape, tf.float32))
  return concrete.graph, concrete.structured_outputs


def flops_table(model: tf_keras.Model,
                input_shape: Optional[Sequence[int]] = None) -> List[Row]:
  """One Row(layer, op, output_shape, flops) per counted op, in graph order.

  Args:
    model: a tf_keras model (or layer) taking one [B, ...] float tensor.
    input_shape: per-example shape, e.g. (16, 224, 224, 3); defaults to the model's own
      input shape, which must then be fully defined.
  """
  graph, _ = _graph(model, input_shape)
  layer_names = {layer.name for layer in model.submodules
                 if isinstance(layer, tf_keras.layers.Layer)} - {model.name}
  rows = []
  for op in graph.get_operations():
    macs = _op_macs(op)
    if macs is not None:
      rows.append(Row(_layer_name(op.name, layer_names), op.type,
                      tuple(op.outputs[0].shape.as_list()[1:]), 2 * macs))
  return rows


def count_flops(model: tf_keras.Model,
                input_shape: Optional[Sequence[int]] = None) -> int:
  """Forward FLOPs (2 x multiply-adds) for one example of `input_shape`."""
  return sum(row.flops for row in flops_table(model, input_shape))


def output_shapes(model: tf_keras.Model, input_shape: Sequence[int]):
  """The model's output shape(s) at `input_shape` (batch 1), from the same trace."""
  _, outputs = _graph(model, input_shape)
  return tf.nest.map_structure(lambda t: tuple(t.shape.as_list()), outputs)


def format_flops_table(rows: Sequence[Row], top: Optional[int] = None) -> str:
  """A printable per-layer table with GFLOPs and share of the total, plus a total line.

  `top` keeps only the most expensive rows (in graph order) for a short summary.
  """
  total = sum(r.flops for r in rows) or 1
  shown = rows
  if top is not None:
    keep = set(sorted(range(len(rows)), key=lambda i: -rows[i].flops)[:top])
    shown = [r for i, r in enumerate(rows) if i in keep]
  width = max([len(r.layer) for r in shown] + [5])
  lines = [f'{"layer":<{width}}  {"op":<13} {"output shape":<22} {"GFLOPs":>9} {"share":>6}']
  for r in shown:
    lines.append(f'{r.layer:<{width}}  {r.op:<13} {str(r.output_shape):<22} '
                 f'{r.flops / 1e9:9.3f} {100 * r.flops / total:5.1f}%')
  lines.append(f'{"total":<{width}}  {len(rows)} ops{"":<27} {total / 1e9:9.3f} 100.0%')
  return '\n'.join(lines)
