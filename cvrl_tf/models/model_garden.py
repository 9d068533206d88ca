"""Model Garden's R3D (`official.vision` ResNet3D, video_ssl's VideoSSLModel) and ours.

Why: the CVRL authors released their encoders as checkpoints of Model Garden's model.
Both encoders are the same sequence of (conv, BN) units: the stem, then per bottleneck
block the shortcut projection (first block of a stage only), the temporal conv
[kt, 1, 1], the spatial conv [1, 3, 3] and the expansion conv [1, 1, 1]. Weights move
unit by unit in that order, every variable shape-checked; Model Garden's side is walked
by structure (its blocks' sub-layers in the order they hold them), ours by the names
r3d.build_backbone gives its layers. Anything left over on either side is an error.

Model Garden's ResNet3D fixes what our build_backbone leaves free (bottleneck blocks,
64-wide stem 7x7 stride 2, spatial strides 1, 2, 2, 2, no width multiplier);
`model_garden_settings` turns one of our specs into its arguments or says what stands
in the way. The projection head: Model Garden's hidden Dense layers have a bias, ours
none (the BN after it has an offset): the bias is folded into the BN's moving mean,
exact in inference (BN(Wx + b) with mean m is BN(Wx) with mean m - b) and irrelevant in
training, where the batch mean absorbs it.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tf_keras

from cvrl_tf.models import r3d

# Settings of the released CVRL checkpoints that no weight shape records (their configs
# in Model Garden's video_ssl project): strides in time and the stem's conv type.
STEM_TYPE = 'v0'
TEMPORAL_STRIDES = 1
_FIXED = {  # our spec key -> the value Model Garden's ResNet3D hard-codes
    'width_multiplier': 1,
    'stem_pool': True,
    'spatial_strides': [1, 2, 2, 2],
}


def norm_defaults() -> Dict[str, Dict[str, float]]:
  """BN momentum / epsilon of Model Garden's configs: backbone and projection head.

  The released CVRL configs leave them at these defaults, so the checkpoints were
  trained (and must be evaluated) with them: epsilon 1e-3 in the backbone.
  """
  from official.projects.video_ssl.configs import video_ssl  # pylint: disable=g-import-not-at-top
  model = video_ssl.VideoSSLModel()
  return {part: {'bn_momentum': float(norm.norm_momentum),
                 'bn_epsilon': float(norm.norm_epsilon)}
          for part, norm in (('backbone', model.norm_activation),
                             ('head', model.hidden_norm_activation))}


def released_training() -> Dict[str, Any]:
  """Clips of the released pretraining (video_ssl_pretrain_kinetics400): training.json."""
  from official.projects.video_ssl.configs import video_ssl  # pylint: disable=g-import-not-at-top
  data = video_ssl.video_ssl_pretrain_kinetics400().task.train_data
  return {'num_frames': int(data.feature_shape[0]),
          'frame_stride': int(data.temporal_stride),
          'target_fps': None, 'crop_size': int(data.feature_shape[1])}


# --------------------------------------------------------------------------- settings
def model_garden_settings(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Model Garden ResNet3D arguments for one of our backbone specs.

  Raises ValueError naming the first setting Model Garden's ResNet3D cannot express.
  """
  depth = r3d.parse_name(spec['name'])
  block, blocks = r3d.LAYOUTS[depth]
  if block != 'bottleneck':
    raise ValueError(f'{spec["name"]} has basic blocks; Model Garden\'s ResNet3D has '
                     f'bottleneck blocks only (r3d50, r3d101, r3d152, r3d200)')
  for key, value in _FIXED.items():
    if _plain(spec.get(key, value)) != _plain(value):
      raise ValueError(f'{key}={spec.get(key)!r}: Model Garden\'s ResNet3D has {value!r}')
  stem_kernel, stem_strides = list(spec['stem_kernel']), list(spec['stem_strides'])
  pool_size, pool_strides = list(spec['pool_size']), list(spec['pool_strides'])
  if stem_kernel[1:] != [7, 7] or stem_strides[1:] != [2, 2]:
    raise ValueError(f'stem_kernel={stem_kernel}, stem_strides={stem_strides}: Model '
                     f'Garden\'s stem is [t, 7, 7] with strides [t, 2, 2]')
  pool_t = pool_strides[0]
  if pool_size != [1 if pool_t == 1 else 3, 3, 3] or pool_strides[1:] != [2, 2]:
    raise ValueError(f'pool_size={pool_size}, pool_strides={pool_strides}: Model Garden '
                     f'pools [1, 3, 3] with stride [1, 2, 2] or [3, 3, 3] with [2, 2, 2]')
  return dict(
      model_id=depth,
      temporal_kernel_sizes=[(int(k),) * n
                             for k, n in zip(spec['temporal_kernel_sizes'], blocks)],
      stem_conv_temporal_kernel_size=int(stem_kernel[0]),
      stem_conv_temporal_stride=int(stem_strides[0]),
      stem_pool_temporal_stride=int(pool_t),
      norm_momentum=float(spec['bn_momentum']),
      norm_epsilon=float(spec['bn_epsilon']))


