"""What a set of TFRecord shards holds, and every example in it that cannot be used:
the work of `cvrl_inspect` (cli/inspect.py), before a long run rather than during it.

Records are read as training reads them (shards.read_records: each file tolerantly, a
damaged file named) and checked in parallel in tf.data by the same guard
(bad_examples.guarded_map): every frame decoded (or, with decode='headers', only its
JPEG header read), all frames of the same size, frames present, a label when asked.
Why an example failed is found out in Python (record_check). Labels are checked
against the label map: an index outside it, or a name that differs from its line.
Records of other tools (Model Garden / DMVR: no video/num_frames or video/frame_rate,
class name in clip/label/text) are read like ours and counted apart.
"""

import collections
import statistics
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from cvrl_tf import progress as progress_lib
from cvrl_tf import records
from cvrl_tf.input import bad_examples
from cvrl_tf.input import record_check
from cvrl_tf.input import shards

_OTHER_KEYS = {'clip/label/text': tf.io.FixedLenFeature([], tf.string, default_value='')}


def _facts_fn(need_label: bool, decode: str):
  """Graph function (record size, (file, index, record)) -> facts of a usable record;
  it fails (and the guard reports the record) on anything training would fail on."""

  def facts(size, triple):
    ex = shards.parse_checked(*triple, need_label=need_label)
    context, _ = tf.io.parse_single_sequence_example(triple[2], context_features={
        **_OTHER_KEYS, records.NUM_FRAMES_KEY: tf.io.FixedLenFeature([], tf.int64, -1)})
    if decode == 'all':
      shape = lambda j: tf.shape(tf.image.decode_jpeg(j, channels=3))[:2]
    else:
      shape = lambda j: tf.image.extract_jpeg_shape(j)[:2]
    sizes = tf.map_fn(shape, ex['frames'], fn_output_signature=tf.TensorSpec([2], tf.int32))
    with tf.control_dependencies([tf.debugging.assert_equal(
        sizes, tf.broadcast_to(sizes[0], tf.shape(sizes)), message='frame sizes differ')]):
      height = tf.identity(sizes[0, 0])
    name = tf.where(ex['label_name'] != '', ex['label_name'], context['clip/label/text'])
    return {'media_id': ex['media_id'], 'label': ex['label'], 'label_name': name,
            'fps': ex['fps'], 'num_frames': ex['num_frames'], 'height': height,
            'width': sizes[0, 1], 'bytes': size,
            'ours': context[records.NUM_FRAMES_KEY] >= 0}
  return tf.autograph.experimental.do_not_convert(facts)


def _label_problem(label: int, name: str, label_map: Optional[List[str]]) -> Optional[str]:
  if label_map is None or label < 0:
    return None
  if label >= len(label_map):
    return f'label {label} is outside the label map ({len(label_map)} classes)'
  if name and name != label_map[label]:
    return f'label {label} is {label_map[label]!r} in the label map but {name!r} here'
  return None


def inspect_shards(file_patterns: Sequence[str], label_map: Optional[List[str]] = None,
                   need_label: bool = False, decode: str = 'all',
                   progress_stream=progress_lib.STDERR) -> Dict[str, object]:
  """Reads every record of the shards once; returns the report (see `summary_lines`)."""
  if decode not in record_check.DECODE_MODES:
    raise ValueError(f'decode must be one of {record_check.DECODE_MODES}, got {decode!r}')
  stream = progress_lib.resolve_stream(progress_stream)
  files = shards.list_files(file_patterns, validate=False)
  total_mb = sum(tf.io.gfile.stat(f).length for f in files) / 2**20
  tracker = bad_examples.BadExamples(None, 'inspect', None, need_label, stream,
                                     keep_earlier=False)
  ds = shards.read_records(files, False, False, None, 16, False)
  ds = ds.map(lambda f, i, r: (tf.strings.length(r), (f, i, r)))
  ds = bad_examples.guarded_map(ds, _facts_fn(need_label, decode), tracker)
  progress = progress_lib.Progress(max(1, int(round(total_mb))), stream=stream, unit='MB')
  lengths, sizes, fps, labels, other = [], collections.Counter(), collections.Counter(), \
      collections.Counter(), 0
  label_problems, read_bytes = [], 0
  for batch in ds.batch(256).prefetch(2).as_numpy_iterator():
    for k in range(len(batch['media_id'])):
      media_id = batch['media_id'][k].decode('utf-8', 'replace')
      lengths.append(int(batch['num_frames'][k]))
      sizes[f'{batch["height"][k]}x{batch["width"][k]}'] += 1
      fps[float(batch['fps'][k]) or 'missing'] += 1
      label, name = int(batch['label'][k]), batch['label_name'][k].decode('utf-8', 'replace')
      labels[label] += 1
      other += not batch['ours'][k]
      problem = _label_problem(label, name, label_map)
      if problem:
        label_problems.append({'media_id': media_id, 'label': label, 'reason': problem})
    read_bytes += int(batch['bytes'].sum())
    while progress.done < min(int(read_bytes / 2**20), progress.total - 1):
      progress.advance()
  while progress.done < progress.total:  # The rest, bad records included.
    progress.advance()
  bad = tracker.examples
  return {
      'files': len(files), 'examples': len(lengths) + sum(e['record'] >= 0 for e in bad),
      'usable_examples': len(lengths), 'frames': sum(lengths),
      'frames_per_video': ({'min': min(lengths), 'median': statistics.median(lengths),
                            'max': max(lengths)} if lengths else None),
      'frame_sizes': dict(sizes.most_common()),
      'fps': {str(k): v for k, v in fps.most_common()},
      'labels': {str(k): v for k, v in sorted(labels.items())},
      'label_map_classes': None if label_map is None else len(label_map),
      'other_tool_records': other, 'decode': decode,
      'bad_examples': bad, 'label_problems': label_problems,
      'ok': not bad and not label_problems}


def summary_lines(report: Dict[str, object]) -> List[str]:
  """The report as a few lines for a person, then one line per problem."""
  fpv = report['frames_per_video'] or {}
  labels = report['labels']
  unlabelled = labels.get(str(records.UNLABELED), 0)
  classes = len([k for k in labels if int(k) >= 0])
  in_map = report['label_map_classes']
  lines = [
      f'{report["files"]} files, {report["examples"]} examples, '
      f'{len(report["bad_examples"])} bad, {report["frames"]} frames '
      f'(per video min {fpv.get("min", 0)} / median {fpv.get("median", 0)} / max '
      f'{fpv.get("max", 0)})',
      'frame sizes: ' + ', '.join(f'{k} ({v})' for k, v in report['frame_sizes'].items()),
      'fps: ' + ', '.join(f'{k} ({v})' for k, v in report['fps'].items()),
      f'labels: {classes} classes used' + (f' of {in_map} in the label map' if in_map
                                           else '') + f', {unlabelled} unlabelled',
      f'records of other tools (Model Garden / DMVR keys): {report["other_tool_records"]}']
  for e in report['bad_examples']:
    where = 'damaged file' if e['record'] < 0 else f'record {e["record"]}'
    lines.append(f'BAD {e["shard"]} {where} media_id={e["media_id"] or "?"}: '
                 f'{e["reason"]}')
  for e in report['label_problems']:
    lines.append(f'LABEL media_id={e["media_id"]}: {e["reason"]}')
  return lines
