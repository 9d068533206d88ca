"""`cvrl_train`: every protocol (pretraining, linear eval, fine-tuning, ...) from gin.

  cvrl_train --gin_file=gin/pretrain.gin --model_dir=/tmp/run \
      --gin_bindings="pretrain.train_files='/data/k400/train-*'"

The gin files bind `run.experiment` to the protocol (e.g. `@pretrain`); bindings given
on the command line override the files. Bad files or bindings fail before any work.
"""

import sys

from absl import app

from cvrl_tf.cli import tool_flags
from cvrl_tf.cli import gin_files

TOOL_FLAGS = tool_flags.ToolFlags([
    ('multi_string', 'gin_file', [], 'gin config file(s), parsed in order.'),
    ('multi_string', 'gin_bindings', [], 'gin bindings, e.g. "pretrain.train_steps=10".'),
    ('multi_string', 'gin_search_path', [], 'folders searched for gin files/includes.'),
    ('string', 'model_dir', None, 'where checkpoints, summaries and results go; '
     're-running with the same dir resumes.'),
])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  FLAGS = TOOL_FLAGS.values()  # pylint: disable=invalid-name
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  if not FLAGS.gin_file and not FLAGS.gin_bindings:
    raise app.UsageError('give at least one --gin_file (e.g. gin/pretrain.gin).')
  try:
    gin_files.parse(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_path)
  except gin_files.ConfigError as e:
    print(f'cvrl_train: configuration error: {e}', file=sys.stderr)
    sys.exit(2)
  gin_files.run(model_dir=FLAGS.model_dir)
