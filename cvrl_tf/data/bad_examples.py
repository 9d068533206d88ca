"""Examples that cannot be used: skipped, counted, named once, and a limit on how many.

Why: an undecodable JPEG, a record without frames or label, a malformed record or a file
cut mid-record must not stop a run of 800 epochs (again after each resume); but a data
set that is mostly broken must not silently train on what is left either.

How, in tf.data (which has no try/except): `guarded_map` maps the videos in windows of
WINDOW, each a little dataset whose map skips a failed video (`ignore_errors`) and ends
with a roll call of the window's (shard, record index); a scan below sees which slots
never came. So a failure drops that video only and never a good one
(shards.read_records reads each file on its own for the same reason), and the guard
costs a few dataset ops per window, not per video (an input rate within a few percent
of an unguarded map: benchmarks/README.md). Bad videos, rare, reach Python through a
py_function: `BadExamples` reads the record again and finds out why
(record_check.diagnose), logs one line naming the shard, record and clip/media_id, keeps
the list in <model_dir>/bad_examples.json (atomically rewritten, one section per stage)
and counts reads (at each window's end: a run that stops mid-window leaves that
window's last few reads uncounted). When the bad reads
exceed both `max_fraction` of the reads and `min_count` (gin: bad_examples.max_fraction,
bad_examples.min_count), the pipeline ends and the run stops with
errors.TooManyBadExamples; checkpoints are untouched, a re-run resumes.
The py_function keeps such a pipeline in this process (no tf.data service).
"""

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import record_check

FILE = 'bad_examples.json'
REPORT_EVERY = 64  # Reads are passed to Python in bunches: no py_function per video.
WINDOW = 16  # Videos per guarded window (guarded_map): its cost is per window.
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
    the limit are not counted: the stream ends there)."""
    with self._lock:
      counted = 0
      for at, shard, index, record in bad:
        self.reads += int(at) - counted
        counted = int(at)
        self.bad_reads += 1
        self._add(shard, int(index), record)
        if (self.error is None and self.limit is not None and
            self.limit.exceeded(self.bad_reads, self.reads)):
          self.error = errors.TooManyBadExamples(self._limit_message())  # Raised later.
          return self.end_input
      self.reads += int(reads) - counted
      return self.error is not None and self.end_input

  def report_window(self, earlier_reads, bad, files, indices, notes, reread: bool) -> bool:
    """report() of `earlier_reads` good reads, then one guarded window (guarded_map): `bad`
    masks its elements (file, index, note). A bad record is read again from its shard to
    be diagnosed (`reread`); a damaged file's note says what happened."""
    def record_of(file: bytes, index: int, note: bytes) -> Callable[[], bytes]:
      if index < 0 or not reread:
        return lambda: note
      return lambda: record_check.read_record(file.decode('utf-8', 'replace'), index)
    named = [(earlier_reads + slot + 1, f.decode('utf-8', 'replace'), int(i),
              record_of(f, int(i), n))
             for slot, (b, f, i, n) in enumerate(zip(bad, files, indices, notes)) if b]
    return self.report(int(earlier_reads) + len(files), named)

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


def guarded_map(ds: tf.data.Dataset, fn: Callable, tracker: BadExamples,
                window: int = WINDOW) -> tf.data.Dataset:
  """ds of (x, (file, index, payload)) -> fn(x, (file, index, payload)), in parallel, with
  every element whose fn fails reported to `tracker` and dropped (see module docstring).
  The dataset ends when the tracker's limit is exceeded.

  How: the elements go in windows of `window`; each window maps its elements tagged with
  their slot, drops the failures (ignore_errors), and ends with a roll call naming its
  elements (file, index); the count below it sees which slots never came. Per window,
  not per video, so the guard costs a few dataset ops per `window` videos. The output
  keeps the input's order (a roll call must follow its window's videos), as a
  deterministic parallel map would; measured, that costs little (benchmarks/README.md).
  """
  graph = tf.autograph.experimental.do_not_convert
  traced = tf.function(fn, autograph=False, reduce_retracing=True)
  record_payload = _is_record(ds.element_spec[1][2])
  out_spec = ds.map(graph(traced)).element_spec  # Built for its spec only, never run.
  no_names = (tf.zeros([0], tf.string), tf.zeros([0], tf.int64), tf.zeros([0], tf.string))

  def roll_call(file, index, payload):  # The damage message of a FILE_PROBLEM element.
    note = (tf.where(index < 0, payload, tf.constant(b'')) if record_payload
            else tf.constant(b''))
    return file, index, note

  def per_window(x_ds, triple_ds):  # window(): a dataset per component of the element.
    videos = tf.data.Dataset.zip((x_ds, triple_ds))
    # One window is mapped in order; windows are mapped in parallel (the interleave).
    done = videos.enumerate().map(
        graph(lambda slot, e: (tf.cast(slot, tf.int32), traced(*e), no_names))
    ).ignore_errors()
    names = tf.data.Dataset.zip(triple_ds).map(graph(roll_call)).batch(window).map(
        graph(lambda f, i, n: (tf.constant(-1, tf.int32), _placeholder(out_spec), (f, i, n))))
    return done.concatenate(names)

  def count(state, element):
    """(good reads not yet reported, slots of this window seen) -> (stop, ok, out)."""
    pending, seen = state
    slot, out, (files, indices, notes) = element
    is_roll_call = slot < 0
    n = tf.shape(files)[0]  # 0 but in a roll call.
    missing = tf.logical_not(seen[:n])
    due = tf.logical_and(is_roll_call, tf.logical_or(
        tf.reduce_any(missing), pending + tf.cast(n, tf.int64) >= REPORT_EVERY))

    def report():
      stop = tf.py_function(
          lambda *a: tracker.report_window(*(t.numpy() for t in a), reread=record_payload),
          [pending, missing, files, indices, notes], tf.bool)
      return tf.ensure_shape(stop, [])

    stop = tf.cond(due, report, lambda: tf.constant(False))
    pending = tf.where(due, tf.constant(0, tf.int64), pending + tf.cast(n, tf.int64))
    seen = tf.where(is_roll_call, tf.zeros([window], tf.bool),
                    tf.tensor_scatter_nd_update(seen, [[tf.maximum(slot, 0)]], [True]))
    return (pending, seen), (stop, tf.logical_not(is_roll_call), out)

  ds = ds.window(window).interleave(
      graph(per_window), block_length=window + 1, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)  # Keeps each window's elements together, its roll call last.
  ds = ds.scan((tf.constant(0, tf.int64), tf.zeros([window], tf.bool)), graph(count))
  ds = ds.take_while(graph(lambda stop, ok, out: tf.logical_not(stop)))
  return ds.filter(graph(lambda stop, ok, out: ok)).map(graph(lambda stop, ok, out: out))
