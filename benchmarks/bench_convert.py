"""Converter throughput and memory, against PyAV decoding alone on the same files.

  python benchmarks/bench_convert.py            # 12 videos of 4 s, 5 repetitions
  python benchmarks/bench_convert.py --quick    # smoke run (2 videos of 1 s, 1 rep)
  python benchmarks/bench_convert.py --only_beam --reps=4   # local pool vs Beam, W=2
  python benchmarks/bench_convert.py --only_ratio            # throughput + stages only

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
  The ratio convert / decode_only per repetition (the two ran back to back), in
  videos/s and in videos per CPU-s, median (min..max).
Also:
  stages       CPU ms per video of each stage alone, in this process, on 4 of the videos:
               demux + decode, swscale's resize + colour conversion (and each alone, for
               reference), planes -> array, JPEG encode, transfer (pickle + pipe +
               unpickle), record build, write; `before` = the plain path (packed rgb24,
               Pillow), `now` = the converter's; their sums and decode / sum, and the
               floor: decode + resize alone + JPEG encode (what any converter to JPEGs
               at short side 256 must do beyond decoding)
  jpeg         Pillow vs OpenCV (the converter's; same bytes) vs tf.io.encode_jpeg per
               341x256 frame, and their import times
  memory       peak RSS of a fresh process converting one 10 s vs one 60 s video
               (decode + resize + JPEG, the worker's job), next to the size the decoded
               frames would take if they were held: RSS grows only by the JPEG bytes
               (a record holds every frame), not by decoded frames; full mode also
               measures the whole converter in one process
--quick (seconds, for the test suite) shrinks every part: 1 s videos, one repetition
after the warm-up, 1 s vs 3 s for the memory probe, and no TensorFlow import timing
(~15 s a run with the stage table, on 2 loaded cores).
Besides wall-clock rates, videos per CPU-second (this process + its workers) are
printed: on a machine shared with other jobs they are the steadier figure.
"""

import argparse
import io
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


def _reap_children(timeout: float = 10.0):
  """Waits for this process's finished children to be reaped (Beam's decoder processes
  outlive its run by a moment), so that their CPU time is not counted to the variant
  that runs next."""
  import multiprocessing  # pylint: disable=import-outside-toplevel
  deadline = time.monotonic() + timeout
  while multiprocessing.active_children() and time.monotonic() < deadline:
    time.sleep(0.05)


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
  stats = {name: {'videos/s': [], 'frames/s': [], 'videos/cpu-s': [], 'wall': [],
                  'cpu': []} for name, _, _ in variants}
  for rep in range(reps + 1):  # repetition 0 is the warm-up
    for name, kind, w in variants:
      t0, c0 = time.perf_counter(), _cpu()
      if kind == 'decode_only':
        frames = run_decode_only(paths, w)
      else:
        frames = run_convert(paths, w, os.path.join(tmp, f'out-{rep}-{kind}{w}'),
                             beam=kind == 'beam')
      wall = time.perf_counter() - t0
      _reap_children()
      cpu = _cpu() - c0
      if rep:
        stats[name]['videos/s'].append(len(paths) / wall)
        stats[name]['frames/s'].append(frames / wall)
        stats[name]['wall'].append(wall)
        if kind != 'beam':  # Beam's decoder processes are not reaped here: not counted
          stats[name]['videos/cpu-s'].append(len(paths) / cpu)
          stats[name]['cpu'].append(cpu)
  print(f'\nthroughput: {len(paths)} videos of {_size(paths[0])} @ {FPS} fps, '
        f'{reps} repetitions, median (min..max)')
  for name, _, _ in variants:
    for unit in ('videos/s', 'frames/s', 'videos/cpu-s'):
      if stats[name][unit]:
        print(_summary(name, stats[name][unit], unit))
    if stats[name]['cpu']:
      per_video = [c / len(paths) * 1000 for c in stats[name]['cpu']]
      print(_summary(name, per_video, 'ms CPU per video (user+sys, workers included)'))
  # The ratio within each repetition (the two variants ran back to back), then its spread.
  for w in workers:
    dec, conv = stats.get(f'decode_only W={w}'), stats.get(f'convert W={w}')
    if dec and conv and dec['wall'] and conv['wall']:
      wall = [d / c for d, c in zip(dec['wall'], conv['wall'])]
      cpu = [d / c for d, c in zip(dec['cpu'], conv['cpu'])]
      print(f'convert/decode_only W={w}: {statistics.median(wall):.2f} '
            f'({min(wall):.2f}..{max(wall):.2f}) in videos/s, {statistics.median(cpu):.2f} '
            f'({min(cpu):.2f}..{max(cpu):.2f}) in videos per CPU-s')
  return stats


