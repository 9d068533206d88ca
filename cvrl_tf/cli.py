"""Console entry points (see setup.cfg). Each delegates to the absl `main` of the module
that owns the command, imported lazily so `--help` of one tool does not load the others."""

from absl import app
from absl import flags


def _run(module):
  flags.adopt_module_key_flags(module)  # so --help lists the tool's own flags
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
