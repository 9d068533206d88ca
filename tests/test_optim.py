"""Schedules against hand-computed values; SGD / LARS construction; LARS exclusions."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.runtime import optim


def _lr_at(optimizer, step):
  optimizer.iterations.assign(step)
  return float(optim.current_learning_rate(optimizer))


@pytest.mark.parametrize('name', ['sgd', 'lars'])
def test_warmup_then_cosine_hand_computed(name):
  opt = optim.build_optimizer(total_steps=100, warmup_steps=10, name=name,
                              base_learning_rate=0.32)
  hand = {
      0: 0.0,
      5: 0.16,                                            # half-way up the ramp
      10: 0.32,                                           # peak when warm-up ends
      25: 0.32 * (1 + math.cos(math.pi / 6)) / 2,         # 15/90 of the cosine
      55: 0.16,                                           # cosine half-way
      100: 0.0,
      130: 0.0,                                           # stays at the floor
  }
  for step, want in hand.items():
    assert _lr_at(opt, step) == pytest.approx(want, abs=1e-6), step
    assert optim.schedule_value(step, 0.32, 100, 10) == pytest.approx(want, abs=1e-9)


def test_no_warmup_and_alpha_floor():
  schedule = optim.build_schedule(1.0, total_steps=40, warmup_steps=0, alpha=0.1)
  assert float(schedule(0)) == pytest.approx(1.0)
  assert float(schedule(20)) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
  assert float(schedule(40)) == pytest.approx(0.1, abs=1e-6)
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.build_schedule(1.0, total_steps=10, warmup_steps=11)


def test_linear_scaling():
  assert optim.peak_learning_rate(0.3, 4096, linear_scaling=True) == pytest.approx(4.8)
  assert optim.peak_learning_rate(0.3, 4096, linear_scaling=False) == 0.3
  with pytest.raises(ValueError, match='global batch'):
    optim.peak_learning_rate(0.3, None, linear_scaling=True)
  opt = optim.build_optimizer(total_steps=10, global_batch_size=512, linear_scaling=True,
                              base_learning_rate=0.1)
  assert _lr_at(opt, 0) == pytest.approx(0.2)


def test_sgd_is_the_released_config():
  opt = optim.build_optimizer(total_steps=10)
  assert isinstance(opt, tf_keras.optimizers.legacy.SGD)
  config = opt.get_config()
  assert config['momentum'] == 0.9 and not config['nesterov']
  assert _lr_at(opt, 0) == pytest.approx(0.32)
  with pytest.raises(ValueError, match='unknown optimizer'):
    optim.build_optimizer(total_steps=10, name='adam')


def test_lars_excludes_bn_and_biases():
  opt = optim.build_optimizer(total_steps=10, name='lars', lars_weight_decay=1e-4)
  adapted = ['conv/kernel:0', 'res2/block0/conv_a/kernel:0', 'dense/kernel/replica_1:0',
             'betaconv/kernel:0', 'gamma_net/dense/kernel:0']
  excluded = ['bn/gamma:0', 'bn/beta:0', 'dense/bias:0', 'head/bn_0/gamma/replica_1:0',
              'out/bias/replica_3:0']
  for name in adapted:
    assert optim.is_adapted(name), name
    assert opt._do_layer_adaptation(name) and opt._use_weight_decay(name), name  # pylint: disable=protected-access
  for name in excluded:
    assert not optim.is_adapted(name), name
    assert not opt._do_layer_adaptation(name), name  # pylint: disable=protected-access
    assert not opt._use_weight_decay(name), name  # pylint: disable=protected-access


def test_lars_step_numbers():
  """Kernel: lr * eeta * ||w|| / ||g|| * g; bias (excluded): plain lr * g."""
  dense = tf_keras.layers.Dense(3, name='dense', bias_initializer='ones')
  dense.build((None, 4))
  opt = optim.build_optimizer(total_steps=1000, name='lars', base_learning_rate=0.5,
                              lars_eeta=0.01)
  w, b = dense.kernel.numpy(), dense.bias.numpy()
  gw = np.random.RandomState(0).randn(*w.shape).astype(np.float32)
  gb = np.array([10.0, -20.0, 30.0], np.float32)
  opt.apply_gradients([(tf.constant(gw), dense.kernel), (tf.constant(gb), dense.bias)])
  trust = 0.01 * np.linalg.norm(w) / np.linalg.norm(gw)
  np.testing.assert_allclose(dense.kernel.numpy(), w - 0.5 * trust * gw, rtol=1e-5)
  np.testing.assert_allclose(dense.bias.numpy(), b - 0.5 * gb, rtol=1e-5)


def test_current_learning_rate_for_every_optimizer_kind():
  schedule = optim.build_schedule(1.0, total_steps=10, warmup_steps=4)
  kinds = [tf_keras.optimizers.legacy.SGD(schedule), tf_keras.optimizers.SGD(schedule),
           tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.SGD(schedule))]
  for opt in kinds:
    opt.iterations.assign(2)
    assert float(optim.current_learning_rate(opt)) == pytest.approx(0.5), type(opt)
  assert float(optim.current_learning_rate(tf_keras.optimizers.legacy.SGD(0.3))) == (
      pytest.approx(0.3))
  assert float(optim.current_learning_rate(tf_keras.optimizers.SGD(0.3))) == (
      pytest.approx(0.3))


def test_gin_binding_is_unambiguous():
  """Model Garden registers its own `build_optimizer` with gin: ours is `cvrl_optimizer`
  (an OptimizerSpec, cli/settings.py)."""
  from cvrl_tf.cli import settings  # pylint: disable=g-import-not-at-top
  try:
    gin.parse_config(["cvrl_optimizer.name = 'lars'",
                      'cvrl_optimizer.base_learning_rate = 1.5'])
    spec = settings.build_part('cvrl_optimizer')
  finally:
    gin.clear_config()
  opt = optim.build_optimizer(10, spec=spec)
  assert type(opt).__name__ == 'LARS'
  assert _lr_at(opt, 0) == pytest.approx(1.5)
