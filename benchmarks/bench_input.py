"""Input pipeline throughput at the CVRL pretraining setting, against JPEG decoding alone.

  python benchmarks/bench_input.py            # 20 records, 5 repetitions (~10 minutes)
  python benchmarks/bench_input.py --quick    # smoke run (seconds; no peak RSS column)

Writes synthetic records (256x340 frames, 60-100 per video) to a temp dir, then measures
on the same cores and records, alternating variants within each repetition so load drift
hits all of them alike (warm-up excluded; median and min..max printed):
  decode_only      read + parse + full decode of the same 2 x clip_len frames per video
  defer=resize     pretraining pipeline, decode-and-crop only; resize, flip, colour and
                   blur deferred to the train step (batch.finish_batch); canvas
                   fitted to the records (256x340)
  resize/c456      the same with the default canvas 256x456 (room for 16:9 videos)
  resize/cNone     the same with canvas=None: each batch padded to its largest crop
  defer=colour/u8  crop, flip, resize in tf.data, uint8 out; colour and blur deferred
  defer=none       everything in tf.data (float32 out)
  step:resize+col  batch.finish_batch on one defer=resize batch, on this CPU: the work
                   the train step takes over (cheap on an accelerator)
  step:colour      the same for a defer=colour batch
  classify         build_classification_dataset as linear evaluation uses it (one clip per
                   video, crop + flip in tf.data): B clips per batch
  classify/resize  the same with defer='resize', canvas=None (resize + flip in the step)
  eval             build_eval_dataset, the paper's multi-view test (10 clips x 3 crops of
                   256 per video; --quick: 2 x 3 of 64): B views per batch, the 3 crops
                   of a clip share its decoded frames
  V/unguarded      (not by default) variant V built as before the bad-example guard: a
                   plain parallel map and a plain TFRecord reader (`unguarded`); the
                   guard's cost is printed as V / V/unguarded, paired by repetition
Rates are clips/s (a pretraining video = two clips, an eval view = one clip); decode_only
is converted at clip_len frames per clip, so 'vs dec' compares frames delivered with frames
decoded. Besides wall-clock rates, clips per CPU-second of this process are reported:
on a machine shared with other jobs they are the steadier figure. Peak RSS is measured
per variant in a fresh process (warm-up + a few batches); 'idle' is TensorFlow imported
and the records listed, nothing run. --quick (and --no_rss) leave it out: one fresh
process per variant costs a TensorFlow import (~10 s) each.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cvrl_tf  # noqa: F401  (first: turns TensorFlow's oneDNN kernels on before TF loads)
import numpy as np
import tensorflow as tf

# pylint: disable=g-import-not-at-top,g-bad-import-order
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path)
from cvrl_tf import records
from cvrl_tf.input import bad_examples
from cvrl_tf.input import batch as batch_lib
from cvrl_tf.input import pipeline
from cvrl_tf.input import sampling
from cvrl_tf.input import shards


def write_records(out_dir: str, num_videos: int, num_shards: int, height: int, width: int,
                  seed: int = 0) -> str:
  """Moving textured scenes, JPEG q90 (~20-30 KB per 256x340 frame, like Kinetics)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  writers = [tf.io.TFRecordWriter(os.path.join(out_dir, f'bench-{i:05d}-of-{num_shards:05d}'
                                               '.tfrecord')) for i in range(num_shards)]
  for v in range(num_videos):
    length = int(rng.integers(60, 101))
    freq = rng.uniform(0.02, 0.12, size=3)
    texture = rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    frames = []
    for t in range(length):
      shift = 2.0 * t
      img = np.stack([128 + 90 * np.sin(freq[0] * (xx + shift) + v),
                      128 + 90 * np.cos(freq[1] * (yy - shift)),
                      128 + 70 * np.sin(freq[2] * (xx + yy) + 0.1 * t)], axis=-1)
      img += np.roll(texture, t, axis=1)
      frames.append(tf.io.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8),
                                      quality=90).numpy())
    example = records.make_sequence_example(frames, f'video{v:03d}', 25.0, height, width,
                                            label_index=v % 5)
    writers[v % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  return os.path.join(out_dir, '*.tfrecord')


def decode_only_dataset(pattern: str, batch_size: int, clip_len: int, stride: int,
                        seed: int) -> tf.data.Dataset:
  """Same reading, shuffling and frame choice as pretraining, but plain full decodes."""
  files = shards.list_files(pattern)
  ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat()
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.shuffle(128, seed=seed).enumerate()

  def decode(i, record):
    ex = records.parse_sequence_example(record)
    idx = sampling.sample_pretrain_indices(tf.stack([tf.constant(seed, tf.int64), i]),
                                           ex['num_frames'], clip_len, stride)
    jpegs = tf.gather(ex['frames'], tf.reshape(idx, [-1]))
    return tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3), jpegs,
                     fn_output_signature=tf.uint8)

  ds = ds.map(decode, tf.data.AUTOTUNE, deterministic=False)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def unguarded():
  """Pipelines built inside run as before the bad-example guard (issue 18): the
  per-video work in a plain parallel map (a bad video would stop them) and the files
  read by a plain TFRecordDataset (a damaged one would too): what the guard and the
  tolerant reader cost is the difference."""
  def plain_map(ds, fn, tracker):
    del tracker
    return ds.map(tf.function(fn, autograph=False), num_parallel_calls=tf.data.AUTOTUNE)

  def plain_read(files, shuffle, repeat, seed, cycle_length, deterministic):
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
      ds = ds.repeat()
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f).enumerate().map(lambda i, r: (f, i, r)),
        cycle_length=min(cycle_length, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic)

  saved = bad_examples.guarded_map, shards.read_records
  bad_examples.guarded_map, shards.read_records = plain_map, plain_read
  try:
    yield
  finally:
    bad_examples.guarded_map, shards.read_records = saved


