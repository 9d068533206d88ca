"""R3D encoders: parameter counts, shapes, temporal receptive field, bf16, options.

Fast by design: full-width models are only built once (R3D-18, R3D-50) and never run;
forward passes use 1/4-width models on tiny clips. Set CVRL_SLOW_TESTS=1 to also build
every variant at full size and compare its count directly (~1 min, ~3 GB of RAM).
"""

import collections
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.models import flops
from cvrl_tf.models import r3d
from cvrl_tf.runtime import precision

PARAMS = {  # (name, width multiplier) -> parameters incl. BN moving statistics
    ('r3d18', 1): 20_071_104,
    ('r3d34', 1): 39_623_872,
    ('r3d50', 1): 31_725_248,
    ('r3d50', 2): 126_594_432,
    ('r3d50', 4): 505_764_608,
    ('r3d101', 1): 59_682_496,
    ('r3d152', 1): 82_187_968,
    ('r3d200', 1): 86_693_568,
}


@pytest.fixture(scope='module')
def r3d50():
  return r3d.build_backbone('r3d50', output='endpoints', kernel_initializer='zeros')


@pytest.fixture(scope='module')
def r3d18():
  return r3d.build_backbone('r3d18', output='endpoints', kernel_initializer='zeros')


@pytest.fixture(scope='module')
def small50():
  """R3D-50 at 1/4 width (16..512 channels, 2048 -> 512 output), random weights."""
  tf_keras.utils.set_random_seed(0)
  return r3d.build_backbone('r3d50', width_multiplier=0.25, output='endpoints')


def _per_block_params(model):
  """{'stem': n, 'res2_block1': n, ...} from layer names."""
  counts = collections.Counter()
  for layer in model.layers:
    match = re.match(r'(stem|res\d_block\d+)_', layer.name)
    if match:
      counts[match.group(1)] += layer.count_params()
  return counts


def _predict_params(per_block, blocks):
  """Count for another depth of the same block type: later blocks of a stage are equal."""
  total = per_block['stem']
  for stage, n in zip(r3d.STAGE_NAMES, blocks):
    total += per_block[f'{stage}_block1'] + (n - 1) * per_block[f'{stage}_block2']
  return total


def test_r3d50_params_and_cvrl_shape(r3d50):
  assert r3d50.count_params() == PARAMS[('r3d50', 1)] == 31_725_248
  shapes = flops.output_shapes(r3d50, (16, 224, 224, 3))
  assert shapes['feature_map'] == (1, 8, 7, 7, 2048)
  assert shapes['pooled'] == (1, 2048)
  assert shapes['res2'] == (1, 8, 56, 56, 256)
  assert shapes['res4'] == (1, 8, 14, 14, 1024)


def test_deeper_bottleneck_variants_by_block_arithmetic(r3d50):
  per_block = _per_block_params(r3d50)
  assert _predict_params(per_block, r3d.LAYOUTS[50][1]) == r3d50.count_params()
  for depth in (101, 152, 200):
    assert _predict_params(per_block, r3d.LAYOUTS[depth][1]) == PARAMS[(f'r3d{depth}', 1)]


def test_basic_block_variants(r3d18):
  assert r3d18.count_params() == PARAMS[('r3d18', 1)]
  per_block = _per_block_params(r3d18)
  assert _predict_params(per_block, r3d.LAYOUTS[34][1]) == PARAMS[('r3d34', 1)]
  assert r3d18.output_shape['pooled'] == (None, 512)
  assert r3d.output_dim('r3d18') == 512 and r3d.output_dim('r3d50', 4) == 8192


def test_wider_variants_by_exact_quadratic(r3d50, small50):
  # No biases in the encoder: P(w) = A w^2 (conv-conv) + B w (stem conv on 3 channels,
  # BN), exactly, so two widths determine every other.
  p1, p_quarter = r3d50.count_params(), small50.count_params()
  b = (16 * p_quarter - p1) / 3
  a = p1 - b
  assert a == int(a) and b == int(b)
  assert 4 * a + 2 * b == PARAMS[('r3d50', 2)]
  assert 16 * a + 4 * b == PARAMS[('r3d50', 4)]


@pytest.mark.skipif(not os.environ.get('CVRL_SLOW_TESTS'), reason='set CVRL_SLOW_TESTS=1')
@pytest.mark.parametrize('name,width', sorted(PARAMS))
def test_every_variant_built(name, width):
  model = r3d.build_backbone(name, width_multiplier=width, kernel_initializer='zeros')
  assert model.count_params() == PARAMS[(name, width)]
  assert model.output_shape == (None, r3d.output_dim(name, width))
  tf_keras.backend.clear_session()


