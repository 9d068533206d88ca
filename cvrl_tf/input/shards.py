"""TFRecord shards: listing, validation, sharding, reading with provenance, counting,
label subsets, class names. (sources.Shards is this module behind the Source type.)

Every record travels with its file name and index in the file, so a bad record fails
with an error naming them, and label subsets can be selected by position.
"""

import hashlib
import json
import os
import struct
from typing import Dict, List, Optional, Sequence, Union

import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import records

FilePatterns = Union[str, Sequence[str]]
AUTOTUNE = tf.data.AUTOTUNE
KEY_SEPARATOR = '\n'  # Joins file name and record index into a label-subset key.


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
    raise errors.UserError(f'{path}: not a TFRecord file (truncated {len(header)}-byte header)')
  length_bytes, (crc,) = header[:8], struct.unpack('<I', header[8:])
  if _masked_crc32c(length_bytes) != crc:
    raise errors.UserError(f'{path}: not a TFRecord file (first record header fails its CRC)')
  return True


def list_files(file_pattern: FilePatterns, validate: bool = True) -> List[str]:
  """Expands patterns or explicit shard lists into a sorted list of files.

  Raises ValueError naming the pattern that matches nothing or the file that is not a
  TFRecord file. Empty files are kept (a shard may legitimately hold no video) unless
  all of them are empty.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  if not patterns:
    raise errors.UserError('no file pattern given')
  files = []
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise errors.MissingInput(f'file pattern {pattern!r} matches no file')
    files.extend(matched)
  files = sorted(set(files))
  # A list, not a generator: every file is checked, not only up to the first good one.
  if validate and not any([check_tfrecord_file(f) for f in files]):
    raise errors.UserError(f'all {len(files)} files of {patterns} are empty: {files[:3]}...')
  return files


def shard_files(files: List[str], input_context: Optional[tf.distribute.InputContext]):
  """-> (this input pipeline's files, pipeline id, number of pipelines): whole files per
  pipeline, so no record is read by two pipelines."""
  if input_context is None or input_context.num_input_pipelines == 1:
    return files, 0, 1
  n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(files) < n:
    raise errors.UserError(f'{len(files)} files cannot be sharded over {n} input pipelines; '
                     'write more shards')
  return files[i::n], i, n


FILE_PROBLEM = -1  # Index of the element that stands for a file cut short (read_records).


def read_records(files: List[str], shuffle: bool, repeat: bool, seed: Optional[int],
                 cycle_length: int, deterministic: bool) -> tf.data.Dataset:
  """-> (file string, index-in-file int64, serialized record) triples, files read in
  parallel (interleaved), optionally shuffled at file level and repeated.

  Each file is read on its own and tolerantly: a file that is truncated or corrupt
  (DataLossError mid-file) gives the records before the damage, then one triple
  (file, FILE_PROBLEM, what happened) that no parser accepts, so the damage is counted
  and named like a bad record (input/bad_examples.py) and the other files read on.
  Damage is told from a clean end by the bytes read: a TFRecord of n bytes takes 16 + n.
  """
  sizes = [tf.io.gfile.stat(f).length for f in files]
  ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()

  @tf.autograph.experimental.do_not_convert
  def per_file(f, size):
    read = tf.data.TFRecordDataset(f).ignore_errors().map(lambda r: (r, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b''), True))

    def step(state, element):
      (index, offset), (record, is_end) = state, element

      def problem():  # Only for the end element; a record passes on uncopied.
        return tf.strings.format(
            'the file ends in a truncated or corrupt record after {} records (byte {} of '
            '{}); records after it are lost', (index, offset, size))

      keep = tf.logical_or(tf.logical_not(is_end), tf.not_equal(offset, size))
      out = (keep, f, tf.where(is_end, tf.constant(FILE_PROBLEM, tf.int64), index),
             tf.cond(is_end, problem, lambda: record))
      return (index + 1, offset + 16 + tf.cast(tf.strings.length(record), tf.int64)), out

    triples = read.concatenate(end).scan((tf.constant(0, tf.int64),
                                          tf.constant(0, tf.int64)), step)
    return triples.filter(lambda keep, *_: keep).map(lambda _, f, i, r: (f, i, r))

  return ds.interleave(per_file, cycle_length=min(cycle_length, len(files)),
                       block_length=1, num_parallel_calls=AUTOTUNE,
                       deterministic=deterministic)


def _has_frames(record: tf.Tensor):
  """(bool, media_id): whether the record holds frames, read cheaply before the full
  parse, whose own error for a missing frame list would not name the file."""
  context, _ = tf.io.parse_single_sequence_example(record, context_features={
      records.NUM_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64, -1),
      records.MEDIA_ID_KEY: tf.io.FixedLenFeature([], tf.string, '')})

  def count():  # Only for records whose context does not vouch for frames.
    _, seq = tf.io.parse_single_sequence_example(record, sequence_features={
        records.FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string,
                                                          allow_missing=True)})
    return tf.size(seq[records.FRAMES_KEY]) > 0

  has = tf.cond(context[records.NUM_FRAMES_KEY] > 0, lambda: tf.constant(True), count)
  return has, context[records.MEDIA_ID_KEY]


def parse_checked(file: tf.Tensor, index: tf.Tensor, record: tf.Tensor,
                  need_label: bool) -> Dict[str, tf.Tensor]:
  """Parses one record; a record without frames (or label) fails naming its file."""
  has_frames, media_id = _has_frames(record)
  where = ['file', file, 'record', index, 'media_id', media_id]
  with tf.control_dependencies(
      [tf.debugging.Assert(has_frames, ['record without frames:'] + where)]):
    ex = records.parse_sequence_example(tf.identity(record))
  checks = [tf.debugging.Assert(ex['num_frames'] > 0, ['record without frames:'] + where),
            tf.debugging.Assert(index >= 0, ['damaged file:'] + where)]
  if need_label:
    checks.append(tf.debugging.Assert(
        ex['label'] >= 0, ['record without label (clip/label/index < 0):'] + where))
  with tf.control_dependencies(checks):
    ex['num_frames'] = tf.identity(ex['num_frames'])
  ex['file'] = file
  return ex


# ---------------------------------------------------------------- semi-supervised subset
def check_fraction(fraction: float) -> None:
  if not 0.0 < fraction <= 1.0:
    raise errors.UserError(f'label fraction must be in (0, 1], got {fraction}')


def label_subset_keys(files: Sequence[str], fraction: float, seed: int = 0) -> List[str]:
  """Chooses `fraction` of the labelled videos of each class, deterministically.

  One pass over the records reads (label, media_id) only. Within each class, videos are
  ranked by sha256(f'{seed}:{media_id}') (ties by file and position) and the first
  k_c = max(1, floor(fraction * n_c + 0.5)) are kept: the same seed gives the same subset
  whatever the sharding, and a video in the 1% subset is also in the 10% one.
  Returns keys 'file\\nindex' of the kept records.
  """
  check_fraction(fraction)
  spec = {records.LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, -1),
          records.MEDIA_ID_KEY: tf.io.FixedLenFeature([], tf.string, '')}

  def context(f, i, r):
    ctx, _ = tf.io.parse_single_sequence_example(r, context_features=spec)
    return f, i, ctx[records.LABEL_INDEX_KEY], ctx[records.MEDIA_ID_KEY]

  # Damaged files and records are skipped here; the training pipeline names them.
  ds = read_records(list(files), False, False, None, 16, True).filter(
      lambda f, i, r: i >= 0).map(context, AUTOTUNE).ignore_errors()
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
    keys.extend(f'{e[0].decode()}{KEY_SEPARATOR}{e[1]}' for e in ranked[:keep])
  return sorted(keys)


def filter_keys(ds: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
  """Keeps the (file, index, record) triples of read_records whose key is in `keys`.

  Still reads every record (a 1% subset costs a full pass per epoch); for big sets,
  write the subset to its own shards once."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(list(keys)),
                                          tf.ones([len(keys)], tf.int32)), 0)
  key = lambda f, i: tf.strings.join([f, tf.strings.as_string(i)], separator=KEY_SEPARATOR)
  # A damaged file's FILE_PROBLEM element stays, to be counted as bad.
  return ds.filter(lambda f, i, r: tf.logical_or(i < 0, table.lookup(key(f, i)) > 0))


