"""Model Garden checkpoints in and out (serving/model_garden.py): Model Garden's own model
with random weights is the reference. Its features and head outputs must equal ours
after the import to 1e-5 in float32 (R3D-50 CVRL layout, R3D-101), also through an export
loaded by hub.KerasLayer in a fresh process; other architectures are refused in one line.
"""

import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.cli import import_checkpoint as import_cli
from cvrl_tf.models import backbone_io
from cvrl_tf.models import encoder_source
from cvrl_tf.models import mg_checkpoint
from cvrl_tf.models import model_garden
from cvrl_tf.serving import export
from cvrl_tf.serving import model_garden as model_garden_io

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = dict(hidden_layer_num=2, hidden_dim=32, projection_dim=16)
CVRL_KERNELS = [(1,) * 3, (1,) * 4, (3,) * 6, (3,) * 3]  # the released block specs
R3D50_PARAMS = 31_725_248  # Model Garden's ResNet3D-50 with those specs (and ours)


def _randomize(model, seed):
  """Random BN statistics and affine terms and Dense biases (kernels keep their random
  init), so that a transposed or misplaced tensor shows in the outputs."""
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if not getattr(layer, 'weights', None):
      continue  # e.g. the unused shortcut layers of Model Garden's later blocks.
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      layer.moving_mean.assign(rng.normal(0, 0.5, n))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
      layer.gamma.assign(rng.uniform(0.5, 1.5, n))
      layer.beta.assign(rng.normal(0, 0.2, n))
    elif isinstance(layer, tf_keras.layers.Dense) and layer.use_bias:
      layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape))


def _mg_features(backbone, clips):
  """Model Garden's representation: the last endpoint, globally averaged."""
  endpoints = backbone(clips, training=False)
  return tf_keras.layers.GlobalAveragePooling3D()(endpoints[max(endpoints)]).numpy()


