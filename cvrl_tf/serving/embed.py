"""Embeds video files with any TF Hub video encoder: one vector per video.

  cvrl_embed --input=VIDEOS --output=PREFIX --hub_model=EXPORT_DIR
writes PREFIX.npy (float32 [N, D], one row per video embedded) and PREFIX_index.csv
(row, path, label, num_frames_decoded, status, error; row -1 for a failed video).

Each video goes the way of the evaluation pipeline (data/pipeline.build_eval_dataset
with one centre crop): decoded like the converter (video_io: optional fps resampling,
short side resized, frames kept as JPEG so memory stays small for long videos), then
`num_clips` clips evenly spaced in time (sampling.eval_indices), short side resized and
centre-cropped (augment), scaled to [0, 1]. The embedding is the mean of the clip
embeddings. Defaults for frames and stride come from the export's metadata.

The model is loaded with hub.KerasLayer, so any encoder taking float32 [B, T, H, W, 3]
in [0, 1] works (give --num_frames and --frame_stride when it has no CVRL metadata).
Exit code: 0 all videos embedded, 1 some failed (listed on stderr and in the index),
2 usage error.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import io
import os
from typing import Callable, Iterable, List, Optional, Sequence, TextIO, Tuple

import numpy as np
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf.data import augment
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import sampling
from cvrl_tf.data import sources
from cvrl_tf.data import video_io

INDEX_SUFFIX = '_index.csv'
# Written by export.py (not imported here: it would add cvrl_export's flags to ours).
METADATA_PATH = ('assets', 'cvrl_metadata.json')
INDEX_COLUMNS = ('row', 'path', 'label', 'num_frames_decoded', 'status', 'error')


@dataclasses.dataclass
class Video:
  path: str
  label: str = ''
  error: str = ''  # Set when the listing itself already failed (a malformed CSV row).


class UsageError(errors.UserError):
  """Bad flags or inputs as a whole; nothing is written."""


# --------------------------------------------------------------------------- inputs
def list_videos(input_path: str) -> List[Video]:
  """A video file, a folder (recursive; label = first sub-folder) or a path[,label] CSV."""
  if os.path.isdir(input_path):
    videos = []
    for dirpath, dirnames, filenames in os.walk(input_path):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      rel = os.path.relpath(dirpath, input_path)
      label = '' if rel == '.' else rel.split(os.sep)[0]
      videos += [Video(os.path.join(dirpath, f), label) for f in sorted(filenames)
                 if not f.startswith('.') and
                 os.path.splitext(f)[1].lower() in sources.VIDEO_EXTENSIONS]
    if not videos:
      raise UsageError(f'no video files ({", ".join(sources.VIDEO_EXTENSIONS)}) '
                       f'under {input_path}')
    return videos
  if not os.path.exists(input_path):
    raise UsageError(f'--input {input_path!r} does not exist')
  if input_path.lower().endswith('.csv'):
    listing = sources.list_csv(input_path)
    videos = [Video(item.path, item.label or '') for item in listing.items]
    videos += [Video(f'{e.source}:{e.line}', error=e.reason) for e in listing.errors]
    return videos
  return [Video(input_path)]


# --------------------------------------------------------------------------- model
def load_encoder(hub_model: str):
  """(hub.KerasLayer, metadata or None) for a local export or TF Hub handle."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  try:
    path = hub.resolve(hub_model)
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f'cannot resolve --hub_model {hub_model!r}: {e}') from e
  if not tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    raise UsageError(f'--hub_model {hub_model!r} is not a SavedModel (no saved_model.pb)')
  return hub.KerasLayer(path), read_metadata(path)


def read_metadata(path: str) -> Optional[dict]:
  return files_lib.read_json(os.path.join(path, *METADATA_PATH))


def embed_batch(layer, clips: np.ndarray) -> np.ndarray:
  """[B, T, H, W, 3] -> float32 [B, D]; dict outputs use 'embedding' or 'default'."""
  out = layer(tf.convert_to_tensor(clips, tf.float32))
  if isinstance(out, dict):
    out = out.get('embedding', out.get('default', next(iter(out.values()))))
  return np.asarray(out, np.float32)


