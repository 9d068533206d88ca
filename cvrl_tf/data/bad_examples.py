"""Examples that cannot be used: skipped, counted, named once, and a limit on how many.

Why: an undecodable JPEG, a record without frames or label, a malformed record or a file
cut mid-record must not stop a run of 800 epochs (again after each resume); but a data
set that is mostly broken must not silently train on what is left either.

How, in tf.data (which has no try/except): `guarded_map` runs the per-video function on
a one-element dataset with `ignore_errors` and falls back to a placeholder flagged bad,
so a failure drops that video only and never a good one (shards.read_records reads each
file on its own for the same reason). Bad videos, rare, reach Python through a
py_function: `BadExamples` finds out why (record_check.diagnose), logs one line naming
the shard, record and clip/media_id, keeps the list in <model_dir>/bad_examples.json
(atomically rewritten, one section per stage) and counts reads. When the bad reads
exceed both `max_fraction` of the reads and `min_count` (gin: bad_examples.max_fraction,
bad_examples.min_count), the pipeline ends and the run stops with
errors.TooManyBadExamples; checkpoints are untouched, a re-run resumes.
The py_function keeps such a pipeline in this process (no tf.data service).
"""

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional

import gin
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import record_check

FILE = 'bad_examples.json'
REPORT_EVERY = 64  # Reads are passed to Python in bunches: no py_function per video.
REWRITE_EVERY_S = 60.0  # bad_examples.json: at once for a new example, else at most this often.
_FILE_LOCK = threading.Lock()  # Trackers of one process share the file.


@dataclasses.dataclass(frozen=True)
class Limit:
  """Stop when bad reads > min_count and > max_fraction of all reads (bad included)."""
  max_fraction: float = 0.01
  min_count: int = 10

  def exceeded(self, bad: int, read: int) -> bool:
    return bad > self.min_count and bad > self.max_fraction * read


@gin.configurable('bad_examples')
def limit(max_fraction: float = 0.01, min_count: int = 10) -> Limit:
  """The limit of training input. min_count: a few bad videos never stop a run (nor a
  small data set with one bad video); max_fraction: a broken data set does."""
  if not 0.0 <= max_fraction <= 1.0 or min_count < 0:
    raise errors.UserError(f'bad_examples.max_fraction must be in [0, 1] and '
                           f'bad_examples.min_count >= 0, got {max_fraction}, {min_count}')
  return Limit(max_fraction, min_count)


class BadExamples:
  """Counts the examples a pipeline reads and names the bad ones (thread-safe).

  stage: the section of bad_examples.json ('pretrain', 'train', 'test', ...).
  limit: None for evaluation (every video is listed, nothing stops).
  keep_earlier: start from the examples earlier runs listed for this stage (training:
    names accumulate over resumes) or from none (a test lists what it could not read).
  """

  # pylint: disable-next=redefined-outer-name
  def __init__(self, model_dir: Optional[str] = None, stage: str = 'train',
               limit: Optional[Limit] = None, need_label: bool = False,
               progress_stream=progress_lib.STDERR, keep_earlier: bool = True):
    self.path = os.path.join(model_dir, FILE) if model_dir else None
    self.stage, self.limit, self.need_label = stage, limit, need_label
    self._stream = progress_lib.resolve_stream(progress_stream)
    self._lock = threading.Lock()
    self.reads = self.bad_reads = 0
    self.error: Optional[errors.TooManyBadExamples] = None
    self._named = set()  # (shard, record) named in this process.
    self._written = time.monotonic()
    stored = (files_lib.read_json(self.path) or {}) if self.path and keep_earlier else {}
    self._examples: Dict[tuple, dict] = {
        (e['shard'], e['record']): e for e in stored.get(stage, {}).get('examples', [])}

  @property
  def examples(self) -> List[dict]:
    """Every bad example seen by this stage (this run and earlier ones), sorted."""
    with self._lock:
      return [dict(e) for _, e in sorted(self._examples.items())]

  def report(self, reads: int, ok: bool, shard: bytes, index: int, record: bytes) -> bool:
    """Adds `reads` reads and, unless ok, one bad example; True: stop the pipeline."""
    with self._lock:
      self.reads += int(reads)
      if not ok:
        self.bad_reads += 1
        self._add(shard.decode('utf-8', 'replace'), int(index), record)
        if (self.error is None and self.limit is not None and
            self.limit.exceeded(self.bad_reads, self.reads)):
          self.error = errors.TooManyBadExamples(self._limit_message())  # Raised later.
      return self.error is not None

  def _add(self, shard: str, index: int, record: bytes) -> None:
    key = (shard, index)
    entry = self._examples.get(key)
    if entry is None:
      media_id, reason = record_check.diagnose(index, record, self.need_label)
      entry = self._examples[key] = {'shard': shard, 'record': index,
                                     'media_id': media_id, 'reason': reason,
                                     'times_read': 0}
    entry['times_read'] += 1
    if key in self._named and time.monotonic() - self._written > REWRITE_EVERY_S:
      self._write()  # Keeps times_read and the counts current, not on every read.
    if key not in self._named:
      self._named.add(key)
      where = 'damaged file' if index < 0 else f'record {index}'
      progress_lib.say(self._stream, f'{self.stage}: skipped a bad example: {shard} '
                       f'{where} media_id={entry["media_id"] or "?"}: {entry["reason"]} '
                       f'({self.bad_reads} bad of {self.reads} read'
                       + (f'; listed in {self.path})' if self.path else ')'))
      self._write()

  def _write(self) -> None:
    self._written = time.monotonic()
    if not self.path:
      return
    with _FILE_LOCK:
      stored = files_lib.read_json(self.path) or {}
      stored[self.stage] = {'examples': [e for _, e in sorted(self._examples.items())],
                            'this_run': {'read': self.reads, 'bad_reads': self.bad_reads}}
      tf.io.gfile.makedirs(os.path.dirname(self.path))
      files_lib.write_json(self.path, stored)

  def _limit_message(self) -> str:
    where = self.path or 'the log above'
    return (f'{self.bad_reads} of {self.reads} examples read could not be used '
            f'({self.bad_reads / max(self.reads, 1):.1%}, over the limit of '
            f'{self.limit.max_fraction:.1%} and {self.limit.min_count}); they are listed '
            f'in {where}. Replace or remove those shards (cvrl_inspect finds every bad '
            f'example) or raise bad_examples.max_fraction, then re-run the same command '
            f'to resume from the last checkpoint.')

  def raise_if_stopped(self) -> None:
    if self.error is not None:
      raise self.error


