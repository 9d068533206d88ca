"""The multi-view test over a tf.distribute strategy: views in, per-video results out.

`run_views` feeds every view of every video (build_eval_dataset: num_clips evenly spaced
clips x num_crops crops, CVRL 10 x 3 at 256 px) through a per-replica function and
averages its outputs per video (collection.collect_views), with a progress line (videos
done / total, videos/s). `multiview_test` does it with a classifier's softmax and writes
eval_results.json, confusion_matrix.png, eval_predictions.csv and TensorBoard scalars.

Batches are padded to full per-replica size (and to a whole number of steps) so every
replica runs every step with static shapes; padding views carry video_index -1 and are
dropped. Multi-worker: the chief evaluates alone over its local devices (the others get
None), so no worker waits on another's last batch.
"""

import dataclasses
import json
import math
import os
from typing import Optional

import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import bad_examples as bad_examples_lib
from cvrl_tf.input import clips
from cvrl_tf.input import pipeline
from cvrl_tf.input import sources
from cvrl_tf.protocols import collection
from cvrl_tf.protocols import metrics
from cvrl_tf.protocols import reports
from cvrl_tf.runtime import train_loop

FilePatterns = sources.FilePatterns  # one definition: input/shards.py
RESULTS_FILE = 'eval_results.json'


def _eval_input(strategy, files, batch_size: int, views: clips.TestViews,
                tracker: Optional[bad_examples_lib.BadExamples] = None):
  """Flat eval views, padded for the replicas; a plain dataset when strategy is None."""
  def build(ctx):
    ds = pipeline.build_eval_dataset(files, batch_size, views, input_context=ctx,
                                     bad_examples=tracker)
    if ctx is None:
      return collection.pad_for_replicas(ds, batch_size, 1)
    per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    return collection.pad_for_replicas(ds, ctx.get_per_replica_batch_size(batch_size),
                                       per_pipeline)
  if strategy is None:
    return build(None)
  return strategy.distribute_datasets_from_function(build)


def run_views(strategy, files, batch_size, output_fn, views: clips.TestViews,
              progress_stream=None, what='test', model_dir=None, stage='test'):
  """Per-video mean of output_fn over every view of `files` (collection.collect_views).

  Videos that cannot be read are skipped and returned under 'unreadable' (shard, record,
  media_id, reason; also in <model_dir>/bad_examples.json under `stage`).

  Multi-worker: the chief evaluates alone over its local devices (the others return
  None), so no worker waits on another's last batch.
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  if train_loop.is_multi_worker(strategy):
    if not train_loop.is_chief(strategy):
      return None
    strategy = None
  source = sources.open_source(files, validate=False)
  total = source.count_videos()
  progress_lib.say(
      progress_stream, f'{what}: {total} videos x {views.num_clips} clips x '
      f'{views.num_crops} crops ({views.clip_len} frames, {views.crop_size} px)')
  tracker = bad_examples_lib.BadExamples(model_dir, stage, None, False, progress_stream,
                                         keep_earlier=False)
  videos = collection.collect_views(
      _eval_input(strategy, files, batch_size, views, tracker), output_fn, total,
      views.views_per_video, strategy, progress_stream,
      skipped=lambda: sum(e['record'] >= 0 for e in tracker.examples))  # Not files.
  videos['unreadable'] = tracker.examples
  return videos


def multiview_test(model, strategy, model_dir: str, test_files: FilePatterns,
                   eval_batch_size: int, views: clips.TestViews,
                   step: Optional[int] = None, label_map_file: Optional[str] = None,
                   protocol: str = '', progress_stream=progress_lib.STDERR,
                   reuse: bool = True) -> Optional[dict]:
  """Softmax averaged over each video's views; writes eval_results.json, the confusion
  matrix PNG, per-video predictions and TensorBoard scalars. Returns the results.

  reuse: return the stored results instead when they are for the same checkpoint step
  and settings (a re-run of a finished linear_eval / finetune command).
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  settings = {'test_files': files_lib.normalized(test_files),
              'views': files_lib.normalized(dataclasses.asdict(views))}
  path = os.path.join(model_dir, RESULTS_FILE)
  if reuse and tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
    if previous.get('checkpoint_step') == step and previous.get('settings') == settings:
      progress_lib.say(progress_stream, f'already evaluated at step {step}: {path} '
                       f'(top1={previous["top1"]:.4f}); delete it to test again.')
      return previous
  videos = run_views(strategy, test_files, eval_batch_size, model.probabilities, views,
                     progress_stream=progress_stream, model_dir=model_dir)
  if videos is None:
    return None
  names = reports.class_names(model.num_classes, label_map_file,
                              sources.open_source(test_files, validate=False))
  scored = metrics.classification_metrics(videos['scores'], videos['label'],
                                          model.num_classes)
  png = reports.plot_confusion_matrix(
      scored['confusion'], names, os.path.join(model_dir, 'confusion_matrix.png'),
      f'{protocol} step {step}: top-1 {scored["top1"]:.3f} ({scored["num_videos"]} '
      f'videos)')
  csv = reports.write_predictions_csv(
      os.path.join(model_dir, 'eval_predictions.csv'), videos, names)
  results = {
      'protocol': protocol, 'checkpoint_step': step, 'settings': settings,
      'num_videos': scored['num_videos'], 'views_per_video': int(videos['num_views'][0]),
      'top1': scored['top1'], 'top5': scored.get('top5'),
      'mean_class_accuracy': scored['mean_class_accuracy'],
      'per_class': {name: {'accuracy': None if math.isnan(acc) else float(acc),
                           'num_videos': int(n)}
                    for name, acc, n in zip(names, scored['per_class_accuracy'],
                                            scored['per_class_count'])},
      'confusion_matrix': scored['confusion'], 'class_names': names,
      'confusion_matrix_png': os.path.basename(png),
      'predictions_csv': os.path.basename(csv),
      **reports.unreadable_summary(videos['unreadable'], scored['num_videos'],
                                   scored['top1'])}
  files_lib.write_json(path, results)
  writer = tf.summary.create_file_writer(
      os.path.join(model_dir, train_loop.SUMMARY_SUBDIR, 'eval'))
  with writer.as_default(step=step or 0):
    for key in ('top1', 'top5', 'mean_class_accuracy'):
      if results[key] is not None:
        tf.summary.scalar(f'multiview/{key}', results[key])
  writer.close()
  top5 = 'n/a' if results['top5'] is None else f'{results["top5"]:.4f}'
  progress_lib.say(progress_stream, f'{protocol} multi-view test at step {step}: top1='
                   f'{results["top1"]:.4f} top5={top5} mean class='
                   f'{results["mean_class_accuracy"]:.4f} over {results["accuracy_over"]}'
                   f' -> {path}')
  return results

