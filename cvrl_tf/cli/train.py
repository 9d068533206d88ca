"""`cvrl_train`: every protocol (pretraining, linear eval, fine-tuning, ...) from gin.

  cvrl_train --gin_file=gin/pretrain.gin --model_dir=/tmp/run \
      --gin_bindings="pretrain.train_files='/data/k400/train-*'"

The gin files bind `run.experiment` to the protocol (e.g. `@pretrain`); bindings given
on the command line override the files. Bad files or bindings, and file patterns that
match nothing, fail before any work with one line (cli/failures.py).
"""

import sys

from cvrl_tf import errors
from cvrl_tf.cli import failures
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import tool_flags

TOOL_FLAGS = tool_flags.ToolFlags([
    ('multi_string', 'gin_file', [], 'gin config file(s), parsed in order.'),
    ('multi_string', 'gin_bindings', [], 'gin bindings, e.g. "pretrain.train_steps=10".'),
    ('multi_string', 'gin_search_path', [], 'folders searched for gin files/includes.'),
    ('string', 'model_dir', None, 'where checkpoints, summaries and results go; '
     're-running with the same dir resumes.'),
    failures.VERBOSE_FLAG,
])


def _train(argv, flag_values) -> int:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flag_values.model_dir:
    raise errors.UserError('--model_dir is required (where checkpoints and results go).')
  if not flag_values.gin_file and not flag_values.gin_bindings:
    raise errors.UserError('give at least one --gin_file (e.g. gin/pretrain.gin).')
  gin_files.parse(flag_values.gin_file, flag_values.gin_bindings,
                  flag_values.gin_search_path)
  protocol = gin_files.check_protocol()
  try:
    gin_files.run(model_dir=flag_values.model_dir)
  except errors.UserError as e:
    raise errors.UserError(f'{protocol}: {e}') from e
  return 0


def main(argv):
  flag_values = TOOL_FLAGS.values()
  status = failures.run_reporting('cvrl_train', lambda: _train(argv, flag_values),
                                  flag_values.verbose)
  if status:
    sys.exit(status)
