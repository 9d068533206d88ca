"""Metrics of a test, in NumPy: classification on video-level scores, and k-NN.

`classification_metrics`, on video-level scores [V, C]:
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

from typing import Dict, Optional, Sequence

import numpy as np

VOTES = ('weighted', 'majority')


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
