"""Input listings for the converter: which video files, with which labels.

Three layouts, each turned into the same `Listing` (items in a deterministic order plus
the malformed rows found, with file and line number, so that one bad row never stops a
conversion):
  * Kinetics CSV: `label,youtube_id,time_start,time_end,split` with a header row.
  * Class folders (UCF-101 / HMDB-51): ROOT/<class>/<video>, optionally restricted by
    official split files (UCF `trainlist0N.txt`/`testlist0N.txt`, HMDB
    `<class>_test_splitN.txt`).
  * Plain CSV: `path[,label]`; a missing or empty label means unlabeled.

Problems with the listing as a whole (missing file, missing columns, bad pattern) raise
`SourceError`: they are usage errors, not data errors.
"""

import collections
import csv
import dataclasses
import glob
import io
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from cvrl_tf import errors as errors_lib
from cvrl_tf import files as files_lib

VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg',
                    '.flv', '.3gp', '.wmv', '.ogv')
KINETICS_REQUIRED = ('label', 'youtube_id', 'time_start', 'time_end')
DEFAULT_KINETICS_PATTERN = '{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4'
SPLITS = ('train', 'test')
_HMDB_SPLIT_FILE = re.compile(r'^(?P<label>.+)_test_split\d+\.txt$')
_HMDB_CODES = {'train': '1', 'test': '2'}
_CLASS_INDEX_LINE = re.compile(r'^\d+\s+(\S.*)$')


class SourceError(errors_lib.UserError):
  """The listing itself is unusable (a usage error: nothing should be written)."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One video to convert. `label` None = unlabeled; start/end in seconds, None = whole."""
  path: str
  label: Optional[str]
  media_id: str
  start: Optional[float] = None
  end: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class RowError:
  """A malformed row: where (file and 1-based line) and why."""
  source: str
  line: int
  reason: str

  def to_dict(self) -> Dict[str, object]:
    return {'source': self.source, 'line': self.line, 'reason': self.reason}

  def __str__(self):
    return f'{self.source}:{self.line}: {self.reason}'


@dataclasses.dataclass
class Listing:
  items: List[Item]
  errors: List[RowError]
  settings: Dict[str, object]  # what was listed and how; recorded in the manifest


def check_items(items: Sequence[Item], label_index: Dict[str, int]
                ) -> Tuple[List[Item], List[Tuple[Item, str]]]:
  """Splits items into (kept, [(rejected, reason)]): a video listed twice is converted
  once, media ids must be unique (they name records), labels must be in the label map."""
  kept, rejected, seen = [], [], set()
  for item in items:
    key = (item.path, item.start, item.end)
    if key in seen:
      rejected.append((item, 'listed twice; converted once'))
    elif item.media_id in seen:
      rejected.append((item, f'media_id {item.media_id!r} already used by another video'))
    elif item.label is not None and item.label not in label_index:
      rejected.append((item, f'label {item.label!r} not in the class list'))
    else:
      seen.update((key, item.media_id))
      kept.append(item)
  return kept, rejected


def _open_text(path: str):
  """A listing file as text, local or on any filesystem tf.io.gfile reads (gs://...)."""
  if not files_lib.exists(path) or files_lib.isdir(path):
    raise SourceError(f'listing file not found: {path}')
  if files_lib.is_local(path):
    return open(path, newline='', encoding='utf-8-sig')
  with files_lib.open_file(path, 'rb') as f:
    return io.StringIO(f.read().decode('utf-8-sig'), newline='')


def _join(base: str, path: str) -> str:
  """`path` under `base` unless it is absolute or a URL (gs://...)."""
  return path if '://' in path else os.path.join(base, path)


def _number(text: str):
  """Seconds from a CSV field: int when integral (so `:06d` patterns work), else float."""
  value = float(text)
  if not math.isfinite(value) or value < 0:
    raise ValueError(f'not a non-negative number: {text!r}')
  return int(value) if value == int(value) else value


