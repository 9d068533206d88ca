"""Multi-view test and k-NN: views -> videos, metrics, confusion plot, predictions CSV.

Multi-view test (CVRL: 10 clips x 3 crops at 256 px): the eval pipeline yields flat views
tagged with `video_index`; `ViewAccumulator` sums each video's per-view outputs
(softmax probabilities, or L2-normalized features for k-NN) on the fly, so memory grows
with videos, not views, and checks that every video got the same, complete set of views
(a short or duplicated video fails loudly instead of skewing the mean).

Metrics (`classification_metrics`), on video-level scores [V, C]:
  top-k      the label is among the k highest scores (ties count against: rank = number
             of classes scoring strictly higher, correct when rank < k).
  per-class  accuracy of the videos of each class (NaN for a class without videos);
             `mean_class_accuracy` averages the classes present.
  confusion  rows = true class, columns = predicted class (counts).

k-NN (`knn_classify`): cosine similarity between L2-normalized video features (mean of
the view features, re-normalized). Votes among the k most similar memory videos:
  'weighted'  each neighbour adds exp(sim / temperature) to its class (Wu et al. 2018,
              temperature 0.07, the usual self-supervised convention; the default).
  'majority'  each neighbour adds 1; ties go to the class with the larger summed
              similarity.
Neighbours with equal similarity are taken in memory order (lower index first).
"""

import collections
import io
import os
from typing import Callable, Dict, Optional, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf import records
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.input import tfds_source

VOTES = ('weighted', 'majority')
PAD_INDEX = -1  # video_index of the padding views added to fill the last batches.


# ------------------------------------------------------------------------- views -> videos
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


# ------------------------------------------------------------------------- metrics
def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """bool [V]: the true class is among the k best (rank by strictly higher scores)."""
  true_scores = scores[np.arange(len(labels)), labels]
  rank = (scores > true_scores[:, None]).sum(axis=1)
  return rank < k


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """int64 [C, C]: rows true class, columns predicted class."""
  flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
  return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           num_classes: Optional[int] = None,
                           ks: Sequence[int] = (1, 5)) -> Dict[str, object]:
  """top-k accuracies, per-class accuracy, mean class accuracy and confusion matrix."""
  scores, labels = np.asarray(scores), np.asarray(labels, np.int64)
  num_classes = num_classes or scores.shape[1]
  if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
    raise ValueError(f'labels must be in [0, {scores.shape[1]}) (the classifier outputs); '
                     f'got {labels.min()}..{labels.max()}. Is num_classes right?')
  predictions = scores.argmax(axis=1)
  cm = confusion_matrix(labels, predictions, num_classes)
  support = cm.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
  out = {f'top{k}': float(topk_correct(scores, labels, k).mean()) for k in ks
         if k <= scores.shape[1]}
  out.update(num_videos=int(len(labels)), predictions=predictions,
             per_class_accuracy=per_class, per_class_count=support, confusion=cm,
             mean_class_accuracy=float(np.nanmean(per_class)) if support.any() else
             float('nan'))
  return out


def unreadable_summary(unreadable: Sequence[dict], num_videos: int,
                       top1: Optional[float]) -> Dict[str, object]:
  """What a test's accuracy was computed over, for its results file: the videos that
  could not be read (input/bad_examples.py entries) are listed, never silently missing
  from the denominator; `top1_counting_unreadable_as_wrong` is the bound with them in.
  A damaged file (record -1) also lost the records after the damage, uncounted."""
  videos = [e for e in unreadable if e['record'] >= 0]
  damaged = sorted({e['shard'] for e in unreadable if e['record'] < 0})
  over = f'{num_videos} videos that could be read'
  if videos:
    over += f'; {len(videos)} could not (unreadable_videos)'
  if damaged:
    over += f'; {len(damaged)} damaged file(s) lost the records after the damage'
  if not unreadable:
    over = f'all {num_videos} videos'
  total = num_videos + len(videos)
  return {'accuracy_over': over,
          'unreadable_videos': {'count': len(videos),
                                'media_ids': [e['media_id'] for e in videos],
                                'damaged_files': damaged, 'examples': list(unreadable)},
          'top1_counting_unreadable_as_wrong': (
              None if top1 is None or not total else top1 * num_videos / total)}


