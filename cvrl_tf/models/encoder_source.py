"""Where a downstream encoder comes from: a pretraining run, a SavedModel / TF Hub, or
random initialization, with errors that say what is wrong with the source.

  'model_dir'  the `backbone/` of a pretraining run (`pretrain_dir`): architecture from
               its backbone.json, weights from its latest ckpt. An EncoderSpec given as
               well must be that architecture (a config asking for R3D-50 must not
               silently evaluate an R3D-18).
  'hub'        an exported SavedModel dir or TF Hub handle (`hub_handle`), as
               hub.KerasLayer(handle, trainable=...).
  'random'     the EncoderSpec given (default: CVRL's R3D-50), randomly initialized:
               the baseline.
Every encoder maps float32 clips [B, T, H, W, 3] in [0, 1] to pooled features [B, D].
"""

import dataclasses
import os
from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.models import backbone_io
from cvrl_tf.models import r3d

ENCODER_SOURCES = ('model_dir', 'hub', 'random')


def check_architecture(architecture: Optional[r3d.EncoderSpec], spec: dict,
                       pretrain_dir: str) -> None:
  """An architecture asked for (None: none) must be the stored one."""
  if architecture is None:
    return
  asked = dataclasses.asdict(architecture)
  diff = {k: (v, spec.get(k)) for k, v in asked.items()
          if k not in r3d.NON_ARCHITECTURE and k in spec and
          files_lib.normalized(v) != files_lib.normalized(spec[k])}
  if diff:
    detail = ', '.join(f'{k}: asked {a!r} but stored {b!r}' for k, (a, b) in diff.items())
    raise errors.UserError(
        f'the encoder in {pretrain_dir}/backbone is not the architecture the config asks '
        f'for ({detail}). Remove the encoder.* settings (the stored backbone.json '
        f'defines the architecture) or point pretrain_dir to the right run.')


def hub_layer(hub_handle: Optional[str], trainable: bool) -> tf_keras.layers.Layer:
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  if not hub_handle:
    raise errors.UserError("encoder_source='hub' needs hub_handle (an exported SavedModel dir "
                     'or a TF Hub handle)')
  try:
    path = hub.resolve(hub_handle)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f'cannot resolve hub_handle {hub_handle!r}: {e}') from e
  if not tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    raise errors.MissingInput(f'hub_handle {hub_handle!r} is not a SavedModel (no '
                            f'saved_model.pb in {path}); export one with cvrl_export.')
  # dtype float32: the SavedModel takes and computes float32 clips (cvrl_export); under a
  # mixed policy the layer would otherwise cast its input to bfloat16 / float16, which no
  # signature of the SavedModel accepts.
  return hub.KerasLayer(path, trainable=trainable, name='encoder', dtype='float32')


def build_encoder(encoder_source: str, pretrain_dir: Optional[str] = None,
                  hub_handle: Optional[str] = None, trainable: bool = True,
                  use_sync_bn: bool = False,
                  architecture: Optional[r3d.EncoderSpec] = None
                  ) -> Tuple[tf_keras.layers.Layer, dict]:
  """(encoder, description): the description rebuilds it (`rebuild_encoder`).

  architecture: of a 'random' encoder (None: EncoderSpec()); with
  'model_dir' it must match the stored one, and its kernel_gradient is used."""
  if encoder_source not in ENCODER_SOURCES:
    raise errors.UserError(f'encoder_source must be one of {ENCODER_SOURCES}, got '
                     f'{encoder_source!r}')
  info = {'encoder_source': encoder_source}
  if encoder_source == 'hub':
    info['hub_handle'] = hub_handle
    return hub_layer(hub_handle, trainable), info
  # How this run computes (not what was stored): sync BN, and the kernel-gradient route.
  asked = architecture or r3d.EncoderSpec()
  overrides = dict(output='pooled', use_sync_bn=use_sync_bn,
                   kernel_gradient=asked.kernel_gradient)
  if encoder_source == 'model_dir':
    if not pretrain_dir:
      raise errors.UserError("encoder_source='model_dir' needs pretrain_dir (the model_dir of a "
                       "pretraining run); use encoder_source='random' for the baseline")
    spec = backbone_io.read_spec(pretrain_dir)
    check_architecture(architecture, spec, pretrain_dir)
    encoder = backbone_io.load_backbone(pretrain_dir, **overrides)
    info.update(pretrain_dir=pretrain_dir,
                backbone_checkpoint=backbone_io.latest_backbone(pretrain_dir))
  else:
    spec = backbone_io.spec_dict(asked, **overrides)
    encoder = backbone_io.build_from_spec(spec)
  info['backbone_spec'] = files_lib.normalized({**spec, **overrides})
  return encoder, info


def rebuild_encoder(info: dict, trainable: bool) -> tf_keras.layers.Layer:
  """The encoder `info` describes, freshly initialized (a checkpoint restores it)."""
  if info['encoder_source'] == 'hub':
    return hub_layer(info['hub_handle'], trainable)
  return backbone_io.build_from_spec(info['backbone_spec'])
