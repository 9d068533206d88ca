"""Runs `model.fit` in resumable chunks: checkpoints, summaries, progress, NaN guard.

Shared by every protocol (pretraining, linear eval, fine-tuning). The contract:
- Checkpoints hold the model and optimizer (its `iterations` is the global step) and are
  written every `checkpoint_every` steps by `tf.train.CheckpointManager`, which writes
  the files first and then atomically replaces the `checkpoint` index: a SIGKILL at any
  moment leaves the previous checkpoint intact and loadable.
- Re-running the same command restores the latest checkpoint and continues at its step.
  Data position: the input stream is rebuilt from `seed + step`, i.e. a resumed run sees
  a fresh, deterministic shuffle rather than replaying the examples already seen in the
  interrupted epoch (the same semantics as SimCLR / Model Garden restarts). Nothing beyond
  the last checkpoint is kept, nothing before it is lost.
- A NaN/Inf loss stops training before any checkpoint of the bad weights is written and
  raises `NonFiniteLossError`; the last good checkpoint stays the latest one.
- Bad input (input/bad_examples.py): the count of skipped examples is a TensorBoard
  scalar and part of the progress line; past the tracker's limit the input ends, training
  stops and errors.TooManyBadExamples is raised, the last checkpoint again the latest.
  Under MultiWorkerMirroredStrategy the input goes on and the workers agree at each log
  step whether any is past its limit (`any_worker`); then all stop at that step, the
  others with an error pointing at that worker's list. An input that ends before the
  last step raises errors.InputEnded.
- Under MultiWorkerMirroredStrategy every worker saves (saving is collective), but only
  the chief writes into `model_dir`; the others write to model_dir/.scratch/<task> (kept:
  a worker's bad_examples.json is there). Every worker restores the chief's latest
  checkpoint: after a restart all start at one step, whatever each had saved.
- Preemption: SIGTERM (a preemption notice, an eviction) sets a flag; at the end of that
  step every worker learns of it (a one-number all-reduce per step under
  MultiWorkerMirroredStrategy), all save a checkpoint of that same step and
  errors.Preempted is raised (exit status 143: restart me). At most the step in flight is
  lost. A worker that stops answering (killed, its machine gone) makes the others fail
  with errors.PeerLost (also 143) instead of waiting: the collective time limit is the
  strategy's (runtime/distribute.py).
- Summaries past the restored step (written before a kill, after the last checkpoint)
  are removed from the event files on resume, so no step is drawn twice.
"""

import dataclasses
import json
import logging
import math
import os
import re
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Protocol, Sequence

import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf import progress as progress_lib
from cvrl_tf.input.bad_examples import FILE as BAD_EXAMPLES_FILE
from cvrl_tf.runtime import optim

CHECKPOINT_SUBDIR = 'checkpoints'
SUMMARY_SUBDIR = 'summaries'
OPERATIVE_CONFIG = 'operative_config.gin'  # What gin set, written by cvrl_train.


class NonFiniteLossError(FloatingPointError):
  pass


def is_multi_worker(strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
      strategy.extended._num_workers > 1)  # pylint: disable=protected-access


def any_worker(strategy) -> Optional[Callable[[Sequence[bool]], List[bool]]]:
  """Under MultiWorkerMirroredStrategy, a function telling, flag by flag, whether it is
  set on any worker (a collective: every worker must call it at the same step, with as
  many flags); else None."""
  if not is_multi_worker(strategy):
    return None

  def agree(flags: Sequence[bool]) -> List[bool]:
    votes = strategy.run(lambda: tf.constant([int(f) for f in flags], tf.int32))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None)
    return [bool(v) for v in total.numpy()]
  return agree


class StopSignal:
  """SIGTERM as a flag for the train loop (while entered, in the main thread; the
  previous handler is put back on exit). `received`: when it came, or None."""

  def __init__(self):
    self.received: Optional[float] = None
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = time.time()

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == 'chief':
    return True
  cluster = resolver.cluster_spec().as_dict()
  return (resolver.task_type == 'worker' and resolver.task_id == 0 and
          'chief' not in cluster)


