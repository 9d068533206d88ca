"""Model Garden checkpoints in and out: the paper's released weights as a cvrl_tf model dir.

import_checkpoint writes what pretraining would (backbone_io), so cvrl_export, cvrl_embed
and encoder_source='model_dir' take it unchanged:
  backbone/backbone.json, ckpt-0   the encoder in our layout (the experiment's BN settings)
  backbone/head.json, head-0       the projection head, where the checkpoint has one
  backbone/training.json           the clips of the experiment (16 x stride 2, 224)
  backbone/source.json             the source checkpoint, its layout, the settings assumed
                                   and where they came from, Model Garden's version
Steps: the settings no weight records (batch-norm epsilon and momentum, temporal strides
of the stem and its pool ...) are those of the Model Garden experiment the checkpoint
came from (interop/model_garden.py: RELEASES; found by the checkpoint's released name or
--release; flags replace single values), printed and stored; the layout is read off the
checkpoint's shapes and compared with the one asked for (one line on what differs);
Model Garden's model is built by its own builders with those settings and restored (every
object matched); the weights are copied unit by unit and both models must give the same
features on a random clip, within float32 rounding (rounding.float32_bound), before
anything is written. The dir appears complete or not at all (temp dir + rename).

export_checkpoint is the reverse: our backbone as tf.train.Checkpoint(backbone=ResNet3D),
the form video_ssl's linear eval reads (init_checkpoint_modules: backbone), with the
ResNet3D and batch-norm config to put in a Model Garden experiment beside it: PREFIX.yaml
(for Model Garden's --config_file) and PREFIX.json.
"""

import os
import tarfile
import tempfile
import uuid
from typing import Any, Dict, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf
import yaml  # a tf-models-official requirement

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.interop import checkpoint as mg_checkpoint
from cvrl_tf.interop import model_garden
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.models import r3d
from cvrl_tf.models import rounding
from cvrl_tf.runtime import precision

_CHECK_CLIPS = (1, 5, 33, 33, 3)  # Odd sizes: 'same' padding's uneven split is used.


class ModelGardenError(ValueError):
  """A checkpoint or model dir that cannot be carried over; the message says why."""


def backbone_spec(settings: Dict[str, Any]) -> Dict[str, Any]:
  """Our spec for the Model Garden R3D of `settings` (model_garden.experiment_settings):
  EncoderSpec's own defaults (an import is data, not a config), the experiment's
  architecture and batch-norm settings."""
  pool_t = settings['stem_pool_temporal_stride']
  return backbone_io.spec_dict(
      r3d.EncoderSpec(), name=f'r3d{settings["model_id"]}',
      temporal_kernel_sizes=tuple(k[0] for k in settings['temporal_kernel_sizes']),
      stem_kernel=(settings['stem_conv_temporal_kernel_size'], 7, 7),
      stem_strides=(settings['stem_conv_temporal_stride'], 2, 2),
      pool_size=(1 if pool_t == 1 else 3, 3, 3), pool_strides=(pool_t, 2, 2),
      bn_epsilon=settings['norm_epsilon'], bn_momentum=settings['norm_momentum'],
      use_sync_bn=False, output='pooled')


def _pooled(mg_backbone):
  """Model Garden's pooled features: the last endpoint, averaged like VideoSSLModel."""
  def features(clips, training=False):
    endpoints = mg_backbone(clips, training=training)
    return tf.reduce_mean(endpoints[max(endpoints)], axis=[1, 2, 3])
  return features


def _check_equal(ours, theirs, what: str, fan_ins) -> Dict[str, float]:
  """max |ours - theirs| on a random clip, relative to max |theirs|, must be within
  float32 rounding of the layers' fan-ins (rounding.float32_bound: eps * sqrt(sum of
  fan-ins) * 10): a misplaced or transposed tensor gives far more."""
  clips = tf.random.stateless_uniform(_CHECK_CLIPS, seed=[19, 1])
  expected = np.asarray(theirs(clips, training=False))
  scale = float(np.abs(expected).max())
  if scale == 0:
    raise RuntimeError(f'{what}: Model Garden\'s outputs are all zero on the check clip, '
                       f'so the copy cannot be checked')
  relative = rounding.relative_difference(np.asarray(ours(clips, training=False)), expected)
  error, bound = relative * scale, rounding.float32_bound(fan_ins)
  if not relative <= bound:
    raise RuntimeError(f'{what} differs from Model Garden\'s by {error:.3g} (outputs up '
                       f'to {scale:.3g}; float32 rounding allows {bound * scale:.3g}) after '
                       f'the copy')
  return {'max_difference': error, 'output_scale': scale, 'relative': relative,
          'relative_bound': bound}


