"""Model Garden checkpoints in and out: the paper's released weights as a cvrl_tf model dir.

import_checkpoint writes what pretraining would (backbone_io), so cvrl_export, cvrl_embed
and encoder_source='model_dir' take it unchanged:
  backbone/backbone.json, ckpt-0   the encoder in our layout (BN settings of Model Garden)
  backbone/head.json, head-0       the projection head, where the checkpoint has one
  backbone/training.json           the clips of the released pretraining (16 x stride 2, 224)
  backbone/source.json             the source checkpoint, its layout, Model Garden's version
Steps: the layout is read off the checkpoint's shapes and compared with the one asked
for (one line on what differs); Model Garden's model is built by its own builders and
restored (every object matched); the weights are copied unit by unit
(models/model_garden.py) and both models must give the same features on a random clip
before anything is written. The dir appears complete or not at all (temp dir + rename).

export_checkpoint is the reverse: our backbone as tf.train.Checkpoint(backbone=ResNet3D),
the form video_ssl's linear eval reads (init_checkpoint_modules: backbone), with the
ResNet3D and BN config to put in a Model Garden experiment beside it.
"""

import inspect
import os
import tarfile
import tempfile
import uuid
from typing import Any, Dict, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.models import mg_checkpoint
from cvrl_tf.models import model_garden
from cvrl_tf.models import r3d
from cvrl_tf.runtime import precision

CVRL_TEMPORAL_KERNELS = (1, 1, 3, 3)
_CHECK_CLIPS = (1, 5, 33, 33, 3)  # Odd sizes: 'same' padding's uneven split is used.


class ModelGardenError(ValueError):
  """A checkpoint or model dir that cannot be carried over; the message says why."""


def backbone_spec(backbone: str = 'r3d50',
                  temporal_kernel_sizes: Sequence[int] = CVRL_TEMPORAL_KERNELS,
                  **overrides) -> Dict[str, Any]:
  """Our spec for a Model Garden R3D: build_backbone's own defaults (the CVRL layout, not
  gin's bindings: an import is data), Model Garden's BN settings, then `overrides`."""
  target = getattr(r3d.build_backbone, '__wrapped__', r3d.build_backbone)
  spec = {k: p.default for k, p in inspect.signature(target).parameters.items()
          if p.default is not inspect.Parameter.empty}
  spec.update(name=backbone, temporal_kernel_sizes=tuple(temporal_kernel_sizes),
              use_sync_bn=False, output='pooled', **model_garden.norm_defaults()['backbone'])
  spec.update(overrides)
  return files_lib.normalized(spec)


def _max_difference(ours, theirs, clips) -> float:
  return float(np.abs(np.asarray(ours(clips, training=False)) -
                      np.asarray(theirs(clips, training=False))).max())


def _pooled(mg_backbone):
  """Model Garden's pooled features: the last endpoint, averaged like VideoSSLModel."""
  def features(clips, training=False):
    endpoints = mg_backbone(clips, training=training)
    return tf.reduce_mean(endpoints[max(endpoints)], axis=[1, 2, 3])
  return features


def _check_equal(ours, theirs, what: str) -> float:
  clips = tf.random.stateless_uniform(_CHECK_CLIPS, seed=[19, 1])
  error = _max_difference(ours, theirs, clips)
  scale = float(np.abs(np.asarray(theirs(clips, training=False))).max())
  if not error <= 1e-4 * max(1.0, scale):
    raise RuntimeError(f'{what} differs from Model Garden\'s by {error} after the copy')
  return error


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


