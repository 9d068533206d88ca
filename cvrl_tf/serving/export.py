"""Exports a pretrained encoder as a reusable TF Hub SavedModel (`hub.KerasLayer`).

TF Hub "reusable SavedModel" conventions, so `hub.KerasLayer(path)` (frozen) and
`hub.KerasLayer(path, trainable=True)` (fine-tuning) both work:
  __call__(clips, training=False)  float32 [B, T, H, W, 3] in [0, 1] -> float32 [B, D];
                                   traced for training=False (BN moving statistics) and
                                   True (batch statistics, moving statistics updated).
  variables, trainable_variables   all encoder variables / those fine-tuning changes.
  regularization_losses            [] on purpose: CVRL's weight decay is applied by the
                                   train step (weight_decay.py), not by regularizers.
  signatures['serving_default']    clips -> {'embedding': [B, D]} (TF Serving etc.).
  signatures['projection']         optional: clips -> {'embedding', 'projection'}.
T, H, W are dynamic. The export always computes in float32, also for a `mixed_bfloat16`
model: the encoder is rebuilt under the float32 policy and its (float32) weights copied.
Beside the model: `assets/cvrl_metadata.json` (input convention, training frames /
stride / crop from the run's backbone/training.json, backbone spec, the run's gin text for
reference) and a model card
`README.md`; TF Hub ignores both. Atomic: written to `<export_dir>.tmp-XXXXXXXX`,
reloaded and checked, then renamed into place.
"""

import datetime
import json
import os
import uuid
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.runtime import config
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

METADATA_FILE = 'cvrl_metadata.json'
MODEL_CARD = 'README.md'
PROJECTION_SIGNATURE = 'projection'
FORMAT_VERSION = 1
TRAINING_KEYS = backbone_io.TRAINING_KEYS
INPUT_CONVENTION = {
    'dtype': 'float32',
    'layout': '[B, T, H, W, 3]',
    'range': [0.0, 1.0],
    'channels': 'RGB',
    'dynamic_dims': ['B', 'T', 'H', 'W'],
}
# The export is the pooled representation; sync BN would put collectives in the graph.
_EXPORT_OVERRIDES = dict(output='pooled', use_sync_bn=False, kernel_gradient='auto')


# --------------------------------------------------------------------------- metadata
def read_gin_text(model_dir: str) -> Optional[str]:
  path = os.path.join(model_dir, config.OPERATIVE_CONFIG)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def build_metadata(spec: Optional[Dict[str, Any]] = None,
                   training: Optional[Dict[str, Any]] = None,
                   gin_text: Optional[str] = None, **extra) -> Dict[str, Any]:
  """The metadata of an export: what a user needs to feed it the clips it was trained on.

  spec: the backbone spec; training: backbone_io.read_training(model_dir) (frames,
  stride, fps, crop); gin_text: the run's operative config, kept for reference only.
  """
  spec = dict(spec or {})
  training = dict(training or {})
  metadata = {
      'format_version': FORMAT_VERSION,
      'model': 'CVRL video encoder (Qian et al., CVPR 2021)',
      'architecture': spec.get('name'),
      'width_multiplier': spec.get('width_multiplier'),
      'backbone_spec': spec or None,
      'input': dict(INPUT_CONVENTION),
      'training': {k: training.get(k) for k in TRAINING_KEYS},
      'gin_config': gin_text,
  }
  metadata.update(extra)
  return metadata


def read_metadata(export_dir: str) -> Optional[Dict[str, Any]]:
  """The export's metadata, or None for SavedModels from elsewhere."""
  return files_lib.read_json(os.path.join(export_dir, 'assets', METADATA_FILE))


