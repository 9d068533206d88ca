"""One-line progress report on stderr for long batch jobs (conversion, embedding), and
the `progress_stream` argument every long-running function takes.

On a terminal the line is redrawn in place; in a log file a line is written every few
seconds, so logs stay short and still show the rate and the time left.
"""

import sys
import time
from typing import Optional, TextIO, Union

STDERR = 'stderr'


def resolve_stream(progress_stream: Union[str, TextIO, None]) -> Optional[TextIO]:
  """A stream, None (quiet) or 'stderr': the sys.stderr of the moment of the call.

  Why the name: gin files can write it, and a default of sys.stderr would be the stream of
  import time (not the one a test or a caller swapped in since).
  """
  if progress_stream == STDERR:
    return sys.stderr
  if isinstance(progress_stream, str):
    raise ValueError(f"progress_stream must be a stream, None or 'stderr', got "
                     f'{progress_stream!r}')
  return progress_stream


def say(stream: Optional[TextIO], text: str) -> None:
  """Prints a line of `text` on `stream` (None: quiet)."""
  if stream is not None:
    print(text, file=stream, flush=True)


class Progress:
  """Counts done/failed units and prints `[###...] done/total unit rate ETA failed`."""

  def __init__(self, total: int, done: int = 0, stream: Optional[TextIO] = None,
               unit: str = 'videos', log_every: float = 5.0):
    self.total, self.done, self.failed = total, done, 0
    self._start_done, self._stream, self._unit = done, stream, unit
    self._tty = bool(stream) and hasattr(stream, 'isatty') and stream.isatty()
    self._every = 0.2 if self._tty else log_every
    self._t0 = self._last = time.monotonic()

  def line(self) -> str:
    elapsed = time.monotonic() - self._t0
    rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else 0.0
    filled = int(20 * self.done / max(1, self.total))
    return (f'[{"#" * filled}{"." * (20 - filled)}] {self.done}/{self.total} {self._unit} '
            f'{rate:.1f} {self._unit}/s ETA {int(eta) // 3600}:'
            f'{time.strftime("%M:%S", time.gmtime(eta))} failed {self.failed}')

  def message(self, text: str):
    """Prints a line above the progress line."""
    if self._stream:
      self._stream.write(('\r\033[K' if self._tty else '') + text + '\n')
      self._stream.flush()

  def advance(self, ok: bool = True):
    self.done += 1
    self.failed += not ok
    now = time.monotonic()
    last = self.done >= self.total
    if self._stream and (last or now - self._last >= self._every):
      self._last = now
      end = '\n' if (last or not self._tty) else ''
      self._stream.write(('\r' if self._tty else '') + self.line() + end)
      self._stream.flush()
