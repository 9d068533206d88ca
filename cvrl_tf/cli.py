"""Console entry points (see setup.cfg). Each delegates to the absl `main` of the module
that owns the command, imported lazily so `--help` of one tool does not load the others."""

from absl import app


def convert():
  from cvrl_tf.data import convert as module
  app.run(module.main)


def synth():
  from cvrl_tf.data import synthetic as module
  app.run(module.main)


def train():
  from cvrl_tf import train_cli as module
  app.run(module.main)


def export():
  from cvrl_tf import export as module
  app.run(module.main)


def embed():
  from cvrl_tf import embed as module
  app.run(module.main)
