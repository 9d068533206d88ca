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
exact in inference up to one rounding (BN(Wx + b) with mean m is BN(Wx) with mean m - b)
and irrelevant in training, where the batch mean absorbs it.

What no weight records (batch-norm epsilon and momentum, strides in time, the stem pool)
comes from the Model Garden experiment a checkpoint was trained with: `experiment_settings`
reads them off the exp_factory config with the released yaml's overrides, never off the
config classes' defaults (the NormActivation dataclass has epsilon 1e-3, momentum 0.99;
the video experiments the release used set 1e-5 and 0.9). How close two float32
evaluations of one network are expected to be: models/rounding.py.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tf_keras

from cvrl_tf.models import r3d

# Settings of the CVRL R3D that Model Garden's ResNet3D hard-codes or that we keep fixed.
STEM_TYPE = 'v0'
TEMPORAL_STRIDES = 1
_FIXED = {  # our spec key -> the value Model Garden's ResNet3D hard-codes
    'width_multiplier': 1,
    'stem_pool': True,
    'spatial_strides': [1, 2, 2, 2],
}


# --------------------------------------------------------------------------- experiments
# The released checkpoints were trained (and evaluated) by Model Garden experiments: an
# exp_factory config of tf-models-official plus the overrides of a yaml file in the
# tensorflow/models repository, EXPERIMENTS_DIR, which tf-models-official does not ship.
# Their `task.model` parts, value for value (the rest of the yaml is data and schedule;
# docs/import.md compares the linear-evaluation one with our configs):
EXPERIMENTS_DIR = 'tensorflow/models official/projects/video_ssl/configs/experiments'
PRETRAIN_YAML = 'cvrl_pretrain_k600_200ep.yaml'
LINEAR_EVAL_YAML = 'cvrl_linear_eval_k600.yaml'
_CVRL_RESNET_3D = {
    'model_id': 50,
    'stem_conv_temporal_kernel_size': 5,
    'stem_conv_temporal_stride': 2,
    'stem_pool_temporal_stride': 1,
    'block_specs': [
        {'temporal_kernel_sizes': [1, 1, 1], 'temporal_strides': 1,
         'use_self_gating': False},
        {'temporal_kernel_sizes': [1, 1, 1, 1], 'temporal_strides': 1,
         'use_self_gating': False},
        {'temporal_kernel_sizes': [3, 3, 3, 3, 3, 3], 'temporal_strides': 1,
         'use_self_gating': False},
        {'temporal_kernel_sizes': [3, 3, 3], 'temporal_strides': 1,
         'use_self_gating': False},
    ],
}
YAML_MODEL_OVERRIDES = {
    PRETRAIN_YAML: {'dropout_rate': 1.0,
                    'norm_activation': {'use_sync_bn': True},
                    'hidden_norm_activation': {'use_sync_bn': True},
                    'backbone': {'resnet_3d': _CVRL_RESNET_3D}},
    LINEAR_EVAL_YAML: {'dropout_rate': 1.0,
                       'norm_activation': {'use_sync_bn': False},
                       'backbone': {'resnet_3d': _CVRL_RESNET_3D}},
}


@dataclasses.dataclass(frozen=True)
class Release:
  """A released checkpoint: the experiment whose settings it needs, and its origin."""
  experiment: str   # exp_factory name (tf-models-official)
  yaml: str         # the released yaml whose task.model overrides apply
  trained: str      # how the weights came about


RELEASES = {
    'imagenet': Release(
        'video_ssl_linear_eval_kinetics600', LINEAR_EVAL_YAML,
        'a 2D ResNet-50 trained on ImageNet, inflated to R3D-50 (no video_ssl experiment '
        'trained it); its released numbers come from video_ssl\'s linear evaluation, this '
        'experiment'),
    'r3d_1x_k400_200ep': Release(
        'video_ssl_pretrain_kinetics400', PRETRAIN_YAML,
        'CVRL pretraining on Kinetics-400, 200 epochs (no K400 yaml was released: the '
        'K600 yaml\'s model part, on the K400 experiment, whose model is the same)'),
    'r3d_1x_k400_800ep': Release(
        'video_ssl_pretrain_kinetics400', PRETRAIN_YAML,
        'CVRL pretraining on Kinetics-400, 800 epochs (model part of the K600 yaml, as '
        'for 200 epochs)'),
    'r3d_1x_k600_800ep': Release(
        'video_ssl_pretrain_kinetics600', PRETRAIN_YAML,
        'CVRL pretraining on Kinetics-600, 800 epochs (the released yaml is the '
        '200-epoch one: the length differs, not the model)'),
}
# A checkpoint under none of the released names: video_ssl's pretraining experiment, whose
# settings the four releases share (tests/test_model_garden.py checks that they do).
OTHER = 'video_ssl_pretrain'
_ALL = {**RELEASES, OTHER: Release('video_ssl_pretrain_kinetics600', PRETRAIN_YAML,
                                   'unknown (no released name); the settings of '
                                   'video_ssl\'s CVRL pretraining, which all four '
                                   'releases share')}

