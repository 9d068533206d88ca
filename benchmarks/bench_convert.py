"""Converter throughput and memory, against PyAV decoding alone on the same files.

  python benchmarks/bench_convert.py            # 12 videos of 4 s, 5 repetitions
  python benchmarks/bench_convert.py --quick    # smoke run (2 videos of 1 s, 1 rep)
  python benchmarks/bench_convert.py --only_beam --reps=4   # local pool vs Beam, W=2

Writes Kinetics-like sources (480x360 H.264, 25 fps, moving texture + noise) to a temp
dir, then measures, alternating variants within each repetition so that load drift hits
all of them alike (one warm-up repetition excluded; median and min..max printed):
  decode_only  W=1|2   PyAV demux + decode of every frame, nothing else (the floor)
  convert      W=1|2   cvrl_tf.convert.convert in-process: decode, resize to short side 256,
                       JPEG q90 in W worker processes, records + shards written here
                       (includes starting the workers, excludes the TensorFlow import)
  beam         W=2     the same conversion on Apache Beam's DirectRunner with W worker
                       processes (--runner=DirectRunner; needs the [beam] extra, else
                       skipped): includes starting Beam's workers, which import
                       TensorFlow each; compare with convert W=2 (issue 21: >= 0.8x)
Also:
  jpeg         Pillow vs tf.io.encode_jpeg per 256x341 frame, and their import times
  memory       peak RSS of a fresh process converting one 10 s vs one 60 s video
               (decode + resize + JPEG, the worker's job), next to the size the decoded
               frames would take if they were held: RSS grows only by the JPEG bytes
               (a record holds every frame), not by decoded frames; full mode also
               measures the whole converter in one process
--quick (seconds, for the test suite) shrinks every part: 1 s videos, one repetition
after the warm-up, 1 s vs 3 s for the memory probe, and no TensorFlow import timing
(~10 s a run).
Besides wall-clock rates, videos per CPU-second (this process + its workers) are
printed: on a machine shared with other jobs they are the steadier figure.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,g-bad-import-order
from common import machine_line  # noqa: E402  (benchmarks/ is on sys.path)
from cvrl_tf.convert import convert
from cvrl_tf.convert import pool as pool_lib
from cvrl_tf.convert import sources
from cvrl_tf.convert import video_io

WIDTH, HEIGHT, FPS = 480, 360, 25


def write_video(path: str, seconds: float, seed: int, width=WIDTH, height=HEIGHT):
  """Moving gradient texture + noise, drawn frame by frame (flat memory in length)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  texture = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
  freq = rng.uniform(0.02, 0.08, 3)
  with video_io.VideoWriter(path, FPS, width, height) as writer:
    for t in range(int(seconds * FPS)):
      img = np.stack([128 + 90 * np.sin(freq[0] * (xx + 2 * t)),
                      128 + 90 * np.cos(freq[1] * (yy - t)),
                      128 + 70 * np.sin(freq[2] * (xx + yy) + 0.1 * t)], axis=-1)
      img += np.roll(texture, 3 * t, axis=1)
      writer.write(np.clip(img, 0, 255).astype(np.uint8))


def decode_only(path: str) -> int:
  """Frames decoded; a module-level function so spawned workers can import it."""
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    return sum(1 for _ in container.decode(stream))


def _cpu() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def run_decode_only(paths, workers):
  with pool_lib.OrderedPool(workers, lambda kw: 0) as pool:
    return sum(pool.map(decode_only, [{'path': p} for p in paths]))


def beam_available() -> bool:
  try:
    import apache_beam  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def run_convert(paths, workers, out_dir, beam=False):
  listing = sources.Listing([sources.Item(p, 'x', os.path.basename(p)) for p in paths],
                            [], {'kind': 'bench'})
  result = convert.convert(listing, convert.Options(
      output_dir=out_dir, num_shards=2, short_side=256, workers=workers), log=None,
                           beam_args=['--runner=DirectRunner'] if beam else None)
  assert result.exit_code == 0, result.manifest
  return result.manifest['num_frames']


def _summary(name, values, unit):
  med = statistics.median(values)
  return f'{name:22s} {med:8.1f} {unit}  ({min(values):.1f}..{max(values):.1f})'


def bench_throughput(paths, reps, tmp, kinds=('decode_only', 'convert'), workers=(1, 2)):
  variants = [(f'{kind} W={w}', kind, w) for w in workers for kind in kinds
              if kind != 'beam' or w == 2]
  stats = {name: {'videos/s': [], 'frames/s': [], 'videos/cpu-s': []} for name, _, _ in
           variants}
  for rep in range(reps + 1):  # repetition 0 is the warm-up
    for name, kind, workers in variants:
      t0, c0 = time.perf_counter(), _cpu()
      if kind == 'decode_only':
        frames = run_decode_only(paths, workers)
      else:
        frames = run_convert(paths, workers, os.path.join(tmp, f'out-{rep}-{kind}{workers}'),
                             beam=kind == 'beam')
      wall, cpu = time.perf_counter() - t0, _cpu() - c0
      if rep:
        stats[name]['videos/s'].append(len(paths) / wall)
        stats[name]['frames/s'].append(frames / wall)
        if kind != 'beam':  # Beam's decoder processes are not reaped here: not counted
          stats[name]['videos/cpu-s'].append(len(paths) / cpu)
  print(f'\nthroughput: {len(paths)} videos of {WIDTH}x{HEIGHT} @ {FPS} fps, '
        f'{reps} repetitions, median (min..max)')
  for name, _, _ in variants:
    for unit, values in stats[name].items():
      if values:
        print(_summary(name, values, unit))
  return stats


