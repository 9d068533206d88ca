"""`cvrl_embed`: features of any video from an exported encoder (serving/embed.py).

It runs the export on TensorFlow's oneDNN CPU kernels (`import cvrl_tf` sets
TF_ENABLE_ONEDNN_OPTS=1 unless you set it). Code of your own that loads an export with
hub.KerasLayer without importing cvrl_tf must set TF_ENABLE_ONEDNN_OPTS=1 itself, before
TensorFlow is imported: on AVX2-only CPUs TensorFlow's default is Eigen's kernels, 2.3-3.4x
fewer clips/s for the demo encoder (an AMD EPYC Zen 4 with ONEDNN_MAX_CPU_ISA=AVX2 standing
in; benchmarks/README.md; the export's README.md says why).
"""

import os
import sys

from cvrl_tf.cli import failures
from cvrl_tf.cli import tool_flags
from cvrl_tf.serving import embed_store
from cvrl_tf.serving import windows
from cvrl_tf.serving.embed import (INDEX_SUFFIX, ClipSettings, UsageError, embed_videos,
                                   list_videos, load_encoder, resolve_settings)

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('string', 'input', None, 'A video file, a folder of videos (recursive; '
     'label = first sub-folder) or a CSV of path[,label] rows.'),
    ('string', 'output', None, 'Writes OUTPUT.npy, OUTPUT_index.csv and '
     'OUTPUT_settings.json; re-running with the same output skips what is done.'),
    ('string', 'hub_model', None, 'Export dir (cvrl_export) or TF Hub handle. Runs on '
     "TensorFlow's oneDNN CPU kernels (cvrl_tf sets TF_ENABLE_ONEDNN_OPTS=1 unless you "
     'did); to load an export fast in your own code without cvrl_tf, set '
     "TF_ENABLE_ONEDNN_OPTS=1 before importing TensorFlow (AVX2-only CPUs otherwise get "
     "Eigen: see the export's README.md)."),
    ('integer', 'num_clips', 10, 'Clips per video, evenly spaced in time (whole-video '
     'features; a window takes as many clips as cover it).'),
    ('integer', 'num_frames', None, 'Frames per clip (default: training).'),
    ('integer', 'frame_stride', None, 'Frame stride (default: training).'),
    ('integer', 'short_side', 256, 'Resize the short side to this.'),
    ('integer', 'crop_size', None, 'Centre crop size (default: short_side).'),
    ('float', 'fps', 0.0, 'Resample videos to this frame rate; 0 keeps the '
     'source rate (as cvrl_convert does by default).'),
    ('string', 'window', None, 'Per-window features: window length in frames (32) or '
     'seconds (1.28s), at --fps; default: one feature per video.'),
    ('string', 'window_stride', None, 'Start of one window to the next, in frames or '
     'seconds (default: --window, no overlap).'),
    ('integer', 'batch_size', 10, 'Clips per forward pass.'),
    failures.VERBOSE_FLAG,
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag_values = TOOL_FLAGS.values


def _settings(fv, metadata) -> ClipSettings:
  if fv.num_clips < 1 or fv.batch_size < 1 or fv.short_side < 1:
    raise UsageError('--num_clips, --batch_size and --short_side must be >= 1')
  if fv.window and TOOL_FLAGS.given('num_clips'):
    raise UsageError('--num_clips is for whole-video features; with --window each window '
                     'takes as many clips as cover it')
  num_frames, frame_stride = resolve_settings(metadata, fv.num_frames, fv.frame_stride)
  try:
    window = windows.parse_span(fv.window, '--window') if fv.window else None
    stride = (windows.parse_span(fv.window_stride, '--window_stride')
              if fv.window_stride else None)
  except ValueError as e:
    raise UsageError(str(e)) from e
  settings = ClipSettings(num_frames, frame_stride, fv.num_clips, fv.short_side,
                          fv.crop_size or fv.short_side, fv.fps, fv.batch_size, window,
                          stride)
  settings.check()
  return settings


def _embed(argv, fv) -> int:
  if len(argv) > 1:
    raise UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not fv.input or not fv.output or not fv.hub_model:
    raise UsageError('--input, --output and --hub_model are required')
  if fv.window_stride and not fv.window:
    raise UsageError('--window_stride goes with --window')
  videos = list_videos(fv.input)
  layer, metadata = load_encoder(fv.hub_model)
  settings = _settings(fv, metadata)
  model = fv.hub_model if '://' in fv.hub_model else os.path.abspath(fv.hub_model)
  try:
    store = embed_store.Store(fv.output, dict(settings.record(), hub_model=model),
                              windowed=settings.window is not None)
  except embed_store.OutputError as e:
    raise UsageError(str(e)) from e
  per = (f'windows of {settings.window} every {settings.window_stride or settings.window}'
         if settings.window else f'{settings.num_clips} clips')
  print(f'cvrl_embed: {len(videos)} videos, {per} x {settings.num_frames} frames (stride '
        f'{settings.frame_stride}), {settings.crop_size}px centre crop', file=sys.stderr)
  try:
    counts = embed_videos(videos, layer, settings, store, progress_stream=sys.stderr)
  except embed_store.OutputError as e:
    raise UsageError(str(e)) from e
  except KeyboardInterrupt:
    print('\ncvrl_embed: interrupted; what is done is saved: rerun the same command to '
          'resume', file=sys.stderr)
    return 130
  print(f'cvrl_embed: wrote {fv.output}.npy ({counts["rows"]} rows) and '
        f'{fv.output}{INDEX_SUFFIX}; {counts["embedded"]} videos embedded, '
        f'{counts["skipped"]} already done, {counts["failed"]} of '
        f'{len(videos) - counts["skipped"]} failed', file=sys.stderr)
  return 1 if counts['failed'] else 0


def main(argv) -> int:
  """Exit 0 all embedded, 1 some videos failed, 2 a usage error (one line)."""
  tool_flags.quiet_info_logs()
  fv = _flag_values()
  return failures.run_reporting('cvrl_embed', lambda: _embed(argv, fv), fv.verbose)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
