"""The gin files shipped with cvrl_tf, as package data: one per protocol (the paper's
settings) and demo/ (the embedded synthetic dataset).

Why inside the package: a wheel install has no checkout, and `cvrl_train
--gin_file=pretrain.gin` must work from any folder. cli/gin_files.py resolves names here
after the user's own paths; this module only knows where the files are and what they say.
"""

import os
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.abspath(__file__))
# Today's form, `--gin_file=gin/pretrain.gin`, names the repository's old gin/ folder.
LEGACY_PREFIX = 'gin/'


def path(name: str) -> str:
  """The file of a shipped config, e.g. 'demo/pretrain.gin' (whether or not it exists)."""
  return os.path.join(ROOT, *name.split('/'))


def find(name: str) -> Optional[str]:
  """The shipped file for a bare or relative name ('pretrain.gin', 'demo/pretrain.gin',
  'gin/pretrain.gin'), or None. Absolute paths are the user's and never shipped."""
  if os.path.isabs(name):
    return None
  name = name.replace(os.sep, '/')
  candidates = [name]
  if name.startswith(LEGACY_PREFIX):
    candidates.append(name[len(LEGACY_PREFIX):])
  for candidate in candidates:
    full = os.path.normpath(path(candidate))
    if full.startswith(ROOT + os.sep) and full.endswith('.gin') and os.path.isfile(full):
      return full
  return None


def first_comment(file_path: str) -> str:
  """The first comment line of a gin file, without '#' (its one-line summary)."""
  with open(file_path, encoding='utf-8') as f:
    for line in f:
      if line.startswith('#') and line.strip('#').strip():
        return line.strip('#').strip()
  return ''


def shipped() -> List[Tuple[str, str]]:
  """(name, first comment line) of every shipped gin file, sorted; demo/ last."""
  names = []
  for dirpath, dirnames, filenames in os.walk(ROOT):
    dirnames[:] = [d for d in dirnames if not d.startswith(('.', '_'))]
    rel = os.path.relpath(dirpath, ROOT)
    names += [f if rel == '.' else f'{rel.replace(os.sep, "/")}/{f}'
              for f in filenames if f.endswith('.gin')]
  names.sort(key=lambda n: (n.count('/'), n))
  return [(n, first_comment(path(n))) for n in names]
