"""fit_resumable: checkpoints, resume at the saved step, NaN guard, summaries."""

import glob
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf.demo import report
from cvrl_tf.runtime import train_loop


def _model(lr=0.05):
  model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(3,))])
  model.compile(optimizer=tf_keras.optimizers.SGD(lr, momentum=0.9), loss='mse')
  return model


def _data(start_step, scale=1.0):
  x = np.random.RandomState(start_step).randn(64, 3).astype('float32')
  y = (x @ np.array([[1.0], [-2.0], [0.5]], 'float32')) * scale
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)


def _fit(model, model_dir, total, **kw):
  return train_loop.fit_resumable(
      model, _data, str(model_dir), total_steps=total,
      strategy=tf.distribute.get_strategy(),
      cadence=train_loop.Cadence(checkpoint_every=5, log_every=5), progress_stream=None, **kw)


def test_trains_checkpoints_and_resumes(tmp_path):
  model = _model()
  logs = _fit(model, tmp_path, 10)
  assert int(model.optimizer.iterations.numpy()) == 10
  assert np.isfinite(logs['loss'])
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  assert latest.endswith('ckpt-10')
  assert glob.glob(str(tmp_path / 'summaries' / 'events.out.tfevents.*'))

  # A new process (here: a fresh model) resumes at step 10 with the same weights and
  # optimizer state, then continues to 15.
  resumed = _model()
  resumed.build((None, 3))
  _fit(resumed, tmp_path, 10)  # already done: no step taken
  assert int(resumed.optimizer.iterations.numpy()) == 10
  np.testing.assert_array_equal(resumed.get_weights()[0], model.get_weights()[0])
  _fit(resumed, tmp_path, 15)
  assert int(resumed.optimizer.iterations.numpy()) == 15
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-15')


def test_resume_equals_uninterrupted_run(tmp_path):
  """Stopping at a checkpoint and resuming gives the same weights as one run whose data
  restarts at the same step (the documented data-position semantics)."""
  a = _model()
  _fit(a, tmp_path / 'a', 5)
  a2 = _model()
  a2.build((None, 3))
  _fit(a2, tmp_path / 'a', 10)

  b = _model()
  b.build((None, 3))
  b.set_weights(a.get_weights())
  # Momentum state must also carry over: restoring from the checkpoint does that, so the
  # reference continues from the same checkpoint in a second directory.
  ckpt = tf.train.Checkpoint(model=b, optimizer=b.optimizer)
  ckpt.restore(tf.train.latest_checkpoint(str(tmp_path / 'a' / 'checkpoints'))
               .replace('ckpt-10', 'ckpt-5'))
  b.fit(_data(5), steps_per_epoch=5, epochs=1, verbose=0)
  for wa, wb in zip(a2.get_weights(), b.get_weights()):
    np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  model = _model(lr=1e9)  # diverges within a few steps
  with pytest.raises(train_loop.NonFiniteLossError, match='NaN/Inf at step'):
    train_loop.fit_resumable(
        model, lambda s: _data(s, scale=1e6), str(tmp_path), total_steps=200,
        strategy=tf.distribute.get_strategy(),
        cadence=train_loop.Cadence(checkpoint_every=1, log_every=1), progress_stream=None)
  # The first step's loss is finite, so a checkpoint exists; it holds finite weights.
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  assert latest is not None
  reader = tf.train.load_checkpoint(latest)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.all(np.isfinite(value)), name


def test_an_input_that_ends_early_is_an_error_not_a_finished_run(tmp_path):
  # 3 batches for 10 steps: a finite training input (or a worker whose videos all fail,
  # which ends its input past the limit).
  finite = lambda start: _data(start).take(3)
  with pytest.raises(errors.InputEnded, match=r'ended at step 3 of 10 .*re-run the same'):
    train_loop.fit_resumable(_model(), finite, str(tmp_path), total_steps=10,
                             strategy=tf.distribute.get_strategy(),
                             cadence=train_loop.Cadence(checkpoint_every=2, log_every=5),
                             progress_stream=None)
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-2')


def test_workers_agree_on_a_bad_input_stop_at_log_steps(tmp_path, monkeypatch):
  # Under MultiWorkerMirroredStrategy a collective tells each worker, every step, whether
  # any worker's input went past the bad-examples limit (counted at log steps) or any
  # got a SIGTERM; here a stand-in for it: another worker's input goes bad at step 7, so
  # all stop at the next log step, 10, with one error.
  calls = []

  def any_worker(flags):
    calls.append(list(flags))
    step = len(calls)
    return [flags[0] or (step >= 7 and step % 5 == 0), flags[1]]
  monkeypatch.setattr(train_loop, 'any_worker', lambda strategy: any_worker)
  model = _model()
  with pytest.raises(errors.TooManyBadExamples, match='another worker stopped training '
                     r'at step 10: .*re-run the same command on every worker'):
    _fit(model, tmp_path, 30)
  assert calls == [[False, False]] * 10  # Asked at every step; this worker's input good.
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-5')


