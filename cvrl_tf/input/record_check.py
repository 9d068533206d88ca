"""What is wrong with one record, found in Python: the reason a skipped example is named
with (input/bad_examples.py), and the facts `cvrl_inspect` reports per record.

Why Python: the input pipelines only learn that a video failed (tf.data has no
try/except); bad records are rare, so finding out why, frame by frame, may be slow.
Records of other tools are read too: Model Garden / DMVR video records share our frame
and label keys, and name the class in `clip/label/text` instead of `clip/label/string`.
"""

import dataclasses
import re
from typing import List, Optional, Tuple

import tensorflow as tf

from cvrl_tf import records

LABEL_NAME_KEYS = (records.LABEL_STRING_KEY, 'clip/label/text')
DECODE_MODES = ('all', 'headers')
_TF_NODE = re.compile(r'\{\{[^}]*\}\}\s*')  # TF's '{{function_node ...}}' prefix.


@dataclasses.dataclass
class RecordFacts:
  """One record as cvrl_inspect sees it; `problem` is None when the pipeline can use it."""
  media_id: str = ''
  num_frames: int = 0
  label: int = records.UNLABELED
  label_name: str = ''
  fps: float = 0.0
  frame_size: Optional[Tuple[int, int]] = None  # (height, width) of the frames
  context_keys: Tuple[str, ...] = ()
  problem: Optional[str] = None


def _first(feature, kind: str):
  values = getattr(feature, kind).value
  return values[0] if values else None


def _context(facts: RecordFacts, seq: tf.train.SequenceExample) -> Optional[str]:
  """Fills the context facts; returns a problem with their types, if any."""
  ctx = seq.context.feature
  facts.context_keys = tuple(sorted(ctx.keys()))
  expected = {records.MEDIA_ID_KEY: 'bytes_list', records.LABEL_INDEX_KEY: 'int64_list',
              records.FRAME_RATE_KEY: 'float_list', records.NUM_FRAMES_KEY: 'int64_list',
              records.HEIGHT_KEY: 'int64_list', records.WIDTH_KEY: 'int64_list',
              records.LABEL_STRING_KEY: 'bytes_list'}
  for key, kind in expected.items():
    if key in ctx and ctx[key].WhichOneof('kind') not in (kind, None):
      return f'context feature {key} is a {ctx[key].WhichOneof("kind")}, expected {kind}'
  if records.MEDIA_ID_KEY in ctx:
    facts.media_id = (_first(ctx[records.MEDIA_ID_KEY], 'bytes_list') or b'').decode(
        'utf-8', 'replace')
  if records.LABEL_INDEX_KEY in ctx:
    label = _first(ctx[records.LABEL_INDEX_KEY], 'int64_list')
    facts.label = records.UNLABELED if label is None else int(label)
  for key in LABEL_NAME_KEYS:
    if key in ctx and ctx[key].WhichOneof('kind') == 'bytes_list':
      facts.label_name = (_first(ctx[key], 'bytes_list') or b'').decode('utf-8', 'replace')
      break
  if records.FRAME_RATE_KEY in ctx:
    facts.fps = float(_first(ctx[records.FRAME_RATE_KEY], 'float_list') or 0.0)
  return None


def _frames(facts: RecordFacts, jpegs: List[bytes], decode: str) -> Optional[str]:
  """Checks every frame (headers only, or a full decode); returns the first problem."""
  first = None
  for i, jpeg in enumerate(jpegs):
    where = f'frame {i} of {len(jpegs)}'
    try:
      if decode == 'all':
        shape = tuple(tf.io.decode_jpeg(jpeg, channels=3).shape[:2])
      else:
        shape = tuple(int(d) for d in tf.image.extract_jpeg_shape(jpeg)[:2])
    except (tf.errors.InvalidArgumentError, ValueError) as e:
      detail = _TF_NODE.sub('', ' '.join(str(getattr(e, 'message', e)).split()))[:120]
      return f'{where} ({len(jpeg)} bytes) is not a decodable JPEG: {detail}'
    if first is None:
      first = facts.frame_size = shape
    elif shape != first:
      return f'{where} is {shape[0]}x{shape[1]} but frame 0 is {first[0]}x{first[1]}'
  return None


def check_record(record: bytes, need_label: bool = False,
                 decode: str = 'all') -> RecordFacts:
  """The facts of one serialized record and, if the pipeline cannot use it, why.

  decode: 'all' decodes every frame (what training may need), 'headers' reads only the
  JPEG headers (fast; misses damage after the header).
  """
  if decode not in DECODE_MODES:
    raise ValueError(f'decode must be one of {DECODE_MODES}, got {decode!r}')
  facts = RecordFacts()
  try:
    seq = tf.train.SequenceExample.FromString(record)
  except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError and kin)
    facts.problem = f'not a tf.train.SequenceExample ({len(record)} bytes that do not parse)'
    return facts
  facts.problem = _context(facts, seq)
  if facts.problem:
    return facts
  lists = seq.feature_lists.feature_list
  if records.FRAMES_KEY not in lists:
    facts.problem = f'no frames: the feature list {records.FRAMES_KEY} is missing'
    return facts
  frames = lists[records.FRAMES_KEY].feature
  if any(f.WhichOneof('kind') not in ('bytes_list', None) for f in frames):
    facts.problem = f'{records.FRAMES_KEY} holds {frames[0].WhichOneof("kind")}, not JPEG bytes'
    return facts
  jpegs = [b for f in frames for b in f.bytes_list.value]
  facts.num_frames = len(jpegs)
  if not jpegs:
    facts.problem = f'zero frames in {records.FRAMES_KEY}'
    return facts
  if need_label and facts.label < 0:
    facts.problem = f'no label ({records.LABEL_INDEX_KEY} missing or < 0)'
    return facts
  facts.problem = _frames(facts, jpegs, decode)
  return facts


def diagnose(index: int, record: bytes, need_label: bool) -> Tuple[str, str]:
  """(media_id, reason) of an example the pipeline could not use; `index` < 0 stands for
  a damaged file (shards.FILE_PROBLEM) whose `record` says what happened."""
  if index < 0:
    return '', record.decode('utf-8', 'replace')
  if not record:  # A source of parsed elements (tfds:), no record to look into.
    return '', ('the pipeline failed on this element (no record to look into: a TFDS '
                'example, or a shard that changed since it was read)')
  facts = check_record(record, need_label)
  return facts.media_id, facts.problem or (
      'the pipeline failed on it, but every frame decodes: check the clip settings '
      '(e.g. crop_size larger than the frames)')


def read_record(path: str, index: int) -> bytes:
  """Record `index` of TFRecord file `path`, read again to diagnose it (b'' when it cannot
  be: the file changed or is damaged before it; diagnose then says the pipeline failed)."""
  try:
    for record in tf.data.TFRecordDataset(path).skip(index).take(1):
      return record.numpy()
  except (tf.errors.OpError, ValueError):
    pass
  return b''