def bench_jpeg(frame, reps=200, import_runs=3, modules=('PIL.Image', 'tensorflow')):
  from PIL import Image  # pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  timings = {}
  for name, fn in [('pillow', lambda: video_io.encode_jpeg(frame, 90)),
                   ('tf.io.encode_jpeg', lambda: tf.io.encode_jpeg(frame, quality=90))]:
    fn()
    runs = []
    for _ in range(5):
      t0 = time.perf_counter()
      for _ in range(reps // 5):
        fn()
      runs.append((time.perf_counter() - t0) / (reps // 5) * 1000)
    timings[name] = runs
  print(f'\njpeg q90 of one {frame.shape[1]}x{frame.shape[0]} frame, ms per frame:')
  for name, runs in timings.items():
    print(_summary(name, runs, 'ms'))
  for module in modules:
    runs = []
    for _ in range(import_runs):
      t0 = time.perf_counter()
      subprocess.run([sys.executable, '-c', f'import {module}'], check=True,
                     capture_output=True)
      runs.append(time.perf_counter() - t0)
    print(_summary(f'python -c import {module}', runs, 's'))


# VmHWM, not ru_maxrss: the latter carries over the parent's peak through fork + exec.
_MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[2])
from cvrl_tf.convert import video_io
def hwm():
  with open('/proc/self/status') as f:
    return next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024
base = hwm()
r = video_io.encode_video_jpeg(sys.argv[1], short_side=256, quality=90)
print(json.dumps({'frames': len(r['jpegs']), 'jpeg_bytes': sum(map(len, r['jpegs'])),
                  'rss_mb': hwm(), 'after_import_mb': base}))
"""


_CONVERT_PROBE = """
import sys
sys.path.insert(0, sys.argv[2])
from cvrl_tf.convert import convert, sources
item = sources.Item(sys.argv[1], None, 'long')
convert.convert(sources.Listing([item], [], {}), convert.Options(
    output_dir=sys.argv[3], num_shards=1, short_side=256, workers=0), log=None)
with open('/proc/self/status') as f:
  print(next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024)
"""


def bench_memory(tmp, lengths, whole_converter, probe_runs=2):
  print('\npeak RSS of a fresh process: decode + resize to 256 + JPEG of one video')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for seconds in lengths:
    path = os.path.join(tmp, f'long_{seconds}s.mp4')
    write_video(path, seconds, seed=seconds, width=320, height=240)
    runs = [json.loads(subprocess.run([sys.executable, '-c', _MEMORY_PROBE, path, root],
                                      check=True, capture_output=True, text=True).stdout)
            for _ in range(probe_runs)]
    held = runs[0]['frames'] * 256 * 341 * 3 / 2**20
    print(f'{seconds:3d} s video: {runs[0]["frames"]:5d} frames, peak RSS '
          f'{min(r["rss_mb"] for r in runs):6.1f} MB (after imports '
          f'{runs[0]["after_import_mb"]:5.1f} MB; JPEGs kept '
          f'{runs[0]["jpeg_bytes"] / 2**20:5.1f} MB; all decoded frames would be '
          f'{held:6.1f} MB)')
    if whole_converter:
      out = os.path.join(tmp, f'mem_out_{seconds}')
      rss = float(subprocess.run([sys.executable, '-c', _CONVERT_PROBE, path, root, out],
                                 check=True, capture_output=True, text=True).stdout)
      print(f'{"":12s} whole converter in one process (TensorFlow loaded, record '
            f'built and written): peak RSS {rss:6.1f} MB')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='smoke run')
  parser.add_argument('--only_beam', action='store_true',
                      help='throughput of convert W=2 vs beam W=2 only (issue 21 A/B)')
  parser.add_argument('--num_videos', type=int, default=12)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  num, seconds, reps = (2, 1.0, 1) if args.quick else (args.num_videos, 4.0, args.reps)
  lengths = (1, 3) if args.quick else (10, 60)
  print(machine_line('n/a (decode / JPEG encode, no model)'))
  print(f'cores: {pool_lib.default_workers()}, load average at start: '
        f'{os.getloadavg()[0]:.2f}')
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i in range(num):
      paths.append(os.path.join(tmp, f'v{i:03d}.mp4'))
      write_video(paths[-1], seconds, seed=i)
    if args.only_beam:
      bench_throughput(paths, reps, tmp, kinds=('convert', 'beam'), workers=(2,))
      return
    beam = ('beam',) if beam_available() and not args.quick else ()
    bench_throughput(paths, reps, tmp, kinds=('decode_only', 'convert') + beam)
    frame = video_io.read_frames(paths[0], short_side=256)[0]
    if args.quick:
      bench_jpeg(frame, 20, import_runs=1, modules=('PIL.Image',))
      bench_memory(tmp, lengths, whole_converter=False, probe_runs=1)
    else:
      bench_jpeg(frame, 200)
      bench_memory(tmp, lengths, whole_converter=True)
  print(f'load average at end: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
