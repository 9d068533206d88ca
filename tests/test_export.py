"""Tests of the TF Hub export: round trip in a fresh process, signatures, fine-tuning,
bf16 -> float32, metadata, atomic writes and error messages. Tiny R3D-18 (x0.25) models."""

import json
import os
import re
import subprocess
import sys
from unittest import mock

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from cvrl_tf.cli import export as export_cli
from cvrl_tf.models import backbone_io
from cvrl_tf.models import heads
from cvrl_tf.models import rounding
from cvrl_tf.runtime import precision
from cvrl_tf.serving import export

TINY = dict(name='r3d18', width_multiplier=0.25)
GIN = """# Parameters for build_pretrain_dataset:
# ==============================================================================
pretrain_clips.crop_size = 32
pretrain_clips.stride = 2  # stored frames
pretrain_clips.target_fps = None
train/pretrain_clips.clip_len = 4
train_clips.clip_len = 32
projection_head.bn_epsilon = 0.001
"""
TRAINING = {'num_frames': 4, 'frame_stride': 2, 'target_fps': None, 'crop_size': 32}
HERE = os.path.dirname(os.path.abspath(__file__))


def _randomize_bn(model, seed):
  """Non-trivial BN statistics, so inference and training modes really differ."""
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      layer.moving_mean.assign(rng.normal(0, 0.5, n).astype('float32'))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype('float32'))
      layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype('float32'))
      layer.beta.assign(rng.normal(0, 0.2, n).astype('float32'))


def _clips(shape=(2, 4, 32, 32, 3), seed=0):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