# Settings a flag may replace (flag name -> settings key): a checkpoint trained from
# another config. The architecture flags (--backbone, --temporal_kernel_sizes) are apart.
FLAG_SETTINGS = {
    'bn_epsilon': 'norm_epsilon',
    'bn_momentum': 'norm_momentum',
    'head_bn_epsilon': 'hidden_norm_epsilon',
    'head_bn_momentum': 'hidden_norm_momentum',
    'stem_conv_temporal_stride': 'stem_conv_temporal_stride',
    'stem_pool_temporal_stride': 'stem_pool_temporal_stride',
}


def release_in(names: Sequence[str]) -> Optional[str]:
  """The released checkpoint whose name one of `names` (file or folder names, e.g.
  'r3d_1x_k400_800ep.tar.gz', 'r3d_1x_k600_800ep_backbone-1') starts with, or None."""
  for name in names:
    for release in sorted(RELEASES, key=len, reverse=True):
      if name.startswith(release):
        return release
  return None


def experiment_config(release: str):
  """Model Garden's ExperimentConfig of `release` (a RELEASES key or OTHER): the
  exp_factory config with the released yaml's task.model overrides."""
  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory
  from official.projects.video_ssl.configs import video_ssl  # registers the experiments
  # pylint: enable=g-import-not-at-top
  del video_ssl
  entry = _ALL[release]
  config = exp_factory.get_exp_config(entry.experiment)
  config.override({'task': {'model': YAML_MODEL_OVERRIDES[entry.yaml]}}, is_strict=True)
  return config


def experiment_settings(release: str) -> Dict[str, Any]:
  """What the experiment of `release` sets for everything a checkpoint does not record
  (read off the config, not the config classes' defaults), as plain data."""
  if release not in _ALL:
    raise ValueError(f'unknown release {release!r}; known: {", ".join(RELEASES)} '
                     f'(or {OTHER})')
  config = experiment_config(release)
  model, data = config.task.model, config.task.train_data
  resnet = model.backbone.resnet_3d
  specs = resnet.block_specs
  return {
      'release': release,
      'experiment': _ALL[release].experiment,
      'yaml': _ALL[release].yaml,
      'trained': _ALL[release].trained,
      'backbone_type': model.backbone.type,
      'model_id': int(resnet.model_id),
      'stem_type': resnet.stem_type,
      'stem_conv_temporal_kernel_size': int(resnet.stem_conv_temporal_kernel_size),
      'stem_conv_temporal_stride': int(resnet.stem_conv_temporal_stride),
      'stem_pool_temporal_stride': int(resnet.stem_pool_temporal_stride),
      'temporal_kernel_sizes': [[int(k) for k in b.temporal_kernel_sizes] for b in specs],
      'temporal_strides': [int(b.temporal_strides) for b in specs],
      'use_self_gating': [bool(b.use_self_gating) for b in specs],
      'se_ratio': float(resnet.se_ratio),
      'stochastic_depth_drop_rate': float(resnet.stochastic_depth_drop_rate),
      'activation': model.norm_activation.activation,
      'norm_epsilon': float(model.norm_activation.norm_epsilon),
      'norm_momentum': float(model.norm_activation.norm_momentum),
      'use_sync_bn': bool(model.norm_activation.use_sync_bn),
      'hidden_activation': model.hidden_norm_activation.activation,
      'hidden_norm_epsilon': float(model.hidden_norm_activation.norm_epsilon),
      'hidden_norm_momentum': float(model.hidden_norm_activation.norm_momentum),
      'aggregate_endpoints': bool(model.aggregate_endpoints),
      'normalize_feature': bool(model.normalize_feature),
      'num_frames': int(data.feature_shape[0]),
      'frame_stride': int(data.temporal_stride),
      'crop_size': int(data.feature_shape[1]),
  }


