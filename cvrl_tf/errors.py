"""The user's mistakes, as exception types the command-line tools print as one line.

Why a type: a console script must tell a mistake in what the user gave (a file pattern
that matches nothing, a model dir that is not a run, a missing backbone) from a bug.
The first is printed as one line naming the file, flag or binding and what to do, exit
status 2; anything else keeps its traceback. Raise these where the message already says
all that; they subclass ValueError (and FileNotFoundError) so callers that caught
those before still do. This module imports nothing heavy (the converter's workers use
it).
"""


class UserError(ValueError):
  """Something the user gave is wrong; the message names it and what to do."""


class MissingInput(UserError, FileNotFoundError):
  """A file, folder or checkpoint the user pointed at is not there."""


def one_line(message) -> str:
  """An error's message (or any text) on one line."""
  return ' '.join(str(message).split())


class OutputExists(UserError, FileExistsError):
  """The output the user named is there already (and may not be replaced)."""


class DataProblem(RuntimeError):
  """The input data, not the command, stopped a run; the message says what and how to
  resume. Exit status 1."""


class TooManyBadExamples(DataProblem):
  """More examples than the limit could not be used; the message gives the count, the
  fraction and the file that lists them (input/bad_examples.py)."""


class Interrupted(RuntimeError):
  """The platform, not the data or the command, stopped a training run, which resumes
  when the job is restarted (every worker): exit status RESTART_EXIT, what TensorFlow's
  own preemption handling uses on GCE. The message says the step and the checkpoint."""


RESTART_EXIT = 143


class Preempted(Interrupted):
  """SIGTERM (a preemption notice, a scheduler's eviction) reached a worker: every
  worker saved at the same step and stopped (runtime/train_loop.py)."""


class PeerLost(Interrupted):
  """Another worker of a MultiWorkerMirroredStrategy job stopped answering (killed, its
  machine lost) or did not reach a collective within its time limit."""


class InputEnded(DataProblem):
  """The training input ended before the last step (it must be endless): a finite
  dataset, or a worker whose videos all fail (runtime/train_loop.py)."""