def is_chief_task(tf_config: Optional[str]) -> bool:
  """is_chief from a TF_CONFIG value, before any strategy exists (None: one process)."""
  if not tf_config:
    return True
  try:
    config = json.loads(tf_config)
  except ValueError:
    return True  # The strategy reports a malformed TF_CONFIG.
  task = config.get('task') or {}
  if task.get('type') == 'chief':
    return True
  return (task.get('type') == 'worker' and int(task.get('index', 0)) == 0 and
          'chief' not in (config.get('cluster') or {}))


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Where this worker writes: model_dir for the chief, a scratch dir for the others."""
  if is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir, '.scratch', f'{resolver.task_type}_{resolver.task_id}')


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h:d}:{m:02d}:{s:02d}' if h else f'{m:d}:{s:02d}'


class Monitor(Protocol):
  """Measures the model every `every` steps (and at step 0 of a fresh run, and at the
  end); its numbers join that step's TensorBoard scalars and progress line. Its time is
  left out of the examples/s rate. E.g. protocols/knn_monitor.py."""
  every: int

  def __call__(self, step: int) -> Dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How often a training run writes: a checkpoint every `checkpoint_every` steps (the
  last `keep_checkpoints` kept), scalars and a progress line every `log_every` steps.
  examples_per_step / example_name: what the progress line's rate counts (e.g. 2 x the
  batch of 'clips' in pretraining)."""
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 100
  examples_per_step: int = 1
  example_name: str = 'clips'


