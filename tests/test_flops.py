"""FLOPs counter against hand-computed cases and the documented R3D-50 figures."""

import pytest
import tf_keras

from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import r3d


def test_single_conv3d_by_hand():
  inputs = tf_keras.Input((8, 16, 16, 3))
  outputs = tf_keras.layers.Conv3D(5, (3, 3, 3), strides=(1, 2, 2), padding='same',
                                   name='conv')(inputs)
  model = tf_keras.Model(inputs, outputs)
  # Output 8 x 8 x 8 x 5, each a 3*3*3*3-term dot product: 2 FLOPs per multiply-add.
  assert flops.count_flops(model) == 2 * (8 * 8 * 8 * 5) * (3 * 3 * 3 * 3)
  (row,) = flops.flops_table(model)
  assert row.layer == 'conv' and row.op == 'Conv3D' and row.output_shape == (8, 8, 8, 5)


def test_dense_on_5d_input_and_dynamic_model_by_hand():
  inputs = tf_keras.Input((None, None, None, 6))
  x = tf_keras.layers.Dense(4, name='pointwise')(inputs)     # tensordot -> MatMul
  x = tf_keras.layers.GlobalAveragePooling3D()(x)             # not counted
  outputs = tf_keras.layers.Dense(10, name='fc')(x)
  model = tf_keras.Model(inputs, outputs)
  with pytest.raises(ValueError, match='fully defined'):
    flops.count_flops(model)
  rows = flops.flops_table(model, (2, 3, 5, 6))
  assert [r.layer for r in rows] == ['pointwise', 'fc']
  assert rows[0].flops == 2 * (2 * 3 * 5) * 6 * 4
  assert rows[1].flops == 2 * 4 * 10
  assert flops.output_shapes(model, (2, 3, 5, 6)) == (1, 10)


def test_projection_head_flops():
  inputs = tf_keras.Input((2048,))
  model = tf_keras.Model(inputs, heads.ProjectionHead()(inputs))
  assert flops.count_flops(model) == 2 * (3 * 2048 * 2048 + 2048 * 128)


def test_r3d50_documented_figures():
  model = r3d.build_backbone('r3d50', kernel_initializer='zeros')
  rows = flops.flops_table(model, (16, 224, 224, 3))
  total = sum(r.flops for r in rows)
  assert total == 91_032_911_872                 # 91.03 GFLOPs per 16x224x224 clip
  stem = rows[0]
  assert stem.layer == 'stem_conv' and stem.output_shape == (8, 112, 112, 64)
  assert stem.flops == 2 * (8 * 112 * 112 * 64) * (5 * 7 * 7 * 3)
  # 53 convs: stem + 16 blocks x 3 + 4 projections.
  assert len(rows) == 53
  assert flops.count_flops(model, (8, 112, 112, 3)) == 11_937_480_704
  text = flops.format_flops_table(rows, top=5)
  assert 'stem_conv' in text and '91.033' in text and len(text.splitlines()) == 7


def test_nested_model_rows_keep_layer_path():
  encoder = r3d.build_backbone('r3d18', width_multiplier=0.25, kernel_initializer='zeros')
  inputs = tf_keras.Input((None, None, None, 3))
  head = heads.ProjectionHead(num_hidden_layers=2, hidden_dim=16, output_dim=8,
                              name='head')
  model = tf_keras.Model(inputs, head(encoder(inputs)))
  rows = flops.flops_table(model, (8, 32, 32, 3))
  assert rows[0].layer == 'r3d18_0.25x/stem_conv'
  assert [r.layer for r in rows[-3:]] == ['head/dense_0', 'head/dense_1', 'head/output']
  assert sum(r.flops for r in rows[:-3]) == flops.count_flops(encoder, (8, 32, 32, 3))
