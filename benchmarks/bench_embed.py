"""cvrl_embed throughput: videos/s and frames/s of whole-video and per-window features.

  python benchmarks/bench_embed.py                   # the demo export and R3D-50 at 224
  python benchmarks/bench_embed.py --models=r3d50    # one of them
  python benchmarks/bench_embed.py --quick           # smoke run (demo model, 1 rep)

What cvrl_embed does per video, in-process (serving/embed.embed_videos into a fresh
output each repetition): decode + resize (PyAV, one thread ahead), clips, the exported
SavedModel through hub.KerasLayer (float32, as every export computes), the .npy and
index written at the end. Model loading and one untimed video (tracing) excluded.
  demo   the demo's export: R3D-18 at 0.25x (configs/demo/encoder.gin), 8x2 frames at
         32 px crops, on 64 px videos of 2 s at 25 fps (the synthetic set's size), as
         `make demo` runs it (--num_clips=4 --short_side=64) and in windows of one clip's
         span (16 frames)
  r3d50  R3D-50 1x (random weights: the same cost as trained), 16x2 frames at 224 crops
         of 256 px short side, on 340x256 videos of 4 s at 25 fps: the paper's 10 clips
         per video, and windows of one clip's span (32 frames, 1.28 s)
Rows: videos/s and frames/s (decoded frames of the videos per second) median
(min..max) over the repetitions, the two modes alternating within each repetition so
that load drift on a shared machine hits both alike; clips/s from the median.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import cvrl_tf  # noqa: F401  (first: turns TensorFlow's oneDNN kernels on before TF loads)
import gin
import tensorflow_hub as hub

import common
from bench_convert import write_video
from cvrl_tf import configs
from cvrl_tf.cli import gin_files
from cvrl_tf.cli import settings
from cvrl_tf.models import r3d
from cvrl_tf.serving import embed
from cvrl_tf.serving import embed_store
from cvrl_tf.serving import export
from cvrl_tf.serving import windows

# name: (backbone kwargs or 'demo', frames, stride, crop, short side, video w, h, seconds,
#        whole-video clips)
MODELS = {
    'demo': ('demo', 8, 2, 32, 64, 64, 64, 2.0, 4),
    'r3d50': ({'name': 'r3d50'}, 16, 2, 224, 256, 340, 256, 4.0, 10),
}


def build_export(name: str, folder: str) -> str:
  spec, frames, stride, crop = MODELS[name][:4]
  gin.clear_config()
  if spec == 'demo':
    gin_files.parse(['demo/encoder.gin'], [])
    encoder = r3d.build_backbone(settings.build_part('encoder'))
  else:
    encoder = r3d.build_backbone(**spec)
  gin.clear_config()
  metadata = export.build_metadata(
      None, {'num_frames': frames, 'frame_stride': stride, 'crop_size': crop})
  return export.export_encoder(encoder, os.path.join(folder, name), metadata, verify=False)


def run_once(videos, layer, settings, folder, tag) -> float:
  store = embed_store.Store(os.path.join(folder, f'{tag}-{time.monotonic_ns()}'),
                            settings.record(), settings.window is not None)
  start = time.perf_counter()
  embed.embed_videos(videos, layer, settings, store)
  return time.perf_counter() - start


def bench_model(name, args, folder):
  _, frames, stride, crop, short, width, height, seconds, num_clips = MODELS[name]
  if args.quick:
    seconds = min(seconds, 1.0)
  paths = []
  for i in range(args.videos + 1):  # The first one warms up (tracing).
    paths.append(os.path.join(folder, f'{name}-{i}.mp4'))
    write_video(paths[-1], seconds, seed=i, width=width, height=height)
  layer = hub.KerasLayer(build_export(name, folder))
  span = windows.Span(frames * stride)
  modes = {
      f'video, {num_clips} clips': embed.ClipSettings(frames, stride, num_clips, short, crop),
      f'windows of {span} frames': embed.ClipSettings(frames, stride, 1, short, crop,
                                                       window=span),
  }
  warm = [embed.Video(paths[0])]
  videos = [embed.Video(p) for p in paths[1:]]
  decoded_frames = [len(embed.decode_video(p, 0, short)['jpegs']) for p in paths[1:]]
  clips = {label: sum(len(windows.video_windows(n, 25.0, s.window)) *
                      (s.num_clips if s.window is None else
                       windows.clips_to_cover(s.window.frames(25.0), frames, stride))
                      for n in decoded_frames)
           for label, s in modes.items()}
  walls = {label: [] for label in modes}
  for label, settings in modes.items():
    run_once(warm, layer, settings, folder, 'warm')
  for _ in range(args.reps):
    for label, settings in modes.items():  # Alternating: drift hits both alike.
      walls[label].append(run_once(videos, layer, settings, folder, 'run'))
  rows = []
  for label in modes:
    med = statistics.median(walls[label])
    rows.append([name, label, f'{crop}px x {frames}x{stride}', len(videos),
                 common.median_range([len(videos) / w for w in walls[label]], '.2f'),
                 common.median_range([sum(decoded_frames) / w for w in walls[label]],
                                     '.0f'),
                 f'{clips[label] / med:.2f}'])
    print(f'  {name:6s} {label:24s} {med:.2f} s for {len(videos)} videos', flush=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smoke run (demo model, 1 rep)')
  parser.add_argument('--models', default='demo,r3d50', help=f'of {",".join(MODELS)}')
  parser.add_argument('--videos', type=int, default=4, help='timed videos per repetition')
  parser.add_argument('--reps', type=int, default=3, help='repetitions')
  args = parser.parse_args(argv)
  if args.quick:
    args.models, args.videos, args.reps = 'demo', 2, 1
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name in args.models.split(','):
      rows += bench_model(name, args, folder)
  print('\n' + common.machine_line('float32 (exports compute in float32)'))
  print(f'cvrl_embed in-process, {args.reps} repetitions (one warm-up video excluded), '
        'decode + clips + model + outputs')
  common.print_table(['model', 'mode', 'clips', 'videos', 'videos/s', 'frames/s',
                      'clips/s'], rows)
  return 0


if __name__ == '__main__':
  sys.exit(main())