@pytest.mark.skipif(not os.environ.get('CVRL_SLOW_TESTS'), reason='set CVRL_SLOW_TESTS=1')
def test_r3d18_without_temporal_kernels():
  model = r3d.build_backbone('r3d18', temporal_kernel_sizes=(1, 1, 1, 1),
                             kernel_initializer='zeros')
  assert model.count_params() == 11_223_744


@pytest.mark.parametrize('clip,feature_map', [
    ((8, 64, 64), (4, 2, 2)),
    ((16, 96, 80), (8, 3, 3)),   # 'same' padding: ceil at every stride
    ((3, 33, 47), (2, 2, 2)),
])
def test_output_shapes_dynamic_input(small50, clip, feature_map):
  out = small50(tf.zeros((2,) + clip + (3,)), training=False)
  assert out['feature_map'].shape == (2,) + feature_map + (512,)
  assert out['pooled'].shape == (2, 512)
  np.testing.assert_allclose(
      out['pooled'], tf.reduce_mean(out['feature_map'], axis=(1, 2, 3)), rtol=1e-5,
      atol=1e-6)


def test_receptive_field_arithmetic_by_hand():
  # Stem: 5 taps, stride 2, 'same' on 32 frames pads 1 before: output t reads 2t-1..2t+3.
  got = r3d.temporal_receptive_field(0, 32)
  assert got['stem'] == got['res2'] == got['res3'] == {0}
  assert got['res4'] == set(range(7))    # 6 blocks, each [3, 1, 1]: +1 per block
  assert got['res5'] == set(range(10))   # 3 more blocks
  got = r3d.temporal_receptive_field(15, 32)
  assert got['stem'] == got['res3'] == {6, 7, 8}
  assert got['res4'] == set(range(15))
  assert got['res5'] == set(range(16))


@pytest.mark.parametrize('frame', [0, 15, 31])
def test_temporal_receptive_field_of_model(small50, frame):
  rng = np.random.default_rng(frame)
  clip = rng.uniform(size=(1, 32, 32, 32, 3)).astype(np.float32)
  changed = clip.copy()
  changed[:, frame] = rng.uniform(size=changed[:, frame].shape)
  before = small50(clip, training=False)
  after = small50(changed, training=False)
  expected = r3d.temporal_receptive_field(frame, 32)
  for stage in ('stem',) + r3d.STAGE_NAMES:
    diff = np.abs(after[stage].numpy() - before[stage].numpy()).max(axis=(0, 2, 3, 4))
    # Outside the receptive field the inputs are identical, so outputs match bit for bit;
    # inside, the influence decays geometrically towards the edge (down to ~1e-6 of the
    # activations at res5) but is never exactly 0 with random weights.
    assert {t for t, d in enumerate(diff) if d > 0} == expected[stage], stage


def test_mixed_bfloat16_outputs_float32(bf16_policy):
  model = r3d.build_backbone('r3d18', width_multiplier=0.25, output='endpoints')
  assert model.get_layer('stem_conv').compute_dtype == 'bfloat16'
  assert model.get_layer('stem_conv').kernel.dtype == tf.float32
  out = model(tf.random.uniform((1, 8, 32, 32, 3)), training=True)
  for key, value in out.items():
    assert value.dtype == tf.float32, key
  assert np.isfinite(out['pooled'].numpy()).all()


@pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')),
                    reason="'auto' keeps the usual kernel on a GPU")
