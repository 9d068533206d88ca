"""`cvrl_inspect`: what a set of shards holds and every example in it that training
would skip (input/inspection.py does the work).

  cvrl_inspect --files='/data/k400/train-*.tfrecord' --need_label

Exit status 0: every example usable and every label in the label map; 1: something is
bad (listed, one line each); 2: a usage error.
"""

import sys

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf import records
from cvrl_tf.cli import failures
from cvrl_tf.cli import tool_flags
from cvrl_tf.input import inspection
from cvrl_tf.input import record_check
from cvrl_tf.input import shards

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('multi_string', 'files', [], 'TFRecord file pattern(s) to check; repeatable.'),
    ('string', 'label_map', None, 'Class names, one per line (default: the converter\'s '
     '<prefix>_label_map.txt beside the shards, if any).'),
    ('bool', 'need_label', False, 'Every example must carry a label (classification and '
     'test sets).'),
    ('string', 'decode', 'all', 'all: decode every frame; headers: read only the JPEG '
     'headers (several times faster; misses damage after the header).'),
    ('string', 'report', None, 'Also write the full report as JSON here.'),
    failures.VERBOSE_FLAG,
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)


def _inspect(argv, fv) -> int:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])} (give the shards '
                           f'with --files)')
  if not fv.files:
    raise errors.UserError("--files is required, e.g. --files='/data/train-*.tfrecord'")
  if fv.decode not in record_check.DECODE_MODES:
    raise errors.UserError(f'--decode must be one of {record_check.DECODE_MODES}')
  label_map = (records.read_label_map(fv.label_map) if fv.label_map else
               shards.label_map_beside(shards.list_files(fv.files, validate=False)))
  if fv.label_map and not label_map:
    raise errors.UserError(f'--label_map {fv.label_map!r} holds no class names')
  report = inspection.inspect_shards(fv.files, label_map, fv.need_label, fv.decode,
                                     progress_stream=sys.stderr)
  for line in inspection.summary_lines(report):
    print(line)
  if fv.report:
    files_lib.write_json(fv.report, report)
  return 0 if report['ok'] else 1


def main(argv) -> int:
  fv = TOOL_FLAGS.values()
  return failures.run_reporting('cvrl_inspect', lambda: _inspect(argv, fv), fv.verbose)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
