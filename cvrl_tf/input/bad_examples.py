"""Examples that cannot be used: skipped, counted, named once, and a limit on how many.

Why: an undecodable JPEG, a record without frames or label, a malformed record or a file
cut mid-record must not stop a run of 800 epochs (again after each resume); but a data
set that is mostly broken must not silently train on what is left either.

How, in tf.data (which has no try/except): `guarded_map` numbers the videos, maps them
in one ordered parallel map that drops a failure (`ignore_errors`) and finds the
numbers that never came; so a failure drops that video only and never a good one
(shards.read_records reads each file on its own for the same reason). Bad videos, rare,
reach Python through a py_function: `BadExamples` reads the record again and finds out
why (record_check.diagnose), logs one line naming the shard, record and clip/media_id,
keeps the list in <model_dir>/bad_examples.json (atomically rewritten, one section per
stage) and counts reads. When the bad reads
exceed both `max_fraction` of the reads and `min_count` (gin: bad_examples.max_fraction,
bad_examples.min_count), the pipeline ends and the run stops with
errors.TooManyBadExamples; checkpoints are untouched, a re-run resumes. (Multi-worker:
the pipeline goes on and the workers agree on the stop: runtime/train_loop.py.)
The py_function keeps such a pipeline in this process (no tf.data service).
"""

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import record_check

FILE = 'bad_examples.json'
REPORT_EVERY = 64  # Reads are passed to Python in bunches: no py_function per video.
MARK_EVERY = 16  # guarded_map: a marker after every this many videos (see there).
STARVED_AFTER = 256  # Bad reads in a row that end the input past the limit, whatever.
REWRITE_EVERY_S = 60.0  # bad_examples.json: at once for a new example, else at most this often.
_FILE_LOCK = threading.Lock()  # Trackers of one process share the file.


@dataclasses.dataclass(frozen=True)
class Limit:
  """Stop when bad reads > min_count and > max_fraction of all reads (bad included).

  The limit of training input. min_count: a few bad videos never stop a run (nor a
  small data set with one bad video); max_fraction: a broken data set does.
  """
  max_fraction: float = 0.01
  min_count: int = 10

  def __post_init__(self):
    if not 0.0 <= self.max_fraction <= 1.0 or self.min_count < 0:
      raise errors.UserError(
          f'bad_examples.max_fraction must be in [0, 1] and bad_examples.min_count >= 0, '
          f'got {self.max_fraction}, {self.min_count}')

  def exceeded(self, bad: int, read: int) -> bool:
    return bad > self.min_count and bad > self.max_fraction * read


class BadExamples:
  """Counts the examples a pipeline reads and names the bad ones (thread-safe).

  stage: the section of bad_examples.json ('pretrain', 'train', 'test', ...).
  limit: None for evaluation (every video is listed, nothing stops).
  keep_earlier: start from the examples earlier runs listed for this stage (training:
    names accumulate over resumes) or from none (a test lists what it could not read).
  end_input: past the limit, end the input (one process); False under
    MultiWorkerMirroredStrategy, where the workers must stop at the same step: the input
    runs on, skipping, and the train loop agrees on the stop (runtime/train_loop.py).
  """

  # pylint: disable-next=redefined-outer-name
  def __init__(self, model_dir: Optional[str] = None, stage: str = 'train',
               limit: Optional[Limit] = None, need_label: bool = False,
               progress_stream=progress_lib.STDERR, keep_earlier: bool = True,
               end_input: bool = True):
    self.path = os.path.join(model_dir, FILE) if model_dir else None
    self.stage, self.limit, self.need_label = stage, limit, need_label
    self.end_input = end_input
    self._bad_in_a_row = 0
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

  def report(self, reads: int, bad: Sequence[Tuple[int, str, int, Callable[[], bytes]]] = ()
             ) -> bool:
    """Adds `reads` reads and the bad examples among them, each (its place among the
    reads, 1-based; shard; index; a function giving its record, called only for an
    example not seen before), in order; True: stop (the reads after the one that crossed
    the limit are not counted: the stream ends there).

    Without end_input (multi-worker) the stream goes on past the limit until the workers
    agree to stop, unless it starves: STARVED_AFTER bad reads in a row past the limit end
    it anyway (a worker whose videos all fail would never reach the next step)."""
    with self._lock:
      counted = 0
      for at, shard, index, record in bad:
        self.reads += int(at) - counted
        self._bad_in_a_row = 1 + (self._bad_in_a_row if int(at) == counted + 1 else 0)
        counted = int(at)
        self.bad_reads += 1
        self._add(shard, int(index), record)
        if (self.error is None and self.limit is not None and
            self.limit.exceeded(self.bad_reads, self.reads)):
          self.error = errors.TooManyBadExamples(self._limit_message())  # Raised later.
        if self.error is not None and (
            self.end_input or self._bad_in_a_row >= STARVED_AFTER):
          return True
      if int(reads) > counted:
        self._bad_in_a_row = 0
      self.reads += int(reads) - counted
      return self.error is not None and self.end_input

  def report_gaps(self, reads, earlier_reads, bad, reread: bool) -> bool:
    """report() from guarded_map: `reads` reads, `earlier_reads` good ones first, then
    the bad ones, rows (file, index, note) of `bad`. A bad record is read again from its
    shard to be diagnosed (`reread`); a damaged file's note says what happened."""
    def name(file: bytes, index: bytes, note: bytes):  # -> (shard, index, record fn)
      if not file:  # No name in the table: the input failed before the guard saw it.
        return ('(input before the guard)', -1, lambda: (
            b'the input failed before this element reached the guard (e.g. a read error '
            b'in a TFDS source, or two iterators of one dataset at once)'))
      shard, index = file.decode('utf-8', 'replace'), int(index)
      if index < 0 or not reread:
        return shard, index, lambda: note
      return shard, index, lambda: record_check.read_record(shard, index)
    named = [(int(earlier_reads) + k + 1, *name(*row)) for k, row in enumerate(bad)]
    return self.report(int(reads), named)

  def _add(self, shard: str, index: int, record: Callable[[], bytes]) -> None:
    key = (shard, index)
    entry = self._examples.get(key)
    if entry is None:
      media_id, reason = record_check.diagnose(index, record(), self.need_label)
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
  """Zeros shaped like `spec` (unknown dimensions 0): what stands in for a missing part."""
  return tf.nest.map_structure(
      lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype), spec)


