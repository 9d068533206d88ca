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
stride / fps / crop from the run's backbone/training.json, output, precision, backbone
spec, the run's gin text for reference) and a model card `README.md` written from it,
which also names TF_ENABLE_ONEDNN_OPTS=1: a process that loads the export without
cvrl_tf gets TensorFlow's default kernels, Eigen's on AVX2-only CPUs (2.3-3.4x fewer
clips/s for the demo encoder, training steps 22-32x slower, on an AMD EPYC Zen 4 with
ONEDNN_MAX_CPU_ISA=AVX2 standing in: benchmarks/README.md); TF Hub
ignores both files. Atomic: written to `<export_dir>.tmp-XXXXXXXX`, reloaded and checked,
then renamed into place.
"""

import datetime
import json
import os
import textwrap
import uuid
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras

import cvrl_tf
from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.models import rounding
from cvrl_tf.runtime import hardware
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
# The usual conv kernel gradients: a SavedModel keeps the gradient route it was traced with
# wherever it is loaded (a GPU, a TPU, another CPU), and video_layers.Conv3D's 'auto'
# route depends on the exporting machine (no GPU / TPU visible) and the traced shapes.
_EXPORT_OVERRIDES = dict(output='pooled', use_sync_bn=False, kernel_gradient='conv')


# --------------------------------------------------------------------------- metadata
def read_gin_text(model_dir: str) -> Optional[str]:
  path = os.path.join(model_dir, train_loop.OPERATIVE_CONFIG)
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


# TensorFlow's oneDNN switch: what the card tells a user who loads the export without
# cvrl_tf (which sets it itself, runtime/hardware.py). Measured: benchmarks/README.md
# "Exports loaded without cvrl_tf" (bench_export.py).
CPU_KERNELS = {
    'env': {hardware.ONEDNN_ENV: '1'},
    'when': 'before TensorFlow is imported (TensorFlow reads it once, at import)',
    'why': ("TensorFlow's Linux x86 wheels turn their oneDNN kernels on by default only "
            'on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; AVX2-only CPUs (AMD '
            'before Zen 4, Intel before Cascade Lake / Alder Lake) get Eigen kernels '
            "instead. On cvrl_tf's demo encoder Eigen gave 2.3-3.4x fewer clips/s when "
            'embedding and 22x (fine-tuning) to 32x (pretraining) slower training steps '
            "than oneDNN's AVX2 kernels, measured on an AMD EPYC Zen 4 with oneDNN capped "
            "to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) standing in for an AVX2-only CPU (cvrl_tf's "
            'benchmarks/README.md). The features are the same up to float32 rounding.'),
}
OUTPUT_POOLED = ('global average over time, height and width of the last stage (after its '
                 'ReLU: non-negative); not L2-normalized')


def _output_description(encoder: tf_keras.Model) -> Optional[str]:
  """What the export returns, from the encoder's last layer: our backbones end in a
  global average pool; for anything else the card says only the shape."""
  layers = getattr(encoder, 'layers', None) or [None]
  return (OUTPUT_POOLED if isinstance(layers[-1], tf_keras.layers.GlobalAveragePooling3D)
          else None)


def read_trained_precision(model_dir: str) -> Optional[str]:
  """The policies the pretraining run computed in (runtime/precision.record's
  run_info.json), in order, e.g. 'mixed_bfloat16'; None when the run did not say."""
  starts = (files_lib.read_json(os.path.join(model_dir, precision.RUN_INFO_FILE)) or
            {}).get('starts', [])
  policies = []
  for start in starts:
    policy = (start.get('precision') or {}).get('policy')
    if start.get('protocol') == 'pretrain' and policy and policy not in policies:
      policies.append(policy)
  return ', then '.join(policies) or None


def _value(value, unknown='unknown'):
  return unknown if value is None else value


def _para(text: str, bullet: bool = False) -> str:
  """A Markdown paragraph (or '- ' item) wrapped at 90 columns, never inside `code`."""
  parts = text.split('`')
  parts[1::2] = [p.replace(' ', '\0') for p in parts[1::2]]
  return textwrap.fill('`'.join(parts), 90, initial_indent='- ' if bullet else '',
                       subsequent_indent='  ' if bullet else '', break_long_words=False,
                       break_on_hyphens=False).replace('\0', ' ')


def _model_card(metadata: Dict[str, Any]) -> str:
  """The export's README.md, from its metadata: input, output, precision, how to load it
  and the one environment variable that makes it fast on AVX2-only CPUs."""
  training = metadata.get('training') or {}
  frames, stride = training.get('num_frames'), training.get('frame_stride')
  crop, fps = training.get('crop_size'), training.get('target_fps')
  dim = _value(metadata.get('embedding_dim'), 'D')
  env_name, env_value = next(iter(CPU_KERNELS['env'].items()))
  if fps:
    sampling = (f'every {_value(stride)} frames at {fps} fps (the run resampled each video '
                f'to {fps} fps: sample your clips at that rate, `cvrl_embed --fps={fps}`)')
  else:
    sampling = (f"every {_value(stride)} stored frames at each video's own frame rate "
                '(the run did not resample; the fps of its videos was not recorded)')
  shape = (f'[batch, {frames}, {crop}, {crop}, 3]' if frames and crop else
           '[batch, frames, height, width, 3]')
  output = (metadata.get('output') or {}).get('description')
  head = metadata.get('projection_dim')
  trained = (metadata.get('precision') or {}).get('trained')
  blocks = [
      f"# CVRL video encoder: {metadata.get('architecture')}, width "
      f"x{_value(metadata.get('width_multiplier'))}",
      _para('Self-supervised video encoder (CVRL, Qian et al., CVPR 2021), a TF Hub '
            f'reusable SavedModel written by `cvrl_export` (cvrl_tf '
            f"{metadata.get('cvrl_tf_version')}, TensorFlow "
            f"{metadata.get('tensorflow_version')}, {metadata.get('created')})."),
      '## Input\n' + '\n'.join([
          _para('`clips`: float32 `[batch, frames, height, width, 3]`, RGB in [0, 1] '
                '(uint8 / 255, no mean/std normalization). Batch, frames, height and '
                'width are free.', bullet=True),
          _para(f'Trained on clips of {_value(frames)} frames, {sampling}, '
                f'{_value(crop)} x {_value(crop)} crops: `{shape}`.' if frames else
                'The clips it was trained on were not recorded (backbone/training.json '
                'is missing: a run from before it existed, or not a CVRL run).',
                bullet=True)]),
      '## Output\n' + '\n'.join([
          _para(f'`hub.KerasLayer` / `__call__`: float32 `[batch, {dim}]`' +
                (f', the {output}. CVRL\'s protocols L2-normalize it before a linear '
                 'classifier or k-NN: do the same for cosine similarity.' if output
                 else '.'), bullet=True),
          _para(f'signature `serving_default`: clips -> {{"embedding": [batch, {dim}]}}.',
                bullet=True)] +
          ([_para(f'signature `{PROJECTION_SIGNATURE}`: clips -> {{"embedding", '
                  f'"projection"}}, the pretraining projection head ({head}-d, not '
                  'normalized).', bullet=True)] if head else [])),
      '## Precision\n' + _para(
          'Weights float32, computes float32' +
          (f' (the run trained in {trained}: its variables were float32 and are copied '
           'unchanged).' if trained and trained != 'float32' else '.')),
      f"""## Load it
