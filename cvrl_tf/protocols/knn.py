"""k-NN evaluation: cosine k-NN on frozen features, no training (`knn_eval`).

Encoder as in classify.py (`encoder_source` 'model_dir', 'hub' or 'random'). Both the
memory (train videos) and the queries (test videos) are multi-view: the mean of the
L2-normalized view features, re-normalized. Voting and temperature: metrics.py.
model_dir after a run: run_info.json, knn_results.json (and cvrl_train's
operative_config.gin).
"""

import dataclasses
import os
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import clips
from cvrl_tf.input import sources
from cvrl_tf.models import encoder_source as encoder_source_lib
from cvrl_tf.models import r3d
from cvrl_tf.protocols import classify
from cvrl_tf.protocols import metrics
from cvrl_tf.protocols import reports
from cvrl_tf.protocols import multiview
from cvrl_tf.protocols import recipe as recipe_lib
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

KNN_FILE = 'knn_results.json'


@dataclasses.dataclass(frozen=True)
class KnnEval:
  """Cosine k-NN on frozen features: train videos are the memory, test videos queries.

  Both sides are multi-view: mean of the L2-normalized view features, re-normalized.
  test_views: the views of the queries, and of the memory unless memory_views is given
  (e.g. fewer clips for a large train set; gin: bindings in the scope `knn_memory/`).
  encoder: the architecture of encoder_source='random' (classify.py); seed: its
  initialization (None: a fresh draw each run). ks / vote / temperature: see metrics.py.
  num_classes defaults to the label map's lines, else the largest label. Writes
  knn_results.json (top-1 and mean class accuracy per k).
  """
  REQUIRED = ('train_files', 'test_files')
  train_files: classify.FilePatterns = None
  test_files: classify.FilePatterns = None
  encoder_source: str = 'model_dir'
  pretrain_dir: Optional[str] = None
  hub_handle: Optional[str] = None
  ks: Sequence[int] = (1, 5, 20)
  vote: str = 'weighted'
  temperature: float = 0.07
  num_classes: Optional[int] = None
  label_map_file: Optional[str] = None
  eval_batch_size: int = 32
  mixed_precision: Optional[str] = 'auto'
  test_views: clips.TestViews = clips.TestViews()
  memory_views: Optional[clips.TestViews] = None
  encoder: Optional[r3d.EncoderSpec] = None
  seed: Optional[int] = None
  strategy: distribute.StrategySpec = distribute.StrategySpec()

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> Optional[dict]:
    return knn_eval(model_dir, self, progress_stream)


def knn_eval(model_dir: str, recipe: KnnEval,
             progress_stream=progress_lib.STDERR) -> Optional[dict]:
  """Features of the memory and the queries, their k-NN votes, knn_results.json."""
  opening = recipe_lib.open_protocol(recipe, 'knn_eval', progress_stream)
  strategy, progress_stream = opening.strategy, opening.progress_stream
  memory_views = recipe.memory_views or recipe.test_views
  with precision.dtype_policy(opening.precision.policy):
    with strategy.scope():
      encoder, info = encoder_source_lib.build_encoder(
          recipe.encoder_source, recipe.pretrain_dir, recipe.hub_handle, trainable=False,
          architecture=recipe.encoder)
    features = lambda clips: tf.math.l2_normalize(
        tf.cast(encoder(clips, training=False), tf.float32), axis=-1)
    memory = multiview.run_views(strategy, recipe.train_files, recipe.eval_batch_size,
                                 features, memory_views, progress_stream,
                                 'k-NN memory (train)', model_dir, 'knn_memory')
    queries = multiview.run_views(strategy, recipe.test_files, recipe.eval_batch_size,
                                  features, recipe.test_views, progress_stream,
                                  'k-NN queries (test)', model_dir, 'knn_test')
  if memory is None:
    return None
  num_classes = recipe.num_classes
  if not num_classes:
    num_classes = (classify.resolve_num_classes(None, recipe.label_map_file)
                   if recipe.label_map_file else
                   int(max(memory['label'].max(), queries['label'].max())) + 1)
  per_k = metrics.knn_top1(memory, queries, recipe.ks, num_classes, recipe.vote,
                           recipe.temperature)
  names = reports.class_names(num_classes, recipe.label_map_file,
                              sources.open_source(recipe.test_files, validate=False))
  views = {'memory': files_lib.normalized(dataclasses.asdict(memory_views)),
           'test': files_lib.normalized(dataclasses.asdict(recipe.test_views))}
  results = {**info, 'protocol': 'knn_eval', 'vote': recipe.vote,
             'temperature': recipe.temperature, 'ks': list(recipe.ks), 'results': per_k,
             'num_memory_videos': len(memory['label']),
             'num_test_videos': len(queries['label']), 'class_names': names,
             'views': views, 'train_files': files_lib.normalized(recipe.train_files),
             'test_files': files_lib.normalized(recipe.test_files),
             'mixed_precision': opening.precision.policy,
             'memory_unreadable_videos': memory['unreadable'],
             **reports.unreadable_summary(queries['unreadable'], len(queries['label']),
                                          None)}
  recipe_lib.record_start(model_dir, recipe, 'knn_eval', opening)
  if train_loop.is_chief(strategy):
    files_lib.write_json(os.path.join(model_dir, KNN_FILE), results)
  top1 = ', '.join(f'k={k}: {v["top1"]:.4f}' for k, v in per_k.items())
  progress_lib.say(progress_stream,
                   f'k-NN top-1: {top1} -> {os.path.join(model_dir, KNN_FILE)}')
  return results