def guard_fixed_cost_us(n: int) -> tuple:
  """CPU microseconds per element that the bad-example guard adds to a map, measured on a
  per-element function that does nothing (so nothing else varies): (guarded, plain).
  Divided by a video's CPU time it is the guard's share, steadier than an A/B of rates."""
  def source():
    return tf.data.Dataset.range(n).map(
        lambda i: (i, (tf.constant('shard'), i, tf.constant(b'record'))))
  fn = lambda x, triple: x + 1
  tracker = bad_examples.BadExamples(None, 'bench', None, progress_stream=None)
  made = {'guarded': lambda: bad_examples.guarded_map(source(), fn, tracker),
          'plain': lambda: source().map(tf.function(fn), num_parallel_calls=tf.data.AUTOTUNE,
                                        deterministic=True)}
  cost = {k: [] for k in made}
  for _ in range(3):
    for k, make in made.items():
      ds, start = make().batch(256), time.process_time()
      for _ in ds:
        pass
      cost[k].append(1e6 * (time.process_time() - start) / n)
  return statistics.median(cost['guarded']), statistics.median(cost['plain'])


def _built_unguarded(make_iter):
  def make():
    with unguarded():
      return make_iter()
  return make


def train_step_stand_in(dataset: tf.data.Dataset, crop_size: int):
  """Endless (step fn, batch) pairs: finish_batch on one ready batch, as a train step."""
  batch = next(iter(dataset))
  step = tf.function(lambda b, s: batch_lib.finish_batch(b, s, crop_size))
  return ({'fn': step, 'batch': batch, 'step': i} for i in range(10**9))


