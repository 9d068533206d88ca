"""Classification protocols: linear evaluation, fine-tuning / semi-supervised, and the
multi-view test of a trained classifier.

Each protocol is a recipe: a typed, frozen dataclass holding every setting of the run
(its clips and views as input/clips.py objects), built by `cvrl_train` from gin
(`run.experiment = @linear_eval`, `linear_eval.learning_rate = 32.0`) and run with
`recipe.run(model_dir)`; from Python: `LinearEval(train_files=...).run(dir)`.
`LinearEval` and `Finetune` share one `ClassifierRecipe` and one `train_classifier`.

Encoder (`encoder_source`):
  'model_dir'  the `backbone/` of a pretraining run (`pretrain_dir`); its architecture
               comes from backbone.json, and an `encoder` that contradicts it is an
               error rather than silently ignored.
  'hub'        an exported SavedModel or TF Hub handle (`hub_handle`) via hub.KerasLayer.
  'random'     random initialization of `encoder` (default: CVRL's R3D-50; the baseline).

Protocols (paper settings in configs/):
  linear_eval  frozen encoder (BN in inference mode), L2-normalized features, one Dense
               layer, softmax cross-entropy, no weight decay, SGD momentum + warm-up +
               cosine. Optional feature cache (feature_cache.py); online by default.
  finetune     everything trains; dropout before the Dense layer; weight decay on kernels
               added in the train step (models/classifier.py). `label_fraction` (0.01,
               0.1) makes it the semi-supervised protocol: a deterministic per-class
               subset (the kept videos are listed in label_subset.json).
  evaluate     the multi-view test of a trained classifier model_dir (latest checkpoint).
k-NN on frozen features is knn.py.

model_dir after a run: checkpoints/ summaries/ operative_config.gin run_info.json
classifier.json (how to rebuild the model) [label_subset.json] [feature_cache/] and, with
test_files, eval_results.json, confusion_matrix.png, eval_predictions.csv. Re-running the
same command resumes training; a finished run skips to the test, and a test already done
for the same checkpoint and settings is not redone.
"""

import dataclasses
import math
import os
from typing import Optional

import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf import records
from cvrl_tf.input import bad_examples
from cvrl_tf.input import clips
from cvrl_tf.input import pipeline
from cvrl_tf.input import sources
from cvrl_tf.models import classifier as classifier_lib
from cvrl_tf.models import encoder_source as encoder_source_lib
from cvrl_tf.models import r3d
from cvrl_tf.protocols import feature_cache
from cvrl_tf.protocols import multiview
from cvrl_tf.protocols import recipe as recipe_lib
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

FilePatterns = recipe_lib.FilePatterns
CLASSIFIER_FILE = 'classifier.json'
SUBSET_FILE = 'label_subset.json'


# ------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class ClassifierRecipe(recipe_lib.TrainingRecipe):
  """What a classifier is trained and tested with; shared by LinearEval and Finetune.

  Fields of every training recipe: recipe.py (train_files, num_train_examples, schedule,
  precision, checkpoints, seed). Here, besides:
  Data: test_files (with them the multi-view test runs at the end); num_classes (of the
    Dense layer; default: lines of label_map_file); label_map_file (class names for the
    results; default: found next to the shards); label_fraction, label_seed (train on a
    per-class fraction of the labels).
  Clips: train_clips (one random clip per video), test_views (the multi-view test).
  Encoder: encoder_source, pretrain_dir, hub_handle, encoder (see the module docstring).
  Model: freeze_encoder, l2_normalize (features before dropout/Dense), dropout_rate,
    weight_decay (wd * sum(0.5 ||k||^2) over all conv/dense kernels, not BN or biases,
    added to the loss in the train step), use_sync_bn (batch statistics across
    replicas, for small per-replica batches).
  Optimizer: learning_rate (peak, no batch scaling), momentum, optimizer ('sgd', 'lars').
  eval_batch_size: views per global batch in the test.
  """
  test_files: Optional[FilePatterns] = None
  num_classes: Optional[int] = None
  label_map_file: Optional[str] = None
  label_fraction: Optional[float] = None
  label_seed: int = 0
  encoder_source: str = 'model_dir'
  pretrain_dir: Optional[str] = None
  hub_handle: Optional[str] = None
  freeze_encoder: bool = False
  l2_normalize: bool = False
  dropout_rate: float = 0.5
  weight_decay: float = 1e-4
  use_sync_bn: bool = False
  learning_rate: float = 0.1
  momentum: float = 0.9
  optimizer: str = 'sgd'
  eval_batch_size: int = 32
  train_clips: clips.TrainClips = clips.TrainClips()
  test_views: clips.TestViews = clips.TestViews()
  encoder: Optional[r3d.EncoderSpec] = None

  protocol = 'classifier'  # The name in classifier.json, run_info.json and the logs.

  def feature_cache_dir(self, model_dir: str) -> Optional[str]:
    """Where cached encoder outputs go; None trains online (the only way to fine-tune)."""
    del model_dir
    return None

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> dict:
    return train_classifier(model_dir, self, progress_stream)


