"""Every command line speaks absl flags the same way (`incres.cli`), and none uses argparse.

Each tool's `main(argv)` is called in-process, as `python -m` runs it (through `errors.run`); two
subprocesses check the real `python` path. `launch.py` defines its flags on absl's global
`flags.FLAGS` and is checked by subprocess only (importing it would register them here).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys

from absl import flags
import pytest

from incres import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path: str):
  """A module of the repository that is not in a package (experiments/, benchmarks/)."""
  name = os.path.splitext(os.path.basename(path))[0]
  folder = os.path.join(ROOT, os.path.dirname(path))
  if folder not in sys.path:  # benchmarks/profile_step.py imports its sibling throughput.py.
    sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location(f"_cli_test_{name}", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# (name, how to import the module, a flag (or word) its --help lists).
TOOLS = [
    ("report", lambda: importlib.import_module("incres.report"), "--workdir"),
    ("export", lambda: importlib.import_module("incres.export"), "--platforms"),
    ("convert_torch", lambda: importlib.import_module("incres.convert_torch"), "--weights"),
    ("data", lambda: importlib.import_module("incres.data"), "check DATASET"),
    ("evaluate", lambda: importlib.import_module("incres.evaluate"), "--protocol"),
    ("predict", lambda: importlib.import_module("incres.predict"), "--top_k"),
    ("summary", lambda: importlib.import_module("incres.summary"), "--[no]no_xla"),
    ("analysis", lambda: importlib.import_module("incres.analysis"), "--max_examples"),
    ("degradation", lambda: _script("experiments/degradation.py"), "--[no]skip_training"),
    ("input_pipeline", lambda: _script("benchmarks/input_pipeline.py"), "--seconds"),
    ("throughput", lambda: _script("benchmarks/throughput.py"), "--[no]vs_torch"),
    ("end_to_end", lambda: _script("benchmarks/end_to_end.py"), "--fake_image_shape"),
    ("profile_step", lambda: _script("benchmarks/profile_step.py"), "--[no]no_cpu_conv_vjp"),
    ("conv_weight_grad", lambda: _script("benchmarks/conv_weight_grad.py"), "--shape"),
    ("compile_depth", lambda: _script("benchmarks/compile_depth.py"), "--cases"),
]
IDS = [t[0] for t in TOOLS]


@pytest.fixture(name="run_main")
def fixture_run_main(capsys, monkeypatch):
  """Runs `module.main(argv)` as its `__main__` does: (exit status, stdout, stderr)."""
  # The benchmarks set OMP_WAIT_POLICY for torch before parsing; keep this process's as it was.
  monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))

  def run_main(module, argv):
    with pytest.raises(SystemExit) as exit_info:
      errors.run(lambda: module.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err

  return run_main


def _load(name, load):
  if name == "conv_weight_grad":
    pytest.importorskip("torch")
  return load()


@pytest.mark.parametrize("name,load,flag", TOOLS, ids=IDS)
def test_unknown_flag_exits_2_with_one_paragraph(run_main, name, load, flag):
  del flag
  code, out, err = run_main(_load(name, load), ["--no_such_flag=1"])
  assert code == 2, err
  assert "Unknown command line flag 'no_such_flag'" in err and "--help" in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out, err


@pytest.mark.parametrize("name,load,flag", TOOLS, ids=IDS)
def test_help_exits_0_and_lists_the_flags(run_main, name, load, flag):
  code, out, err = run_main(_load(name, load), ["--help"])
  assert code == 0 and not err, err
  assert out.startswith("usage: python ") and flag in out, out


@pytest.mark.parametrize(
    "module,argv,words",
    [
        ("incres.predict", ["--checkpoint=x", "--batch_size=0", "a.png"], ["--batch_size=0"]),
        ("incres.predict", ["--checkpoint=x"], ["at least one image"]),
        ("incres.evaluate", ["--protocol=center"], ["--workdir is required"]),
        ("incres.evaluate", ["--workdir=w", "--protocol=5crop"], ["--protocol=5crop", "10crop"]),
        ("incres.export", ["--checkpoint=c", "--out=o", "--averaged=mean"], ["--averaged=mean"]),
        ("incres.analysis", ["--workdir=w", "--out=o.png"], ["curves or responses"]),
        (
            "incres.analysis",
            ["curves", "--workdir=w", "--out=o", "--csv=c"],
            ["--csv", "responses"],
        ),
        ("incres.data", ["folder:x"], ["check DATASET", "given: folder:x"]),
        ("incres.report", ["--workdir=w", "extra"], ["Unexpected arguments: extra"]),
        ("incres.summary", ["--no-xla", "ResNet19"], ["Unknown model 'ResNet19'"]),  # Alias parsed.
    ],
)
def test_usage_errors_exit_2_with_one_paragraph(run_main, module, argv, words):
  code, out, err = run_main(importlib.import_module(module), argv)
  assert code == 2 and not out, err
  for word in words:
    assert word in err, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_parse_takes_absl_syntax_anywhere_in_argv():
  args = flags.FlagValues()
  flags.DEFINE_multi_string("workdir", None, "Runs.", flag_values=args)
  flags.DEFINE_bool("raw", True, "Raw.", flag_values=args)
  flags.DEFINE_list("only", None, "Names.", flag_values=args)
  argv = ["a", "--workdir", "w1", "b", "--noraw", "--workdir=w2", "--only=x,y", "--", "--c"]
  rest = cli.parse(args, argv, prog="p", description="d", positional="ARGS")
  assert rest == ["a", "b", "--c"]
  assert (args.workdir, args.raw, args.only) == (["w1", "w2"], False, ["x", "y"])


def test_importing_the_tools_registers_no_global_flag():
  for name, load, _ in TOOLS:
    if name != "conv_weight_grad":  # Imports torch: slow, and defines its flags in main as well.
      load()
  tool_flags = {"workdir", "checkpoint", "out", "outdir", "weights", "seconds", "shape", "vs_torch"}
  assert not tool_flags & set(flags.FLAGS), sorted(tool_flags & set(flags.FLAGS))


def _python_files():
  for folder, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "build", "venv")]
    yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_no_module_imports_argparse():
  found = []
  for path in _python_files():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      if any(n.split(".")[0] in ("argparse", "optparse", "getopt") for n in names):
        found.append(os.path.relpath(path, ROOT))
  assert not found, f"Command lines use absl flags (incres.cli); these import argparse: {found}"
  assert len(list(_python_files())) > 40  # The walk did see the repository.


@pytest.mark.slow
def test_the_real_command_lines():
  """`python -m` and `python <script>`: --help exits 0, a flag error exits 2 (absl's, in launch)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  cases = [
      (["-m", "incres.predict", "--help"], 0, "--checkpoint"),
      (["experiments/degradation.py", "--only=plain99"], 2, "--only: unknown run plain99"),
      (["launch.py", "--config=tests/tiny_config.py", "--no_such_flag"], 2, "no_such_flag"),
  ]
  for argv, status, words in cases:
    result = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == status and words in output, (argv, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