def list_kinetics(csv_path: str, video_root: str,
                  filename_pattern: str = DEFAULT_KINETICS_PATTERN, trim: bool = False,
                  split: Optional[str] = None) -> Listing:
  """Kinetics annotation CSV -> items. `trim` decodes only [time_start, time_end] of each
  file (for untrimmed downloads); `split` keeps only rows whose split column matches."""
  fields = dict(label='a b', label_underscored='a_b', youtube_id='x', time_start=0,
                time_end=10, split='train')
  try:
    filename_pattern.format(**fields)
  except (KeyError, IndexError, ValueError) as e:
    raise SourceError(f'bad --filename_pattern {filename_pattern!r} ({e!r}); fields: '
                      f'{", ".join(sorted(fields))}') from e
  items, errors = [], []
  name = os.path.basename(csv_path)
  with _open_text(csv_path) as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in KINETICS_REQUIRED if c not in header]
    if missing:
      raise SourceError(f'{csv_path}: header lacks column(s) {missing}; expected '
                        f'{",".join(KINETICS_REQUIRED)},split')
    reader.fieldnames = header
    for row in reader:
      line = reader.line_num
      if None in row or None in row.values():  # too many / too few fields
        errors.append(RowError(name, line, f'expected {len(header)} fields'))
        continue
      row = {k: v.strip() for k, v in row.items()}
      if split is not None and row.get('split', '') != split:
        continue
      if not row['youtube_id']:
        errors.append(RowError(name, line, 'empty youtube_id'))
        continue
      try:
        t0, t1 = _number(row['time_start']), _number(row['time_end'])
      except ValueError as e:
        errors.append(RowError(name, line, f'bad time: {e}'))
        continue
      if t1 <= t0:
        errors.append(RowError(name, line, f'time_end {t1} <= time_start {t0}'))
        continue
      values = dict(label=row['label'], label_underscored=row['label'].replace(' ', '_'),
                    youtube_id=row['youtube_id'], time_start=t0, time_end=t1,
                    split=row.get('split', ''))
      try:
        rel = filename_pattern.format(**values)
      except ValueError as e:
        errors.append(RowError(name, line, f'cannot apply --filename_pattern: {e}'))
        continue
      both_int = isinstance(t0, int) and isinstance(t1, int)
      media_id = (f'{values["youtube_id"]}_{t0:06d}_{t1:06d}' if both_int
                  else f'{values["youtube_id"]}_{t0}_{t1}')
      items.append(Item(os.path.join(video_root, rel), row['label'] or None, media_id,
                        float(t0) if trim else None, float(t1) if trim else None))
  settings = dict(kind='kinetics_csv', kinetics_csv=files_lib.abspath(csv_path),
                  video_root=files_lib.abspath(video_root), filename_pattern=filename_pattern,
                  trim=bool(trim), split=split)
  return Listing(items, errors, settings)


def _is_video(name: str) -> bool:
  return not name.startswith('.') and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _media_id(rel_path: str) -> str:
  return os.path.splitext(rel_path.replace(os.sep, '/'))[0]


def _walk_class_folders(root: str) -> List[Item]:
  items = []
  for label in sorted(os.listdir(root)):
    class_dir = os.path.join(root, label)
    if label.startswith('.') or not os.path.isdir(class_dir):
      continue
    for dirpath, dirnames, filenames in os.walk(class_dir):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      for fname in sorted(filter(_is_video, filenames)):
        path = os.path.join(dirpath, fname)
        items.append(Item(path, label, _media_id(os.path.relpath(path, root))))
  return items


