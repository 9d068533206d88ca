"""CVRLPretrainer on one device: learning, weight decay, inputs, precision, XLA, metrics.

Multi-replica behaviour (gradients equal to one device) is in test_distribute.py.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
import strategy_worker  # tests/ is on sys.path under pytest  # pylint: disable=g-bad-import-order

B = 4  # videos per batch


def _batch(seed=0):
  v1, v2 = strategy_worker.views(seed, B)
  return np.concatenate([v1, v2])


def _model(optimizer=None, jit_compile=False, **kwargs):
  model = strategy_worker.build_model(seed=0, sync_bn=False, **kwargs)
  model.compile(optimizer=optimizer or tf_keras.optimizers.legacy.SGD(0.0),
                jit_compile=jit_compile)
  model.build_for_training()
  return model


def _step(model, data):
  """One train_step called eagerly (no tracing: fast), metrics of that step only."""
  model.reset_metrics()
  return {k: float(v) for k, v in model.train_step(data).items()}


def _fit(model, data, steps=1, epochs=1):
  ds = tf.data.Dataset.from_tensors(data).repeat()
  history = model.fit(ds, steps_per_epoch=steps, epochs=epochs, verbose=0).history
  return {k: np.array(v) for k, v in history.items()}


def test_train_step_learns_toy_problem():
  model = _model(optim.build_optimizer(total_steps=40, warmup_steps=2,
                                       base_learning_rate=0.2))
  history = _fit(model, {'clips': _batch()}, steps=3, epochs=8)
  assert np.all(np.isfinite(history['loss']))
  assert history['contrastive_loss'][-1] < 0.7 * history['contrastive_loss'][0], history
  assert history['contrastive_acc'][-1] >= history['contrastive_acc'][0]
  assert int(model.optimizer.iterations.numpy()) == 24
  assert set(history) == {'loss', 'contrastive_loss', 'contrastive_acc', 'entropy',
                          'weight_decay', 'learning_rate'}


def test_weight_decay_is_numpy_over_kernels_only():
  model = _model(weight_decay=0.01)  # lr 0: weights do not move
  names = [v.name for v in model.decayed_variables()]
  assert sorted(names) == ['conv/kernel:0', 'hidden/kernel:0', 'out/kernel:0']
  want = 0.01 * sum(0.5 * np.sum(np.square(v.numpy().astype(np.float64)))
                    for v in model.trainable_variables if 'kernel' in v.name)
  logs = _step(model, _batch())
  assert logs['weight_decay'] == pytest.approx(want, rel=1e-5)
  assert logs['loss'] == pytest.approx(logs['contrastive_loss'] + want, rel=1e-5)


def test_weight_decay_gradient_touches_kernels_only():
  """Same step with and without decay: updates differ by lr * wd * kernel, else not."""
  data = _batch(1)
  moved = {}
  for wd in (0.0, 0.5):
    model = _model(tf_keras.optimizers.legacy.SGD(1.0), weight_decay=wd)
    before = {v.name: v.numpy() for v in model.trainable_variables}
    _step(model, data)
    moved[wd] = {v.name: before[v.name] - v.numpy() for v in model.trainable_variables}
  initial = {v.name: v.numpy() for v in _model().trainable_variables}  # same seed
  for name, delta in moved[0.5].items():
    extra = delta - moved[0.0][name]
    if 'kernel' in name:
      np.testing.assert_allclose(extra, 0.5 * initial[name], atol=1e-5, err_msg=name)
    else:
      np.testing.assert_allclose(extra, 0.0, atol=1e-5, err_msg=name)


def test_input_forms_agree():
  """Tensor, {'clips': ...}, (x,) tuples and uint8 clips give the same step."""
  pixels = np.random.RandomState(2).randint(0, 256, size=(2 * B,) + strategy_worker.CLIP_SHAPE)
  as_float = (pixels / 255.0).astype(np.float32)
  model = _model()
  losses = [_step(model, data)['loss'] for data in (
      as_float, {'clips': as_float}, (as_float,), {'clips': pixels.astype(np.uint8)})]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-6)


def test_learning_rate_metric_follows_schedule():
  model = _model(optim.build_optimizer(total_steps=20, warmup_steps=4,
                                       base_learning_rate=0.4))
  # Step s is taken with lr(s): 0, 0.1, 0.2 during the warm-up.
  rates = [_step(model, _batch())['learning_rate'] for _ in range(3)]
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2], atol=1e-6)


def test_build_for_training_creates_optimizer_slots():
  model = _model(tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9))
  slots = [v for v in model.optimizer.variables() if 'momentum' in v.name]
  assert len(slots) == len(model.trainable_variables)
  assert len(model.weights) == 12  # metric accumulators are not model weights


def test_xla_matches_eager():
  data = _batch(3)
  eager_model = _model(tf_keras.optimizers.legacy.SGD(0.1))
  eager = [_step(eager_model, data) for _ in range(2)]
  xla = _fit(_model(tf_keras.optimizers.legacy.SGD(0.1), jit_compile=True), data,
             steps=1, epochs=2)
  for key in ('loss', 'contrastive_acc', 'entropy'):
    np.testing.assert_allclose(xla[key], [e[key] for e in eager], rtol=1e-4, err_msg=key)


def test_mixed_bfloat16_loss_is_float32():
  float32_loss = _step(_model(), _batch())['contrastive_loss']
  with precision.dtype_policy('mixed_bfloat16'):
    model = _model(tf_keras.optimizers.legacy.SGD(0.1))
    first = _step(model, _batch())
    logs = _fit(model, _batch(), steps=2)
    embeddings = model(_batch(), training=False)
  assert model.encoder.layers[0].compute_dtype == 'bfloat16'
  assert embeddings.dtype == tf.bfloat16  # the stand-in head returns bf16 ...
  assert first['contrastive_loss'] == pytest.approx(float32_loss, rel=0.05)  # ... loss f32
  assert all(np.all(np.isfinite(v)) for v in logs.values())
  assert all(v.dtype == tf.float32 for v in model.trainable_variables)


def test_finishes_deferred_augmentation():
  """Pipeline batches with colour / resize left to the step (batch.finish_batch)."""
  n, (t, s, _, _) = 2 * B, strategy_worker.CLIP_SHAPE
  rng = np.random.RandomState(4)
  pixels = rng.randint(0, 256, size=(n, t, s, s, 3)).astype(np.uint8)
  views = np.repeat([1, 2], B).astype(np.int32)
  model = _model()
  plain = _step(model, {'clips': pixels})['loss']
  coloured = _step(model, {'clips': pixels, 'colour_view': views})['loss']
  assert np.isfinite(coloured) and coloured != pytest.approx(plain, rel=1e-6)
  deferred = {'crops': rng.randint(0, 256, size=(n, t, 20, 24, 3)).astype(np.uint8),
              'crop_hw': np.tile([[17, 23]], [n, 1]).astype(np.int32),
              'flip': rng.rand(n) < 0.5, 'colour_view': views}
  with pytest.raises(ValueError, match='crop_size'):
    _step(model, deferred)
  assert np.isfinite(_step(_model(crop_size=s), deferred)['loss'])
  # build_pretrain_dataset(defer='resize'/'colour') keeps the two views apart.
  two_views = {'view1': {k: x[:B] for k, x in deferred.items()},
               'view2': {k: x[B:] for k, x in deferred.items()}}
  with pytest.raises(ValueError, match='crop_size'):
    _step(model, two_views)
  assert np.isfinite(_step(_model(crop_size=s), two_views)['loss'])


def test_evaluate_reports_contrastive_metrics():
  model = _model()
  logs = model.evaluate(tf.data.Dataset.from_tensors({'clips': _batch()}), verbose=0,
                        return_dict=True)
  assert {'loss', 'contrastive_acc', 'entropy', 'weight_decay'} <= set(logs)
  assert 0.0 < logs['entropy'] <= np.log(2 * B - 1) + 1e-5


# ------------------------------------------------------- float16 with loss scaling
def _static_scale(scale, lr=0.5):
  return tf_keras.mixed_precision.LossScaleOptimizer(
      tf_keras.optimizers.legacy.SGD(lr), dynamic=False, initial_scale=scale)


def _updates(model, data):
  before = [v.numpy() for v in model.trainable_variables]
  logs = _step(model, data)
  return [b - v.numpy() for b, v in zip(before, model.trainable_variables)], logs


def test_loss_scaled_step_equals_the_unscaled_step():
  """Scaled loss, unscaled gradients: the same update as plain SGD (float32 model, so
  only the scaling logic is under test; powers of 2 scale exactly)."""
  data = _batch(5)
  want, want_logs = _updates(_model(tf_keras.optimizers.legacy.SGD(0.5), weight_decay=1e-3),
                             data)
  got, logs = _updates(_model(_static_scale(1024.0), weight_decay=1e-3), data)
  assert logs['loss_scale'] == 1024.0 and logs['loss'] == pytest.approx(want_logs['loss'])
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


def test_mixed_float16_step_tracks_float32():
  data = _batch(6)
  want, want_logs = _updates(_model(tf_keras.optimizers.legacy.SGD(0.5)), data)
  with precision.dtype_policy('mixed_float16'):
    model = _model(_static_scale(128.0))
  assert model.encoder.layers[0].compute_dtype == 'float16'
  got, logs = _updates(model, data)
  assert logs['contrastive_loss'] == pytest.approx(want_logs['contrastive_loss'], rel=0.01)
  for g, w in zip(got, want):  # float16 compute: agreement to ~1% of the largest entry.
    np.testing.assert_allclose(g, w, atol=0.02 * np.abs(w).max())
  assert all(v.dtype == tf.float32 for v in model.trainable_variables)


def test_mixed_float16_compile_wraps_a_dynamic_loss_scale():
  with precision.dtype_policy('mixed_float16'):
    model = _model(tf_keras.optimizers.legacy.SGD(0.5))
  assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  assert model.optimizer.dynamic
  assert optim.base_optimizer(model.optimizer) is model.optimizer.inner_optimizer


def test_overflowing_step_is_skipped_not_a_nan_failure(tmp_path):
  """Gradients that overflow float16 skip the update and halve the scale; the loss (in
  float32) stays finite, so the train loop's NaN guard does not stop the run."""
  from cvrl_tf.runtime import train_loop  # pylint: disable=g-import-not-at-top
  with precision.dtype_policy('mixed_float16'):
    model = _model(tf_keras.mixed_precision.LossScaleOptimizer(
        tf_keras.optimizers.legacy.SGD(0.5), initial_scale=2.0 ** 40))
  before = [v.numpy() for v in model.trainable_variables]
  updates, logs = _updates(model, _batch(7))
  assert np.isfinite(logs['loss']) and logs['loss_scale'] == 2.0 ** 39
  assert all(np.all(u == 0) for u in updates)
  assert int(model.optimizer.iterations.numpy()) == 1  # a skipped step still counts
  for v, b in zip(model.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), b)
  ds = lambda step: tf.data.Dataset.from_tensors({'clips': _batch(8)}).repeat()
  logs = train_loop.fit_resumable(model, ds, str(tmp_path), total_steps=4,
                                  strategy=tf.distribute.get_strategy(),
                                  cadence=train_loop.Cadence(checkpoint_every=2, log_every=1),
                                  progress_stream=None)
  assert np.isfinite(logs['loss']) and logs['loss_scale'] < 2.0 ** 39
  # The step is where every precision stores it, and a float16 checkpoint restores into
  # a float32 model (its loss scale is left unread).
  reader = tf.train.load_checkpoint(str(tmp_path / 'checkpoints'))
  assert reader.get_tensor('optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE') == 4
  float32_model = _model(tf_keras.optimizers.legacy.SGD(0.5))
  tf.train.Checkpoint(model=float32_model, optimizer=float32_model.optimizer).restore(
      tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  ).assert_existing_objects_matched()
  assert int(float32_model.optimizer.iterations.numpy()) == 4


