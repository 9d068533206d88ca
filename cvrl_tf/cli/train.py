"""`cvrl_train`: every protocol (pretraining, linear eval, fine-tuning, ...) from gin.

  cvrl_train --gin_file=pretrain.gin --model_dir=/tmp/run \
      --gin_bindings="pretrain.train_files='/data/k400/train-*'"

`--gin_file` takes a path or the name of a config shipped with cvrl_tf (`cvrl_train
--list_configs` prints them). The gin files bind `run.experiment` to the protocol (e.g.
`@pretrain`); bindings given on the command line override the files. Bad files or
bindings, and file patterns that match nothing, fail before any work with one line
(cli/failures.py).
"""

import sys

from cvrl_tf import configs
from cvrl_tf import errors
from cvrl_tf.cli import failures
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import tool_flags

TOOL_FLAGS = tool_flags.ToolFlags([
    ('multi_string', 'gin_file', [], 'gin config file(s), parsed in order: a path, or the '
     'name of a shipped config (e.g. pretrain.gin, demo/pretrain.gin; see --list_configs).'),
    ('multi_string', 'gin_bindings', [], 'gin bindings, e.g. "pretrain.train_steps=10".'),
    ('multi_string', 'gin_search_path', [], 'folders searched for gin files/includes.'),
    ('string', 'model_dir', None, 'where checkpoints, summaries and results go; '
     're-running with the same dir resumes.'),
    ('bool', 'list_configs', False, 'print the gin files shipped with cvrl_tf and exit.'),
    failures.VERBOSE_FLAG,
])


def list_configs() -> str:
  """The shipped gin files, one a line with their first comment line."""
  rows = configs.shipped()
  width = max(len(name) for name, _ in rows)
  return '\n'.join([f'gin files shipped with cvrl_tf ({configs.ROOT}):'] +
                   [f'  {name:<{width}}  {summary}' for name, summary in rows])


def _train(argv, flag_values) -> int:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if flag_values.list_configs:
    print(list_configs())
    return 0
  if not flag_values.model_dir:
    raise errors.UserError('--model_dir is required (where checkpoints and results go).')
  if not flag_values.gin_file and not flag_values.gin_bindings:
    raise errors.UserError('give at least one --gin_file (e.g. pretrain.gin; see '
                           '--list_configs).')
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