_CARD = """# CVRL video encoder: {architecture}, width x{width}

Self-supervised video encoder (CVRL, Qian et al., CVPR 2021), a TF Hub reusable SavedModel
written by `cvrl_export`.

Input: float32 clips [batch, frames, height, width, 3], RGB in [0, 1] (uint8 / 255, no
mean/std normalization); frames, height and width are free. Trained on {num_frames}
frames, stride {frame_stride} ({stride_unit}), {crop_size} px crops.

Output: `hub.KerasLayer` / `__call__` -> float32 [batch, {dim}] pooled embedding; signature
`serving_default` -> {{"embedding": [batch, {dim}]}}.{head}

```python
import tensorflow_hub as hub
import tf_keras
encoder = hub.KerasLayer(EXPORT_DIR)                  # frozen, BN in inference mode
embeddings = encoder(clips)                           # [B, T, H, W, 3] -> [B, {dim}]
model = tf_keras.Sequential([                         # fine-tuning
    tf_keras.Input([None, None, None, 3]),
    hub.KerasLayer(EXPORT_DIR, trainable=True), tf_keras.layers.Dense(num_classes)])
```
Whole videos: `cvrl_embed --input=FOLDER --output=PREFIX --hub_model=EXPORT_DIR`.
`regularization_losses` is empty (CVRL applies weight decay in its train step: add your
own when fine-tuning). `assets/{metadata_file}`: architecture, training settings, gin.
"""


def _model_card(metadata: Dict[str, Any]) -> str:
  training = {k: 'unknown' if v is None else v
              for k, v in (metadata.get('training') or {}).items()}
  fps = training.pop('target_fps', 'unknown')
  stride_unit = 'stored frames' if fps == 'unknown' else f'frames at {fps} fps'
  head = metadata.get('projection_dim')
  return _CARD.format(
      architecture=metadata.get('architecture'), width=metadata.get('width_multiplier'),
      dim=metadata.get('embedding_dim'), metadata_file=METADATA_FILE,
      head=(f'\nSignature `{PROJECTION_SIGNATURE}` -> {{"embedding", "projection"}}: the '
            f'pretraining projection head ({head}-d, not normalized).' if head else ''),
      stride_unit=stride_unit,
      **{k: training.get(k, 'unknown') for k in TRAINING_KEYS if k != 'target_fps'})


# --------------------------------------------------------------------------- float32
def _computes_float32(model: tf_keras.layers.Layer) -> bool:
  layers = model.submodules if hasattr(model, 'submodules') else ()
  return all(getattr(l, 'compute_dtype', 'float32') in ('float32', None)
             for l in (model, *layers) if isinstance(l, tf_keras.layers.Layer))


def float32_encoder(encoder: tf_keras.Model,
                    spec: Optional[Dict[str, Any]] = None) -> tf_keras.Model:
  """The same encoder computing in float32 (the encoder itself when it already does).

  Mixed-precision variables are float32, so copying them loses nothing. With a backbone
  spec the encoder is rebuilt from it (pooled output, plain BN); otherwise from its
  functional config with every layer's dtype policy replaced by float32.
  """
  if _computes_float32(encoder):
    return encoder
  with precision.dtype_policy('float32'):
    if spec:
      rebuilt = backbone_io.build_from_spec(spec, **_EXPORT_OVERRIDES)
    else:
      model_config = encoder.get_config()
      for layer in model_config['layers']:
        layer['config']['dtype'] = 'float32'
      rebuilt = tf_keras.Model.from_config(model_config)
  rebuilt.set_weights(encoder.get_weights())
  return rebuilt


def float32_head(head: tf_keras.layers.Layer, input_dim: int) -> tf_keras.layers.Layer:
  """The projection head computing in float32, with the same weights."""
  if not head.built:
    head.build(tf.TensorShape([None, input_dim]))
  if _computes_float32(head):
    return head
  head_config = head.get_config()
  head_config['dtype'] = 'float32'
  rebuilt = type(head).from_config(head_config)
  rebuilt.build(tf.TensorShape([None, input_dim]))
  rebuilt.set_weights(head.get_weights())
  return rebuilt


