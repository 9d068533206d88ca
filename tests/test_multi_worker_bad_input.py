"""Two real workers (MultiWorkerMirroredStrategy on 127.0.0.1, two cvrl_train processes):
one worker's shards go bad past the limit; both stop at the same step, each with one line
(the bad worker names its examples, the other points at them), and both resume once the
shards are replaced. Slow (~1-2 minutes of both cores): set CVRL_SLOW_TESTS=1."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from test_bad_examples import TINY, _video, _write  # pylint: disable=g-bad-import-order
from test_distribute import _free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.environ.get('CVRL_SLOW_TESTS'),
                                reason='set CVRL_SLOW_TESTS=1')


def _shards(data, bad: bool):
  """4 shards of 10; worker 1 reads shards 1 and 3 (files[1::2]), shard 1 all bad."""
  for s in range(4):
    _write(data / f'train-{s}.tfrecord',
           [_video(f's{s}_{i}', 0, bad_frames=bad and s == 1) for i in range(10)])


def _train_two_workers(run, data, steps):
  ports = _free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  args = [sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py'),
          f'--model_dir={run}', '--gin_file=gin/demo/pretrain.gin',
          f"--gin_bindings=pretrain.train_files='{data}/train-*.tfrecord'",
          f'--gin_bindings=pretrain.train_steps={steps}',
          "--gin_bindings=strategy.name='multi_worker'"]
  # A floor of 20 bad reads: the stop comes after a checkpoint or two, to resume from.
  args += [f'--gin_bindings={b}' for b in TINY + ['bad_examples.min_count=20']]
  procs = [subprocess.Popen(
      args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=json.dumps(
          {'cluster': cluster, 'task': {'type': 'worker', 'index': i}})))
           for i in range(2)]
  try:
    return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
  finally:
    for p in procs:
      p.kill()


def test_workers_stop_together_on_one_workers_bad_shards_and_resume(tmp_path):
  data, run = tmp_path / 'data', tmp_path / 'run'
  data.mkdir()
  _shards(data, bad=True)
  (code0, err0), (code1, err1) = _train_two_workers(run, data, 60)
  assert (code0, code1) == (1, 1), (err0[-2000:], err1[-2000:])
  # One line each (TensorFlow's own gRPC teardown lines may follow it).
  (last0,), (last1,) = ([line for line in err.splitlines()
                         if line.startswith('cvrl_train: error: ')] for err in (err0, err1))
  assert 'Traceback' not in err0 + err1
  assert last1.startswith('cvrl_train: error: ') and 'could not be used' in last1
  assert str(run / '.scratch' / 'worker_1' / 'bad_examples.json') in last1
  assert last0.startswith('cvrl_train: error: another worker stopped training at step ')
  listed = json.loads((run / '.scratch' / 'worker_1' / 'bad_examples.json').read_text())
  assert {e['media_id'] for e in listed['pretrain']['examples']} <= {
      f's1_{i}' for i in range(10)}
  latest = tf.train.latest_checkpoint(str(run / 'checkpoints'))
  stopped_at = int(last0.split('at step ')[1].split(':')[0])
  assert latest and int(latest.rsplit('-', 1)[1]) < stopped_at < 60

  _shards(data, bad=False)  # Replaced: the same command resumes on both and finishes.
  (code0, err0), (code1, err1) = _train_two_workers(run, data, 60)
  assert (code0, code1) == (0, 0), (err0[-2000:], err1[-2000:])
  assert f'Resuming from {latest}' in err0 and 'step 60/60' in err0
