#!/usr/bin/env python
"""`make bench`: runs every benchmark in turn (pass --quick for a smoke run).

Each benchmark prints its own table (warm-up excluded, median and min..max of several
repetitions); record new figures in benchmarks/README.md with the machine and its load.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ('bench_convert.py', 'bench_input.py', 'bench_train_step.py',
              'bench_e2e.py', 'bench_gather.py', 'bench_demo_step.py', 'bench_embed.py',
              'bench_export.py', 'bench_vs_model_garden.py', 'bench_kernel_gradient.py')
# Benchmarks with a make target of their own, left out of `make bench` (and why).
SEPARATE = {'bench_quality.py': 'make bench-quality: hours of pretraining runs on 2 cores'}


def main(argv):
  failed = []
  for name in BENCHMARKS:
    print(f'=== {name} {" ".join(argv)}', flush=True)
    if subprocess.call([sys.executable, os.path.join(HERE, name)] + argv) != 0:
      failed.append(name)
  if failed:
    print(f'failed: {", ".join(failed)}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
