"""CVRL pretraining: the `pretrain` protocol (its recipe `Pretrain`; `cvrl_train` builds
it from gin, Python code directly).

Reading order for a newcomer: configs/pretrain.gin -> `Pretrain` and `pretrain` below ->
input/clips.py + pipeline.py (clips) -> input/batch.py (what the step finishes) ->
models/r3d.py + heads.py (encoder, head) -> models/pretrainer.py + train_step.py (train
step) -> losses.py (InfoNCE over the global batch); cvrl_tf/__init__.py lists the same
path. Each part of the recipe goes to the one place that uses it: `recipe.clips` to the
pipeline (and its crop size and colour settings to the train step), `recipe.encoder` to
r3d.build_backbone, `recipe.head` to heads.ProjectionHead, `recipe.optimizer` to
optim.build_optimizer, `recipe.knn_monitor` to knn_monitor.monitors.
"""

import dataclasses

from cvrl_tf import progress as progress_lib
from cvrl_tf.input import bad_examples
from cvrl_tf.input import clips as clips_lib
from cvrl_tf.input import pipeline
from cvrl_tf.input import sources
from cvrl_tf.models import backbone_io
from cvrl_tf.models import flops
from cvrl_tf.models import heads
from cvrl_tf.models import pretrainer as pretrainer_lib
from cvrl_tf.models import r3d
from cvrl_tf.protocols import knn_monitor as knn_monitor_lib
from cvrl_tf.protocols import recipe as recipe_lib
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop


@dataclasses.dataclass(frozen=True)
class Pretrain(recipe_lib.TrainingRecipe):
  """CVRL pretraining: encoder + projection head trained with InfoNCE on two views.

  Fields: recipe.TrainingRecipe's, with the paper's defaults (batch 1024 videos, each
  giving two clips; 800 epochs; 5 warm-up epochs), and:
  clips: the two views of each video (input/clips.py: frames, crops, interval
    sampling, augmentation).
  encoder, head: the R3D encoder and the projection head (models/r3d.py, heads.py).
  optimizer: SGD / LARS settings (runtime/optim.py; the schedule comes from the epochs).
  temperature: InfoNCE temperature; weight_decay: wd of wd * sum(0.5 ||k||^2) on kernels.
  knn_monitor: the online k-NN monitor (off unless its files are given).
  """
  global_batch_size: int = 1024
  train_epochs: float = 800
  warmup_epochs: float = 5
  clips: clips_lib.PretrainClips = clips_lib.PretrainClips()
  encoder: r3d.EncoderSpec = r3d.EncoderSpec()
  head: heads.HeadSpec = heads.HeadSpec()
  optimizer: optim.OptimizerSpec = optim.OptimizerSpec()
  temperature: float = 0.1
  weight_decay: float = 1e-6
  knn_monitor: knn_monitor_lib.KnnMonitorRecipe = knn_monitor_lib.KnnMonitorRecipe()

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> dict:
    return pretrain(model_dir, self, progress_stream)


def pretrain(model_dir: str, recipe: Pretrain, progress_stream=progress_lib.STDERR) -> dict:
  """Trains encoder + head (resumable); returns the last logged metrics.

  model_dir: checkpoints/, summaries/, run_info.json (operative_config.gin from
  cvrl_train) and, at the end, backbone/ (the encoder alone, what downstream protocols
  load, with head.json and training.json beside it).
  """
  opening = recipe_lib.open_protocol(recipe, 'pretrain', progress_stream)
  with precision.dtype_policy(opening.precision.policy):
    return _pretrain(model_dir, recipe, opening)


def _pretrain(model_dir: str, recipe: Pretrain, opening: recipe_lib.Opening) -> dict:
  strategy, stream, clips = opening.strategy, opening.progress_stream, recipe.clips
  schedule = recipe.schedule(recipe.num_train_examples or
                             sources.count_videos(recipe.train_files))
  total_steps, batch = schedule.total_steps, recipe.global_batch_size
  progress_lib.say(stream, f'pretrain: {schedule.num_videos} videos, global batch {batch} '
                   f'on {strategy.num_replicas_in_sync} replica(s), {total_steps} steps '
                   f'({schedule.warmup_steps} warm-up)')
  with strategy.scope():
    encoder = r3d.build_backbone(recipe.encoder)
    head = heads.ProjectionHead.from_spec(recipe.head)
    # crop_size and augmentation: what the train step finishes when the pipeline defers
    # the resize or the colour; seed also seeds that deferred augmentation.
    model = pretrainer_lib.CVRLPretrainer(
        encoder, head, temperature=recipe.temperature, weight_decay=recipe.weight_decay,
        crop_size=clips.crop_size, augment_seed=recipe.seed or 0,
        augmentation=clips.augmentation)
    model.compile(optimizer=optim.build_optimizer(
        total_steps, schedule.warmup_steps, batch, recipe.optimizer),
        jit_compile=recipe.jit_compile)
    model.build_for_training()
  if stream is not None:
    gflops = flops.count_flops(encoder, _clip_shape(clips)) / 1e9
    progress_lib.say(stream, f'encoder {encoder.name}: {encoder.count_params():,} '
                     f'parameters, {gflops:.2f} GFLOPs per clip at {_clip_shape(clips)}')

  bad = bad_examples.BadExamples(train_loop.worker_dir(model_dir, strategy), 'pretrain',
                                 recipe.bad_examples, progress_stream=stream,
                                 end_input=not train_loop.is_multi_worker(strategy))

  def make_dataset(start_step):
    data_seed = None if recipe.seed is None else recipe.seed + start_step
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.build_pretrain_dataset(
            recipe.train_files, batch, clips, seed=data_seed, input_context=ctx,
            bad_examples=bad))

  make_dataset(0)  # Fails fast on bad data before anything is written.
  recipe_lib.record_start(model_dir, recipe, 'pretrain', opening)
  logs = train_loop.fit_resumable(
      model, make_dataset, model_dir, total_steps, strategy, recipe.cadence(2 * batch),
      progress_stream=stream, bad_examples=bad,
      monitors=knn_monitor_lib.monitors(recipe.knn_monitor, encoder, strategy))
  out_dir = train_loop.worker_dir(model_dir, strategy)
  spec = backbone_io.spec_dict(recipe.encoder, use_sync_bn=False, output='pooled')
  backbone_io.save_run_specs(out_dir, head.spec(), training_clips(clips))
  backbone_io.save_backbone(encoder, spec, out_dir,
                            int(model.optimizer.iterations.numpy()))
  return logs


def training_clips(clips: clips_lib.PretrainClips) -> dict:
  """The clips pretraining feeds the encoder: what backbone/training.json records for
  export and embed."""
  return {'num_frames': clips.clip_len, 'frame_stride': clips.stride,
          'target_fps': clips.target_fps, 'crop_size': clips.crop_size}


def _clip_shape(clips: clips_lib.PretrainClips):
  """[T, S, S, 3] of a pretraining clip."""
  return (clips.clip_len, clips.crop_size, clips.crop_size, 3)