class _ChunkCallback(tf_keras.callbacks.Callback):
  """Checkpoints, TensorBoard scalars, a progress line, monitors and the NaN guard."""

  def __init__(self, manager, summary_writer, total_steps, cadence: Cadence, chief,
               progress_stream, bad_examples=None, monitors: Sequence[Monitor] = (),
               any_worker: Optional[Callable[[Sequence[bool]], List[bool]]] = None,
               stop_signal: Optional[StopSignal] = None):
    super().__init__()
    self._bad = bad_examples
    self._any_worker = any_worker
    self._signal = stop_signal
    self.peer_stop_step: Optional[int] = None  # Another worker's input went bad here.
    self.preempted_step: Optional[int] = None  # SIGTERM here (any worker's): saved.
    self.preempted_here = False  # Whether this worker got the SIGTERM.
    self._monitors = list(monitors)
    self._manager = manager
    self._writer = summary_writer
    self._total = total_steps
    self._checkpoint_every = cadence.checkpoint_every
    self._log_every = max(1, cadence.log_every)
    self._examples_per_step = cadence.examples_per_step
    self._name = cadence.example_name
    self._chief = chief
    self._stream = progress_stream
    self.bad_step: Optional[int] = None
    self.last_logs: Dict[str, float] = {}
    # The last step trained (Keras counts one more in `iterations` when the input ends).
    self.done_step: Optional[int] = None

  def on_train_begin(self, logs=None):
    self._start_step = self.done_step = self._step()
    self._t0 = self._t_log = time.perf_counter()
    self._step_log = self._start_step
    if self._start_step == 0 and self._monitors:  # Where the curve starts: the init.
      self._write(0, self._measure(0, at_start=True))

  def _measure(self, step: int, at_start: bool = False) -> Dict[str, float]:
    """The monitors due at `step`; their time is moved out of the rate's interval."""
    out, start = {}, time.perf_counter()
    for monitor in self._monitors:
      if at_start or step % monitor.every == 0 or step >= self._total:
        out.update(monitor(step))
    self._t_log += time.perf_counter() - start
    return out

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def on_train_batch_end(self, batch, logs=None):
    logs = {k: float(v) for k, v in (logs or {}).items()}
    step = self.done_step = self._step()
    loss = logs.get('loss', 0.0)
    if not math.isfinite(loss):
      self.bad_step = step
      self.model.stop_training = True
      return
    self.last_logs = logs
    bad_input, preempted = self._stops(step)
    if bad_input:
      self.model.stop_training = True  # Nothing more is saved: see fit_resumable.
      return
    measured = self._measure(step) if self._monitors else {}
    if measured or step % self._log_every == 0 or step >= self._total:
      self._log(step, {**logs, **measured})
      self.model.reset_metrics()  # the next line averages over the next interval only
    if step % self._checkpoint_every == 0 or step >= self._total or preempted:
      self._manager.save(checkpoint_number=step)
    if preempted and step < self._total:
      self.preempted_step = step
      self.model.stop_training = True
    if step >= self._total:
      self.model.stop_training = True

  def _stops(self, step: int):
    """(bad input stops training, a SIGTERM stops it) at this step: this worker's, or,
    under MultiWorkerMirroredStrategy, any worker's, agreed by one vote per step so that
    all stop at the same step (a worker stopping alone leaves the others waiting in a
    collective). The bad-examples limit counts at log steps only, as it always did."""
    log_step = step % self._log_every == 0 or step >= self._total
    bad = self._bad is not None and self._bad.error is not None
    self.preempted_here = self._signal is not None and self._signal.received is not None
    if self._any_worker is None:
      return bad, self.preempted_here
    any_bad, any_preempted = self._any_worker([bad and log_step, self.preempted_here])
    if any_bad and log_step and not bad:
      self.peer_stop_step = step
    return any_bad and log_step, any_preempted

  def _log(self, step, logs):
    now = time.perf_counter()
    rate = (step - self._step_log) * self._examples_per_step / max(now - self._t_log, 1e-9)
    self._t_log, self._step_log = now, step
    lr = float(optim.current_learning_rate(self.model.optimizer))
    scalars = dict(logs, learning_rate=lr, **{f'{self._name}_per_sec': rate})
    if self._bad is not None:
      scalars['bad_examples'] = self._bad.bad_reads
    self._write(step, scalars)
    if self._chief and self._stream is not None:
      done = step - self._start_step
      elapsed = now - self._t0
      eta = elapsed / max(done, 1) * (self._total - step)
      metrics = ' '.join(f'{k}={v:.4g}' for k, v in sorted(logs.items())
                         if k != 'learning_rate')
      bad = '' if self._bad is None else f' bad={self._bad.bad_reads}'
      print(f'step {step}/{self._total} {metrics} lr={lr:.4g} '
            f'{self._name}/s={rate:.1f} eta={format_duration(eta)}{bad}',
            file=self._stream, flush=True)

  def _write(self, step: int, scalars: Dict[str, float]) -> None:
    """TensorBoard scalars at `step` (the chief's writer only)."""
    if self._writer is not None and scalars:
      with self._writer.as_default(step=step):
        for key, value in scalars.items():
          tf.summary.scalar(key, value)
      self._writer.flush()
    if step == 0 and scalars and self._chief and self._stream is not None:
      print('step 0 ' + ' '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items())),
            file=self._stream, flush=True)


class _QuietEndOfInput(logging.Filter):
  """Drops Keras' warning that the input ran out when the bad-examples limit ended it:
  the one line of errors.TooManyBadExamples says what happened."""

  def __init__(self, bad_examples):
    super().__init__()
    self._bad = bad_examples

  def filter(self, record):
    stopped = self._bad is not None and self._bad.error is not None
    return not (stopped and 'ran out of data' in record.getMessage())


_LOSS_SCALE_KEY = 'optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE'