def _read_split_file(path: str, root: str, split: Optional[str],
                     items: List[Item], errors: List[RowError]) -> None:
  name = os.path.basename(path)
  hmdb = _HMDB_SPLIT_FILE.match(name)
  file_split = None
  if not hmdb:
    file_split = ('train' if name.lower().startswith('trainlist') else
                  'test' if name.lower().startswith('testlist') else None)
    if split is not None and file_split is not None and file_split != split:
      return  # a UCF list of the other split
  with _open_text(path) as f:
    for line_no, line in enumerate(f, start=1):
      tokens = line.split()
      if not tokens:
        continue
      if hmdb:
        if len(tokens) != 2 or tokens[1] not in ('0', '1', '2'):
          errors.append(RowError(name, line_no, 'expected "<video> <0|1|2>"'))
          continue
        if tokens[1] != _HMDB_CODES[split]:
          continue
        label, rel = hmdb.group('label'), f'{hmdb.group("label")}/{tokens[0]}'
      else:
        if len(tokens) > 2 or '/' not in tokens[0] or (
            len(tokens) == 2 and not tokens[1].isdigit()):
          errors.append(RowError(name, line_no, 'expected "<Class>/<video> [index]"'))
          continue
        rel = tokens[0]
        label = rel.rsplit('/', 1)[0]
      items.append(Item(os.path.join(root, *rel.split('/')), label, _media_id(rel)))


def list_class_folders(root: str, split_files: Sequence[str] = (),
                       split: Optional[str] = None) -> Listing:
  """ROOT/<class>/<video> -> items; split files (globs allowed) select the videos."""
  if not os.path.isdir(root):
    raise SourceError(f'--class_folders is not a directory: {root}')
  if split is not None and split not in SPLITS:
    raise SourceError(f'--split must be one of {SPLITS} with split files, got {split!r}')
  paths = []
  for pattern in split_files:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
      raise SourceError(f'--split_file matches no file: {pattern}')
    paths.extend(matches)
  if any(_HMDB_SPLIT_FILE.match(os.path.basename(p)) for p in paths) and split is None:
    raise SourceError('HMDB-51 split files need --split=train or --split=test')
  items, errors = [], []
  if paths:
    for path in paths:
      _read_split_file(path, root, split, items, errors)
  else:
    items = _walk_class_folders(root)
  settings = dict(kind='class_folders', class_folders=os.path.abspath(root),
                  split_files=[os.path.abspath(p) for p in paths], split=split)
  return Listing(items, errors, settings)


def list_csv(csv_path: str, video_root: Optional[str] = None) -> Listing:
  """`path[,label]` rows -> items. Relative paths are taken from `video_root`, else from
  the CSV's own folder (so a dataset folder can be moved as a whole). An optional header
  row starting with `path` is skipped."""
  base = video_root if video_root else os.path.dirname(files_lib.abspath(csv_path))
  items, errors = [], []
  name = os.path.basename(csv_path)
  with _open_text(csv_path) as f:
    reader = csv.reader(f)
    first = True
    for row in reader:
      line = reader.line_num
      row = [c.strip() for c in row]
      if not any(row):
        continue
      if first and row[0].lower() == 'path':
        first = False
        continue
      first = False
      if len(row) > 2:
        errors.append(RowError(name, line, f'expected "path[,label]", got {len(row)} fields'))
        continue
      if not row[0]:
        errors.append(RowError(name, line, 'empty path'))
        continue
      label = row[1] if len(row) == 2 and row[1] else None
      items.append(Item(_join(base, row[0]), label, _media_id(row[0])))
  settings = dict(kind='csv', csv=files_lib.abspath(csv_path),
                  video_root=files_lib.abspath(video_root) if video_root else None)
  return Listing(items, errors, settings)


def read_class_list(path: str) -> List[str]:
  """Class names, one per line, in label-index order. UCF-101's `classInd.txt` (every line
  `<index> <name>`) is accepted too."""
  with _open_text(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  if not lines:
    raise SourceError(f'{path}: empty class list')
  matches = [_CLASS_INDEX_LINE.match(line) for line in lines]
  names = [m.group(1).strip() for m in matches] if all(matches) else lines
  counts = collections.Counter(names)
  duplicates = sorted(n for n, c in counts.items() if c > 1)
  if duplicates:
    raise SourceError(f'{path}: duplicate class names {duplicates}')
  return names
