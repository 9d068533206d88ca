"""Embeds video files with any TF Hub video encoder: one vector per video, or one per
window with its start and end time (windows.py).

  cvrl_embed --input=VIDEOS --output=PREFIX --hub_model=EXPORT_DIR [--window=2s]
writes PREFIX.npy (float32 [N, D], one row per video or window embedded) and
PREFIX_index.csv (row, path, label, num_frames_decoded, status, error; row -1 for a failed
video; with windows also video_row, start_s, end_s), appended and resumed by
embed_store.py: re-running the same command skips the videos already done.

Each video goes the way of the evaluation pipeline (input/pipeline.build_eval_dataset
with one centre crop): decoded like the converter (video_io: optional fps resampling,
short side resized, frames kept as JPEG so memory stays small for long videos), then
`num_clips` clips evenly spaced in time (sampling.eval_indices), short side resized and
centre-cropped (augment), scaled to [0, 1]. The embedding is the mean of the clip
embeddings (per window: of the clips covering the window). Defaults for frames and
stride come from the export's metadata.

The model is loaded with hub.KerasLayer, so any encoder taking float32 [B, T, H, W, 3]
in [0, 1] works (give --num_frames and --frame_stride when it has no CVRL metadata).
Exit code: 0 all videos embedded, 1 some failed (listed on stderr and in the index),
2 usage error.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time
from typing import Callable, Iterable, List, Optional, Sequence, TextIO, Tuple

import numpy as np
import tensorflow as tf

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.convert import sources
from cvrl_tf.convert import video_io
from cvrl_tf.input import augment
from cvrl_tf.serving import embed_store
from cvrl_tf.serving import windows as windows_lib

INDEX_SUFFIX = embed_store.INDEX_SUFFIX
# Written by export.py (not imported here: it would add cvrl_export's flags to ours).
METADATA_PATH = ('assets', 'cvrl_metadata.json')


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
@dataclasses.dataclass(frozen=True)
class ClipSettings:
  """How videos become clips: the model's frames and stride, the evaluation protocol's
  sizes, and either `num_clips` per video or per-window features (windows.py)."""
  num_frames: int
  frame_stride: int
  num_clips: int = 10
  short_side: int = 256
  crop_size: int = 256
  fps: float = 0.0
  batch_size: int = 10
  window: Optional[windows_lib.Span] = None
  window_stride: Optional[windows_lib.Span] = None

  def check(self) -> None:
    if self.crop_size > self.short_side:
      raise UsageError(f'--crop_size {self.crop_size} exceeds --short_side '
                       f'{self.short_side}')
    if self.window_stride is not None and self.window is None:
      raise UsageError('--window_stride goes with --window')

  def record(self) -> dict:
    """What the output's settings file keeps (strings for the window specs)."""
    record = dataclasses.asdict(self)
    record.pop('batch_size')  # Changes nothing in the features.
    for key in ('window', 'window_stride'):
      record[key] = None if getattr(self, key) is None else str(getattr(self, key))
    if self.window is not None:
      record['num_clips'] = None  # As many as cover each window.
    return record


