"""End-to-end pretraining throughput: the real input pipeline feeding the real train step.

  python benchmarks/bench_e2e.py          # R3D-18, 4 videos x 2 views of 8x112x112
  python benchmarks/bench_e2e.py --quick  # smoke run (R3D-18 0.25x, 4x32x32, seconds)
  python benchmarks/bench_e2e.py --from_videos  # records made by the converter from mp4s

Writes synthetic records (bench_input.write_records: moving textures, JPEG q90, 60-100
frames of 256x340 per video; with --from_videos: 480x360 H.264 mp4s of 4 s at 25 fps
(bench_convert.write_video) converted by cvrl_tf's converter at short side 256, as a
user's videos would be), then measures, alternating the three variants within each
repetition so that load drift hits them alike (warm-up excluded; median and min..max of
--reps repetitions):
  pipeline   cvrl_tf.input.pipeline.build_pretrain_dataset alone (defer='resize', canvas
             fitted to the records; configs/pretrain.gin uses canvas=None, as fast in
             bench_input.py): batches pulled and materialised (bench_input.time_batches)
  step       CVRLPretrainer.train_step under model.fit on one cached batch of that
             pipeline (Dataset.from_tensors(batch).repeat()): the step alone, including
             the deferred resize / flip / colour it does on the batch
  end2end    the same model.fit fed by the pipeline itself
Each step/end2end repetition is one fit call (a fresh iterator: --warmup steps refill the
pipeline's buffers, then --steps timed steps, end of step to end of step).
The verdict line says whether the input pipeline is the bottleneck: the pipeline alone
delivers fewer clips/s than the step alone consumes. On a CPU both share the same cores,
so end to end stays below both; 'x step' says how much of the step-alone rate survives.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import cvrl_tf  # noqa: F401  (first: turns TensorFlow's oneDNN kernels on before TF loads)
import tensorflow as tf
import tf_keras

# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import bench_input
import bench_train_step
import common
from cvrl_tf.input import pipeline

VARIANTS = ('pipeline', 'step', 'end2end')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bench_train_step.add_model_flags(parser)
  parser.add_argument('--jit_compile', action='store_true')
  parser.add_argument('--batch', type=int, default=4, help='videos per step (2 clips each)')
  parser.add_argument('--clip_len', type=int, default=8)
  parser.add_argument('--stride', type=int, default=2)
  parser.add_argument('--crop_size', type=int, default=112)
  parser.add_argument('--defer', default='resize', choices=pipeline.DEFER_MODES)
  parser.add_argument('--num_videos', type=int, default=20)
  parser.add_argument('--from_videos', action='store_true',
                      help='records from encoded videos through the converter (480x360 '
                           'mp4s of bench_convert.py, 4 s each, short side 256) instead '
                           'of JPEG frames written directly')
  parser.add_argument('--frame_size', default='256x340', help='HxW of the records')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3, help='timed steps per repetition')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps per repetition')
  parser.add_argument('--pipeline_batches', type=int, default=16,
                      help='timed batches per repetition of the pipeline alone')
  args = parser.parse_args(argv)
  if args.quick:
    args.backbone, args.width_multiplier, args.head_dim = 'r3d18', 0.25, 64
    args.batch, args.clip_len, args.crop_size, args.num_videos = 2, 4, 32, 4
    args.frame_size, args.reps, args.steps, args.warmup = '48x64', 1, 1, 1
    args.pipeline_batches = 2
  height, width = map(int, args.frame_size.split('x'))
  clips = 2 * args.batch

  tmp = tempfile.TemporaryDirectory(prefix='bench_e2e_')
  t0 = time.perf_counter()
  if args.from_videos:
    import bench_convert  # pylint: disable=import-outside-toplevel
    paths = [os.path.join(tmp.name, f'v{i:03d}.mp4') for i in range(args.num_videos)]
    for i, path in enumerate(paths):
      bench_convert.write_video(path, 1.0 if args.quick else 4.0, seed=i)
    bench_convert.run_convert(paths, 2, os.path.join(tmp.name, 'records'))
    pattern = os.path.join(tmp.name, 'records', '*.tfrecord*')
    height, width = None, None  # the canvas is read off the records (canvas=None)
  else:
    pattern = bench_input.write_records(tmp.name, args.num_videos,
                                        max(1, args.num_videos // 5), height, width)
  kind = 'converted mp4s' if args.from_videos else f'{height}x{width} JPEG frames'
  print(f'wrote {args.num_videos} videos ({kind}) in '
        f'{time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs; tf {tf.__version__}',
        flush=True)

  def dataset():
    return pipeline.build_pretrain_dataset(
        pattern, args.batch, clip_len=args.clip_len, stride=args.stride,
        crop_size=args.crop_size, defer=args.defer,
        canvas=None if height is None else (height, width), seed=0)

  tf_keras.mixed_precision.set_global_policy(bench_train_step.POLICIES[args.dtype])
  model = bench_train_step.build(args.backbone, args.width_multiplier, args.head_dim,
                                 args.jit_compile, crop_size=args.crop_size)
  cached = tf.data.Dataset.from_tensors(next(iter(dataset()))).repeat()

  walls = {v: [] for v in VARIANTS}
  cpus = {v: [] for v in VARIANTS}
  load_before = common.load_average()
  for rep in range(args.reps):
    for v in VARIANTS:
      if v == 'pipeline':
        wall, cpu = bench_input.time_batches(lambda: iter(dataset()), warmup=2,
                                             batches=args.pipeline_batches, min_seconds=0)
      else:
        w, c = common.fit_step_times(model, cached if v == 'step' else dataset(),
                                     args.warmup, args.steps)
        wall, cpu = sum(w) / len(w), sum(c) / len(c)
      walls[v].append(wall)
      cpus[v].append(cpu)
      print(f'  rep {rep} {v:8s} {wall:8.3f} s/batch {clips / wall:8.2f} clips/s  '
            f'{clips / max(cpu, 1e-9):8.2f} clips/CPU-s', flush=True)
  load_after = common.load_average()

  rate = {v: statistics.median([clips / w for w in walls[v]]) for v in VARIANTS}
  print('\n' + common.machine_line(bench_train_step.POLICIES[args.dtype]))
  print(f'\n{model.encoder.name} + head {args.head_dim}, {args.dtype}, XLA '
        f'{"on" if args.jit_compile else "off"}; {clips} clips ({args.batch} videos x 2 '
        f'views) of {args.clip_len}x{args.crop_size}x{args.crop_size}, stride '
        f'{args.stride}, defer={args.defer!r}; {args.reps} reps of {args.steps} steps '
        f'(warm-up {args.warmup}) / {args.pipeline_batches} pipeline batches; load '
        f'average before/after {load_before:.1f}/{load_after:.1f}\n')
  labels = {'pipeline': 'pipeline alone', 'step': 'step alone (cached batch)',
            'end2end': 'end to end'}
  rows = [[labels[v]] + common.rate_cells(clips, walls[v], cpus[v]) +
          [f'{rate[v] / rate["step"]:.2f}'] for v in VARIANTS]
  common.print_table(['variant', 's/batch', 'CPU-s/batch', 'clips/s', 'clips/CPU-s',
                      'x step'], rows)
  bottleneck = rate['pipeline'] < rate['step']
  print(f'\ninput pipeline is the bottleneck: {"YES" if bottleneck else "no"} (alone it '
        f'delivers {rate["pipeline"]:.2f} clips/s, the step alone consumes '
        f'{rate["step"]:.2f}); end to end reaches {rate["end2end"]:.2f} clips/s = '
        f'{rate["end2end"] / rate["step"]:.2f} x the step alone, '
        f'{rate["end2end"] / min(rate["pipeline"], rate["step"]):.2f} x the slower side')
  tmp.cleanup()
  return 0


if __name__ == '__main__':
  sys.exit(main())
