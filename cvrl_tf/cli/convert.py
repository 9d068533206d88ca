"""`cvrl_convert`: videos to TFRecord shards (convert/convert.py does the work).

With `--runner=...` the shards are written by Apache Beam (convert/convert_beam.py); the
command line's other `--name=value` arguments are then Beam pipeline options.
"""

import sys

from absl import flags

from cvrl_tf.cli import quiet
from cvrl_tf.cli import tool_flags
from cvrl_tf.convert import sources
from cvrl_tf.convert.convert import (_SIZE_SAMPLE, DEFAULT_DECODE_TIMEOUT, Options,
                                  UsageError, convert, validate)

# ---------------------------------------------------------------------------------------
# Command line.

_FLAGS = [  # (kind, name, default, help)
    ('string', 'kinetics_csv', None, 'Kinetics CSV (label,youtube_id,time_start,'
     'time_end,split with a header) -- input layout 1.'),
    ('string', 'video_root', None, 'Folder of the Kinetics videos (and base of relative '
     'paths of --csv; default: the CSV folder).'),
    ('string', 'filename_pattern', sources.DEFAULT_KINETICS_PATTERN, 'Path of a Kinetics '
     'video under --video_root; fields: label, label_underscored, youtube_id, time_start, '
     'time_end, split.'),
    ('bool', 'trim', False, 'Kinetics: the files are untrimmed; keep only '
     '[time_start, time_end].'),
    ('string', 'class_folders', None, 'ROOT with one folder per class (UCF-101 / '
     'HMDB-51) -- input layout 2.'),
    ('multi_string', 'split_file', [], 'UCF-101 trainlist/testlist or HMDB-51 '
     '<class>_test_splitN.txt; repeatable, globs allowed.'),
    ('string', 'split', None, 'train|test for split files (HMDB-51 needs it); for '
     'Kinetics, keep only rows with this split value.'),
    ('string', 'csv', None, 'CSV of path[,label] rows (empty label = unlabeled) -- '
     'input layout 3.'),
    ('string', 'output_dir', None, 'Output folder (created if needed).'),
    ('string', 'prefix', 'data', 'Shard name prefix: PREFIX-00000-of-000NN.tfrecord.'),
    ('integer', 'num_shards', 0, 'Number of shards; 0 = from --shard_size_mb.'),
    ('float', 'shard_size_mb', 200.0, 'Target shard size when --num_shards=0, estimated '
     f'from the first {_SIZE_SAMPLE} videos.'),
    ('string', 'class_list', None, 'Class names in label-index order (default: sorted '
     'labels); UCF classInd.txt works.'),
    ('float', 'fps', 0.0, 'Stored frame rate; 0 keeps the source rate (Kinetics: 25).'),
    ('integer', 'short_side', 256, 'Resize the short side to this (0 = keep).'),
    ('integer', 'jpeg_quality', 90, 'JPEG quality of stored frames.'),
    ('integer', 'workers', None, 'Decoding processes (default: all cores; 0 = none).'),
    ('integer', 'seed', 0, 'Seed of the shuffle of videos across shards.'),
    ('float', 'decode_timeout', DEFAULT_DECODE_TIMEOUT, 'Seconds one video may take to '
     'decode before its decoder process is killed and the video recorded as failed '
     '(0 = no limit; not enforced with --workers=0).'),
    ('string', 'runner', None, 'Write the shards with Apache Beam on this runner: '
     'DirectRunner (local, --workers processes), DataflowRunner, FlinkRunner, SparkRunner; '
     "the other --options are Beam's. Needs pip install 'cvrl_tf[beam]'."),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag = TOOL_FLAGS.value


def listing_from_flags() -> sources.Listing:
  inputs = [n for n in ('kinetics_csv', 'class_folders', 'csv') if _flag(n)]
  if len(inputs) != 1:
    raise UsageError('give exactly one of --kinetics_csv, --class_folders, --csv'
                     + (f' (got {", ".join(inputs)})' if inputs else ''))
  kind = inputs[0]
  if kind != 'kinetics_csv' and (_flag('trim') or TOOL_FLAGS.given('filename_pattern')):
    raise UsageError('--trim and --filename_pattern go with --kinetics_csv')
  if kind != 'class_folders' and _flag('split_file'):
    raise UsageError('--split_file goes with --class_folders')
  if kind == 'kinetics_csv':
    if not _flag('video_root'):
      raise UsageError('--kinetics_csv needs --video_root')
    return sources.list_kinetics(_flag('kinetics_csv'), _flag('video_root'),
                                 _flag('filename_pattern'), _flag('trim'), _flag('split'))
  if kind == 'class_folders':
    return sources.list_class_folders(_flag('class_folders'), _flag('split_file'),
                                      _flag('split'))
  return sources.list_csv(_flag('csv'), _flag('video_root'))


def parse_flags(argv):
  """absl's flags_parser: this tool's flags; what remains is for Beam (see main)."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    print(f'cvrl_convert: error: {e}', file=sys.stderr)
    sys.exit(2)


def beam_args_from_flags(rest) -> list:
  """The Beam pipeline options of the command line (None: no --runner, convert here)."""
  if not _flag('runner'):
    if rest:
      raise UsageError(f'unknown flags or arguments: {" ".join(rest)} (Beam pipeline options '
                       'go with --runner)')
    return None
  from cvrl_tf.convert import convert_beam  # pylint: disable=g-import-not-at-top
  beam_args = [f'--runner={_flag("runner")}', *rest]
  try:
    convert_beam.pipeline_options(beam_args, 1)
  except convert_beam.BeamArgsError as e:
    raise UsageError(str(e)) from e
  return beam_args


def main(argv):
  """absl entry point: exit 0 all converted, 1 some failed, 2 usage error."""
  # TensorFlow is only a record writer here: silence its device-probing noise.
  quiet.tensorflow_errors_off()
  try:
    if TOOL_FLAGS.given('num_shards') and TOOL_FLAGS.given('shard_size_mb'):
      raise UsageError('give --num_shards or --shard_size_mb, not both')
    opts = Options(**{k: _flag(k) for k in (
        'output_dir', 'prefix', 'num_shards', 'shard_size_mb', 'fps', 'short_side',
        'jpeg_quality', 'workers', 'seed', 'class_list', 'decode_timeout')})
    validate(opts)
    beam_args = beam_args_from_flags(argv[1:])
    return convert(listing_from_flags(), opts, log=sys.stderr,
                   beam_args=beam_args).exit_code
  except (UsageError, sources.SourceError) as e:
    print(f'cvrl_convert: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('\ncvrl_convert: interrupted; rerun the same command to resume', file=sys.stderr)
    return 130


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