@dataclasses.dataclass(frozen=True)
class Finetune(ClassifierRecipe):
  """Fine-tunes encoder + Dense layer; with label_fraction, the semi-supervised protocol.
  Defaults: the paper's UCF-101 / HMDB-51 fine-tuning (configs/finetune_*.gin)."""
  protocol = 'finetune'


@dataclasses.dataclass(frozen=True)
class LinearEval(ClassifierRecipe):
  """Linear classifier on the frozen encoder (CVRL: LR 32, 100 epochs, batch 1024).

  cache_features: train the Dense layer on cached encoder outputs (feature_cache.py):
    `cache_passes` augmented passes (default: one per epoch, exactly the online
    distribution; fewer reuse augmentations) in `cache_dir` (default
    <model_dir>/feature_cache; share it between runs of the same encoder and data).
  """
  freeze_encoder: bool = dataclasses.field(default=True, init=False)
  l2_normalize: bool = dataclasses.field(default=True, init=False)
  dropout_rate: float = dataclasses.field(default=0.0, init=False)
  weight_decay: float = dataclasses.field(default=0.0, init=False)
  use_sync_bn: bool = dataclasses.field(default=False, init=False)
  global_batch_size: int = 1024
  train_epochs: float = 100
  warmup_epochs: float = 5
  learning_rate: float = 32.0
  cache_features: bool = False
  cache_passes: Optional[int] = None
  cache_dir: Optional[str] = None

  protocol = 'linear_eval'

  def feature_cache_dir(self, model_dir: str) -> Optional[str]:
    if not self.cache_features:
      return None
    return self.cache_dir or os.path.join(model_dir, 'feature_cache')


# ------------------------------------------------------------------------- helpers
def labelled_subset(train_files: FilePatterns, label_fraction: Optional[float],
                    label_seed: int = 0) -> dict:
  """The videos the classification pipeline trains on: all, or the per-class fraction
  the source's `label_subset_keys` picks (the pipeline picks the same with the same
  seed)."""
  source = sources.open_source(train_files)
  if label_fraction is None:
    return {'label_fraction': None, 'num_videos': source.count_videos()}
  keys = source.label_subset_keys(label_fraction, label_seed)
  return {'label_fraction': label_fraction, 'label_seed': label_seed,
          'num_videos': len(keys), 'keys': keys}


def _write_classifier_info(model_dir: str, info: dict) -> None:
  """classifier.json; a model_dir holding a different classifier is refused."""
  path = os.path.join(model_dir, CLASSIFIER_FILE)
  stored = files_lib.read_json(path)
  if stored is not None:
    keys = ('protocol', 'encoder_source', 'pretrain_dir', 'hub_handle', 'num_classes',
            'freeze_encoder', 'backbone_spec')
    diff = [k for k in keys
            if files_lib.normalized(stored.get(k)) != files_lib.normalized(info.get(k))]
    if diff:
      raise errors.UserError(f'{model_dir} already holds a different classifier (differs '
                             f'in {diff}); use a new model_dir.')
  tf.io.gfile.makedirs(model_dir)
  files_lib.write_json(path, info)


def read_classifier_info(model_dir: str) -> dict:
  path = os.path.join(model_dir, CLASSIFIER_FILE)
  info = files_lib.read_json(path)
  if info is None:
    raise errors.MissingInput(f'{path} is missing: {model_dir!r} is not the model_dir of '
                              f'a linear_eval or finetune run.')
  return info


def resolve_num_classes(num_classes, label_map_file) -> int:
  if num_classes:
    return int(num_classes)
  if label_map_file:
    return len(records.read_label_map(label_map_file))
  raise errors.UserError('set num_classes (or label_map_file, whose line count is used)')


