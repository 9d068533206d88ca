"""Quiet by default: a healthy start of a cvrl_* tool prints no line at error level.

Why: a newcomer reads `E ... failed call to cuInit` (TensorFlow probing CUDA on a machine
without a GPU) or `Path not found: demo/encoder.gin` (gin probing the Python path while it
resolves an include) as failures. Without absl's `--verbosity` on the command line:
- TensorFlow's C++ logs keep warnings and errors (TF_CPP_MIN_LOG_LEVEL=1, unless the
  user set it), which must happen before TensorFlow is imported: `before_tensorflow`;
- absl logging shows warnings and up, and gin's include probing is dropped;
- on a machine with no NVIDIA device, the CUDA driver probe's error line is dropped
  (TensorFlow's own devices are initialised once here, with stderr captured and every
  other line passed on).
`--verbosity=0` (or any value) brings everything back.
"""

import contextlib
import glob
import logging
import os
import sys
import tempfile
from typing import Iterator, Optional, Sequence, Tuple

TF_LOG_ENV = 'TF_CPP_MIN_LOG_LEVEL'
# Set beside it when quiet set it (not the user), so a tool may quieten it further.
MARKER_ENV = 'CVRL_TF_SET_TF_CPP_MIN_LOG_LEVEL'
CUDA_PROBE_LINE = 'failed call to cuInit'
_VERBOSITY_FLAGS = ('--verbosity', '-v', '--v')


def verbosity_requested(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether absl's --verbosity (-v) is on the command line (before flags are parsed)."""
  argv = sys.argv if argv is None else argv
  return any(a == f or a.startswith(f + '=') for a in argv[1:] for f in _VERBOSITY_FLAGS)


def before_tensorflow(argv: Optional[Sequence[str]] = None) -> bool:
  """TensorFlow's C++ logs from warning level up; returns whether this call set it."""
  if verbosity_requested(argv) or TF_LOG_ENV in os.environ or 'tensorflow' in sys.modules:
    return False
  os.environ[TF_LOG_ENV] = '1'
  os.environ[MARKER_ENV] = '1'
  return True


def tensorflow_errors_off() -> None:
  """For a tool that imports TensorFlow late, only to write files (cvrl_convert): its C++
  logs off entirely, unless the user set the level or asked for --verbosity. Before
  TensorFlow is imported; after_flags cannot probe its devices then. Where the user's
  level still shows errors (0, 1, 2), TensorFlow is imported now, its CUDA probe
  filtered (probe_devices): imported later, inside app.run, it would print the probe's
  error line."""
  if 'tensorflow' in sys.modules or verbosity_requested():
    return
  if TF_LOG_ENV not in os.environ or os.environ.get(MARKER_ENV) == '1':
    os.environ[TF_LOG_ENV] = '3'
  if os.environ[TF_LOG_ENV] not in ('3', '4'):
    probe_devices()


def has_nvidia_device() -> bool:
  """An NVIDIA driver's device nodes (Linux) or WSL's GPU bridge are there."""
  return bool(glob.glob('/dev/nvidia[0-9]*') or os.path.exists('/proc/driver/nvidia')
              or os.path.exists('/dev/dxg'))


class GinProbeFilter(logging.Filter):
  """Drops gin's resource_reader lines: 'system_path_file_exists' and 'Path not found'
  come from trying each include on the Python path before the search paths."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.module == 'resource_reader' and
                f'{os.sep}gin{os.sep}' in record.pathname)


@contextlib.contextmanager
def captured_stderr_fd() -> Iterator[list]:
  """Captures file descriptor 2 (where C++ logs go); yields a list that holds the text
  once the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  text = []
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield text
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text.append(tmp.read().decode('utf-8', errors='replace'))


def probe_devices(gpu_expected: Optional[bool] = None) -> str:
  """Imports TensorFlow if needed and lists its devices once (the CUDA probe happens then:
  imported inside absl's app.run, TensorFlow lists them during its import), passing its
  stderr on without the probe's error line when there is no GPU; returns what was
  dropped."""
  gpu_expected = has_nvidia_device() if gpu_expected is None else gpu_expected
  with captured_stderr_fd() as text:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
  kept, dropped = split_probe_lines(text[0], gpu_expected)
  sys.stderr.write(kept)
  sys.stderr.flush()
  return dropped


def split_probe_lines(text: str, gpu_expected: bool) -> Tuple[str, str]:
  """(lines to show, lines dropped): the CUDA probe's failure goes when no GPU is there."""
  kept, dropped = [], []
  for line in text.splitlines(keepends=True):
    (dropped if not gpu_expected and CUDA_PROBE_LINE in line else kept).append(line)
  return ''.join(kept), ''.join(dropped)


@contextlib.contextmanager
def gin_probing_silenced() -> Iterator[None]:
  """GinProbeFilter on the root logger (where gin logs) for the block, unless --verbosity
  was given."""
  if verbosity_requested():
    yield
    return
  root, probe_filter = logging.getLogger(), GinProbeFilter()
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


def after_flags() -> None:
  """Once absl parsed the flags: quiet unless --verbosity was given."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if 'verbosity' in flags.FLAGS and flags.FLAGS['verbosity'].present:
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  if 'tensorflow' in sys.modules:
    probe_devices()
