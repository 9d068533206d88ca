"""Where videos come from, behind one type: TFRecord shards or a TFDS split.

A `*_files` setting (pattern, list of patterns, or a `tfds:` spec) becomes a Source with
`open_source`, the one place that tells the two apart. Everything the input builders and
the protocols ask of their data goes through it:
  files            what it is made of (shard paths; the `tfds:` spec itself)
  count_videos()   how many videos (manifests or a count; the split's info)
  class_names(n)   names of the label indices when the source knows them, else None
  label_subset_keys(fraction, seed)   a per-class subset for semi-supervised runs
  read(...)        a Reading: (source, index, payload) elements, their parse function,
                   this input pipeline's id and the number of pipelines
TFRecord shards: input/shards.py; TFDS: input/tfds_source.py.
"""

import dataclasses
from typing import Callable, List, Optional, Protocol

import tensorflow as tf

from cvrl_tf.input import shards
from cvrl_tf.input import tfds_source

FilePatterns = shards.FilePatterns


@dataclasses.dataclass(frozen=True)
class Reading:
  """What a source gives a pipeline: elements (source string, int64 index, payload),
  `parse(source, index, payload, need_label=...)` -> the dict of
  records.parse_sequence_example (+ 'file'), and this pipeline's place among
  `num_pipelines` (video indices stay unique across pipelines)."""
  dataset: tf.data.Dataset
  parse: Callable
  pipeline_id: int
  num_pipelines: int


class Source(Protocol):
  files: List[str]

  def count_videos(self) -> int: ...

  def class_names(self, num_classes: int) -> Optional[List[str]]: ...

  def label_subset_keys(self, fraction: float, seed: int = 0) -> List[str]: ...

  def read(self, shuffle: bool, repeat: bool, seed: Optional[int], cycle_length: int,
           deterministic: bool, input_context=None) -> Reading: ...


@dataclasses.dataclass(frozen=True)
class Shards:
  """TFRecord shards written by cvrl_convert (sorted, de-duplicated paths)."""
  files: List[str]

  def count_videos(self) -> int:
    return shards.count_files_videos(self.files)

  def class_names(self, num_classes: int) -> Optional[List[str]]:
    return shards.label_names(self.files, num_classes)

  def label_subset_keys(self, fraction: float, seed: int = 0) -> List[str]:
    return shards.label_subset_keys(self.files, fraction, seed)

  def read(self, shuffle, repeat, seed, cycle_length, deterministic,
           input_context=None) -> Reading:
    files, pipeline_id, num_pipelines = shards.shard_files(self.files, input_context)
    ds = shards.read_records(files, shuffle, repeat, seed, cycle_length, deterministic)
    return Reading(ds, shards.parse_checked, pipeline_id, num_pipelines)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
  """A `tfds:NAME...?split=...` source (input/tfds_source.py)."""
  spec: str

  @property
  def files(self) -> List[str]:
    return [self.spec]  # Stands for its examples in messages, like a shard's path.

  def count_videos(self) -> int:
    return tfds_source.count_videos(self.spec)

  def class_names(self, num_classes: int) -> Optional[List[str]]:
    del num_classes
    return tfds_source.class_names(self.spec)  # The ClassLabel's names.

  def label_subset_keys(self, fraction: float, seed: int = 0) -> List[str]:
    shards.check_fraction(fraction)
    return tfds_source.label_subset_keys(self.spec, fraction, seed, shards.KEY_SEPARATOR)

  def read(self, shuffle, repeat, seed, cycle_length, deterministic,
           input_context=None) -> Reading:
    del cycle_length  # TFDS interleaves its own files.
    return Reading(*tfds_source.read(self.spec, shuffle, repeat, seed, deterministic,
                                     input_context))


def open_source(file_pattern: FilePatterns, validate: bool = True) -> Source:
  """The Source a `*_files` setting names. Raises errors.UserError / MissingInput naming
  a malformed `tfds:` spec, a pattern that matches nothing or a file that is not a
  TFRecord file (validate: every shard's first header is checked)."""
  if tfds_source.is_tfds(file_pattern):
    tfds_source.parse_spec(file_pattern)  # A bad spec fails here, naming itself.
    return TfdsSplit(file_pattern)
  return Shards(shards.list_files(file_pattern, validate))


def count_videos(file_pattern: FilePatterns) -> int:
  """Videos behind a `*_files` setting."""
  return open_source(file_pattern, validate=False).count_videos()
