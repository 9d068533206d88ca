"""CVRL pretraining: the `pretrain` protocol (gin-configurable, run by `cvrl_train`).

Reading order for a newcomer: configs/pretrain.gin -> `pretrain` below -> input/pipeline.py
(clips) -> input/batch.py (what the step finishes) -> models/r3d.py + heads.py (encoder,
head) -> models/pretrainer.py + train_step.py (train step) -> losses.py (InfoNCE over the
global batch); cvrl_tf/__init__.py lists the same path.
"""

import dataclasses

import gin
import tf_keras

from cvrl_tf import progress as progress_lib
from cvrl_tf.input import bad_examples
from cvrl_tf.input import pipeline
from cvrl_tf.input import shards
from cvrl_tf.models import backbone_io
from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer as pretrainer_lib
from cvrl_tf.models import r3d
from cvrl_tf.protocols import knn_monitor
from cvrl_tf.protocols import recipe as recipe_lib
from cvrl_tf.runtime import config
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop


@gin.configurable('pretrain')
@dataclasses.dataclass(frozen=True)
class Pretrain(recipe_lib.TrainingRecipe):
  """CVRL pretraining: encoder + projection head trained with InfoNCE on two views.

  Fields: recipe.TrainingRecipe's, with the paper's defaults (batch 1024 videos, each
  giving two clips; 800 epochs; 5 warm-up epochs). The encoder, head, clips and
  augmentation are bound on their own builders (configs/pretrain.gin).
  """
  global_batch_size: int = 1024
  train_epochs: float = 800
  warmup_epochs: float = 5

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> dict:
    return pretrain(model_dir, self, progress_stream)


def pretrain(model_dir: str, recipe: Pretrain, progress_stream=progress_lib.STDERR) -> dict:
  """Trains encoder + head (resumable); returns the last logged metrics.

  model_dir: checkpoints/, summaries/, operative_config.gin, run_info.json and, at the
  end, backbone/ (the encoder alone, what downstream protocols load, with head.json and
  training.json beside it).
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  strategy = distribute.get_strategy()
  clips = training_clips()
  facts = precision.detect_devices(strategy)
  choice = precision.resolve(recipe.mixed_precision, strategy, progress_stream, facts)
  tf_keras.mixed_precision.set_global_policy(choice.policy)
  schedule = recipe.schedule(recipe.num_train_examples or
                             shards.count_videos(recipe.train_files))
  num_train_examples, total_steps, warmup_steps = (
      schedule.num_videos, schedule.total_steps, schedule.warmup_steps)
  batch = recipe.global_batch_size
  if progress_stream is not None:
    print(f'pretrain: {num_train_examples} videos, global batch {batch} on '
          f'{strategy.num_replicas_in_sync} replica(s), {total_steps} steps '
          f'({warmup_steps} warm-up)', file=progress_stream, flush=True)

  with strategy.scope():
    encoder = r3d.build_backbone()
    head = heads.ProjectionHead()
    # crop_size: what the train step resizes to when the pipeline defers the resize.
    # seed also seeds the augmentation deferred to the step (a CVRLPretrainer.augment_seed
    # binding rules when seed is None).
    model = pretrainer_lib.CVRLPretrainer(
        encoder, head, crop_size=clips['crop_size'],
        **({} if recipe.seed is None else {'augment_seed': recipe.seed}))
    model.compile(optimizer=optim.build_optimizer(
        total_steps=total_steps, warmup_steps=warmup_steps,
        global_batch_size=batch), jit_compile=recipe.jit_compile)
    model.build_for_training()
  if progress_stream is not None:
    gflops = flops.count_flops(encoder, _clip_shape(clips)) / 1e9
    print(f'encoder {encoder.name}: {encoder.count_params():,} parameters, '
          f'{gflops:.2f} GFLOPs per clip at {_clip_shape(clips)}', file=progress_stream,
          flush=True)

  bad = bad_examples.BadExamples(train_loop.worker_dir(model_dir, strategy), 'pretrain',
                                 bad_examples.limit(), progress_stream=progress_stream,
                                 end_input=not train_loop.is_multi_worker(strategy))

  def make_dataset(start_step):
    data_seed = None if recipe.seed is None else recipe.seed + start_step
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.build_pretrain_dataset(
            recipe.train_files, batch, seed=data_seed, input_context=ctx,
            bad_examples=bad))

  make_dataset(0)  # Fails fast on bad data before anything is written.
  if train_loop.is_chief(strategy):
    config.save_operative_config(model_dir)
    precision.record(model_dir, choice, 'pretrain', facts)
  logs = train_loop.fit_resumable(
      model, make_dataset, model_dir, total_steps, strategy,
      checkpoint_every=recipe.checkpoint_every, keep_checkpoints=recipe.keep_checkpoints,
      log_every=recipe.log_every, examples_per_step=2 * batch,
      progress_stream=progress_stream, bad_examples=bad,
      monitors=knn_monitor.monitors(encoder, strategy))
  out_dir = train_loop.worker_dir(model_dir, strategy)
  spec = backbone_io.current_spec(use_sync_bn=False, output='pooled')
  backbone_io.save_run_specs(out_dir, head.spec(), clips)
  backbone_io.save_backbone(encoder, spec, out_dir,
                            int(model.optimizer.iterations.numpy()))
  return logs


def training_clips() -> dict:
  """The clips pretraining feeds the encoder, from the pipeline's effective arguments:
  what backbone/training.json records for export and embed."""
  args = config.effective_args(pipeline.build_pretrain_dataset)
  return {'num_frames': args['clip_len'], 'frame_stride': args['stride'],
          'target_fps': args['target_fps'], 'crop_size': args['crop_size']}


def _clip_shape(clips: dict):
  """[T, S, S, 3] of a pretraining clip."""
  return (clips['num_frames'], clips['crop_size'], clips['crop_size'], 3)