@pytest.mark.parametrize('policy', ['float32', 'mixed_bfloat16'])
def test_r3d50_routes_of_the_kernel_gradients(policy):
  with precision.dtype_policy(policy):
    model = r3d.build_backbone('r3d50', width_multiplier=0.25)
  by_route = {True: set(), False: set()}
  for layer in model.layers:
    if isinstance(layer, tf_keras.layers.Conv3D):
      by_route[layer.uses_matmul_kernel_gradient()].add(layer.name)
  # Shapes unknown (None): conv_a ([1 or 3, 1, 1]), conv_c ([1, 1, 1]) and res2's
  # stride-1 projection take the GEMMs in both precisions.
  assert {'res2_block1_conv_a', 'res4_block1_conv_a', 'res5_block3_conv_c',
          'res2_block1_proj'} <= by_route[True]
  # Spatial kernels, and strided projections of unknown size, keep the usual kernel.
  assert {'stem_conv', 'res2_block1_conv_b', 'res3_block1_proj'} <= by_route[False]
  assert len(by_route[True]) == 2 * 16 + 1 and len(by_route[False]) == 1 + 16 + 3
  # At 8 x 112 x 112 (res5 at 4 x 4): every res5 layer, strided ones too.
  for name in ('res5_block1_proj', 'res5_block1_conv_b', 'res5_block2_conv_b'):
    layer = model.get_layer(name)
    shape = {'res5_block1_proj': (2, 4, 7, 7, 256), 'res5_block1_conv_b': (2, 4, 7, 7, 128),
             'res5_block2_conv_b': (2, 4, 4, 4, 128)}[name]
    assert layer.uses_matmul_kernel_gradient(shape), name
  assert not model.get_layer('res4_block2_conv_b').uses_matmul_kernel_gradient(
      (2, 4, 7, 7, 64))
  if policy == 'float32':  # The argument reaches every layer (a build takes ~2 s).
    usual = r3d.build_backbone('r3d50', width_multiplier=0.25, kernel_gradient='conv')
    assert not any(layer.uses_matmul_kernel_gradient() for layer in usual.layers
                   if isinstance(layer, tf_keras.layers.Conv3D))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(tf.random.uniform((2, 4, 32, 32, 3)), training=True))
  grads = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


def test_default_output_and_options():
  pooled = r3d.build_backbone('r3d18', width_multiplier=0.25)
  assert pooled.name == 'r3d18_0.25x'
  assert pooled.output_shape == (None, 128)
  # Keep all frames through the stem (short clips): 8 frames stay 8 time steps.
  fmap = r3d.build_backbone('R3D-18', width_multiplier=0.25, stem_strides=(1, 2, 2),
                            output='feature_map', use_sync_bn=True)
  assert fmap(tf.zeros((1, 8, 32, 32, 3)), training=False).shape == (1, 8, 1, 1, 128)
  bns = [l for l in fmap.layers if isinstance(l, tf_keras.layers.BatchNormalization)]
  # Sync BN is plain BN on one replica, so the (faster, fused) plain BN is built.
  assert bns and not any(l.synchronized for l in bns) and all(l.fused for l in bns)
  assert all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bns)
  assert fmap(tf.zeros((2, 8, 32, 32, 3)), training=True).shape == (2, 8, 1, 1, 128)


def test_sync_bn_with_several_replicas(monkeypatch):
  class TwoReplicas:
    num_replicas_in_sync = 2
  monkeypatch.setattr(tf.distribute, 'get_strategy', TwoReplicas)
  model = r3d.build_backbone('r3d18', width_multiplier=0.25, use_sync_bn=True)
  bns = [l for l in model.layers if isinstance(l, tf_keras.layers.BatchNormalization)]
  assert bns and all(l.synchronized for l in bns)
  plain = r3d.build_backbone('r3d18', width_multiplier=0.25, use_sync_bn=False)
  assert not any(l.synchronized for l in plain.layers
                 if isinstance(l, tf_keras.layers.BatchNormalization))


def test_cvrl_bottleneck_layout(small50):
  kernels = {l.name: (l.kernel_size, l.strides) for l in small50.layers
             if isinstance(l, tf_keras.layers.Conv3D)}
  assert kernels['stem_conv'] == ((5, 7, 7), (2, 2, 2))
  assert kernels['res2_block1_conv_a'][0] == (1, 1, 1)
  assert kernels['res3_block4_conv_a'][0] == (1, 1, 1)
  assert kernels['res4_block1_conv_a'] == ((3, 1, 1), (1, 1, 1))
  assert kernels['res5_block3_conv_a'] == ((3, 1, 1), (1, 1, 1))
  assert kernels['res4_block1_conv_b'] == ((1, 3, 3), (1, 2, 2))
  assert kernels['res2_block1_proj'] == ((1, 1, 1), (1, 1, 1))   # 16 -> 64 channels
  assert 'res2_block2_proj' not in kernels
  pool = small50.get_layer('stem_pool')
  assert pool.pool_size == (1, 3, 3) and pool.strides == (1, 2, 2)
  assert not any(l.use_bias for l in small50.layers if isinstance(l, tf_keras.layers.Conv3D))


def test_bad_arguments():
  with pytest.raises(ValueError, match='unknown backbone'):
    r3d.build_backbone('r3d42')
  with pytest.raises(ValueError, match='non-integer'):
    r3d.build_backbone('r3d18', width_multiplier=0.3)
  with pytest.raises(ValueError, match='one entry per stage'):
    r3d.build_backbone('r3d18', temporal_kernel_sizes=(1, 3))
  with pytest.raises(ValueError, match='output must be'):
    r3d.build_backbone('r3d18', output='logits')