# ------------------------------------------------------------------------- training
def train_classifier(model_dir: str, recipe: ClassifierRecipe,
                     progress_stream=progress_lib.STDERR) -> dict:
  """Builds, trains (resumable), then tests the classifier `recipe` describes.
  Returns {'train': last logged metrics, 'test': eval results or None}."""
  num_classes = resolve_num_classes(recipe.num_classes, recipe.label_map_file)
  opening = recipe_lib.open_protocol(recipe, recipe.protocol, progress_stream)
  strategy, progress_stream = opening.strategy, opening.progress_stream
  with precision.dtype_policy(opening.precision.policy):
    subset = labelled_subset(recipe.train_files, recipe.label_fraction, recipe.label_seed)
    schedule = recipe.schedule(recipe.num_train_examples or subset['num_videos'])
    model, info = _build_classifier(recipe, num_classes, schedule, strategy)
    info.update(mixed_precision=opening.precision.policy)
    if train_loop.is_chief(strategy):
      _write_classifier_info(model_dir, info)
      if recipe.label_fraction is not None:
        files_lib.write_json(os.path.join(model_dir, SUBSET_FILE), subset)
    recipe_lib.record_start(model_dir, recipe, recipe.protocol, opening)
    _say_plan(recipe, schedule, info, model, strategy, progress_stream)
    bad = bad_examples.BadExamples(train_loop.worker_dir(model_dir, strategy), 'train',
                                   recipe.bad_examples, True, progress_stream,
                                   end_input=not train_loop.is_multi_worker(strategy))
    make_dataset, example_name = _training_stream(recipe, model, info, schedule, model_dir,
                                                  strategy, bad, progress_stream)
    logs = train_loop.fit_resumable(
        model, make_dataset, model_dir, schedule.total_steps, strategy,
        recipe.cadence(recipe.global_batch_size, example_name),
        progress_stream=progress_stream, bad_examples=bad)
    results = None
    if recipe.test_files:
      results = multiview.multiview_test(
          model, strategy, model_dir, recipe.test_files, recipe.eval_batch_size,
          recipe.test_views, int(model.optimizer.iterations.numpy()),
          recipe.label_map_file, recipe.protocol, progress_stream)
  return {'train': logs, 'test': results}


def _build_classifier(recipe: ClassifierRecipe, num_classes: int,
                      schedule: recipe_lib.Schedule,
                      strategy):
  """The compiled VideoClassifier, and the description classifier.json keeps of it."""
  with strategy.scope():
    encoder, info = encoder_source_lib.build_encoder(
        recipe.encoder_source, recipe.pretrain_dir, recipe.hub_handle,
        trainable=not recipe.freeze_encoder, use_sync_bn=recipe.use_sync_bn,
        architecture=recipe.encoder)
    model = classifier_lib.VideoClassifier(
        encoder, num_classes, freeze_encoder=recipe.freeze_encoder,
        l2_normalize=recipe.l2_normalize, dropout_rate=recipe.dropout_rate,
        weight_decay=recipe.weight_decay, crop_size=recipe.train_clips.crop_size,
        augment_seed=recipe.seed or 0, augmentation=recipe.train_clips.augmentation,
        name='video_classifier')
    optimizer = optim.OptimizerSpec(name=recipe.optimizer,
                                    base_learning_rate=recipe.learning_rate,
                                    momentum=recipe.momentum, linear_scaling=False)
    model.compile(optimizer=optim.build_optimizer(
        schedule.total_steps, schedule.warmup_steps, recipe.global_batch_size, optimizer),
        jit_compile=recipe.jit_compile)
    model.build_for_training()
  info.update(protocol=recipe.protocol, num_classes=num_classes,
              freeze_encoder=recipe.freeze_encoder, l2_normalize=recipe.l2_normalize,
              dropout_rate=recipe.dropout_rate,
              train_files=files_lib.normalized(recipe.train_files))
  return model, info


def _say_plan(recipe, schedule, info, model, strategy, progress_stream) -> None:
  fraction = (f' ({recipe.label_fraction:.0%} of each class)' if recipe.label_fraction
              else '')
  progress_lib.say(
      progress_stream,
      f'{recipe.protocol}: {schedule.num_videos} videos{fraction}, '
      f'{info["num_classes"]} classes, global batch {recipe.global_batch_size} on '
      f'{strategy.num_replicas_in_sync} replica(s), {schedule.total_steps} steps '
      f'({schedule.warmup_steps} warm-up), LR {recipe.learning_rate}, encoder '
      f'{info["encoder_source"]} ({"frozen" if recipe.freeze_encoder else "trained"}), '
      f'{model.encoder.count_params():,} encoder parameters')