def _clips(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _settings(depth=50, kernels=CVRL_KERNELS, **kw):
  return dict(model_id=depth, temporal_kernel_sizes=kernels,
              stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
              stem_pool_temporal_stride=1, norm_momentum=0.99, norm_epsilon=1e-3, **kw)


@pytest.fixture(scope='module')
def r3d50(tmp_path_factory):
  """A video_ssl pretraining model saved the way Model Garden's trainer saves it
  (global_step, model, optimizer with momentum slots, backbone), and its import."""
  tf_keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('mg')
  model = model_garden.build_model(_settings(), HEAD)
  _randomize(model, 0)
  optimizer = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
  optimizer.apply_gradients((tf.zeros_like(v), v) for v in model.trainable_variables)
  checkpoint = tf.train.Checkpoint(global_step=tf.Variable(5, dtype=tf.int64), model=model,
                                   optimizer=optimizer, backbone=model.backbone)
  prefix = tf.train.CheckpointManager(checkpoint, str(root / 'mg_train'), 1).save()
  model_dir = str(root / 'imported')
  model_garden_io.import_checkpoint(str(root / 'mg_train'), model_dir)
  # As every downstream protocol gets it (encoder_source='model_dir').
  encoder, _ = encoder_source.build_encoder('model_dir', pretrain_dir=model_dir)
  return dict(root=root, model=model, prefix=prefix, model_dir=model_dir, encoder=encoder)


@pytest.fixture(scope='module')
def r3d101(tmp_path_factory):
  """A bare Model Garden ResNet3D-101 saved like the release (backbone only)."""
  tf_keras.utils.set_random_seed(1)
  root = tmp_path_factory.mktemp('mg101')
  backbone = model_garden.build_model(_settings(101, [(1,) * 3, (1,) * 4, (3,) * 23,
                                                      (3,) * 3]))
  _randomize(backbone, 1)
  prefix = tf.train.Checkpoint(backbone=backbone).write(str(root / 'r3d101_backbone-1'))
  return dict(root=root, backbone=backbone, prefix=prefix)


def test_layout_is_read_off_the_shapes(r3d50):
  layout = mg_checkpoint.read_layout(r3d50['prefix'])
  assert layout.root == 'model' and layout.extras == [] and layout.classifier is None
  assert layout.stem == [(5, 7, 7, 3, 64)]
  assert [len(s) for s in layout.stage_blocks()] == [3, 4, 6, 3]
  assert [tuple(b.temporal_kernel for b in s) for s in layout.stage_blocks()] == CVRL_KERNELS
  assert [b.projection for b in layout.blocks] == [
      i in (0, 3, 7, 13) for i in range(16)]  # the first block of each stage
  assert layout.head == HEAD


@pytest.mark.parametrize('shape', [(2, 4, 32, 32, 3), (1, 5, 33, 35, 3)])
def test_r3d50_features_equal_model_gardens(r3d50, shape):
  """Even and odd sizes: TF's 'same' padding puts the odd pixel after, in both models."""
  encoder = r3d50['encoder']
  assert encoder.count_params() == r3d50['model'].backbone.count_params() == R3D50_PARAMS
  clips = _clips(shape)
  expected = _mg_features(r3d50['model'].backbone, clips)
  got = encoder(clips, training=False).numpy()
  assert got.shape == (shape[0], 2048)
  assert np.abs(expected).max() > 1  # Not a degenerate all-zero comparison.
  assert np.abs(got - expected).max() <= 1e-5


def test_projection_head_equals_model_gardens(r3d50):
  """The head as cvrl_export loads it; Model Garden's hidden biases folded into BN."""
  encoder = r3d50['encoder']
  head = export.load_projection_head(r3d50['model_dir'], 2048)
  clips = _clips((2, 4, 32, 32, 3), seed=1)
  expected = r3d50['model']({'image': clips}, training=False).numpy()
  got = head(encoder(clips, training=False), training=False).numpy()
  assert got.shape == expected.shape == (2, HEAD['projection_dim'])
  assert np.abs(got - expected).max() <= 1e-5


def test_model_dir_holds_specs_and_provenance(r3d50):
  model_dir = r3d50['model_dir']
  spec = backbone_io.read_spec(model_dir)
  assert spec['name'] == 'r3d50' and spec['temporal_kernel_sizes'] == [1, 1, 3, 3]
  # Model Garden's NormActivation defaults, which the released configs keep.
  assert (spec['bn_epsilon'], spec['bn_momentum']) == (1e-3, 0.99)
  assert backbone_io.read_training(model_dir) == {
      'num_frames': 16, 'frame_stride': 2, 'target_fps': None, 'crop_size': 224}
  head = backbone_io.read_head_spec(model_dir)
  assert (head['num_hidden_layers'], head['hidden_dim'], head['output_dim']) == (2, 32, 16)
  assert (head['bn_epsilon'], head['bn_momentum']) == (1e-5, 0.997)
  source = backbone_io.read_source(model_dir)
  assert source['checkpoint'] == r3d50['prefix']
  assert source['layout']['blocks_per_stage'] == [3, 4, 6, 3]
  assert source['max_feature_difference'] <= 1e-5
  assert not [n for n in os.listdir(r3d50['root']) if '.tmp-' in n]


def test_other_depth_r3d101_backbone_only(r3d101, tmp_path):
  model_dir = str(tmp_path / 'r3d101')
  model_garden_io.import_checkpoint(r3d101['prefix'], model_dir, backbone='r3d101')
  encoder = backbone_io.load_backbone(model_dir)
  clips = _clips((1, 5, 33, 33, 3), seed=2)
  expected = _mg_features(r3d101['backbone'], clips)
  assert np.abs(encoder(clips, training=False).numpy() - expected).max() <= 1e-5
  assert backbone_io.read_head_spec(model_dir) is None


def test_linear_eval_checkpoint_keeps_backbone_leaves_classifier(tmp_path):
  """tf.train.Checkpoint(model=...) alone (the backbone only inside the model) of
  video_ssl's linear-eval model: the backbone is imported, the classifier is not."""
  tf_keras.utils.set_random_seed(3)
  model = model_garden.build_model(
      _settings(), dict(hidden_layer_num=0, hidden_dim=0, projection_dim=7))
  _randomize(model, 3)
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / 'linear-1'))
  layout = mg_checkpoint.read_layout(prefix)
  assert (layout.root, layout.classifier, layout.head) == ('model', 7, None)
  model_dir = str(tmp_path / 'imported')
  source = model_garden_io.import_checkpoint(prefix, model_dir)
  assert source['layout']['classifier_classes'] == 7
  assert backbone_io.read_head_spec(model_dir) is None
  clips = _clips((1, 4, 32, 32, 3), seed=5)
  got = backbone_io.load_backbone(model_dir)(clips, training=False).numpy()
  assert np.abs(got - _mg_features(model.backbone, clips)).max() <= 1e-5


