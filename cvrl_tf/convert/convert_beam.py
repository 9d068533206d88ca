"""The converter's shards written by Apache Beam workers (`cvrl_convert --runner=...`).

Why Beam: Kinetics-size datasets do not convert on one machine in an afternoon; Beam runs
the same job on Dataflow, Flink or Spark (or locally, DirectRunner). Only the writing of
shards is distributed: the driver (convert.py) lists the videos, fixes the label map and
the plan, and writes the manifest from the shards' status files once the pipeline is
done. Each element of the pipeline is one shard, written by shard_writer.write, the code
the local pool runs, so the bytes are the same. One shard per element keeps the JPEG
bytes off Beam's shuffle (a shard is written where its videos are decoded), and a retried
element rewrites the same shard.

The listing travels as a file in the run's work folder (items.json), not inside the
pipeline graph (Kinetics-700's 650k rows would exceed what a runner accepts there).
Within a worker, videos are decoded in a child process (pool.OrderedPool with one worker)
so that a crash or a stalled read fails one video, never the bundle.

Apache Beam is an optional dependency: pip install 'cvrl_tf[beam]'.
"""

import dataclasses
import logging
import threading
from typing import List, Optional, Sequence, Tuple

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.convert import shard_writer
from cvrl_tf.convert import sources

INSTALL_HINT = "--runner needs Apache Beam: pip install 'cvrl_tf[beam]'"
_POLL_SECONDS = 2.0  # how often the driver looks for finished shards (progress)


class BeamArgsError(ValueError):
  """Beam is missing or its options are not understood (a usage error)."""


@dataclasses.dataclass(frozen=True)
class Job:
  """What a Beam worker needs to write any shard of one run (small, picklable)."""
  task: shard_writer.Task
  items_path: str  # JSON list of sources.Item fields, in listing order
  shard_names: Tuple[str, ...]
  seed: int


try:
  import apache_beam as _apache_beam  # pylint: disable=g-import-not-at-top
  _DoFn = _apache_beam.DoFn
except ImportError:
  _apache_beam, _DoFn = None, object


def _beam():
  if _apache_beam is None:
    raise BeamArgsError(INSTALL_HINT)
  return _apache_beam


def pipeline_options(beam_args: Sequence[str], workers: int):
  """PipelineOptions from the command line's Beam options; raises BeamArgsError.

  DirectRunner defaults to `workers` threads (multi_threading), not Beam's in-memory
  single thread: each thread's videos are decoded in a process of its own (the DoFn's
  pool), so the decoding runs on `workers` cores, as with the local pool; Beam's
  multi_processing mode (--direct_running_mode=multi_processing) gives the same bytes
  but starts a Python + TensorFlow per worker and stops its gRPC servers with a grace
  period (6 videos of 4 s on 2 busy cores: 25 s against 6 s in threads).
  """
  _beam()
  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options as po
  args = list(beam_args)
  options = po.PipelineOptions(args)
  runner = options.view_as(po.StandardOptions).runner
  if not runner:
    raise BeamArgsError('Beam options given without --runner')
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                   - set(options.get_all_options()))
  if unknown:
    raise BeamArgsError(f'unknown option(s) for --runner={runner}: '
                        + ', '.join(f'--{u}' for u in unknown))
  given = lambda name: any(a.split('=')[0] == name for a in args)
  if runner in ('DirectRunner', 'direct') and not given('--direct_running_mode'):
    args += ['--direct_running_mode=multi_threading']
    if not given('--direct_num_workers'):
      args += [f'--direct_num_workers={max(1, workers)}']
  if not given('--default_sdk_harness_log_level'):
    args += ['--default_sdk_harness_log_level=WARNING']  # Beam's INFO: pages per worker
  return po.PipelineOptions(args)


class WriteShardsFn(_DoFn):
  """Shard index -> the shard written (by shard_writer.write) -> its file name."""

  def __init__(self, job: Job):
    super().__init__()
    self.job = job
    self._items: Optional[List[sources.Item]] = None
    self._assignment = None
    self._pool = None

  def setup(self):
    rows = files_lib.read_json(self.job.items_path)
    self._items = [sources.Item(*row) for row in rows]
    self._assignment = shard_writer.assign_shards(
        len(self._items), len(self.job.shard_names), self.job.seed)
    self._pool = shard_writer.new_pool(1, self.job.task.decode_timeout)

  def process(self, k: int):
    from apache_beam import metrics  # pylint: disable=g-import-not-at-top
    items = [self._items[i] for i in self._assignment[k]]
    results = shard_writer.decode(self._pool, self.job.task, items)
    status = shard_writer.write(self.job.task, self.job.shard_names[k], items, results)
    metrics.Metrics.counter('cvrl_convert', 'videos_converted').inc(status['num_examples'])
    metrics.Metrics.counter('cvrl_convert', 'videos_failed').inc(len(status['failures']))
    yield status['file']

  def teardown(self):
    if self._pool is not None:
      self._pool.close(wait=False)


class Running:
  """A pipeline writing shards in a thread of this process (start() makes one); wait()
  reports progress from the status files that appear in the work folder (the same on
  every runner, Dataflow included) and returns when all are written."""

  def __init__(self, job: Job, todo: Sequence[int], options):
    beam = _beam()
    self._job, self._pending = job, {job.shard_names[k] for k in todo}
    self._error = []

    def pipeline():
      try:
        with beam.Pipeline(options=options) as p:
          _ = (p | 'Shards' >> beam.Create(list(todo))
               | 'Spread' >> beam.Reshuffle()
               | 'Write' >> beam.ParDo(WriteShardsFn(job)))
      except BaseException as e:  # pylint: disable=broad-except
        self._error.append(e)

    self._thread = threading.Thread(target=pipeline, name='cvrl_convert-beam', daemon=True)
    self._thread.start()

  def wait(self, progress: Optional[progress_lib.Progress] = None) -> None:
    while self._pending:
      self._thread.join(_POLL_SECONDS)
      _report(self._job.task, self._pending, progress)
      if not self._thread.is_alive():
        break
    self._thread.join()
    if self._error:
      raise self._error[0]


def start(job: Job, todo: Sequence[int], beam_args: Sequence[str],
          workers: int) -> Running:
  """Starts writing the shards `todo` on the runner of `beam_args` (see Running)."""
  options = pipeline_options(beam_args, workers)
  logging.getLogger('apache_beam').setLevel(logging.ERROR)  # its INFO: pages per run
  return Running(job, todo, options)


def _report(task: shard_writer.Task, pending: set, progress) -> None:
  """Advances `progress` by the shards of `pending` whose status file appeared."""
  present = set(files_lib.listdir(task.work_dir))
  for name in sorted(n for n in pending if n + '.json' in present):
    status = files_lib.read_json(task.status_path(name))
    if status is None:
      continue
    pending.discard(name)
    if progress is None:
      continue
    for failure in status['failures']:
      progress.message(f'cvrl_convert: FAILED {failure["path"]}: {failure["reason"]}')
      progress.advance(False)
    for _ in range(status['num_examples']):
      progress.advance(True)