def _unpack(path: str, workdir: str) -> str:
  """A release .tar.gz extracted into workdir; other paths unchanged."""
  if not path.endswith(('.tar.gz', '.tgz', '.tar')):
    return path
  with tarfile.open(path) as archive:
    kwargs = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
    archive.extractall(workdir, **kwargs)  # pylint: disable=unexpected-keyword-arg
  return workdir


def _absolute(path: str) -> str:
  return path if '://' in path else os.path.abspath(path)


def _prepare_target(model_dir: str, overwrite: bool) -> None:
  if not tf.io.gfile.exists(model_dir):
    return
  if not tf.io.gfile.listdir(model_dir):
    tf.io.gfile.rmtree(model_dir)
    return
  if not overwrite:
    raise FileExistsError(f'--model_dir {model_dir} already exists; pass --overwrite to '
                          f'replace an earlier import')
  if backbone_io.read_source(model_dir) is None:
    raise FileExistsError(f'--model_dir {model_dir} exists and is not an import '
                          f'(no backbone/{backbone_io.SOURCE_FILE}); refusing to replace it')


def import_checkpoint(checkpoint: str, model_dir: str, backbone: Optional[str] = None,
                      temporal_kernel_sizes: Optional[Sequence[int]] = None,
                      training: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                      progress_stream: Optional[TextIO] = None,
                      release: Optional[str] = None, **flags) -> Dict[str, Any]:
  """Writes the Model Garden checkpoint at `checkpoint` as a cvrl_tf model dir.

  Args:
    checkpoint: a ckpt prefix, a checkpoint dir, an extracted release folder or the
      release .tar.gz.
    model_dir: the model dir to write (must not exist unless `overwrite`).
    backbone, temporal_kernel_sizes: the architecture the checkpoint must have (default:
      the experiment's, CVRL's R3D-50 with 1,1,3,3); another one is refused with what
      differs.
    training: training.json values (the rest: the clips of the experiment's training
      data; imagenet: of its linear evaluation).
    overwrite: replace an earlier import in model_dir.
    progress_stream: one line per step, the settings assumed among them.
    release: the released checkpoint this is (model_garden.RELEASES: 'imagenet',
      'r3d_1x_k400_200ep', ...), whose experiment gives the settings no weight records;
      default: the released name in the checkpoint's path, else model_garden.OTHER.
    **flags: settings given instead of the experiment's (model_garden.FLAG_SETTINGS:
      bn_epsilon, bn_momentum, head_bn_epsilon, head_bn_momentum,
      stem_conv_temporal_stride, stem_pool_temporal_stride); None: the experiment's.

  Returns:
    source.json's content.
  """
  model_dir = model_dir.rstrip('/')
  _prepare_target(model_dir, overwrite)
  say = lambda text: progress_lib.say(progress_stream, f'cvrl_import: {text}')
  with tempfile.TemporaryDirectory() as workdir:
    unpacked = _unpack(checkpoint, workdir)
    prefix = mg_checkpoint.resolve(unpacked)
    # What the user can find again: the archive and the member, not the temp dir.
    member = os.path.relpath(prefix, workdir)
    name = (_absolute(prefix) if unpacked == checkpoint else
            f'{_absolute(checkpoint)}:{member}')
    settings, origin = _settings(release, flags, backbone, temporal_kernel_sizes,
                                 [checkpoint.rstrip('/'), prefix] +
                                 ([] if unpacked == checkpoint else [member]))
    spec = backbone_spec(settings)
    mg_settings = model_garden.model_garden_settings(spec)
    layout = mg_checkpoint.read_layout(prefix)
    kernels = ','.join(str(k[0]) for k in settings['temporal_kernel_sizes'])
    problem = mg_checkpoint.difference(layout, mg_settings, f'--backbone={spec["name"]} '
                                       f'--temporal_kernel_sizes={kernels}')
    if problem:
      raise ModelGardenError(f'{name} is not the architecture asked for: {problem}')
    say(f'{name}: Model Garden R3D-{mg_settings["model_id"]}'
        + (f' + projection head {layout.head}' if layout.head else '')
        + (f' + {layout.classifier}-way classifier (not imported)'
           if layout.classifier else ''))
    for line in _settings_lines(settings, origin):
      say(line)
    with precision.dtype_policy('float32'):
      mg_model, mg_backbone = _restore(layout, mg_settings, settings, name)
      say('restored into Model Garden\'s model; copying into ours')
      encoder, head, count, check = _carry_over(mg_model, mg_backbone, layout, spec,
                                                settings)
  source = {
      'format': 'Model Garden video_ssl / video classification checkpoint',
      'checkpoint': name,
      'layout': mg_checkpoint.describe(layout),
      'settings': settings,
      'settings_from': origin,
      'model_garden_resnet3d': files_lib.normalized(mg_settings),
      'values_copied': count,
      'max_feature_difference': check['max_difference'],
      'feature_check': check,
      'tf_models_official': _version(),
  }
  _write_model_dir(model_dir, encoder, spec, head,
                   {**model_garden.training_clips(settings), **(training or {})}, source)
  say(f'wrote {model_dir} ({encoder.count_params():,} encoder parameters, features equal '
      f'to Model Garden\'s within {check["relative"]:.1e} of their scale; float32 '
      f'rounding allows {check["relative_bound"]:.1e})')
  return source