# ------------------------------------------------------------------------- k-NN
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.sqrt(np.maximum((x * x).sum(axis=-1, keepdims=True), eps))


def knn_classify(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray,
                 ks: Sequence[int] = (1, 5, 20), num_classes: Optional[int] = None,
                 vote: str = 'weighted', temperature: float = 0.07,
                 max_block: int = 2**26) -> Dict[int, np.ndarray]:
  """Cosine k-NN: {k: predicted class [Q]} for every k (see the module docstring)."""
  if vote not in VOTES:
    raise ValueError(f'vote must be one of {VOTES}, got {vote!r}')
  memory, queries = l2_normalize(memory), l2_normalize(queries)
  memory_labels = np.asarray(memory_labels, np.int64)
  num_classes = num_classes or int(memory_labels.max()) + 1
  kmax = min(max(ks), len(memory))
  chunk = max(1, max_block // max(len(memory), 1))
  preds = {k: np.empty(len(queries), np.int64) for k in ks}
  for start in range(0, len(queries), chunk):
    sims = queries[start:start + chunk] @ memory.T  # [q, N]
    # Most similar first; a stable sort on -sim keeps lower memory indices first on ties.
    part = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax] if kmax < len(memory) else \
        np.tile(np.arange(len(memory)), (len(sims), 1))
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind='stable')
    neighbours = np.take_along_axis(part, order, 1)
    nsims = np.take_along_axis(sims, neighbours, 1)
    nlabels = memory_labels[neighbours]
    rows = np.arange(len(sims))[:, None]
    for k in ks:
      k_eff = min(k, kmax)
      lab, sim = nlabels[:, :k_eff], nsims[:, :k_eff].astype(np.float64)
      votes = np.zeros((len(sims), num_classes))
      if vote == 'weighted':
        np.add.at(votes, (np.broadcast_to(rows, lab.shape), lab), np.exp(sim / temperature))
      else:
        counts, summed = np.zeros_like(votes), np.zeros_like(votes)
        np.add.at(counts, (np.broadcast_to(rows, lab.shape), lab), 1.0)
        np.add.at(summed, (np.broadcast_to(rows, lab.shape), lab), sim)
        # Lexicographic (count, summed similarity): summed + k_eff is in [0, 2 k_eff].
        votes = counts * (2 * k_eff + 2) + np.where(counts > 0, summed + k_eff, -1.0)
      preds[k][start:start + len(sims)] = votes.argmax(axis=1)
  return preds


def knn_top1(memory: dict, queries: dict, ks: Sequence[int],
             num_classes: Optional[int] = None, vote: str = 'weighted',
             temperature: float = 0.07) -> Dict[str, dict]:
  """{str(k): {'top1', 'mean_class_accuracy'}} of the queries' k-NN votes among the
  memory (both from collect_views: 'scores' = features, 'label'); num_classes defaults
  to the largest label + 1. knn_eval's numbers and the pretraining k-NN monitor's."""
  if not num_classes:
    num_classes = int(max(memory['label'].max(), queries['label'].max())) + 1
  predictions = knn_classify(memory['scores'], memory['label'], queries['scores'], ks,
                             num_classes, vote, temperature)
  per_k = {}
  for k, pred in predictions.items():
    scores = np.eye(num_classes, dtype=np.float32)[pred]
    m = classification_metrics(scores, queries['label'], num_classes, ks=(1,))
    per_k[str(k)] = {'top1': m['top1'], 'mean_class_accuracy': m['mean_class_accuracy']}
  return per_k


