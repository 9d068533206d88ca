"""Model Garden checkpoints in and out (interop/transfer.py).

The reference is Model Garden's own model built the way the released checkpoints were
trained: the experiment from exp_factory plus the overrides of the released yaml files
(tests/data/model_garden_cvrl_yaml.json: their values, with where they come from), built
by the experiment's task, given random weights and random batch-norm statistics (some
moving variances near zero, where epsilon decides the scale), and saved as Model Garden's
trainer saves. After the import our encoder and projection head must give its outputs
within float32 rounding (rounding.float32_bound, relative to the outputs' scale), also
through an export loaded by hub.KerasLayer in a fresh process and back through
--to_model_garden; importing with the wrong batch-norm epsilon must miss by far. Other
architectures are refused in one line.
"""

import io
import json
import os
import subprocess
import sys
import tarfile

from absl import flags
from absl.testing import flagsaver
import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from cvrl_tf import files as files_lib
from cvrl_tf.cli import import_checkpoint as import_cli
from cvrl_tf.input import augment
from cvrl_tf.interop import checkpoint as mg_checkpoint
from cvrl_tf.interop import model_garden
from cvrl_tf.interop import transfer as model_garden_io
from cvrl_tf.models import backbone_io
from cvrl_tf.models import encoder_source
from cvrl_tf.models import rounding
from cvrl_tf.serving import export

HERE = os.path.dirname(os.path.abspath(__file__))
YAML_DATA = os.path.join(HERE, 'data', 'model_garden_cvrl_yaml.json')
PRETRAIN_YAML = 'cvrl_pretrain_k600_200ep.yaml'
LINEAR_EVAL_YAML = 'cvrl_linear_eval_k600.yaml'
CVRL_KERNELS = [(1,) * 3, (1,) * 4, (3,) * 6, (3,) * 3]  # the released block specs
R3D50_PARAMS = 31_725_248  # Model Garden's ResNet3D-50 with those specs (and ours)
RELEASED_HEAD = dict(hidden_layer_num=3, hidden_dim=2048, projection_dim=128)
CLIP = (2, 8, 64, 64, 3)  # the held-out check's clip (issue 27)


def _released_yaml(name):
  with open(YAML_DATA) as f:
    return json.load(f)[name]['overrides']


def _experiment(name, yaml_name, depth=None):
  """exp_factory's experiment with a released yaml's overrides, all of them (strict: a
  value the experiment has no field for fails). The data shapes are the test's clips,
  made to differ between train and validation so the model's input is dynamic like
  ours; the release's 16 x 224 x 224 changes no weight."""
  # pylint: disable=g-import-not-at-top,unused-import
  from official.core import exp_factory
  from official.projects.video_ssl.configs import video_ssl
  from official.projects.video_ssl.tasks import linear_eval
  from official.projects.video_ssl.tasks import pretrain
  # pylint: enable=g-import-not-at-top,unused-import
  config = exp_factory.get_exp_config(name)
  config.override(_released_yaml(yaml_name), is_strict=True)
  config.override({'task': {'train_data': {'feature_shape': CLIP[1:]},
                            'validation_data': {'feature_shape': (5, 33, 35, 3)}}})
  if depth:
    blocks = {101: (3, 4, 23, 3)}[depth]
    config.override({'task': {'model': {'backbone': {'resnet_3d': {
        'model_id': depth, 'block_specs': [
            {'temporal_kernel_sizes': [k[0]] * n, 'temporal_strides': 1,
             'use_self_gating': False} for k, n in zip(CVRL_KERNELS, blocks)]}}}}})
  return config


def _build(config):
  """The model as the experiment's task builds it (float32: the release trained in
  bfloat16, whose variables are float32 all the same)."""
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  task = task_factory.get_task(config.task)
  return task, task.build_model()


