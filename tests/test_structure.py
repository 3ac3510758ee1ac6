"""The package's shape: no import cycle, no module uses another module's private names (nor does a
benchmark, of incres or of another benchmark), and importing a module changes no process-wide state
(environment, hooks, warnings, logging).

The checker reads the source with `ast` (nothing is imported), so it sees function-level imports
too: a cycle hidden inside a function (`checkpoint` importing `train` that imports `checkpoint`)
is still a cycle. A private name is one with a leading underscore that is not a dunder.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

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


def _scan(
    name: str, path: pathlib.Path, modules: dict[str, pathlib.Path], roots: set[str]
) -> tuple[set[str], list[str]]:
  """`(imports, private_uses)` of one module: the known modules it imports, and its violations.

  `modules` are the known modules by dotted name, `roots` the top-level names they live under.
  Module-level and function-level imports count alike. A violation is `from x import _y`, or
  `x._y` where `x` is bound to another known module, in a module other than x.
  """
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == "__init__.py"
  imports, private = set(), []
  aliases = {}  # Local name -> known module (or root) it is bound to.
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        head = alias.name.split(".")[0]
        if head in roots:
          imports.add(alias.name)
          aliases[alias.asname or head] = alias.name if alias.asname else head
    elif isinstance(node, ast.ImportFrom):
      source = _resolve_from(name, is_package, node)
      if source.split(".")[0] not in roots:
        continue
      for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:  # `from pkg import module`
          imports.add(submodule)
          aliases[alias.asname or alias.name] = submodule
        else:  # `from pkg.module import name`
          imports.add(source)
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
  return imports & set(modules), private  # `import pkg.x.y` of a name that is not a module.


def analyse(package_dir: pathlib.Path) -> tuple[dict[str, set[str]], list[str]]:
  """`(graph, private_uses)`: each module's imports of the package's modules, and the violations
  (`_scan`)."""
  modules = _modules(package_dir)
  graph, private = {}, []
  for name, path in modules.items():
    graph[name], found = _scan(name, path, modules, {package_dir.name})
    private += found
  return graph, private


def analyse_scripts(script_dir: pathlib.Path, package_dir: pathlib.Path) -> list[str]:
  """The private names that the scripts in `script_dir` (not a package: they import each other
  by file name, e.g. `import throughput`) use of each other and of the package (`_scan`)."""
  scripts = {path.stem: path for path in sorted(script_dir.glob("*.py"))}
  modules = {**_modules(package_dir), **scripts}
  roots = {package_dir.name, *scripts}
  return [found for name, path in scripts.items() for found in _scan(name, path, modules, roots)[1]]


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


def test_checker_finds_private_names_that_scripts_use_of_each_other_and_the_package(tmp_path):
  package = _package(tmp_path, {"a.py": "_hidden = 1\n"})
  scripts = tmp_path / "scripts"
  scripts.mkdir()
  (scripts / "s.py").write_text("_fmt = str\n_own = _fmt\n")
  (scripts / "t.py").write_text("import s\nfrom pkg import a\nx = s._fmt, a._hidden, s.__doc__\n")
  (scripts / "u.py").write_text("from s import _fmt\nimport pkg.a\ny = pkg.a._hidden\n")
  assert analyse_scripts(scripts, package) == [
      "t:3 uses s._fmt",
      "t:3 uses pkg.a._hidden",
      "u:1 imports s._fmt",
      "u:3 uses pkg.a._hidden",
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


# Private names the benchmarks may still use, as "module.name" (the module's last component, so
# that it holds wherever the module moves): {benchmark: {name, ...}}. None today.
BENCHMARK_PRIVATE_USES_ALLOWED: dict[str, set[str]] = {}


def test_benchmarks_use_only_public_names_of_each_other_and_of_incres():
  unexpected, used = [], set()
  for violation in analyse_scripts(ROOT / "benchmarks", ROOT / "incres"):
    script, name = violation.split(":")[0], violation.rsplit(" ", 1)[1]
    short = ".".join(name.split(".")[-2:])  # "augment._name", wherever augment lives.
    if short in BENCHMARK_PRIVATE_USES_ALLOWED.get(script, ()):
      used.add((script, short))
    else:
      unexpected.append(violation)
  assert not unexpected, "private names used across modules:\n" + "\n".join(unexpected)
  allowed = {(m, n) for m, names in BENCHMARK_PRIVATE_USES_ALLOWED.items() for n in names}
  assert used == allowed, f"allowed uses that no longer happen (delete them): {allowed - used}"


def test_later_stages_build_models_without_the_training_loop(incres_graph):
  graph, _ = incres_graph
  stages = ("checkpoint", "convert_torch", "evaluate", "predict", "report", "export", "analysis")
  uses_train = [m for m in stages if "incres.train" in graph[f"incres.{m}"]]
  assert not uses_train, f"{uses_train} import incres.train; they should need incres.state only"
  assert os.path.exists(ROOT / "incres" / "state.py")


# --- Importing a module changes nothing process-wide ----------------------------------------------

# Run in a fresh interpreter as `python -c _IMPORT_PROBE <package> <third-party module>... -- <module>...`.
# It imports the third-party modules first (their own import-time changes are not the package's),
# then each module of the package. A finder wraps every module of the package as it is loaded, so
# that a change is charged to the module whose own code was running when it happened: a module
# imported by another is charged for its body, not its importer. Prints one JSON object,
# {module: [[what, before, after], ...]}, for the modules that changed anything.
_IMPORT_PROBE = r"""
import importlib, importlib.abc, importlib.machinery, json, logging, os, sys, warnings

