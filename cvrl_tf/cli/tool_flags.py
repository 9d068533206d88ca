"""Flags of the cvrl_* command-line tools, safe to import side by side.

absl flags are global: two tools that both define `--fps` or `--model_dir` would raise
DuplicateFlagError when imported in one process (the demo, the tests). Each tool lists
its flags once as (kind, name, default, help); a name another module already defined is
not redefined, and `value(name)` returns this tool's own default unless the flag was given.
"""

import types
from typing import Any, Sequence, Tuple

from absl import flags
from absl import logging

FLAGS = flags.FLAGS
FlagSpec = Tuple[str, str, Any, str]  # kind ('string', 'integer', ...), name, default, help


class ToolFlags:
  """The flags of one tool; define at import so absl sees them before app.run."""

  def __init__(self, specs: Sequence[FlagSpec]):
    self.defaults = {name: default for _, name, default, _ in specs}
    for kind, name, default, help_text in specs:
      if name not in FLAGS:
        getattr(flags, f'DEFINE_{kind}')(name, default, help_text)

  def value(self, name: str):
    return FLAGS[name].value if FLAGS[name].present else self.defaults[name]

  def given(self, name: str) -> bool:
    return bool(FLAGS[name].present)

  def values(self) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: self.value(name) for name in self.defaults})


def quiet_info_logs() -> None:
  """absl INFO lines (SavedModel's, for one) drown a tool's own output: WARNING and
  above unless --verbosity was given."""
  if 'verbosity' in FLAGS and not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
