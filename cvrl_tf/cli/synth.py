"""`cvrl_synth`: the embedded synthetic datasets as mp4 files: the demo set
(convert/synthetic.py) or, with --dataset=hard, the quality benchmark's
(convert/synthetic_hard.py, docs/quality.md)."""

import sys

from cvrl_tf.cli import tool_flags
from cvrl_tf.convert import pool as pool_lib
from cvrl_tf.convert import synthetic, synthetic_hard

DATASETS = {'demo': synthetic, 'hard': synthetic_hard}

_FLAGS = [  # (kind, name, default, help)
    ('string', 'output_dir', None, 'Folder for the videos, CSVs and class list.'),
    ('string', 'dataset', 'demo', 'demo (8 motion classes of dots) or hard (16 classes '
     'with shared appearance, drift and occlusion: docs/quality.md).'),
    ('integer', 'num_train', None, 'Training videos per class (demo 24, hard 16).'),
    ('integer', 'num_test', 8, 'Test videos per class.'),
    ('integer', 'size', 64, 'Frame side in pixels (even).'),
    ('float', 'seconds', None, 'Video length in seconds (demo 2, hard 3).'),
    ('float', 'fps', 25.0, 'Frame rate.'),
    ('integer', 'seed', 0, 'Seed: same seed, same dataset.'),
    ('integer', 'workers', None, 'Processes (default: all cores; 0 = none).'),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag = TOOL_FLAGS.value


def main(argv):
  """absl entry point: exit 0 on success, 2 on a usage error."""
  v = vars(TOOL_FLAGS.values())
  if v['dataset'] not in DATASETS:
    print(f'cvrl_synth: error: --dataset must be one of {sorted(DATASETS)}, got '
          f'{v["dataset"]!r}', file=sys.stderr)
    return 2
  module = DATASETS[v['dataset']]
  default = module.Config()
  if v['num_train'] is None:
    v['num_train'] = 24 if v['dataset'] == 'demo' else 16
  if v['seconds'] is None:
    v['seconds'] = default.seconds
  if len(argv) > 1 or not v['output_dir']:
    print('cvrl_synth: error: usage: cvrl_synth --output_dir=DIR [--dataset=demo|hard '
          '--num_train=N '
          '--num_test=N --size=PX --seconds=S --fps=F --seed=S]', file=sys.stderr)
    return 2
  if (v['size'] % 2 or v['size'] < 16 or v['seconds'] <= 0 or v['fps'] <= 0
      or min(v['num_train'], v['num_test']) < 0 or (v['workers'] or 0) < 0):
    print('cvrl_synth: error: need an even --size >= 16, positive --seconds/--fps and '
          'non-negative counts', file=sys.stderr)
    return 2
  workers = pool_lib.default_workers() if v['workers'] is None else v['workers']
  cfg = module.Config(size=v['size'], seconds=v['seconds'], fps=v['fps'])
  paths = module.generate(v['output_dir'], v['num_train'], v['num_test'], v['seed'], cfg,
                          workers, log=sys.stderr)
  print(f'cvrl_synth: {v["dataset"]}: {len(module.CLASSES)} classes x '
        f'({v["num_train"]} train + {v["num_test"]} '
        f'test) videos in {v["output_dir"]}; lists: {paths["train"]}, {paths["test"]}, '
        f'classes: {paths["classes"]}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
