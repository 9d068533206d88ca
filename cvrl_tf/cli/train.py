"""`cvrl_train`: every protocol (pretraining, linear eval, fine-tuning, ...) from gin.

  cvrl_train --gin_file=pretrain.gin --model_dir=/tmp/run \
      --gin_bindings="TRAIN_FILES='/data/k400/train-*'"

`--gin_file` takes a path or the name of a config shipped with cvrl_tf (`cvrl_train
--list_configs` prints them). The gin files bind `run.experiment` to the protocol (e.g.
`@pretrain`); bindings given on the command line override the files. Bad files or
bindings fail before any work.
"""

import sys

from absl import app

import gin

from cvrl_tf import configs
from cvrl_tf.cli import tool_flags
from cvrl_tf.cli import gin_files

TOOL_FLAGS = tool_flags.ToolFlags([
    ('multi_string', 'gin_file', [], 'gin config file(s), parsed in order: a path, or the '
     'name of a shipped config (e.g. pretrain.gin, demo/pretrain.gin; see --list_configs).'),
    ('multi_string', 'gin_bindings', [], 'gin bindings, e.g. "pretrain.train_steps=10".'),
    ('multi_string', 'gin_search_path', [], 'folders searched for gin files/includes.'),
    ('string', 'model_dir', None, 'where checkpoints, summaries and results go; '
     're-running with the same dir resumes.'),
    ('bool', 'list_configs', False, 'print the gin files shipped with cvrl_tf and exit.'),
])


@gin.configurable
def run(model_dir: str, experiment=gin.REQUIRED):
  """Runs the protocol bound in gin, e.g. `run.experiment = @pretrain`."""
  return experiment(model_dir=model_dir)


def list_configs() -> str:
  """The shipped gin files, one a line with their first comment line."""
  rows = configs.shipped()
  width = max(len(name) for name, _ in rows)
  return '\n'.join([f'gin files shipped with cvrl_tf ({configs.ROOT}):'] +
                   [f'  {name:<{width}}  {summary}' for name, summary in rows])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  FLAGS = TOOL_FLAGS.values()  # pylint: disable=invalid-name
  if FLAGS.list_configs:
    print(list_configs())
    return 0
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  if not FLAGS.gin_file and not FLAGS.gin_bindings:
    raise app.UsageError('give at least one --gin_file (e.g. pretrain.gin; see '
                         '--list_configs).')
  try:
    gin_files.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_path)
  except gin_files.ConfigError as e:
    print(f'cvrl_train: configuration error: {e}', file=sys.stderr)
    sys.exit(2)
  run(model_dir=FLAGS.model_dir)
