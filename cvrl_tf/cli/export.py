"""`cvrl_export`: a pretraining run's backbone as a TF Hub SavedModel (serving/export.py),
with a model card (README.md) saying how to feed it and how to load it fast without cvrl_tf."""

import os

from cvrl_tf import errors
from cvrl_tf.cli import failures
from cvrl_tf.cli import tool_flags
from cvrl_tf.serving import export

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('string', 'model_dir', None, 'Pretraining model dir (holds backbone/).'),
    ('string', 'export_dir', None, 'Where to write the SavedModel.'),
    ('bool', 'with_projection_head', False,
     'Also export the projection head (signature "projection").'),
    ('bool', 'overwrite', False, 'Replace an existing export_dir.'),
    failures.VERBOSE_FLAG,
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag_values = TOOL_FLAGS.values


def _export(argv, fv) -> int:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not fv.model_dir or not fv.export_dir:
    raise errors.UserError('--model_dir and --export_dir are required.')
  path = export.export_model_dir(fv.model_dir, fv.export_dir, fv.with_projection_head,
                                 fv.overwrite)
  metadata = export.read_metadata(path)
  print(f'Exported {metadata["architecture"]} ({metadata["embedding_dim"]}-d embedding'
        f'{", projection head" if metadata.get("projection_dim") else ""}) to {path}')
  env = ' '.join(f'{k}={v}' for k, v in export.CPU_KERNELS['env'].items())
  print(f'Model card: {os.path.join(path, export.MODEL_CARD)}. Loading it without cvrl_tf '
        f'on a CPU? Set {env} before TensorFlow is imported (AVX2-only CPUs otherwise get '
        f"TensorFlow's slow Eigen kernels; the card says why).")
  return 0


def main(argv) -> int:
  """`cvrl_export --model_dir=... --export_dir=...`; a mistake: one line, exit status 2."""
  tool_flags.quiet_info_logs()
  fv = _flag_values()
  return failures.run_reporting('cvrl_export', lambda: _export(argv, fv), fv.verbose)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