def count_files_videos(files: Sequence[str]) -> int:
  """Number of videos in these shards: from the converter's manifests when every shard
  is listed in one (instant), else by counting records (one pass over the files)."""
  per_shard = {}
  for folder in sorted({os.path.dirname(f) for f in files}):
    for manifest in tf.io.gfile.glob(os.path.join(folder, '*_manifest.json')):
      with tf.io.gfile.GFile(manifest) as f:
        data = json.load(f)
      for shard in data.get('shards', []):
        if 'file' in shard and 'num_examples' in shard:
          per_shard[os.path.join(folder, os.path.basename(shard['file']))] = int(
              shard['num_examples'])
  if all(f in per_shard for f in files):
    return sum(per_shard[f] for f in files)
  triples = read_records(list(files), False, False, None, 16, False).filter(
      lambda f, i, r: i >= 0)
  return int(triples.reduce(0, lambda n, _: n + 1))


# ------------------------------------------------------------------------- class names
def label_names(files: Sequence[str], num_classes: int,
                max_records: int = 5000) -> Optional[List[str]]:
  """Names of the label indices: the converter's label map beside the shards, else
  `clip/label/string` of the first records (up to max_records; '' where none seen)."""
  return label_map_beside(files) or _names_from_records(files, num_classes, max_records)


def label_map_beside(files: Sequence[str]) -> Optional[List[str]]:
  """The converter's `<prefix>_label_map.txt` of the first shard's prefix, else the only
  (or the identical) label map(s) in its folder; None if there is none."""
  if not files:
    return None
  folder, base = os.path.dirname(files[0]), os.path.basename(files[0])
  own = os.path.join(folder, base.split('-')[0] + '_label_map.txt')
  if tf.io.gfile.exists(own):
    return records.read_label_map(own)
  maps = [records.read_label_map(p) for p in
          tf.io.gfile.glob(os.path.join(folder, '*_label_map.txt'))]
  return maps[0] if maps and all(m == maps[0] for m in maps) else None


def _names_from_records(files, num_classes, max_records) -> List[str]:
  spec = {records.LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, -1),
          records.LABEL_STRING_KEY: tf.io.FixedLenFeature([], tf.string, '')}
  # Bad records and damaged files are skipped (the test names them).
  ds = tf.data.TFRecordDataset(list(files)).ignore_errors().take(max_records).map(
      lambda r: tf.io.parse_single_sequence_example(r, context_features=spec)[0]
  ).ignore_errors()
  names = [''] * num_classes
  for ctx in ds.as_numpy_iterator():
    label = int(ctx[records.LABEL_INDEX_KEY])
    if 0 <= label < num_classes and not names[label]:
      text = ctx[records.LABEL_STRING_KEY]
      names[label] = text.decode('utf-8', 'replace') if isinstance(text, bytes) else str(text)
      if all(names):
        break
  return names
