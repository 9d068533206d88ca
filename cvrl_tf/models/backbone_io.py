"""Backbone-only checkpoints: what pretraining hands to every downstream protocol.

A pretraining model dir holds `backbone/` with
  backbone.json   the full `build_backbone` arguments (architecture, widths, strides ...)
  ckpt-N.*        `tf.train.Checkpoint(encoder=...)` of the encoder weights only
  head.json       the projection head's constructor arguments (heads.ProjectionHead.spec);
                  its weights stay in the run's checkpoints/ (export --with_projection_head)
  training.json   the clips it was trained on: num_frames, frame_stride, target_fps,
                  crop_size (what export and embed tell a user to feed it)
  head-N.*        only in imported dirs (cvrl_import): the projection head's weights, in
                  the layout of a pretraining checkpoint (model/projection_head)
  source.json     only in imported dirs: the checkpoint it came from and how
so an encoder can be rebuilt and restored without the pretraining gin config, and a
mismatch between the architecture asked for and the one stored is reported, not silent.
"""

import dataclasses
import os
from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.models import r3d

BACKBONE_SUBDIR = 'backbone'
SPEC_FILE = 'backbone.json'
HEAD_SPEC_FILE = 'head.json'
TRAINING_FILE = 'training.json'
SOURCE_FILE = 'source.json'
HEAD_PREFIX = 'head'
TRAINING_KEYS = ('num_frames', 'frame_stride', 'target_fps', 'crop_size')


def spec_dict(encoder: r3d.EncoderSpec = r3d.EncoderSpec(), **overrides) -> Dict[str, Any]:
  """The full `build_backbone` arguments for `encoder` (its fields, then the defaults
  of input_shape / output / model_name, then overrides) as backbone.json stores them,
  so a stored spec compares equal to this."""
  defaults = {'input_shape': (None, None, None, 3), 'output': 'pooled', 'model_name': None}
  return files_lib.normalized({**dataclasses.asdict(encoder), **defaults, **overrides})


def encoder_spec(spec: Dict[str, Any]) -> r3d.EncoderSpec:
  """The EncoderSpec part of a stored spec (backbone.json)."""
  names = {f.name for f in dataclasses.fields(r3d.EncoderSpec)}
  return r3d.EncoderSpec(**{k: v for k, v in spec.items() if k in names})


def build_from_spec(spec: Dict[str, Any], **overrides) -> tf_keras.Model:
  """Builds the encoder a spec describes; `overrides` (e.g. output, use_sync_bn) win."""
  kwargs = {**spec, **overrides}
  extras = {k: kwargs.pop(k) for k in ('input_shape', 'output', 'model_name') if k in kwargs}
  return r3d.build_backbone(encoder_spec(kwargs), **extras)


def save_backbone(encoder: tf_keras.Model, spec: Dict[str, Any], model_dir: str,
                  step: int) -> str:
  """Writes backbone.json and ckpt-<step> under model_dir/backbone; returns the prefix."""
  out = os.path.join(model_dir, BACKBONE_SUBDIR)
  tf.io.gfile.makedirs(out)
  files_lib.write_json(os.path.join(out, SPEC_FILE), spec)
  # Checkpoint.write saves data files before the index: a partial write is never read
  # because latest_backbone() only trusts prefixes whose .index exists.
  return tf.train.Checkpoint(encoder=encoder).write(os.path.join(out, f'ckpt-{step}'))


def latest_backbone(model_dir: str) -> Optional[str]:
  return _latest(model_dir, 'ckpt')


def _latest(model_dir: str, name: str) -> Optional[str]:
  out = os.path.join(model_dir, BACKBONE_SUBDIR)
  indices = tf.io.gfile.glob(os.path.join(out, f'{name}-*.index'))
  if not indices:
    return None
  best = max(indices, key=lambda p: int(p[len(os.path.join(out, f'{name}-')):-len('.index')]))
  return best[:-len('.index')]


