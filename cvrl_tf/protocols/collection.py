"""Views -> videos, over a tf.distribute strategy: the multi-view test's collection.

The eval pipeline yields flat views tagged with `video_index` (CVRL: 10 clips x 3 crops
at 256 px per video); `collect_views` runs a per-replica function on every batch and
`ViewAccumulator` sums each video's per-view outputs (softmax probabilities, or
L2-normalized features for k-NN) on the fly, so memory grows with videos, not views, and
checks that every video got the same, complete set of views (a short or duplicated video
fails loudly instead of skewing the mean). `pad_for_replicas` fills the last batches so
every replica runs every step with static shapes; padding views carry video_index
PAD_INDEX and are dropped.
"""

import collections
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from cvrl_tf import progress as progress_lib
from cvrl_tf.input import batch as batch_lib

PAD_INDEX = -1  # video_index of the padding views added to fill the last batches.


class ViewAccumulator:
  """Sums per-view outputs per video; `result()` gives the per-video means."""

  def __init__(self, expected_views: Optional[int] = None):
    self.expected_views = expected_views
    self._row: Dict[int, int] = {}
    self._sums = None
    self._labels, self._media, self._views = [], [], []

  @property
  def num_videos(self) -> int:
    return len(self._row)

  def _grow(self, dim: int):
    if self._sums is None:
      self._sums = np.zeros((64, dim), np.float64)
    elif len(self._row) > self._sums.shape[0]:
      self._sums = np.concatenate([self._sums, np.zeros_like(self._sums)])

  def add(self, outputs, video_index, labels, media_ids=None, view_index=None) -> int:
    """Adds a batch of views; returns how many videos it completed (for progress)."""
    outputs = np.asarray(outputs)
    keep = np.asarray(video_index) >= 0  # Drops padding views.
    completed = 0
    for i in np.flatnonzero(keep):
      video = int(video_index[i])
      row = self._row.get(video)
      if row is None:
        row = self._row[video] = len(self._row)
        self._grow(outputs.shape[1])
        self._labels.append(int(labels[i]))
        self._media.append(_text(media_ids[i]) if media_ids is not None else str(video))
        self._views.append(collections.Counter())
      elif self._labels[row] != int(labels[i]):
        raise ValueError(f'video {self._media[row]!r} (index {video}) has views with '
                         f'different labels: {self._labels[row]} and {int(labels[i])}')
      self._sums[row] += outputs[i]
      view = int(view_index[i]) if view_index is not None else sum(self._views[row].values())
      self._views[row][view] += 1
      completed += sum(self._views[row].values()) == self.expected_views
    return completed

  def result(self) -> Dict[str, np.ndarray]:
    """Per video, ordered by video_index: mean 'scores' [V, C], 'label', 'media_id',
    'num_views', 'video_index'. Raises if views are missing or duplicated."""
    if not self._row:
      raise ValueError('the evaluation produced no views: is the test set empty?')
    order = sorted(self._row, key=int)
    rows = np.array([self._row[v] for v in order])
    counts = np.array([sum(self._views[r].values()) for r in rows])
    expected = self.expected_views or int(counts.max())
    for r, count in zip(rows, counts):
      duplicated = [v for v, n in self._views[r].items() if n > 1]
      if count != expected or duplicated:
        raise ValueError(
            f'video {self._media[r]!r} got {count} views (duplicated: {duplicated}), '
            f'expected {expected} (num_clips x num_crops): the evaluation input is '
            f'inconsistent.')
    return {'scores': (self._sums[rows] / counts[:, None]).astype(np.float32),
            'label': np.array([self._labels[r] for r in rows], np.int64),
            'media_id': np.array([self._media[r] for r in rows], object),
            'num_views': counts, 'video_index': np.array(order, np.int64)}


def _text(value) -> str:
  return value.decode('utf-8', 'replace') if isinstance(value, bytes) else str(value)


def pad_for_replicas(ds: tf.data.Dataset, batch_size: int,
                     replicas_per_pipeline: int) -> tf.data.Dataset:
  """Pads every batch of flat views to `batch_size` and the number of batches to a
  multiple of the pipeline's replicas, with views of video_index -1.

  Every step then has full, static shapes on every replica (TPU, one trace) and no
  replica runs out of data before the others; the accumulator drops the padding.
  """
  ds = ds.map(lambda batch: _pad_rows(batch, batch_size))
  if replicas_per_pipeline > 1:
    ds = ds.batch(replicas_per_pipeline).map(
        lambda group: _pad_rows(group, replicas_per_pipeline)).unbatch()
  return ds


def _pad_rows(batch: Dict[str, tf.Tensor], size: int) -> Dict[str, tf.Tensor]:
  """Pads the leading dimension to `size`: -1 labels / video indices, '' ids, 0 else."""
  n = size - tf.shape(batch[batch_lib.VIDEO_INDEX])[0]
  out = {}
  for key, value in batch.items():
    if value.dtype == tf.string:
      fill = ''
    else:
      fill = PAD_INDEX if key in (batch_lib.VIDEO_INDEX, batch_lib.LABEL) else 0
    paddings = [[0, n]] + [[0, 0]] * (value.shape.rank - 1)
    out[key] = tf.ensure_shape(tf.pad(value, paddings, constant_values=fill),
                               [size] + value.shape[1:].as_list())
  return out


def collect_views(dataset, output_fn: Callable[[tf.Tensor], tf.Tensor],
                  total_videos: Optional[int], views_per_video: Optional[int],
                  strategy: Optional[tf.distribute.Strategy] = None,
                  progress_stream=None, unit: str = 'videos',
                  skipped: Optional[Callable[[], int]] = None) -> Dict[str, np.ndarray]:
  """Runs `output_fn(clips) -> [b, D]` over every view and averages per video.

  `dataset` is a distributed dataset of `strategy` (each replica runs output_fn on its
  share), or a plain tf.data.Dataset when `strategy` is None. Progress: videos done /
  total and videos/s on `progress_stream`; `skipped()`, the videos the pipeline skipped so
  far (unreadable), counts them done and failed, so the line still ends at the total.
  """
  keys = (batch_lib.VIDEO_INDEX, batch_lib.LABEL, batch_lib.MEDIA_ID, batch_lib.VIEW_INDEX)

  def replica_fn(batch):
    return dict(outputs=output_fn(batch[batch_lib.CLIPS]), **{k: batch[k] for k in keys})

  if strategy is None:
    step = tf.function(replica_fn, reduce_retracing=True)
    local = lambda out: {k: v.numpy() for k, v in out.items()}
  else:
    step = tf.function(lambda batch: strategy.run(replica_fn, args=(batch,)),
                       reduce_retracing=True)

    def local(out):
      return {k: np.concatenate([t.numpy() for t in
                                 strategy.experimental_local_results(v)]) for k, v in
              out.items()}

  accumulator = ViewAccumulator(views_per_video)
  progress = progress_lib.Progress(total_videos or 0, stream=progress_stream, unit=unit)
  counted_skips = 0

  def count_skips():
    nonlocal counted_skips
    now = skipped() if skipped else 0
    for _ in range(now - counted_skips):
      progress.advance(ok=False)
    counted_skips = now

  for batch in dataset:
    out = local(step(batch))
    done = accumulator.add(out['outputs'], *(out[k] for k in keys))
    count_skips()
    for _ in range(done):
      progress.advance()
  count_skips()
  return accumulator.result()