def _plain(value):
  return list(value) if isinstance(value, (tuple, list)) else value


def model_config(settings: Dict[str, Any], head: Optional[Dict[str, int]] = None):
  """Model Garden's VideoSSLModel config (its `.backbone`, `.norm_activation` serve a
  backbone alone); head: {'hidden_layer_num', 'hidden_dim', 'projection_dim'}."""
  # pylint: disable=g-import-not-at-top
  from official.projects.video_ssl.configs import video_ssl
  from official.vision.configs import backbones_3d
  from official.vision.configs import common
  # pylint: enable=g-import-not-at-top
  resnet = backbones_3d.ResNet3D(
      model_id=settings['model_id'], stem_type=STEM_TYPE,
      stem_conv_temporal_kernel_size=settings['stem_conv_temporal_kernel_size'],
      stem_conv_temporal_stride=settings['stem_conv_temporal_stride'],
      stem_pool_temporal_stride=settings['stem_pool_temporal_stride'],
      block_specs=tuple(backbones_3d.ResNet3DBlock(
          temporal_strides=TEMPORAL_STRIDES, temporal_kernel_sizes=tuple(kernels),
          use_self_gating=False) for kernels in settings['temporal_kernel_sizes']))
  config = video_ssl.VideoSSLModel(
      model_type='video_ssl_model',
      backbone=backbones_3d.Backbone3D(type='resnet_3d', resnet_3d=resnet),
      norm_activation=common.NormActivation(
          use_sync_bn=False, norm_momentum=settings['norm_momentum'],
          norm_epsilon=settings['norm_epsilon']))
  config.hidden_norm_activation.use_sync_bn = False
  if head:
    config.hidden_layer_num = head['hidden_layer_num']
    config.hidden_dim = head['hidden_dim']
    config.projection_dim = head['projection_dim']
  return config


def build_model(settings: Dict[str, Any], head: Optional[Dict[str, int]] = None):
  """Model Garden's model through its own builders: the ResNet3D backbone alone, or the
  video_ssl model (backbone, pooling, MLP) when `head` is given."""
  # pylint: disable=g-import-not-at-top
  from official.projects.video_ssl.modeling import video_ssl_model
  from official.vision.modeling.backbones import factory
  # pylint: enable=g-import-not-at-top
  config = model_config(settings, head)
  input_specs = tf_keras.layers.InputSpec(shape=[None, None, None, None, 3])
  if head is None:
    return factory.build_backbone(input_specs=input_specs, backbone_config=config.backbone,
                                  norm_activation_config=config.norm_activation)
  return video_ssl_model.build_video_ssl_pretrain_model(input_specs, config, num_classes=0)


# --------------------------------------------------------------------------- units
Unit = Tuple[str, tf_keras.layers.Layer, tf_keras.layers.Layer]  # (where, conv, bn)


def _pair(layers: Sequence[tf_keras.layers.Layer], where: str) -> List[Unit]:
  """(conv, BN) pairs of weighted layers in order; any other weighted layer is an error."""
  units, conv = [], None
  for layer in layers:
    if not layer.weights:
      continue
    if isinstance(layer, tf_keras.layers.Conv3D) and conv is None:
      conv = layer
    elif isinstance(layer, tf_keras.layers.BatchNormalization) and conv is not None:
      units.append((f'{where}/{conv.name}', conv, layer))
      conv = None
    else:
      raise ValueError(f'{where}: layer {layer.name} ({type(layer).__name__}, weights '
                       f'{[w.name for w in layer.weights]}) has no counterpart in the '
                       f'CVRL R3D, which is only convs each followed by batch norm')
  if conv is not None:
    raise ValueError(f'{where}: conv {conv.name} has no batch norm after it')
  return units