def _randomize(model, seed, quiet_fraction=0.1):
  """Random batch-norm statistics and affine terms, random Dense biases (kernels keep
  their random init), so that a transposed or misplaced tensor shows in the outputs.
  About `quiet_fraction` of each BN's channels are quiet, as dead channels of a trained
  network are: moving variance 1e-7..1e-4, around and below epsilon 1e-5, so epsilon
  sets their scale (1e-3 instead gives 3-10x less); their gamma is drawn relative to
  sqrt(variance): the random convs give these channels inputs of ordinary size, which
  1/sqrt(variance + 1e-5) alone would amplify up to ~300x at every batch norm,
  compounding through the blocks."""
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if not getattr(layer, 'weights', None):
      continue  # e.g. the unused shortcut layers of Model Garden's later blocks.
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      quiet = rng.random(n) < quiet_fraction
      variance = np.where(quiet, 10 ** rng.uniform(-7, -4, n), rng.uniform(0.5, 2.0, n))
      layer.moving_mean.assign(rng.normal(0, 0.5, n))
      layer.moving_variance.assign(variance)
      layer.gamma.assign(rng.uniform(0.5, 1.5, n) * np.where(quiet, np.sqrt(variance), 1))
      layer.beta.assign(rng.normal(0, 0.2, n))
    elif isinstance(layer, tf_keras.layers.Dense) and layer.use_bias:
      layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape))


def _save_as_trainer(task, config, model, directory):
  """As Model Garden's trainer saves: global_step, model, optimizer (with its momentum
  slots), and the model's checkpoint_items (video_ssl: the backbone)."""
  optimizer = task.create_optimizer(config.trainer.optimizer_config, config.runtime)
  optimizer.apply_gradients((tf.zeros_like(v), v) for v in model.trainable_variables)
  checkpoint = tf.train.Checkpoint(global_step=tf.Variable(5, dtype=tf.int64), model=model,
                                   optimizer=optimizer, **model.checkpoint_items)
  return tf.train.CheckpointManager(checkpoint, directory, 1).save()


def _mg_features(backbone, clips):
  """Model Garden's representation: the last endpoint, globally averaged."""
  endpoints = backbone(clips, training=False)
  return tf_keras.layers.GlobalAveragePooling3D()(endpoints[max(endpoints)]).numpy()