def _training_stream(recipe, model, info, schedule, model_dir, strategy, bad,
                     progress_stream):
  """make_dataset(start_step) for the train loop: augmented clips, or the features
  the frozen encoder gives for them, cached (linear eval with cache_features)."""
  def clip_stream(start_step, data_seed_base=recipe.seed):
    data_seed = None if data_seed_base is None else data_seed_base + start_step
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.build_classification_dataset(
            recipe.train_files, recipe.global_batch_size, recipe.train_clips,
            label_fraction=recipe.label_fraction, label_seed=recipe.label_seed,
            seed=data_seed, input_context=ctx, bad_examples=bad))

  cache_dir = recipe.feature_cache_dir(model_dir)
  if cache_dir is None:
    clip_stream(0)  # Fails fast on bad data before training starts.
    return clip_stream, 'clips'
  if train_loop.is_multi_worker(strategy):
    raise NotImplementedError('cache_features=True runs on one worker (default, '
                              'mirrored or TPU strategy); use the online path.')
  signature = {k: info.get(k) for k in (
      'encoder_source', 'pretrain_dir', 'hub_handle', 'backbone_checkpoint',
      'backbone_spec', 'train_files', 'mixed_precision')}
  # The clips' settings, augmentation included: another crop or colour is another cache.
  signature.update(pipeline=files_lib.normalized(dataclasses.asdict(recipe.train_clips)),
                   label_fraction=recipe.label_fraction, label_seed=recipe.label_seed,
                   global_batch_size=recipe.global_batch_size, seed=recipe.seed)
  batch, num_videos = recipe.global_batch_size, schedule.num_videos
  epochs = schedule.total_steps * batch / num_videos  # train_steps may rule.
  passes = recipe.cache_passes or max(1, math.ceil(epochs))
  make_dataset = feature_cache.cached_stream(
      model, strategy, cache_dir, signature, passes,
      max(1, math.ceil(num_videos / batch)), batch, recipe.seed, clip_stream,
      progress_stream)
  return make_dataset, 'features'


# ------------------------------------------------------------------------- test only
@dataclasses.dataclass(frozen=True)
class Evaluate:
  """Multi-view test of the classifier trained in model_dir (linear_eval / finetune).

  checkpoint: a checkpoint prefix; default the latest in <model_dir>/checkpoints.
  mixed_precision: 'trained' (default): the policy the training ran in (classifier.json),
    which repeats its test exactly, unless this machine has no native support for it,
    then 'auto'; or 'auto' / an explicit policy (the weights are float32 whatever the
    training ran in).
  """
  REQUIRED = ('test_files',)
  test_files: FilePatterns = None
  label_map_file: Optional[str] = None
  checkpoint: Optional[str] = None
  eval_batch_size: int = 32
  mixed_precision: Optional[str] = 'trained'
  test_views: clips.TestViews = clips.TestViews()
  strategy: distribute.StrategySpec = distribute.StrategySpec()

  def run(self, model_dir: str, progress_stream=progress_lib.STDERR) -> Optional[dict]:
    return evaluate(model_dir, self, progress_stream)


def evaluate(model_dir: str, recipe: Evaluate,
             progress_stream=progress_lib.STDERR) -> Optional[dict]:
  """Restores the latest (or the recipe's) checkpoint of model_dir and tests it."""
  info = read_classifier_info(model_dir)
  checkpoint_dir = os.path.join(model_dir, train_loop.CHECKPOINT_SUBDIR)
  prefix = recipe.checkpoint or tf.train.latest_checkpoint(checkpoint_dir)
  if not prefix:
    raise errors.MissingInput(f'no checkpoint in {checkpoint_dir}: the training run has '
                              f'not saved one yet.')

  def requested(facts) -> str:
    if recipe.mixed_precision != 'trained':
      return recipe.mixed_precision
    trained = info.get('mixed_precision') or 'float32'
    native, _ = precision.native_support(trained, facts)
    return trained if native else precision.AUTO

  opening = recipe_lib.open_protocol(recipe, 'evaluate', progress_stream, requested)
  strategy, progress_stream = opening.strategy, opening.progress_stream
  recipe_lib.record_start(model_dir, recipe, 'evaluate', opening)
  with precision.dtype_policy(opening.precision.policy):
    with strategy.scope():
      model = classifier_lib.VideoClassifier(
          encoder_source_lib.rebuild_encoder(info, trainable=False), info['num_classes'],
          freeze_encoder=info['freeze_encoder'], l2_normalize=info['l2_normalize'],
          dropout_rate=info['dropout_rate'], name='video_classifier')
      model.build_for_training()
      try:
        tf.train.Checkpoint(model=model).read(
            prefix).expect_partial().assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise errors.UserError(f'checkpoint {prefix} does not match the classifier '
                               f'described in {model_dir}/{CLASSIFIER_FILE}: {e}') from e
    step = int(tf.train.load_checkpoint(prefix).get_tensor(
        'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE'))
    progress_lib.say(progress_stream, f'evaluate: {prefix} (step {step})')
    return multiview.multiview_test(model, strategy, model_dir, recipe.test_files,
                                    recipe.eval_batch_size, recipe.test_views, step,
                                    recipe.label_map_file, info['protocol'],
                                    progress_stream, reuse=False)
