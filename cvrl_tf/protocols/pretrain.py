"""CVRL pretraining: the `pretrain` protocol (gin-configurable, run by `cvrl_train`).

Reading order for a newcomer: gin/pretrain.gin -> `pretrain` below -> data/pipeline.py
(clips) -> data/batch.py (what the step finishes) -> models/r3d.py + heads.py (encoder,
head) -> models/pretrainer.py + train_step.py (train step) -> losses.py (InfoNCE over the
global batch); cvrl_tf/__init__.py lists the same path.
"""

import math
from typing import Optional, Sequence, Union

import gin
import tf_keras

from cvrl_tf.data import pipeline
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import shards
from cvrl_tf.models import backbone_io
from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer as pretrainer_lib
from cvrl_tf.models import r3d
from cvrl_tf.protocols import knn_monitor
from cvrl_tf.runtime import config
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

FilePatterns = Union[str, Sequence[str]]


def steps_for(epochs: float, num_examples: int, global_batch_size: int) -> int:
  return max(1, int(math.ceil(epochs * num_examples / global_batch_size)))


@gin.configurable(denylist=['model_dir'])
def pretrain(model_dir: str,
             train_files: FilePatterns = gin.REQUIRED,
             global_batch_size: int = 1024,
             train_epochs: float = 800,
             train_steps: Optional[int] = None,
             warmup_epochs: float = 5,
             num_train_examples: Optional[int] = None,
             mixed_precision: Optional[str] = 'auto',
             jit_compile: bool = False,
             checkpoint_every: int = 1000,
             keep_checkpoints: int = 3,
             log_every: int = 100,
             seed: Optional[int] = None,
             progress_stream=progress_lib.STDERR) -> dict:
  """CVRL pretraining: encoder + projection head trained with InfoNCE on two views.

  Args:
    model_dir: checkpoints/, summaries/, operative_config.gin, run_info.json and, at the end,
      backbone/ (the encoder alone, what downstream protocols load).
    train_files: TFRecord pattern(s) written by cvrl_convert.
    global_batch_size: videos per step over all replicas (each gives two clips).
    train_epochs / train_steps: length; train_steps wins when given.
    warmup_epochs: linear warm-up of the learning rate, then cosine decay to 0.
    num_train_examples: videos per epoch; counted from the shards when None.
    mixed_precision: 'auto' (chosen for the hardware, see precision.py), 'float32',
      'mixed_bfloat16' or 'mixed_float16' (dynamic loss scaling).
    jit_compile: XLA-compile the train step.
    checkpoint_every / keep_checkpoints / log_every: in steps.
    seed: makes the input stream deterministic (with resume: seed + step) and seeds the
      augmentation deferred to the train step (as in the downstream protocols).
  Returns the last logged metrics.
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  strategy = distribute.get_strategy()
  clips = training_clips()
  facts = precision.detect_devices(strategy)
  choice = precision.resolve(mixed_precision, strategy, progress_stream, facts)
  tf_keras.mixed_precision.set_global_policy(choice.policy)
  if num_train_examples is None:
    num_train_examples = shards.count_videos(train_files)
  steps_per_epoch = max(1, num_train_examples // global_batch_size)
  total_steps = train_steps or steps_for(train_epochs, num_train_examples, global_batch_size)
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  if progress_stream is not None:
    print(f'pretrain: {num_train_examples} videos, global batch {global_batch_size} on '
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
        **({} if seed is None else {'augment_seed': seed}))
    model.compile(optimizer=optim.build_optimizer(
        total_steps=total_steps, warmup_steps=warmup_steps,
        global_batch_size=global_batch_size), jit_compile=jit_compile)
    model.build_for_training()
  if progress_stream is not None:
    gflops = flops.count_flops(encoder, _clip_shape(clips)) / 1e9
    print(f'encoder {encoder.name}: {encoder.count_params():,} parameters, '
          f'{gflops:.2f} GFLOPs per clip at {_clip_shape(clips)}', file=progress_stream,
          flush=True)

  def make_dataset(start_step):
    data_seed = None if seed is None else seed + start_step
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.build_pretrain_dataset(
            train_files, global_batch_size, seed=data_seed, input_context=ctx))

  make_dataset(0)  # Fails fast on bad data before anything is written.
  if train_loop.is_chief(strategy):
    config.save_operative_config(model_dir)
    precision.record(model_dir, choice, 'pretrain', facts)
  logs = train_loop.fit_resumable(
      model, make_dataset, model_dir, total_steps, strategy,
      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      log_every=log_every, examples_per_step=2 * global_batch_size,
      progress_stream=progress_stream, monitors=knn_monitor.monitors(encoder, strategy))
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
