"""encoder_source: a stored backbone is rebuilt as stored, with this run's speed settings."""

import pytest
import tf_keras

from cvrl_tf.models import backbone_io
from cvrl_tf.models import encoder_source
from cvrl_tf.models import r3d

TINY = dict(name='r3d18', width_multiplier=0.25)


@pytest.fixture
def pretrain_dir(tmp_path):
  spec = backbone_io.spec_dict(**TINY)
  assert spec['kernel_gradient'] == 'auto'  # what a pretraining run stores by default
  backbone_io.save_backbone(backbone_io.build_from_spec(spec), spec, str(tmp_path), step=1)
  return str(tmp_path)


def _routes(encoder):
  return {layer.kernel_gradient for layer in encoder.layers
          if isinstance(layer, tf_keras.layers.Conv3D)}


def test_kernel_gradient_applies_to_a_stored_backbone(pretrain_dir):
  asked = r3d.EncoderSpec(**TINY, kernel_gradient='conv')
  encoder, info = encoder_source.build_encoder('model_dir', pretrain_dir, architecture=asked)
  assert _routes(encoder) == {'conv'} and info['backbone_spec']['kernel_gradient'] == 'conv'
  encoder, info = encoder_source.build_encoder('model_dir', pretrain_dir)
  assert _routes(encoder) == {'auto'}


def test_an_architecture_asked_for_must_match_the_stored_backbone(pretrain_dir):
  asked = r3d.EncoderSpec(name='r3d18', width_multiplier=0.5)
  with pytest.raises(ValueError, match=r'not the architecture.*width_multiplier'):
    encoder_source.build_encoder('model_dir', pretrain_dir, architecture=asked)
