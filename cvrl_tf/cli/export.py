"""`cvrl_export`: a pretraining run's backbone as a TF Hub SavedModel (serving/export.py)."""

import sys

from cvrl_tf.cli import tool_flags
from cvrl_tf.serving.export import export_model_dir, read_metadata

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('string', 'model_dir', None, 'Pretraining model dir (holds backbone/).'),
    ('string', 'export_dir', None, 'Where to write the SavedModel.'),
    ('bool', 'with_projection_head', False,
     'Also export the projection head (signature "projection").'),
    ('bool', 'overwrite', False, 'Replace an existing export_dir.'),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag_values = TOOL_FLAGS.values


def main(argv) -> int:
  """`cvrl_export --model_dir=... --export_dir=...`; exit code 1 with a message on error."""
  del argv
  tool_flags.quiet_info_logs()
  fv = _flag_values()
  if not fv.model_dir or not fv.export_dir:
    print('cvrl_export: --model_dir and --export_dir are required.', file=sys.stderr)
    return 1
  try:
    path = export_model_dir(fv.model_dir, fv.export_dir, fv.with_projection_head,
                            fv.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'cvrl_export: error: {e}', file=sys.stderr)
    return 1
  metadata = read_metadata(path)
  print(f'Exported {metadata["architecture"]} ({metadata["embedding_dim"]}-d embedding'
        f'{", projection head" if metadata.get("projection_dim") else ""}) to {path}')
  return 0


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