def _clips(shape, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _relative(got, expected):
  """max |got - expected| / max |expected|: the difference at the outputs' scale."""
  assert float(np.abs(expected).max()) > 0.1  # Not a degenerate all-zero comparison.
  return rounding.relative_difference(got, expected)


def _encoder_bound(encoder):
  """float32 rounding of our R3D against Model Garden's, relative to the features' scale:
  eps * sqrt(sum of the fan-ins along the deepest path) * 10 (rounding.float32_bound
  says why); about 3e-4 for R3D-50, 5e-4 for R3D-101."""
  return rounding.float32_bound(rounding.encoder_fan_ins(encoder))


def _mg_settings(depth=50, kernels=CVRL_KERNELS):
  """Model Garden ResNet3D arguments (model_garden.model_garden_settings' form) of the
  released experiments."""
  return dict(model_id=depth, temporal_kernel_sizes=kernels,
              stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
              stem_pool_temporal_stride=1, norm_momentum=0.9, norm_epsilon=1e-5)


@pytest.fixture(scope='module')
def r3d50(tmp_path_factory):
  """video_ssl's pretraining model as the released checkpoints were trained (experiment
  video_ssl_pretrain_kinetics600 + cvrl_pretrain_k600_200ep.yaml), saved as Model
  Garden's trainer saves it, and its import."""
  tf_keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('mg')
  config = _experiment('video_ssl_pretrain_kinetics600', PRETRAIN_YAML)
  task, model = _build(config)
  _randomize(model, 0)
  prefix = _save_as_trainer(task, config, model, str(root / 'mg_train'))
  model_dir = str(root / 'imported')
  model_garden_io.import_checkpoint(str(root / 'mg_train'), model_dir)
  # As every downstream protocol gets it (encoder_source='model_dir').
  encoder, _ = encoder_source.build_encoder('model_dir', pretrain_dir=model_dir)
  return dict(root=root, model=model, prefix=prefix, model_dir=model_dir, encoder=encoder)


@pytest.fixture(scope='module')
def r3d101(tmp_path_factory):
  """A bare Model Garden ResNet3D-101 (the pretraining experiment, depth 101) saved like
  the release (backbone only)."""
  from official.vision.modeling.backbones import factory  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(1)
  root = tmp_path_factory.mktemp('mg101')
  model_config = _experiment('video_ssl_pretrain_kinetics600', PRETRAIN_YAML, 101).task.model
  backbone = factory.build_backbone(
      tf_keras.layers.InputSpec(shape=[None, None, None, None, 3]), model_config.backbone,
      model_config.norm_activation)
  _randomize(backbone, 1)
  prefix = tf.train.Checkpoint(backbone=backbone).write(str(root / 'r3d101_backbone-1'))
  return dict(root=root, backbone=backbone, prefix=prefix)


# --------------------------------------------------------------------------- settings
def test_each_release_gets_its_experiments_settings_not_class_defaults():
  """The released yaml's task.model, as the importer keeps it, equals the test data; the
  settings of every release are read off its experiment: batch-norm epsilon 1e-5 and
  momentum 0.9 (the NormActivation dataclass says 1e-3 / 0.99), head 1e-5 / 0.997."""
  from official.vision.configs import common  # pylint: disable=g-import-not-at-top
  assert (common.NormActivation().norm_epsilon, common.NormActivation().norm_momentum) == (
      1e-3, 0.99)
  for name in (PRETRAIN_YAML, LINEAR_EVAL_YAML):
    assert files_lib.normalized(model_garden.YAML_MODEL_OVERRIDES[name]) == (
        _released_yaml(name)['task']['model']), name
  assert set(model_garden.RELEASES) == {'imagenet', 'r3d_1x_k400_200ep', 'r3d_1x_k400_800ep',
                                        'r3d_1x_k600_800ep'}
  for release in list(model_garden.RELEASES) + [model_garden.OTHER]:
    settings = model_garden.experiment_settings(release)
    assert model_garden.unsupported(settings) is None, release
    assert (settings['norm_epsilon'], settings['norm_momentum']) == (1e-5, 0.9), release
    assert (settings['hidden_norm_epsilon'], settings['hidden_norm_momentum']) == (
        1e-5, 0.997), release
    assert settings['temporal_kernel_sizes'] == [list(k) for k in CVRL_KERNELS]
    assert [settings[k] for k in ('stem_conv_temporal_kernel_size',
                                  'stem_conv_temporal_stride',
                                  'stem_pool_temporal_stride')] == [5, 2, 1]
    assert (settings['use_self_gating'], settings['temporal_strides']) == (
        [False] * 4, [1] * 4)
    assert (settings['num_frames'], settings['frame_stride'], settings['crop_size']) == (
        (32, 2, 224) if release == 'imagenet' else (16, 2, 224)), release
  # No K400 yaml was released: the K600 one's model part is right for the K400
  # experiment because its model is the same.
  k400, k600 = (model_garden.experiment_config(r).task.model.as_dict()
                for r in ('r3d_1x_k400_800ep', 'r3d_1x_k600_800ep'))
  assert k400 == k600
  assert model_garden.release_in(['r3d_1x_k600_800ep_backbone-1']) == 'r3d_1x_k600_800ep'
  assert model_garden.release_in(['imagenet.tar.gz', 'x']) == 'imagenet'
  assert model_garden.release_in(['ckpt-5', 'mg_train']) is None


def test_flags_replace_single_settings():
  settings = model_garden.experiment_settings('r3d_1x_k400_800ep')
  changed_settings, changed = model_garden.with_flags(
      settings, backbone='r3d101', bn_epsilon=1e-3, bn_momentum=0.9, head_bn_momentum=0.99,
      stem_pool_temporal_stride=None)
  assert changed == {'bn_epsilon': (1e-3, 1e-5), 'head_bn_momentum': (0.99, 0.997),
                     'backbone': ('r3d101', 'r3d50')}
  assert changed_settings['norm_epsilon'] == 1e-3
  assert [len(k) for k in changed_settings['temporal_kernel_sizes']] == [3, 4, 23, 3]
  assert settings['norm_epsilon'] == 1e-5  # The experiment's own stay as they were.
  with pytest.raises(ValueError, match='unknown settings'):
    model_garden.with_flags(settings, epsilon=1.0)


# --------------------------------------------------------------------------- import
def test_layout_is_read_off_the_shapes(r3d50):
  layout = mg_checkpoint.read_layout(r3d50['prefix'])
  assert layout.root == 'model' and layout.extras == [] and layout.classifier is None
  assert layout.stem == [(5, 7, 7, 3, 64)]
  assert [len(s) for s in layout.stage_blocks()] == [3, 4, 6, 3]
  assert [tuple(b.temporal_kernel for b in s) for s in layout.stage_blocks()] == CVRL_KERNELS
  assert [b.projection for b in layout.blocks] == [
      i in (0, 3, 7, 13) for i in range(16)]  # the first block of each stage
  assert layout.head == RELEASED_HEAD


@pytest.mark.parametrize('shape', [CLIP, (1, 5, 33, 35, 3)])
def test_r3d50_features_equal_model_gardens(r3d50, shape):
  """Even and odd sizes: TF's 'same' padding puts the odd pixel after, in both models."""
  encoder = r3d50['encoder']
  assert encoder.count_params() == r3d50['model'].backbone.count_params() == R3D50_PARAMS
  clips = _clips(shape)
  expected = _mg_features(r3d50['model'].backbone, clips)
  got = encoder(clips, training=False).numpy()
  assert got.shape == (shape[0], 2048)
  assert _relative(got, expected) <= _encoder_bound(encoder)


def test_projection_head_equals_model_gardens(r3d50):
  """The head as cvrl_export loads it; Model Garden's hidden biases folded into BN. The
  bound adds the head's Dense fan-ins to the encoder's."""
  encoder = r3d50['encoder']
  head = export.load_projection_head(r3d50['model_dir'], 2048)
  clips = _clips(CLIP, seed=1)
  expected = r3d50['model']({'image': clips}, training=False).numpy()
  got = head(encoder(clips, training=False), training=False).numpy()
  assert got.shape == expected.shape == (2, RELEASED_HEAD['projection_dim'])
  bound = rounding.float32_bound(rounding.encoder_fan_ins(encoder) +
                                 rounding.fan_ins(head.submodules))
  assert _relative(got, expected) <= bound


def test_model_dir_holds_specs_settings_and_provenance(r3d50):
  model_dir = r3d50['model_dir']
  spec = backbone_io.read_spec(model_dir)
  assert spec['name'] == 'r3d50' and spec['temporal_kernel_sizes'] == [1, 1, 3, 3]
  assert (spec['stem_strides'], spec['pool_size'], spec['pool_strides']) == (
      [2, 2, 2], [1, 3, 3], [1, 2, 2])
  # The experiment's, not the NormActivation dataclass's 1e-3 / 0.99.
  assert (spec['bn_epsilon'], spec['bn_momentum']) == (1e-5, 0.9)
  assert backbone_io.read_training(model_dir) == {
      'num_frames': 16, 'frame_stride': 2, 'target_fps': None, 'crop_size': 224}
  head = backbone_io.read_head_spec(model_dir)
  assert (head['num_hidden_layers'], head['hidden_dim'], head['output_dim']) == (3, 2048, 128)
  assert (head['bn_epsilon'], head['bn_momentum']) == (1e-5, 0.997)
  source = backbone_io.read_source(model_dir)
  assert source['checkpoint'] == r3d50['prefix']
  assert source['layout']['blocks_per_stage'] == [3, 4, 6, 3]
  assert source['settings']['norm_epsilon'] == 1e-5
  assert source['settings_from'] == {
      'release': 'video_ssl_pretrain', 'release_from': 'no released name in the path',
      'experiment': 'video_ssl_pretrain_kinetics600',
      'yaml_overrides': f'{model_garden.EXPERIMENTS_DIR}/{PRETRAIN_YAML} (task.model)',
      'flags': {}}
  check = source['feature_check']
  assert check['relative'] <= check['relative_bound'] == _encoder_bound(r3d50['encoder'])
  assert not [n for n in os.listdir(r3d50['root']) if '.tmp-' in n]


@pytest.fixture(scope='module')
def released_archive(r3d50, tmp_path_factory):
  """The release's form: tf.train.Checkpoint(backbone=...) named as the linear-eval
  yaml's init_checkpoint, r3d_1x_k600_800ep_backbone-1, in an archive named after the
  release (.tar; .tar.gz the same, slower to write)."""
  root = tmp_path_factory.mktemp('release')
  folder = root / 'r3d_1x_k600_800ep'
  tf.train.Checkpoint(backbone=r3d50['model'].backbone).write(
      str(folder / 'r3d_1x_k600_800ep_backbone-1'))
  archive = str(root / 'r3d_1x_k600_800ep.tar')
  with tarfile.open(archive, 'w') as tar:
    tar.add(str(folder), arcname='r3d_1x_k600_800ep')
  return archive


def test_released_form_found_by_name(r3d50, released_archive, tmp_path):
  """The released file's settings are found by its name and said."""
  stream = io.StringIO()
  source = model_garden_io.import_checkpoint(released_archive, str(tmp_path / 'imported'),
                                             progress_stream=stream)
  said = stream.getvalue()
  assert ('settings of r3d_1x_k600_800ep (from the checkpoint\'s name): Model Garden '
          'experiment video_ssl_pretrain_kinetics600 + ') in said
  assert 'backbone batch norm: epsilon 1e-05, momentum 0.9' in said
  assert source['settings_from']['release'] == 'r3d_1x_k600_800ep'
  assert source['checkpoint'].endswith(
      'r3d_1x_k600_800ep.tar:r3d_1x_k600_800ep/r3d_1x_k600_800ep_backbone-1')
  assert backbone_io.read_head_spec(str(tmp_path / 'imported')) is None
  encoder = backbone_io.load_backbone(str(tmp_path / 'imported'))
  clips = _clips(CLIP, seed=6)
  relative = _relative(encoder(clips, training=False).numpy(),
                       _mg_features(r3d50['model'].backbone, clips))
  assert relative <= _encoder_bound(encoder)


def test_wrong_epsilon_misses_the_bound_by_far(r3d50, released_archive, tmp_path, capsys):
  """The mutation check: the released file through cvrl_import --bn_epsilon=0.001 (the
  NormActivation default the importer used to assume). The import's own check cannot
  see it (its reference is built with the same epsilon); the comparison with the
  experiment's model must, by orders of magnitude over the float32 bound."""
  model_dir = str(tmp_path / 'wrong_epsilon')
  with flagsaver.flagsaver():
    flags.FLAGS(['cvrl_import', f'--checkpoint={released_archive}',
                 f'--model_dir={model_dir}', '--bn_epsilon=0.001'])
    assert import_cli.main([]) == 0
  err = capsys.readouterr().err
  assert 'settings of r3d_1x_k600_800ep (from the checkpoint\'s name)' in err
  assert 'backbone batch norm: epsilon 0.001, momentum 0.9' in err
  assert '--bn_epsilon=0.001 instead of the experiment\'s 1e-05' in err
  source = backbone_io.read_source(model_dir)
  assert source['settings_from']['flags'] == {
      'bn_epsilon': {'given': 0.001, 'experiment': 1e-05}}
  assert backbone_io.read_spec(model_dir)['bn_epsilon'] == 0.001
  encoder = backbone_io.load_backbone(model_dir)
  clips = _clips(CLIP)
  relative = _relative(encoder(clips, training=False).numpy(),
                       _mg_features(r3d50['model'].backbone, clips))
  assert relative > 100 * _encoder_bound(encoder), relative


def test_other_depth_r3d101_backbone_only(r3d101, tmp_path):
  model_dir = str(tmp_path / 'r3d101')
  model_garden_io.import_checkpoint(r3d101['prefix'], model_dir, backbone='r3d101')
  encoder = backbone_io.load_backbone(model_dir)
  clips = _clips((1, 5, 33, 33, 3), seed=2)
  expected = _mg_features(r3d101['backbone'], clips)
  # Was an absolute 1e-5: an AVX2-only Zen 3 gave 1.14e-5 on features of scale > 1.
  assert _relative(encoder(clips, training=False).numpy(), expected) <= _encoder_bound(
      encoder)
  assert backbone_io.read_head_spec(model_dir) is None


def test_linear_eval_checkpoint_keeps_backbone_leaves_classifier(tmp_path):
  """video_ssl's linear-evaluation model as the released yaml builds it
  (video_ssl_linear_eval_kinetics600 + cvrl_linear_eval_k600.yaml: Dense(600) on
  L2-normalized features), saved as the trainer saves it: the backbone is imported,
  the classifier is not."""
  tf_keras.utils.set_random_seed(3)
  config = _experiment('video_ssl_linear_eval_kinetics600', LINEAR_EVAL_YAML)
  task, model = _build(config)
  _randomize(model, 3)
  prefix = _save_as_trainer(task, config, model, str(tmp_path / 'linear'))
  layout = mg_checkpoint.read_layout(prefix)
  assert (layout.root, layout.classifier, layout.head) == ('model', 600, None)
  model_dir = str(tmp_path / 'imported')
  source = model_garden_io.import_checkpoint(prefix, model_dir)
  assert source['layout']['classifier_classes'] == 600
  assert backbone_io.read_head_spec(model_dir) is None
  clips = _clips(CLIP, seed=5)
  encoder = backbone_io.load_backbone(model_dir)
  got = encoder(clips, training=False).numpy()
  assert _relative(got, _mg_features(model.backbone, clips)) <= _encoder_bound(encoder)


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
  message = mg_checkpoint.difference(layout, _mg_settings(), 'asked')
  assert message == ('res3 has temporal kernels (3, 1, 3, 1) per block, asked has '
                     '(1, 1, 1, 1): the CVRL R3D uses one temporal kernel per stage')
  layout.stem = [(3, 7, 7, 3, 64)]
  assert mg_checkpoint.difference(layout, _mg_settings(), 'asked').startswith('its stem')


# --------------------------------------------------------------------------- reverse
def test_reverse_back_to_model_garden(r3d50, tmp_path):
  """The imported dir -> tf.train.Checkpoint(backbone=ResNet3D) and PREFIX.yaml. A Model
  Garden user's linear evaluation (--experiment=video_ssl_linear_eval_kinetics600
  --config_file=cvrl_linear_eval_k600.yaml --config_file=PREFIX.yaml) gets the
  experiment's batch-norm settings, restores every variable through the task's own
  initialize, bit for bit, and computes our features."""
  from official.modeling import hyperparams  # pylint: disable=g-import-not-at-top
  prefix = str(tmp_path / 'mg' / 'r3d50_backbone')
  stream = io.StringIO()
  model_garden_io.export_checkpoint(r3d50['model_dir'], prefix, stream)
  said = stream.getvalue()
  assert ('task.model.norm_activation: norm_epsilon 1e-05, norm_momentum 0.9 (as '
          'video_ssl\'s experiments have them)') in said
  assert f'--config_file={prefix}.yaml' in said
  with open(prefix + '.json') as f:
    assert json.load(f)['experiment_overrides']['task']['model']['norm_activation'] == {
        'norm_epsilon': 1e-5, 'norm_momentum': 0.9, 'activation': 'relu'}
  config = _experiment('video_ssl_linear_eval_kinetics600', LINEAR_EVAL_YAML)
  config = hyperparams.override_params_dict(config, prefix + '.yaml', is_strict=True)
  norm = config.task.model.norm_activation
  assert (norm.norm_epsilon, norm.norm_momentum) == (1e-5, 0.9)
  assert config.task.init_checkpoint == prefix
  task, model = _build(config)
  task.initialize(model)
  original = r3d50['model'].backbone
  assert len(model.backbone.weights) == len(original.weights)
  for restored, value in zip(model.backbone.weights, original.weights):
    np.testing.assert_array_equal(restored.numpy(), value.numpy())
  clips = _clips((2, 5, 33, 33, 3), seed=3)
  expected = r3d50['encoder'](clips, training=False).numpy()
  assert _relative(_mg_features(model.backbone, clips), expected) <= _encoder_bound(
      r3d50['encoder'])


def test_reverse_refuses_what_model_garden_cannot_hold(tmp_path):
  spec = backbone_io.spec_dict(name='r3d18', width_multiplier=0.25)
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
      ([f'--checkpoint={r3d50["prefix"]}', f'--model_dir={tmp_path}/e',
        '--release=r3d_1x_k400_900ep'], "unknown release 'r3d_1x_k400_900ep'"),
  ]
  for args, expected in cases:
    with flagsaver.flagsaver():
      flags.FLAGS(['cvrl_import'] + args)
      assert import_cli.main([]) == 2, args
    err = capsys.readouterr().err.strip()
    assert err.startswith('cvrl_import: error: ') and '\n' not in err, err
    assert expected in err, err
  assert not [n for n in os.listdir(tmp_path) if n != 'missing']