def _settings(release: Optional[str], flags: Dict[str, Any], backbone, kernels,
              names: Sequence[str]):
  """The experiment's settings with the flags' values: (settings, where they came from)."""
  if release:
    how = '--release'
  else:
    release = model_garden.release_in([os.path.basename(n) for n in names] +
                                      [part for n in names[2:] for part in n.split(os.sep)])
    how = 'the checkpoint\'s name' if release else 'no released name in the path'
    release = release or model_garden.OTHER
  try:
    settings, changed = model_garden.with_flags(
        model_garden.experiment_settings(release), backbone, kernels, **flags)
  except ValueError as e:
    raise ModelGardenError(str(e)) from e
  problem = model_garden.unsupported(settings)
  if problem:
    raise ModelGardenError(f'{release}: {problem}')
  origin = {'release': release, 'release_from': how,
            'experiment': settings['experiment'],
            'yaml_overrides': f'{model_garden.EXPERIMENTS_DIR}/{settings["yaml"]} '
                              f'(task.model)',
            'flags': {flag: {'given': given, 'experiment': theirs}
                      for flag, (given, theirs) in changed.items()}}
  return settings, files_lib.normalized(origin)


def _settings_lines(settings: Dict[str, Any], origin: Dict[str, Any]):
  yield (f'settings of {origin["release"]} (from {origin["release_from"]}): Model Garden '
         f'experiment {origin["experiment"]} + {origin["yaml_overrides"]}, '
         f'tf-models-official {_version()}')
  yield f'  weights: {settings["trained"]}'
  for line in model_garden.describe_settings(settings):
    yield f'  {line}'
  for flag, values in origin['flags'].items():
    yield f'  --{flag}={values["given"]} instead of the experiment\'s {values["experiment"]}'


def _restore(layout: mg_checkpoint.Layout, mg_settings: Dict[str, Any],
             settings: Dict[str, Any], name: str):
  """Model Garden's model for `layout`, restored from it: (model, its backbone)."""
  head = layout.head or ({'hidden_layer_num': 0, 'hidden_dim': 0,
                          'projection_dim': layout.classifier} if layout.classifier else None)
  model = model_garden.build_model(mg_settings, head, _head_norm(settings))
  backbone = model.backbone if head else model
  if layout.root == 'model':
    root = tf.train.Checkpoint(model=model)
  elif layout.root == 'backbone':
    root = tf.train.Checkpoint(backbone=backbone)
  else:  # A head-less functional model around the backbone.
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(**{
        layout.root.split('/')[1]: backbone}))
  status = root.read(layout.prefix)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise ModelGardenError(f'{name} does not restore into Model Garden\'s model: '
                           f'{str(e).splitlines()[0]}') from e
  return model, backbone


