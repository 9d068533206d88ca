"""Helpers shared by the benchmarks: CPU time, summaries, tables, timing model.fit steps.

Imported by the bench_*.py scripts (their directory is on sys.path when they run); not a
benchmark itself, so run_all.py does not list it.
"""

import os
import statistics
import time
from typing import List, Sequence, Tuple


def cpu_seconds() -> float:
  """User + system CPU seconds of this process (all its threads) so far; ns resolution
  (os.times() counts 10 ms ticks)."""
  return time.process_time()


def median_range(values: Sequence[float], fmt: str = '.2f') -> str:
  """'median (min..max)' of the repetitions."""
  med = statistics.median(values)
  return f'{med:{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})'


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
  """A plain-text table: columns as wide as their widest cell, first column left."""
  cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  def line(row):
    return '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths)))
  print(line(cells[0]))
  print('  '.join('-' * w for w in widths))
  for row in cells[1:]:
    print(line(row))


def machine_line(precision: str) -> str:
  """The line every table starts with: CPU model and ISA class (AVX2 / AVX-512 /
  AVX512-BF16 / AMX), cores, TensorFlow's oneDNN state, and the precision used."""
  from cvrl_tf.runtime import precision as precision_lib  # pylint: disable=import-outside-toplevel
  facts = precision_lib.detect_devices()
  return (f'machine: {facts.describe()}, {os.cpu_count()} cores, load average '
          f'{load_average():.2f}; precision: {precision}')


def load_average() -> float:
  return os.getloadavg()[0]


def _step_timer():
  import tf_keras  # pylint: disable=import-outside-toplevel

  class StepTimer(tf_keras.callbacks.Callback):
    """(wall, CPU) time stamps at the start of fit and the end of every batch.

    Without `_supports_tf_logs` the callback list converts the logs to NumPy before
    calling us, so each stamp is taken after the step has really finished.
    """

    def __init__(self):
      super().__init__()
      self.stamps = []

    def on_train_begin(self, logs=None):
      self.stamps = [(time.perf_counter(), cpu_seconds())]

    def on_train_batch_end(self, batch, logs=None):
      self.stamps.append((time.perf_counter(), cpu_seconds()))

  return StepTimer()


def fit_step_times(model, dataset, warmup: int,
                   steps: int) -> Tuple[List[float], List[float]]:
  """([wall s], [CPU s]) of each of `steps` steps of one `model.fit`, after `warmup`.

  End of step to end of step, so whatever happens between steps (fetching the next batch
  from the input pipeline, callbacks) counts; the first `warmup` steps (at least 1:
  tracing, XLA compilation, filling the pipeline's buffers) do not.
  """
  warmup = max(1, warmup)
  timer = _step_timer()
  model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0,
            callbacks=[timer])
  stamps = timer.stamps[warmup:]
  walls = [t1 - t0 for (t0, _), (t1, _) in zip(stamps, stamps[1:])]
  cpus = [c1 - c0 for (_, c0), (_, c1) in zip(stamps, stamps[1:])]
  return walls, cpus


def time_calls(fn, repeats: int, warmup: int = 1) -> Tuple[List[float], List[float]]:
  """([wall s], [CPU s]) of each of `repeats` calls of `fn`, after `warmup` untimed calls
  (tracing). `fn` must return only when its work is done (e.g. call .numpy())."""
  for _ in range(warmup):
    fn()
  walls, cpus = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), cpu_seconds()
    fn()
    walls.append(time.perf_counter() - t)
    cpus.append(cpu_seconds() - c)
  return walls, cpus


def rate_cells(clips: int, walls: Sequence[float], cpus: Sequence[float]) -> List[str]:
  """Table cells: step s median (min..max), CPU-s per step, clips/s median (min..max),
  clips per CPU-second (from the median CPU time)."""
  cpu = statistics.median(cpus)
  return [median_range(walls, '.3f'), f'{cpu:.3f}',
          median_range([clips / w for w in walls], '.2f'), f'{clips / max(cpu, 1e-9):.2f}']
