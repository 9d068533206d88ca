"""Quiet by default: no error-level line on a healthy start, --verbosity brings the logs
back; the pieces (argv check, CUDA probe filter, fd capture, gin probe filter) alone."""

import logging
import os
import re
import subprocess
import sys

import gin
import pytest

from cvrl_tf.cli import gin_files
from cvrl_tf.cli import quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An error-level line: TensorFlow's C++ ('2026-... : E file.cc:51]'), absl ('E1202 ...')
# or Python logging's default format ('ERROR:root:...').
ERROR_LINE = re.compile(r'^(\d{4}-\d\d-\d\d [\d:.]+: E |[EF]\d{4} |ERROR:|CRITICAL:)',
                        re.MULTILINE)
TF_CPP_LINE = re.compile(r'^\d{4}-\d\d-\d\d [\d:.]+: [IWE] \S+\.cc:\d+\]', re.MULTILINE)


def error_lines(text):
  return [m.string[m.start():].splitlines()[0] for m in ERROR_LINE.finditer(text)]


def test_verbosity_requested_reads_the_command_line():
  assert quiet.verbosity_requested(['x', '--verbosity=1'])
  assert quiet.verbosity_requested(['x', '-v', '0'])
  assert quiet.verbosity_requested(['x', '--v=-1'])
  assert not quiet.verbosity_requested(['x', '--verbose_foo=1', '--model_dir=v'])
  assert not quiet.verbosity_requested(['--verbosity=1'])  # argv[0] is the program.


@pytest.fixture
def no_log_env(monkeypatch):
  """Neither variable set, both restored after the test (set first: monkeypatch only
  restores what it saw), and TensorFlow looking not imported yet."""
  for name in (quiet.TF_LOG_ENV, quiet.MARKER_ENV):
    monkeypatch.setenv(name, 'x')
    monkeypatch.delenv(name)
  monkeypatch.delitem(sys.modules, 'tensorflow')
  return monkeypatch


def test_before_tensorflow_sets_warning_level_unless_told(no_log_env):
  monkeypatch = no_log_env
  assert quiet.before_tensorflow(['x', '--verbosity=0']) is False
  assert quiet.TF_LOG_ENV not in os.environ
  assert quiet.before_tensorflow(['x']) is True
  assert os.environ[quiet.TF_LOG_ENV] == '1'
  assert os.environ[quiet.MARKER_ENV] == '1'  # Set by us, not by the user.
  monkeypatch.setenv(quiet.TF_LOG_ENV, '0')  # The user's choice stays.
  assert quiet.before_tensorflow(['x']) is False
  assert os.environ[quiet.TF_LOG_ENV] == '0'


def test_cuda_probe_line_dropped_only_without_a_gpu():
  text = ('2026-12-02 14:05:30.938434: E external/local_xla/xla/stream_executor/cuda/'
          'cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error: Failed call '
          'to cuInit: UNKNOWN ERROR (303)\n'
          '2026-12-02 14:05:31.000000: W tensorflow/core/foo.cc:1] a real warning\n')
  kept, dropped = quiet.split_probe_lines(text, gpu_expected=False)
  assert kept == text.splitlines(keepends=True)[1] and dropped == text.splitlines(True)[0]
  assert quiet.split_probe_lines(text, gpu_expected=True) == (text, '')


def test_captured_stderr_fd_holds_what_cpp_code_writes():
  with quiet.captured_stderr_fd() as text:
    os.write(2, b'from C++\n')
  assert text == ['from C++\n']


def test_gin_include_probing_is_silenced_unless_verbose(tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)  # demo/pretrain.gin includes demo/encoder.gin: probed here.
  caplog.set_level(logging.DEBUG)
  monkeypatch.setattr(sys, 'argv', ['cvrl_train'])
  gin_files.parse(['demo/pretrain.gin'], [])
  assert not [r for r in caplog.records if 'Path not found' in r.getMessage()]
  monkeypatch.setattr(sys, 'argv', ['cvrl_train', '--verbosity=0'])
  gin_files.parse(['demo/pretrain.gin'], [])
  assert [r for r in caplog.records if r.levelno == logging.ERROR and
          'Path not found: demo/encoder.gin' in r.getMessage()]
  assert not logging.getLogger().filters
  gin.clear_config()


def _list_configs(tmp_path, *extra):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(quiet.TF_LOG_ENV, None)
  return subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'cvrl_train.py'),
                         '--list_configs', *extra], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)


def test_a_tensorflow_start_is_quiet_and_verbosity_brings_logs_back(tmp_path):
  # --list_configs imports TensorFlow and runs absl's after-init callbacks (TensorFlow's
  # lists the GPUs), as every cvrl_train start does.
  result = _list_configs(tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'demo/pretrain.gin' in result.stdout
  assert not error_lines(result.stderr), result.stderr
  assert not TF_CPP_LINE.search(result.stderr), result.stderr
  verbose = _list_configs(tmp_path, '--verbosity=0')
  assert verbose.returncode == 0
  assert TF_CPP_LINE.search(verbose.stderr), verbose.stderr  # e.g. oneDNN's, I level.


def test_a_late_tensorflow_tool_turns_cpp_logs_off_unless_the_user_chose(no_log_env):
  monkeypatch = no_log_env
  monkeypatch.setattr(sys, 'argv', ['cvrl_convert'])
  for env, want in (({}, '3'), ({quiet.TF_LOG_ENV: '1', quiet.MARKER_ENV: '1'}, '3'),
                    ({quiet.TF_LOG_ENV: '0'}, '0')):
    monkeypatch.delenv(quiet.TF_LOG_ENV, raising=False)
    monkeypatch.delenv(quiet.MARKER_ENV, raising=False)
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    quiet.tensorflow_errors_off()
    assert os.environ[quiet.TF_LOG_ENV] == want, env
  monkeypatch.delenv(quiet.TF_LOG_ENV)
  monkeypatch.delenv(quiet.MARKER_ENV, raising=False)
  monkeypatch.setattr(sys, 'argv', ['cvrl_convert', '--verbosity=0'])
  quiet.tensorflow_errors_off()
  assert quiet.TF_LOG_ENV not in os.environ


@pytest.mark.parametrize('level', [None, '0', '2'])
def test_convert_start_is_quiet_whatever_the_users_log_level(tmp_path, level):
  # cvrl_convert imports TensorFlow late, inside absl's app.run: the import itself probes
  # CUDA then. 0 and 2 both show error lines (1 only adds warnings): what differs for the
  # code is unset (our level) or set by the user. The rest of the tools at level 2: the
  # quick demo test (tests/test_demo.py) asserts the same of all of its output.
  from cvrl_tf.convert import synthetic  # pylint: disable=g-import-not-at-top
  lines = []
  for i in range(2):
    path = str(tmp_path / f'v{i}.mp4')
    synthetic.write_video(path, 'train', i, label=i, seed=0,
                          cfg_dict={'size': 32, 'seconds': 0.5})
    lines.append(f'{path},c{i}\n')
  (tmp_path / 'list.csv').write_text(''.join(lines))
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(quiet.TF_LOG_ENV, None)
  env.pop(quiet.MARKER_ENV, None)
  if level is not None:
    env[quiet.TF_LOG_ENV] = level
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'tools', 'cvrl_convert.py'),
       f'--csv={tmp_path / "list.csv"}', f'--output_dir={tmp_path / "out"}',
       '--num_shards=1', '--short_side=0', '--workers=1'],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert '2 of 2 videos converted' in result.stderr
  assert not error_lines(result.stdout + result.stderr), result.stderr
