"""The package's import structure, read from the ``ast`` of every module (nothing is imported).

* No import cycle among the modules of ``llm4rec_jax``, counting the imports a module runs when it
  is imported (its top level, class bodies included; not function bodies, not ``TYPE_CHECKING``).
  Importing ``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so that counts as
  an import of ``a.b`` too.
* No function-level import of the package's own modules, except the ones listed in
  ``DEFERRED`` with the reason (a heavy dependency that a caller may never need).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = 'llm4rec_jax'
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# (importing module, imported module) -> why the import is deferred into a function.
DEFERRED = {
    ('llm4rec_jax.cli', 'llm4rec_jax.serving'):
        'JAX: `llm4rec --help` and flag errors answer without importing it',
    ('llm4rec_jax.cli', 'llm4rec_jax.train.trainer'):
        'JAX: `llm4rec --help` and flag errors answer without importing it',
    ('llm4rec_jax.cli', 'llm4rec_jax.train.replicas'):
        'JAX: `llm4rec --help` and flag errors answer without importing it',
    ('llm4rec_jax.cli', 'llm4rec_jax.serving.index'):
        'JAX and ScaNN: `llm4rec --help` and flag errors answer without importing them',
    ('llm4rec_jax.cli', 'llm4rec_jax.online'):
        'JAX: `llm4rec --help` and flag errors answer without importing it',
    ('llm4rec_jax.cli', 'llm4rec_jax.explain.explainer'):
        'JAX: `llm4rec --help` and flag errors answer without importing it',
    ('llm4rec_jax.data.registry', 'llm4rec_jax.data.tfds_builders'):
        'TensorFlow Datasets: only `tfds:` dataset names need it',
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob('*.py'))}


def is_package(name: str) -> bool:
  return MODULES[name].name == '__init__.py'


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
  """The package modules an import statement of ``importer`` loads (submodules resolved)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split('.')[0] == PACKAGE]
  if node.level:  # relative: from the importer's package, up level - 1
    base = importer.split('.') if is_package(importer) else importer.split('.')[:-1]
    base = base[:len(base) - (node.level - 1)]
    origin = '.'.join(base + ([node.module] if node.module else []))
  else:
    origin = node.module or ''
  if origin.split('.')[0] != PACKAGE:
    return []
  out = [origin]
  # `from pkg import name`: name may be a submodule, which is then loaded too.
  out += [f'{origin}.{a.name}' for a in node.names if f'{origin}.{a.name}' in MODULES]
  return out


def contains(package: str, module: str) -> bool:
  return (module + '.').startswith(package + '.')


def with_parents(importer: str, target: str) -> list[str]:
  """``target`` and the packages above it whose ``__init__`` the import runs: those that do not
  contain ``importer`` (a package's own modules import while it is initialising)."""
  parts = target.split('.')
  out = ['.'.join(parts[:i]) for i in range(2, len(parts) + 1)]
  return [m for m in out if m in MODULES and not contains(m, importer)]


def _type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
      isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def imports(name: str) -> tuple[set[str], list[tuple[str, int]]]:
  """(modules imported when ``name`` is imported, [(module, line)] imported inside functions)."""
  tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
  top: set[str] = set()
  deferred: list[tuple[str, int]] = []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.If) and _type_checking(child):
        continue
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        for target in resolve(name, child):
          if in_function:
            if not contains(target, name):
              deferred.append((target, child.lineno))
          else:
            top.update(with_parents(name, target))
      visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)))
  visit(tree, False)
  return top, deferred


def import_graph() -> dict[str, set[str]]:
  return {name: imports(name)[0] for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def dfs(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = dfs(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = dfs(node)
      if found:
        return found
  return None


def test_graph_is_read_from_the_package():
  graph = import_graph()
  assert len(MODULES) > 50
  assert 'llm4rec_jax.train.state' in graph['llm4rec_jax.train.trainer']
  # `from llm4rec_jax.train import losses` loads the submodule.
  assert 'llm4rec_jax.train.losses' in graph['llm4rec_jax.train.objective']


def test_cycle_detection_names_the_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_no_function_level_imports_of_the_package():
  found = []
  for name in MODULES:
    for target, line in imports(name)[1]:
      if (name, target) not in DEFERRED:
        found.append(f'{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target}')
  assert not found, ('function-level imports of package modules (import at the top, or add to '
                     'DEFERRED with the heavy dependency they defer):\n' + '\n'.join(found))


def test_model_does_not_import_upward():
  """``model/`` holds the networks (the BERT encoder and the adversary head included): it reads the
  content arrays' spec (``data.content``) but imports no training, debiasing, text-cache, serving,
  online, retrieval or explanation module."""
  upward = [f'{PACKAGE}.{p}' for p in ('content', 'debias', 'train', 'serving', 'online',
                                       'retrieval', 'explain', 'evaluation', 'workdir')]
  bad = sorted(f'{m} -> {t}' for m, targets in import_graph().items()
               if m.startswith(f'{PACKAGE}.model.') for t in targets
               if any(contains(u, t) for u in upward))
  assert not bad, bad


def test_deferred_imports_still_exist():
  present = {(name, target) for name in MODULES for target, _ in imports(name)[1]}
  stale = sorted(set(DEFERRED) - present)
  assert not stale, f'DEFERRED lists imports that are gone: {stale}'


def test_retrieval_is_a_library():
  """``retrieval/`` (the ScaNN index, exact top-k, RAG context) imports no training, serving,
  online or workdir module: what opens a trained workdir lives in ``serving/``."""
  upward = [f'{PACKAGE}.{p}' for p in ('train', 'serving', 'online', 'explain', 'workdir', 'model')]
  bad = sorted(f'{m} -> {t}' for m, targets in import_graph().items()
               if m.startswith(f'{PACKAGE}.retrieval') for t in targets
               if any(contains(u, t) for u in upward))
  assert not bad, bad
