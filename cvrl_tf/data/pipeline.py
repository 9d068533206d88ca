"""tf.data builders: records -> clips, for pretraining, classification and evaluation.

Elements (T = clip_len, S = crop_size; batch sizes are per replica when an
`input_context` is given, i.e. input_context.get_per_replica_batch_size(batch_size)):
  build_pretrain_dataset        {'clips': float32 [2B, T, S, S, 3]}: view 1 of the B videos,
                                then view 2 of the same videos in the same order.
  build_classification_dataset  {'clips': float32 [B, T, S, S, 3], 'label': int64 [B]}
  build_eval_dataset            flat views: {'clips': float32 [B, T, S, S, 3],
                                'label': int64 [B], 'video_index': int64 [B],
                                'view_index': int32 [B], 'media_id': string [B]}; each video
                                gives num_clips * num_crops consecutive views; average
                                predictions per video_index (unique across input pipelines).

Per video only the frames of the sampled clips are decoded, and with the crop window
(shared by all frames of a clip) applied inside the JPEG decoder. With
`colour_in_pipeline=False` the colour / blur stage is left to the train step:
`augment.augment_pretrain_batch(batch['clips'], seed)` on [2B, T, S, S, 3].
"""

import hashlib
import random
import struct
from typing import Dict, List, Optional, Sequence, Union

import gin
import tensorflow as tf

from cvrl_tf.data import augment
from cvrl_tf.data import records
from cvrl_tf.data import sampling

FilePatterns = Union[str, Sequence[str]]
AUTOTUNE = tf.data.AUTOTUNE
_SEP = '\n'  # Joins file name and record index into a label-subset key.


# ---------------------------------------------------------------------------- files
def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  crc ^= 0xFFFFFFFF
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def check_tfrecord_file(path: str) -> bool:
  """Checks the first record header (length + its CRC); returns False for an empty file.

  Done once per file at build time (12 bytes read), because TFRecordDataset reports a
  bad file as a DataLossError that does not name it, in the middle of training.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    header = f.read(12)
  if not header:
    return False
  if len(header) < 12:
    raise ValueError(f'{path}: not a TFRecord file (truncated {len(header)}-byte header)')
  length_bytes, (crc,) = header[:8], struct.unpack('<I', header[8:])
  if _masked_crc32c(length_bytes) != crc:
    raise ValueError(f'{path}: not a TFRecord file (first record header fails its CRC)')
  return True


def list_files(file_pattern: FilePatterns, validate: bool = True) -> List[str]:
  """Expands patterns or explicit shard lists into a sorted list of files.

  Raises ValueError naming the pattern that matches nothing or the file that is not a
  TFRecord file. Empty files are kept (a shard may legitimately hold no video) unless
  all of them are empty.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  if not patterns:
    raise ValueError('no file pattern given')
  files = []
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise ValueError(f'file pattern {pattern!r} matches no file')
    files.extend(matched)
  files = sorted(set(files))
  if validate and not any([check_tfrecord_file(f) for f in files]):
    raise ValueError(f'all {len(files)} files of {patterns} are empty: {files[:3]}...')
  return files


def _shard_files(files: List[str], input_context: Optional[tf.distribute.InputContext]):
  if input_context is None or input_context.num_input_pipelines == 1:
    return files, 0, 1
  n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(files) < n:
    raise ValueError(f'{len(files)} files cannot be sharded over {n} input pipelines; '
                     'write more shards')
  return files[i::n], i, n


def _read(files: List[str], shuffle: bool, repeat: bool, seed: Optional[int],
          cycle_length: int, deterministic: bool) -> tf.data.Dataset:
  """-> (file string, index-in-file int64, serialized record) triples."""
  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()

  def per_file(f):
    return tf.data.TFRecordDataset(f).enumerate().map(lambda i, r: (f, i, r))

  return ds.interleave(per_file, cycle_length=min(cycle_length, len(files)),
                       block_length=1, num_parallel_calls=AUTOTUNE,
                       deterministic=deterministic)