def with_flags(settings: Dict[str, Any], backbone: Optional[str] = None,
               temporal_kernel_sizes: Optional[Sequence[int]] = None,
               **flags) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`settings` with the values the user gave instead (None: not given); returns the new
  settings and {flag: (given, the experiment's)} for what changed."""
  unknown = set(flags) - set(FLAG_SETTINGS)
  if unknown:
    raise ValueError(f'unknown settings {sorted(unknown)}; known: {sorted(FLAG_SETTINGS)}')
  settings, changed = dict(settings), {}
  for flag, value in flags.items():
    key = FLAG_SETTINGS[flag]
    if value is not None and value != settings[key]:
      changed[flag] = (value, settings[key])
      settings[key] = type(settings[key])(value)
  kernels = [k[0] for k in settings['temporal_kernel_sizes']]
  depth = settings['model_id']
  if backbone is not None and r3d.parse_name(backbone) != depth:
    changed['backbone'] = (backbone, f'r3d{depth}')
    depth = r3d.parse_name(backbone)
  if temporal_kernel_sizes is not None and list(temporal_kernel_sizes) != kernels:
    if len(temporal_kernel_sizes) != 4:
      raise ValueError(f'temporal_kernel_sizes={list(temporal_kernel_sizes)}: one per '
                       f'stage (res2..res5), 4 in all')
    changed['temporal_kernel_sizes'] = (list(temporal_kernel_sizes), kernels)
    kernels = [int(k) for k in temporal_kernel_sizes]
  if depth != settings['model_id'] or 'temporal_kernel_sizes' in changed:
    _, blocks = r3d.LAYOUTS[depth]
    settings.update(model_id=depth,
                    temporal_kernel_sizes=[[k] * n for k, n in zip(kernels, blocks)])
  return settings, changed


def unsupported(settings: Dict[str, Any]) -> Optional[str]:
  """The first experiment setting that changes inference and that our R3D does not have,
  in one sentence; None when there is none. (stochastic depth and use_sync_bn act in
  training only; normalize_feature is the linear evaluation's, applied by its head.)"""
  kernels = settings['temporal_kernel_sizes']
  checks = [
      (settings['backbone_type'] == 'resnet_3d',
       f'backbone type {settings["backbone_type"]!r} (not resnet_3d)'),
      (settings['stem_type'] == STEM_TYPE,
       f'stem_type {settings["stem_type"]!r} (ours is Model Garden\'s {STEM_TYPE!r})'),
      (settings['se_ratio'] == 0, f'squeeze-excitation (se_ratio {settings["se_ratio"]})'),
      (set(settings['temporal_strides']) == {TEMPORAL_STRIDES},
       f'temporal strides {settings["temporal_strides"]} in the blocks (ours: 1)'),
      (not any(settings['use_self_gating']), 'self-gating'),
      (settings['activation'] == settings['hidden_activation'] == 'relu',
       f'activation {settings["activation"]!r} / {settings["hidden_activation"]!r} '
       f'(ours: relu)'),
      (not settings['aggregate_endpoints'], 'aggregate_endpoints (features of every '
       'stage; ours: the last)'),
      (all(len(set(k)) == 1 for k in kernels),
       f'temporal kernels {kernels} changing within a stage'),
  ]
  for ok, what in checks:
    if not ok:
      return f'the experiment has {what}, which the CVRL R3D here has not'
  return None


def describe_settings(settings: Dict[str, Any]) -> List[str]:
  """The settings that change the features, in a few lines for people."""
  kernels = ','.join(str(k[0]) for k in settings['temporal_kernel_sizes'])
  return [
      f'backbone batch norm: epsilon {settings["norm_epsilon"]:g}, momentum '
      f'{settings["norm_momentum"]:g}; projection head batch norm: epsilon '
      f'{settings["hidden_norm_epsilon"]:g}, momentum {settings["hidden_norm_momentum"]:g}',
      f'R3D-{settings["model_id"]}, temporal kernels {kernels} (res2..res5), temporal '
      f'strides {",".join(map(str, settings["temporal_strides"]))}, no self-gating; stem '
      f'conv temporal kernel {settings["stem_conv_temporal_kernel_size"]} stride '
      f'{settings["stem_conv_temporal_stride"]}, stem pool temporal stride '
      f'{settings["stem_pool_temporal_stride"]}',
      f'clips: {settings["num_frames"]} frames at stride {settings["frame_stride"]}, '
      f'{settings["crop_size"]} px',
  ]


def training_clips(settings: Dict[str, Any]) -> Dict[str, Any]:
  """training.json of an import: the clips of the experiment's training data."""
  return {'num_frames': settings['num_frames'], 'frame_stride': settings['frame_stride'],
          'target_fps': None, 'crop_size': settings['crop_size']}


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


def model_config(settings: Dict[str, Any], head: Optional[Dict[str, int]] = None,
                 head_norm: Optional[Dict[str, float]] = None):
  """Model Garden's VideoSSLModel config (its `.backbone`, `.norm_activation` serve a
  backbone alone) for `model_garden_settings`; head: {'hidden_layer_num', 'hidden_dim',
  'projection_dim'}, head_norm: {'norm_momentum', 'norm_epsilon'} of its batch norms
  (required with a hidden layer: the experiment's values, never a class default)."""
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
    if head['hidden_layer_num'] and head_norm is None:
      raise ValueError('a head with hidden layers needs head_norm (its batch norm '
                       'settings from the experiment)')
    config.hidden_layer_num = head['hidden_layer_num']
    config.hidden_dim = head['hidden_dim']
    config.projection_dim = head['projection_dim']
  if head_norm:
    config.hidden_norm_activation.norm_momentum = head_norm['norm_momentum']
    config.hidden_norm_activation.norm_epsilon = head_norm['norm_epsilon']
  return config


def build_model(settings: Dict[str, Any], head: Optional[Dict[str, int]] = None,
                head_norm: Optional[Dict[str, float]] = None):
  """Model Garden's model through its own builders: the ResNet3D backbone alone, or the
  video_ssl model (backbone, pooling, MLP) when `head` is given (see model_config)."""
  # pylint: disable=g-import-not-at-top
  from official.projects.video_ssl.modeling import video_ssl_model
  from official.vision.modeling.backbones import factory
  # pylint: enable=g-import-not-at-top
  config = model_config(settings, head, head_norm)
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