def import_checkpoint(checkpoint: str, model_dir: str, backbone: str = 'r3d50',
                      temporal_kernel_sizes: Sequence[int] = CVRL_TEMPORAL_KERNELS,
                      training: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                      progress_stream: Optional[TextIO] = None) -> Dict[str, Any]:
  """Writes the Model Garden checkpoint at `checkpoint` as a cvrl_tf model dir.

  Args:
    checkpoint: a ckpt prefix, a checkpoint dir, an extracted release folder or the
      release .tar.gz.
    model_dir: the model dir to write (must not exist unless `overwrite`).
    backbone, temporal_kernel_sizes: the architecture the checkpoint must have (CVRL's
      R3D-50 by default); another one is refused with what differs.
    training: training.json (default: the released pretraining's clips).
    overwrite: replace an earlier import in model_dir.
    progress_stream: one line per step.

  Returns:
    source.json's content.
  """
  model_dir = model_dir.rstrip('/')
  _prepare_target(model_dir, overwrite)
  spec = backbone_spec(backbone, temporal_kernel_sizes)
  settings = model_garden.model_garden_settings(spec)
  with tempfile.TemporaryDirectory() as workdir:
    unpacked = _unpack(checkpoint, workdir)
    prefix = mg_checkpoint.resolve(unpacked)
    # What the user can find again: the archive and the member, not the temp dir.
    name = (_absolute(prefix) if unpacked == checkpoint else
            f'{_absolute(checkpoint)}:{os.path.relpath(prefix, workdir)}')
    layout = mg_checkpoint.read_layout(prefix)
    problem = mg_checkpoint.difference(layout, settings, f'--backbone={backbone} '
                                       f'--temporal_kernel_sizes='
                                       f'{",".join(map(str, temporal_kernel_sizes))}')
    if problem:
      raise ModelGardenError(f'{name} is not the architecture asked for: {problem}')
    say = lambda text: progress_lib.say(progress_stream, f'cvrl_import: {text}')
    say(f'{name}: Model Garden R3D-{settings["model_id"]}'
        + (f' + projection head {layout.head}' if layout.head else '')
        + (f' + {layout.classifier}-way classifier (not imported)'
           if layout.classifier else ''))
    with precision.dtype_policy('float32'):
      mg_model, mg_backbone = _restore(layout, settings, name)
      say('restored into Model Garden\'s model; copying into ours')
      encoder, head, count, error = _carry_over(mg_model, mg_backbone, layout, spec)
  source = {
      'format': 'Model Garden video_ssl / video classification checkpoint',
      'checkpoint': name,
      'layout': mg_checkpoint.describe(layout),
      'model_garden_resnet3d': files_lib.normalized(settings),
      'values_copied': count,
      'max_feature_difference': error,
      'tf_models_official': _version(),
  }
  _write_model_dir(model_dir, encoder, spec, head,
                   training or model_garden.released_training(), source)
  say(f'wrote {model_dir} ({encoder.count_params():,} encoder parameters, features equal '
      f'to Model Garden\'s within {error:.1e})')
  return source


def _restore(layout: mg_checkpoint.Layout, settings: Dict[str, Any], name: str):
  """Model Garden's model for `layout`, restored from it: (model, its backbone)."""
  head = layout.head or ({'hidden_layer_num': 0, 'hidden_dim': 0,
                          'projection_dim': layout.classifier} if layout.classifier else None)
  model = model_garden.build_model(settings, head)
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


def _carry_over(mg_model, mg_backbone, layout: mg_checkpoint.Layout, spec: Dict[str, Any]):
  """Our encoder (and head) with Model Garden's weights, checked on a clip: (encoder,
  head or None, number of values copied, max feature difference)."""
  encoder = backbone_io.build_from_spec(spec)
  count = model_garden.copy_units(model_garden.model_garden_units(mg_backbone),
                                  model_garden.our_units(encoder, spec))
  error = _check_equal(encoder, _pooled(mg_backbone), 'the encoder')
  if not layout.head:
    return encoder, None, count, error
  head = heads.ProjectionHead.from_spec(_head_spec(layout.head), name='projection_head')
  head.build(tf.TensorShape([None, int(encoder.output_shape[-1])]))
  model_garden.copy_head(mg_model, head)
  _check_equal(lambda clips, training: head(encoder(clips, training=training),
                                             training=training),
               lambda clips, training: mg_model({'image': clips}, training=training),
               'the projection head')
  return encoder, head, count, error


def _head_spec(head_layout: Dict[str, int]) -> Dict[str, Any]:
  """Our ProjectionHead for video_ssl's MLP, with video_ssl's BN settings."""
  return heads.ProjectionHead(
      num_hidden_layers=head_layout['hidden_layer_num'], hidden_dim=head_layout['hidden_dim'],
      output_dim=head_layout['projection_dim'], use_sync_bn=False,
      **model_garden.norm_defaults()['head']).spec()


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
  """Writes the backbone of `model_dir` as a Model Garden checkpoint at `prefix` (plus
  PREFIX.json: the ResNet3D and BN settings it needs); returns the checkpoint path."""
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
    error = _check_equal(_pooled(mg_backbone), encoder, 'Model Garden\'s backbone')
  if tf.io.gfile.exists(prefix + '.index'):
    raise FileExistsError(f'--to_model_garden {prefix}: {prefix}.index already exists')
  parent = os.path.dirname(prefix)
  if parent:
    tf.io.gfile.makedirs(parent)
  config = model_garden.model_config(settings)
  files_lib.write_json(prefix + '.json', {
      'init_checkpoint': prefix, 'init_checkpoint_modules': 'backbone',
      'backbone': config.backbone.as_dict(),
      'norm_activation': config.norm_activation.as_dict(),
      'source_model_dir': os.path.abspath(model_dir)})
  # Checkpoint.write writes the index last: a killed run leaves no readable checkpoint.
  path = tf.train.Checkpoint(backbone=mg_backbone).write(prefix)
  progress_lib.say(progress_stream, f'cvrl_import: wrote {path} (Model Garden ResNet3D-'
                   f'{settings["model_id"]}, features equal within {error:.1e}) and '
                   f'{prefix}.json')
  return path
