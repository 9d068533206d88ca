"""TFRecord schema: one video per `tf.train.SequenceExample`.

The one source of truth for feature keys, used by the converter (writing) and the input
pipeline (reading). The two main keys (`image/encoded`, `clip/label/index`) are those of
TF Model Garden's video reader, so our shards are readable there too.

Context features
  clip/media_id        bytes   video identifier (file stem or YouTube id + times)
  clip/label/index     int64   class index; -1 (or absent) when unlabeled
  clip/label/string    bytes   class name; b'' when unlabeled
  video/frame_rate     float   frames per second of the *stored* frames
  video/num_frames     int64   number of stored frames (== len(image/encoded))
  image/height         int64   stored frame height in pixels
  image/width          int64   stored frame width in pixels
Feature list
  image/encoded        bytes   one JPEG per frame, in time order
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf

from cvrl_tf import files as files_lib

FRAMES_KEY = 'image/encoded'
LABEL_INDEX_KEY = 'clip/label/index'
LABEL_STRING_KEY = 'clip/label/string'
MEDIA_ID_KEY = 'clip/media_id'
FRAME_RATE_KEY = 'video/frame_rate'
NUM_FRAMES_KEY = 'video/num_frames'
HEIGHT_KEY = 'image/height'
WIDTH_KEY = 'image/width'

UNLABELED = -1


def make_sequence_example(jpeg_frames: Sequence[bytes],
                          media_id: str,
                          fps: float,
                          height: int,
                          width: int,
                          label_index: Optional[int] = None,
                          label_string: str = '') -> tf.train.SequenceExample:
  """Builds the record of one video from its JPEG-encoded frames."""
  if not jpeg_frames:
    raise ValueError(f'video {media_id!r} has no frames; refusing to write an empty record')
  seq = tf.train.SequenceExample()
  ctx = seq.context.feature
  ctx[MEDIA_ID_KEY].bytes_list.value.append(media_id.encode('utf-8'))
  ctx[LABEL_INDEX_KEY].int64_list.value.append(
      UNLABELED if label_index is None else int(label_index))
  ctx[LABEL_STRING_KEY].bytes_list.value.append(label_string.encode('utf-8'))
  ctx[FRAME_RATE_KEY].float_list.value.append(float(fps))
  ctx[NUM_FRAMES_KEY].int64_list.value.append(len(jpeg_frames))
  ctx[HEIGHT_KEY].int64_list.value.append(int(height))
  ctx[WIDTH_KEY].int64_list.value.append(int(width))
  frames = seq.feature_lists.feature_list[FRAMES_KEY].feature
  for jpeg in jpeg_frames:
    frames.add().bytes_list.value.append(jpeg)
  return seq


_CONTEXT_SPEC = {
    MEDIA_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
    LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    LABEL_STRING_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
    FRAME_RATE_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    NUM_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
_SEQUENCE_SPEC = {FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}


def parse_sequence_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses one serialized record (graph-friendly, for tf.data).

  Returns a dict:
    frames      string [L]  JPEG bytes per frame (not decoded: decode only what a clip needs)
    label       int64  []   class index or -1
    label_name  string []
    media_id    string []
    fps         float32 []  0 when the record did not store it
    num_frames  int32  []   L, counted from the frames themselves
    height, width int64 []  -1 when unknown
  """
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_features=_CONTEXT_SPEC, sequence_features=_SEQUENCE_SPEC)
  frames = sequence[FRAMES_KEY]
  return {
      'frames': frames,
      'label': context[LABEL_INDEX_KEY],
      'label_name': context[LABEL_STRING_KEY],
      'media_id': context[MEDIA_ID_KEY],
      'fps': context[FRAME_RATE_KEY],
      'num_frames': tf.shape(frames)[0],
      'height': context[HEIGHT_KEY],
      'width': context[WIDTH_KEY],
  }


def read_label_map(path: str) -> list:
  """Reads a label map written by the converter: one class name per line, index = line."""
  with tf.io.gfile.GFile(path) as f:
    names = [line.rstrip('\n') for line in f]
  return [n for n in names if n]


def write_label_map(path: str, names: Sequence[str]) -> None:
  """One class name per line (index = line), atomically: a reader never sees half."""
  files_lib.atomic_write(path, ''.join(f'{n}\n' for n in names))
