"""The package's import structure: no circles, and no layer imports a higher
one.

Every module of ``sa_reid_jax/`` and the scripts of the repository root is
parsed (not imported: no JAX, no TensorFlow), with every import it holds,
also those inside functions, which run later but close a circle all the
same.
"""

import ast
import pathlib
from typing import Iterator, Optional

import pytest

from helpers import REPO

PACKAGE = 'sa_reid_jax'
SCRIPTS = ('train.py', 'eval.py', 'convert_weights.py')

# Lowest first; a module may import its own layer and the ones above it in
# this table, never one below. A module belongs to the layer of the longest
# prefix that names it (a prefix names a module and everything under it).
LAYERS = (
    # The networks and their saved form: plain JAX/Flax, used by everything.
    # The package's own ``__init__`` sits here too, because Python runs it
    # before any of its submodules: whatever it imports, every import of the
    # package would load.
    ('models', (PACKAGE, f'{PACKAGE}.models')),
    # Where examples come from: folders, TFDS builders, reading and checking
    # image files; knows nothing of how they are batched or used.
    ('datasets', (f'{PACKAGE}.datasets',)),
    # Examples into batches: samplers, preprocessing, augmentation, the
    # tf.data pipelines over the datasets' tables.
    ('data', (f'{PACKAGE}.data',)),
    # Loss terms; they check the config's sampler (a triplet term needs P x
    # K batches), so they sit above the data layer.
    ('losses', (f'{PACKAGE}.losses',)),
    # What a network's step computes beyond its forward pass (the CASN
    # task), built on the losses.
    ('tasks', (f'{PACKAGE}.tasks',)),
    # Features, distances, metrics, re-ranking and the report (with its
    # pictures): a model and a dataset in, results out; used by training
    # and the tools, so it may import neither.
    ('evaluation', (f'{PACKAGE}.evaluation',)),
    # The training run: everything above, and no command-line module (it is
    # called from notebooks as well as from train.py).
    ('training', (f'{PACKAGE}.training',)),
    # The tools' library parts (image files, drawing, caches, exports,
    # output checks), callable without their command lines.
    ('tools', (f'{PACKAGE}.tools',)),
    # Weight conversion: builds networks and checks its output with the
    # tools' output checks.
    ('convert', (f'{PACKAGE}.convert',)),
    # The command line: argument and flag handling, and every program with
    # a ``main`` (the tools' commands, the scripts). Nothing imports them
    # but each other.
    ('command line', (f'{PACKAGE}.command_line', f'{PACKAGE}.tools.export',
                      f'{PACKAGE}.tools.search', f'{PACKAGE}.tools.visualize',
                      'train', 'eval', 'convert_weights')),
)
# Prefixes that name their module alone, not what is under it: every module
# is under the package, so this one would otherwise place them all.
EXACT = (PACKAGE,)


def _module_files() -> dict[str, pathlib.Path]:
  """Module name -> file, for the package and the root scripts."""
  root = pathlib.Path(REPO)
  files = {}
  for path in sorted((root / PACKAGE).rglob('*.py')):
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    files['.'.join(parts)] = path
  for script in SCRIPTS:
    files[script[:-3]] = root / script
  return files


MODULES = _module_files()


def _is_package(module: str) -> bool:
  return MODULES[module].name == '__init__.py'


def _imported(module: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
  """(imported module of this repository, line) for each import in `tree`.

  ``from A import B`` imports the module A.B when there is one, else A;
  relative imports are resolved against `module`'s package. The parent
  packages Python runs on the way (``a`` and ``a.b`` of ``import a.b.c``)
  are not counted: the package's ``__init__`` has a layer of its own.
  """
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in MODULES:
          yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        package = module if _is_package(module) else module.rpartition('.')[0]
        for _ in range(node.level - 1):
          package = package.rpartition('.')[0]
        base = f'{package}.{base}' if base else package
      for alias in node.names:
        if f'{base}.{alias.name}' in MODULES:
          yield f'{base}.{alias.name}', node.lineno
        elif base in MODULES:
          yield base, node.lineno


def _import_graph() -> dict[str, dict[str, int]]:
  """Module -> {imported module: first line importing it}."""
  graph = {}
  for module, path in MODULES.items():
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
    edges = {}
    for imported, line in _imported(module, tree):
      if imported != module:
        edges.setdefault(imported, line)
    graph[module] = edges
  return graph


GRAPH = _import_graph()


def _layer(module: str) -> Optional[int]:
  """The index in LAYERS of `module`'s layer (its longest prefix), or None."""
  best, best_length = None, -1
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      names = module == prefix or (
          prefix not in EXACT and module.startswith(prefix + '.'))
      if names and len(prefix) > best_length:
        best, best_length = index, len(prefix)
  return best


def _where(module: str, imported: str) -> str:
  path = MODULES[module].relative_to(REPO)
  return f'{path}:{GRAPH[module][imported]}'


def _find_cycle(graph: dict[str, dict[str, int]]) -> Optional[list[str]]:
  """One import circle as [m1, m2, ..., m1], or None (depth-first)."""
  state = {}  # module -> 'open' while on the path, 'done' once finished
  path = []

  def visit(module):
    state[module] = 'open'
    path.append(module)
    for imported in sorted(graph[module]):
      if state.get(imported) == 'open':
        return path[path.index(imported):] + [imported]
      if imported not in state:
        cycle = visit(imported)
        if cycle:
          return cycle
    path.pop()
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def test_the_graph_sees_the_imports():
  # A parser that missed imports would pass everything below.
  assert 'sa_reid_jax.training.signals' in GRAPH['sa_reid_jax.training.trainer']
  assert 'sa_reid_jax.models.store' in GRAPH['sa_reid_jax']
  # A function-level import counts.
  assert 'sa_reid_jax.datasets.images' in GRAPH[
      'sa_reid_jax.datasets.image_check']
  # ``from PACKAGE import module`` is the module, not the package.
  assert 'sa_reid_jax.command_line' in GRAPH['train']
  assert 'sa_reid_jax' not in GRAPH['train']


def test_every_module_has_a_layer():
  missing = sorted(m for m in MODULES if _layer(m) is None)
  assert not missing, (
      f'modules in no layer of LAYERS (tests/test_imports.py): {missing}; '
      'add their package or module where it belongs')


def test_no_import_circles():
  cycle = _find_cycle(GRAPH)
  if cycle:
    steps = '\n'.join(f'  {a} imports {b} ({_where(a, b)})'
                      for a, b in zip(cycle, cycle[1:]))
    pytest.fail(f'import circle: {" -> ".join(cycle)}\n{steps}')


def test_no_module_imports_a_higher_layer():
  upward = []
  for module, edges in sorted(GRAPH.items()):
    layer = _layer(module)
    for imported in sorted(edges):
      if _layer(imported) > layer:
        upward.append(
            f'{module} ({LAYERS[layer][0]}) imports {imported} '
            f'({LAYERS[_layer(imported)][0]}) at {_where(module, imported)}')
  assert not upward, ('imports of a higher layer (see LAYERS in '
                      'tests/test_imports.py):\n' + '\n'.join(upward))


@pytest.mark.parametrize('lower, higher', [
    ('evaluation', 'tools'),
    ('training', 'command line'),
])
def test_the_layers_keep_the_stated_rules(lower, higher):
  names = [name for name, _ in LAYERS]
  assert names.index(lower) < names.index(higher)
