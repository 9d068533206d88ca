"""Ordered map over spawned worker processes, bounded and crash-tolerant.

Used by the converter (and meant for the embedding tool): results come back in input order
so output files are deterministic; a bounded number of calls is in flight so memory does
not grow with the input; a call that kills its worker process (a decoder segfault)
fails alone instead of taking the run down; a call that runs past `timeout` (a stalled
read: a FIFO, a hung network mount) has its process killed from here and fails alone too,
since no code inside the call can be trusted to notice that it is stuck. `spawn` keeps
workers free of the parent's state (TensorFlow threads do not survive fork), so `fn` must
be importable without heavy modules for workers to start fast.
"""

import collections
import concurrent.futures
from concurrent.futures import process as futures_process
import itertools
import multiprocessing
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

_BrokenPool = futures_process.BrokenProcessPool


def default_workers() -> int:
  """Cores this process may use (respects CPU affinity, e.g. under taskset or a scheduler)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


class OrderedPool:
  """`map(fn, calls)` yields fn(**kwargs) per kwargs, in order.

  Args:
    workers: number of processes; 0 runs calls in this process (debugging, tiny inputs).
    on_crash: kwargs -> result to yield for a call whose process died.
    window: calls in flight (submitted, result not yet consumed); bounds memory.
    timeout: seconds a call may run (None: no limit; not enforced in-process), counted
      from when the call starts in its worker: a call is stopped after at least
      `timeout` s of running, once the caller waits for its result.
    on_timeout: kwargs -> result to yield for a call stopped that way.
  """

  def __init__(self, workers: int, on_crash: Callable[[Dict[str, Any]], Any],
               window: Optional[int] = None, timeout: Optional[float] = None,
               on_timeout: Optional[Callable[[Dict[str, Any]], Any]] = None):
    self._workers = workers
    self._window = window or 2 * workers + 4
    self._on_crash = on_crash
    self._timeout = timeout or None
    self._on_timeout = on_timeout or on_crash
    self._ctx = multiprocessing.get_context('spawn')
    self._executor = None
    if workers:
      # Workers share the cores: NumPy's BLAS threads inside each worker would
      # oversubscribe them (cvrl_synth, 256 videos, 2 workers on 2 cores: 36.7 s with
      # 2 BLAS threads each, 7.4 s with 1). Spawned workers (and any process this one
      # starts later) read these at start; a user's own setting wins. TensorFlow uses
      # neither library.
      threads = str(max(1, default_workers() // workers))
      for name in ('OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ.setdefault(name, threads)

  def _new(self, workers: int) -> '_Workers':
    return _Workers(self._ctx, workers)

  def _isolated(self, fn, kwargs):
    workers = self._new(1)
    try:
      call_id, future = workers.submit(fn, kwargs)
      if not workers.wait(call_id, future, self._timeout):
        workers.kill()
        return self._on_timeout(kwargs)
      return future.result()
    except _BrokenPool:
      return self._on_crash(kwargs)
    finally:
      workers.shutdown(wait=False)

  def map(self, fn: Callable[..., Any], calls: Iterable[Dict[str, Any]]) -> Iterator[Any]:
    """Starts the first calls right away (so workers run while the caller does slow
    set-up, e.g. importing TensorFlow) and returns an iterator over the results."""
    if not self._workers:
      return (fn(**kwargs) for kwargs in calls)
    calls, in_flight = iter(calls), collections.deque()
    self._fill(fn, calls, in_flight)
    return self._results(fn, calls, in_flight)

  def _fill(self, fn, calls, in_flight):
    while len(in_flight) < self._window:
      kwargs = next(calls, None)
      if kwargs is None:
        return
      if self._executor is None:
        self._executor = self._new(self._workers)
      try:
        call_id, future = self._executor.submit(fn, kwargs)
      except _BrokenPool:  # a call in flight just crashed: handled at its turn
        call_id, future = None, None
      in_flight.append((kwargs, call_id, future))

  def _results(self, fn, calls, in_flight) -> Iterator[Any]:
    while in_flight:
      kwargs, call_id, future = in_flight.popleft()
      try:
        if future is None:
          raise _BrokenPool()
        if not self._executor.wait(call_id, future, self._timeout):
          # Stalled: kill the workers (the pool cannot kill one), rerun the other calls.
          self._executor.kill()
          self._executor = None
          calls = itertools.chain([kw for kw, _, _ in in_flight], calls)
          in_flight.clear()
          self._fill(fn, calls, in_flight)
          yield self._on_timeout(kwargs)
          continue
        result = future.result()
      except _BrokenPool:
        # Some call in flight killed its worker: rerun each alone to find which.
        if self._executor is not None:
          self._executor.shutdown(wait=False)
        self._executor = None
        retry = [kwargs] + [kw for kw, _, _ in in_flight]
        in_flight.clear()
        for kw in retry:
          yield self._isolated(fn, kw)
        self._fill(fn, calls, in_flight)
        continue
      self._fill(fn, calls, in_flight)
      yield result

  def close(self, wait: bool = True):
    """Stops the workers; wait=False abandons calls in flight (on errors/interrupts)."""
    if self._executor is not None:
      self._executor.shutdown(wait=wait)
      self._executor = None

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *unused):
    self.close(wait=exc_type is None)



_STARTED = None  # in a worker: the queue on which its calls report that they started


def _set_started_queue(queue) -> None:
  global _STARTED
  _STARTED = queue


def _report_start(fn, call_id: int, kwargs: Dict[str, Any]):
  _STARTED.put(call_id)
  return fn(**kwargs)


class _Workers:
  """A ProcessPoolExecutor whose calls report when they start, so that a call's time
  limit counts its own running time, not the start-up of a fresh worker process."""

  def __init__(self, ctx, workers: int):
    self._started_queue = ctx.SimpleQueue()
    self._executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_set_started_queue,
        initargs=(self._started_queue,))
    self._started: Dict[int, float] = {}  # call id -> when this process saw it start
    self._ids = itertools.count()

  def submit(self, fn, kwargs: Dict[str, Any]):
    call_id = next(self._ids)
    return call_id, self._executor.submit(_report_start, fn, call_id, kwargs)

  def wait(self, call_id: int, future, timeout: Optional[float]) -> bool:
    """Whether `future` finished before running `timeout` seconds (None: no limit)."""
    if timeout is None:
      concurrent.futures.wait([future])
      return True
    while True:
      while not self._started_queue.empty():
        self._started[self._started_queue.get()] = time.monotonic()
      start = self._started.get(call_id)
      left = 0.1 if start is None else start + timeout - time.monotonic()
      if concurrent.futures.wait([future], max(0.0, left)).done:
        return True
      if start is not None and time.monotonic() >= start + timeout:
        return False

  def kill(self) -> None:
    """Kills the worker processes (stuck in a call that no signal reaches)."""
    kill = getattr(self._executor, 'kill_workers', None)  # Python >= 3.14
    if kill is not None:
      kill()
    else:
      processes = list((getattr(self._executor, '_processes', None) or {}).values())
      for process in processes:
        process.kill()
      for process in processes:
        process.join(5)
    self.shutdown(wait=False)

  def shutdown(self, wait: bool) -> None:
    self._executor.shutdown(wait=wait, cancel_futures=True)