package = sys.argv[1]
split = sys.argv.index("--")
libraries, modules = sys.argv[2:split], sys.argv[split + 1:]


def describe(obj):
  return f"{type(obj).__module__}.{type(obj).__qualname__}@{id(obj):x}"


def snapshot():
  out = {f"os.environ[{k}]": v for k, v in os.environ.items()}
  for name in ("unraisablehook", "excepthook"):
    hook = getattr(sys, name)
    out[f"sys.{name}"] = f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', '?')}@{id(hook):x}"
  out["warnings filters"] = repr(warnings.filters)
  # The absl logger is looked up, never created: a plain Logger made here would be absl's.
  loggers = {"root logger": logging.root, "absl logger": logging.Logger.manager.loggerDict.get("absl")}
  for label, logger in loggers.items():
    if isinstance(logger, logging.Logger):
      out[f"{label} filters"] = repr([describe(f) for f in logger.filters])
      out[f"{label} handlers"] = repr(
          [describe(h) + " filters " + repr([describe(f) for f in h.filters]) for h in logger.handlers]
      )
  return out


changes = {}
stack = []  # [module, snapshot when its own code (re)started running]


def charge(module, before, after):
  for key in sorted(before.keys() | after.keys()):
    if before.get(key) != after.get(key):
      changes.setdefault(module, []).append([key, before.get(key), after.get(key)])


def enter(module):
  now = snapshot()
  if stack:
    charge(stack[-1][0], stack[-1][1], now)
  stack.append([module, now])


def leave():
  now = snapshot()
  module, before = stack.pop()
  charge(module, before, now)
  if stack:
    stack[-1][1] = now


class Watch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name != package and not name.startswith(package + "."):
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    run = spec.loader.exec_module

    def exec_module(module, run=run, name=name):
      enter(name)
      try:
        run(module)
      finally:
        leave()

    spec.loader.exec_module = exec_module
    return spec


def watch_environ(method):
  # A write that leaves the value as it was here (a setdefault of a variable a library set first)
  # would change it in another process: writes are reported, not only changed values.
  original = getattr(type(os.environ), method)

  def write(self, key, *args):
    if stack:
      call = ", ".join(repr(a) for a in (key, *args))
      changes.setdefault(stack[-1][0], []).append(
          [f"os.environ[{key}]", os.environ.get(key), f"os.environ.{method.strip('_')}({call})"]
      )
    return original(self, key, *args)

  setattr(type(os.environ), method, write)


for library in libraries:
  try:
    importlib.import_module(library)
  except ImportError:  # `from x import name` of a name that is not a module.
    pass
for method in ("__setitem__", "__delitem__", "setdefault", "pop"):
  watch_environ(method)
sys.meta_path.insert(0, Watch())
for module in modules:
  importlib.import_module(module)
first = {}  # Each module's first report of each thing (a setdefault also reports its setitem).
for module, found in changes.items():
  first[module] = list({what: [what, before, after] for what, before, after in reversed(found)}.values())[::-1]