@functools.lru_cache(maxsize=8)
def make_frames_fn(short_side: int, crop_size: int):
  """(JPEG frames [N], frame indices int32 [K, T]) -> float32 [K, T, crop, crop, 3] in
  [0, 1]: the evaluation pipeline's operations in its order (JPEG decode, short side
  resized with uint8 kept, centre crop, 1/255). One per sizes: traced once a process."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                tf.TensorSpec([None, None], tf.int32)])
  def clips_at(jpegs, indices):
    # Overlapping clips (short videos, windows) share frames: decode each once.
    unique, position = tf.unique(tf.reshape(indices, [-1]))
    frames = tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3),
                       tf.gather(jpegs, unique),
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    frames = tf.gather(augment.resize_short_side(frames, short_side, keep_dtype=True),
                       position)
    crops = augment.eval_crops(frames, crop_size, 1)[0]
    shape = tf.shape(indices)
    clips = tf.reshape(crops, [shape[0], shape[1], crop_size, crop_size, 3])
    return tf.cast(clips, tf.float32) * (1.0 / 255.0)

  return clips_at


def make_clip_fn(num_frames: int, frame_stride: int, num_clips: int, short_side: int,
                 crop_size: int) -> Callable[[List[bytes]], tf.Tensor]:
  """JPEG frames of one video -> float32 [num_clips, num_frames, crop, crop, 3] in [0, 1]:
  clips evenly spaced over the whole video (sampling.eval_indices)."""
  ClipSettings(num_frames, frame_stride, num_clips, short_side, crop_size).check()
  clips_at = make_frames_fn(short_side, crop_size)

  def clip_fn(jpegs):
    whole = windows_lib.Window(0, len(jpegs), 1.0)
    indices = windows_lib.clip_indices(whole, num_clips, num_frames, frame_stride)
    return clips_at(tf.constant(jpegs, tf.string), indices)

  return clip_fn


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


def embed_decoded(decoded: dict, layer, settings: ClipSettings, clips_at=None
                  ) -> Tuple[List[windows_lib.Window], np.ndarray]:
  """(windows, float32 [len(windows), D]) of one decoded video; without a window spec
  one 'window' over the whole video, embedded as the mean of `num_clips` clips."""
  clips_at = clips_at or make_frames_fn(settings.short_side, settings.crop_size)
  fps = float(decoded.get('fps') or settings.fps or 1.0)
  spans = windows_lib.video_windows(len(decoded['jpegs']), fps, settings.window,
                                    settings.window_stride)
  counts = [settings.num_clips if settings.window is None else
            windows_lib.clips_to_cover(w.length, settings.num_frames, settings.frame_stride)
            for w in spans]
  indices = np.concatenate([
      windows_lib.clip_indices(w, k, settings.num_frames, settings.frame_stride)
      for w, k in zip(spans, counts)])
  jpegs = tf.constant(decoded['jpegs'], tf.string)
  per_clip = np.concatenate([
      embed_batch(layer, clips_at(jpegs, indices[j:j + settings.batch_size]))
      for j in range(0, len(indices), settings.batch_size)])
  ends = np.cumsum(counts)
  return spans, np.stack([per_clip[e - k:e].mean(axis=0) for e, k in zip(ends, counts)])


def embed_videos(videos: Sequence[Video], layer, settings: ClipSettings,
                 store: embed_store.Store, progress_stream: Optional[TextIO] = None,
                 flush_every_s: float = 60.0) -> dict:
  """Embeds the videos the store does not hold yet, appending to it and flushing it every
  `flush_every_s` seconds and at the end (also when interrupted); returns the counts
  {'skipped', 'embedded', 'failed', 'rows'}. Failures and progress (videos/s) go to
  `progress_stream` (the CLI passes stderr)."""
  settings.check()
  done = store.open()
  todo = [v for v in videos if v.error or v.path not in done]
  counts = {'skipped': len(videos) - len(todo), 'embedded': 0, 'failed': 0}
  progress = progress_lib.Progress(len(videos), done=counts['skipped'],
                                   stream=progress_stream)
  clips_at = make_frames_fn(settings.short_side, settings.crop_size)

  def decode(video):
    if video.error:
      return {'ok': False, 'reason': video.error}
    return decode_video(video.path, settings.fps, settings.short_side)

  last_flush = time.monotonic()
  try:
    for video, decoded in zip(todo, _prefetched(decode, todo)):
      num_decoded = len(decoded.get('jpegs', ()))
      try:
        if not decoded['ok']:
          raise video_io.VideoError(decoded['reason'])
        spans, features = embed_decoded(decoded, layer, settings, clips_at)
        store.add(video.path, video.label, num_decoded, spans, features)
        counts['embedded'] += 1
      except (video_io.VideoError, tf.errors.OpError, ValueError) as e:
        reason = e.message if isinstance(e, tf.errors.OpError) else str(e)
        reason = ' '.join(reason.split())[:500]
        store.add(video.path, video.label, num_decoded, error=reason)
        counts['failed'] += 1
        progress.message(f'cvrl_embed: failed: {video.path}: {reason}')
      progress.advance(not store.rows[-1]['error'])
      if time.monotonic() - last_flush >= flush_every_s:
        store.flush()
        last_flush = time.monotonic()
  finally:
    store.flush()  # Also on Ctrl-C: what is done stays done.
  counts['rows'] = len(store.features())
  return counts


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