def save_head(head: tf_keras.layers.Layer, model_dir: str, step: int) -> str:
  """Writes the projection head's weights as backbone/head-<step>, readable like the
  head inside a pretraining checkpoint (`checkpoint_head_root`)."""
  return checkpoint_head_root(head).write(
      os.path.join(model_dir, BACKBONE_SUBDIR, f'{HEAD_PREFIX}-{step}'))


def checkpoint_head_root(head: tf_keras.layers.Layer) -> tf.train.Checkpoint:
  """Where a pretraining checkpoint keeps the head: model (the pretrainer) / projection_head."""
  return tf.train.Checkpoint(model=tf.train.Checkpoint(projection_head=head))


def latest_head(model_dir: str) -> Optional[str]:
  """The head checkpoint an import wrote, or None (pretraining runs keep it in checkpoints/)."""
  return _latest(model_dir, HEAD_PREFIX)


def read_spec(model_dir: str) -> Dict[str, Any]:
  spec = _read_json(model_dir, SPEC_FILE)
  if spec is None:
    raise errors.MissingInput(
        f'no backbone found in {model_dir!r}: '
        f'{os.path.join(model_dir, BACKBONE_SUBDIR, SPEC_FILE)} is missing. Point to the '
        f'model_dir of a finished pretraining run (it writes {BACKBONE_SUBDIR}/ at the end).')
  return spec


def load_backbone(model_dir: str, **overrides) -> tf_keras.Model:
  """Rebuilds the stored architecture and restores its weights (every one must match)."""
  spec = read_spec(model_dir)
  prefix = latest_backbone(model_dir)
  if prefix is None:
    raise errors.MissingInput(
        f'{model_dir}/{BACKBONE_SUBDIR} has {SPEC_FILE} but no checkpoint (ckpt-N.index); '
        f'the pretraining run did not finish. Re-run it to completion.')
  encoder = build_from_spec(spec, **overrides)
  try:
    tf.train.Checkpoint(encoder=encoder).read(prefix).assert_consumed()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    raise errors.UserError(
        f'backbone checkpoint {prefix} does not match the architecture in {SPEC_FILE} '
        f'({spec.get("name")}, width x{spec.get("width_multiplier")}): {e}') from e
  return encoder


def save_run_specs(model_dir: str, head_spec: Optional[Dict[str, Any]],
                   training: Dict[str, Any]) -> None:
  """Writes head.json (when there is a head) and training.json under model_dir/backbone."""
  out = os.path.join(model_dir, BACKBONE_SUBDIR)
  tf.io.gfile.makedirs(out)
  unknown = set(training) - set(TRAINING_KEYS)
  if unknown:
    raise ValueError(f'unknown training settings {sorted(unknown)}; known: {TRAINING_KEYS}')
  files_lib.write_json(os.path.join(out, TRAINING_FILE),
                       {k: training.get(k) for k in TRAINING_KEYS})
  if head_spec is not None:
    files_lib.write_json(os.path.join(out, HEAD_SPEC_FILE), head_spec)


def _read_json(model_dir: str, name: str) -> Optional[Dict[str, Any]]:
  return files_lib.read_json(os.path.join(model_dir, BACKBONE_SUBDIR, name))


def read_head_spec(model_dir: str) -> Optional[Dict[str, Any]]:
  """The projection head's spec, or None (a run from before head.json existed)."""
  return _read_json(model_dir, HEAD_SPEC_FILE)


def read_source(model_dir: str) -> Optional[Dict[str, Any]]:
  """Where an imported backbone came from (source.json), or None for our own runs."""
  return _read_json(model_dir, SOURCE_FILE)


def read_training(model_dir: str) -> Dict[str, Any]:
  """{num_frames, frame_stride, target_fps, crop_size}; None for what a run did not record."""
  stored = _read_json(model_dir, TRAINING_FILE) or {}
  return {k: stored.get(k) for k in TRAINING_KEYS}
