"""tf.data builders: records -> batches, for pretraining, classification and evaluation.

Batches are dicts with the keys, dtypes and shapes of input/batch.py. T = clip_len,
S = crop_size; B is per replica when an `input_context` is given, i.e.
input_context.get_per_replica_batch_size(batch_size):
  build_pretrain_dataset        N = 2B clips: view 1 of the B videos, then view 2 of the
                                same videos in the same order (after finish_batch).
  build_classification_dataset  N = B clips, plus LABEL.
  build_eval_dataset            flat views: CLIPS float32 [B, T, S, S, 3] (or uint8),
                                LABEL, VIDEO_INDEX, VIEW_INDEX, MEDIA_ID; each video
                                gives num_clips * num_crops consecutive views; average
                                predictions per VIDEO_INDEX (unique across input
                                pipelines).

Training batches depend on `defer`, the augmentation left to the train step, which
always calls `clips = batch.finish_batch(data, seed, crop_size)` (float32
[N, T, S, S, 3]; for pretraining view 1 then view 2):
  'none'    CLIPS [N, T, S, S, 3] fully augmented (float32 [0, 1] or uint8).
  'colour'  the same before colour / blur, plus COLOUR_VIEW [N] (1 or 2).
  'resize'  CROPS uint8 [N, T, Hc, Wc, 3] (decoded crops, top-left on a zero canvas:
            `canvas` = (Hc, Wc) fixed, or None = the largest crop of the batch),
            CROP_HW [N, 2], FLIP [N] and COLOUR_VIEW; per-frame ablation: CROP_HW
            [N, T, 2], FLIP and COLOUR_VIEW [N, T].
  Deferred pretraining batches hold the views apart, {VIEW1: {...}, VIEW2: {...}}
  with N = B each: finish_batch concatenates them, on the accelerator.
Per video only the frames of the sampled clips are decoded, inside the crop window that
all frames of a clip share. On CPU the bilinear resize costs half a JPEG decode, hence
'resize' (see benchmarks/bench_input.py).
A video that cannot be used (undecodable JPEG, no frames, no label where one is needed,
malformed record, damaged file) is skipped, counted and named (input/bad_examples.py).
"""

import dataclasses
import random
from typing import Dict, Optional, Sequence

import tensorflow as tf

from cvrl_tf.input import augment
from cvrl_tf.input import bad_examples as bad_examples_lib
from cvrl_tf.input import batch
from cvrl_tf.input import clips as clips_lib
from cvrl_tf.input import sampling
from cvrl_tf.input import shards
from cvrl_tf.input import sources

FilePatterns = sources.FilePatterns
AUTOTUNE = tf.data.AUTOTUNE


# ------------------------------------------------------------------------- decoding
DEFER_MODES = clips_lib.DEFER_MODES
PretrainClips, TrainClips, TestViews = (clips_lib.PretrainClips, clips_lib.TrainClips,
                                        clips_lib.TestViews)