def _parse(file: tf.Tensor, index: tf.Tensor, record: tf.Tensor,
           need_label: bool) -> Dict[str, tf.Tensor]:
  """Parses one record; a record without frames (or label) fails naming its file."""
  ex = records.parse_sequence_example(record)
  where = ['file', file, 'record', index, 'media_id', ex['media_id']]
  checks = [tf.debugging.Assert(ex['num_frames'] > 0, ['record without frames:'] + where)]
  if need_label:
    checks.append(tf.debugging.Assert(
        ex['label'] >= 0, ['record without label (clip/label/index < 0):'] + where))
  with tf.control_dependencies(checks):
    ex['num_frames'] = tf.identity(ex['num_frames'])
  ex['file'] = file
  return ex


# ---------------------------------------------------------------- semi-supervised subset
def label_subset_keys(files: Sequence[str], fraction: float, seed: int = 0) -> List[str]:
  """Chooses `fraction` of the labelled videos of each class, deterministically.

  One pass over the records reads (label, media_id) only. Within each class, videos are
  ranked by sha256(f'{seed}:{media_id}') (ties by file and position) and the first
  k_c = max(1, floor(fraction * n_c + 0.5)) are kept: the same seed gives the same subset
  whatever the sharding, and a video in the 1% subset is also in the 10% one.
  Returns keys 'file\\nindex' of the kept records.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'label fraction must be in (0, 1], got {fraction}')
  spec = {records.LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, -1),
          records.MEDIA_ID_KEY: tf.io.FixedLenFeature([], tf.string, '')}

  def context(f, i, r):
    ctx, _ = tf.io.parse_single_sequence_example(r, context_features=spec)
    return f, i, ctx[records.LABEL_INDEX_KEY], ctx[records.MEDIA_ID_KEY]

  ds = _read(list(files), False, False, None, 16, True).map(context, AUTOTUNE)
  by_class: Dict[int, list] = {}
  for f, i, label, media_id in ds.batch(4096).as_numpy_iterator():
    for entry in zip(f, i, label, media_id):
      if entry[2] >= 0:
        by_class.setdefault(int(entry[2]), []).append(entry)
  keys = []
  for entries in by_class.values():
    ranked = sorted(entries, key=lambda e: (
        hashlib.sha256(b'%d:' % seed + e[3]).hexdigest(), e[0], e[1]))
    keep = max(1, int(fraction * len(ranked) + 0.5))
    keys.extend(f'{e[0].decode()}{_SEP}{e[1]}' for e in ranked[:keep])
  return sorted(keys)


def _filter_keys(ds: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(list(keys)),
                                          tf.ones([len(keys)], tf.int32)), 0)
  key = lambda f, i: tf.strings.join([f, tf.strings.as_string(i)], separator=_SEP)
  return ds.filter(lambda f, i, r: table.lookup(key(f, i)) > 0)


# ------------------------------------------------------------------------- decoding
def _decode_clip(jpegs: tf.Tensor, seed: tf.Tensor, crop_size: int,
                 per_frame: bool) -> tf.Tensor:
  """string [T] JPEGs -> float32 [T, S, S, 3]: random resized crop + flip, decoding only
  the crop window. One window and flip per clip, or per frame for the ablation."""
  size = [crop_size, crop_size]
  hw = tf.image.extract_jpeg_shape(jpegs[0])  # Header only; trusts no context field.
  s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  num = tf.shape(jpegs)[0] if per_frame else 1
  windows = augment.sample_crop_windows(s_crop, hw[0], hw[1], num)
  flips = augment.sample_flips(s_flip, num)
  decode = lambda j, w: tf.image.decode_and_crop_jpeg(j, w, channels=3)
  if per_frame:
    return tf.map_fn(
        lambda a: augment.resize_and_flip(decode(a[0], a[1])[None], size, a[2])[0],
        (jpegs, windows, flips), fn_output_signature=tf.TensorSpec(size + [3], tf.float32))
  frames = tf.map_fn(lambda j: decode(j, windows[0]), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return augment.resize_and_flip(frames, size, flips[0])


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
@gin.configurable(denylist=['file_pattern', 'input_context'])
def build_pretrain_dataset(file_pattern: FilePatterns,
                           batch_size: int,
                           clip_len: int = 16,
                           stride: int = 2,
                           target_fps: Optional[float] = None,
                           crop_size: int = 224,
                           interval_family: str = 'decreasing',
                           interval_rate: float = 1.0,
                           per_frame_augment: bool = False,
                           colour_in_pipeline: bool = True,
                           shuffle_buffer: int = 128,
                           cycle_length: int = 16,
                           seed: Optional[int] = None,
                           deterministic: bool = False,
                           input_context: Optional[tf.distribute.InputContext] = None,
                           validate_files: bool = True) -> tf.data.Dataset:
  """Two views per video at a random temporal interval; infinite, shuffled.

  batch_size: global batch in videos (the model sees 2 * per-replica batch clips).
  stride: in frames at `target_fps` (None: in stored frames, whatever the record fps).
  interval_family / interval_rate: see sampling.INTERVAL_FAMILIES.
  per_frame_augment: the temporally inconsistent ablation.
  colour_in_pipeline: False leaves jitter / grayscale / blur / solarize to the train step
    (augment.augment_pretrain_batch), which is much cheaper on an accelerator.
  shuffle_buffer: in videos; each holds its serialized record (a few MB) in memory.
  """
  files, pipeline_id, _ = _shard_files(list_files(file_pattern, validate_files),
                                       input_context)
  ds = _read(files, True, True, seed, cycle_length, deterministic)
  ds = ds.shuffle(shuffle_buffer, seed=seed)
  ds = _element_seeds(ds, seed, pipeline_id)

  def video_to_views(seed, element):
    ex = _parse(*element, need_label=False)
    s = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))
    stride_frames = sampling.frame_stride(stride, ex['fps'], target_fps)
    indices = sampling.sample_pretrain_indices(s[0], ex['num_frames'], clip_len,
                                               stride_frames, interval_family,
                                               interval_rate)
    views = []
    for v in range(2):
      clip = _decode_clip(tf.gather(ex['frames'], indices[v]), s[1 + v], crop_size,
                          per_frame_augment)
      if colour_in_pipeline:
        clip = augment.augment_batch_colour_blur(clip[None], v + 1, s[3 + v],
                                                 per_frame_augment)[0]
      views.append(tf.ensure_shape(clip, [clip_len, crop_size, crop_size, 3]))
    return tuple(views)

  ds = ds.map(video_to_views, AUTOTUNE, deterministic=deterministic)
  ds = ds.batch(_batch_size(batch_size, input_context), drop_remainder=True)
  ds = ds.map(lambda v1, v2: {'clips': tf.concat([v1, v2], axis=0)})
  return _finish(ds, deterministic)


@gin.configurable(denylist=['file_pattern', 'input_context'])
def build_classification_dataset(file_pattern: FilePatterns,
                                 batch_size: int,
                                 clip_len: int = 32,
                                 stride: int = 2,
                                 target_fps: Optional[float] = None,
                                 crop_size: int = 224,
                                 colour_augment: bool = False,
                                 label_fraction: Optional[float] = None,
                                 label_seed: int = 0,
                                 shuffle_buffer: int = 128,
                                 cycle_length: int = 16,
                                 seed: Optional[int] = None,
                                 deterministic: bool = False,
                                 input_context: Optional[tf.distribute.InputContext] = None,
                                 validate_files: bool = True) -> tf.data.Dataset:
  """One random clip + label per video; infinite, shuffled (linear eval / fine-tuning).

  Augmentation: random resized crop + flip; `colour_augment` adds the view-1 colour and
  blur ops. label_fraction (e.g. 0.01, 0.1): keep that fraction of each class
  (semi-supervised protocols), chosen by `label_subset_keys(files, fraction, label_seed)`.
  Every record must carry a label.
  """
  all_files = list_files(file_pattern, validate_files)
  files, pipeline_id, _ = _shard_files(all_files, input_context)
  ds = _read(files, True, True, seed, cycle_length, deterministic)
  if label_fraction is not None:
    ds = _filter_keys(ds, label_subset_keys(all_files, label_fraction, label_seed))
  ds = ds.shuffle(shuffle_buffer, seed=seed)
  ds = _element_seeds(ds, seed, pipeline_id)

  def video_to_clip(seed, element):
    ex = _parse(*element, need_label=True)
    s = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    stride_frames = sampling.frame_stride(stride, ex['fps'], target_fps)
    indices = sampling.sample_train_indices(s[0], ex['num_frames'], clip_len, stride_frames)
    clip = _decode_clip(tf.gather(ex['frames'], indices), s[1], crop_size, False)
    if colour_augment:
      clip = augment.augment_batch_colour_blur(clip[None], 1, s[2])[0]
    clip = tf.ensure_shape(clip, [clip_len, crop_size, crop_size, 3])
    return {'clips': clip, 'label': ex['label']}

  ds = ds.map(video_to_clip, AUTOTUNE, deterministic=deterministic)
  ds = ds.batch(_batch_size(batch_size, input_context), drop_remainder=True)
  return _finish(ds, deterministic)


@gin.configurable(denylist=['file_pattern', 'input_context'])
def build_eval_dataset(file_pattern: FilePatterns,
                       batch_size: int,
                       clip_len: int = 32,
                       stride: int = 2,
                       target_fps: Optional[float] = None,
                       num_clips: int = 10,
                       num_crops: int = 3,
                       min_resize: int = 256,
                       crop_size: int = 256,
                       cycle_length: int = 4,
                       input_context: Optional[tf.distribute.InputContext] = None,
                       validate_files: bool = True) -> tf.data.Dataset:
  """Every video once, as num_clips evenly spaced clips x num_crops crops (flat views).

  Deterministic, one pass, last batch may be smaller. Frames are resized so the short
  side is `min_resize` (skipped when already so), then cropped crop_size x crop_size.
  """
  if crop_size > min_resize:
    raise ValueError(f'crop_size {crop_size} exceeds the resized short side {min_resize}')
  files, pipeline_id, num_pipelines = _shard_files(list_files(file_pattern, validate_files),
                                                   input_context)
  ds = _read(files, False, False, None, cycle_length, True).enumerate()

  def video_to_clips(local_index, element):
    ex = _parse(*element, need_label=False)
    stride_frames = sampling.frame_stride(stride, ex['fps'], target_fps)
    indices = sampling.eval_indices(ex['num_frames'], clip_len, stride_frames, num_clips)
    jpegs = tf.gather(ex['frames'], tf.reshape(indices, [-1]))
    frames = tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    frames = augment.resize_short_side(frames, min_resize, keep_dtype=True)
    shape = tf.shape(frames)
    video_index = local_index * num_pipelines + pipeline_id
    fill = lambda x: tf.fill([num_clips], x)
    return {'frames': tf.reshape(frames, [num_clips, clip_len, shape[1], shape[2], 3]),
            'clip_index': tf.range(num_clips, dtype=tf.int32), 'label': fill(ex['label']),
            'video_index': fill(video_index), 'media_id': fill(ex['media_id'])}

  def clip_to_crops(clip):
    crops = augment.eval_crops(clip['frames'], crop_size, num_crops)
    out = {k: tf.fill([num_crops], clip[k]) for k in ('label', 'video_index', 'media_id')}
    out['view_index'] = clip['clip_index'] * num_crops + tf.range(num_crops)
    out['clips'] = tf.ensure_shape(crops, [num_crops, clip_len, crop_size, crop_size, 3])
    return out

  ds = ds.map(video_to_clips, AUTOTUNE, deterministic=True).unbatch()
  ds = ds.map(clip_to_crops, AUTOTUNE, deterministic=True).unbatch()
  ds = ds.batch(_batch_size(batch_size, input_context), drop_remainder=False)
  ds = ds.map(lambda e: dict(e, clips=tf.cast(e['clips'], tf.float32) * (1.0 / 255.0)),
              AUTOTUNE, deterministic=True)
  return _finish(ds, True)
