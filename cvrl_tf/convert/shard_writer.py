"""One shard from its videos to its final file: the unit of work that the local pool
(convert.py) and Apache Beam (convert_beam.py) share, so that both write the same bytes.

A shard is written under a temporary name inside the run's work folder, then its status
(counts, failures) is stored, then the file gets its final name (files.publish: a rename
on a local disk, a copy on an object store, where the object appears only whole). So a
shard exists under its final name only when complete, and a shard counts as done only
when both its file and its status exist. Writing a shard again (a resumed run, a Beam
retry) gives the same bytes: its content depends only on the task and its videos.
"""

import dataclasses
import functools
import json
import os
import uuid
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.convert import pool as pool_lib
from cvrl_tf.convert import record_wire
from cvrl_tf.convert import sources
from cvrl_tf.convert import video_io


def to_json(value) -> str:
  """The converter's JSON text (plan, statuses, manifest): sorted, so byte-stable."""
  return json.dumps(value, indent=1, sort_keys=True) + '\n'


def shard_name(prefix: str, index: int, num_shards: int) -> str:
  return f'{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord'


def assign_shards(num_items: int, num_shards: int, seed: int) -> List[List[int]]:
  """Item indices per shard, in writing order: a seeded shuffle dealt round-robin.
  RandomState's stream is frozen by NumPy, so the assignment is stable across versions."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  order = np.random.RandomState(seed).permutation(num_items).tolist()
  return [order[k::num_shards] for k in range(num_shards)]


@dataclasses.dataclass(frozen=True)
class Task:
  """What every shard of one run needs: small and picklable (Beam sends it to workers)."""
  output_dir: str
  work_dir: str
  labels: Tuple[str, ...]
  fps: float
  short_side: int
  quality: int
  decode_timeout: float = 0.0  # seconds per video; 0: no limit

  @functools.cached_property
  def label_index(self) -> Dict[str, int]:
    return {name: i for i, name in enumerate(self.labels)}

  def decode_call(self, item: sources.Item) -> dict:
    """kwargs of decode_record for one video."""
    return dict(path=item.path, start=item.start, end=item.end, fps=self.fps,
                short_side=self.short_side, quality=self.quality, media_id=item.media_id,
                label_index=None if item.label is None else self.label_index[item.label],
                label_string=item.label or '')

  def record(self, item: sources.Item, res: dict) -> bytes:  # pylint: disable=unused-argument
    """The serialized record of a decode_record result (taken out of `res`)."""
    return res.pop('record')

  def status_path(self, name: str) -> str:
    return os.path.join(self.work_dir, name + '.json')


def new_pool(workers: int, decode_timeout: float) -> pool_lib.OrderedPool:
  """Decoder processes whose crashes and stalls become failures of one video."""
  return pool_lib.OrderedPool(
      workers, lambda kw: {'ok': False, 'reason': 'decoder process crashed'},
      timeout=decode_timeout or None,
      on_timeout=lambda kw: {'ok': False, 'reason': f'decoding took longer than the '
                             f'time limit of {decode_timeout:g} s (--decode_timeout)'})


def decode_record(media_id: str, label_index: Optional[int], label_string: str,
                  **decode_kwargs) -> dict:
  """One video -> {'ok': True, 'record': serialized SequenceExample, 'num_frames'} or
  {'ok': False, 'reason'}: the worker's unit of work. The record is built here, in the
  worker, without TensorFlow (record_wire: the bytes of records.make_sequence_example),
  and crosses to the writing process as one bytes object."""
  res = video_io.encode_video_jpeg(**decode_kwargs)
  if not res['ok']:
    return res
  jpegs = res.pop('jpegs')
  return {'ok': True, 'num_frames': len(jpegs), 'record': record_wire.sequence_example_bytes(
      jpegs, media_id, res['fps'], res['height'], res['width'], label_index=label_index,
      label_string=label_string)}


def decode(pool: pool_lib.OrderedPool, task: Task,
           items: Iterable[sources.Item]) -> Iterator[dict]:
  return pool.map(decode_record, (task.decode_call(i) for i in items))


def write(task: Task, name: str, items: List[sources.Item], results: Iterator[dict],
          progress: Optional[progress_lib.Progress] = None) -> dict:
  """Writes shard `name` from `items` and their decode results (in order); its status."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  status = {'file': name, 'num_examples': 0, 'num_frames': 0, 'failures': []}
  files_lib.makedirs(task.work_dir)
  tmp = os.path.join(task.work_dir, f'{name}.tmp-{uuid.uuid4().hex[:8]}')
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for item in items:
        res = next(results)
        if res['ok']:
          status['num_examples'] += 1
          status['num_frames'] += res['num_frames']
          writer.write(task.record(item, res))
        else:
          status['failures'].append(
              {'path': item.path, 'media_id': item.media_id, 'reason': res['reason']})
          if progress:
            progress.message(f'cvrl_convert: FAILED {item.path}: {res["reason"]}')
        if progress:
          progress.advance(res['ok'])
    status['num_bytes'] = files_lib.size(tmp)
    files_lib.atomic_write(task.status_path(name), to_json(status))
    files_lib.publish(tmp, os.path.join(task.output_dir, name))
  except BaseException:
    if files_lib.exists(tmp):
      files_lib.remove(tmp)
    raise
  return status


def read_status(task: Task, name: str) -> Optional[dict]:
  """The status of a complete shard (file and status both there), else None."""
  if not files_lib.exists(os.path.join(task.output_dir, name)):
    return None
  return files_lib.read_json(task.status_path(name))
