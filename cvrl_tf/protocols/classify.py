"""Downstream protocols: linear evaluation, fine-tuning / semi-supervised, test, k-NN.

Each is a gin-configurable `fn(model_dir, ...)`, run by `cvrl_train` through
`run.experiment = @linear_eval` (or @finetune, @evaluate, @knn_eval); see gin/*.gin.

Encoder (`encoder_source`):
  'model_dir'  the `backbone/` of a pretraining run (`pretrain_dir`); its architecture
               comes from backbone.json, and `build_backbone` bindings that contradict it
               are an error rather than silently ignored.
  'hub'        an exported SavedModel or TF Hub handle (`hub_handle`) via hub.KerasLayer.
  'random'     random initialization from the `build_backbone` bindings (the baseline).

Protocols (paper settings in gin/):
  linear_eval  frozen encoder (BN in inference mode), L2-normalized features, one Dense
               layer, softmax cross-entropy, no weight decay, SGD momentum + warm-up +
               cosine. Optional feature cache (feature_cache.py); online by default.
  finetune     everything trains; dropout before the Dense layer; weight decay on kernels
               added in the train step (models/classifier.py). `label_fraction` (0.01,
               0.1) makes it the semi-supervised protocol: a deterministic per-class
               subset (the kept videos are listed in label_subset.json).
  evaluate     the multi-view test of a trained classifier model_dir (latest checkpoint).
  knn_eval     cosine k-NN on frozen features, multi-view features for both the memory
               (train) and the test videos; no training.

model_dir after a run: checkpoints/ summaries/ operative_config.gin run_info.json classifier.json
(how to rebuild the model) [label_subset.json] [feature_cache/] and, with test_files,
eval_results.json, confusion_matrix.png, eval_predictions.csv (knn_eval:
knn_results.json). Re-running the same command resumes training; a finished run skips to
the test, and a test already done for the same checkpoint and settings is not redone.
"""

import math
import os
from typing import Optional, Sequence, Union

import gin
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.data import bad_examples
from cvrl_tf.data import pipeline
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import records
from cvrl_tf.data import shards
from cvrl_tf.models import classifier as classifier_lib
from cvrl_tf.models import encoder_source as encoder_source_lib
from cvrl_tf.protocols import feature_cache
from cvrl_tf.protocols import multiview
from cvrl_tf.runtime import config
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import optim
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

FilePatterns = Union[str, Sequence[str]]
CLASSIFIER_FILE = 'classifier.json'
SUBSET_FILE = 'label_subset.json'


# ------------------------------------------------------------------------- helpers
def labelled_subset(train_files: FilePatterns, label_fraction: Optional[float],
                    label_seed: int = 0) -> dict:
  """The videos the classification pipeline trains on: all, or the per-class fraction
  `shards.label_subset_keys` picks (the pipeline picks the same with the same seed)."""
  if label_fraction is None:
    return {'label_fraction': None, 'num_videos': shards.count_videos(train_files)}
  keys = shards.label_subset_keys(shards.list_files(train_files), label_fraction,
                                  label_seed)
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
      raise errors.UserError(f'{model_dir} already holds a different classifier (differs in '
                       f'{diff}); use a new model_dir.')
  tf.io.gfile.makedirs(model_dir)
  files_lib.write_json(path, info)


def read_classifier_info(model_dir: str) -> dict:
  path = os.path.join(model_dir, CLASSIFIER_FILE)
  info = files_lib.read_json(path)
  if info is None:
    raise errors.MissingInput(f'{path} is missing: {model_dir!r} is not the model_dir of a '
                            f'linear_eval or finetune run.')
  return info


def resolve_num_classes(num_classes, label_map_file) -> int:
  if num_classes:
    return int(num_classes)
  if label_map_file:
    return len(records.read_label_map(label_map_file))
  raise errors.UserError('set num_classes (or label_map_file, whose line count is used)')


