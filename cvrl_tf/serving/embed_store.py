"""cvrl_embed's outputs, appended and resumed: PREFIX.npy, PREFIX_index.csv and
PREFIX_settings.json.

Why: feature extraction over a large dataset runs for hours; a killed run must leave
files that load, and re-running the same command must skip the videos already done and
append the rest. Every `flush` rewrites both files atomically, the .npy first: a kill
between the two renames leaves more .npy rows than the index names, and `open` drops
them. Failed videos are tried again on a re-run. The settings file guards against
appending features of another model or clip protocol.

Index columns: row (of the .npy, -1 for a failed video), path, label,
num_frames_decoded, status, error; with windows also video_row (the video's number in
this index, shared by its windows), start_s and end_s.
"""

import csv
import io
import os
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from cvrl_tf import files as files_lib

INDEX_SUFFIX = '_index.csv'
SETTINGS_SUFFIX = '_settings.json'
INDEX_COLUMNS = ('row', 'path', 'label', 'num_frames_decoded', 'status', 'error')
WINDOW_COLUMNS = INDEX_COLUMNS + ('video_row', 'start_s', 'end_s')


class OutputError(ValueError):
  """The existing output cannot be resumed with these settings; the message says why."""


class Store:
  """The rows and features written so far, plus those added since the last flush."""

  def __init__(self, prefix: str, settings: dict, windowed: bool):
    self.prefix, self.windowed = prefix, windowed
    self.settings = files_lib.normalized(settings)
    self.columns = WINDOW_COLUMNS if windowed else INDEX_COLUMNS
    self.rows: List[dict] = []
    self._features: List[np.ndarray] = []  # [n, D] blocks, in row order.
    self._num_features = 0

  @property
  def paths(self) -> Dict[str, str]:
    return {'npy': self.prefix + '.npy', 'index': self.prefix + INDEX_SUFFIX,
            'settings': self.prefix + SETTINGS_SUFFIX}

  def open(self) -> Set[str]:
    """Loads a previous run's output (if any) and returns the paths of its embedded
    videos (to skip); writes the settings of a new output."""
    paths = self.paths
    present = [k for k in ('npy', 'index') if os.path.exists(paths[k])]
    saved = files_lib.read_json(paths['settings'])
    if saved is None:
      if present:
        raise OutputError(f'{paths[present[0]]} exists but {paths["settings"]} does not '
                          f'(not a resumable cvrl_embed output): give another --output or '
                          f'delete it')
      os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
      files_lib.write_json(paths['settings'], self.settings)
      return set()
    if saved != self.settings:
      changed = sorted(k for k in set(saved) | set(self.settings)
                       if saved.get(k) != self.settings.get(k))
      raise OutputError(f'{self.prefix} was written with other settings ('
                        + ', '.join(f'{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} '
                                    f'now' for k in changed)
                        + '): give another --output or the same flags')
    if len(present) < 2:
      return set()  # Killed before the first flush.
    with open(paths['index'], encoding='utf-8', newline='') as f:
      rows = [r for r in csv.DictReader(f) if r['status'] == 'ok']
    features = np.load(paths['npy'])
    used = 1 + max((int(r['row']) for r in rows), default=-1)
    if features.ndim != 2 or len(features) < used:
      raise OutputError(f'{paths["npy"]} holds {len(features)} rows but '
                        f'{paths["index"]} names {used}: delete both to start over')
    self.rows = rows
    if used:
      self._features, self._num_features = [features[:used]], used
    return {r['path'] for r in rows}

  def add(self, video_path: str, label: str, num_frames_decoded: int,
          windows: Sequence = (), features: Optional[np.ndarray] = None,
          error: str = '') -> None:
    """One video: a row per window (one for a whole-video feature) or a failed row."""
    base = {'path': video_path, 'label': label, 'num_frames_decoded': num_frames_decoded}
    if error:
      self.rows.append(dict(base, row=-1, status='failed', error=error))
      return
    for i, window in enumerate(windows):
      row = dict(base, row=self._num_features + i, status='ok', error='')
      if self.windowed:
        row.update(start_s=f'{window.start_s:.6g}', end_s=f'{window.end_s:.6g}')
      self.rows.append(row)
    self._features.append(np.asarray(features, np.float32))
    self._num_features += len(features)

  def features(self) -> np.ndarray:
    if not self._features:
      return np.zeros([0, 0], np.float32)
    if len(self._features) > 1:
      self._features = [np.concatenate(self._features)]
    return self._features[0]

  def flush(self) -> None:
    """Both files, each atomically, the .npy first (see the module docstring)."""
    npy = io.BytesIO()
    np.save(npy, self.features())
    files_lib.atomic_write(self.paths['npy'], npy.getvalue(), 'wb')
    files_lib.atomic_write(self.paths['index'], self._index_text())

  def _index_text(self) -> str:
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, self.columns, extrasaction='ignore')
    writer.writeheader()
    video_rows: Dict[str, int] = {}
    for row in self.rows:
      if self.windowed:
        row = dict(row, video_row=video_rows.setdefault(row['path'], len(video_rows)))
      writer.writerow(row)
    return text.getvalue()
