"""The exported encoder in a fresh process without cvrl_tf: clips/s with and without oneDNN.

  python benchmarks/bench_export.py                          # builds the demo export
  python benchmarks/bench_export.py --export_dir=demo_out/export
  python benchmarks/bench_export.py --quick                  # smoke run (seconds)

What a user gets who loads our SavedModel with `hub.KerasLayer` in a process that never
imports cvrl_tf (so `cvrl_tf/__init__.py` never turns TensorFlow's oneDNN kernels on):
each measurement is a new `python` that imports only tensorflow + tensorflow_hub + numpy
(checked: no cvrl_tf module loaded), loads the export, calls it on one in-memory batch
of the training clip shape (from the export's metadata) and times the calls after two
untimed ones (tracing, warm-up). The environment of each process is one variant:
  default  no variable: TensorFlow's own choice on this CPU (oneDNN on only with
           AVX512_VNNI / AVX512_BF16 / AVX_VNNI / AMX, Eigen on AVX2-only CPUs)
  on       TF_ENABLE_ONEDNN_OPTS=1: what the export's model card recommends
  off      TF_ENABLE_ONEDNN_OPTS=0: Eigen's kernels, i.e. TensorFlow's default on an
           AVX2-only CPU (Eigen is compiled into the wheel for one ISA whatever the CPU)
  avx2     TF_ENABLE_ONEDNN_OPTS=1 ONEDNN_MAX_CPU_ISA=AVX2: a STAND-IN for the
           recommendation on an AVX2-only CPU (oneDNN's AVX2 kernels on this CPU)
  late     no variable at start; the process sets TF_ENABLE_ONEDNN_OPTS to the opposite
           of TensorFlow's choice after `import tensorflow`, before loading the model:
           shows whether setting it late changes anything (the card says it does not)
The export: the demo's encoder (configs/demo/pretrain.gin and the demo/encoder.gin it
includes: R3D-18 at 0.25x, random weights: the same cost as trained), its training
clips (8 frames at 32 px), built and exported here unless --export_dir is given.
Processes run one at a time, the variants alternating within each repetition so that
load drift on a shared machine hits all alike. Rows: clips/s median (min..max) over the
processes (each process: the median of its calls), clips per CPU-second of the process
(steadier under load), the ratio to `on`, and how far each variant's embedding of the
same batch is from `on`'s (max|delta| / max|f|).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ONEDNN_ENV = 'TF_ENABLE_ONEDNN_OPTS'  # runtime/hardware.py (not imported by the child)
ISA_ENV = 'ONEDNN_MAX_CPU_ISA'
# Set by cvrl_tf beside ONEDNN_ENV (hardware.MARKER_ENV); not passed on to the children.
MARKER_ENV = 'CVRL_TF_SET_ONEDNN_OPTS'
VARIANTS = {  # name: (environment, what it stands for)
    'default': ({}, "TF's default here"),
    'on': ({ONEDNN_ENV: '1'}, "the model card's advice"),
    'off': ({ONEDNN_ENV: '0'}, "Eigen: TF's default on AVX2-only CPUs"),
    'avx2': ({ONEDNN_ENV: '1', ISA_ENV: 'AVX2'}, 'STAND-IN: the advice on AVX2-only CPUs'),
    'late': ({}, f'{ONEDNN_ENV} set after import'),
}
RESULT = 'RESULT '


# --------------------------------------------------------------------------- child
def child(args) -> int:
  """One fresh process: tensorflow + tensorflow_hub only; prints one RESULT json line."""
  start = time.perf_counter()
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import numpy as np
  import tensorflow as tf
  import tensorflow_hub as hub
  import common
  try:
    from tensorflow.python.util import _pywrap_util_port
    onednn = _pywrap_util_port.IsMklEnabled
  except ImportError:  # Private API: 'unknown' where it moved.
    onednn = lambda: None  # noqa: E731
  import_s = time.perf_counter() - start
  before = onednn()
  if args.late and before is not None:
    os.environ[ONEDNN_ENV] = '0' if before else '1'
  start = time.perf_counter()
  layer = hub.KerasLayer(args.export_dir)
  load_s = time.perf_counter() - start
  clips = tf.constant(np.random.default_rng(0).uniform(
      0, 1, [args.batch_size, args.frames, args.crop, args.crop, 3]).astype(np.float32))
  embedding = layer(clips).numpy()  # Traces.
  layer(clips).numpy()  # Warm-up.
  walls, cpus = [], []
  began = time.perf_counter()
  while len(walls) < args.min_calls or time.perf_counter() - began < args.seconds:
    wall, cpu = common.time_calls(lambda: layer(clips).numpy(), 1, warmup=0)
    walls += wall
    cpus += cpu
  leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'cvrl_tf')
  print(RESULT + json.dumps({
      'onednn': onednn(), 'onednn_at_import': before,
      'env': {k: os.environ.get(k) for k in (ONEDNN_ENV, ISA_ENV)},
      'walls': walls, 'cpus': cpus, 'import_s': import_s, 'load_s': load_s,
      'embedding': embedding.tolist(), 'leaked': leaked}), flush=True)
  return 1 if leaked else 0


# --------------------------------------------------------------------------- parent
def build_demo_export(folder: str) -> str:
  """The demo's encoder (random weights) and training clips, exported as cvrl_export
  does (from configs/demo/pretrain.gin, not from figures written here)."""
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import gin
  from cvrl_tf.cli import gin_files
  from cvrl_tf.cli import settings
  from cvrl_tf.models import backbone_io
  from cvrl_tf.models import r3d
  from cvrl_tf.protocols import pretrain
  from cvrl_tf.serving import export
  gin_files.parse(['demo/pretrain.gin'], [])
  recipe = settings.build_recipe('pretrain')
  gin.clear_config()
  encoder = r3d.build_backbone(recipe.encoder, output='pooled', use_sync_bn=False)
  spec = backbone_io.spec_dict(recipe.encoder, output='pooled', use_sync_bn=False)
  training = pretrain.training_clips(recipe.clips)
  return export.export_encoder(encoder, os.path.join(folder, 'demo_export'),
                               export.build_metadata(spec, training), verify=False)


def child_env(variant: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in (ONEDNN_ENV, ISA_ENV, MARKER_ENV)}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(VARIANTS[variant][0])
  return env


def child_command(args, shape, variant: str):
  frames, crop = shape
  return [sys.executable, os.path.abspath(__file__), '--child', f'--export_dir={args.export_dir}',
          f'--batch_size={args.batch_size}', f'--frames={frames}', f'--crop={crop}',
          f'--seconds={args.seconds}', f'--min_calls={args.min_calls}'] + (
              ['--late'] if variant == 'late' else [])


def parse_result(variant: str, proc: subprocess.CompletedProcess) -> dict:
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'{variant}: the fresh process failed ({proc.returncode}):\n'
                       f'{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len(RESULT):])


def run_processes(args, shape, variants, reps: int):
  """{variant: [result per process]}, the variants alternating within each repetition."""
  results = {v: [] for v in variants}
  for rep in range(reps):
    for v in variants:
      proc = subprocess.run(child_command(args, shape, v), env=child_env(v), text=True,
                            capture_output=True, check=False)
      results[v].append(parse_result(v, proc))
      r = results[v][-1]
      print(f'  rep {rep + 1}/{reps} {v:8s} oneDNN {_state(r["onednn"]):3s} '
            f'{args.batch_size / statistics.median(r["walls"]):8.1f} clips/s '
            f'({len(r["walls"])} calls; import {r["import_s"]:.1f} s, load '
            f'{r["load_s"]:.1f} s)', flush=True)
  return results


def _state(on) -> str:
  return 'unknown' if on is None else ('on' if on else 'off')


def table_rows(results, batch_size: int):
  """The table's rows, and the variant the ratios and deltas are to ('on' if run)."""
  import numpy as np  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  rates = {v: [batch_size / statistics.median(r['walls']) for r in rs]
           for v, rs in results.items()}
  reference = 'on' if 'on' in results else next(iter(results))
  ref_rate = statistics.median(rates[reference])
  ref_embedding = np.array(results[reference][0]['embedding'])
  rows = []
  for v, rs in results.items():
    states = sorted({_state(r['onednn']) for r in rs})
    if v == 'late':
      states = [f'{"/".join(states)} (set ={rs[0]["env"][ONEDNN_ENV]} late)']
    cpu = statistics.median([statistics.median(r['cpus']) for r in rs])
    delta = max(float(np.abs(np.array(r['embedding']) - ref_embedding).max()) for r in rs)
    environment = ' '.join(f'{k}={val}' for k, val in VARIANTS[v][0].items()) or '-'
    rows.append([v, environment, VARIANTS[v][1], '/'.join(states), len(rs),
                 _median_range(rates[v]), f'{batch_size / max(cpu, 1e-9):.1f}',
                 f'{statistics.median(rates[v]) / ref_rate:.2f}',
                 f'{delta / max(float(np.abs(ref_embedding).max()), 1e-12):.1e}'])
  return rows, reference


