"""What a test writes for people: class names, the confusion-matrix PNG, the per-video
predictions CSV, and what its accuracy was computed over (the unreadable videos)."""

import io
from typing import Dict, List, Optional, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from cvrl_tf import files as files_lib
from cvrl_tf import records
from cvrl_tf.input import sources


def class_names(num_classes: int, label_map_file: Optional[str] = None,
                source: Optional[sources.Source] = None) -> List[str]:
  """Names of the classes: from the label map given, else what the source knows (the
  label map cvrl_convert wrote beside the shards or the records' `clip/label/string`;
  a TFDS split's ClassLabel names), else 'class_<i>'."""
  names = None
  if label_map_file:
    names = records.read_label_map(label_map_file)
    if len(names) != num_classes:
      raise ValueError(f'label map {label_map_file} has {len(names)} classes but the '
                       f'classifier has num_classes={num_classes}')
  elif source is not None:
    names = source.class_names(num_classes)
  names = list(names or [])
  return [names[i] if i < len(names) and names[i] else f'class_{i}'
          for i in range(num_classes)]


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
