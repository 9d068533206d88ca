"""`cvrl_import`: a Model Garden CVRL checkpoint as a cvrl_tf model dir, or the reverse
(interop/transfer.py).

  cvrl_import --checkpoint=r3d_1x_k400_800ep.tar.gz --model_dir=/models/cvrl_k400_800ep
  cvrl_import --model_dir=/runs/pretrain --to_model_garden=/ckpt/r3d50_backbone

What no weight records (batch-norm epsilon and momentum, temporal strides of the stem and
its pool) is taken from the Model Garden experiment of the released checkpoint
(--release, found in the checkpoint's name by default), printed and kept in source.json;
the flags below replace single values for a checkpoint trained from another config.
"""

import sys

from absl import flags
from absl import logging

from cvrl_tf.cli import tool_flags

_FLAGS = [  # (kind, name, default, help); see tool_flags
    ('string', 'checkpoint', None, 'Model Garden checkpoint: a ckpt prefix, a checkpoint '
     'dir, the extracted release folder or the release .tar.gz.'),
    ('string', 'model_dir', None, 'The cvrl_tf model dir to write (import) or to read '
     '(with --to_model_garden).'),
    ('string', 'release', None, 'The released checkpoint this is: imagenet, '
     'r3d_1x_k400_200ep, r3d_1x_k400_800ep or r3d_1x_k600_800ep; its Model Garden '
     'experiment gives what no weight records. Default: the released name in the '
     'checkpoint\'s path, else video_ssl_pretrain (video_ssl\'s CVRL pretraining, whose '
     'settings all four share).'),
    ('float', 'bn_epsilon', None, 'Backbone batch-norm epsilon (default: the '
     'experiment\'s, 1e-5; not the NormActivation class default 1e-3).'),
    ('float', 'bn_momentum', None, 'Backbone batch-norm momentum, for fine-tuning after '
     'the import (default: the experiment\'s, 0.9).'),
    ('float', 'head_bn_epsilon', None, 'Projection-head batch-norm epsilon (default: the '
     'experiment\'s, 1e-5).'),
    ('float', 'head_bn_momentum', None, 'Projection-head batch-norm momentum (default: '
     'the experiment\'s, 0.997).'),
    ('integer', 'stem_conv_temporal_stride', None, 'Temporal stride of the stem conv '
     '(default: the experiment\'s, 2).'),
    ('integer', 'stem_pool_temporal_stride', None, 'Temporal stride of the stem max-pool '
     '(default: the experiment\'s, 1).'),
    ('string', 'backbone', None, 'Architecture the checkpoint must have (default: the '
     'experiment\'s, r3d50).'),
    ('list', 'temporal_kernel_sizes', None, 'Temporal kernel of res2..res5 the checkpoint '
     'must have (default: the experiment\'s, 1,1,3,3).'),
    ('integer', 'num_frames', None, 'training.json: frames per clip (default: the '
     'experiment\'s training clips, 16; imagenet: its linear evaluation\'s, 32).'),
    ('integer', 'frame_stride', None, 'training.json: frame stride (default: 2).'),
    ('integer', 'crop_size', None, 'training.json: crop size (default: 224).'),
    ('bool', 'overwrite', False, 'Replace an earlier import in --model_dir.'),
    ('string', 'to_model_garden', None, 'Reverse direction: write the backbone of '
     '--model_dir as a Model Garden checkpoint with this prefix.'),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag_values = TOOL_FLAGS.values


def _training(fv):
  """training.json values given (the rest: the experiment's clips)."""
  return {key: getattr(fv, key) for key in ('num_frames', 'frame_stride', 'crop_size')
          if getattr(fv, key) is not None}


def main(argv) -> int:
  """Exit code 2 with one line on a user error."""
  if len(argv) > 1:
    print(f'cvrl_import: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  if 'verbosity' in flags.FLAGS and not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  fv = _flag_values()
  # pylint: disable=g-import-not-at-top
  from cvrl_tf.interop import transfer as model_garden_io
  # pylint: enable=g-import-not-at-top
  try:
    if not fv.model_dir:
      raise ValueError('--model_dir is required')
    if fv.to_model_garden:
      if fv.checkpoint:
        raise ValueError('give --checkpoint (import) or --to_model_garden (export), '
                         'not both')
      model_garden_io.export_checkpoint(fv.model_dir, fv.to_model_garden, sys.stderr)
      return 0
    if not fv.checkpoint:
      raise ValueError('--checkpoint is required (or --to_model_garden for the reverse)')
    kernels = None
    if fv.temporal_kernel_sizes is not None:
      try:
        kernels = [int(k) for k in fv.temporal_kernel_sizes]
      except ValueError:
        raise ValueError(f'--temporal_kernel_sizes={",".join(fv.temporal_kernel_sizes)}: '
                         f'give 4 integers, e.g. 1,1,3,3') from None
    from cvrl_tf.interop import model_garden  # pylint: disable=g-import-not-at-top
    model_garden_io.import_checkpoint(
        fv.checkpoint, fv.model_dir, fv.backbone, kernels, _training(fv),
        fv.overwrite, progress_stream=sys.stderr, release=fv.release,
        **{flag: getattr(fv, flag) for flag in model_garden.FLAG_SETTINGS})
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'cvrl_import: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