def _is_record(payload_spec) -> bool:
  """Whether the payload is a serialized record (read again to diagnose a failure), not
  parsed features (a `tfds:` source: its reason then is the pipeline's failure)."""
  return (isinstance(payload_spec, tf.TensorSpec) and payload_spec.dtype == tf.string and
          payload_spec.shape.rank == 0)


def guarded_map(ds: tf.data.Dataset, fn: Callable, tracker: BadExamples) -> tf.data.Dataset:
  """ds of (x, (file, index, payload)) -> fn(x, (file, index, payload)), in parallel and in
  order, with every element whose fn fails reported to `tracker` and dropped. The dataset
  ends when the tracker's limit is exceeded (and tracker.end_input).

  How: the elements are numbered, their names (file, index) put in a table on the way
  in, and mapped by one ordered parallel map whose failures are dropped (ignore_errors);
  below it a scan sees the numbers that never came, takes their names from the table and
  reports them (a py_function: rare). A marker that cannot fail follows every
  MARK_EVERY videos (and ends the stream), so failures are found within that many
  elements even when nothing after them succeeds. About 0.2 ms of CPU per video on an
  AMD EPYC (Zen 4), ~1-2% of a video's input work at 224 px (benchmarks/README.md).
  One iterator at a time per dataset (training and evaluation make one): the table is
  shared by the dataset's iterators.
  """
  graph = tf.autograph.experimental.do_not_convert
  traced = tf.function(fn, autograph=False, reduce_retracing=True)
  record_payload = _is_record(ds.element_spec[1][2])
  out_spec = ds.map(graph(traced)).element_spec
  # number -> (file, index as text, a damaged file's note), while in flight.
  names = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string,
                                                  tf.constant(['', '', '']))
  video, marker, end = 0, 1, 2  # What an element is (its tag).
  blank = _placeholder(ds.element_spec)
  tagged = ds.map(graph(lambda *e: (tf.constant(video), e)))
  markers = tf.data.Dataset.from_tensors((tf.constant(marker), blank)).repeat()
  every = tf.data.Dataset.from_tensor_slices(tf.constant([0] * MARK_EVERY + [1], tf.int64))
  ds = tf.data.Dataset.choose_from_datasets([tagged, markers], every.repeat(),
                                            stop_on_empty_dataset=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(end), blank))).enumerate()

  def enter(seq, element):
    tag, (x, (file, index, payload)) = element
    note = (tf.where(index < 0, payload, tf.constant(b'')) if record_payload
            else tf.constant(b''))
    put = names.insert(seq[None], tf.stack([file, tf.strings.as_string(index), note])[None])
    with tf.control_dependencies([put]):
      return tf.identity(seq), element

  def attempt(seq, element):
    tag, args = element
    out = tf.cond(tag == video, lambda: traced(*args), lambda: _placeholder(out_spec))
    return seq, tag, out

  def count(state, element):
    """(next number due, good reads not yet reported) -> (stop, is a video, out)."""
    expected, pending = state
    seq, tag, out = element
    missing = tf.range(expected, seq)
    n_missing = seq - expected
    reads = pending + n_missing + tf.cast(tag == video, tf.int64)
    due = tf.logical_or(n_missing > 0, tf.logical_or(reads >= REPORT_EVERY, tag == end))

    def report():
      found = names.lookup(missing)
      with tf.control_dependencies([found]):
        removed = names.remove(missing)
      with tf.control_dependencies([removed]):
        stop = tf.py_function(
            lambda r, p, f: tracker.report_gaps(r.numpy(), p.numpy(), f.numpy(),
                                                reread=record_payload),
            [reads, pending, found], tf.bool)
      return tf.ensure_shape(stop, [])

    stop = tf.cond(due, report, lambda: tf.constant(False))
    with tf.control_dependencies([names.remove(seq[None])]):
      stop = tf.identity(stop)
    return ((seq + 1, tf.where(due, tf.constant(0, tf.int64), reads)),
            (stop, tag == video, out))

  ds = ds.map(graph(enter))
  ds = ds.map(graph(attempt), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True).ignore_errors()
  ds = ds.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), graph(count))
  ds = ds.take_while(graph(lambda stop, ok, out: tf.logical_not(stop)))
  return ds.filter(graph(lambda stop, ok, out: ok)).map(graph(lambda stop, ok, out: out))
