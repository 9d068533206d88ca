"""Preemptible and multi-worker runs: any worker terminated or killed, the job restarted,
and training finishes at its last step, from one checkpoint, each step logged once.

Two real workers (MultiWorkerMirroredStrategy on 127.0.0.1, two cvrl_train processes
with TF_CONFIG), and one process killed again and again (a soak). Slow (a few minutes
of both cores): set CVRL_SLOW_TESTS=1. The logic, with stand-ins, runs in every
`make test` (test_train_loop.py), and so does a single process's SIGTERM
(test_train_cli.py). Every wait has a time limit: a hang fails the test.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from test_bad_examples import TINY, _video, _write  # pylint: disable=g-bad-import-order
from test_distribute import _free_ports
from test_train_cli import _logged_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESTART_EXIT = 143
TIMEOUT_S = 300  # Per run of the two workers.
pytestmark = pytest.mark.skipif(not os.environ.get('CVRL_SLOW_TESTS'),
                                reason='set CVRL_SLOW_TESTS=1')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  for s in range(4):  # Whole shards per worker: 2 each.
    _write(root / f'train-{s}.tfrecord', [_video(f's{s}_{i}', 0) for i in range(10)])
  return str(root / 'train-*.tfrecord')


def _args(run, data, steps, *bindings):
  return [sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py'),
          f'--model_dir={run}', '--gin_file=gin/demo/pretrain.gin',
          f"--gin_bindings=pretrain.train_files='{data}'",
          f'--gin_bindings=pretrain.train_steps={steps}'] + [
              f'--gin_bindings={b}' for b in TINY + ['pretrain.checkpoint_every=4',
                                                     'pretrain.log_every=1'] + list(bindings)]


def _workers(run, data, steps):
  """Two cvrl_train workers of one cluster (collectives time out after 30 s)."""
  cluster = {'worker': [f'127.0.0.1:{p}' for p in _free_ports(2)]}
  args = _args(run, data, steps, "strategy.name='multi_worker'",
               'strategy.collective_timeout_s=30')
  return [subprocess.Popen(
      args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=json.dumps(
          {'cluster': cluster, 'task': {'type': 'worker', 'index': i}})))
          for i in range(2)]


def _finish(procs):
  """[(exit status, stderr)] of each process, all killed at the time limit."""
  deadline = time.time() + TIMEOUT_S
  out = []
  try:
    for p in procs:
      err = p.communicate(timeout=max(1.0, deadline - time.time()))[1]
      out.append((p.returncode, err))
  finally:
    for p in procs:
      p.kill()
  return out


def _wait_for_step(proc, step):
  """Reads the chief's progress lines until `step`; the process must still run."""
  deadline = time.time() + TIMEOUT_S
  for line in iter(proc.stderr.readline, ''):
    if line.startswith(f'step {step}/'):
      return
    assert time.time() < deadline, 'no progress within the time limit'
  pytest.fail(f'the chief ended before step {step}')


def _stopped_line(err):
  lines = [l for l in err.splitlines() if l.startswith('cvrl_train: ')]
  assert lines and 'Traceback' not in err, err[-3000:]
  return lines[-1]


def _latest_step(run):
  latest = tf.train.latest_checkpoint(os.path.join(run, 'checkpoints'))
  return latest, int(latest.rsplit('-', 1)[1]) if latest else 0


def _restart_and_finish(run, data, steps, resumed_from):
  (code0, err0), (code1, err1) = _finish(_workers(run, data, steps))
  assert (code0, code1) == (0, 0), (err0[-2000:], err1[-2000:])
  assert f'Resuming from {resumed_from}' in err0 and f'step {steps}/{steps}' in err0
  assert _latest_step(run)[1] == steps
  assert _logged_steps(os.path.join(run, 'summaries')) == list(range(1, steps + 1))
  reader = tf.train.load_checkpoint(_latest_step(run)[0])
  assert reader.get_tensor('optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE') == steps


