"""`cvrl_embed`: features of any video from an exported encoder (serving/embed.py)."""

import sys

from cvrl_tf.cli import failures
from cvrl_tf.cli import tool_flags
from cvrl_tf.serving.embed import (INDEX_SUFFIX, UsageError, embed_videos, list_videos,
                                   load_encoder, make_clip_fn, resolve_settings,
                                   write_outputs)

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('string', 'input', None, 'A video file, a folder of videos (recursive; '
     'label = first sub-folder) or a CSV of path[,label] rows.'),
    ('string', 'output', None, 'Writes OUTPUT.npy and OUTPUT_index.csv.'),
    ('string', 'hub_model', None, 'Export dir (cvrl_export) or TF Hub handle.'),
    ('integer', 'num_clips', 10, 'Clips per video, evenly spaced in time.'),
    ('integer', 'num_frames', None, 'Frames per clip (default: training).'),
    ('integer', 'frame_stride', None, 'Frame stride (default: training).'),
    ('integer', 'short_side', 256, 'Resize the short side to this.'),
    ('integer', 'crop_size', None, 'Centre crop size (default: short_side).'),
    ('float', 'fps', 0.0, 'Resample videos to this frame rate; 0 keeps the '
     'source rate (as cvrl_convert does by default).'),
    ('integer', 'batch_size', 10, 'Clips per forward pass.'),
    failures.VERBOSE_FLAG,
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag_values = TOOL_FLAGS.values


def _embed(argv, fv) -> int:
  if len(argv) > 1:
    raise UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not fv.input or not fv.output or not fv.hub_model:
    raise UsageError('--input, --output and --hub_model are required')
  if fv.num_clips < 1 or fv.batch_size < 1 or fv.short_side < 1:
    raise UsageError('--num_clips, --batch_size and --short_side must be >= 1')
  videos = list_videos(fv.input)
  layer, metadata = load_encoder(fv.hub_model)
  num_frames, frame_stride = resolve_settings(metadata, fv.num_frames, fv.frame_stride)
  crop_size = fv.crop_size or fv.short_side
  make_clip_fn(num_frames, frame_stride, 1, fv.short_side, crop_size)  # Checks sizes.
  print(f'cvrl_embed: {len(videos)} videos, {fv.num_clips} clips x {num_frames} frames '
        f'(stride {frame_stride}), {crop_size}px centre crop', file=sys.stderr)
  embeddings, rows = embed_videos(
      videos, layer, num_frames, frame_stride, fv.num_clips, fv.short_side, crop_size,
      fv.fps, fv.batch_size, progress_stream=sys.stderr)
  write_outputs(fv.output, embeddings, rows)
  failed = sum(r['status'] != 'ok' for r in rows)
  print(f'cvrl_embed: wrote {fv.output}.npy {list(embeddings.shape)} and '
        f'{fv.output}{INDEX_SUFFIX}; {failed} of {len(rows)} failed', file=sys.stderr)
  return 1 if failed else 0


def main(argv) -> int:
  """Exit 0 all embedded, 1 some videos failed, 2 a usage error (one line)."""
  tool_flags.quiet_info_logs()
  fv = _flag_values()
  return failures.run_reporting('cvrl_embed', lambda: _embed(argv, fv), fv.verbose)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
