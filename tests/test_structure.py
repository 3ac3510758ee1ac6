"""The package's shape: no import cycle, and no module uses another module's private names.

The checker reads the source with `ast` (nothing is imported), so it sees function-level imports
too: a cycle hidden inside a function (`checkpoint` importing `train` that imports `checkpoint`)
is still a cycle. A private name is one with a leading underscore that is not a dunder.
"""

from __future__ import annotations

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every `.py` file of the package (`__init__` is the package)."""
  root = package_dir.parent
  modules = {}
  for path in sorted(package_dir.rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def _dotted(node: ast.AST) -> str | None:
  """`a.b.c` for a chain of attribute accesses on a name, else None."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _dotted(node.value)
    return None if base is None else f"{base}.{node.attr}"
  return None


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  """The absolute module named by `from <...> import`, relative imports included."""
  if not node.level:
    return node.module or ""
  base = module.split(".") if is_package else module.split(".")[:-1]
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def analyse(package_dir: pathlib.Path) -> tuple[dict[str, set[str]], list[str]]:
  """`(graph, private_uses)`: each module's imports of the package's modules, and the violations.

  Module-level and function-level imports count alike. A violation is `from pkg.x import _y`,
  or `x._y` where `x` is bound to another of the package's modules, in a module other than x.
  """
  modules = _modules(package_dir)
  package = package_dir.name
  graph = {name: set() for name in modules}
  private = []
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    aliases = {}  # Local name -> module of the package it is bound to.
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name == package or alias.name.startswith(package + "."):
            graph[name].add(alias.name)
            if alias.asname:
              aliases[alias.asname] = alias.name
            else:
              aliases[alias.name.split(".")[0]] = package
      elif isinstance(node, ast.ImportFrom):
        source = _resolve_from(name, is_package, node)
        if source != package and not source.startswith(package + "."):
          continue
        for alias in node.names:
          submodule = f"{source}.{alias.name}"
          if submodule in modules:  # `from pkg import module`
            graph[name].add(submodule)
            aliases[alias.asname or alias.name] = submodule
          else:  # `from pkg.module import name`
            graph[name].add(source)
            if _is_private(alias.name) and source != name:
              private.append(f"{name}:{node.lineno} imports {source}.{alias.name}")
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and _is_private(node.attr):
        base = _dotted(node.value)
        if base is None:
          continue
        head, _, rest = base.partition(".")
        if head not in aliases:
          continue
        target = aliases[head] + (f".{rest}" if rest else "")
        if target in modules and target != name:
          private.append(f"{name}:{node.lineno} uses {target}.{node.attr}")
  for imports in graph.values():
    imports.intersection_update(modules)  # `import pkg.x.y` of a name that is not a module.
  return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as `[a, b, ..., a]`, or None (self-imports do not count)."""
  state = {}  # Module -> "active" while on the DFS stack, "done" after.
  stack = []

  def visit(node: str) -> list[str] | None:
    state[node] = "active"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt == node:
        continue
      if state.get(nxt) == "active":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


# --- The checker on small fake packages (so that the real check can fail) -------------------------


def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  package = tmp_path / "pkg"
  for name, text in {"__init__.py": "", **files}.items():
    path = package / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return package


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
  package = _package(
      tmp_path,
      {
          "a.py": "from pkg import b\n",
          "b.py": "def f():\n  from pkg import c\n",
          "c.py": "import pkg.a as a\n",
          "d.py": "from pkg import a\n",
      },
  )
  graph, private = analyse(package)
  assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
  assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
  assert private == []


def test_checker_accepts_a_graph_without_cycle(tmp_path):
  package = _package(
      tmp_path,
      {
          "a.py": "from pkg import b, c\nfrom . import d\n",
          "b.py": "import pkg.c\n",
          "c.py": "x = 1\n",
          "d.py": "from pkg.c import x\n",
      },
  )
  graph, private = analyse(package)
  assert graph["pkg.a"] == {"pkg.b", "pkg.c", "pkg.d"}
  assert graph["pkg.d"] == {"pkg.c"}
  assert find_cycle(graph) is None
  assert private == []


def test_checker_finds_private_names_of_other_modules(tmp_path):
  package = _package(
      tmp_path,
      {
          "a.py": "_hidden = 1\n_self = _hidden\n__version__ = 'a'\n",
          "b.py": "from pkg.a import _hidden, __version__\n",
          "c.py": "def f():\n  from pkg import a as alias\n  return alias._hidden, alias.__version__\n",
          "d.py": "import pkg.a\nx = pkg.a._hidden\n",
          "sub/__init__.py": "",
          "sub/e.py": "from ..a import _hidden\n",
      },
  )
  _, private = analyse(package)
  assert private == [
      "pkg.b:1 imports pkg.a._hidden",
      "pkg.c:3 uses pkg.a._hidden",
      "pkg.d:2 uses pkg.a._hidden",
      "pkg.sub.e:1 imports pkg.a._hidden",
  ]


# --- The real package -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def incres_graph():
  return analyse(ROOT / "incres")


def test_incres_has_no_import_cycle(incres_graph):
  graph, _ = incres_graph
  assert "incres.train" in graph and "incres.models.resnet" in graph  # The walk found the package.
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_incres_modules_use_only_public_names_of_each_other(incres_graph):
  _, private = incres_graph
  assert not private, "private names used across modules:\n" + "\n".join(private)


def test_later_stages_build_models_without_the_training_loop(incres_graph):
  graph, _ = incres_graph
  stages = ("checkpoint", "convert_torch", "evaluate", "predict", "report", "export", "analysis")
  uses_train = [m for m in stages if "incres.train" in graph[f"incres.{m}"]]
  assert not uses_train, f"{uses_train} import incres.train; they should need incres.state only"
  assert os.path.exists(ROOT / "incres" / "state.py")