def test_float32_run_resumes_in_mixed_float16(tmp_path, capsys):
  """A run started where 'auto' picks float32 or bfloat16, resumed on a float16 GPU: the
  checkpoint has no loss scale; everything else restores, the scale starts afresh."""
  from cvrl_tf.runtime import train_loop  # pylint: disable=g-import-not-at-top
  ds = lambda step: tf.data.Dataset.from_tensors({'clips': _batch(9)}).repeat()
  run = lambda model, steps: train_loop.fit_resumable(
      model, ds, str(tmp_path), total_steps=steps, strategy=tf.distribute.get_strategy(),
      cadence=train_loop.Cadence(checkpoint_every=2, log_every=1), progress_stream=sys.stderr)
  first = _model(tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9))
  run(first, 2)
  with precision.dtype_policy('mixed_float16'):
    resumed = _model(tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9))
  assert isinstance(resumed.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  logs = run(resumed, 3)
  err = capsys.readouterr().err
  assert 'without float16 loss scaling' in err and 'Resuming from' in err
  assert int(resumed.optimizer.iterations.numpy()) == 3 and np.isfinite(logs['loss'])
  # What restores into a fresh float16 model is the float32 run's state, bit for bit.
  first_weights = first.get_weights()
  with precision.dtype_policy('mixed_float16'):
    fresh = _model(tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9))
  train_loop._restore(dict(model=fresh, optimizer=fresh.optimizer),  # pylint: disable=protected-access
                      str(tmp_path / 'checkpoints' / 'ckpt-2'), None)
  for a, b in zip(fresh.get_weights(), first_weights):
    np.testing.assert_array_equal(a, b)
  assert int(fresh.optimizer.iterations.numpy()) == 2