def test_checkpoint_paths_resolve(tmp_path):
  (tmp_path / 'release' / 'sub').mkdir(parents=True)
  (tmp_path / 'release' / 'sub' / 'r3d_backbone-1.index').write_text('')
  assert mg_checkpoint.resolve(str(tmp_path / 'release')) == str(
      tmp_path / 'release' / 'sub' / 'r3d_backbone-1')
  assert mg_checkpoint.resolve(str(tmp_path / 'release' / 'sub' / 'r3d_backbone-1')) == str(
      tmp_path / 'release' / 'sub' / 'r3d_backbone-1')
  (tmp_path / 'release' / 'other-2.index').write_text('')
  with pytest.raises(FileNotFoundError, match='expected one checkpoint'):
    mg_checkpoint.resolve(str(tmp_path / 'release'))
  with pytest.raises(FileNotFoundError, match='no such checkpoint'):
    mg_checkpoint.resolve(str(tmp_path / 'nothing'))


def test_wrong_depth_is_refused_in_one_line(r3d101, tmp_path):
  with pytest.raises(model_garden_io.ModelGardenError) as e:
    model_garden_io.import_checkpoint(r3d101['prefix'], str(tmp_path / 'x'))
  message = str(e.value)
  assert '\n' not in message
  assert '(3, 4, 23, 3) blocks per stage' in message and '--backbone=r3d101' in message
  assert not os.path.exists(tmp_path / 'x')


def test_self_gating_is_refused_in_one_line(tmp_path):
  """Model Garden's default ResNet3D50 (self-gating, kernels mixed within stages)."""
  from official.vision.configs import backbones_3d  # pylint: disable=g-import-not-at-top
  from official.vision.configs import common  # pylint: disable=g-import-not-at-top
  from official.vision.modeling.backbones import factory  # pylint: disable=g-import-not-at-top
  backbone = factory.build_backbone(
      tf_keras.layers.InputSpec(shape=[None, None, None, None, 3]),
      backbones_3d.Backbone3D(type='resnet_3d', resnet_3d=backbones_3d.ResNet3D50()),
      common.NormActivation(use_sync_bn=False))
  backbone(tf.zeros([1, 4, 32, 32, 3]))  # Self-gating creates its weights when called.
  prefix = tf.train.Checkpoint(backbone=backbone).write(str(tmp_path / 'sg-1'))
  with pytest.raises(model_garden_io.ModelGardenError) as e:
    model_garden_io.import_checkpoint(prefix, str(tmp_path / 'x'))
  assert '\n' not in str(e.value) and '_self_gating' in str(e.value)


def test_kernels_mixed_within_a_stage_are_named():
  blocks = [mg_checkpoint.Block(64 * 2 ** s, 256 * 2 ** s, k, i == 0)
            for s, ks in enumerate([(1, 1, 1), (3, 1, 3, 1), (3,) * 6, (3,) * 3])
            for i, k in enumerate(ks)]
  layout = mg_checkpoint.Layout('p', 'backbone', [(5, 7, 7, 3, 64)], blocks, [])
  message = mg_checkpoint.difference(layout, _settings(), 'asked')
  assert message == ('res3 has temporal kernels (3, 1, 3, 1) per block, asked has '
                     '(1, 1, 1, 1): the CVRL R3D uses one temporal kernel per stage')
  layout.stem = [(3, 7, 7, 3, 64)]
  assert mg_checkpoint.difference(layout, _settings(), 'asked').startswith('its stem')