def _restore(items: dict, prefix: str, progress_stream) -> None:
  """Restores `prefix` into the checkpoint `items`, every object of the program matched,
  with one exception: a run resumed in mixed_float16 from a checkpoint written in
  another precision has no loss scale to restore (the LossScaleOptimizer tracks it
  through the optimizer it wraps, so checkpoints of every precision otherwise share one
  layout). Then the two loss-scale variables may stay unmatched, and the scale starts
  at its initial value."""
  status = tf.train.Checkpoint(**items).restore(prefix)
  optimizer = items['optimizer']
  scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  if not scaled or _LOSS_SCALE_KEY in dict(tf.train.list_variables(prefix)):
    status.assert_existing_objects_matched()
    return
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    # tf.train's message: 'Found N Python objects that were not bound ...: [<vars>]'.
    found = re.search(r'Found (\d+) Python objects', str(e))
    loss_scale = ('current_loss_scale', 'good_steps')
    if not found or int(found.group(1)) > len(loss_scale) or not all(
        name in str(e) for name in loss_scale[:int(found.group(1))]):
      raise
  progress_lib.say(progress_stream, f'{prefix} was written without float16 loss '
                   f'scaling: the loss scale starts at its initial value')


# Errors a collective raises when a peer is gone or late past the time limit.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


def _fit(model, dataset, steps: int, callback: '_ChunkCallback', strategy, bad_examples,
         chief_checkpoints: str) -> None:
  """One fit call over an endless dataset (the callback stops at the last step); a lost
  worker becomes errors.PeerLost under MultiWorkerMirroredStrategy."""
  quiet = _QuietEndOfInput(bad_examples)
  tf.get_logger().addFilter(quiet)
  try:
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[callback])
  except _PEER_ERRORS as e:
    if not is_multi_worker(strategy):
      raise
    raise errors.PeerLost(
        f'another worker stopped answering after step {callback.done_step} '
        f'({type(e).__name__}: {errors.one_line(str(e))[:200]}); restart every worker with '
        f'the same command: all resume from '
        f'{tf.train.latest_checkpoint(chief_checkpoints) or "the start"}') from None
  finally:
    tf.get_logger().removeFilter(quiet)


def drop_summaries_after(summary_dir: str, step: int) -> int:
  """Removes every event past `step` from the event files in summary_dir (a run killed
  after its last checkpoint wrote them; resumed, it writes those steps again and
  TensorBoard would draw each twice). A file cut short by the kill keeps what reads.
  Each file is replaced atomically. Returns the number of events dropped."""
  dropped = 0
  for path in sorted(tf.io.gfile.glob(os.path.join(summary_dir, 'events.out.tfevents.*'))):
    records = list(tf.data.TFRecordDataset(path).ignore_errors().as_numpy_iterator())
    keep = [r for r in records if tf.compat.v1.Event.FromString(r).step <= step]
    readable = sum(16 + len(r) for r in records)  # 16: a record's length and CRCs
    if len(keep) == len(records) and readable == tf.io.gfile.stat(path).length:
      continue
    dropped += len(records) - len(keep)
    with tf.io.TFRecordWriter(path + '.tmp') as out:
      for record in keep:
        out.write(record)
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
  return dropped