class _StandInPretrainer(tf_keras.Model):
  """Same attribute names as models/pretrainer.py, hence the same checkpoint paths."""

  def __init__(self, encoder, projection_head):
    super().__init__()
    self.encoder = encoder
    self.projection_head = projection_head

  def call(self, clips, training=None):
    return self.projection_head(self.encoder(clips, training=training), training=training)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished pretraining model dir, its in-memory encoder/head, and its export."""
  tf_keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('export')
  model_dir = str(root / 'model')
  spec = backbone_io.spec_dict(**TINY)
  encoder = backbone_io.build_from_spec(spec)
  _randomize_bn(encoder, 0)
  head = heads.ProjectionHead(num_hidden_layers=2, hidden_dim=16, output_dim=8,
                              bn_epsilon=1e-3)
  head.build(tf.TensorShape([None, encoder.output_shape[-1]]))
  _randomize_bn(head, 1)
  backbone_io.save_backbone(encoder, spec, model_dir, step=7)
  checkpoint = tf.train.Checkpoint(model=_StandInPretrainer(encoder, head),
                                   optimizer=tf_keras.optimizers.SGD(0.1))
  tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, 'checkpoints'), 1).save()
  with open(os.path.join(model_dir, 'operative_config.gin'), 'w') as f:
    f.write(GIN)  # Kept in the metadata as text; nothing is read from it.
  # What experiments.pretrain writes beside the backbone: the head's spec, the clips;
  # and the precision it ran in (run_info.json).
  backbone_io.save_run_specs(model_dir, head.spec(), TRAINING)
  precision.record(model_dir, precision.PrecisionChoice('mixed_bfloat16', 'auto', 'test'),
                   'pretrain')
  export_dir = export.export_model_dir(model_dir, str(root / 'hub'),
                                       with_projection_head=True)
  # The fresh-process round trip starts now and runs while the other tests do.
  clips_path, out_prefix = str(root / 'clips.npy'), str(root / 'out')
  np.save(clips_path, _clips((2, 6, 40, 48, 3)))
  with open(root / 'roundtrip.log', 'w') as log:
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, 'hub_roundtrip_check.py'), export_dir,
         clips_path, out_prefix], stdout=log, stderr=subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'},
             'TF_CPP_MIN_LOG_LEVEL': '2'})  # A user's process: TensorFlow's own tf.keras.
  yield dict(root=root, model_dir=model_dir, export_dir=export_dir, encoder=encoder,
             head=head, spec=spec, roundtrip=(process, clips_path, out_prefix))
  if process.poll() is None:
    process.kill()
    process.wait()


def _assert_float32_same(got, expected, encoder, head=None):
  """The same network evaluated another way (a SavedModel's graph, a float32 copy):
  float32 rounding alone, relative to the outputs' scale, with the bound derived from the
  layers' fan-ins (models/rounding.py says why; ~1.4e-4 for the tiny R3D-18 here: fan-ins sum to 13,551). A
  kernel set or CPU of another class sums in another order: an absolute 1e-5 held only
  on the CPU it was tuned on."""
  layers = rounding.encoder_fan_ins(encoder)
  if head is not None:
    layers += rounding.fan_ins(head.submodules)
  assert rounding.relative_difference(got, expected) <= rounding.float32_bound(layers)


def test_signatures_match_encoder_and_head(run):
  loaded = tf.saved_model.load(run['export_dir'])
  assert set(loaded.signatures) == {'serving_default', export.PROJECTION_SIGNATURE}
  serving = loaded.signatures['serving_default']
  assert serving.structured_input_signature[1]['clips'].shape.as_list() == [
      None, None, None, None, 3]
  for shape in ((1, 4, 32, 32, 3), (3, 8, 64, 40, 3)):  # T, H, W are free.
    clips = _clips(shape, seed=len(shape))
    expected = run['encoder'](clips, training=False).numpy()
    _assert_float32_same(serving(clips=tf.constant(clips))['embedding'], expected,
                         run['encoder'])
    _assert_float32_same(loaded(clips, training=False), expected, run['encoder'])
  clips = _clips()
  projected = loaded.signatures[export.PROJECTION_SIGNATURE](clips=tf.constant(clips))
  embedding = run['encoder'](clips, training=False)
  _assert_float32_same(projected['projection'], run['head'](embedding, training=False),
                       run['encoder'], run['head'])
  assert projected['projection'].shape == (2, 8)
  assert len(loaded.regularization_losses) == 0
  assert len(loaded.variables) == len(run['encoder'].variables)
  assert len(loaded.trainable_variables) == len(run['encoder'].trainable_variables)


def test_metadata_and_model_card(run):
  metadata = export.read_metadata(run['export_dir'])
  assert metadata['training'] == {'num_frames': 4, 'frame_stride': 2, 'target_fps': None,
                                  'crop_size': 32}
  assert metadata['input']['range'] == [0.0, 1.0]
  assert metadata['input']['layout'] == '[B, T, H, W, 3]'
  assert metadata['architecture'] == 'r3d18'
  assert metadata['backbone_spec'] == run['spec']
  assert metadata['gin_config'] == GIN
  assert metadata['embedding_dim'] == 128 and metadata['projection_dim'] == 8
  assert metadata['output'] == {
      'shape': [None, 128], 'dtype': 'float32', 'description': export.OUTPUT_POOLED,
      'l2_normalized': False}
  assert metadata['precision'] == {'weights': 'float32', 'compute': 'float32',
                                   'trained': 'mixed_bfloat16'}
  assert metadata['cpu_kernels']['env'] == {'TF_ENABLE_ONEDNN_OPTS': '1'}
  assert not [p for p in os.listdir(run['root']) if '.tmp-' in p or '.old-' in p]
  assert sorted(os.listdir(run['export_dir'])) == [
      'README.md', 'assets', 'fingerprint.pb', 'saved_model.pb', 'variables']


def _card(export_dir):
  with open(os.path.join(export_dir, export.MODEL_CARD)) as f:
    return f.read()


def _flat(card):
  """The card with its line wrapping undone, to look for phrases."""
  return ' '.join(card.split())


def test_model_card_says_what_the_model_takes_and_gives(run):
  """The card's figures are the model's: checked against the export itself."""
  card = _card(run['export_dir'])
  text = _flat(card)
  loaded = hub.KerasLayer(run['export_dir'])
  assert card.startswith('# CVRL video encoder: r3d18, width x0.25\n')
  # Input: the training clips (4 frames, stride 2, 32 px crops) as a shape the model takes.
  assert 'float32 `[batch, frames, height, width, 3]`, RGB in [0, 1]' in text
  assert 'Trained on clips of 4 frames, every 2 stored frames' in text
  assert 'fps of its videos was not recorded' in text  # target_fps None
  assert '32 x 32 crops: `[batch, 4, 32, 32, 3]`' in text
  embedding = loaded(_clips((3, 4, 32, 32, 3), seed=5)).numpy()
  # Output: its width, and what the card says of its values (pooled ReLU features).
  width = int(re.search(r'`__call__`: float32 `\[batch, (\d+)\]`', text).group(1))
  assert embedding.shape == (3, width) == (3, 128)
  assert '"embedding": [batch, 128]' in text
  assert 'non-negative); not L2-normalized' in text
  assert embedding.min() >= 0
  assert np.abs(np.linalg.norm(embedding, axis=-1) - 1).max() > 0.1
  assert '(8-d, not normalized)' in text  # the projection head
  # Precision, and the one variable that makes it fast where TensorFlow leaves oneDNN off.
  assert 'Weights float32, computes float32 (the run trained in mixed_bfloat16' in text
  assert '## Fast on AVX2-only CPUs: `TF_ENABLE_ONEDNN_OPTS=1`' in text
  assert ('Set `TF_ENABLE_ONEDNN_OPTS=1` in the environment before TensorFlow is imported'
          in text)
  assert 'Eigen' in text and 'AVX512_BF16' in text
  # The card's example runs as written (its variable set first, as it says).
  code = re.search(r'```python\n(.*?)```', card, re.S).group(1)
  assert code.index("os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')") < code.index(
      'import tensorflow_hub')
  scope = dict(EXPORT_DIR=run['export_dir'], clips=_clips((2, 4, 32, 32, 3)), num_classes=3)
  with mock.patch.dict(os.environ):
    exec(code, scope)  # pylint: disable=exec-used
  assert scope['embeddings'].shape == (2, 128)
  assert scope['model'](scope['clips']).shape == (2, 3)


def test_model_card_of_a_resampled_run_and_of_an_unknown_encoder():
  metadata = export.build_metadata(
      backbone_io.spec_dict(**TINY),
      {'num_frames': 16, 'frame_stride': 2, 'target_fps': 25, 'crop_size': 224},
      embedding_dim=512)
  text = _flat(export._model_card(metadata))  # pylint: disable=protected-access
  assert 'clips of 16 frames, every 2 frames at 25 fps' in text
  assert '`cvrl_embed --fps=25`' in text and '`[batch, 16, 224, 224, 3]`' in text
  assert 'Weights float32, computes float32.' in text  # the run did not say
  # Nothing recorded: the card says so instead of inventing figures.
  text = _flat(export._model_card(export.build_metadata()))  # pylint: disable=protected-access
  assert 'The clips it was trained on were not recorded' in text
  assert '`[batch, D]`.' in text and 'not L2-normalized' not in text
  assert 'TF_ENABLE_ONEDNN_OPTS=1' in text


def test_run_specs_round_trip_and_missing_ones(run, tmp_path):
  assert backbone_io.read_training(run['model_dir']) == TRAINING
  spec = backbone_io.read_head_spec(run['model_dir'])
  assert spec['bn_epsilon'] == 1e-3 and spec['hidden_dim'] == 16
  assert heads.ProjectionHead.from_spec(spec).get_config()['output_dim'] == 8
  # A run that recorded nothing (older runs): unknown settings, and no head to export.
  assert backbone_io.read_training(str(tmp_path)) == dict.fromkeys(export.TRAINING_KEYS)
  assert backbone_io.read_head_spec(str(tmp_path)) is None
  with pytest.raises(ValueError, match='unknown training settings'):
    backbone_io.save_run_specs(str(tmp_path), None, {'clip_len': 4})


def test_fine_tuning_through_keras_layer(run):
  tf_keras.utils.set_random_seed(0)
  layer = hub.KerasLayer(run['export_dir'], trainable=True)
  clips = _clips((4, 4, 32, 32, 3), seed=3)
  inference = layer(clips, training=False).numpy()
  batch_stats = layer(clips, training=True).numpy()
  assert np.abs(batch_stats - inference).max() > 1e-3  # BN uses batch statistics.
  model = tf_keras.Sequential([tf_keras.Input([None, None, None, 3]), layer,
                               tf_keras.layers.Dense(3)])
  model.compile(tf_keras.optimizers.SGD(0.1), tf_keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  moving = [w for w in layer.non_trainable_weights if 'moving_mean' in w.name]
  assert moving and len(layer.trainable_weights) == len(run['encoder'].trainable_weights)
  before = [w.numpy() for w in layer.trainable_weights]
  moving_before = [w.numpy() for w in moving]
  model.fit(clips, np.array([0, 1, 2, 0]), batch_size=4, epochs=1, verbose=0)
  changed = [np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, layer.trainable_weights)]
  assert all(changed)
  assert all(np.abs(a - w.numpy()).max() > 0 for a, w in zip(moving_before, moving))
  frozen = hub.KerasLayer(run['export_dir'])
  assert not frozen.trainable_weights
  _assert_float32_same(frozen(clips, training=True), run['encoder'](clips), run['encoder'])


def _bf16_encoder(spec):
  with precision.dtype_policy('mixed_bfloat16'):
    bf16 = backbone_io.build_from_spec(spec)
  _randomize_bn(bf16, 2)
  assert bf16.get_layer('stem_conv').compute_dtype == 'bfloat16'
  reference = backbone_io.build_from_spec(spec)  # float32, same weights
  reference.set_weights(bf16.get_weights())
  return bf16, reference


def test_bf16_model_exports_float32(tmp_path):
  tf_keras.utils.set_random_seed(1)
  spec = backbone_io.spec_dict(**TINY)
  bf16, reference = _bf16_encoder(spec)
  path = export.export_encoder(bf16, str(tmp_path / 'hub'), export.build_metadata(spec),
                               verify=False)
  clips = _clips(seed=4)
  expected = reference(clips, training=False).numpy()
  got = hub.KerasLayer(path)(clips).numpy()
  assert got.dtype == np.float32
  _assert_float32_same(got, expected, reference)
  # The check above would catch a bf16 export: bf16 (8 bits of mantissa, not 24) is far
  # from float32, beyond the bound many times over.
  bound = rounding.float32_bound(rounding.encoder_fan_ins(reference))
  assert rounding.relative_difference(bf16(clips, training=False), expected) > 10 * bound
  # Without a spec (any functional encoder) the float32 copy comes from its config.
  rebuilt = export.float32_encoder(bf16)
  assert rebuilt.get_layer('stem_conv').compute_dtype == 'float32'
  _assert_float32_same(rebuilt(clips, training=False), expected, reference)
  assert _kernel_gradients(rebuilt) == {'conv'}


def _kernel_gradients(model):
  return {l.kernel_gradient for l in model.submodules if hasattr(l, 'kernel_gradient')}


def test_exports_take_the_usual_kernel_gradients():
  """A float32 encoder built with 'auto' (GEMM kernel gradients chosen for this CPU) is
  exported with the usual ones: the SavedModel keeps its route wherever it is loaded."""
  encoder = backbone_io.build_from_spec(backbone_io.spec_dict(**TINY))
  assert _kernel_gradients(encoder) == {'auto'}
  copy = export.float32_encoder(encoder, backbone_io.spec_dict(**TINY))
  assert copy is not encoder and _kernel_gradients(copy) == {'conv'}
  np.testing.assert_array_equal(copy(_clips(), training=False),
                                encoder(_clips(), training=False))
  assert export.float32_encoder(copy) is copy


def _export_file_times(path):
  return {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}


def test_refuses_to_overwrite_and_overwrites_atomically(tmp_path, monkeypatch):
  # Any encoder will do for the file handling; a one-conv one exports in a blink.
  clips = tf_keras.Input([None, None, None, 3])
  encoder = tf_keras.Model(clips, tf_keras.layers.GlobalAveragePooling3D()(
      tf_keras.layers.Conv3D(4, 1)(clips)))
  target = str(tmp_path / 'hub')
  export.export_encoder(encoder, target, verify=False)
  times = _export_file_times(target)
  with pytest.raises(FileExistsError, match='--overwrite'):
    export.export_encoder(encoder, target)
  assert _export_file_times(target) == times

  # A failure half way through writing leaves the old export untouched, and no debris.
  def broken_save(obj, path, **unused):
    os.makedirs(os.path.join(path, 'variables'))
    raise OSError('simulated disk full')
  monkeypatch.setattr(tf.saved_model, 'save', broken_save)
  with pytest.raises(OSError, match='simulated'):
    export.export_encoder(encoder, target, overwrite=True)
  assert _export_file_times(target) == times
  assert sorted(os.listdir(tmp_path)) == ['hub']
  monkeypatch.undo()

  export.export_encoder(encoder, target, export.build_metadata(training=TRAINING),
                        overwrite=True,
                        verify=False)
  assert export.read_metadata(target)['training']['num_frames'] == 4
  assert sorted(os.listdir(tmp_path)) == ['hub']  # no .tmp-/.old- left behind

  not_an_export = tmp_path / 'precious'
  not_an_export.mkdir()
  (not_an_export / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='not a SavedModel'):
    export.export_encoder(encoder, str(not_an_export), overwrite=True)
  assert (not_an_export / 'notes.txt').read_text() == 'keep me'


def test_clear_errors_for_bad_model_dirs(run, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    export.export_model_dir(str(tmp_path / 'nope'), str(tmp_path / 'a'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match='backbone'):
    export.export_model_dir(str(empty), str(tmp_path / 'a'))
  half = tmp_path / 'half'
  (half / backbone_io.BACKBONE_SUBDIR).mkdir(parents=True)
  with open(half / backbone_io.BACKBONE_SUBDIR / backbone_io.SPEC_FILE, 'w') as f:
    json.dump(run['spec'], f)
  with pytest.raises(FileNotFoundError, match='did not finish'):
    export.export_model_dir(str(half), str(tmp_path / 'a'))
  no_head = tmp_path / 'nohead'
  no_head.mkdir()
  os.symlink(os.path.join(run['model_dir'], 'backbone'), no_head / 'backbone')
  with pytest.raises(FileNotFoundError, match='checkpoints'):
    export.export_model_dir(str(no_head), str(tmp_path / 'a'), with_projection_head=True)
  # A run from before head.json: its head cannot be rebuilt, and the message says so.
  old = tmp_path / 'old'
  (old / backbone_io.BACKBONE_SUBDIR).mkdir(parents=True)
  source = os.path.join(run['model_dir'], backbone_io.BACKBONE_SUBDIR)
  for name in os.listdir(source):
    if name != backbone_io.HEAD_SPEC_FILE:
      os.symlink(os.path.join(source, name), old / backbone_io.BACKBONE_SUBDIR / name)
  os.symlink(os.path.join(run['model_dir'], 'checkpoints'), old / 'checkpoints')
  with pytest.raises(FileNotFoundError, match='head.json.*without --with_projection_head'):
    export.export_model_dir(str(old), str(tmp_path / 'a'), with_projection_head=True)
  assert not os.path.exists(tmp_path / 'a')


def test_main_reports_errors_with_exit_code(run, tmp_path, capsys):
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_export', f'--model_dir={run["model_dir"]}',
                 f'--export_dir={tmp_path}/ok'])
    assert export_cli.main([]) == 0
  out = capsys.readouterr().out
  assert f'Model card: {tmp_path}/ok/README.md' in out
  assert 'Set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported' in out
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_export', f'--model_dir={run["model_dir"]}',
                 f'--export_dir={run["export_dir"]}'])
    assert export_cli.main([]) == 2
  assert 'already exists' in capsys.readouterr().err
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_export', f'--model_dir={tmp_path}/missing',
                 f'--export_dir={tmp_path}/x'])
    assert export_cli.main([]) == 2
  assert 'does not exist' in capsys.readouterr().err


def test_round_trip_in_fresh_process(run):
  """Last in the file: the subprocess started by the fixture had time to finish."""
  process, clips_path, out_prefix = run['roundtrip']
  returncode = process.wait(timeout=300)
  log = open(run['root'] / 'roundtrip.log').read()
  assert returncode == 0, log
  expected = run['encoder'](np.load(clips_path), training=False).numpy()
  for name in ('call', 'serving'):
    got = np.load(f'{out_prefix}_{name}.npy')
    assert got.shape == expected.shape == (2, 128)
    # A process without cvrl_tf: on an AVX2-only CPU, TensorFlow's Eigen kernels.
    _assert_float32_same(got, expected, run['encoder'])