def _median_range(values, fmt='.1f') -> str:
  import common  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return common.median_range(values, fmt)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='smoke run: one fresh process (off), 2 clips, one call')
  parser.add_argument('--export_dir', default=None,
                      help='an export (cvrl_export) to time; default: build the demo one')
  parser.add_argument('--variants', default=','.join(VARIANTS), help=f'of {",".join(VARIANTS)}')
  parser.add_argument('--reps', type=int, default=3, help='processes per variant')
  parser.add_argument('--batch_size', type=int, default=16, help='clips per call')
  parser.add_argument('--seconds', type=float, default=3.0,
                      help='timed seconds per process (at least --min_calls calls)')
  parser.add_argument('--min_calls', type=int, default=3)
  # The fresh process (internal).
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--late', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--frames', type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument('--crop', type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)
  if args.quick:  # One fresh process: each costs a TensorFlow import (~5 CPU-s
    # on an AMD EPYC Zen 4).
    args.variants, args.reps, args.batch_size, args.seconds, args.min_calls = (
        'off', 1, 2, 0.0, 1)
  variants = args.variants.split(',')
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    parser.error(f'unknown variants {sorted(unknown)}; known: {",".join(VARIANTS)}')

  sys.path.insert(0, os.path.dirname(HERE))
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import cvrl_tf  # noqa: F401  (first, as everywhere: this process builds with oneDNN on)
  import common
  from cvrl_tf.serving import export
  load_start = common.load_average()
  with tempfile.TemporaryDirectory() as folder:
    if args.export_dir is None:
      args.export_dir = build_demo_export(folder)
    metadata = export.read_metadata(args.export_dir) or {}
    training = metadata.get('training') or {}
    shape = (training.get('num_frames') or 8, training.get('crop_size') or 32)
    results = run_processes(args, shape, variants, args.reps)
  rows, reference = table_rows(results, args.batch_size)
  print('\n' + common.machine_line('float32 (exports compute in float32)') +
        f' (at the start: {load_start:.2f}); this process has cvrl_tf, each row states '
        'its own process\'s oneDNN')
  print(f'{metadata.get("architecture")} x{metadata.get("width_multiplier")} export, '
        f'batches of {args.batch_size} x {shape[0]}x{shape[1]}x{shape[1]} clips, '
        f'hub.KerasLayer in a fresh python without cvrl_tf; {args.reps} process(es) per '
        f'variant, >= {args.seconds:g} s of calls each')
  common.print_table(['variant', 'environment', 'stands for', 'oneDNN', 'procs', 'clips/s',
                      'clips/CPU-s', f'x {reference}', 'max|d|/max|f|'], rows)
  rate = {row[0]: float(row[5].split()[0]) for row in rows}
  if 'off' in rate and 'avx2' in rate:
    print(f'AVX2-only CPU (stand-in): TF\'s default (Eigen) {rate["off"]:.1f} clips/s, '
          f'{ONEDNN_ENV}=1 (oneDNN AVX2) {rate["avx2"]:.1f}: '
          f'{rate["avx2"] / rate["off"]:.1f}x')
  if 'off' in rate and 'on' in rate:
    print(f'This CPU: {ONEDNN_ENV}=0 (Eigen) {rate["off"]:.1f} clips/s, {ONEDNN_ENV}=1 '
          f'{rate["on"]:.1f}: {rate["on"] / rate["off"]:.1f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
