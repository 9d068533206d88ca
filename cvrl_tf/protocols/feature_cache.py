"""Feature cache for linear evaluation: frozen-encoder outputs of augmented clips, on disk.

Why: in linear evaluation the encoder is frozen (BN in inference mode), so a training
step's features depend only on the (clip, augmentation) drawn, not on the step. The
expensive part, the encoder forward pass, can then be done once and the Dense layer
trained on stored features at a tiny fraction of the cost; one cache also serves every
learning-rate or epoch setting of the same encoder and input pipeline (`cache_dir`).

What is stored: `num_passes` passes; a pass is ceil(N / B) * B consecutive draws of the
same training stream as the online path (`build_classification_dataset`, random clip,
crop and flip per draw; N videos, B the global batch), i.e. one online epoch. Pass p uses
the stream seed `seed * 1000 + p` (or an unseeded stream), so passes hold independent
augmentations. Files per pass: `pass-NNNNN.labels` (int64) and `pass-NNNNN.features`
(float32 [n, D]), raw little-endian, written atomically; `meta.json` holds the encoder
and pipeline settings, and a cache built for anything else is refused.

Training reads the passes in a random order, shuffled within a pass over a buffer of a
whole pass, repeated.

Equivalence with the online path: with num_passes == train_epochs every cached
(clip, augmentation) is used exactly once, so training sees the same distribution of
examples as the online path (the features are bitwise those the frozen encoder computes
online up to batch composition). With fewer passes each augmentation is reused
train_epochs / num_passes times (less augmentation diversity, like training on a
smaller augmented set); with num_passes=1 every epoch sees the same crops.
A killed extraction resumes at the first incomplete pass.
"""

import json
import os
import time
from typing import Any, Callable, Dict, List

import numpy as np
import tensorflow as tf

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import batch as batch_lib

META_FILE = 'meta.json'


def _pass_prefix(cache_dir: str, index: int) -> str:
  return os.path.join(cache_dir, f'pass-{index:05d}')


