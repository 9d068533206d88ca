"""convert on Apache Beam (DirectRunner): the pool's bytes with broken and stalled inputs,
ram:// output, a killed run rerun to the same result. Needs the [beam] extra."""

import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import pytest
import tensorflow as tf

from cvrl_tf.cli import convert as convert_cli
from cvrl_tf.convert import convert
from cvrl_tf.convert import sources
import test_convert as helpers  # the same tiny videos

pytest.importorskip('apache_beam')

_DIRECT = ['--runner=DirectRunner', '--direct_running_mode=multi_processing',
           '--direct_num_workers=2']


def _folder_bytes(folder):
  return {n: open(os.path.join(folder, n), 'rb').read() for n in sorted(os.listdir(folder))}


def test_beam_writes_the_bytes_of_the_pool_with_broken_and_stalled_inputs(tmp_path):
  for i in range(5):
    helpers._video(str(tmp_path / f'v{i}.mp4'), n=8, offset=i, tint=30 * i)
  (tmp_path / 'empty.mp4').write_bytes(b'')
  (tmp_path / 'text.mp4').write_text('hello\n' * 100)
  whole = (tmp_path / 'v0.mp4').read_bytes()
  (tmp_path / 'truncated.mp4').write_bytes(whole[: len(whole) // 2])
  os.mkfifo(tmp_path / 'stalled.mp4')  # never delivers data: the time limit fires
  rows = [f'v{i}.mp4,c{i % 2}' for i in range(5)] + [
      'empty.mp4,c0', 'text.mp4,c1', 'truncated.mp4,c0', 'stalled.mp4,c1', 'missing.mp4,c0',
      'a,b,c']
  (tmp_path / 'list.csv').write_text('\n'.join(rows) + '\n')
  listing = sources.list_csv(str(tmp_path / 'list.csv'))
  opts = dict(num_shards=3, short_side=16, workers=2, seed=5, decode_timeout=3.0)
  pool_run = convert.convert(listing, convert.Options(
      output_dir=str(tmp_path / 'pool'), **opts), log=None)
  beam_run = convert.convert(listing, convert.Options(
      output_dir=str(tmp_path / 'beam'), **opts), log=None, beam_args=_DIRECT)
  assert pool_run.exit_code == beam_run.exit_code == 1
  m = beam_run.manifest
  assert (m['num_converted'], m['num_failed'], m['num_malformed_rows']) == (5, 5, 1)
  reasons = {os.path.basename(f['path']): f['reason'] for f in m['failures']}
  assert 'time limit of 3 s' in reasons['stalled.mp4']
  assert reasons['missing.mp4'] == 'file not found'
  expected = _folder_bytes(tmp_path / 'pool')
  assert sorted(expected) == ['data-00000-of-00003.tfrecord', 'data-00001-of-00003.tfrecord',
                              'data-00002-of-00003.tfrecord', 'data_label_map.txt',
                              'data_manifest.json']
  assert _folder_bytes(tmp_path / 'beam') == expected  # shards, label map and manifest


def test_beam_output_on_the_ram_filesystem(tmp_path):
  for i in range(3):
    helpers._video(str(tmp_path / f'v{i}.mp4'), n=6, offset=i)
  (tmp_path / 'list.csv').write_text(''.join(f'v{i}.mp4,c{i}\n' for i in range(3)))
  listing = sources.list_csv(str(tmp_path / 'list.csv'))
  opts = dict(num_shards=2, short_side=0, workers=1)
  local = convert.convert(listing, convert.Options(output_dir=str(tmp_path / 'local'), **opts),
                          log=None)
  # ram:// lives in one process: Beam's in-memory mode runs the workers in this one.
  convert.convert(listing, convert.Options(output_dir='ram://beam21', **opts), log=None,
                  beam_args=['--runner=DirectRunner', '--direct_running_mode=in_memory'])
  got = {n: tf.io.gfile.GFile(f'ram://beam21/{n}', 'rb').read()
         for n in tf.io.gfile.listdir('ram://beam21')}
  assert got == _folder_bytes(tmp_path / 'local')
  assert local.manifest['num_converted'] == 3


def test_beam_run_killed_then_rerun_completes_with_the_same_bytes(tmp_path):
  names = [f'v{i}.mp4' for i in range(8)]
  for i, name in enumerate(names):
    helpers._video(str(tmp_path / 'videos' / name), n=8, offset=i % 3, tint=20 * i)
  csv_path = tmp_path / 'list.csv'
  csv_path.write_text(''.join(f'videos/{n},c{i % 2}\n' for i, n in enumerate(names)))
  args = [f'--csv={csv_path}', '--num_shards=4', '--seed=1', '--short_side=0',
          '--decode_timeout=0', '--workers=2']
  assignment = convert.assign_shards(len(names), 4, seed=1)
  slow = tmp_path / 'videos' / names[assignment[3][0]]
  shutil.move(str(slow), str(tmp_path / 'saved.mp4'))
  os.mkfifo(slow)  # shard 3 cannot finish: the run is killed with work left to do
  out = tmp_path / 'killed'
  proc = subprocess.Popen(
      [sys.executable, helpers.TOOL, *args, f'--output_dir={out}', '--runner=DirectRunner'],
      env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(helpers.TOOL))),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.time() + 240
    while not any(n.endswith('.tfrecord') for n in (os.listdir(out) if out.exists() else [])):
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None  # one worker blocked on the FIFO
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, Beam's workers and their decoders
    proc.wait()
  done = [n for n in os.listdir(out) if n.endswith('.tfrecord')]
  assert 1 <= len(done) < 4 and 'data-00003-of-00004.tfrecord' not in done
  assert not (out / 'data_manifest.json').exists()
  os.remove(slow)
  shutil.move(str(tmp_path / 'saved.mp4'), str(slow))

  try:  # The same command again, in this process.
    rest = convert_cli.parse_flags(['cvrl_convert', *args, f'--output_dir={out}',
                                    '--runner=DirectRunner', '--direct_num_workers=2'])
    assert convert_cli.main(rest) == 0
  finally:
    flags.FLAGS.unparse_flags()
  control = convert.convert(sources.list_csv(str(csv_path)), convert.Options(
      output_dir=str(tmp_path / 'control'), num_shards=4, seed=1, short_side=0, workers=0),
                            log=None)
  assert control.manifest['num_converted'] == len(names)
  assert _folder_bytes(out) == _folder_bytes(tmp_path / 'control')


def test_an_unknown_beam_option_is_a_usage_error_naming_it(tmp_path, capsys):
  (tmp_path / 'list.csv').write_text('a.mp4,x\n')
  try:
    rest = convert_cli.parse_flags([
        'cvrl_convert', f'--csv={tmp_path / "list.csv"}', f'--output_dir={tmp_path / "out"}',
        '--runner=DirectRunner', '--projekt=p'])
    assert convert_cli.main(rest) == 2
  finally:
    flags.FLAGS.unparse_flags()
  assert 'unknown option(s) for --runner=DirectRunner: --projekt' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()