def load_projection_head(model_dir: str, input_dim: int) -> heads.ProjectionHead:
  """Restores the projection head of the pretraining run in `model_dir`.

  A pretraining run keeps the head's weights only in `checkpoints/`
  (a `tf.train.Checkpoint(model=pretrainer, ...)` whose pretrainer has a
  `projection_head` attribute), an import (cvrl_import) in backbone/head-N in the same
  layout; the architecture from backbone/head.json.
  """
  prefix = (backbone_io.latest_head(model_dir) or
            tf.train.latest_checkpoint(os.path.join(model_dir, train_loop.CHECKPOINT_SUBDIR)))
  if prefix is None:
    raise errors.MissingInput(
        f'--with_projection_head needs the training checkpoint in '
        f'{os.path.join(model_dir, train_loop.CHECKPOINT_SUBDIR)}, and there is none.')
  spec = backbone_io.read_head_spec(model_dir)
  if spec is None:
    raise errors.MissingInput(
        f'--with_projection_head needs {model_dir}/{backbone_io.BACKBONE_SUBDIR}/'
        f'{backbone_io.HEAD_SPEC_FILE}, which runs pretrained before it existed do not '
        f'have; export this run without --with_projection_head.')
  with precision.dtype_policy('float32'):
    head = heads.ProjectionHead.from_spec(spec, use_sync_bn=False, name='projection_head')
  head.build(tf.TensorShape([None, input_dim]))
  status = backbone_io.checkpoint_head_root(head).read(prefix)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise errors.UserError(f'the projection head in {prefix} does not match '
                     f'{backbone_io.HEAD_SPEC_FILE}: {e}') from e
  return head


# --------------------------------------------------------------------------- saving
def _hub_object(encoder: tf_keras.Model, head: Optional[tf_keras.layers.Layer]):
  """The root object of the SavedModel and its signatures.

  The Keras models are only captured by the functions, not attached to the root: only
  their variables are tracked, so saving does not trace Keras' own per-layer functions
  (minutes for R3D-50) and loading needs no Keras.
  """
  clip_spec = tf.TensorSpec([None, None, None, None, 3], tf.float32, name='clips')
  root = tf.train.Checkpoint()

  @tf.function
  def call(clips, training=False):
    return encoder(clips, training=training)

  inference = call.get_concrete_function(clip_spec, training=False)
  call.get_concrete_function(clip_spec, training=True)
  # The signatures call the traced inference graph instead of tracing the encoder again.
  serve = tf.function(lambda clips: {'embedding': inference(clips)},
                      input_signature=[clip_spec])
  root.__call__ = call
  root.serve = serve
  variables = list(encoder.variables)
  trainable = list(encoder.trainable_variables)
  signatures = {'serving_default': serve}
  if head is not None:
    def project(clips):
      embedding = inference(clips)
      return {'embedding': embedding, 'projection': head(embedding, training=False)}
    root.project = tf.function(project, input_signature=[clip_spec])
    root.projection_variables = list(head.variables)  # Tracked; not fine-tuned.
    signatures[PROJECTION_SIGNATURE] = root.project
  root.variables = variables
  root.trainable_variables = trainable
  root.regularization_losses = []
  return root, signatures


def _verify(path: str, encoder: tf_keras.Model, num_frames: int) -> None:
  """Reloads the export and checks it against the in-memory encoder on a random clip."""
  clips = tf.random.stateless_uniform([2, num_frames, 64, 64, 3], seed=[1, 2])
  expected = encoder(clips, training=False).numpy()
  loaded = tf.saved_model.load(path)
  for name, got in (('__call__', loaded(clips, training=False)),
                    ('serving_default',
                     loaded.signatures['serving_default'](clips=clips)['embedding'])):
    error = np.abs(got.numpy() - expected).max()
    if not error <= 1e-4 * max(1.0, np.abs(expected).max()):
      raise RuntimeError(f'export check failed: {name} differs from the encoder by {error}')