def model_garden_units(backbone: tf_keras.Model) -> List[Unit]:
  """Model Garden ResNet3D's (conv, BN) units: the stem, then each block's sub-layers in
  the order the block holds them (shortcut, temporal, spatial, expansion)."""
  from official.vision.modeling.layers import nn_blocks_3d  # pylint: disable=g-import-not-at-top
  units, top = [], []
  for layer in backbone.layers:
    if isinstance(layer, nn_blocks_3d.BottleneckBlock3D):
      units += _pair(top, 'stem')
      top = []
      # Tracking order = the order build() assigns them; Keras has no public accessor.
      sublayers = layer._flatten_layers(  # pylint: disable=protected-access
          include_self=False, recursive=False)
      units += _pair(list(sublayers), layer.name)
    else:
      top.append(layer)
  return units + _pair(top, 'after the last block')


def our_units(encoder: tf_keras.Model, spec: Dict[str, Any]) -> List[Unit]:
  """Our R3D's (conv, BN) units in the same order, by the names build_backbone gives."""
  by_name = {layer.name: layer for layer in encoder.layers}
  roles = [('stem_conv', 'stem_bn')]
  block, blocks = r3d.LAYOUTS[r3d.parse_name(spec['name'])]
  steps = ('a', 'b', 'c') if block == 'bottleneck' else ('a', 'b')
  for stage, count in zip(r3d.STAGE_NAMES, blocks):
    for i in range(1, count + 1):
      name = f'{stage}_block{i}'
      if f'{name}_proj' in by_name:
        roles.append((f'{name}_proj', f'{name}_proj_bn'))
      roles += [(f'{name}_conv_{s}', f'{name}_bn_{s}') for s in steps]
  units = [(conv, by_name[conv], by_name[bn]) for conv, bn in roles]
  weighted = {l.name for l in encoder.layers if l.weights}
  left = weighted - {n for pair in roles for n in pair}
  if left:
    raise ValueError(f'layers of {encoder.name} outside the unit walk: {sorted(left)}')
  return units


def copy_units(source: List[Unit], target: List[Unit]) -> int:
  """Assigns every source unit's weights to the target unit at the same position, after
  checking that all shapes agree; returns the number of values copied."""
  if len(source) != len(target):
    raise ValueError(f'{len(source)} conv+BN units against {len(target)}: the '
                     f'architectures differ')
  pending = []
  for (where_s, conv_s, bn_s), (where_t, conv_t, bn_t) in zip(source, target):
    for layer_s, layer_t in ((conv_s, conv_t), (bn_s, bn_t)):
      ws, wt = layer_s.get_weights(), layer_t.weights
      shapes_s, shapes_t = [w.shape for w in ws], [tuple(w.shape) for w in wt]
      if shapes_s != shapes_t:
        raise ValueError(f'{where_s} ({layer_s.name}: {shapes_s}) does not fit '
                         f'{where_t} ({layer_t.name}: {shapes_t})')
      pending.append((layer_t, ws))
  for layer, weights in pending:
    layer.set_weights(weights)
  return sum(len(w) for _, w in pending)


# --------------------------------------------------------------------------- head
def head_layers(model: tf_keras.Model) -> List[tf_keras.layers.Layer]:
  """The weighted layers of a video_ssl model after its backbone: Dense, BN, ..., Dense."""
  return [l for l in model.layers if l.weights and l is not model.backbone]


def copy_head(model: tf_keras.Model, head: tf_keras.layers.Layer) -> None:
  """Model Garden's MLP (Dense with bias -> BN -> ReLU, ..., Dense) into a built
  heads.ProjectionHead (Dense without bias -> BN -> ReLU, ..., Dense); see the module
  docstring for the bias."""
  source = head_layers(model)
  target = [l for l in head.hidden_layers if l.weights] + [head.output_layer]
  if len(source) != len(target) or head.output_bn is not None:
    raise ValueError(f'Model Garden head has {len(source)} weighted layers, the '
                     f'projection head {len(target)}')
  bias = None
  for src, dst in zip(source, target):
    weights = src.get_weights()
    if isinstance(src, tf_keras.layers.Dense) and isinstance(dst, tf_keras.layers.Dense):
      if not dst.use_bias:  # A hidden layer: the BN next absorbs the bias.
        weights, bias = weights[:1], weights[1]
    elif (isinstance(src, tf_keras.layers.BatchNormalization) and
          isinstance(dst, tf_keras.layers.BatchNormalization) and bias is not None):
      gamma, beta, mean, variance = weights
      weights, bias = [gamma, beta, mean - bias, variance], None
    else:
      raise ValueError(f'head layer {src.name} ({type(src).__name__}) does not fit '
                       f'{dst.name} ({type(dst).__name__})')
    shapes = [tuple(w.shape) for w in dst.weights]
    if [np.shape(w) for w in weights] != shapes:
      raise ValueError(f'head layer {src.name} {[np.shape(w) for w in weights]} does '
                       f'not fit {dst.name} {shapes}')
    dst.set_weights(weights)
