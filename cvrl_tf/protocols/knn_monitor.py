"""Online k-NN monitor: the frozen encoder's k-NN top-1 every N pretraining steps.

Why: loss, contrastive accuracy and entropy do not say whether the representation gets
better; a k-NN classifier on frozen features does, and without training anything. Give
labelled train (the memory) and test (the queries) records, and pretraining reports
`knn_top1` at step 0, every `every_steps` and at the end, in TensorBoard and on the
progress line (with `knn_seconds`, its cost). In gin:

  knn_monitor.train_files = 'data/train-*.tfrecord'
  knn_monitor.test_files = 'data/test-*.tfrecord'
  knn_monitor.every_steps = 150
  knn_monitor/test_views.clip_len = 8     # the views (KnnMonitorRecipe.views)
  knn_monitor/test_views.num_clips = 1

The numbers are those of `knn_eval` (protocols/knn.py) on the same weights and views:
the same views (multiview.run_views; `views`, for memory and queries alike), features
(L2-normalized, BN in inference mode) and vote (metrics.knn_top1). Costs one pass
over both sets per evaluation.
"""

import dataclasses
import time
from typing import Dict, Optional

import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf.input import clips
from cvrl_tf.input import sources
from cvrl_tf.protocols import metrics
from cvrl_tf.protocols import multiview

FilePatterns = sources.FilePatterns  # one definition: input/shards.py


@dataclasses.dataclass(frozen=True)
class KnnMonitorRecipe:
  """Off unless both train_files and test_files are given (labelled records or tfds:).
  views: of memory and queries alike."""
  train_files: Optional[FilePatterns] = None
  test_files: Optional[FilePatterns] = None
  every_steps: int = 1000
  k: int = 20
  vote: str = 'weighted'
  temperature: float = 0.07
  num_classes: Optional[int] = None
  eval_batch_size: int = 32
  views: clips.TestViews = clips.TestViews()

  @property
  def enabled(self) -> bool:
    return bool(self.train_files and self.test_files)


class KnnMonitor:
  """train_loop.Monitor: `knn_top1` of `encoder`'s features at the current weights."""

  def __init__(self, encoder, strategy, recipe: KnnMonitorRecipe):
    if recipe.every_steps < 1:
      raise errors.UserError(f'knn_monitor.every_steps must be >= 1, got '
                             f'{recipe.every_steps}')
    self.every = recipe.every_steps
    self._encoder, self._strategy, self._recipe = encoder, strategy, recipe
    # A tf.function of its own: traced once, not again at every evaluation.
    self.features = tf.function(self._features, reduce_retracing=True)

  def _features(self, clips: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(
        tf.cast(self._encoder(clips, training=False), tf.float32), axis=-1)

  def __call__(self, step: int) -> Dict[str, float]:
    del step
    start = time.perf_counter()
    r = self._recipe
    memory = multiview.run_views(self._strategy, r.train_files, r.eval_batch_size,
                                 self.features, r.views)
    queries = multiview.run_views(self._strategy, r.test_files, r.eval_batch_size,
                                  self.features, r.views)
    if memory is None:  # A multi-worker run's other workers: the chief evaluates.
      return {}
    per_k = metrics.knn_top1(memory, queries, (r.k,), r.num_classes, r.vote,
                             r.temperature)
    # Videos that could not be read are left out of top-1: counted, never silent.
    unreadable = len(memory.get('unreadable', ())) + len(queries.get('unreadable', ()))
    return {'knn_top1': per_k[str(r.k)]['top1'], 'knn_unreadable': float(unreadable),
            'knn_seconds': time.perf_counter() - start}  # What the monitor costs.


def monitors(recipe: KnnMonitorRecipe, encoder, strategy) -> list:
  """The monitors pretraining runs: [KnnMonitor] when enabled, else []. Their files are
  checked here, so a bad pattern fails before training, not at the first evaluation."""
  if not recipe.enabled:
    return []
  for files in (recipe.train_files, recipe.test_files):
    sources.open_source(files)
  return [KnnMonitor(encoder, strategy, recipe)]