def _size(path):
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    return f'{container.streams.video[0].width}x{container.streams.video[0].height}'


def _frames_of(path):
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    return list(container.decode(stream))


def bench_stages(paths, reps, short_side=256, quality=90):
  """CPU ms per video of each stage of a conversion, alone, in this process.

  Each stage runs over the same videos' data (decoded frames, arrays, JPEGs kept from an
  untimed pass), the stages alternating within each repetition. `before` is the plain
  path (swscale into packed rgb24, Pillow's encoder), `now` what the converter runs.
  """
  import pickle  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  import av  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from cvrl_tf import records  # pylint: disable=import-outside-toplevel
  from cvrl_tf.convert import record_wire  # pylint: disable=import-outside-toplevel
  frames = [_frames_of(p) for p in paths]
  src_w, src_h = frames[0][0].width, frames[0][0].height
  w, h = video_io.output_size(src_w, src_h, short_side)
  interp = 'AREA' if w < src_w else 'BICUBIC'
  fmt = av.video.reformatter.VideoReformatter()

  def swscale(out_format, width=w, height=h):
    return [[fmt.reformat(f, width=width, height=height, format=out_format,
                          interpolation=interp, threads=1) for f in fs] for fs in frames]

  gbrp = swscale('gbrp')
  rgb = [[f.to_ndarray() for f in fs] for fs in swscale('rgb24')]
  bgr = [[video_io.interleave(f.planes, video_io._BGR, h, w) for f in fs]  # pylint: disable=protected-access
         for fs in gbrp]
  buffer = np.empty((h, w, 3), np.uint8)  # the converter fills one array per video
  jpegs = [[video_io.encode_jpeg_bgr(f, quality) for f in fs] for fs in bgr]

  def pillow(frame):
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()

  def transfer(results):
    """Pickle each video's result, through a pipe, unpickle (ProcessPool's way)."""
    read_fd, write_fd = os.pipe()
    got = []

    def reader():
      with os.fdopen(read_fd, 'rb') as f:
        for _ in results:
          size = int.from_bytes(f.read(8), 'little')
          got.append(pickle.loads(f.read(size)))

    thread = threading.Thread(target=reader)
    thread.start()
    with os.fdopen(write_fd, 'wb') as f:
      for result in results:
        blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        f.write(len(blob).to_bytes(8, 'little'))
        f.write(blob)
    thread.join()

  def build():
    return [records.make_sequence_example(list(js), 'v', 25.0, h, w, label_index=0,
                                          label_string='x').SerializeToString(
                                              deterministic=True) for js in jpegs]

  def build_wire():
    return [record_wire.sequence_example_bytes(js, 'v', 25.0, h, w, label_index=0,
                                               label_string='x') for js in jpegs]

  serialized = build()
  assert serialized == build_wire()
  results_before = [{'ok': True, 'jpegs': js, 'fps': 25.0, 'height': h, 'width': w}
                    for js in jpegs]
  results_now = [{'ok': True, 'num_frames': len(js), 'record': r}
                 for js, r in zip(jpegs, serialized)]

  def write():
    with tempfile.TemporaryDirectory() as tmp:
      with tf.io.TFRecordWriter(os.path.join(tmp, 'x.tfrecord')) as writer:
        for record in serialized:
          writer.write(record)

  stages = [  # (name, in before, in now, fn)
      ('demux + decode', True, True,
       lambda: [sum(1 for _ in _frames_of(p)) for p in paths]),
      ('colour alone (to RGB planes, source size)', False, False,
       lambda: swscale('gbrp', src_w, src_h)),
      ('resize alone (yuv420p, output size)', False, False, lambda: swscale('yuv420p')),
      ('resize + colour: swscale -> rgb24 + array', True, False,
       lambda: [[f.to_ndarray() for f in fs] for fs in swscale('rgb24')]),
      ('resize + colour: swscale -> gbrp', False, True, lambda: swscale('gbrp')),
      ('planes -> HxWx3 BGR array', False, True,
       lambda: [[video_io.interleave(f.planes, video_io._BGR, h, w, buffer) for f in fs]  # pylint: disable=protected-access
                for fs in gbrp]),
      ('JPEG encode: Pillow', True, False, lambda: [[pillow(f) for f in fs] for fs in rgb]),
      ('JPEG encode: OpenCV', False, True,
       lambda: [[video_io.encode_jpeg_bgr(f, quality) for f in fs] for fs in bgr]),
      ('transfer: pickle, pipe, unpickle JPEGs', True, False,
       lambda: transfer(results_before)),
      ('record build: TF proto (parent)', True, False, build),
      ('record build: record_wire (worker)', False, True, build_wire),
      ('transfer: pickle, pipe, unpickle record', False, True,
       lambda: transfer(results_now)),
      ('write (TFRecordWriter)', True, True, write),
  ]
  cpu = {name: [] for name, _, _, _ in stages}
  for _ in range(reps):
    for name, _, _, fn in stages:
      c0 = time.process_time()
      fn()
      cpu[name].append((time.process_time() - c0) / len(paths) * 1000)
  med = {name: statistics.median(v) for name, v in cpu.items()}
  n_frames = sum(len(fs) for fs in frames) / len(paths)
  print(f'\nstages: CPU ms per video ({n_frames:.0f} frames {src_w}x{src_h} -> {w}x{h}, '
        f'q{quality}), one process, {len(paths)} videos, {reps} repetitions, median '
        '(min..max)')
  print(f'{"stage":44s} {"before":>20s} {"now":>20s}')
  totals = {'before': 0.0, 'now': 0.0}
  for name, before, now, _ in stages:
    cell = f'{med[name]:.1f} ({min(cpu[name]):.1f}..{max(cpu[name]):.1f})'
    if before or now:
      print(f'{name:44s} {cell if before else "":>20s} {cell if now else "":>20s}')
    else:
      print(f'{name:44s} {cell:>20s} (reference, in neither path)')
    totals['before'] += med[name] if before else 0.0
    totals['now'] += med[name] if now else 0.0
  decode = med['demux + decode']
  print(f'{"total":44s} {totals["before"]:20.1f} {totals["now"]:20.1f}')
  print(f'decode/total (the ratio a converter of these stages can reach): before '
        f'{decode / totals["before"]:.2f}, now {decode / totals["now"]:.2f}')
  floor = decode + med['resize alone (yuv420p, output size)'] + med['JPEG encode: OpenCV']
  print(f'floor: decode + resize alone + JPEG encode = {floor:.1f} ms, decode/floor '
        f'{decode / floor:.2f}')
  return med