def _placeholder(spec):
  """Zeros shaped like `spec` (unknown dimensions 0): what a failed video yields."""
  return tf.nest.map_structure(
      lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), spec)


def _serialized(record) -> tf.Tensor:
  """The serialized record the tracker diagnoses (record_check); b'' where the source
  yields parsed features instead (a `tfds:` source): its reason then is the error's."""
  if isinstance(record, tf.Tensor) and record.dtype == tf.string and record.shape.rank == 0:
    return record
  return tf.constant(b'')


def guarded_map(ds: tf.data.Dataset, fn: Callable, tracker: BadExamples,
                deterministic: bool) -> tf.data.Dataset:
  """ds of (x, (file, index, record)) -> fn(x, (file, index, record)), in parallel, with
  every element whose fn fails reported to `tracker` and dropped (see module docstring).
  The dataset ends when the tracker's limit is exceeded."""

  # One traced function called from each video's own little dataset: only a call op is
  # instantiated per video, not the whole per-video graph.
  traced = tf.function(fn, autograph=False, reduce_retracing=True)

  def attempt(x, triple):
    graph = tf.autograph.experimental.do_not_convert
    tried = tf.data.Dataset.from_tensors((x, triple)).map(
        graph(lambda x_, t: (True, traced(x_, t), (t[0], t[1], tf.constant(b'')))))
    # Built here, not in a map: one function less to instantiate per video.
    failed = tf.data.Dataset.from_tensors(
        (False, _placeholder(tried.element_spec[1]),
         (triple[0], triple[1], _serialized(triple[2]))))
    return tried.ignore_errors().concatenate(failed).take(1)

  def count(pending, element):
    ok, out, (shard, index, record) = element
    n = pending + 1
    due = tf.logical_or(tf.logical_not(ok), n >= REPORT_EVERY)

    def report():
      stop = tf.py_function(
          lambda *a: tracker.report(*(t.numpy() for t in a)),
          [n, ok, shard, index, record], tf.bool)
      return tf.ensure_shape(stop, [])

    stop = tf.cond(due, report, lambda: tf.constant(False))
    return tf.where(due, tf.constant(0, tf.int64), n), (stop, ok, out)

  graph = tf.autograph.experimental.do_not_convert
  ds = ds.interleave(graph(attempt), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=deterministic)
  ds = ds.scan(tf.constant(0, tf.int64), graph(count))
  ds = ds.take_while(graph(lambda stop, ok, out: tf.logical_not(stop)))
  return ds.filter(graph(lambda stop, ok, out: ok)).map(graph(lambda stop, ok, out: out))