def _clamp_windows(windows: tf.Tensor, canvas: Optional[Sequence[int]]) -> tf.Tensor:
  """Shrinks (y, x, h, w) windows [K, 4] about their centre to fit the canvas."""
  if canvas is None:  # The batch pads to its largest crop: any window fits.
    return windows
  y, x, h, w = tf.unstack(windows, axis=1)
  new_h, new_w = tf.minimum(h, canvas[0]), tf.minimum(w, canvas[1])
  return tf.stack([y + (h - new_h) // 2, x + (w - new_w) // 2, new_h, new_w], axis=1)


def _decode_view(jpegs: tf.Tensor, seed: tf.Tensor, spec: clips_lib._Decoded,
                 per_frame: bool, dtype: tf.DType) -> Dict[str, tf.Tensor]:
  """string [T] JPEGs -> random resized crop + flip of one clip, as a dict (see module
  docstring): one window and flip per clip, or per frame for the ablation.

  Each frame is decoded inside its crop window. Unless the resize is deferred, the crop
  is flipped while still small uint8, resized and converted while still in cache.
  """
  size = [spec.crop_size, spec.crop_size]
  defer, canvas = spec.defer, spec.canvas
  num_frames = tf.shape(jpegs)[0]
  hw = tf.image.extract_jpeg_shape(jpegs[0])  # Header only; trusts no context field.
  s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  num = num_frames if per_frame else 1
  windows = augment.sample_crop_windows(s_crop, hw[0], hw[1], num)
  flips = augment.sample_flips(s_flip, num, spec.augmentation.flip_prob)
  decode = lambda j, w: tf.image.decode_and_crop_jpeg(j, w, channels=3)
  if defer == 'resize':
    windows = _clamp_windows(windows, canvas)
    if per_frame:  # Crop sizes differ per frame: pad each onto the canvas here.
      room = hw[:2] if canvas is None else canvas  # No canvas: the frame size.
      pad = lambda c: tf.pad(c, [[0, room[0] - tf.shape(c)[0]],
                                 [0, room[1] - tf.shape(c)[1]], [0, 0]])
      padded = tf.TensorSpec([None, None, 3] if canvas is None else list(canvas) + [3],
                             tf.uint8)
      crops = tf.map_fn(lambda a: pad(decode(a[0], a[1])), (jpegs, windows),
                        fn_output_signature=padded)
      return {batch.CROPS: crops, batch.CROP_HW: windows[:, 2:], batch.FLIP: flips}
    crops = tf.map_fn(lambda j: decode(j, windows[0]), jpegs,
                      fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return {batch.CROPS: crops, batch.CROP_HW: windows[0, 2:], batch.FLIP: flips[0]}
  if not per_frame:
    windows, flips = tf.tile(windows, [num_frames, 1]), tf.tile(flips, [num_frames])
  frame = lambda a: augment.resize_and_flip(decode(a[0], a[1])[None], size, a[2], dtype)[0]
  return {batch.CLIPS: tf.map_fn(frame, (jpegs, windows, flips),
                                 fn_output_signature=tf.TensorSpec(size + [3], dtype))}


def _augmented_clip(jpegs, seeds, spec: clips_lib._Decoded, per_frame: bool, view: int):
  """One clip's dict: geometry from seeds[0]; colour with seeds[1] unless deferred
  (then COLOUR_VIEW tells the train step); view 0 = no colour at all."""
  clip_len = jpegs.shape[0]  # Static: the sampled indices have a static length.
  defer, crop_size, dtype = spec.defer, spec.crop_size, tf.as_dtype(spec.output_dtype)
  colour_dtype = tf.float32 if defer == 'none' and view else dtype
  out = _decode_view(jpegs, seeds[0], spec, per_frame, colour_dtype)
  if view and defer == 'none':
    out[batch.CLIPS] = _convert(augment.augment_batch_colour_blur(
        out[batch.CLIPS][None], view, seeds[1], per_frame,
        settings=spec.augmentation)[0], dtype)
  elif view:
    out[batch.COLOUR_VIEW] = tf.fill(tf.shape(jpegs)[:1] if per_frame else [], view)
  if batch.CLIPS in out:
    out[batch.CLIPS] = tf.ensure_shape(out[batch.CLIPS],
                                       [clip_len, crop_size, crop_size, 3])
  return out


def _batch(ds: tf.data.Dataset, batch_size: int,
           canvas: Optional[Sequence[int]]) -> tf.data.Dataset:
  """Batches dicts (or pairs of dicts); deferred crops are padded onto the canvas (None:
  onto the largest crop of the batch)."""
  def padded(spec):
    if isinstance(spec, dict):
      return {k: padded(v) for k, v in spec.items()}
    if isinstance(spec, tuple):
      return tuple(padded(v) for v in spec)
    return spec.shape
  shapes = padded(ds.element_spec)
  for view in (shapes if isinstance(shapes, tuple) else (shapes,)):
    if batch.CROPS in view:
      hc, wc = (None, None) if canvas is None else canvas
      view[batch.CROPS] = tf.TensorShape([view[batch.CROPS][0], hc, wc, 3])
  return ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=True)


def _convert(clip: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """float [0, 1] -> dtype (uint8: [0, 255], rounded)."""
  if dtype == tf.uint8:
    return tf.cast(tf.clip_by_value(clip, 0.0, 1.0) * 255.0 + 0.5, tf.uint8)
  return tf.cast(clip, dtype)


def _graph_fn(fn):
  """Skips AutoGraph for map functions (written with explicit tf.cond / map_fn): it
  only slowed tracing, by seconds per builder."""
  return tf.autograph.experimental.do_not_convert(fn)


def _element_seeds(ds: tf.data.Dataset, seed: Optional[int], pipeline_id: int):
  """Pairs each element with its own stateless seed [2]: (base, element counter)."""
  base = random.SystemRandom().randrange(2**31) if seed is None else seed
  base = (base * 1000003 + pipeline_id) % (2**31)
  return ds.enumerate().map(lambda i, e: (tf.stack([tf.constant(base, tf.int64), i]), e))


def _finish(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.prefetch(AUTOTUNE).with_options(options)


def _batch_size(batch_size: int, input_context) -> int:
  if input_context is not None:
    return input_context.get_per_replica_batch_size(batch_size)
  return batch_size


# ------------------------------------------------------------------------- builders
def _tracker(tracker: Optional[bad_examples_lib.BadExamples], stage: str,
             need_label: bool, limited: bool = True) -> bad_examples_lib.BadExamples:
  """The caller's tracker (told whether this pipeline needs labels), or a logging one."""
  if tracker is None:
    tracker = bad_examples_lib.BadExamples(
        stage=stage, limit=bad_examples_lib.Limit() if limited else None)
  tracker.need_label = need_label
  return tracker


def _with(spec, overrides: dict):
  """`spec` with the fields in `overrides` replaced (a keyword that is not a field of
  it is a TypeError naming it)."""
  return dataclasses.replace(spec, **overrides) if overrides else spec


def build_pretrain_dataset(file_pattern: FilePatterns,
                           batch_size: int,
                           clips: PretrainClips = PretrainClips(),
                           seed: Optional[int] = None,
                           input_context: Optional[tf.distribute.InputContext] = None,
                           bad_examples: Optional[bad_examples_lib.BadExamples] = None,
                           **overrides) -> tf.data.Dataset:
  """Two views per video at a random temporal interval; infinite, shuffled.

  batch_size: global batch in videos (the model sees 2 * per-replica batch clips).
  clips: the views' settings (clips.PretrainClips); keyword `overrides` replace fields
    of it, e.g. build_pretrain_dataset(files, 8, clip_len=8, crop_size=32).
  seed: makes the stream deterministic with clips.deterministic (None: random).
  bad_examples: counts and names the videos that cannot be used (skipped) and ends the
    stream past its limit (input/bad_examples.py); default: one logging to stderr with
    the default limit.
  """
  spec = _with(clips, overrides)
  reading = sources.open_source(file_pattern, spec.validate_files).read(
      True, True, seed, spec.cycle_length, spec.deterministic, input_context)
  ds = reading.dataset.shuffle(spec.shuffle_buffer, seed=seed)
  ds = _element_seeds(ds, seed, reading.pipeline_id)

  def video_to_views(seed, element):
    ex = reading.parse(*element, need_label=False)
    s = tf.random.experimental.stateless_split(seed, num=5)
    stride_frames = sampling.frame_stride(spec.stride, ex['fps'], spec.target_fps)
    indices = sampling.sample_pretrain_indices(s[0], ex['num_frames'], spec.clip_len,
                                               stride_frames, spec.interval_family,
                                               spec.interval_rate)
    return tuple(
        _augmented_clip(tf.gather(ex['frames'], indices[v]), s[1 + 2 * v: 3 + 2 * v],
                        spec, spec.per_frame_augment, v + 1)
        for v in range(2))

  ds = bad_examples_lib.guarded_map(ds, _graph_fn(video_to_views),
                                    _tracker(bad_examples, 'pretrain', False))
  ds = _batch(ds, _batch_size(batch_size, input_context), spec.canvas)
  if spec.defer == 'none':
    ds = ds.map(lambda v1, v2: {
        batch.CLIPS: tf.concat([v1[batch.CLIPS], v2[batch.CLIPS]], axis=0)})
  else:  # finish_batch concatenates, on the accelerator: one copy less on the host.
    ds = ds.map(lambda v1, v2: {batch.VIEW1: v1, batch.VIEW2: v2})
  return _finish(ds, spec.deterministic)


def build_classification_dataset(file_pattern: FilePatterns,
                                 batch_size: int,
                                 clips: TrainClips = TrainClips(),
                                 label_fraction: Optional[float] = None,
                                 label_seed: int = 0,
                                 seed: Optional[int] = None,
                                 input_context: Optional[tf.distribute.InputContext] = None,
                                 bad_examples: Optional[bad_examples_lib.BadExamples] = None,
                                 **overrides) -> tf.data.Dataset:
  """One random clip + label per video; infinite, shuffled (linear eval / fine-tuning).

  clips: the clips' settings (clips.TrainClips; keyword `overrides` replace fields):
    random resized crop + flip, and with colour_augment the view-1 colour and blur ops.
  label_fraction (e.g. 0.01, 0.1): keep that fraction of each class (semi-supervised
  protocols), chosen by the source's `label_subset_keys(fraction, label_seed)`.
  Every record must carry a label (one without is skipped as bad).
  """
  spec = _with(clips, overrides)
  source = sources.open_source(file_pattern, spec.validate_files)
  reading = source.read(True, True, seed, spec.cycle_length, spec.deterministic,
                        input_context)
  ds = reading.dataset
  if label_fraction is not None:
    ds = shards.filter_keys(ds, source.label_subset_keys(label_fraction, label_seed))
  ds = ds.shuffle(spec.shuffle_buffer, seed=seed)
  ds = _element_seeds(ds, seed, reading.pipeline_id)

  def video_to_clip(seed, element):
    ex = reading.parse(*element, need_label=True)
    s = tf.random.experimental.stateless_split(seed, num=3)
    stride_frames = sampling.frame_stride(spec.stride, ex['fps'], spec.target_fps)
    indices = sampling.sample_train_indices(s[0], ex['num_frames'], spec.clip_len,
                                            stride_frames)
    out = _augmented_clip(tf.gather(ex['frames'], indices), s[1:], spec, False,
                          1 if spec.colour_augment else 0)
    out[batch.LABEL] = ex['label']
    return out

  ds = bad_examples_lib.guarded_map(ds, _graph_fn(video_to_clip),
                                    _tracker(bad_examples, 'train', True))
  ds = _batch(ds, _batch_size(batch_size, input_context), spec.canvas)
  return _finish(ds, spec.deterministic)


def build_eval_dataset(file_pattern: FilePatterns,
                       batch_size: int,
                       views: TestViews = TestViews(),
                       input_context: Optional[tf.distribute.InputContext] = None,
                       bad_examples: Optional[bad_examples_lib.BadExamples] = None,
                       **overrides) -> tf.data.Dataset:
  """Every video once, as views.num_clips evenly spaced clips x views.num_crops crops
  (flat views; clips.TestViews; keyword `overrides` replace its fields).

  Deterministic, one pass, last batch may be smaller. Frames stay uint8 until batched;
  output_dtype 'uint8' keeps them so. Videos that cannot be read, or carry no label
  when `need_label`, are skipped and listed by `bad_examples` (default: logged; no
  limit).
  """
  spec = _with(views, overrides)
  clip_len, num_clips, num_crops = spec.clip_len, spec.num_clips, spec.num_crops
  crop_size, need_label = spec.crop_size, spec.need_label
  reading = sources.open_source(file_pattern, spec.validate_files).read(
      False, False, None, spec.cycle_length, True, input_context)
  ds = reading.dataset.enumerate()

  def video_to_clips(local_index, element):
    ex = reading.parse(*element, need_label=need_label)
    stride_frames = sampling.frame_stride(spec.stride, ex['fps'], spec.target_fps)
    indices = sampling.eval_indices(ex['num_frames'], clip_len, stride_frames, num_clips)
    jpegs = tf.gather(ex['frames'], tf.reshape(indices, [-1]))
    frames = tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    frames = augment.resize_short_side(frames, spec.min_resize, keep_dtype=True)
    shape = tf.shape(frames)
    video_index = local_index * reading.num_pipelines + reading.pipeline_id
    fill = lambda x: tf.fill([num_clips], x)
    return {'frames': tf.reshape(frames, [num_clips, clip_len, shape[1], shape[2], 3]),
            'clip_index': tf.range(num_clips, dtype=tf.int32),
            batch.LABEL: fill(ex['label']), batch.VIDEO_INDEX: fill(video_index),
            batch.MEDIA_ID: fill(ex['media_id'])}

  def clip_to_crops(clip):
    crops = augment.eval_crops(clip['frames'], crop_size, num_crops)
    out = {k: tf.fill([num_crops], clip[k])
           for k in (batch.LABEL, batch.VIDEO_INDEX, batch.MEDIA_ID)}
    out[batch.VIEW_INDEX] = clip['clip_index'] * num_crops + tf.range(num_crops)
    out[batch.CLIPS] = tf.ensure_shape(crops,
                                       [num_crops, clip_len, crop_size, crop_size, 3])
    return out

  tracker = _tracker(bad_examples, 'test', need_label, limited=False)
  ds = bad_examples_lib.guarded_map(ds, _graph_fn(video_to_clips), tracker).unbatch()
  ds = ds.map(_graph_fn(clip_to_crops), AUTOTUNE, deterministic=True).unbatch()
  ds = ds.batch(_batch_size(batch_size, input_context), drop_remainder=False)
  if tf.as_dtype(spec.output_dtype) != tf.uint8:
    ds = ds.map(lambda e: {**e, batch.CLIPS: augment.to_float(e[batch.CLIPS])}, AUTOTUNE,
                deterministic=True)
  return _finish(ds, True)