def _head_norm(settings: Dict[str, Any]) -> Dict[str, float]:
  return {'norm_momentum': settings['hidden_norm_momentum'],
          'norm_epsilon': settings['hidden_norm_epsilon']}


def _carry_over(mg_model, mg_backbone, layout: mg_checkpoint.Layout, spec: Dict[str, Any],
                settings: Dict[str, Any]):
  """Our encoder (and head) with Model Garden's weights, checked on a clip: (encoder,
  head or None, number of values copied, the encoder's check)."""
  encoder = backbone_io.build_from_spec(spec)
  count = model_garden.copy_units(model_garden.model_garden_units(mg_backbone),
                                  model_garden.our_units(encoder, spec))
  encoder_fan_ins = rounding.encoder_fan_ins(encoder)
  check = _check_equal(encoder, _pooled(mg_backbone), 'the encoder', encoder_fan_ins)
  if not layout.head:
    return encoder, None, count, check
  head = heads.ProjectionHead.from_spec(_head_spec(layout.head, settings),
                                        name='projection_head')
  head.build(tf.TensorShape([None, int(encoder.output_shape[-1])]))
  model_garden.copy_head(mg_model, head)
  _check_equal(lambda clips, training: head(encoder(clips, training=training),
                                             training=training),
               lambda clips, training: mg_model({'image': clips}, training=training),
               'the projection head',
               encoder_fan_ins + rounding.fan_ins(model_garden.head_layers(mg_model)))
  return encoder, head, count, check


def _head_spec(head_layout: Dict[str, int], settings: Dict[str, Any]) -> Dict[str, Any]:
  """Our ProjectionHead for video_ssl's MLP, with the experiment's BN settings."""
  return heads.ProjectionHead(
      num_hidden_layers=head_layout['hidden_layer_num'], hidden_dim=head_layout['hidden_dim'],
      output_dim=head_layout['projection_dim'], use_sync_bn=False,
      bn_momentum=settings['hidden_norm_momentum'],
      bn_epsilon=settings['hidden_norm_epsilon']).spec()


def _version() -> Optional[str]:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('tf-models-official')
  except Exception:  # pylint: disable=broad-except
    return None


def _write_model_dir(model_dir, encoder, spec, head, training, source) -> None:
  tmp = f'{model_dir}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    backbone_io.save_run_specs(tmp, head.spec() if head is not None else None, training)
    if head is not None:
      backbone_io.save_head(head, tmp, 0)
    files_lib.write_json(os.path.join(tmp, backbone_io.BACKBONE_SUBDIR,
                                      backbone_io.SOURCE_FILE), source)
    # The spec last but one, the checkpoint last: load_backbone trusts a dir only once
    # both exist, and the rename below makes the whole dir visible at once anyway.
    backbone_io.save_backbone(encoder, spec, tmp, 0)
    files_lib.replace_dir(tmp, model_dir)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)


