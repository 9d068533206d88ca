"""Video files -> TFRecord shards of SequenceExamples (the `cvrl_convert` command).

Flow: a listing (sources.py) -> label map -> assignment of videos to shards, fixed by
(listing, seed, num_shards) -> worker processes decode, resize and JPEG-encode
(video_io.encode_video_jpeg, no TensorFlow, so they start fast) -> this process builds the
records (records.make_sequence_example) and writes each shard as `*.tmp`, renamed when
complete.

Resume: a plan (settings, listing fingerprint, shard count) is written before any shard,
and a per-shard status file before each rename. A rerun of the same command converts only
the shards without a final file; each shard depends only on the plan, so the result equals
an uninterrupted run. The manifest is written last; a rerun with other settings into the
same output is refused.
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Dict, Iterator, List, Optional, TextIO

from cvrl_tf import files as files_lib
from cvrl_tf.data import pool
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import sources
from cvrl_tf.data import video_io

FORMAT = 'cvrl_tf.convert/1'
_SIZE_SAMPLE = 8  # videos converted up front to estimate bytes per record


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
  elif os.path.exists(opts.output_dir) and not os.path.isdir(opts.output_dir):
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
  if opts.class_list and not os.path.isfile(opts.class_list):
    problems.append(f'--class_list not found: {opts.class_list}')
  if problems:
    raise UsageError('; '.join(problems))


def shard_name(prefix: str, index: int, num_shards: int) -> str:
  return f'{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord'


def assign_shards(num_items: int, num_shards: int, seed: int) -> List[List[int]]:
  """Item indices per shard, in writing order: a seeded shuffle dealt round-robin.
  RandomState's stream is frozen by NumPy, so the assignment is stable across versions."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  order = np.random.RandomState(seed).permutation(num_items).tolist()
  return [order[k::num_shards] for k in range(num_shards)]


def _to_json(value) -> str:
  return json.dumps(value, indent=1, sort_keys=True) + '\n'


