"""Video files -> TFRecord shards of SequenceExamples (the `cvrl_convert` command).

Flow: a listing (sources.py) -> label map -> assignment of videos to shards, fixed by
(listing, seed, num_shards) -> each shard written by shard_writer.write: worker processes
decode, resize, JPEG-encode and serialize each video's record (shard_writer.decode_record:
video_io.encode_video_jpeg + record_wire, no TensorFlow, so they start fast), this
process writes the records and publishes the file when complete. The shards are
written by this process over a local pool of decoders, or by Apache Beam workers
(convert_beam.py, `beam_args`): the same code per shard, so the same bytes.

Every path may be on any filesystem tf.io.gfile reads (gs://, ram://, ...).

Resume: a plan (settings, listing fingerprint, shard count) is written before any shard,
and a per-shard status file before each shard is published. A rerun of the same command
converts only the shards without a final file; each shard depends only on the plan, so the
result equals an uninterrupted run. The manifest, built from the status files, is written
last; a rerun with other settings into the same output is refused.
"""

import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.convert import pool
from cvrl_tf.convert import shard_writer
from cvrl_tf.convert import sources

# The output's version, part of the settings a resumed run must match. 2 (issue 30): frames
# resized by swscale into planar RGB, with full-resolution chroma, where /1 went through
# packed rgb24 (chroma at half width when the output width is even; the same pixels at odd
# widths, the usual 341 and 455 of 4:3 and 16:9 sources, up to rare +-1 rounding); 3x less
# CPU for that step, the JPEGs' quality the same (docs/convert.md, "Output versions").
FORMAT = 'cvrl_tf.convert/2'
_SIZE_SAMPLE = 8  # videos converted up front to estimate bytes per record
DEFAULT_DECODE_TIMEOUT = 600.0
shard_name = shard_writer.shard_name
assign_shards = shard_writer.assign_shards
_to_json = shard_writer.to_json


