"""`cvrl_train` end to end: pretraining writes what downstream needs; kill and resume;
bad gin input fails fast with the name of what is wrong."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import records
from test_quiet import error_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "encoder.name='r3d18'", 'encoder.width_multiplier=0.125',
    'pretrain_clips.clip_len=4', 'pretrain_clips.crop_size=32',
    'pretrain_clips.shuffle_buffer=8',
    'projection_head.hidden_dim=16', 'projection_head.output_dim=8',
    'pretrain.global_batch_size=4', 'pretrain.log_every=1', 'pretrain.warmup_epochs=0',
]


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  out = tmp_path_factory.mktemp('records')
  rng = np.random.RandomState(0)
  for shard in range(2):
    with tf.io.TFRecordWriter(str(out / f'train-{shard:05d}-of-00002.tfrecord')) as w:
      for v in range(4):
        frames = rng.randint(0, 255, (12, 40, 48, 3), np.uint8)
        jpegs = [tf.io.encode_jpeg(f).numpy() for f in frames]
        w.write(records.make_sequence_example(
            jpegs, f'v{shard}{v}', 25.0, 40, 48, label_index=v % 2).SerializeToString())
  return str(out / 'train-*.tfrecord')


def _cmd(model_dir, shards, *bindings):
  args = [sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py'),
          f'--model_dir={model_dir}', '--gin_file=gin/demo/pretrain.gin',
          f"--gin_bindings=pretrain.train_files='{shards}'"]
  args += [f'--gin_bindings={b}' for b in TINY + list(bindings)]
  return args


def _run(args, **kw):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def test_pretrain_writes_checkpoints_summaries_config_and_backbone(tmp_path, shards):
  model_dir = tmp_path / 'run'
  # The fast input path: resize / flip / colour deferred to the train step.
  result = _run(_cmd(model_dir, shards, 'pretrain.train_steps=3',
                     'pretrain.checkpoint_every=2', "pretrain_clips.defer='resize'",
                     'pretrain_clips.canvas=(40, 48)'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 3/3' in result.stderr
  assert not error_lines(result.stderr), result.stderr  # A healthy start is quiet.
  assert tf.train.latest_checkpoint(str(model_dir / 'checkpoints')).endswith('ckpt-3')
  assert os.listdir(model_dir / 'summaries')
  config_text = (model_dir / 'operative_config.gin').read_text()
  assert "encoder.name = 'r3d18'" in config_text
  assert (model_dir / 'backbone' / 'backbone.json').exists()
  assert (model_dir / 'backbone' / 'ckpt-3.index').exists()
  # The head's spec and the training clips, as data beside the backbone.
  from cvrl_tf.models import backbone_io as io  # pylint: disable=g-import-not-at-top
  assert io.read_training(str(model_dir)) == {'num_frames': 4, 'frame_stride': 2,
                                              'target_fps': None, 'crop_size': 32}
  assert io.read_head_spec(str(model_dir))['hidden_dim'] == 16
  # The precision 'auto' chose, and why, on stderr and in run_info.json.
  from cvrl_tf.runtime import precision  # pylint: disable=g-import-not-at-top
  want = precision.choose('auto', precision.detect_devices())
  assert f'{want.summary()}\n' in result.stderr
  import json  # pylint: disable=g-import-not-at-top
  starts = json.loads((model_dir / 'run_info.json').read_text())['starts']
  assert [s['precision']['policy'] for s in starts] == [want.policy]
  assert starts[0]['protocol'] == 'pretrain' and starts[0]['precision']['requested'] == 'auto'

  from cvrl_tf.models import backbone_io  # pylint: disable=g-import-not-at-top
  encoder = backbone_io.load_backbone(str(model_dir))
  features = encoder(np.zeros([1, 4, 32, 32, 3], np.float32))
  assert features.shape == (1, 512 // 8)


def _logged_steps(summaries, tag='loss'):
  """Every step `tag` was written at in the run's event files, duplicates included."""
  steps = []
  for path in tf.io.gfile.glob(os.path.join(str(summaries), 'events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return sorted(steps)


def test_sigterm_then_sigkill_then_rerun_resumes_each_time(tmp_path, shards):
  """A preemption notice, then a kill, then the same command to the end. SIGTERM: the
  run saves the step it is at (periodic checkpoints: every 4 steps), says so in one line
  and exits 143 (restart me). SIGKILL: the latest complete checkpoint survives. The
  final run resumes from it, trains only the remaining steps, and every step is logged
  once (what the killed run logged past its checkpoint is dropped)."""
  model_dir = tmp_path / 'run'
  args = _cmd(model_dir, shards, 'pretrain.train_steps=1000', 'pretrain.checkpoint_every=4')
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    for line in iter(proc.stderr.readline, ''):  # Killed by the timeout below if stuck.
      if line.startswith('step 5/'):
        proc.send_signal(signal.SIGTERM)
        break
    err = proc.communicate(timeout=120)[1]
  finally:
    proc.kill()
  assert proc.returncode == 143, err[-3000:]
  (stopped,) = [l for l in err.splitlines() if l.startswith('cvrl_train: stopped: ')]
  assert 'SIGTERM reached this worker at step' in stopped and 'Traceback' not in err
  noticed = tf.train.latest_checkpoint(str(model_dir / 'checkpoints'))
  step = int(noticed.rsplit('-', 1)[1])
  assert 5 <= step < 1000 and f'at step {step} of 1000' in stopped

  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      # The manager's index file is updated after the checkpoint files: wait for it.
      latest = tf.train.latest_checkpoint(str(model_dir / 'checkpoints'))
      if int(latest.rsplit('-', 1)[1]) >= step + 4:
        break
      assert proc.poll() is None, 'training exited before the kill'
      time.sleep(0.2)
    else:
      pytest.fail('no checkpoint within the deadline')
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  latest = tf.train.latest_checkpoint(str(model_dir / 'checkpoints'))
  killed_at = int(latest.rsplit('-', 1)[1])
  total = killed_at + 2
  result = _run(_cmd(model_dir, shards, f'pretrain.train_steps={total}',
                     'pretrain.checkpoint_every=4'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from {latest}' in result.stderr
  import json  # pylint: disable=g-import-not-at-top
  starts = json.loads((model_dir / 'run_info.json').read_text())['starts']
  assert [s['resumes_from'] for s in starts] == [None, noticed, latest]
  # It trained only the remaining steps: the first logged step follows the checkpoint.
  steps = [int(line.split()[1].split('/')[0]) for line in result.stderr.splitlines()
           if line.startswith('step ')]
  assert steps[0] == killed_at + 1 and steps[-1] == total
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / 'checkpoints')))
  assert reader.get_tensor('optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE') == total
  assert _logged_steps(model_dir / 'summaries') == list(range(1, total + 1))


def _train_in_process(args, capfd):
  """cvrl_train's main in this process (flags parsed as from a command line): the exit
  status and stderr, without paying the TensorFlow import of a subprocess."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from cvrl_tf.cli import train as train_cli  # pylint: disable=g-import-not-at-top
  capfd.readouterr()
  try:
    flags.FLAGS(['cvrl_train', *args])
    try:
      train_cli.main(['cvrl_train'])
      status = 0
    except SystemExit as e:
      status = e.code
  finally:
    flags.FLAGS.unparse_flags()
  return status, capfd.readouterr().err


@pytest.mark.parametrize('bad, message', [
    (['--gin_bindings=pretrain.no_such_knob=1'], 'no_such_knob'),
    (['--gin_file=gin/does_not_exist.gin'], 'does_not_exist.gin'),
])
def test_bad_gin_fails_fast_naming_the_problem(tmp_path, shards, bad, message, capfd):
  model_dir = tmp_path / 'run'
  status, err = _train_in_process(
      [f'--model_dir={model_dir}', '--gin_file=gin/demo/pretrain.gin'] + bad, capfd)
  assert status == 2
  assert message in err
  assert not model_dir.exists()


@pytest.mark.parametrize('args, message', [
    (['--gin_file=gin/pretrain.gin'],  # Its default data path, absent here.
     "cvrl_train: error: pretrain.train_files: file pattern '/data/k400/train-*.tfrecord' "
     'matches no file; write the shards with cvrl_convert'),
    (['--gin_bindings=pretrain.train_steps=1'],
     'cvrl_train: error: no protocol: bind run.experiment'),
    (['--gin_bindings=run.experiment=@pretrain'],
     'cvrl_train: error: pretrain.train_files is not bound'),
    (['--gin_file=gin/demo/linear_eval.gin', "--gin_bindings=linear_eval.train_files='{}'",
      "--gin_bindings=linear_eval.pretrain_dir='/no/such/run'",
      '--gin_bindings=linear_eval.test_files=None'],
     "cvrl_train: error: linear_eval.pretrain_dir: no backbone found in '/no/such/run'"),
])
def test_a_users_mistake_is_one_line_and_exit_status_2(tmp_path, shards, args, message,
                                                       capfd):
  model_dir = tmp_path / 'run'
  args = [f'--model_dir={model_dir}'] + [a.format(shards) for a in args]
  if 'matches no file' in message:  # One case through the real command line.
    result = _run([sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py')] + args)
    status, err = result.returncode, result.stderr
  else:
    status, err = _train_in_process(args, capfd)
  assert status == 2
  last = err.strip().splitlines()[-1]
  assert last.startswith(message), last
  assert 'Traceback' not in err and not model_dir.exists()
  status, err = _train_in_process(args + ['--verbose'], capfd)
  assert status == 2 and 'Traceback' in err