def peak_rss_mb() -> float:
  """Peak resident set of this process (VmHWM), MB."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024.0
  return float('nan')


def isolated_peak_rss(variant: str, argv: list, records_dir: str) -> float:
  """Runs one variant in a fresh process (a few batches) and returns its peak RSS, so no
  variant inherits the memory another one left in the allocator."""
  cmd = [sys.executable, os.path.abspath(__file__), *argv, '--records_dir', records_dir,
         '--rss_variant', variant]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
  for line in out.splitlines():
    if line.startswith('PEAK_RSS_MB'):
      return float(line.split()[1])
  return float('nan')


def time_batches(make_iter, warmup: int, batches: int, min_seconds: float):
  """(wall seconds, process CPU seconds) per batch in steady state, after `warmup`.

  The iterator is deleted before returning so its threads stop burning CPU.
  """
  it = make_iter()
  for _ in range(warmup):
    _consume(next(it))
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while count < batches or time.perf_counter() - start < min_seconds:
    _consume(next(it))
    count += 1
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  del it
  return wall / count, cpu / count


def _consume(batch):
  if isinstance(batch, dict) and 'fn' in batch:  # Train-step stand-in: run the step.
    batch = batch['fn'](batch['batch'], tf.constant([batch['step'], 7]))
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t, batch)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smoke run: tiny and short')
  parser.add_argument('--num_videos', type=int, default=20)
  parser.add_argument('--batch_size', type=int, default=8, help='videos per batch')
  parser.add_argument('--clip_len', type=int, default=16)
  parser.add_argument('--stride', type=int, default=2)
  parser.add_argument('--crop_size', type=int, default=224)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batches', type=int, default=8, help='timed batches per run')
  parser.add_argument('--min_seconds', type=float, default=4.0)
  parser.add_argument('--variants', default='decode_only,defer=resize,resize/c456,'
                      'resize/cNone,'
                      'defer=colour/u8,defer=none,step:resize+col,step:colour,'
                      'classify,classify/resize,eval',
                      help='also available: defer=colour/f32, and V/unguarded for the '
                      'pipeline variants V (the guard\'s cost)')
  parser.add_argument('--records_dir', default=None, help='reuse records written before')
  parser.add_argument('--no_rss', action='store_true',
                      help='skip the peak RSS column (a fresh process per variant)')
  parser.add_argument('--rss_variant', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  argv = sys.argv[1:] if argv is None else list(argv)
  height, width = 256, 340
  if args.quick:
    args.num_videos, args.batch_size, args.reps, args.batches = 4, 2, 1, 2
    args.min_seconds, args.clip_len, args.crop_size = 0.0, 4, 64
    height, width = 72, 96
    args.no_rss = True

  tmp = None
  if args.records_dir:
    pattern = os.path.join(args.records_dir, '*.tfrecord')
  else:
    tmp = tempfile.TemporaryDirectory(prefix='bench_input_')
    t0 = time.perf_counter()
    pattern = write_records(tmp.name, args.num_videos, max(1, args.num_videos // 5),
                            height, width)
    size_mb = sum(os.path.getsize(os.path.join(tmp.name, f))
                  for f in os.listdir(tmp.name)) / 2**20
    print(f'wrote {args.num_videos} videos ({size_mb:.1f} MB) at {height}x{width} in '
          f'{time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs; tf {tf.__version__}')

  common = dict(clip_len=args.clip_len, stride=args.stride, crop_size=args.crop_size,
                seed=0)
  fitted = (height, width)
  pretrain = lambda **kw: pipeline.build_pretrain_dataset(pattern, args.batch_size,
                                                          **common, **kw)
  makers = {
      'decode_only': lambda: iter(decode_only_dataset(
          pattern, args.batch_size, args.clip_len, args.stride, 0)),
      'defer=resize': lambda: iter(pretrain(defer='resize', canvas=fitted)),
      'resize/c456': lambda: iter(pretrain(defer='resize', canvas=(256, 456))),
      'resize/cNone': lambda: iter(pretrain(defer='resize', canvas=None)),
      'defer=colour/u8': lambda: iter(pretrain(defer='colour', output_dtype='uint8')),
      'defer=colour/f32': lambda: iter(pretrain(defer='colour')),
      'defer=none': lambda: iter(pretrain(defer='none')),
      'step:resize+col': lambda: train_step_stand_in(
          pretrain(defer='resize', canvas=fitted), args.crop_size),
      'step:colour': lambda: train_step_stand_in(
          pretrain(defer='colour', output_dtype='uint8'), args.crop_size),
      'classify': lambda: iter(pipeline.build_classification_dataset(
          pattern, args.batch_size, **common)),
      'classify/resize': lambda: iter(pipeline.build_classification_dataset(
          pattern, args.batch_size, defer='resize', canvas=None, **common)),
      'eval': lambda: iter(pipeline.build_eval_dataset(
          pattern, args.batch_size, clip_len=args.clip_len, stride=args.stride,
          num_clips=2 if args.quick else 10, num_crops=3, min_resize=min(height, 256),
          crop_size=args.crop_size if args.quick else 256).repeat()),
  }
  for v in list(makers):
    if not v.startswith('step:') and v != 'decode_only':
      makers[f'{v}/unguarded'] = _built_unguarded(makers[v])
  # Clips per batch: two views per video in pretraining, one clip or view otherwise.
  clips_in = {f'{v}{tail}': args.batch_size for v in ('classify', 'classify/resize', 'eval')
              for tail in ('', '/unguarded')}
  slow = ('defer=none', 'step:resize+col', 'step:colour')
  if args.rss_variant:  # Child process of isolated_peak_rss.
    if args.rss_variant != 'idle':
      time_batches(makers[args.rss_variant], warmup=2, batches=2 if args.rss_variant in slow
                   else args.batches, min_seconds=0.0)
    print(f'PEAK_RSS_MB {peak_rss_mb():.0f}')
    return

  variants = args.variants.split(',')
  clips_per_batch = 2 * args.batch_size
  rates = {v: [] for v in variants}
  cpu_rates = {v: [] for v in variants}
  load_before = os.getloadavg()[0]
  for rep in range(args.reps):
    for v in variants:
      batches = max(2, args.batches // 4) if v in slow else args.batches
      wall, cpu = time_batches(makers[v], warmup=2, batches=batches,
                               min_seconds=args.min_seconds)
      rates[v].append(clips_in.get(v, clips_per_batch) / wall)
      cpu_rates[v].append(clips_in.get(v, clips_per_batch) / cpu)
      print(f'  rep {rep} {v:17s} {rates[v][-1]:8.1f} clips/s  '
            f'{cpu_rates[v][-1]:8.1f} clips/CPU-s', flush=True)
  load_after = os.getloadavg()[0]
  records_dir = os.path.dirname(pattern)
  if args.no_rss:
    peaks = {v: float('nan') for v in ['idle'] + variants}
  else:
    peaks = {v: isolated_peak_rss(v, argv, records_dir) for v in ['idle'] + variants}

  print('\n' + machine_line('n/a (input pipeline: uint8 / float32 clips)'))
  print(f'\nclip {args.clip_len}x{args.crop_size}x{args.crop_size}, stride {args.stride}, '
        f'batch {args.batch_size} videos = {clips_per_batch} clips, {args.reps} reps, '
        f'load average before/after {load_before:.1f}/{load_after:.1f}')
  print(f'{"variant":17s} {"clips/s":>8s} {"min..max":>15s} {"vs dec":>6s}   '
        f'{"clips/CPU-s":>11s} {"min..max":>15s} {"vs dec":>6s}   '
        + ('peak RSS: not measured (--quick / --no_rss)' if args.no_rss else
           f'peak RSS MB (idle {peaks["idle"]:.0f})'))
  def stats(values, base_values):
    med = statistics.median(values)
    rel = (f'{med / statistics.median(base_values):6.2f}' if base_values else ' ' * 6)
    return f'{med:8.1f} {min(values):7.1f}..{max(values):<6.1f} {rel}'
  for v in variants:
    print(f'{v:17s} {stats(rates[v], rates.get("decode_only"))}   '
          f'   {stats(cpu_rates[v], cpu_rates.get("decode_only"))}   '
          + ('       -' if args.no_rss else f'{peaks[v]:8.0f}'))
  guarded_us, plain_us = guard_fixed_cost_us(2000 if args.quick else 20000)
  print(f'\nguard fixed cost: {guarded_us - plain_us:.0f} us of CPU per video '
        f'({guarded_us:.0f} guarded vs {plain_us:.0f} plain, per element of a function '
        f'that does nothing; median of 3)')
  for v in variants:
    if v.endswith('/unguarded') and v[:-len('/unguarded')] in rates:
      paired = [g / u for g, u in zip(rates[v[:-len('/unguarded')]], rates[v])]
      print(f'guard cost, {v[:-len("/unguarded")]} / {v}: clips/s ratio median '
            f'{statistics.median(paired):.3f} ({min(paired):.2f}..{max(paired):.2f} over '
            f'{len(paired)} reps)')
  if tmp:
    tmp.cleanup()


if __name__ == '__main__':
  main()