```python
import os
os.environ.setdefault('{env_name}', '{env_value}')  # before TensorFlow is imported: see below
import tensorflow_hub as hub
import tf_keras

encoder = hub.KerasLayer(EXPORT_DIR)          # frozen, BN in inference mode
embeddings = encoder(clips)                   # {shape} -> [batch, {dim}]
model = tf_keras.Sequential([                 # fine-tuning
    tf_keras.Input([None, None, None, 3]),
    hub.KerasLayer(EXPORT_DIR, trainable=True), tf_keras.layers.Dense(num_classes)])
```
""" + _para('`regularization_losses` is empty (CVRL applies weight decay in its train '
            'step: add your own when fine-tuning). Whole videos: `cvrl_embed '
            '--input=FOLDER --output=PREFIX --hub_model=EXPORT_DIR`.'),
      f'## Fast on AVX2-only CPUs: `{env_name}={env_value}`\n' + _para(
          f'Set `{env_name}={env_value}` in the environment {CPU_KERNELS["when"]}: '
          f'setting it later, even before loading the model, changes nothing. '
          f'{CPU_KERNELS["why"]} For example `{env_name}={env_value} python '
          f"my_script.py`. cvrl_tf's own tools (`cvrl_embed`, `cvrl_train`) set it "
          f'themselves; `{env_name}=0` forces Eigen.'),
      _para(f'`assets/{METADATA_FILE}`: the above as JSON, with the backbone spec and the '
            "run's gin config."),
  ]
  return '\n\n'.join(blocks) + '\n'


# --------------------------------------------------------------------------- float32
def _computes_float32(model: tf_keras.layers.Layer) -> bool:
  layers = model.submodules if hasattr(model, 'submodules') else ()
  return all(getattr(l, 'compute_dtype', 'float32') in ('float32', None)
             for l in (model, *layers) if isinstance(l, tf_keras.layers.Layer))


def _usual_kernel_gradients(model: tf_keras.layers.Layer) -> bool:
  layers = model.submodules if hasattr(model, 'submodules') else ()
  return all(getattr(l, 'kernel_gradient', 'conv') == 'conv' for l in layers)


def float32_encoder(encoder: tf_keras.Model,
                    spec: Optional[Dict[str, Any]] = None) -> tf_keras.Model:
  """The same encoder computing in float32 with the usual conv kernel gradients (the
  encoder itself when it already does; see _EXPORT_OVERRIDES). So a float32 encoder built
  with kernel_gradient='auto' (the default) is rebuilt too, with the same weights.

  Mixed-precision variables are float32, so copying them loses nothing. With a backbone
  spec the encoder is rebuilt from it (pooled output, plain BN); otherwise from its
  functional config with every layer's dtype policy replaced by float32.
  """
  if _computes_float32(encoder) and _usual_kernel_gradients(encoder):
    return encoder
  with precision.dtype_policy('float32'):
    if spec:
      rebuilt = backbone_io.build_from_spec(spec, **_EXPORT_OVERRIDES)
    else:
      model_config = encoder.get_config()
      for layer in model_config['layers']:
        layer['config']['dtype'] = 'float32'
        if 'kernel_gradient' in layer['config']:
          layer['config']['kernel_gradient'] = _EXPORT_OVERRIDES['kernel_gradient']
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
    # The same network through another graph: float32 rounding alone (models/rounding.py).
    relative = rounding.relative_difference(got.numpy(), expected)
    bound = rounding.float32_bound(rounding.encoder_fan_ins(encoder))
    if not relative <= bound:
      raise RuntimeError(f'export check failed: {name} differs from the encoder by '
                         f'{relative:.3g} of its outputs\' scale (float32 rounding allows '
                         f'{bound:.3g})')


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
  trained = (metadata.get('precision') or {}).get('trained')
  if trained is None and not _computes_float32(encoder):
    trained = getattr(encoder.dtype_policy, 'name', None)
  encoder = float32_encoder(encoder, metadata.get('backbone_spec'))
  embedding_dim = int(encoder.output_shape[-1])
  description = _output_description(encoder)
  metadata.update(
      output={'shape': [None, embedding_dim], 'dtype': 'float32',
              'description': description,
              'l2_normalized': False if description else None},
      precision={'weights': 'float32', 'compute': 'float32', 'trained': trained},
      cpu_kernels=CPU_KERNELS)
  if projection_head is not None:
    projection_head = float32_head(projection_head, embedding_dim)
    metadata['projection_dim'] = int(
        projection_head.compute_output_shape([None, embedding_dim])[-1])
  metadata.update(
      embedding_dim=embedding_dim,
      signatures=['serving_default'] + ([PROJECTION_SIGNATURE] if projection_head else []),
      regularization_losses='none: weight decay is applied by the CVRL train step',
      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      tensorflow_version=tf.__version__, cvrl_tf_version=cvrl_tf.__version__)
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
                            imported_from=backbone_io.read_source(model_dir),
                            precision={'trained': read_trained_precision(model_dir)})
  return export_encoder(encoder, export_dir, metadata, head, overwrite, verify)