# --------------------------------------------------------------------------- clips
def make_clip_fn(num_frames: int, frame_stride: int, num_clips: int, short_side: int,
                 crop_size: int) -> Callable[[List[bytes]], tf.Tensor]:
  """JPEG frames of one video -> float32 [num_clips, num_frames, crop, crop, 3] in [0, 1].

  The operations of the evaluation pipeline, in its order: evenly spaced clip indices,
  JPEG decode, short side resized (uint8 kept), centre crop, scale by 1/255.
  """
  if crop_size > short_side:
    raise UsageError(f'--crop_size {crop_size} exceeds --short_side {short_side}')

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def clips_of(jpegs):
    indices = sampling.eval_indices(tf.shape(jpegs)[0], num_frames, frame_stride, num_clips)
    # Clips of short videos overlap: decode each needed frame once.
    unique, position = tf.unique(tf.reshape(indices, [-1]))
    frames = tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3),
                       tf.gather(jpegs, unique),
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    frames = tf.gather(augment.resize_short_side(frames, short_side, keep_dtype=True),
                       position)
    crops = augment.eval_crops(frames, crop_size, 1)[0]
    clips = tf.reshape(crops, [num_clips, num_frames, crop_size, crop_size, 3])
    return tf.cast(clips, tf.float32) * (1.0 / 255.0)

  return lambda jpegs: clips_of(tf.constant(jpegs, tf.string))


def decode_video(path: str, fps: float, short_side: int) -> dict:
  """The converter's decoding (video_io); a failure is returned, not raised."""
  return video_io.encode_video_jpeg(path, fps=fps, short_side=short_side)


# --------------------------------------------------------------------------- embedding
def _prefetched(fn, items: Sequence, depth: int = 2) -> Iterable:
  """Yields fn(item) in order, computing up to `depth` ahead in a thread (PyAV and TF
  both release the GIL, so decoding the next video overlaps the model)."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) > depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def embed_videos(videos: Sequence[Video], layer, num_frames: int, frame_stride: int,
                 num_clips: int = 10, short_side: int = 256, crop_size: int = 256,
                 fps: float = 0.0, batch_size: int = 10,
                 progress_stream: Optional[TextIO] = None
                 ) -> Tuple[np.ndarray, List[dict]]:
  """Embeds every video; returns (float32 [N_ok, D], one index row per input video).

  Failures and progress go to `progress_stream` (the CLI passes stderr).
  """
  clip_fn = make_clip_fn(num_frames, frame_stride, num_clips, short_side, crop_size)
  progress = progress_lib.Progress(len(videos), stream=progress_stream)
  embeddings, rows = [], []

  def decode(video):
    if video.error:
      return {'ok': False, 'reason': video.error}
    return decode_video(video.path, fps, short_side)

  for video, decoded in zip(videos, _prefetched(decode, videos)):
    row = {'row': -1, 'path': video.path, 'label': video.label,
           'num_frames_decoded': len(decoded.get('jpegs', ())), 'status': 'ok', 'error': ''}
    try:
      if not decoded['ok']:
        raise video_io.VideoError(decoded['reason'])
      clips = clip_fn(decoded['jpegs']).numpy()
      per_clip = np.concatenate([embed_batch(layer, clips[j:j + batch_size])
                                 for j in range(0, len(clips), batch_size)])
      row['row'] = len(embeddings)
      embeddings.append(per_clip.mean(axis=0))
    except (video_io.VideoError, tf.errors.OpError, ValueError) as e:
      reason = e.message if isinstance(e, tf.errors.OpError) else str(e)
      row.update(status='failed', error=' '.join(reason.split())[:500])
      progress.message(f'cvrl_embed: failed: {video.path}: {row["error"]}')
    rows.append(row)
    progress.advance(row['status'] == 'ok')
  if embeddings:
    return np.stack(embeddings).astype(np.float32), rows
  return np.zeros([0, 0], np.float32), rows


def write_outputs(prefix: str, embeddings: np.ndarray, rows: Sequence[dict]) -> None:
  """PREFIX.npy and PREFIX_index.csv, each written atomically (both built first)."""
  folder = os.path.dirname(os.path.abspath(prefix))
  os.makedirs(folder, exist_ok=True)
  npy = io.BytesIO()
  np.save(npy, embeddings)
  index = io.StringIO(newline='')
  writer = csv.DictWriter(index, INDEX_COLUMNS)
  writer.writeheader()
  writer.writerows(rows)
  files_lib.atomic_write(prefix + '.npy', npy.getvalue(), 'wb')
  files_lib.atomic_write(prefix + INDEX_SUFFIX, index.getvalue())


def resolve_settings(metadata: Optional[dict], num_frames: Optional[int],
                     frame_stride: Optional[int]) -> Tuple[int, int]:
  """Flags win; else the frames and stride the model was trained with."""
  training = (metadata or {}).get('training') or {}
  num_frames = num_frames or training.get('num_frames')
  frame_stride = frame_stride or training.get('frame_stride')
  if not num_frames or not frame_stride:
    raise UsageError('the model has no CVRL metadata with its training frames/stride: '
                     'pass --num_frames and --frame_stride')
  return int(num_frames), int(frame_stride)