def test_import_export_hub_round_trip(r3d50, tmp_path):
  """cvrl_import -> cvrl_export -> hub.KerasLayer: Model Garden's features. In a new
  interpreter with CVRL_SLOW_TESTS=1 (a TensorFlow import and the R3D-50 SavedModel's
  load, ~20 s of the suite on 2 cores of an AMD EPYC Zen 4); in this process otherwise (test_export.py runs its round
  trip in a fresh process in every `make test`)."""
  export_dir = export.export_model_dir(r3d50['model_dir'], str(tmp_path / 'hub'),
                                       verify=False)
  metadata = export.read_metadata(export_dir)
  assert metadata['imported_from']['checkpoint'] == r3d50['prefix']
  assert metadata['training']['num_frames'] == 16
  clips_path, out_prefix = str(tmp_path / 'clips.npy'), str(tmp_path / 'out')
  clips = _clips((2, 5, 33, 33, 3), seed=4)
  np.save(clips_path, clips)
  if os.environ.get('CVRL_SLOW_TESTS'):
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, 'hub_roundtrip_check.py'), export_dir,
         clips_path, out_prefix], capture_output=True, text=True, timeout=600,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = {name: np.load(f'{out_prefix}_{name}.npy') for name in ('call', 'serving')}
  else:
    loaded = tf.saved_model.load(export_dir)
    outputs = {'call': hub.KerasLayer(export_dir)(clips).numpy(),
               'serving': loaded.signatures['serving_default'](
                   clips=tf.constant(clips))['embedding'].numpy()}
  expected = _mg_features(r3d50['model'].backbone, clips)
  for name in ('call', 'serving'):
    got = outputs[name]
    assert got.shape == (2, 2048)
    assert _relative(got, expected) <= _encoder_bound(r3d50['encoder']), name