# --------------------------------------------------------------------------- reverse
def export_checkpoint(model_dir: str, prefix: str,
                      progress_stream: Optional[TextIO] = None) -> str:
  """Writes the backbone of `model_dir` as a Model Garden checkpoint at `prefix`, plus
  PREFIX.yaml (the experiment overrides it needs, for Model Garden's --config_file) and
  PREFIX.json (the same and where it came from); prints the settings a Model Garden
  experiment must use. Returns the checkpoint path."""
  spec = backbone_io.read_spec(model_dir)
  try:
    settings = model_garden.model_garden_settings(spec)
  except ValueError as e:
    raise ModelGardenError(f'the backbone in {model_dir} has no Model Garden form: {e}') from e
  with precision.dtype_policy('float32'):
    encoder = backbone_io.load_backbone(model_dir, output='pooled', use_sync_bn=False)
    mg_backbone = model_garden.build_model(settings)
    model_garden.copy_units(model_garden.our_units(encoder, spec),
                            model_garden.model_garden_units(mg_backbone))
    check = _check_equal(_pooled(mg_backbone), encoder, 'Model Garden\'s backbone',
                         rounding.encoder_fan_ins(encoder))
  if tf.io.gfile.exists(prefix + '.index'):
    raise FileExistsError(f'--to_model_garden {prefix}: {prefix}.index already exists')
  parent = os.path.dirname(prefix)
  if parent:
    tf.io.gfile.makedirs(parent)
  overrides = experiment_overrides(settings, _absolute(prefix))
  files_lib.atomic_write(prefix + '.yaml', (
      f'# Model Garden experiment overrides for the backbone checkpoint {prefix}\n'
      f'# (cvrl_import --to_model_garden from {_absolute(model_dir)}). E.g.:\n'
      f'#   python -m official.projects.video_ssl.train --mode=train_and_eval \\\n'
      f'#     --experiment=video_ssl_linear_eval_kinetics600 \\\n'
      f'#     --config_file=cvrl_linear_eval_k600.yaml \\\n'
      f'#     --config_file={os.path.basename(prefix)}.yaml --model_dir=...\n'
      f'# norm_activation: the batch-norm settings this backbone was trained with.\n'
      + yaml.safe_dump(overrides, sort_keys=False)))
  config = model_garden.model_config(settings)
  files_lib.write_json(prefix + '.json', {
      'init_checkpoint': _absolute(prefix), 'init_checkpoint_modules': 'backbone',
      'backbone': files_lib.normalized(config.backbone.as_dict()),
      'norm_activation': config.norm_activation.as_dict(),
      'experiment_overrides': overrides,
      'feature_check': check,
      'source_model_dir': _absolute(model_dir)})
  # Checkpoint.write writes the index last: a killed run leaves no readable checkpoint.
  path = tf.train.Checkpoint(backbone=mg_backbone).write(prefix)
  say = lambda text: progress_lib.say(progress_stream, f'cvrl_import: {text}')
  say(f'wrote {path} (Model Garden ResNet3D-{settings["model_id"]}, features equal within '
      f'{check["relative"]:.1e} of their scale), {prefix}.yaml and {prefix}.json')
  for line in _model_garden_instructions(settings, prefix):
    say(line)
  return path


def experiment_overrides(settings: Dict[str, Any], prefix: str) -> Dict[str, Any]:
  """The `task` overrides of a Model Garden experiment that loads the backbone at
  `prefix` as it was trained (model_garden_settings of its spec)."""
  config = model_garden.model_config(settings)
  norm = config.norm_activation
  return {'task': {
      'init_checkpoint': prefix, 'init_checkpoint_modules': 'backbone',
      'model': {'backbone': files_lib.normalized(config.backbone.as_dict()),
                'norm_activation': {'norm_epsilon': float(norm.norm_epsilon),
                                    'norm_momentum': float(norm.norm_momentum),
                                    'activation': norm.activation}}}}


def _model_garden_instructions(settings: Dict[str, Any], prefix: str):
  video_ssl = model_garden.experiment_settings(model_garden.OTHER)
  same = (settings['norm_epsilon'], settings['norm_momentum']) == (
      video_ssl['norm_epsilon'], video_ssl['norm_momentum'])
  kernels = ','.join(str(k[0]) for k in settings['temporal_kernel_sizes'])
  yield ('in the Model Garden experiment (e.g. --experiment=video_ssl_linear_eval_kinetics600 '
         f'--config_file=cvrl_linear_eval_k600.yaml --config_file={prefix}.yaml), use:')
  yield (f'  task.model.norm_activation: norm_epsilon {settings["norm_epsilon"]:g}, '
         f'norm_momentum {settings["norm_momentum"]:g} ('
         + ('as video_ssl\'s experiments have them' if same else
            f'video_ssl\'s experiments have {video_ssl["norm_epsilon"]:g} / '
            f'{video_ssl["norm_momentum"]:g}: set these') + ')')
  yield (f'  task.model.backbone.resnet_3d: model_id {settings["model_id"]}, temporal '
         f'kernels {kernels} per stage (block_specs), no self-gating, stem conv temporal '
         f'kernel {settings["stem_conv_temporal_kernel_size"]} stride '
         f'{settings["stem_conv_temporal_stride"]}, stem pool temporal stride '
         f'{settings["stem_pool_temporal_stride"]}')
  yield f'  task.init_checkpoint: {prefix}, task.init_checkpoint_modules: backbone'
