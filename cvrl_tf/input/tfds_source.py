"""TensorFlow Datasets as a video source, wherever a TFRecord pattern goes:

  tfds:NAME[/CONFIG][:VERSION]?split=SPLIT[&data_dir=DIR][&fps=25][&video=video][&label=label]
  e.g. --gin_bindings="finetune.train_files='tfds:ucf101/ucf101_1_256:2.0.0?split=train'"

Why: TF users have UCF-101 from TFDS (`ucf101`); converting it to shards first is a
detour. TFDS keeps a video as its JPEG frames, as our records do, so the frames are read
undecoded (SkipDecoding) and only those of the sampled clips are decoded, inside their
crop, the same way (input/pipeline.py). Each example becomes the dict that
records.parse_sequence_example returns; its TFDS id stands for the record's file (in
error messages and in the keys of label subsets), with index 0.

Options: `split` (required; slices too, e.g. train[:10%]); `data_dir` (default TFDS's,
$TFDS_DATA_DIR or ~/tensorflow_datasets); `fps` of the stored frames (default unknown:
strides count stored frames; UCF-101 is 25); `video` / `label`, the feature names.
Nothing is downloaded at run time: prepare the dataset with TFDS first
(`tfds build ucf101/ucf101_1_256`). tensorflow-datasets is an optional dependency
(`pip install 'cvrl_tf[tfds]'`; tf-models-official brings it too), imported only here.
"""

import dataclasses
import hashlib
import urllib.parse
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from cvrl_tf import errors

PREFIX = 'tfds:'
_OPTIONS = ('split', 'data_dir', 'fps', 'video', 'label')


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """A parsed `tfds:` source."""
  name: str
  split: str
  data_dir: Optional[str] = None
  fps: float = 0.0
  video_key: str = 'video'
  label_key: str = 'label'


def is_tfds(file_pattern) -> bool:
  """Whether a train_files / test_files value names a TFDS dataset."""
  return isinstance(file_pattern, str) and file_pattern.startswith(PREFIX)


def parse_spec(text: str) -> TfdsSpec:
  """'tfds:ucf101/ucf101_1_256:2.0.0?split=train' -> TfdsSpec; ValueError naming it."""
  body = text[len(PREFIX):]
  name, _, query = body.partition('?')
  options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
  unknown = sorted(set(options) - set(_OPTIONS))
  if not name or 'split' not in options or unknown:
    raise errors.UserError(
        f'{text!r}: a TFDS source reads tfds:NAME[/CONFIG][:VERSION]?split=SPLIT with '
        f'options {", ".join(_OPTIONS)} joined by &'
        + (f' (unknown: {", ".join(unknown)})' if unknown else ''))
  try:
    fps = float(options.get('fps', 0.0))
  except ValueError as e:
    raise errors.UserError(f'{text!r}: fps={options["fps"]!r} is not a number') from e
  return TfdsSpec(name, options['split'], options.get('data_dir') or None, fps,
                  options.get('video', 'video'), options.get('label', 'label'))


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError("tfds: sources need tensorflow-datasets: pip install "
                     "'cvrl_tf[tfds]'") from e
  return tfds


def builder(text: str):
  """The TFDS builder of a spec (its data prepared or not)."""
  spec = parse_spec(text)
  tfds = _tfds()
  try:
    return tfds.builder(spec.name, data_dir=spec.data_dir)
  except Exception as e:  # DatasetNotFoundError, bad version or config ...
    raise errors.UserError(f'{text!r}: no such TFDS dataset ({type(e).__name__}: '
                     f'{str(e).splitlines()[0]})') from e


def _as_dataset(text: str, shuffle: bool = False, seed: Optional[int] = None,
                input_context=None) -> tf.data.Dataset:
  """Examples {tfds_id, video: JPEG strings [T], label} of the split, files in order
  unless `shuffle`."""
  spec, tfds = parse_spec(text), _tfds()
  ds_builder = builder(text)
  video = ds_builder.info.features[spec.video_key] if spec.video_key in (
      ds_builder.info.features) else None
  encoding = getattr(getattr(video, 'feature', None), 'encoding_format', None)
  if video is None or encoding not in ('jpeg', None):
    raise errors.UserError(f'{text!r}: needs a video feature {spec.video_key!r} of JPEG frames '
                     f'(found {type(video).__name__ if video else "none"}, {encoding})')
  read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                input_context=input_context)
  try:
    return ds_builder.as_dataset(
        split=spec.split, shuffle_files=shuffle, read_config=read_config,
        decoders={spec.video_key: tfds.decode.SkipDecoding()})
  except Exception as e:  # Not prepared (AssertionError), unknown split (ValueError) ...
    raise errors.UserError(f'{text!r}: cannot read split {spec.split!r} ({type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else ""}); prepare the dataset '
                     f'first, e.g. `tfds build {spec.name}`') from e