# ------------------------------------------------------------------------- outputs
def class_names(num_classes: int, label_map_file: Optional[str] = None,
                files: Optional[Sequence[str]] = None, max_records: int = 5000):
  """Names of the classes: from the label map given, else the label map cvrl_convert
  wrote beside the shards, else `clip/label/string` of the first records (up to
  max_records), else 'class_<i>'. A `tfds:` source: its ClassLabel names."""
  names = None
  if label_map_file:
    names = records.read_label_map(label_map_file)
  elif files and tfds_source.is_tfds(files[0]):
    names = tfds_source.class_names(files[0])  # The ClassLabel's names.
    files = None
  elif files:
    names = _label_map_beside(files[0])
  if names is None and files:
    names = _names_from_records(files, num_classes, max_records)
  names = list(names or [])
  if label_map_file and len(names) != num_classes:
    raise ValueError(f'label map {label_map_file} has {len(names)} classes but the '
                     f'classifier has num_classes={num_classes}')
  return [names[i] if i < len(names) and names[i] else f'class_{i}'
          for i in range(num_classes)]


def _label_map_beside(shard: str):
  """The converter's `<prefix>_label_map.txt` of this shard's prefix, else the only (or
  the identical) label map(s) in its folder."""
  folder, base = os.path.dirname(shard), os.path.basename(shard)
  own = os.path.join(folder, base.split('-')[0] + '_label_map.txt')
  if tf.io.gfile.exists(own):
    return records.read_label_map(own)
  maps = [records.read_label_map(p) for p in
          tf.io.gfile.glob(os.path.join(folder, '*_label_map.txt'))]
  return maps[0] if maps and all(m == maps[0] for m in maps) else None


def _names_from_records(files, num_classes, max_records):
  spec = {records.LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, -1),
          records.LABEL_STRING_KEY: tf.io.FixedLenFeature([], tf.string, '')}
  # Bad records and damaged files are skipped (the test names them).
  ds = tf.data.TFRecordDataset(list(files)).ignore_errors().take(max_records).map(
      lambda r: tf.io.parse_single_sequence_example(r, context_features=spec)[0]
  ).ignore_errors()
  names = [''] * num_classes
  for ctx in ds.as_numpy_iterator():
    label = int(ctx[records.LABEL_INDEX_KEY])
    if 0 <= label < num_classes and not names[label]:
      names[label] = _text(ctx[records.LABEL_STRING_KEY])
      if all(names):
        break
  return names


def plot_confusion_matrix(cm: np.ndarray, names: Sequence[str], path: str,
                          title: str = '') -> str:
  """Row-normalized confusion matrix as a PNG (class names on the axes up to 60)."""
  num = cm.shape[0]
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  side = float(np.clip(num * 0.22, 5, 24))
  fig, ax = plt.subplots(figsize=(side + 1.5, side))
  image = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of true class')
  if num <= 60:
    ax.set_xticks(range(num), labels=list(names), rotation=90, fontsize=7)
    ax.set_yticks(range(num), labels=list(names), fontsize=7)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return files_lib.atomic_write(path, buffer.getvalue(), 'wb')


def write_predictions_csv(path: str, videos: Dict[str, np.ndarray],
                          names: Sequence[str], k: int = 5) -> str:
  """One row per video: media_id, label, prediction, top-k classes and scores."""
  scores = videos['scores']
  top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  lines = ['media_id,label,label_name,prediction,prediction_name,top_classes,top_scores']
  for i, media in enumerate(videos['media_id']):
    label, pred = int(videos['label'][i]), int(top[i, 0])
    lines.append(','.join([
        _csv(media), str(label), _csv(names[label] if 0 <= label < len(names) else ''),
        str(pred), _csv(names[pred]), ' '.join(map(str, top[i])),
        ' '.join(f'{scores[i, c]:.4f}' for c in top[i])]))
  return files_lib.atomic_write(path, '\n'.join(lines) + '\n')


def _csv(text: str) -> str:
  text = str(text)
  return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
