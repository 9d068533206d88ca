"""What a Model Garden R3D checkpoint holds, read off its variables' shapes before any
model is built, so a checkpoint of another architecture is refused with one line saying
what differs (instead of a restore error listing hundreds of objects).

Model Garden's trainer writes tf.train.Checkpoint(global_step, model, optimizer,
backbone=model.backbone); video_ssl's released files are
tf.train.Checkpoint(backbone=...). Keras tracks a functional model's weighted layers as
`layer_with_weights-N` in call order, so the backbone reads as: the stem's conv and BN,
then one entry per block holding its convs and BNs. A block's role in the layout follows
from shapes alone: the conv with a 3x3 spatial kernel gives the width, the 1x1 conv of
that width its temporal kernel, a fourth conv is the shortcut projection.
"""

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from cvrl_tf.models import r3d

_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_BN = ('beta', 'gamma', 'moving_mean', 'moving_variance')
_BOOKKEEPING = ('optimizer', 'global_step', 'save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH')
_INDEX = re.compile(r'layer_with_weights-(\d+)$')


@dataclasses.dataclass(frozen=True)
class Block:
  width: int            # of the temporal and spatial convs; the output has 4x
  out: int
  temporal_kernel: int
  projection: bool


@dataclasses.dataclass
class Layout:
  """The architecture a checkpoint's shapes describe."""
  prefix: str
  root: str         # what to restore: 'model' (with a head), 'backbone' or the
                    # backbone inside a head-less model, 'model/layer_with_weights-0'
  stem: List[Tuple[int, ...]]               # kernel shapes of the stem convs
  blocks: List[Block]
  extras: List[str]                         # variables that are no conv / BN / Dense
  head: Optional[Dict[str, int]] = None     # video_ssl MLP: hidden_layer_num, dims
  classifier: Optional[int] = None          # classes of a linear / classification head

  def stage_blocks(self) -> List[List[Block]]:
    stages = []
    for block in self.blocks:
      if not stages or stages[-1][-1].out != block.out:
        stages.append([])
      stages[-1].append(block)
    return stages


def resolve(path: str) -> str:
  """A checkpoint prefix from a prefix, a checkpoint dir or an extracted release folder."""
  if tf.io.gfile.exists(path + '.index'):
    return path
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(f'--checkpoint {path!r}: no such checkpoint (neither '
                            f'{path}.index nor a folder)')
  latest = tf.train.latest_checkpoint(path)
  if latest:
    return latest
  indices = sorted(os.path.join(root, name) for root, _, names in tf.io.gfile.walk(path)
                   for name in names if name.endswith('.index'))
  if len(indices) != 1:
    found = ', '.join(indices) if indices else 'none'
    raise FileNotFoundError(f'--checkpoint {path!r}: expected one checkpoint (*.index) '
                            f'in the folder, found {found}; pass the prefix itself')
  return indices[0][:-len('.index')]


