"""A video's record as bytes, without TensorFlow: the protobuf wire format written here.

`sequence_example_bytes` returns exactly
`records.make_sequence_example(...).SerializeToString(deterministic=True)` (tested
against it in tests/test_convert_speed_paths.py), so conversion workers, which must not
import TensorFlow, build the record themselves: the writing process then only writes
(it used to spend 3-12 ms per 100-frame video serializing the proto, competing with the
workers for the cores). The feature keys are records.py's (the schema's one source of
truth, which imports TensorFlow); the test fails if the two ever differ.

Wire format (tensorflow/core/example/{example,feature}.proto): SequenceExample {context=1:
Features, feature_lists=2: FeatureLists}; Features {map<string, Feature> feature=1};
FeatureLists {map<string, FeatureList> feature_list=1}; FeatureList {repeated Feature
feature=1}; Feature {oneof: bytes_list=1, float_list=2, int64_list=3}, each list's
values field 1 (floats and int64s packed). Deterministic serialization writes map
entries sorted by key and a map entry as {key=1, value=2}.
"""

import math
import struct
from typing import Optional, Sequence

# records.py's keys (checked by the test against make_sequence_example).
_FRAMES_KEY = b'image/encoded'
_LABEL_INDEX_KEY = b'clip/label/index'
_LABEL_STRING_KEY = b'clip/label/string'
_MEDIA_ID_KEY = b'clip/media_id'
_FRAME_RATE_KEY = b'video/frame_rate'
_NUM_FRAMES_KEY = b'video/num_frames'
_HEIGHT_KEY = b'image/height'
_WIDTH_KEY = b'image/width'
_UNLABELED = -1


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 as two's complement: a negative takes 10 bytes
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
  return _field(1, _field(1, value))


def _int64_feature(value: int) -> bytes:
  return _field(3, _field(1, _varint(value)))


def _float_feature(value: float) -> bytes:
  try:
    packed = struct.pack('<f', value)
  except OverflowError:  # beyond float32: infinity, as protobuf's C conversion gives
    packed = struct.pack('<f', math.copysign(math.inf, value))
  return _field(2, _field(1, packed))


def _map(entries) -> bytes:
  return b''.join(_field(1, _field(1, key) + _field(2, value))
                  for key, value in sorted(entries))


def sequence_example_bytes(jpeg_frames: Sequence[bytes], media_id: str, fps: float,
                           height: int, width: int, label_index: Optional[int] = None,
                           label_string: str = '') -> bytes:
  """The serialized record of one video; see records.make_sequence_example."""
  if not jpeg_frames:
    raise ValueError(f'video {media_id!r} has no frames; refusing to write an empty record')
  context = _map([
      (_MEDIA_ID_KEY, _bytes_feature(media_id.encode('utf-8'))),
      (_LABEL_INDEX_KEY, _int64_feature(
          _UNLABELED if label_index is None else int(label_index))),
      (_LABEL_STRING_KEY, _bytes_feature(label_string.encode('utf-8'))),
      (_FRAME_RATE_KEY, _float_feature(float(fps))),
      (_NUM_FRAMES_KEY, _int64_feature(len(jpeg_frames))),
      (_HEIGHT_KEY, _int64_feature(int(height))),
      (_WIDTH_KEY, _int64_feature(int(width))),
  ])
  # The frames, one copy of their bytes: each JPEG behind the headers of its three
  # nesting levels (FeatureList.feature -> Feature.bytes_list -> BytesList.value), the
  # headers of the enclosing fields computed from the lengths.
  parts = []
  for jpeg in jpeg_frames:
    value = _varint(1 << 3 | 2) + _varint(len(jpeg))
    bytes_list = _varint(1 << 3 | 2) + _varint(len(value) + len(jpeg))
    feature = _varint(1 << 3 | 2) + _varint(len(bytes_list) + len(value) + len(jpeg))
    parts += (feature + bytes_list + value, jpeg)
  frames_len = sum(map(len, parts))
  key = _field(1, _FRAMES_KEY)
  value_header = _varint(2 << 3 | 2) + _varint(frames_len)
  entry_len = len(key) + len(value_header) + frames_len
  entry_header = _varint(1 << 3 | 2) + _varint(entry_len)
  lists_header = _varint(2 << 3 | 2) + _varint(len(entry_header) + entry_len)
  return b''.join([_field(1, context), lists_header, entry_header, key, value_header]
                  + parts)