# ------------------------------------------------------------------------- training
def _train_classifier(model_dir, protocol, *, train_files, test_files, num_classes,
                      label_map_file, encoder_source, pretrain_dir, hub_handle,
                      freeze, l2_normalize, dropout_rate, weight_decay, use_sync_bn,
                      global_batch_size, train_epochs, train_steps, warmup_epochs,
                      num_train_examples, learning_rate, momentum, optimizer,
                      label_fraction, label_seed, mixed_precision, jit_compile,
                      checkpoint_every, keep_checkpoints, log_every, seed,
                      eval_batch_size, progress_stream, cache_dir=None,
                      cache_passes=None):
  """Shared by linear_eval and finetune: build, train (resumable), then test."""
  progress_stream = progress_lib.resolve_stream(progress_stream)
  strategy = distribute.get_strategy()
  num_classes = resolve_num_classes(num_classes, label_map_file)
  chief = train_loop.is_chief(strategy)
  facts = precision.detect_devices(strategy)
  choice = precision.resolve(mixed_precision, strategy, progress_stream, facts)
  with precision.dtype_policy(choice.policy):
    subset = labelled_subset(train_files, label_fraction, label_seed)
    num_videos = num_train_examples or subset['num_videos']
    steps_per_epoch = max(1, num_videos // global_batch_size)
    total_steps = train_steps or max(1, math.ceil(train_epochs * num_videos /
                                                  global_batch_size))
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    crop_size = config.effective_args(pipeline.build_classification_dataset)['crop_size']
    with strategy.scope():
      encoder, info = encoder_source_lib.build_encoder(
          encoder_source, pretrain_dir, hub_handle, trainable=not freeze,
          use_sync_bn=use_sync_bn)
      model = classifier_lib.VideoClassifier(
          encoder, num_classes, freeze_encoder=freeze, l2_normalize=l2_normalize,
          dropout_rate=dropout_rate, weight_decay=weight_decay, crop_size=crop_size,
          augment_seed=seed or 0, name='video_classifier')
      model.compile(optimizer=optim.build_optimizer(
          total_steps=total_steps, warmup_steps=warmup_steps,
          global_batch_size=global_batch_size, name=optimizer,
          base_learning_rate=learning_rate, momentum=momentum, linear_scaling=False),
                    jit_compile=jit_compile)
      model.build_for_training()
    info.update(protocol=protocol, num_classes=num_classes, freeze_encoder=freeze,
                l2_normalize=l2_normalize, dropout_rate=dropout_rate,
                mixed_precision=choice.policy,
                train_files=files_lib.normalized(train_files))
    if chief:
      _write_classifier_info(model_dir, info)
      if label_fraction is not None:
        files_lib.write_json(os.path.join(model_dir, SUBSET_FILE), subset)
      config.save_operative_config(model_dir)
      precision.record(model_dir, choice, protocol, facts)
    fraction = f' ({label_fraction:.0%} of each class)' if label_fraction else ''
    progress_lib.say(
        progress_stream,
        f'{protocol}: {num_videos} videos{fraction}, {num_classes} classes, global batch '
        f'{global_batch_size} on {strategy.num_replicas_in_sync} replica(s), '
        f'{total_steps} steps ({warmup_steps} warm-up), LR {learning_rate}, encoder '
        f'{info["encoder_source"]} ({"frozen" if freeze else "trained"}), '
        f'{encoder.count_params():,} encoder parameters')

    bad = bad_examples.BadExamples(train_loop.worker_dir(model_dir, strategy), 'train',
                                   bad_examples.limit(), True, progress_stream)

    def clip_stream(start_step, data_seed_base=seed):
      data_seed = None if data_seed_base is None else data_seed_base + start_step
      return strategy.distribute_datasets_from_function(
          lambda ctx: pipeline.build_classification_dataset(
              train_files, global_batch_size, label_fraction=label_fraction,
              label_seed=label_seed, seed=data_seed, input_context=ctx,
              bad_examples=bad))

    make_dataset, example_name = clip_stream, 'clips'
    if cache_dir is not None:
      if multiview.is_multi_worker(strategy):
        raise NotImplementedError('cache_features=True runs on one worker (default, '
                                  'mirrored or TPU strategy); use the online path.')
      signature = {k: info.get(k) for k in (
          'encoder_source', 'pretrain_dir', 'hub_handle', 'backbone_checkpoint',
          'backbone_spec', 'train_files', 'mixed_precision')}
      signature.update(pipeline=config.effective_args(pipeline.build_classification_dataset),
                       label_fraction=label_fraction, label_seed=label_seed,
                       global_batch_size=global_batch_size, seed=seed)
      epochs = total_steps * global_batch_size / num_videos  # train_steps may rule.
      passes = cache_passes or max(1, math.ceil(epochs))
      make_dataset = feature_cache.cached_stream(
          model, strategy, cache_dir, signature, passes,
          max(1, math.ceil(num_videos / global_batch_size)), global_batch_size, seed,
          clip_stream, progress_stream)
      example_name = 'features'
    else:
      make_dataset(0)  # Fails fast on bad data before training starts.
    logs = train_loop.fit_resumable(
        model, make_dataset, model_dir, total_steps, strategy,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        log_every=log_every, examples_per_step=global_batch_size,
        example_name=example_name, progress_stream=progress_stream, bad_examples=bad)
    results = None
    if test_files:
      results = multiview.multiview_test(
          model, strategy, model_dir, test_files, eval_batch_size,
          int(model.optimizer.iterations.numpy()), label_map_file, protocol,
          progress_stream)
  return {'train': logs, 'test': results}


@gin.configurable(denylist=['model_dir'])
def linear_eval(model_dir: str,
                train_files: FilePatterns = gin.REQUIRED,
                test_files: Optional[FilePatterns] = None,
                num_classes: Optional[int] = None,
                label_map_file: Optional[str] = None,
                encoder_source: str = 'model_dir',
                pretrain_dir: Optional[str] = None,
                hub_handle: Optional[str] = None,
                global_batch_size: int = 1024,
                train_epochs: float = 100,
                train_steps: Optional[int] = None,
                warmup_epochs: float = 5,
                num_train_examples: Optional[int] = None,
                learning_rate: float = 32.0,
                momentum: float = 0.9,
                optimizer: str = 'sgd',
                label_fraction: Optional[float] = None,
                label_seed: int = 0,
                cache_features: bool = False,
                cache_passes: Optional[int] = None,
                cache_dir: Optional[str] = None,
                eval_batch_size: int = 32,
                mixed_precision: Optional[str] = 'auto',
                jit_compile: bool = False,
                checkpoint_every: int = 1000,
                keep_checkpoints: int = 3,
                log_every: int = 100,
                seed: Optional[int] = None,
                progress_stream=progress_lib.STDERR) -> dict:
  """Linear classifier on the frozen encoder (CVRL: LR 32, 100 epochs, batch 1024).

  Args:
    train_files / test_files: TFRecord patterns; with test_files the multi-view test
      runs at the end.
    num_classes: classes of the Dense layer (default: lines of label_map_file).
    label_map_file: class names for the results (default: found next to the shards).
    encoder_source, pretrain_dir, hub_handle: see the module docstring.
    global_batch_size / train_epochs / train_steps / warmup_epochs: schedule; train_steps
      wins; warm-up then cosine decay to 0 (released config: 5 warm-up epochs).
    num_train_examples: videos per epoch (counted from the shards when None).
    learning_rate, momentum, optimizer: peak LR (no batch scaling), 'sgd' or 'lars'.
    label_fraction, label_seed: train on a per-class fraction of the labels.
    cache_features: train the Dense layer on cached encoder outputs (feature_cache.py):
      `cache_passes` augmented passes (default: one per epoch, exactly the online
      distribution; fewer reuse augmentations) in `cache_dir` (default
      <model_dir>/feature_cache; share it between runs of the same encoder and data).
    eval_batch_size: views per global batch in the test.
    mixed_precision: 'auto' (chosen for the hardware, see precision.py), 'float32',
      'mixed_bfloat16' or 'mixed_float16' (dynamic loss scaling).
    seed: makes the input stream deterministic (seed + step on resume).
  Returns {'train': last logged metrics, 'test': eval results or None}.
  """
  if cache_features:
    cache_dir = cache_dir or os.path.join(model_dir, 'feature_cache')
  return _train_classifier(
      model_dir, 'linear_eval', train_files=train_files, test_files=test_files,
      num_classes=num_classes, label_map_file=label_map_file,
      encoder_source=encoder_source, pretrain_dir=pretrain_dir, hub_handle=hub_handle,
      freeze=True, l2_normalize=True, dropout_rate=0.0, weight_decay=0.0,
      use_sync_bn=False, global_batch_size=global_batch_size, train_epochs=train_epochs,
      train_steps=train_steps, warmup_epochs=warmup_epochs,
      num_train_examples=num_train_examples, learning_rate=learning_rate,
      momentum=momentum, optimizer=optimizer, label_fraction=label_fraction,
      label_seed=label_seed, mixed_precision=mixed_precision, jit_compile=jit_compile,
      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      log_every=log_every, seed=seed, eval_batch_size=eval_batch_size,
      progress_stream=progress_stream,
      cache_dir=cache_dir if cache_features else None, cache_passes=cache_passes)


@gin.configurable(denylist=['model_dir'])
def finetune(model_dir: str,
             train_files: FilePatterns = gin.REQUIRED,
             test_files: Optional[FilePatterns] = None,
             num_classes: Optional[int] = None,
             label_map_file: Optional[str] = None,
             encoder_source: str = 'model_dir',
             pretrain_dir: Optional[str] = None,
             hub_handle: Optional[str] = None,
             global_batch_size: int = 128,
             train_epochs: float = 50,
             train_steps: Optional[int] = None,
             warmup_epochs: float = 2,
             num_train_examples: Optional[int] = None,
             learning_rate: float = 0.1,
             momentum: float = 0.9,
             optimizer: str = 'sgd',
             weight_decay: float = 1e-4,
             dropout_rate: float = 0.5,
             l2_normalize: bool = False,
             use_sync_bn: bool = False,
             label_fraction: Optional[float] = None,
             label_seed: int = 0,
             eval_batch_size: int = 32,
             mixed_precision: Optional[str] = 'auto',
             jit_compile: bool = False,
             checkpoint_every: int = 1000,
             keep_checkpoints: int = 3,
             log_every: int = 100,
             seed: Optional[int] = None,
             progress_stream=progress_lib.STDERR) -> dict:
  """Fine-tunes encoder + Dense layer; with label_fraction, the semi-supervised protocol.

  Args as linear_eval, plus:
    weight_decay: wd of wd * sum(0.5 ||k||^2) over all conv/dense kernels (encoder and
      head; not BN or biases), added to the loss in the train step.
    dropout_rate: dropout on the features before the Dense layer.
    l2_normalize: normalize features before dropout/Dense (off for fine-tuning).
    use_sync_bn: batch statistics across replicas (small per-replica batches).
  """
  return _train_classifier(
      model_dir, 'finetune', train_files=train_files, test_files=test_files,
      num_classes=num_classes, label_map_file=label_map_file,
      encoder_source=encoder_source, pretrain_dir=pretrain_dir, hub_handle=hub_handle,
      freeze=False, l2_normalize=l2_normalize, dropout_rate=dropout_rate,
      weight_decay=weight_decay, use_sync_bn=use_sync_bn,
      global_batch_size=global_batch_size, train_epochs=train_epochs,
      train_steps=train_steps, warmup_epochs=warmup_epochs,
      num_train_examples=num_train_examples, learning_rate=learning_rate,
      momentum=momentum, optimizer=optimizer, label_fraction=label_fraction,
      label_seed=label_seed, mixed_precision=mixed_precision, jit_compile=jit_compile,
      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      log_every=log_every, seed=seed, eval_batch_size=eval_batch_size,
      progress_stream=progress_stream)


# ------------------------------------------------------------------------- test only
@gin.configurable(denylist=['model_dir'])
def evaluate(model_dir: str,
             test_files: FilePatterns = gin.REQUIRED,
             label_map_file: Optional[str] = None,
             checkpoint: Optional[str] = None,
             eval_batch_size: int = 32,
             mixed_precision: Optional[str] = 'trained',
             progress_stream=progress_lib.STDERR) -> Optional[dict]:
  """Multi-view test of the classifier trained in model_dir (linear_eval / finetune).

  checkpoint: a checkpoint prefix; default the latest in <model_dir>/checkpoints.
  mixed_precision: 'trained' (default): the policy the training ran in (classifier.json),
    which repeats its test exactly, unless this machine has no native support for it,
    then 'auto'; or 'auto' / an explicit policy (the weights are float32 whatever the
    training ran in).
  """
  progress_stream = progress_lib.resolve_stream(progress_stream)
  info = read_classifier_info(model_dir)
  strategy = distribute.get_strategy()
  checkpoint_dir = os.path.join(model_dir, train_loop.CHECKPOINT_SUBDIR)
  prefix = checkpoint or tf.train.latest_checkpoint(checkpoint_dir)
  if not prefix:
    raise errors.MissingInput(f'no checkpoint in {checkpoint_dir}: the training run has '
                            f'not saved one yet.')
  facts = precision.detect_devices(strategy)
  if mixed_precision == 'trained':
    trained = info.get('mixed_precision') or 'float32'
    native, _ = precision.native_support(trained, facts)
    mixed_precision = trained if native else precision.AUTO
  choice = precision.resolve(mixed_precision, strategy, progress_stream, facts)
  if train_loop.is_chief(strategy):
    precision.record(model_dir, choice, 'evaluate', facts)
  with precision.dtype_policy(choice.policy):
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
        raise errors.UserError(f'checkpoint {prefix} does not match the classifier described '
                         f'in {model_dir}/{CLASSIFIER_FILE}: {e}') from e
    step = int(tf.train.load_checkpoint(prefix).get_tensor(
        'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE'))
    progress_lib.say(progress_stream, f'evaluate: {prefix} (step {step})')
    return multiview.multiview_test(model, strategy, model_dir, test_files,
                                    eval_batch_size, step, label_map_file,
                                    info['protocol'], progress_stream, reuse=False)