class UsageError(Exception):
  """Bad flags or an output folder that belongs to another run (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Options:
  output_dir: str
  prefix: str = 'data'
  num_shards: int = 0  # 0: derived from shard_size_mb
  shard_size_mb: float = 200.0
  fps: float = 0.0  # 0: keep the source rate
  short_side: int = 256  # 0: keep the source size
  jpeg_quality: int = 90
  workers: Optional[int] = None  # None: all cores; 0: convert in this process
  seed: int = 0
  class_list: Optional[str] = None
  # Seconds one video may take to decode (0: no limit); needs worker processes. Not a
  # setting of the output: a rerun may change it.
  decode_timeout: float = DEFAULT_DECODE_TIMEOUT


@dataclasses.dataclass
class Result:
  exit_code: int  # 0 all converted, 1 some videos or rows failed
  manifest: Dict[str, object]
  manifest_path: str


def validate(opts: Options) -> None:
  """Raises UsageError before anything is written."""
  problems = []
  if not opts.output_dir:
    problems.append('--output_dir is required')
  elif files_lib.exists(opts.output_dir) and not files_lib.isdir(opts.output_dir):
    problems.append(f'--output_dir is not a directory: {opts.output_dir}')
  if not opts.prefix or '/' in opts.prefix or opts.prefix.startswith('.'):
    problems.append(f'bad --prefix {opts.prefix!r}')
  if opts.num_shards < 0 or opts.shard_size_mb <= 0:
    problems.append('--num_shards must be >= 0 and --shard_size_mb > 0')
  if opts.fps < 0 or opts.short_side < 0:
    problems.append('--fps and --short_side must be >= 0')
  if not 1 <= opts.jpeg_quality <= 100:
    problems.append('--jpeg_quality must be in [1, 100]')
  if opts.workers is not None and opts.workers < 0:
    problems.append('--workers must be >= 0')
  if opts.decode_timeout < 0:
    problems.append('--decode_timeout must be >= 0 (0: no limit)')
  if opts.class_list and not files_lib.exists(opts.class_list):
    problems.append(f'--class_list not found: {opts.class_list}')
  if problems:
    raise UsageError('; '.join(problems))


class _Converter:
  """One conversion run into one output folder (see the module docstring)."""

  def __init__(self, listing: sources.Listing, opts: Options, log: Optional[TextIO]):
    validate(opts)
    self.opts, self.log = opts, log
    self.workers = pool.default_workers() if opts.workers is None else opts.workers
    self.row_errors = [e.to_dict() for e in listing.errors]
    labels = (sources.read_class_list(opts.class_list) if opts.class_list else
              sorted({i.label for i in listing.items if i.label is not None}))
    self.items, rejected = sources.check_items(
        listing.items, {name: i for i, name in enumerate(labels)})
    self.early_failures = [{'path': i.path, 'media_id': i.media_id, 'reason': reason}
                           for i, reason in rejected]
    if not self.items:
      shown = '; '.join(str(e) for e in listing.errors[:5])
      raise UsageError('no videos to convert' + (f' ({shown})' if shown else ''))
    fingerprint = hashlib.sha256(_to_json(
        [[dataclasses.astuple(i) for i in self.items], labels]).encode()).hexdigest()
    self.settings = files_lib.normalized(dict(  # As read back from plan.json.
        format=FORMAT, source=listing.settings, prefix=opts.prefix, fps=opts.fps,
        short_side=opts.short_side, jpeg_quality=opts.jpeg_quality, seed=opts.seed,
        num_shards=opts.num_shards,
        shard_size_mb=None if opts.num_shards else opts.shard_size_mb,
        class_list=files_lib.abspath(opts.class_list) if opts.class_list else None,
        listing_sha256=fingerprint))
    out, prefix = opts.output_dir, opts.prefix
    self.manifest_path = os.path.join(out, f'{prefix}_manifest.json')
    self.label_map_path = os.path.join(out, f'{prefix}_label_map.txt')
    self.task = shard_writer.Task(
        output_dir=out, work_dir=os.path.join(out, f'.{prefix}_convert_work'),
        labels=tuple(labels), fps=opts.fps, short_side=opts.short_side,
        quality=opts.jpeg_quality, decode_timeout=opts.decode_timeout)
    self.pool = shard_writer.new_pool(self.workers, opts.decode_timeout)

  def _say(self, text: str):
    progress_lib.say(self.log, f'cvrl_convert: {text}')

  def _check_settings(self, path: str, stored: Dict[str, object]):
    if stored != self.settings:
      diff = sorted(k for k in set(stored) | set(self.settings)
                    if stored.get(k) != self.settings.get(k))
      raise UsageError(f'{path} was written by a run with other settings (differs in: '
                       f'{", ".join(diff)}); use a fresh --output_dir or another --prefix')

  def _estimate_num_shards(self) -> int:
    sample = [self.items[i] for i in assign_shards(len(self.items), 1,
                                                   self.opts.seed)[0][:_SIZE_SAMPLE]]
    results = shard_writer.decode(self.pool, self.task, sample)
    sizes = [len(self.task.record(item, res))
             for item, res in zip(sample, results) if res['ok']]
    if not sizes:
      return 1
    total = sum(sizes) / len(sizes) * len(self.items)
    return max(1, math.ceil(total / (self.opts.shard_size_mb * 2**20)))

  def _load_or_make_plan(self) -> Dict[str, object]:
    plan_path = os.path.join(self.task.work_dir, 'plan.json')
    plan = files_lib.read_json(plan_path)
    if plan is not None:
      self._check_settings(plan_path, plan['settings'])
      self._say(f'resuming the run recorded in {plan_path}')
      return plan
    strays = [n for n in files_lib.listdir(self.opts.output_dir)
              if n.startswith(self.opts.prefix + '-') and n.endswith('.tfrecord')]
    if strays:
      raise UsageError(f'{self.opts.output_dir} already holds {strays[0]} (and maybe more) '
                       'from an unknown run; use a fresh --output_dir or another --prefix')
    num_shards = self.opts.num_shards or self._estimate_num_shards()
    if num_shards > len(self.items):
      self._say(f'{num_shards} shards for {len(self.items)} videos: using {len(self.items)}')
      num_shards = len(self.items)
    plan = {'settings': self.settings, 'num_shards': num_shards}
    files_lib.makedirs(self.task.work_dir)
    files_lib.atomic_write(plan_path, _to_json(plan))
    return plan

  def _finished(self) -> Optional[Result]:
    """The result of an earlier complete run with the same settings, if any."""
    manifest = files_lib.read_json(self.manifest_path)
    if manifest is None:
      return None
    self._check_settings(self.manifest_path, manifest['settings'])
    missing = [s['file'] for s in manifest['shards']
               if not files_lib.exists(os.path.join(self.opts.output_dir, s['file']))]
    if missing:
      raise UsageError(f'{self.manifest_path} lists missing shard {missing[0]}; delete the '
                       'manifest and rerun to regenerate missing shards')
    files_lib.remove_tree(self.task.work_dir)
    self._say(f'already complete: {self.manifest_path}')
    return Result(_exit_code(manifest), manifest, self.manifest_path)

  def _convert_here(self, names, assignment, todo, progress):
    """The shards of `todo`, written by this process over the local decoder pool."""
    items = [[self.items[i] for i in assignment[k]] for k in todo]
    results = shard_writer.decode(self.pool, self.task, (i for s in items for i in s))
    # Workers are busy now; TensorFlow (seconds to import) loads meanwhile.
    from cvrl_tf import records  # pylint: disable=g-import-not-at-top
    records.write_label_map(self.label_map_path, self.task.labels)
    for k, shard_items in zip(todo, items):
      shard_writer.write(self.task, names[k], shard_items, results, progress)

  def _convert_on_beam(self, names, todo, progress, beam_args):
    from cvrl_tf.convert import convert_beam  # pylint: disable=g-import-not-at-top
    self.pool.close()  # Beam's workers have decoders of their own.
    items_path = os.path.join(self.task.work_dir, 'items.json')
    files_lib.atomic_write(items_path, _to_json(
        [dataclasses.astuple(i) for i in self.items]))
    running = convert_beam.start(convert_beam.Job(
        task=self.task, items_path=items_path, shard_names=tuple(names),
        seed=self.opts.seed), todo, beam_args, self.workers)
    # The pipeline runs now; TensorFlow (seconds to import) loads meanwhile.
    from cvrl_tf import records  # pylint: disable=g-import-not-at-top
    records.write_label_map(self.label_map_path, self.task.labels)
    running.wait(progress)

  def run(self, beam_args: Optional[Sequence[str]] = None) -> Result:
    t0 = time.monotonic()
    files_lib.makedirs(self.opts.output_dir)
    done = self._finished()
    if done:
      return done
    for e in self.row_errors:
      self._say(f'malformed row {e["source"]}:{e["line"]}: {e["reason"]}')
    for f in self.early_failures:
      self._say(f'FAILED {f["path"]}: {f["reason"]}')
    try:
      plan = self._load_or_make_plan()
      n = plan['num_shards']
      names = [shard_name(self.opts.prefix, k, n) for k in range(n)]
      assignment = assign_shards(len(self.items), n, self.opts.seed)
      statuses = {name: shard_writer.read_status(self.task, name) for name in names}
      todo = [k for k in range(n) if statuses[names[k]] is None]
      if len(todo) < n:
        self._say(f'{n - len(todo)} of {n} shards already done, converting the rest')
      done = sum(len(assignment[k]) for k in range(n) if statuses[names[k]] is not None)
      progress = progress_lib.Progress(len(self.items), done, self.log)
      if beam_args is None or not todo:  # (nothing left for Beam: no pipeline to start)
        self._convert_here(names, assignment, todo, progress)
      else:
        self._convert_on_beam(names, todo, progress, beam_args)
    except BaseException:
      self.pool.close(wait=False)
      raise
    self.pool.close()
    statuses = [shard_writer.read_status(self.task, name) for name in names]
    if None in statuses:  # A runner that reported success without writing everything.
      raise RuntimeError(f'shard {names[statuses.index(None)]} was not written; rerun the '
                         'same command to convert the missing shards')
    manifest = self._manifest(statuses)
    files_lib.atomic_write(self.manifest_path, _to_json(manifest))
    files_lib.remove_tree(self.task.work_dir)
    self._say(
        f'{manifest["num_converted"]} of {manifest["num_videos"]} videos converted, '
        f'{manifest["num_failed"]} failed, {len(self.row_errors)} malformed rows; '
        f'{n} shards, {manifest["num_frames"]} frames, {manifest["num_bytes"] / 2**20:.1f} MB '
        f'in {time.monotonic() - t0:.1f} s -> {self.manifest_path}')
    return Result(_exit_code(manifest), manifest, self.manifest_path)

  def _manifest(self, statuses: List[dict]) -> Dict[str, object]:
    failures = self.early_failures + [f for s in statuses for f in s['failures']]
    return {
        'settings': self.settings,
        'label_map': os.path.basename(self.label_map_path),
        'num_classes': len(self.task.labels),
        'num_videos': len(self.items) + len(self.early_failures),
        'num_converted': sum(s['num_examples'] for s in statuses),
        'num_failed': len(failures),
        'num_malformed_rows': len(self.row_errors),
        'num_frames': sum(s['num_frames'] for s in statuses),
        'num_bytes': sum(s['num_bytes'] for s in statuses),
        'num_shards': len(statuses),
        'shards': [{k: s[k] for k in ('file', 'num_examples', 'num_frames', 'num_bytes')}
                   for s in statuses],
        'failures': failures,
        'malformed_rows': self.row_errors,
    }


def _exit_code(manifest: Dict[str, object]) -> int:
  return 1 if manifest['num_failed'] or manifest['num_malformed_rows'] else 0


def convert(listing: sources.Listing, opts: Options,
            log: Optional[TextIO] = sys.stderr,
            beam_args: Optional[Sequence[str]] = None) -> Result:
  """Converts a listing into shards + label map + manifest under opts.output_dir.

  beam_args: None converts here over a local pool of decoder processes; a list of Beam
  pipeline options (with `--runner=...`) writes the shards on Apache Beam instead.
  Raises UsageError (nothing written) for bad options, an empty listing, or an output
  folder holding a run with other settings. Per-video problems end up in the manifest.
  """
  return _Converter(listing, opts, log).run(beam_args)