def _looks_like_export(path: str) -> bool:
  return tf.io.gfile.isdir(path) and (
      not tf.io.gfile.listdir(path) or
      tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')))


def export_encoder(encoder: tf_keras.Model,
                   export_dir: str,
                   metadata: Optional[Dict[str, Any]] = None,
                   projection_head: Optional[tf_keras.layers.Layer] = None,
                   overwrite: bool = False,
                   verify: bool = True) -> str:
  """Writes `encoder` (and optionally its projection head) as a TF Hub SavedModel.

  Args:
    encoder: pooled-output encoder, [B, T, H, W, 3] -> [B, D]; any dtype policy.
    export_dir: final location; must not exist unless `overwrite`.
    metadata: merged into `build_metadata()` defaults; a 'backbone_spec' entry is used
      to rebuild a mixed-precision encoder in float32.
    projection_head: adds the 'projection' signature.
    overwrite: replace an existing export (only a SavedModel or an empty dir).
    verify: reload the written export and compare it with the encoder before renaming.

  Returns:
    export_dir.
  """
  export_dir = export_dir.rstrip('/')
  if tf.io.gfile.exists(export_dir):
    if not overwrite:
      raise errors.OutputExists(f'{export_dir} already exists; pass --overwrite to replace it.')
    if not _looks_like_export(export_dir):
      raise errors.OutputExists(f'{export_dir} exists and is not a SavedModel; refusing to '
                            f'replace it even with --overwrite.')
  metadata = {**build_metadata(), **(metadata or {})}
  metadata['architecture'] = metadata['architecture'] or encoder.name
  encoder = float32_encoder(encoder, metadata.get('backbone_spec'))
  embedding_dim = int(encoder.output_shape[-1])
  if projection_head is not None:
    projection_head = float32_head(projection_head, embedding_dim)
    metadata['projection_dim'] = int(
        projection_head.compute_output_shape([None, embedding_dim])[-1])
  metadata.update(
      embedding_dim=embedding_dim,
      signatures=['serving_default'] + ([PROJECTION_SIGNATURE] if projection_head else []),
      regularization_losses='none: weight decay is applied by the CVRL train step',
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      tensorflow_version=tf.__version__)
  tmp = f'{export_dir}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    root, signatures = _hub_object(encoder, projection_head)
    tf.saved_model.save(root, tmp, signatures=signatures)
    tf.io.gfile.makedirs(os.path.join(tmp, 'assets'))
    with tf.io.gfile.GFile(os.path.join(tmp, 'assets', METADATA_FILE), 'w') as f:
      json.dump(metadata, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(tmp, MODEL_CARD), 'w') as f:
      f.write(_model_card(metadata))
    if verify:
      _verify(tmp, encoder, (metadata.get('training') or {}).get('num_frames') or 8)
    files_lib.replace_dir(tmp, export_dir)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
  return export_dir


def export_model_dir(model_dir: str, export_dir: str, with_projection_head: bool = False,
                     overwrite: bool = False, verify: bool = True) -> str:
  """Exports the backbone (and head) of a finished pretraining run in `model_dir`."""
  if not tf.io.gfile.isdir(model_dir):
    raise errors.MissingInput(f'--model_dir {model_dir!r} does not exist: give the '
                              f'model_dir of a pretraining run.')
  spec = backbone_io.read_spec(model_dir)
  with precision.dtype_policy('float32'):
    encoder = backbone_io.load_backbone(model_dir, **_EXPORT_OVERRIDES)
  head = None
  if with_projection_head:
    head = load_projection_head(model_dir, int(encoder.output_shape[-1]))
  metadata = build_metadata(spec, backbone_io.read_training(model_dir),
                            read_gin_text(model_dir),
                            source_model_dir=os.path.abspath(model_dir),
                            backbone_checkpoint=backbone_io.latest_backbone(model_dir),
                            imported_from=backbone_io.read_source(model_dir))
  return export_encoder(encoder, export_dir, metadata, head, overwrite, verify)