def _tree(names_shapes: Dict[str, List[int]]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for name, shape in names_shapes.items():
    node = tree
    *parents, leaf = name.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = tuple(shape)
  return tree


def _leaves(node, path: str) -> List[str]:
  if not isinstance(node, dict):
    return [path]
  return [leaf for key, child in node.items() for leaf in _leaves(child, f'{path}/{key}')]


def _kind(node) -> Optional[str]:
  """'conv', 'bn', 'dense' for a layer's variables, else None."""
  if not isinstance(node, dict):
    return None
  if set(node) == {'kernel'} and len(node['kernel']) == 5:
    return 'conv'
  if set(node) == set(_BN):
    return 'bn'
  if set(node) == {'kernel', 'bias'} and len(node['kernel']) == 2:
    return 'dense'
  return None


def _indexed(node: Dict[str, Any], path: str, extras: List[str]) -> List[Tuple[str, Any]]:
  """The layer_with_weights-N children in order N; anything else goes to `extras`."""
  items = []
  for key, child in node.items():
    match = _INDEX.match(key)
    if match:
      items.append((int(match.group(1)), f'{path}/{key}', child))
    else:
      extras += _leaves(child, f'{path}/{key}')
  return [(p, c) for _, p, c in sorted(items)]


def _block(path: str, node: Dict[str, Any], extras: List[str]) -> Optional[Block]:
  convs, bns = [], 0
  for key, child in node.items():
    kind = _kind(child)
    if kind == 'conv':
      convs.append(child['kernel'])
    elif kind == 'bn':
      bns += 1
    else:
      extras += _leaves(child, f'{path}/{key}')
  spatial = [k for k in convs if k[1:3] != (1, 1)]
  if len(convs) not in (3, 4) or bns != len(convs) or len(spatial) != 1:
    extras.append(f'{path} (convs {convs}, {bns} batch norms: not a bottleneck block)')
    return None
  width = spatial[0][4]
  temporal = [k for k in convs if k[1:3] == (1, 1) and k[4] == width]
  out = max(k[4] for k in convs)
  return Block(width=width, out=out, temporal_kernel=temporal[0][0] if temporal else 0,
               projection=len(convs) == 4)


def read_layout(prefix: str) -> Layout:
  """The layout of the Model Garden R3D (and head) stored at `prefix`."""
  shapes = {name[:-len(_SUFFIX)]: shape for name, shape in tf.train.list_variables(prefix)
            if name.endswith(_SUFFIX) and '.OPTIMIZER_SLOT' not in name}
  tree = _tree(shapes)
  model = tree.get('model', {})
  extras: List[str] = []
  if 'backbone' in tree:
    backbone, path = tree['backbone'], 'backbone'
  elif 'layer_with_weights-0' in model:
    backbone, path = model['layer_with_weights-0'], 'model/layer_with_weights-0'
  else:
    raise ValueError(f'{prefix} holds no Model Garden backbone (variables under backbone/ '
                     f'or model/, as its trainer or tf.train.Checkpoint(backbone=...) '
                     f'writes them); top-level objects: {sorted(tree)}')
  for key in sorted(set(tree) - {'model', 'backbone', *_BOOKKEEPING}):
    extras += _leaves(tree[key], key)
  stem, blocks = [], []
  for sub_path, node in _indexed(backbone, path, extras):
    kind = _kind(node)
    if kind is None and isinstance(node, dict) and all(isinstance(v, dict) for v in node.values()):
      block = _block(sub_path, node, extras)
      blocks += [block] if block else []
    elif kind == 'conv' and not blocks:
      stem.append(node['kernel'])
    elif not (kind == 'bn' and not blocks):
      extras += _leaves(node, sub_path)
  layout = Layout(prefix=prefix, root=path, stem=stem, blocks=blocks, extras=extras)
  if model:
    _read_head(layout, model)
  if layout.head or layout.classifier:
    layout.root = 'model'
  return layout


def _read_head(layout: Layout, model: Dict[str, Any]) -> None:
  """video_ssl's MLP ((Dense, BN) x h, Dense) or a classifier's single Dense."""
  layers = [(p, c) for p, c in _indexed(model, 'model', layout.extras)
            if p != 'model/layer_with_weights-0']
  kinds = [_kind(node) for _, node in layers]
  hidden = (len(kinds) - 1) // 2
  if not kinds:
    return
  if kinds != ['dense', 'bn'] * hidden + ['dense']:
    layout.extras += [f'model head {[k or p for k, (p, _) in zip(kinds, layers)]} (not '
                      f'Dense/BN pairs then a Dense)']
  elif hidden == 0:
    layout.classifier = layers[0][1]['kernel'][1]
  else:
    layout.head = dict(hidden_layer_num=hidden, hidden_dim=layers[0][1]['kernel'][1],
                       projection_dim=layers[-1][1]['kernel'][1])


def difference(layout: Layout, settings: Dict[str, Any], asked: str) -> Optional[str]:
  """What differs between the checkpoint and the Model Garden `settings` asked for
  (model_garden.model_garden_settings), in one sentence; None when nothing does."""
  if layout.extras:
    more = f' (and {len(layout.extras) - 1} more)' if len(layout.extras) > 1 else ''
    return (f'the checkpoint has variables the CVRL R3D has no place for: '
            f'{layout.extras[0]}{more} (self-gating, squeeze-excitation or another '
            f'model)')
  stem_t = settings['stem_conv_temporal_kernel_size']
  if layout.stem != [(stem_t, 7, 7, 3, 64)]:
    return (f'its stem convs are {layout.stem}, {asked} has one of '
            f'{[stem_t, 7, 7, 3, 64]}')
  stages = layout.stage_blocks()
  counts = tuple(len(s) for s in stages)
  expected = tuple(len(k) for k in settings['temporal_kernel_sizes'])
  if counts != expected:
    known = [f'r3d{d}' for d, (kind, b) in r3d.LAYOUTS.items()
             if b == counts and kind == 'bottleneck']
    hint = f' ({known[0]}: pass --backbone={known[0]})' if known else ''
    return (f'it has {counts} blocks per stage{hint}, {asked} has {expected}')
  for name, stage, width, kernels in zip(r3d.STAGE_NAMES, stages, r3d.STAGE_WIDTHS,
                                         settings['temporal_kernel_sizes']):
    if {(b.width, b.out) for b in stage} != {(width, 4 * width)}:
      return (f'{name} has widths {sorted({b.width for b in stage})}, {asked} has '
              f'{width} (x4 out)')
    got = tuple(b.temporal_kernel for b in stage)
    if got != tuple(kernels):
      uniform = len(set(got)) == 1
      return (f'{name} has temporal kernels {got} per block, {asked} has '
              f'{tuple(kernels)}' + ('' if uniform else
                                     ': the CVRL R3D uses one temporal kernel per stage'))
    if not stage[0].projection or any(b.projection for b in stage[1:]):
      return f'{name} has shortcut projections in blocks other than its first'
  return None


def describe(layout: Layout) -> Dict[str, Any]:
  """The layout as plain data (saved with an import)."""
  return {
      'restored_from': layout.root,
      'blocks_per_stage': [len(s) for s in layout.stage_blocks()],
      'temporal_kernels': [[b.temporal_kernel for b in s] for s in layout.stage_blocks()],
      'stem_kernel': [list(k) for k in layout.stem],
      'projection_head': layout.head,
      'classifier_classes': layout.classifier,
  }