# --------------------------------------------------------------------------- linear eval
def test_imported_linear_eval_config_is_the_released_yaml():
  """configs/linear_eval_k600_imported.gin against cvrl_linear_eval_k600.yaml (on its
  experiment), field by field; docs/import.md states the differences left."""
  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory
  from official.projects.video_ssl.configs import video_ssl  # registers the experiments
  from cvrl_tf.cli import gin_files
  from cvrl_tf.cli import settings
  # pylint: enable=g-import-not-at-top
  del video_ssl
  released = exp_factory.get_exp_config('video_ssl_linear_eval_kinetics600')
  released.override(_released_yaml(LINEAR_EVAL_YAML), is_strict=True)
  task, trainer = released.task, released.trainer
  try:
    gin_files.parse(['linear_eval_k600_imported.gin'], [])
    recipe = settings.build_recipe('linear_eval')
    schedule = recipe.schedule(recipe.num_train_examples)
    assert recipe.num_train_examples == task.train_data.num_examples  # 366,016
    assert schedule.total_steps == trainer.train_steps == 35744
    optimizer = trainer.optimizer_config
    assert schedule.warmup_steps == optimizer.warmup.linear.warmup_steps == 1787
    assert recipe.learning_rate == optimizer.learning_rate.cosine.initial_learning_rate == 32
    sgd = optimizer.optimizer.sgd
    assert (recipe.optimizer, recipe.momentum, sgd.momentum, sgd.nesterov) == (
        'sgd', 0.9, 0.9, False)  # ours: no Nesterov (optim.build_optimizer's default)
    assert recipe.global_batch_size == task.train_data.global_batch_size
    assert recipe.weight_decay == task.losses.l2_weight_decay == 0
    assert recipe.freeze_encoder and recipe.l2_normalize == task.model.normalize_feature
    assert recipe.dropout_rate == 0  # video_ssl's model never applies its dropout_rate.
    assert recipe.num_classes == task.train_data.num_classes == 600
    assert recipe.encoder_source == 'model_dir'
    assert [getattr(recipe.train_clips, k) for k in ('clip_len', 'stride', 'crop_size')] == [
        task.train_data.feature_shape[0], task.train_data.temporal_stride,
        task.train_data.feature_shape[1]]
    assert augment.CROP_AREA_RANGE == (task.train_data.aug_min_area_ratio,
                                       task.train_data.aug_max_area_ratio)
    assert augment.CROP_ASPECT_RANGE == (task.train_data.aug_min_aspect_ratio,
                                         task.train_data.aug_max_aspect_ratio)
    assert [getattr(recipe.test_views, k) for k in (
        'clip_len', 'stride', 'num_clips', 'num_crops', 'min_resize', 'crop_size')] == [
        task.validation_data.feature_shape[0], task.validation_data.temporal_stride,
        task.validation_data.num_test_clips, task.validation_data.num_test_crops,
        task.validation_data.min_image_size, task.validation_data.feature_shape[1]]
  finally:
    gin.clear_config()