@pytest.mark.parametrize('victim', [1, 0], ids=['non-chief', 'chief'])
def test_sigterm_of_either_worker_saves_one_step_on_both(tmp_path, data, victim):
  run = str(tmp_path / 'run')
  procs = _workers(run, data, 40)
  _wait_for_step(procs[0], 5)
  procs[victim].send_signal(signal.SIGTERM)
  (code0, err0), (code1, err1) = _finish(procs)
  assert (code0, code1) == (RESTART_EXIT, RESTART_EXIT), (err0[-2000:], err1[-2000:])
  lines = [_stopped_line(err0), _stopped_line(err1)]
  latest, step = _latest_step(run)
  for i, line in enumerate(lines):
    who = 'this worker' if i == victim else 'another worker'
    assert line.startswith(f'cvrl_train: stopped: SIGTERM reached {who} at step {step} '
                           f'of 40'), line
  assert 5 <= step < 40  # Saved at the step the notice was seen (periodic: every 4).
  _restart_and_finish(run, data, step + 3, latest)


@pytest.mark.parametrize('victim', [1, 0], ids=['non-chief', 'chief'])
def test_sigkill_of_either_worker_stops_the_other_in_one_line(tmp_path, data, victim):
  run = str(tmp_path / 'run')
  procs = _workers(run, data, 40)
  _wait_for_step(procs[0], 6)
  started = time.time()
  procs[victim].send_signal(signal.SIGKILL)
  results = _finish(procs)
  survivor = results[1 - victim]
  assert survivor[0] == RESTART_EXIT, survivor[1][-2000:]
  assert time.time() - started < 60  # Well inside the 30 s collective limit + start-up.
  assert 'another worker stopped answering' in _stopped_line(survivor[1])
  latest, step = _latest_step(run)
  assert step >= 4 and latest in _stopped_line(survivor[1])
  _restart_and_finish(run, data, step + 6, latest)


def test_a_hung_worker_stops_the_other_at_the_collective_time_limit(tmp_path, data):
  """SIGSTOP: the worker neither dies nor answers. The chief must not wait for ever: it
  stops with one line once the 30 s collective limit has passed."""
  run = str(tmp_path / 'run')
  procs = _workers(run, data, 40)
  _wait_for_step(procs[0], 6)
  started = time.time()
  procs[1].send_signal(signal.SIGSTOP)
  try:
    (code, err), = _finish(procs[:1])
  finally:
    procs[1].kill()
    procs[1].communicate()
  assert code == RESTART_EXIT, err[-2000:]
  assert 'another worker stopped answering' in _stopped_line(err)
  assert time.time() - started < 120  # 30 s limit, plus the coordination's own checks.
  latest, step = _latest_step(run)
  _restart_and_finish(run, data, step + 4, latest)


def test_soak_killed_at_random_moments_ends_like_an_uninterrupted_run(tmp_path, data):
  """One process killed 10 times at random moments (2 during start-up, 8 a random 1-6
  steps into training, i.e. during a step or a checkpoint write), re-run each time: it
  ends at the last step with a checkpoint that restores and each step logged once."""
  run, total, rng = str(tmp_path / 'run'), 60, random.Random(0)
  killed_after = []  # The checkpointed step after each kill.
  for kill in range(10):
    proc = subprocess.Popen(_args(run, data, total, 'pretrain.checkpoint_every=2'),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
      if kill < 2:
        time.sleep(rng.uniform(0.5, 3.0))
      else:
        _wait_for_step(proc, _latest_step(run)[1] + rng.randint(1, 6))
        time.sleep(rng.uniform(0.0, 0.3))
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.communicate(timeout=TIMEOUT_S)
    killed_after.append(_latest_step(run)[1])
  (code, err), = _finish([subprocess.Popen(
      _args(run, data, total, 'pretrain.checkpoint_every=2'), cwd=REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)])
  assert code == 0, err[-3000:]
  assert len(set(killed_after)) >= 6 and max(killed_after) < total, killed_after
  assert _latest_step(run)[1] == total
  assert _logged_steps(os.path.join(run, 'summaries')) == list(range(1, total + 1))
  reader = tf.train.load_checkpoint(_latest_step(run)[0])
  assert reader.get_tensor('optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE') == total
  kernels = [n for n, _ in tf.train.list_variables(_latest_step(run)[0]) if 'kernel' in n]
  assert kernels and all(np.isfinite(reader.get_tensor(n)).all() for n in kernels)
