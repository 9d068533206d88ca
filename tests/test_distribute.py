"""Strategies, and the pretrainer under them: R replicas == one device on the same batch.

The multi-replica checks run in subprocesses (tests/strategy_worker.py): logical CPU
devices must be configured before TensorFlow initialises, and a MultiWorkerMirrored run
needs one process per worker. All three processes start when this module's fixture is
first used and run while the in-process tests go on.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.runtime import distribute

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'strategy_worker.py')
TIMEOUT_S = 240
MULTI_WORKER_STEPS = 3

sys.path.insert(0, HERE)
import strategy_worker  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _free_ports(n):
  """n distinct free ports on 127.0.0.1 (held open together so they differ)."""
  socks = []
  try:
    for _ in range(n):
      s = socket.socket()
      s.bind(('127.0.0.1', 0))
      socks.append(s)
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


class _Job:
  """A subprocess with its output in a file, killed if it outlives the deadline."""

  def __init__(self, name, args, tmp_path):
    self.name = name
    self.log = tmp_path / f'{name}.log'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE,
                                           os.environ.get('PYTHONPATH', '')]))
    env.pop('TF_CONFIG', None)
    with open(self.log, 'w') as log:
      self.proc = subprocess.Popen([sys.executable, WORKER, *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))

  def wait(self, deadline):
    try:
      self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f'{self.name} timed out; log tail:\n{self.tail()}')
    if self.proc.returncode != 0:
      raise AssertionError(f'{self.name} exited with {self.proc.returncode}; log tail:\n'
                           f'{self.tail()}')

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(timeout=30)

  def tail(self, n=4000):
    return self.log.read_text()[-n:]


@pytest.fixture(scope='module')
def jobs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('strategies')
  ports = ','.join(str(p) for p in _free_ports(2))
  started = {
      'mirrored': _Job('mirrored', ['mirrored', str(tmp / 'mirrored.npz')], tmp),
      'worker0': _Job('worker0', ['multi_worker', str(tmp / 'worker0.npz'), '--index=0',
                                  f'--ports={ports}', f'--steps={MULTI_WORKER_STEPS}'], tmp),
      'worker1': _Job('worker1', ['multi_worker', str(tmp / 'worker1.npz'), '--index=1',
                                  f'--ports={ports}', f'--steps={MULTI_WORKER_STEPS}'], tmp),
  }
  deadline = time.monotonic() + TIMEOUT_S
  results = {}

  def result(name):
    if name not in results:
      try:
        started[name].wait(deadline)
      except AssertionError:
        for job in started.values():  # A stuck peer would wait forever: stop them all.
          job.kill()
        raise
      results[name] = dict(np.load(tmp / f'{name}.npz'))
    return results[name]

  yield result
  for job in started.values():
    job.kill()


# ---------------------------------------------------------------- in-process unit tests
def test_per_replica_batch_size():
  assert distribute.per_replica_batch_size(1024, 8) == 128
  assert distribute.per_replica_batch_size(6, 1) == 6
  with pytest.raises(ValueError, match=r'does not divide evenly over 4 replicas.*8 or 12'):
    distribute.per_replica_batch_size(10, 4)
  with pytest.raises(ValueError, match='positive'):
    distribute.per_replica_batch_size(0, 2)
  assert distribute.replica_batch_size(32) == 32  # Default strategy: one replica.


def test_default_and_unknown_strategy():
  assert distribute.get_strategy('default').num_replicas_in_sync == 1
  with pytest.raises(ValueError, match='unknown strategy'):
    distribute.get_strategy('horovod')


def test_multi_worker_needs_tf_config(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  with pytest.raises(distribute.StrategyError, match='TF_CONFIG'):
    distribute.get_strategy('multi_worker')
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {}')
  with pytest.raises(distribute.StrategyError, match='not valid JSON'):
    distribute.get_strategy('multi_worker')
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["a:1"]}}')
  with pytest.raises(distribute.StrategyError, match='task'):
    distribute.get_strategy('multi_worker')


def test_logical_cpus_after_initialisation_is_a_clear_error():
  tf.constant(1.0) + 1.0  # pylint: disable=expression-not-assigned  (TF is initialised)
  with pytest.raises(distribute.StrategyError, match='before running any TensorFlow op'):
    distribute.get_strategy('mirrored', num_cpu_devices=3)


# ------------------------------------------------------------- subprocess comparisons
def _assert_close(got, want, what, rtol=1e-5):
  scale = max(float(np.max(np.abs(want))), 1e-3)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def test_mirrored_gradients_equal_single_device(jobs):
  r = jobs('mirrored')
  names = list(r['names'])
  assert len(names) == 8
  # rtol 1e-4 of the largest entry: float32 sums over two half batches round differently
  # (seen: 3.9e-5 on one of 648 conv-kernel entries of scale 3.6); a wrong replica
  # scaling would be off by a factor of 2.
  for i, name in enumerate(names):
    _assert_close(r[f'mirrored/grad_{i}'], r[f'single/grad_{i}'], f'gradient of {name}',
                  rtol=1e-4)
  single, mirrored = (json.loads(str(r[f'{t}/logs'])) for t in ('single', 'mirrored'))
  assert set(single) == set(mirrored)
  for key in single:
    _assert_close(mirrored[key], single[key], f'metric {key}')
  # The whole state after the step, BN moving statistics (sync BN) included.
  weights = [k for k in r if k.startswith('single/weight_')]
  assert len(weights) == 12
  for key in weights:  # Weights after one step carry the gradients' rounding.
    _assert_close(r[key.replace('single', 'mirrored')], r[key], key, rtol=1e-4)


def test_mirrored_loss_scaled_step_keeps_the_replica_scaling(jobs):
  """mixed_float16's LossScaleOptimizer on 2 replicas: scaled loss / R, gradients
  unscaled, then summed over replicas: the same update as one device."""
  r = jobs('mirrored')
  for i, name in enumerate(r['names']):
    _assert_close(r[f'mirrored_loss_scaled/grad_{i}'], r[f'single/grad_{i}'],
                  f'gradient of {name}', rtol=1e-4)
  single, scaled = (json.loads(str(r[f'{t}/logs'])) for t in ('single', 'mirrored_loss_scaled'))
  for key in single:
    _assert_close(scaled[key], single[key], f'metric {key}')


def test_mirrored_xla_is_refused_clearly(jobs):
  r = jobs('mirrored')
  assert 'jit_compile=True is not supported' in str(r['mirrored_xla_error'])


def test_multi_worker_fit_agrees_across_workers_and_with_one_device(jobs):
  w0, w1 = jobs('worker0'), jobs('worker1')
  assert int(w0['replicas']) == 2 == int(w1['replicas'])
  keys = [f'weight_{i}' for i in range(12)]
  assert sorted(keys) == sorted(k for k in w0 if k.startswith('weight_'))
  for key in keys:
    np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
  # The same 3 global batches on one device, through the same model and optimizer.
  model = strategy_worker.build_model(weight_decay=1e-3)
  model.compile(optimizer=strategy_worker.multi_worker_optimizer(MULTI_WORKER_STEPS))
  model.build_for_training()
  batches = np.stack([strategy_worker.multi_worker_batches(s)[0]
                      for s in range(MULTI_WORKER_STEPS)])
  history = model.fit(tf.data.Dataset.from_tensor_slices({'clips': batches}),
                      steps_per_epoch=MULTI_WORKER_STEPS, epochs=1, verbose=0).history
  for key, want in zip(keys, model.get_weights()):
    _assert_close(w0[key], want, key, rtol=1e-4)
  logs = json.loads(str(w0['logs']))
  for key in ('loss', 'contrastive_acc', 'entropy', 'learning_rate'):
    _assert_close(logs[key][-1], history[key][-1], key, rtol=1e-4)