def read(text: str, shuffle: bool, repeat: bool, seed: Optional[int], deterministic: bool,
         input_context=None) -> Tuple[tf.data.Dataset, Callable, int, int]:
  """What pipeline.py reads from a TFDS source: ((tfds_id, 0, example) elements, their
  parse function, this pipeline's id, number of pipelines)."""
  del deterministic  # TFDS reads files in a fixed order unless shuffled.
  spec = parse_spec(text)
  ds = _as_dataset(text, shuffle, seed, input_context)
  if repeat:
    ds = ds.repeat()
  ds = ds.map(lambda ex: (ex['tfds_id'], tf.constant(0, tf.int64), ex),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def parse(tfds_id, index, example, need_label: bool) -> Dict[str, tf.Tensor]:
    return to_parsed(tfds_id, index, example, need_label, spec)

  if input_context is None:
    return ds, parse, 0, 1
  return ds, parse, input_context.input_pipeline_id, input_context.num_input_pipelines


def to_parsed(tfds_id, index, example, need_label: bool,
              spec: TfdsSpec) -> Dict[str, tf.Tensor]:
  """A TFDS example as records.parse_sequence_example's dict (+ 'file'), checked like
  shards.parse_checked: no frames (or no label) fails naming the example."""
  frames = example[spec.video_key]
  label = (tf.cast(example[spec.label_key], tf.int64) if spec.label_key in example
           else tf.constant(-1, tf.int64))
  where = ['tfds example', tfds_id, 'index', index]
  checks = [tf.debugging.Assert(tf.size(frames) > 0, ['example without frames:'] + where)]
  if need_label:
    checks.append(tf.debugging.Assert(label >= 0, ['example without label:'] + where))
  with tf.control_dependencies(checks):
    num_frames = tf.identity(tf.shape(frames)[0])
  return {'frames': frames, 'label': label, 'label_name': tf.constant(''),
          'media_id': tfds_id, 'fps': tf.constant(spec.fps, tf.float32),
          'num_frames': num_frames, 'height': tf.constant(-1, tf.int64),
          'width': tf.constant(-1, tf.int64), 'file': tfds_id}


def count_videos(text: str) -> int:
  """Examples in the split: from the dataset's info, else counted (one pass)."""
  spec = parse_spec(text)
  try:
    count = int(builder(text).info.splits[spec.split].num_examples)
  except (KeyError, ValueError, TypeError):
    count = 0
  if count > 0:
    return count
  return int(_as_dataset(text).reduce(0, lambda n, _: n + 1))


def class_names(text: str) -> Optional[List[str]]:
  """The ClassLabel names of the label feature, or None."""
  spec = parse_spec(text)
  feature = builder(text).info.features[spec.label_key] if spec.label_key in (
      builder(text).info.features) else None
  names = getattr(feature, 'names', None)
  return list(names) if names else None


def label_subset_keys(text: str, fraction: float, seed: int = 0,
                      separator: str = '\n') -> List[str]:
  """shards.label_subset_keys for a TFDS split: `fraction` of each class (at least one),
  ranked by sha256(f'{seed}:{tfds_id}'); keys 'tfds_id<separator>0'."""
  spec = parse_spec(text)
  by_class: Dict[int, list] = {}
  ds = _as_dataset(text).map(lambda ex: (ex['tfds_id'], ex[spec.label_key]))
  for ids, labels in ds.batch(4096).as_numpy_iterator():
    for tfds_id, label in zip(ids, labels):
      if label >= 0:
        by_class.setdefault(int(label), []).append(tfds_id)
  keys = []
  for ids in by_class.values():
    ranked = sorted(ids, key=lambda i: (hashlib.sha256(b'%d:' % seed + i).hexdigest(), i))
    keep = max(1, int(fraction * len(ranked) + 0.5))
    keys.extend(f'{i.decode()}{separator}0' for i in ranked[:keep])
  return sorted(keys)

