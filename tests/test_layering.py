"""Imports run down cvrl_tf.LAYERS: every module of the package, read as text (nothing is
imported or run), imports from its own layer and the layers before it only."""

import ast
import os

import cvrl_tf

PACKAGE = os.path.dirname(os.path.abspath(cvrl_tf.__file__))
RANK = {name: rank for rank, layer in enumerate(cvrl_tf.LAYERS) for name in layer}


def _top_name(module: str):
  """'cvrl_tf.input.pipeline' -> 'input'; None for the package root itself."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else None


def imported_parts(source: str):
  """The cvrl_tf parts (first names under cvrl_tf) a module's source imports, with lines;
  `from cvrl_tf import files` names its part too."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith('cvrl_tf.'):
          yield _top_name(alias.name), node.lineno
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.module == 'cvrl_tf' or node.module.startswith('cvrl_tf.')):
      top = _top_name(node.module)
      if top is not None:
        yield top, node.lineno
      else:
        for alias in node.names:
          if alias.name in RANK:
            yield alias.name, node.lineno


def _modules(package_dir: str):
  """(path relative to package_dir, source) of every module under it."""
  for folder, _, names in os.walk(package_dir):
    for name in sorted(n for n in names if n.endswith('.py')):
      path = os.path.join(folder, name)
      with open(path, encoding='utf-8') as f:
        yield os.path.relpath(path, package_dir), f.read()


def upward_imports(package_dir: str = PACKAGE):
  found = []
  for rel, source in _modules(package_dir):
    own = rel.split(os.sep)[0]
    own = own[:-3] if own.endswith('.py') else own
    if own == '__init__':
      continue  # The root: __version__, LAYERS and the oneDNN switch.
    assert own in RANK, f'{rel}: {own} is in no layer of cvrl_tf.LAYERS'
    for part, line in imported_parts(source):
      assert part in RANK, f'{rel}:{line} imports cvrl_tf.{part}, in no layer'
      if RANK[part] > RANK[own]:
        found.append(f'{rel}:{line} ({own}) imports {part}')
  return found


def test_every_import_runs_down_the_layers():
  assert not upward_imports(), upward_imports()


def test_an_upward_import_is_found(tmp_path):
  for part in ('input', 'serving'):
    (tmp_path / part).mkdir()
  (tmp_path / 'input' / 'reader.py').write_text(
      'import os\nfrom cvrl_tf.serving import export\n')
  (tmp_path / 'serving' / 'export.py').write_text('from cvrl_tf import files\n')
  assert upward_imports(str(tmp_path)) == [
      f'{os.path.join("input", "reader.py")}:2 (input) imports serving']


def gin_users(package_dir: str = PACKAGE):
  """Modules outside cli/ that import gin (settings reach the library as objects)."""
  found = []
  for rel, source in _modules(package_dir):
    if rel.split(os.sep)[0] == 'cli':
      continue
    for node in ast.walk(ast.parse(source)):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      if any(n == 'gin' or n.startswith('gin.') for n in names):
        found.append(f'{rel}:{node.lineno}')
  return found


def test_gin_is_imported_only_by_the_command_line():
  assert not gin_users(), gin_users()


def test_a_gin_import_below_the_command_line_is_found(tmp_path):
  (tmp_path / 'models').mkdir()
  (tmp_path / 'cli').mkdir()
  (tmp_path / 'models' / 'r3d.py').write_text('import os\nimport gin\n')
  (tmp_path / 'cli' / 'settings.py').write_text('import gin\n')
  assert gin_users(str(tmp_path)) == [f'{os.path.join("models", "r3d.py")}:2']


MAX_PARAMETERS = 12  # Wider than this, a function wants a settings object instead.


def wide_functions(package_dir: str = PACKAGE):
  """Functions of the package with more than MAX_PARAMETERS named parameters (self and
  cls not counted; *args / **kwargs not either)."""
  found = []
  for rel, source in _modules(package_dir):
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        named = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        count = len([a for a in named if a not in ('self', 'cls')])
        if count > MAX_PARAMETERS:
          found.append(f'{rel}:{node.lineno} {node.name} ({count})')
  return found


def test_no_function_takes_more_than_twelve_parameters():
  assert not wide_functions(), wide_functions()


def test_a_wide_function_is_found(tmp_path):
  params = ', '.join(f'p{i}' for i in range(13))
  (tmp_path / 'wide.py').write_text(f'def build(self, {params}, *a, **k):\n  pass\n')
  assert wide_functions(str(tmp_path)) == ['wide.py:1 build (13)']
