"""`cvrl_synth`: the embedded synthetic dataset (convert/synthetic.py) as mp4 files."""

import sys

from cvrl_tf.cli import tool_flags
from cvrl_tf.convert import pool as pool_lib
from cvrl_tf.convert.synthetic import CLASSES, Config, generate

_FLAGS = [  # (kind, name, default, help)
    ('string', 'output_dir', None, 'Folder for the videos, CSVs and class list.'),
    ('integer', 'num_train', 24, 'Training videos per class.'),
    ('integer', 'num_test', 8, 'Test videos per class.'),
    ('integer', 'size', 64, 'Frame side in pixels (even).'),
    ('float', 'seconds', 2.0, 'Video length in seconds.'),
    ('float', 'fps', 25.0, 'Frame rate.'),
    ('integer', 'seed', 0, 'Seed: same seed, same dataset.'),
    ('integer', 'workers', None, 'Processes (default: all cores; 0 = none).'),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag = TOOL_FLAGS.value


def main(argv):
  """absl entry point: exit 0 on success, 2 on a usage error."""
  v = vars(TOOL_FLAGS.values())
  if len(argv) > 1 or not v['output_dir']:
    print('cvrl_synth: error: usage: cvrl_synth --output_dir=DIR [--num_train=N '
          '--num_test=N --size=PX --seconds=S --fps=F --seed=S]', file=sys.stderr)
    return 2
  if (v['size'] % 2 or v['size'] < 16 or v['seconds'] <= 0 or v['fps'] <= 0
      or min(v['num_train'], v['num_test']) < 0 or (v['workers'] or 0) < 0):
    print('cvrl_synth: error: need an even --size >= 16, positive --seconds/--fps and '
          'non-negative counts', file=sys.stderr)
    return 2
  workers = pool_lib.default_workers() if v['workers'] is None else v['workers']
  cfg = Config(size=v['size'], seconds=v['seconds'], fps=v['fps'])
  paths = generate(v['output_dir'], v['num_train'], v['num_test'], v['seed'], cfg, workers,
                   log=sys.stderr)
  print(f'cvrl_synth: {len(CLASSES)} classes x ({v["num_train"]} train + {v["num_test"]} '
        f'test) videos in {v["output_dir"]}; lists: {paths["train"]}, {paths["test"]}, '
        f'classes: {paths["classes"]}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
