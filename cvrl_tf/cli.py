"""Console entry points (see setup.cfg). Each delegates to the absl `main` of the module
that owns the command, imported lazily so `--help` of one tool does not load the others."""

import sys

from absl import app
from absl import flags


def _run(module):
  # absl's --help lists the key flags of the module named sys.argv[0] (the script).
  for name in module.TOOL_FLAGS.defaults:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(module.main)


def convert():
  from cvrl_tf.data import convert as module
  _run(module)


def synth():
  from cvrl_tf.data import synthetic as module
  _run(module)


def train():
  from cvrl_tf import train_cli as module
  _run(module)


def export():
  from cvrl_tf import export as module
  _run(module)


def embed():
  from cvrl_tf import embed as module
  _run(module)