def bench_jpeg(frame, reps=200, import_runs=3, modules=('PIL.Image', 'tensorflow')):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  timings = {}
  def pillow():
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format='JPEG', quality=90)
    return buf.getvalue()

  bgr = np.ascontiguousarray(frame[..., ::-1])
  assert video_io.encode_jpeg_bgr(bgr, 90) == pillow()  # the same bytes
  for name, fn in [('pillow', pillow),
                   ('opencv (the converter)', lambda: video_io.encode_jpeg_bgr(bgr, 90)),
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
  parser.add_argument('--only_ratio', action='store_true',
                      help='decode_only vs convert (W=1, 2) and the stage table only')
  parser.add_argument('--workers', default='1,2', help='worker counts to measure')
  parser.add_argument('--size', default=f'{WIDTH}x{HEIGHT}',
                      help='WxH of the source videos (throughput and stages)')
  parser.add_argument('--num_videos', type=int, default=12)
  parser.add_argument('--reps', type=int, default=5)
  args = parser.parse_args()
  width, height = (int(v) for v in args.size.split('x'))
  num, seconds, reps = (2, 1.0, 1) if args.quick else (args.num_videos, 4.0, args.reps)
  lengths = (1, 3) if args.quick else (10, 60)
  print(machine_line('n/a (decode / JPEG encode, no model)'))
  print(f'cores: {pool_lib.default_workers()}, load average at start: '
        f'{os.getloadavg()[0]:.2f}')
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i in range(num):
      paths.append(os.path.join(tmp, f'v{i:03d}.mp4'))
      write_video(paths[-1], seconds, seed=i, width=width, height=height)
    if args.only_beam:
      bench_throughput(paths, reps, tmp, kinds=('convert', 'beam'), workers=(2,))
      return
    beam = ('beam',) if beam_available() and not (args.quick or args.only_ratio) else ()
    workers = tuple(int(w) for w in args.workers.split(','))
    bench_throughput(paths, reps, tmp, kinds=('decode_only', 'convert') + beam,
                     workers=workers)
    # Decoded frames of the stage table's videos are held: fewer of the large ones.
    bench_stages(paths[:4 if width * height <= 480 * 360 else 2],
                 max(3, reps) if not args.quick else 1)
    if args.only_ratio:
      return
    frame = video_io.read_frames(paths[0], short_side=256)[0]
    if args.quick:
      bench_jpeg(frame, 20, import_runs=1, modules=('PIL.Image', 'cv2'))
      bench_memory(tmp, lengths, whole_converter=False, probe_runs=1)
    else:
      bench_jpeg(frame, 200, modules=('PIL.Image', 'cv2', 'tensorflow'))
      bench_memory(tmp, lengths, whole_converter=True)
  print(f'load average at end: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
