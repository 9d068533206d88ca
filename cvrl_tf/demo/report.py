"""Results of `make demo`: the table (results.md) and the PNG plots.

Reads only what the tools wrote: TensorBoard event files of pretraining runs,
eval_results.json of linear evaluations, knn_results.json of k-NN evaluations and the
.npy / _index.csv of cvrl_embed.
"""

import csv
import glob
import json
import os
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf


# ------------------------------------------------------------------------- reading
def _tfrecords(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (each: length, its CRC, the bytes, their CRC), read
  in Python: TensorFlow's own readers warn that they are deprecated (summary_iterator) or
  start its devices in this process, which prints the CUDA probe's error line
  (tf.data)."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      length = struct.unpack('<Q', header[:8])[0]
      data = f.read(length)
      if len(f.read(4)) < 4:
        return  # A record still being written.
      yield data


def read_scalars(summary_dir: str, tag: str) -> Tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one scalar tag over all event files under summary_dir (not in
  sub-folders: those hold other writers, e.g. eval/). Later writes of a step win, so a
  resumed run reads as one curve."""
  by_step = {}
  for path in sorted(glob.glob(os.path.join(summary_dir, 'events.out.tfevents.*'))):
    for record in _tfrecords(path):
      event = tf.compat.v1.Event.FromString(record)
      for value in event.summary.value:
        if value.tag != tag:
          continue
        if value.HasField('tensor'):
          by_step[event.step] = float(tf.make_ndarray(value.tensor))
        else:
          by_step[event.step] = float(value.simple_value)
  steps = np.array(sorted(by_step), dtype=np.int64)
  return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def linear_top1(eval_dir: str) -> Optional[float]:
  results = read_json(os.path.join(eval_dir, 'eval_results.json'))
  return None if results is None else float(results['top1'])


def knn_top1(knn_dir: str) -> Tuple[Optional[float], Optional[int]]:
  """(top-1, k) for the first k the run lists (knn_eval.ks[0]): chosen in the gin file,
  not the best k on the test set."""
  results = read_json(os.path.join(knn_dir, 'knn_results.json'))
  if results is None:
    return None, None
  k = str(results['ks'][0])
  return float(results['results'][k]['top1']), int(k)


def read_embeddings(prefix: str) -> Tuple[np.ndarray, List[str]]:
  """Embeddings of the videos that cvrl_embed read without error, and their labels."""
  embeddings = np.load(prefix + '.npy')
  with open(prefix + '_index.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  keep = [i for i, r in enumerate(rows) if r['status'] == 'ok' and int(r['row']) >= 0]
  return (embeddings[[int(rows[i]['row']) for i in keep]],
          [rows[i]['label'] for i in keep])


# ------------------------------------------------------------------------- table
def format_table(rows: Sequence[dict], num_classes: int) -> str:
  """Markdown table: method, linear top-1, kNN top-1, training time."""
  pct = lambda v: '-' if v is None else f'{100 * v:.1f}'
  lines = ['| method | linear top-1 (%) | kNN top-1 (%) | training time |',
           '|---|---:|---:|---:|']
  for r in rows:
    seconds = r.get('train_seconds')
    time_text = '-' if seconds is None else f'{seconds / 60:.1f} min'
    lines.append(f'| {r["method"]} | {pct(r.get("linear"))} | {pct(r.get("knn"))} | '
                 f'{time_text} |')
  lines.append(f'| chance | {100 / num_classes:.1f} | {100 / num_classes:.1f} | - |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------- plots
def plot_loss_curves(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: str,
                     chance_loss: Optional[float] = None,
                     knn_curves: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None,
                     num_classes: Optional[int] = None) -> str:
  """The InfoNCE loss per step; beside it, the online k-NN monitor's top-1 when any
  run logged it (knn_top1)."""
  knn_curves = {k: v for k, v in (knn_curves or {}).items() if len(v[0])}
  fig, axes = plt.subplots(1, 2 if knn_curves else 1,
                           figsize=(11 if knn_curves else 6, 4), squeeze=False)
  ax = axes[0, 0]
  if knn_curves:
    knn_ax = axes[0, 1]
    for name, (steps, values) in knn_curves.items():
      knn_ax.plot(steps, 100 * values, label=name, marker='.')
    if num_classes:
      knn_ax.axhline(100 / num_classes, color='gray', linestyle='--', linewidth=1,
                     label=f'chance (1/{num_classes})')
    knn_ax.set_xlabel('step')
    knn_ax.set_ylabel('k-NN top-1 (%)')
    knn_ax.set_ylim(0, 100)
    knn_ax.set_title('Online k-NN monitor (frozen encoder, test videos)')
    knn_ax.grid(alpha=0.3)
    knn_ax.legend()
  for name, (steps, values) in curves.items():
    if len(steps):
      ax.plot(steps, values, label=name, marker='.' if len(steps) < 20 else None)
  if chance_loss is not None:
    ax.axhline(chance_loss, color='gray', linestyle='--', linewidth=1,
               label=f'chance (log(2B-1) = {chance_loss:.2f})')
  ax.set_xlabel('step')
  ax.set_ylabel('InfoNCE loss')
  ax.set_title('Pretraining loss')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_accuracy_bars(rows: Sequence[dict], num_classes: int, path: str) -> str:
  """Grouped bars (linear, kNN) per method, a dashed line at chance."""
  names = [r['method'] for r in rows]
  x = np.arange(len(names))
  width = 0.38
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 4))
  for offset, key, label in ((-width / 2, 'linear', 'linear top-1 (supervised row: its top-1)'),
                             (width / 2, 'knn', 'kNN top-1')):
    values = [100 * (r.get(key) or 0.0) for r in rows]
    bars = ax.bar(x + offset, values, width, label=label)
    for bar, r in zip(bars, rows):
      if r.get(key) is not None:
        ax.annotate(f'{100 * r[key]:.0f}', (bar.get_x() + bar.get_width() / 2,
                                            bar.get_height()),
                    ha='center', va='bottom', fontsize=8)
  ax.axhline(100 / num_classes, color='gray', linestyle='--', linewidth=1,
             label=f'chance ({100 / num_classes:.1f}%)')
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=15, ha='right')
  ax.set_ylabel('test top-1 (%)')
  ax.set_ylim(0, 125)  # room above the 100% bars for the legend
  ax.set_title('Accuracy on the test split (frozen encoder, except the supervised row)')
  ax.legend(fontsize=8, loc='upper center', ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def pca_2d(x: np.ndarray) -> np.ndarray:
  """First two principal components (SVD of the centred data)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=0, keepdims=True)
  if x.shape[0] < 2:
    return np.zeros((x.shape[0], 2))
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  proj = x @ vt[:2].T
  if proj.shape[1] < 2:
    proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
  return proj


def plot_embeddings(embeddings: np.ndarray, labels: Sequence[str], path: str,
                    title: str) -> str:
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  proj = pca_2d(embeddings / np.maximum(norms, 1e-12))
  fig, ax = plt.subplots(figsize=(6, 5))
  classes = sorted(set(labels))
  cmap = plt.get_cmap('tab10')
  for i, name in enumerate(classes):
    idx = [j for j, l in enumerate(labels) if l == name]
    ax.scatter(proj[idx, 0], proj[idx, 1], s=18, color=cmap(i % 10), label=name)
  ax.set_xlabel('PC 1')
  ax.set_ylabel('PC 2')
  ax.set_title(title)
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