class FeatureCache:
  """A directory of cached passes for one (encoder, pipeline, data) signature."""

  def __init__(self, cache_dir: str, signature: Dict[str, Any]):
    self.cache_dir = cache_dir
    self.signature = files_lib.normalized(signature)
    tf.io.gfile.makedirs(cache_dir)
    meta_path = os.path.join(cache_dir, META_FILE)
    if tf.io.gfile.exists(meta_path):
      with tf.io.gfile.GFile(meta_path) as f:
        stored = json.load(f)
      if stored.get('signature') != self.signature:
        diff = sorted(k for k in set(stored.get('signature', {})) | set(self.signature)
                      if stored.get('signature', {}).get(k) != self.signature.get(k))
        raise ValueError(
            f'feature cache {cache_dir} was built with other settings (differing: '
            f'{diff}); delete it or set another cache_dir.')
      self.dim = stored.get('dim')
    else:
      self.dim = None
      self._write_meta()

  def _write_meta(self):
    files_lib.write_json(os.path.join(self.cache_dir, META_FILE),
                         {'signature': self.signature, 'dim': self.dim})

  def is_complete(self, index: int) -> bool:
    prefix = _pass_prefix(self.cache_dir, index)
    if not (tf.io.gfile.exists(prefix + '.labels') and
            tf.io.gfile.exists(prefix + '.features') and self.dim):
      return False
    n = tf.io.gfile.stat(prefix + '.labels').length // 8
    return tf.io.gfile.stat(prefix + '.features').length == n * self.dim * 4

  def extract(self,
              encode: Callable[[Dict[str, tf.Tensor]], tf.Tensor],
              make_dataset: Callable[[int], object],
              num_passes: int,
              steps_per_pass: int,
              strategy: tf.distribute.Strategy,
              progress_stream=progress_lib.STDERR) -> None:
    """Fills passes 0..num_passes-1 that are not complete yet.

    `encode(batch) -> [b, D]` runs per replica; `make_dataset(p)` is the distributed
    training stream of pass p.
    """
    progress_stream = progress_lib.resolve_stream(progress_stream)
    step = tf.function(lambda batch: strategy.run(
        lambda b: (encode(b), b[batch_lib.LABEL]), args=(batch,)), reduce_retracing=True)
    local = lambda v: np.concatenate(
        [t.numpy() for t in strategy.experimental_local_results(v)])
    for index in range(num_passes):
      if self.is_complete(index):
        continue
      t0 = time.perf_counter()
      iterator = iter(make_dataset(index))
      features, labels = [], []
      for _ in range(steps_per_pass):
        f, l = step(next(iterator))
        features.append(local(f).astype(np.float32))
        labels.append(local(l).astype(np.int64))
      features, labels = np.concatenate(features), np.concatenate(labels)
      if self.dim is None:
        self.dim = int(features.shape[1])
        self._write_meta()
      prefix = _pass_prefix(self.cache_dir, index)
      files_lib.atomic_write(prefix + '.labels', labels.astype('<i8').tobytes(), 'wb')
      files_lib.atomic_write(prefix + '.features', features.astype('<f4').tobytes(), 'wb')
      rate = len(labels) / max(time.perf_counter() - t0, 1e-9)
      progress_lib.say(progress_stream,
                       f'feature cache: pass {index + 1}/{num_passes}, {len(labels)} '
                       f'clips, {rate:.1f} clips/s -> {prefix}.*')

  def passes(self, num_passes: int) -> List[str]:
    missing = [i for i in range(num_passes) if not self.is_complete(i)]
    if missing:
      raise FileNotFoundError(f'feature cache {self.cache_dir} lacks passes {missing}')
    return [_pass_prefix(self.cache_dir, i) for i in range(num_passes)]

  def dataset(self, num_passes: int, batch_size: int, seed=None,
              input_context=None) -> tf.data.Dataset:
    """Infinite {FEATURES: float32 [b, D], LABEL: int64 [b]} batches (b per replica;
    keys of input/batch.py)."""
    dim = self.dim
    prefixes = self.passes(num_passes)
    if input_context is not None:
      batch_size = input_context.get_per_replica_batch_size(batch_size)

    def load(prefix):
      features = tf.reshape(tf.io.decode_raw(tf.io.read_file(prefix + '.features'),
                                             tf.float32, little_endian=True), [-1, dim])
      labels = tf.io.decode_raw(tf.io.read_file(prefix + '.labels'), tf.int64,
                                little_endian=True)
      return tf.data.Dataset.from_tensor_slices(
          {batch_lib.FEATURES: features, batch_lib.LABEL: labels})

    per_pass = tf.io.gfile.stat(prefixes[0] + '.labels').length // 8
    ds = tf.data.Dataset.from_tensor_slices(prefixes)
    ds = ds.shuffle(len(prefixes), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.flat_map(load)
    if input_context is not None and input_context.num_input_pipelines > 1:
      ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(max(1, per_pass), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def cached_stream(model, strategy: tf.distribute.Strategy, cache_dir: str,
                  signature: Dict[str, Any], num_passes: int, steps_per_pass: int,
                  global_batch_size: int, seed, clip_stream: Callable[..., object],
                  progress_stream=progress_lib.STDERR) -> Callable[[int], object]:
  """`make_dataset(start_step)` over cached features (train_loop.fit_resumable's
  contract); its first call fills the missing passes with `model.features` of
  `clip_stream(0, pass_seed)` batches, so a finished run extracts nothing.
  """
  cache = FeatureCache(cache_dir, signature)  # Refuses a cache of other settings now.

  def encode(batch):
    # Whatever the pipeline deferred (defer='resize'/'colour') is finished here; a fresh
    # seed per batch keeps deferred colour ops independent across batches.
    seed_ = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    clips = batch_lib.finish_batch(batch, seed_, model.crop_size, model.augmentation)
    return tf.cast(model.features(clips, training=False), tf.float32)

  pass_seed = lambda p: None if seed is None else seed * 1000 + p

  def make_dataset(start_step):
    cache.extract(encode, lambda p: clip_stream(0, pass_seed(p)), num_passes,
                  steps_per_pass, strategy, progress_stream)
    return strategy.distribute_datasets_from_function(
        lambda ctx: cache.dataset(num_passes, global_batch_size,
                                  None if seed is None else seed + start_step, ctx))
  return make_dataset
