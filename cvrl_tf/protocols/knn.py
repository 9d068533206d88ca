"""k-NN evaluation: cosine k-NN on frozen features, no training (`knn_eval`).

Encoder as in classify.py (`encoder_source` 'model_dir', 'hub' or 'random'). Both the
memory (train videos) and the queries (test videos) are multi-view: the mean of the
L2-normalized view features, re-normalized. Voting and temperature: evaluation.py.
model_dir after a run: operative_config.gin, run_info.json, knn_results.json.
"""

import dataclasses
import os
from typing import Optional, Sequence

import gin
import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import pipeline
from cvrl_tf.input import shards
from cvrl_tf.models import encoder_source as encoder_source_lib
from cvrl_tf.protocols import classify
from cvrl_tf.protocols import evaluation
from cvrl_tf.protocols import multiview
from cvrl_tf.runtime import config
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

KNN_FILE = 'knn_results.json'
MEMORY_SCOPE = 'knn_memory'  # gin scope of build_eval_dataset for the k-NN memory.


@gin.configurable('knn_eval')
@dataclasses.dataclass(frozen=True)
class KnnEval:
  """Cosine k-NN on frozen features: train videos are the memory, test videos queries.

  Both sides are multi-view: mean of the L2-normalized view features, re-normalized.
  Views come from build_eval_dataset; bindings in the gin scope `knn_memory/` apply to
  the memory only (e.g. fewer clips for a large train set). ks / vote / temperature: see
  evaluation.py. num_classes defaults to the label map's lines, else the largest label.
  Writes knn_results.json (top-1 and mean class accuracy per k).
  """
  train_files: classify.FilePatterns = gin.REQUIRED
  test_files: classify.FilePatterns = gin.REQUIRED
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

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> Optional[dict]:
    return knn_eval(model_dir, self, progress_stream)


def knn_eval(model_dir: str, recipe: KnnEval,
             progress_stream=progress_lib.STDERR) -> Optional[dict]:
  """Features of the memory and the queries, their k-NN votes, knn_results.json."""
  progress_stream = progress_lib.resolve_stream(progress_stream)
  strategy = distribute.get_strategy()
  facts = precision.detect_devices(strategy)
  choice = precision.resolve(recipe.mixed_precision, strategy, progress_stream, facts)
  with precision.dtype_policy(choice.policy):
    with strategy.scope():
      encoder, info = encoder_source_lib.build_encoder(
          recipe.encoder_source, recipe.pretrain_dir, recipe.hub_handle, trainable=False)
    features = lambda clips: tf.math.l2_normalize(
        tf.cast(encoder(clips, training=False), tf.float32), axis=-1)
    memory = multiview.run_views(strategy, recipe.train_files, recipe.eval_batch_size,
                                 features, MEMORY_SCOPE, progress_stream,
                                 'k-NN memory (train)', model_dir, 'knn_memory')
    queries = multiview.run_views(strategy, recipe.test_files, recipe.eval_batch_size,
                                  features, None, progress_stream, 'k-NN queries (test)',
                                  model_dir, 'knn_test')
  if memory is None:
    return None
  num_classes = recipe.num_classes
  if not num_classes:
    num_classes = (classify.resolve_num_classes(None, recipe.label_map_file)
                   if recipe.label_map_file else
                   int(max(memory['label'].max(), queries['label'].max())) + 1)
  per_k = evaluation.knn_top1(memory, queries, recipe.ks, num_classes, recipe.vote,
                               recipe.temperature)
  names = evaluation.class_names(num_classes, recipe.label_map_file,
                                 shards.list_files(recipe.test_files))
  views = {'memory': config.effective_args(pipeline.build_eval_dataset, MEMORY_SCOPE),
           'test': config.effective_args(pipeline.build_eval_dataset)}
  results = {**info, 'protocol': 'knn_eval', 'vote': recipe.vote,
             'temperature': recipe.temperature, 'ks': list(recipe.ks), 'results': per_k,
             'num_memory_videos': len(memory['label']),
             'num_test_videos': len(queries['label']), 'class_names': names,
             'views': views, 'train_files': files_lib.normalized(recipe.train_files),
             'test_files': files_lib.normalized(recipe.test_files),
             'mixed_precision': choice.policy,
             'memory_unreadable_videos': memory['unreadable'],
             **evaluation.unreadable_summary(queries['unreadable'], len(queries['label']),
                                             None)}
  if train_loop.is_chief(strategy):
    tf.io.gfile.makedirs(model_dir)
    config.save_operative_config(model_dir)
    precision.record(model_dir, choice, 'knn_eval', facts)
    files_lib.write_json(os.path.join(model_dir, KNN_FILE), results)
  top1 = ', '.join(f'k={k}: {v["top1"]:.4f}' for k, v in per_k.items())
  progress_lib.say(progress_stream,
                   f'k-NN top-1: {top1} -> {os.path.join(model_dir, KNN_FILE)}')
  return results