class _Converter:
  """One conversion run into one output folder (see the module docstring)."""

  def __init__(self, listing: sources.Listing, opts: Options, log: Optional[TextIO]):
    validate(opts)
    self.opts, self.log = opts, log
    self.workers = pool.default_workers() if opts.workers is None else opts.workers
    self.row_errors = [e.to_dict() for e in listing.errors]
    self.labels = (sources.read_class_list(opts.class_list) if opts.class_list else
                   sorted({i.label for i in listing.items if i.label is not None}))
    self.index = {name: i for i, name in enumerate(self.labels)}
    self.items, rejected = sources.check_items(listing.items, self.index)
    self.early_failures = [{'path': i.path, 'media_id': i.media_id, 'reason': reason}
                           for i, reason in rejected]
    if not self.items:
      shown = '; '.join(str(e) for e in listing.errors[:5])
      raise UsageError('no videos to convert' + (f' ({shown})' if shown else ''))
    fingerprint = hashlib.sha256(_to_json(
        [[dataclasses.astuple(i) for i in self.items], self.labels]).encode()).hexdigest()
    self.settings = files_lib.normalized(dict(  # As read back from plan.json.
        format=FORMAT, source=listing.settings, prefix=opts.prefix, fps=opts.fps,
        short_side=opts.short_side, jpeg_quality=opts.jpeg_quality, seed=opts.seed,
        num_shards=opts.num_shards,
        shard_size_mb=None if opts.num_shards else opts.shard_size_mb,
        class_list=os.path.abspath(opts.class_list) if opts.class_list else None,
        listing_sha256=fingerprint))
    out, prefix = opts.output_dir, opts.prefix
    self.manifest_path = os.path.join(out, f'{prefix}_manifest.json')
    self.label_map_path = os.path.join(out, f'{prefix}_label_map.txt')
    self.work_dir = os.path.join(out, f'.{prefix}_convert_work')
    self.pool = pool.OrderedPool(
        self.workers, lambda kw: {'ok': False, 'reason': 'decoder process crashed'})

  def _say(self, text: str):
    if self.log:
      self.log.write(f'cvrl_convert: {text}\n')
      self.log.flush()

  def _check_settings(self, path: str, stored: Dict[str, object]):
    if stored != self.settings:
      diff = sorted(k for k in set(stored) | set(self.settings)
                    if stored.get(k) != self.settings.get(k))
      raise UsageError(f'{path} was written by a run with other settings (differs in: '
                       f'{", ".join(diff)}); use a fresh --output_dir or another --prefix')

  def _call(self, item: sources.Item) -> dict:
    return dict(path=item.path, start=item.start, end=item.end, fps=self.opts.fps,
                short_side=self.opts.short_side, quality=self.opts.jpeg_quality)

  def _record(self, item: sources.Item, res: dict) -> bytes:
    """Serialized record; takes the JPEGs out of `res` so that at most two copies of a
    video's frames (proto, bytes) are alive at once."""
    from cvrl_tf.data import records  # pylint: disable=g-import-not-at-top
    label = None if item.label is None else self.index[item.label]
    example = records.make_sequence_example(
        res.pop('jpegs'), item.media_id, res['fps'], res['height'], res['width'],
        label_index=label, label_string=item.label or '')
    return example.SerializeToString(deterministic=True)  # map order: not per process

  def _estimate_num_shards(self) -> int:
    sample = assign_shards(len(self.items), 1, self.opts.seed)[0][:_SIZE_SAMPLE]
    results = self.pool.map(video_io.encode_video_jpeg,
                            [self._call(self.items[i]) for i in sample])
    sizes = [len(self._record(self.items[i], res))
             for i, res in zip(sample, results) if res['ok']]
    if not sizes:
      return 1
    total = sum(sizes) / len(sizes) * len(self.items)
    return max(1, math.ceil(total / (self.opts.shard_size_mb * 2**20)))

  def _load_or_make_plan(self) -> Dict[str, object]:
    plan_path = os.path.join(self.work_dir, 'plan.json')
    if os.path.exists(plan_path):
      with open(plan_path, encoding='utf-8') as f:
        plan = json.load(f)
      self._check_settings(plan_path, plan['settings'])
      self._say(f'resuming the run recorded in {plan_path}')
      return plan
    strays = [n for n in os.listdir(self.opts.output_dir)
              if n.startswith(self.opts.prefix + '-') and n.endswith('.tfrecord')]
    if strays:
      raise UsageError(f'{self.opts.output_dir} already holds {strays[0]} (and maybe more) '
                       'from an unknown run; use a fresh --output_dir or another --prefix')
    num_shards = self.opts.num_shards or self._estimate_num_shards()
    if num_shards > len(self.items):
      self._say(f'{num_shards} shards for {len(self.items)} videos: using {len(self.items)}')
      num_shards = len(self.items)
    plan = {'settings': self.settings, 'num_shards': num_shards}
    os.makedirs(self.work_dir, exist_ok=True)
    files_lib.atomic_write(plan_path, _to_json(plan))
    return plan

  def _write_shard(self, name: str, indices: List[int], results: Iterator[dict],
                   progress: progress_lib.Progress) -> dict:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    final = os.path.join(self.opts.output_dir, name)
    status = {'file': name, 'num_examples': 0, 'num_frames': 0, 'failures': []}
    with tf.io.TFRecordWriter(final + '.tmp') as writer:
      for i in indices:
        item, res = self.items[i], next(results)
        if res['ok']:
          status['num_examples'] += 1
          status['num_frames'] += len(res['jpegs'])
          writer.write(self._record(item, res))
        else:
          status['failures'].append(
              {'path': item.path, 'media_id': item.media_id, 'reason': res['reason']})
          progress.message(f'cvrl_convert: FAILED {item.path}: {res["reason"]}')
        progress.advance(res['ok'])
    with open(final + '.tmp', 'rb') as f:
      os.fsync(f.fileno())
    status['num_bytes'] = os.path.getsize(final + '.tmp')
    files_lib.atomic_write(os.path.join(self.work_dir, name + '.json'), _to_json(status))
    os.replace(final + '.tmp', final)
    return status

  def _finished(self) -> Optional[Result]:
    """The result of an earlier complete run with the same settings, if any."""
    if not os.path.exists(self.manifest_path):
      return None
    with open(self.manifest_path, encoding='utf-8') as f:
      manifest = json.load(f)
    self._check_settings(self.manifest_path, manifest['settings'])
    missing = [s['file'] for s in manifest['shards']
               if not os.path.exists(os.path.join(self.opts.output_dir, s['file']))]
    if missing:
      raise UsageError(f'{self.manifest_path} lists missing shard {missing[0]}; delete the '
                       'manifest and rerun to regenerate missing shards')
    shutil.rmtree(self.work_dir, ignore_errors=True)
    self._say(f'already complete: {self.manifest_path}')
    return Result(_exit_code(manifest), manifest, self.manifest_path)

  def run(self) -> Result:
    t0 = time.monotonic()
    os.makedirs(self.opts.output_dir, exist_ok=True)
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
      statuses = {}
      for name in names:
        status_path = os.path.join(self.work_dir, name + '.json')
        if (os.path.exists(os.path.join(self.opts.output_dir, name))
            and os.path.exists(status_path)):
          with open(status_path, encoding='utf-8') as f:
            statuses[name] = json.load(f)
      todo = [k for k in range(n) if names[k] not in statuses]
      done = sum(len(assignment[k]) for k in range(n) if names[k] in statuses)
      if statuses:
        self._say(f'{len(statuses)} of {n} shards already done, converting the rest')
      results = self.pool.map(video_io.encode_video_jpeg, (
          self._call(self.items[i]) for k in todo for i in assignment[k]))
      # Workers are busy now; TensorFlow (seconds to import) loads meanwhile.
      from cvrl_tf.data import records  # pylint: disable=g-import-not-at-top
      records.write_label_map(self.label_map_path, self.labels)
      progress = progress_lib.Progress(len(self.items), done, self.log)
      for k in todo:
        statuses[names[k]] = self._write_shard(names[k], assignment[k], results, progress)
    except BaseException:
      self.pool.close(wait=False)
      raise
    self.pool.close()
    manifest = self._manifest([statuses[name] for name in names])
    files_lib.atomic_write(self.manifest_path, _to_json(manifest))
    shutil.rmtree(self.work_dir, ignore_errors=True)
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
        'num_classes': len(self.labels),
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
            log: Optional[TextIO] = sys.stderr) -> Result:
  """Converts a listing into shards + label map + manifest under opts.output_dir.

  Raises UsageError (nothing written) for bad options, an empty listing, or an output
  folder holding a run with other settings. Per-video problems end up in the manifest.
  """
  return _Converter(listing, opts, log).run()
