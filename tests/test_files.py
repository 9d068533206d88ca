"""files.py: atomic writes (local and through tf.io.gfile), the JSON normaliser, and the
progress-stream argument (progress.py)."""

import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cvrl_tf import files
from cvrl_tf import progress


def test_atomic_write_text_and_bytes_replace_and_leave_no_temp(tmp_path):
  path = str(tmp_path / 'a.txt')
  assert files.atomic_write(path, 'old\n') == path
  files.atomic_write(path, 'ünï\r\nline\n')
  assert open(path, 'rb').read() == 'ünï\r\nline\n'.encode()  # utf-8, newlines kept
  files.atomic_write(str(tmp_path / 'b.bin'), b'\x00\x01', 'wb')
  assert open(tmp_path / 'b.bin', 'rb').read() == b'\x00\x01'
  assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.bin']


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
  path = str(tmp_path / 'a.txt')
  files.atomic_write(path, 'old')
  with pytest.raises(TypeError):
    files.atomic_write(path, b'bytes in text mode')
  with pytest.raises(ValueError, match='mode'):
    files.atomic_write(path, 'x', 'a')
  assert open(path).read() == 'old'
  assert os.listdir(tmp_path) == ['a.txt']


def test_the_next_write_removes_temp_files_of_killed_writers_only(tmp_path):
  path = tmp_path / 'results.json'
  dead_pid = subprocess.Popen(['true'])  # Its pid: of a process that is gone.
  dead_pid.wait()
  old = time.time() - files.STALE_AFTER_S - 5
  left = {name: tmp_path / f'results.json.tmp-{pid}-0123abcd' for name, pid in [
      ('killed', dead_pid.pid), ('alive', os.getppid()), ('mine', os.getpid())]}
  recent = tmp_path / f'results.json.tmp-{dead_pid.pid}-recent00'
  other = tmp_path / f'other.json.tmp-{dead_pid.pid}-0123abcd'
  for tmp in (*left.values(), recent, other):
    tmp.write_text('part of a write')
    if tmp != recent:
      os.utime(tmp, (old, old))
  files.write_json(str(path), {'a': 1})
  assert json.loads(path.read_text()) == {'a': 1}
  # Only the killed writer's old temp file of this very file is gone.
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [path.name, left['alive'].name, left['mine'].name, recent.name, other.name])


def test_concurrent_writers_do_not_share_a_temp_file(tmp_path):
  path = str(tmp_path / 'a.bin')
  texts = [bytes([i]) * 200_000 for i in range(8)]
  threads = [threading.Thread(target=files.atomic_write, args=(path, t, 'wb'))
             for t in texts]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert open(path, 'rb').read() in texts  # One writer's bytes whole, never a mix.
  assert os.listdir(tmp_path) == ['a.bin']


def test_atomic_write_through_gfile_for_non_local_paths():
  tf = pytest.importorskip('tensorflow')
  path = 'ram://cvrl_files_test/a.json'
  tf.io.gfile.makedirs('ram://cvrl_files_test')
  files.write_json(path, {'b': np.int64(2), 'a': (1, 2)})
  files.write_json(path, {'b': np.int64(3), 'a': (1, 2)})
  with tf.io.gfile.GFile(path) as f:
    assert f.read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 3\n}\n'
  assert tf.io.gfile.listdir('ram://cvrl_files_test') == ['a.json']
  assert files.read_json(path) == {'a': [1, 2], 'b': 3}
  assert files.read_json('ram://cvrl_files_test/missing.json') is None


def test_read_json_reads_back_what_write_json_wrote(tmp_path):
  path = str(tmp_path / 'x.json')
  assert files.read_json(path) is None
  files.write_json(path, {'t': (1, 2), 'f': np.float32(0.25)})
  assert files.read_json(path) == {'t': [1, 2], 'f': 0.25}


def test_write_json_and_normalized_agree():
  value = {'x': np.float32(0.5), 'cm': np.array([[3, 1], [0, 4]]), 'n': None,
           't': (1, (2, 3)), 'i': np.int64(7), 'other': object}
  stored = json.loads(json.dumps(value, default=files.jsonable))
  assert stored == {'x': 0.5, 'cm': [[3, 1], [0, 4]], 'n': None, 't': [1, [2, 3]],
                    'i': 7, 'other': str(object)}
  assert files.normalized(value) == stored
  assert files.normalized(stored) == stored  # Idempotent: stored and fresh compare.


def test_importing_the_worker_side_modules_does_not_import_tensorflow():
  code = ('import sys; import cvrl_tf.files, cvrl_tf.convert.convert, '
          'cvrl_tf.convert.synthetic; sys.exit("tensorflow" in sys.modules)')
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(files.__file__)))
  assert subprocess.run([sys.executable, '-c', code], env=env).returncode == 0


def test_progress_stream_is_a_stream_none_or_stderr_at_call_time(monkeypatch):
  stream = io.StringIO()
  assert progress.resolve_stream(stream) is stream
  assert progress.resolve_stream(None) is None
  monkeypatch.setattr(sys, 'stderr', stream)  # Swapped after import: still found.
  assert progress.resolve_stream('stderr') is stream
  progress.say(progress.resolve_stream('stderr'), 'hello')
  progress.say(None, 'quiet')
  assert stream.getvalue() == 'hello\n'
  with pytest.raises(ValueError, match="'stdout'"):
    progress.resolve_stream('stdout')