def test_reverse_back_to_model_garden(r3d50, tmp_path):
  """The imported dir -> tf.train.Checkpoint(backbone=ResNet3D): Model Garden, built
  from the config written beside it, restores every variable, gets back the original
  values bit for bit and computes our features."""
  prefix = str(tmp_path / 'mg' / 'r3d50_backbone')
  model_garden_io.export_checkpoint(r3d50['model_dir'], prefix)
  with open(prefix + '.json') as f:
    config = json.load(f)
  from official.vision.configs import backbones_3d  # pylint: disable=g-import-not-at-top
  from official.vision.configs import common  # pylint: disable=g-import-not-at-top
  from official.vision.modeling.backbones import factory  # pylint: disable=g-import-not-at-top
  backbone_config = backbones_3d.Backbone3D()
  backbone_config.override(config['backbone'], is_strict=False)
  norm = common.NormActivation()
  norm.override(config['norm_activation'])
  assert (norm.norm_epsilon, norm.use_sync_bn) == (1e-3, False)
  mg = factory.build_backbone(tf_keras.layers.InputSpec(shape=[None, None, None, None, 3]),
                              backbone_config, norm)
  tf.train.Checkpoint(backbone=mg).read(prefix).assert_consumed()
  original = r3d50['model'].backbone
  assert len(mg.weights) == len(original.weights)
  for restored, value in zip(mg.weights, original.weights):
    np.testing.assert_array_equal(restored.numpy(), value.numpy())
  clips = _clips((2, 5, 33, 33, 3), seed=3)
  expected = r3d50['encoder'](clips, training=False).numpy()
  assert np.abs(_mg_features(mg, clips) - expected).max() <= 1e-5


def test_reverse_refuses_what_model_garden_cannot_hold(tmp_path):
  spec = backbone_io.current_spec(name='r3d18', width_multiplier=0.25)
  backbone_io.save_backbone(backbone_io.build_from_spec(spec), spec, str(tmp_path), 0)
  with pytest.raises(model_garden_io.ModelGardenError, match='bottleneck blocks only'):
    model_garden_io.export_checkpoint(str(tmp_path), str(tmp_path / 'mg'))


def test_cli_errors_are_one_line_exit_2(r3d50, tmp_path, capsys):
  cases = [
      ([f'--checkpoint={tmp_path}/missing', f'--model_dir={tmp_path}/a'],
       'no such checkpoint'),
      ([f'--checkpoint={r3d50["prefix"]}', f'--model_dir={r3d50["model_dir"]}'],
       'already exists; pass --overwrite'),
      ([f'--checkpoint={r3d50["prefix"]}', f'--model_dir={tmp_path}/b',
        '--temporal_kernel_sizes=3,3,3,3'],
       'res2 has temporal kernels (1, 1, 1) per block, --backbone=r3d50 '
       '--temporal_kernel_sizes=3,3,3,3 has (3, 3, 3)'),
      ([f'--model_dir={tmp_path}/c'], '--checkpoint is required'),
      ([f'--checkpoint={r3d50["prefix"]}', f'--model_dir={tmp_path}/d',
        '--backbone=r3d18'], 'bottleneck blocks only'),
  ]
  for args, expected in cases:
    with flagsaver.flagsaver():
      flags.FLAGS(['cvrl_import'] + args)
      assert import_cli.main([]) == 2, args
    err = capsys.readouterr().err.strip()
    assert err.startswith('cvrl_import: error: ') and '\n' not in err, err
    assert expected in err, err
  assert not [n for n in os.listdir(tmp_path) if n != 'missing']


def test_import_export_hub_in_fresh_process(r3d50, tmp_path):
  """cvrl_import -> cvrl_export -> hub.KerasLayer in a new interpreter: Model Garden's
  features."""
  export_dir = export.export_model_dir(r3d50['model_dir'], str(tmp_path / 'hub'),
                                       verify=False)
  metadata = export.read_metadata(export_dir)
  assert metadata['imported_from']['checkpoint'] == r3d50['prefix']
  assert metadata['training']['num_frames'] == 16
  clips_path, out_prefix = str(tmp_path / 'clips.npy'), str(tmp_path / 'out')
  clips = _clips((2, 5, 33, 33, 3), seed=4)
  np.save(clips_path, clips)
  result = subprocess.run(
      [sys.executable, os.path.join(HERE, 'hub_roundtrip_check.py'), export_dir,
       clips_path, out_prefix], capture_output=True, text=True, timeout=600,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  expected = _mg_features(r3d50['model'].backbone, clips)
  for name in ('call', 'serving'):
    got = np.load(f'{out_prefix}_{name}.npy')
    assert got.shape == (2, 2048)
    assert np.abs(got - expected).max() <= 1e-5, name