def fit_resumable(model: tf_keras.Model,
                  make_dataset: Callable[[int], object],
                  model_dir: str,
                  total_steps: int,
                  strategy: tf.distribute.Strategy,
                  cadence: Cadence = Cadence(),
                  extra_checkpoint_items: Optional[dict] = None,
                  progress_stream=progress_lib.STDERR,
                  bad_examples=None,
                  monitors: Sequence[Monitor] = ()) -> Dict[str, float]:
  """Trains `model` (compiled, built, under `strategy.scope()`) until `total_steps`.

  `make_dataset(start_step)` returns the (distributed) dataset to read from; it is called
  once, after restoring, with the step training resumes at. Returns the last logged
  metrics. Raises NonFiniteLossError on a NaN/Inf loss, errors.TooManyBadExamples
  when the input's `bad_examples` tracker (input/bad_examples.BadExamples) stopped it (or,
  under MultiWorkerMirroredStrategy, another worker's), errors.InputEnded when the
  input ended before the last step, errors.Preempted after a SIGTERM (saved at that
  step) and errors.PeerLost when another worker stopped answering.
  `monitors` (see Monitor) add their numbers to the logs of the steps they run at.
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  out_dir = worker_dir(model_dir, strategy)
  chief = is_chief(strategy)
  items = dict(model=model, optimizer=model.optimizer, **(extra_checkpoint_items or {}))
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(**items), os.path.join(out_dir, CHECKPOINT_SUBDIR),
      max_to_keep=cadence.keep_checkpoints)
  # Every worker resumes from the chief's checkpoint: one step for all after a restart.
  chief_checkpoints = os.path.join(model_dir, CHECKPOINT_SUBDIR)
  resumed = tf.train.latest_checkpoint(chief_checkpoints)
  if resumed:
    _restore(items, resumed, progress_stream)
    if chief:
      progress_lib.say(progress_stream, f'Resuming from {resumed}')
  start_step = int(model.optimizer.iterations.numpy())
  if start_step >= total_steps:
    return {}
  summaries = os.path.join(out_dir, SUMMARY_SUBDIR)
  if chief:  # Also without a checkpoint: a run killed before its first one logged steps.
    drop_summaries_after(summaries, start_step)
  writer = tf.summary.create_file_writer(summaries) if chief else None
  try:
    dataset = make_dataset(start_step)  # A feature cache reads its input here.
  except (StopIteration, tf.errors.OutOfRangeError):
    if bad_examples is not None:
      bad_examples.raise_if_stopped()
    raise
  with StopSignal() as stop_signal:
    callback = _ChunkCallback(manager, writer, total_steps, cadence, chief, progress_stream,
                              bad_examples, monitors, any_worker(strategy), stop_signal)
    _fit(model, dataset, total_steps - start_step, callback, strategy, bad_examples,
         chief_checkpoints)
  if writer is not None:
    writer.close()
  if callback.preempted_step is not None:
    who = 'this worker' if callback.preempted_here else 'another worker'
    raise errors.Preempted(
        f'SIGTERM reached {who} at step {callback.preempted_step} of {total_steps}; every '
        f'worker saved that step ({tf.train.latest_checkpoint(chief_checkpoints)}) and '
        f'stopped. Re-run the same command (on every worker) to resume from it.')
  if bad_examples is not None:
    bad_examples.raise_if_stopped()
  if callback.peer_stop_step is not None:
    raise errors.TooManyBadExamples(
        f'another worker stopped training at step {callback.peer_stop_step}: more of its '
        f'examples than the limit could not be used; its log and its {BAD_EXAMPLES_FILE} '
        f'({os.path.join(model_dir, BAD_EXAMPLES_FILE)} for the chief, '
        f'{os.path.join(model_dir, ".scratch", "*", BAD_EXAMPLES_FILE)} for the others) '
        f'name them. '
        f'Replace or remove those shards (cvrl_inspect finds every bad example), then '
        f're-run the same command on every worker to resume from '
        f'{manager.latest_checkpoint or "the start"}.')
  if callback.bad_step is not None:
    latest = manager.latest_checkpoint or '(none yet)'
    raise NonFiniteLossError(
        f'loss became NaN/Inf at step {callback.bad_step}; training stopped. The last good '
        f'checkpoint is {latest}. Lower the learning rate or check the input data, then '
        f're-run the same command to resume from it.')
  if callback.done_step < total_steps:
    why = 'a training input must be endless (repeated)' + (
        '; with several workers, a worker whose videos all fail ends its input: see each '
        'worker\'s log' if is_multi_worker(strategy) else '')
    raise errors.InputEnded(
        f'the training input ended at step {callback.done_step} of {total_steps} ({why}). '
        f'The last checkpoint is {manager.latest_checkpoint or "(none yet)"}; fix the '
        f'input, then re-run the same command to resume from it.')
  return callback.last_logs