def test_another_workers_sigterm_saves_the_same_step_here(tmp_path, monkeypatch):
  """The stand-in collective says some worker got a SIGTERM at step 7: this worker saves
  step 7 too (between its periodic checkpoints) and stops with errors.Preempted."""
  monkeypatch.setattr(train_loop, 'any_worker', lambda strategy: lambda flags: [
      False, len(calls.append(1) or calls) == 7])
  calls = []
  with pytest.raises(errors.Preempted, match='SIGTERM reached another worker at step 7 of '
                     r'30; .*ckpt-7.*Re-run the same command'):
    _fit(_model(), tmp_path, 30)
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-7')


def _logged_steps(folder, tag):
  """Every step `tag` was written at, over all event files, duplicates included."""
  steps = []
  for path in sorted(glob.glob(os.path.join(str(folder), 'events.out.tfevents.*'))):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return sorted(steps)


class _SigtermAt:
  """A train_loop.Monitor that sends this process a SIGTERM at one step (the notice a
  scheduler gives before it kills the process)."""

  def __init__(self, step):
    self.every, self._step = 1, step

  def __call__(self, step):
    if step == self._step:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}


def test_sigterm_saves_that_step_and_the_rerun_continues_the_curve(tmp_path):
  """One process: SIGTERM after step 7's check (from a monitor, which runs after it), so
  seen at the end of step 8 (checkpoints every 5) -> a checkpoint of step 8 and
  errors.Preempted; the re-run resumes at 8 and ends at 20, every step logged once."""
  def fit(monitors=()):
    return train_loop.fit_resumable(
        _model(), _data, str(tmp_path), total_steps=20,
        strategy=tf.distribute.get_strategy(),
        cadence=train_loop.Cadence(checkpoint_every=5, log_every=1), progress_stream=None,
        monitors=monitors)
  with pytest.raises(errors.Preempted, match='SIGTERM reached this worker at step 8'):
    fit([_SigtermAt(7)])
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is put back.
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-8')
  assert _logged_steps(tmp_path / 'summaries', 'loss') == list(range(1, 9))
  logs = fit()
  assert np.isfinite(logs['loss'])
  # Each step once: 1-8, then 9-20 (report.read_scalars would hide duplicates).
  assert _logged_steps(tmp_path / 'summaries', 'loss') == list(range(1, 21))


def test_drop_summaries_after_keeps_what_a_resumed_run_does_not_rewrite(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in range(1, 11):
      tf.summary.scalar('loss', 1.0 / step, step=step)
  writer.close()
  assert train_loop.drop_summaries_after(str(tmp_path), 6) == 4
  assert _logged_steps(tmp_path, 'loss') == [1, 2, 3, 4, 5, 6]
  steps, values = report.read_scalars(str(tmp_path), 'loss')
  np.testing.assert_allclose(values, [1.0 / s for s in range(1, 7)], rtol=1e-6)
  assert train_loop.drop_summaries_after(str(tmp_path), 6) == 0  # Nothing left to drop.
  path = tf.io.gfile.glob(str(tmp_path / 'events.out.tfevents.*'))[0]
  with open(path, 'ab') as f:  # A kill in the middle of a write: a record cut short.
    f.write(b'\x10\x00\x00')
  assert train_loop.drop_summaries_after(str(tmp_path), 6) == 0
  assert _logged_steps(tmp_path, 'loss') == [1, 2, 3, 4, 5, 6]
  assert os.path.getsize(path) == sum(  # The torn tail is gone too.
      16 + len(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator())


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
  # What a SIGKILL at step 3, before the first checkpoint (every 5), leaves behind: the
  # summaries of steps 1-3 and no checkpoint. The rerun starts at 0 and logs 1-6 again.
  writer = tf.summary.create_file_writer(str(tmp_path / 'summaries'))
  with writer.as_default():
    for step in range(1, 4):
      tf.summary.scalar('loss', 1.0, step=step)
  writer.close()
  train_loop.fit_resumable(
      _model(), _data, str(tmp_path), total_steps=6, strategy=tf.distribute.get_strategy(),
      cadence=train_loop.Cadence(checkpoint_every=5, log_every=1), progress_stream=None)
  assert _logged_steps(tmp_path / 'summaries', 'loss') == list(range(1, 7))


def test_format_duration():
  assert train_loop.format_duration(59) == '0:59'
  assert train_loop.format_duration(3725) == '1:02:05'
