"""How every console script ends on an error the user can act on: one line, no traceback.

errors.UserError (a file pattern that matches nothing, a model dir that is not a run, a
bad gin binding, ...) -> `TOOL: error: <message>` and exit status 2;
errors.DataProblem (the input data, not the command: too many bad examples) -> exit
status 1; errors.Interrupted (a preemption notice, a lost worker: the job resumes when
restarted) -> exit status 143 (errors.RESTART_EXIT). Anything else is a bug and keeps
its traceback. `--verbose` prints the traceback of the others as well.
"""

import sys
import traceback
from typing import Callable

from cvrl_tf import errors

USAGE_EXIT, DATA_EXIT = 2, 1
_GIN_CONTEXT = '\n  In call to configurable'  # Where gin called it: not for the user.
VERBOSE_FLAG = ('bool', 'verbose', False, 'On an error, also print its traceback.')


def run_reporting(tool: str, fn: Callable[[], object], verbose: bool = False):
  """fn()'s result, or the exit status of the error it raised, printed on one line."""
  try:
    return fn()
  except (errors.UserError, errors.DataProblem, errors.Interrupted) as e:
    if verbose:
      traceback.print_exc(file=sys.stderr)
    message = errors.one_line(str(e).split(_GIN_CONTEXT)[0])
    if isinstance(e, errors.Interrupted):
      print(f'{tool}: stopped: {message}', file=sys.stderr, flush=True)
      return errors.RESTART_EXIT
    print(f'{tool}: error: {message}', file=sys.stderr, flush=True)
    return USAGE_EXIT if isinstance(e, errors.UserError) else DATA_EXIT