print("IMPORT_PROBE " + json.dumps(first))
"""


def _third_party_imports(modules: dict[str, pathlib.Path], package: str) -> list[str]:
  """The modules outside `package` that its modules import when imported (not in functions)."""
  found = set()
  for path in modules.values():
    pending = list(ast.parse(path.read_text(), filename=str(path)).body)
    while pending:
      node = pending.pop()
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        continue
      if isinstance(node, ast.Import):
        found.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
        found.add(node.module)
        found.update(f"{node.module}.{alias.name}" for alias in node.names)
      else:
        pending.extend(ast.iter_child_nodes(node))
  return sorted(m for m in found if m != package and not m.startswith(package + "."))


def import_side_effects(package_dir: pathlib.Path) -> dict[str, list[list[str | None]]]:
  """{module: [[what, before, after], ...]}: what importing each module of the package changed."""
  modules = _modules(package_dir)
  package = package_dir.name
  libraries = _third_party_imports(modules, package)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      filter(None, [str(package_dir.parent), env.get("PYTHONPATH")])
  )
  result = subprocess.run(
      [sys.executable, "-c", _IMPORT_PROBE, package, *libraries, "--", *sorted(modules)],
      capture_output=True,
      text=True,
      cwd=package_dir.parent,
      env=env,
      timeout=300,
  )
  lines = [l for l in result.stdout.splitlines() if l.startswith("IMPORT_PROBE ")]
  assert result.returncode == 0 and lines, result.stdout + result.stderr
  return json.loads(lines[-1][len("IMPORT_PROBE ") :])


def _report(changes: dict[str, list[list[str | None]]]) -> str:
  return "\n".join(
      f"importing {module} changed {what}: {before!r} -> {after!r}"
      for module, found in sorted(changes.items())
      for what, before, after in found
  )


def test_import_probe_charges_each_change_to_the_module_that_made_it(tmp_path):
  package = _package(
      tmp_path,
      {
          "a.py": "import sys\nfrom pkg import b\nsys.excepthook = lambda *args: None\n",
          "b.py": "import os\nos.environ['PKG_PROBE_TEST'] = '1'\n",
          "c.py": "import logging, warnings\nwarnings.simplefilter('ignore')\n"
          "logging.getLogger().addFilter(logging.Filter('x'))\n",
          "d.py": "import json\nfrom pkg import a, b\n",
          "e.py": "import os\nos.environ.setdefault('PATH', 'here already')\n",
      },
  )
  changes = import_side_effects(package)
  assert sorted(changes) == ["pkg.a", "pkg.b", "pkg.c", "pkg.e"]
  assert [w for w, _, _ in changes["pkg.a"]] == ["sys.excepthook"]
  assert changes["pkg.b"] == [
      ["os.environ[PKG_PROBE_TEST]", None, "os.environ.setitem('PKG_PROBE_TEST', '1')"]
  ]
  assert changes["pkg.e"] == [
      ["os.environ[PATH]", os.environ["PATH"], "os.environ.setdefault('PATH', 'here already')"]
  ]
  assert [w for w, _, _ in changes["pkg.c"]] == ["root logger filters", "warnings filters"]


# What importing a module of incres may still change, by module: {module: {what, ...}}.
# None: incres.checkpoint's filter and hook are installed while a checkpoint is read (checkpoint_quiet).
IMPORT_SIDE_EFFECTS_ALLOWED: dict[str, set[str]] = {}


def test_importing_incres_changes_no_process_wide_state():
  """os.environ, sys.unraisablehook / excepthook, the warnings filters, the root and absl loggers'
  filters and handlers: the `python -m` entries and notebooks set them (incres.runtime)."""
  changes = import_side_effects(ROOT / "incres")
  unexpected = {
      module: [c for c in found if c[0] not in IMPORT_SIDE_EFFECTS_ALLOWED.get(module, ())]
      for module, found in changes.items()
  }
  unexpected = {module: found for module, found in unexpected.items() if found}
  assert not unexpected, "module imports with side effects:\n" + _report(unexpected)
  stale = {
      module: sorted(allowed - {what for what, _, _ in changes.get(module, [])})
      for module, allowed in IMPORT_SIDE_EFFECTS_ALLOWED.items()
  }
  stale = {module: what for module, what in stale.items() if what}
  assert not stale, f"allowed side effects that no longer happen (delete them): {stale}"
