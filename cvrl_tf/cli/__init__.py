"""Console entry points (see setup.cfg): every command's flags and absl `main` live in
this package, one module per command (train, convert, synth, export, embed, inspect,
import_checkpoint), imported lazily so `--help` of one tool does not load the others. The
library below never reads flags nor gin: gin is parsed here (gin_files.py), recipes are
built from it here (settings.py), and the library gets plain objects.
Every tool starts quiet (quiet.py): no error-level lines on a healthy start unless
--verbosity is given."""

import importlib
import os
import sys

from absl import app
from absl import flags

from cvrl_tf.cli import quiet


# tf.keras as tf_keras (Keras 2, what this package, TF Hub and Model Garden use) in our
# own processes: TensorFlow then does not import Keras 3 (and scikit-learn with it) at
# its import: `cvrl_train --list_configs` took 4.9 instead of 6.3 CPU-seconds (AMD EPYC
# Zen 4, avx512_bf16, no AMX).
LEGACY_KERAS_ENV = 'TF_USE_LEGACY_KERAS'


def prefer_tf_keras() -> None:
  """In a process of ours, before TensorFlow loads: tf.keras is tf_keras (the user's own
  setting wins). Not done on `import cvrl_tf`: a library must not change the tf.keras
  of the program that imports it."""
  if 'tensorflow' not in sys.modules:
    os.environ.setdefault(LEGACY_KERAS_ENV, '1')


def _run(command: str):
  prefer_tf_keras()
  quiet.before_tensorflow()  # The tool's module may import TensorFlow.
  # Before TensorFlow's own after-init callbacks (one lists the GPUs: the CUDA probe).
  app.call_after_init(quiet.after_flags)
  module = importlib.import_module(f'cvrl_tf.cli.{command}')
  # absl's --help lists the key flags of the module named sys.argv[0] (the script).
  for name in module.TOOL_FLAGS.defaults:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  # A tool that passes arguments on (cvrl_convert: to Beam) parses its flags itself.
  parser = getattr(module, 'parse_flags', None)
  if parser is None:
    app.run(module.main)
  else:
    app.run(module.main, flags_parser=parser)


def cvrl_convert():
  _run('convert')


def cvrl_synth():
  _run('synth')


def cvrl_train():
  _run('train')


def cvrl_export():
  _run('export')


def cvrl_embed():
  _run('embed')


def cvrl_import():
  _run('import_checkpoint')


def cvrl_inspect():
  _run('inspect')
