"""Every documented command, run as a user types it: README.md's and each tool's module docstring's.

The other tests call the tools' `main` in-process, so a tool's `__main__` block never ran there (one
of them made every `python -m incres.evaluate` crash after its predictions). Here each command runs
as a subprocess (`python launch.py ...`, `python -m incres.<tool> ...`), in a project folder laid out
as the README's (`launch.py`, `experiments/`, the `runs/` the commands make), with tiny stand-ins
for sizes: the smoke-sized tiny CIFAR ResNet-20 (`resnet_cifar.py`'s `smoke=True,tiny=True`) on
digits, torchvision's ResNet-18 with random weights for the ResNet-50 ones, a few generated images,
a few models of the summary's table. Commands that need the network or ImageNet run offline and must
end in one paragraph with exit status 2. `test_every_documented_command_is_run` reads the documents
again, so that a newly documented command cannot be left out.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import glob
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A machine without network, for the commands that download: name lookups fail at once and
# urllib3 retries without waiting (tfds retries a download 10 times with backoff: 3.5 minutes).
OFFLINE_SITECUSTOMIZE = '''
"""tests/test_commands.py: this process is offline."""
import socket


def _offline(*args, **kwargs):
  raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution (offline test)")


socket.getaddrinfo = _offline
try:
  from urllib3.util import retry

  retry.Retry.get_backoff_time = lambda self: 0
except ImportError:
  pass
'''


@dataclasses.dataclass(frozen=True)
class Command:
  run: str  # What the test runs, in shell syntax, in the project folder.
  documented: tuple[str, ...]  # The documented commands it stands for, as the documents write them.


README_QUICKSTART = (
    "python launch.py --config=experiments/resnet_cifar.py:dataset=digits --workdir=runs/quickstart"
)
# Each test's command, and the documented ones it runs (same tool, subcommand and flags).
COMMANDS = {
    "quickstart": Command(
        "python launch.py --config=experiments/resnet_cifar.py:dataset=digits,smoke=True,tiny=True"
        " --workdir=runs/quickstart",
        (README_QUICKSTART,),
    ),
    "finetune_folder": Command(
        "python launch.py"
        " --config=experiments/finetune.py:model=CifarResNet20,dataset=folder:data/mine,smoke=True"
        " --config.init_from=runs/quickstart --workdir=runs/ft_mine",
        (
            "python launch.py --config=experiments/finetune.py:model=CifarResNet20,dataset="
            "folder:/data/mine --config.init_from=runs/quickstart --workdir=runs/ft_mine",
        ),
    ),
    "convert_torch": Command(
        "python -m incres.convert_torch --model=resnet18 --weights=resnet18-random.pth"
        " --out=runs/tv_resnet18",
        (
            "python -m incres.convert_torch --model=resnet50 --weights=resnet50-0676ba61.pth"
            " --out=runs/tv_resnet50",
            "python -m incres.convert_torch --model=resnet50 --weights=resnet50-0676ba61.pth"
            " --out=DIR",
        ),
    ),
    "finetune_imagenette_offline": Command(
        "python launch.py --config=experiments/finetune.py:dataset=imagenette"
        " --config.init_from=runs/tv_resnet50 --workdir=runs/tv_resnet50_imagenette",
        (
            "python launch.py --config=experiments/finetune.py:dataset=imagenette"
            " --config.init_from=runs/tv_resnet50 --workdir=runs/tv_resnet50_imagenette",
        ),
    ),
    "googlenet_imagenet": Command(
        "python launch.py --config=experiments/googlenet.py --config.batch_size=256",
        (
            "python launch.py --config=experiments/googlenet.py --config.batch_size=256",
            "python launch.py --config=experiments/googlenet.py",
        ),
    ),
    "predict_imagenet_names": Command(
        "python -m incres.predict --checkpoint=runs/tv_resnet18 cat.jpg dog.png",
        ("python -m incres.predict --checkpoint=runs/tv_resnet50 cat.jpg dog.png",),
    ),
    "predict": Command(
        "python -m incres.predict --checkpoint=runs/quickstart cat.jpg dog.png",
        ("python -m incres.predict --checkpoint=runs/quickstart img1.jpg img2.png ...",),
    ),
    "export": Command(
        "python -m incres.export --checkpoint=runs/quickstart --out=exported",
        ("python -m incres.export --checkpoint=runs/quickstart --out=exported",),
    ),
    "export_torch": Command(
        "python -m incres.export --checkpoint=runs/tv_resnet18 --out=exported_r18"
        " --format=stablehlo,saved_model,torch",
        (
            "python -m incres.export --checkpoint=runs/tv_resnet50 --out=exported_r50"
            " --format=stablehlo,saved_model,torch",
        ),
    ),
    "analysis_curves": Command(
        "python -m incres.analysis curves --workdir=runs/quickstart --workdir=runs/ft_mine"
        " --out=fig6.png",
        (
            "python -m incres.analysis curves --workdir=runs/degradation/plain20 --workdir=..."
            " --out=fig6.png",
            "python -m incres.analysis curves --workdir=runs/plain20 --workdir=runs/plain56"
            " --out=fig6.png",
        ),
    ),
    "analysis_responses": Command(
        "python -m incres.analysis responses --workdir=runs/quickstart --workdir=runs/ft_mine"
        " --out=fig7.png",
        (
            "python -m incres.analysis responses --workdir=runs/degradation/plain20 --workdir=..."
            " --out=fig7.png",
            "python -m incres.analysis responses --workdir=runs/plain20 --workdir=runs/resnet20"
            " --out=fig7.png",
        ),
    ),
    "report_figures": Command(
        "python -m incres.report --workdir=runs/quickstart --workdir=runs/ft_mine --figures=figs/"
        " > report.md",
        (
            "python -m incres.report --workdir=runs/degradation/plain20 --workdir=... --figures=figs/"
            " > report.md",
            "python -m incres.report --workdir=runs/plain20 --workdir=runs/resnet20 --figures=docs/"
            " > report.md",
        ),
    ),
    "report_protocol": Command(
        "python -m incres.report --workdir=runs/quickstart --protocol=center > report_center.md",
        ("python -m incres.report --workdir=runs/resnet50 --protocol=10crop > report.md",),
    ),
    "evaluate": Command(
        "python -m incres.evaluate --workdir=runs/quickstart --protocol=single",
        (
            "python -m incres.evaluate --workdir=runs/degradation/resnet20 --protocol=single",
            "python -m incres.evaluate --workdir=runs/resnet50 --protocol=10crop",
        ),
    ),
    "evaluate_ensemble": Command(
        # One run twice: the ensemble's code path, on two runs scored on the same examples.
        "python -m incres.evaluate --workdir=runs/quickstart --workdir=runs/quickstart"
        " --protocol=center",
        ("python -m incres.evaluate --workdir=runs/a --workdir=runs/b --protocol=144crop",),
    ),
    "summary": Command(
        # Three models of the table's 38 (the whole table takes 20-50 s): a size stand-in.
        "python -m incres.summary CifarResNet20 ResNet18 GoogLeNet",
        ("python -m incres.summary",),
    ),
    "data_check": Command(
        "python -m incres.data check folder:data/mine",
        ("python -m incres.data check folder:<path>",),
    ),
}
# Documented commands no test here runs, and why.
NOT_RUN = {
    "python experiments/degradation.py --outdir=runs/degradation": (
        "trains six CIFAR nets (about 20 minutes on 2 cores); its pieces run here (launch.py,"
        " analysis, report, evaluate), and tests/test_cli_errors.py runs the script itself"
    ),
    "python experiments/residual_study.py --outdir=runs/residual_study": (
        "trains ten Inception-ResNet and ResNet-56 nets (34 minutes); tests/test_residual_study.py"
        " checks its configs and report"
    ),
    "python experiments/residual_study.py --outdir=runs/residual_study --seeds=1": "as above",
    "python experiments/residual_study.py --outdir=runs/residual_study --skip_training": (
        "needs the study's ten trained runs"
    ),
    "python launch.py --config=experiments/residual_study.py:study=inception,residual=False,seed=0"
    " --workdir=runs/residual_study/inception_plain_s0": (
        "trains an Inception-ResNet twin for minutes (compiling it alone takes over a minute); the"
        " launch.py path runs here with resnet_cifar.py and finetune.py"
    ),
    "python experiments/recipe_study.py --outdir=runs/recipe_study": (
        "trains eight pre-activation ResNet-56 runs (18-25 minutes each on 2 cores);"
        " tests/test_recipe_study.py checks each arm's config, trains the components together in"
        " a tiny run and renders the report from metrics"
    ),
    "python experiments/recipe_study.py --outdir=runs/recipe_study --skip_training": (
        "needs the study's eight trained runs"
    ),
    "python launch.py --config=experiments/recipe_study.py:arm=randaugment,seed=1"
    " --workdir=runs/recipe_randaugment_s1": (
        "trains a ResNet-56 for 300 steps (about 20 minutes here); tests/test_recipe_study.py"
        " trains every arm's settings at once in a tiny net for two steps"
    ),
    "python launch.py --config=experiments/<name>.py[:args] [--workdir=DIR] [--config.key=value"
    " ...]": "the pattern of the launch.py commands above",
    "python -m incres.<tool>": "the pattern of the tools' commands above",
    "python -m incres.convert_torch": "names the tool (its command is run above)",
}


def _run_command(name: str, project: str, offline: bool = False) -> subprocess.CompletedProcess:
  """Runs `COMMANDS[name]` as a shell runs it in `project`, with this checkout's incres."""
  env = dict(os.environ, PYTHONPATH=ROOT, HOME=os.path.join(project, "home"))
  env.pop("TFDS_DATA_DIR", None)  # tfds's default data_dir: ~/tensorflow_datasets, empty here.
  if offline:
    env["PYTHONPATH"] += os.pathsep + os.path.join(project, "offline")
  command = COMMANDS[name].run.replace("python ", f"{shlex.quote(sys.executable)} ", 1)
  start = time.time()
  result = subprocess.run(
      command, shell=True, cwd=project, env=env, capture_output=True, text=True, timeout=600
  )
  print(f"{name}: {time.time() - start:.1f} s, exit status {result.returncode}")
  return result


def _ok(result: subprocess.CompletedProcess) -> str:
  """The stdout of a command that must have succeeded quietly."""
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stdout


def _user_error(result: subprocess.CompletedProcess, *words: str) -> str:
  """The one-paragraph message of a command that must have failed as a user error."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for word in words:
    assert word in errors[0], errors[0]
  return errors[0]


def _images(folder: str, n: int, seed: int = 0) -> None:
  """`n` small random PNGs of a few sizes in `folder`."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    pixels = rng.integers(0, 256, size=(24 + i % 5, 20 + i % 3, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))


def _build_step(name: str, project: str) -> None:
  """Runs a command the runs come from; its output is kept in `logs/<name>.out` for its test."""
  out = _ok(_run_command(name, project))
  with open(os.path.join(project, "logs", f"{name}.out"), "w") as f:
    f.write(out)


def _log(project: str, name: str) -> str:
  """The stdout of the build step `name`."""
  with open(os.path.join(project, "logs", f"{name}.out")) as f:
    return f.read()


def _build(project: str) -> None:
  """The README's project folder and the runs the commands read: trained, fine-tuned, converted."""
  for name in ("launch.py", "experiments"):
    os.symlink(os.path.join(ROOT, name), os.path.join(project, name))
  os.makedirs(os.path.join(project, "home"))
  os.makedirs(os.path.join(project, "offline"))
  os.makedirs(os.path.join(project, "logs"))
  with open(os.path.join(project, "offline", "sitecustomize.py"), "w") as f:
    f.write(OFFLINE_SITECUSTOMIZE)
  for i, name in enumerate(("cat.jpg", "dog.png")):
    pixels = np.random.default_rng(i).integers(0, 256, size=(40 + 9 * i, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(project, name))
  for i, label in enumerate(("circles", "squares")):
    _images(os.path.join(project, "data", "mine", label), 10, seed=i)
  _build_step("quickstart", project)
  _build_step("finetune_folder", project)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError:  # The [test] extra brings them; the converted run's commands skip.
    return
  torch.manual_seed(0)
  torch.save(
      torchvision.models.resnet18().state_dict(), os.path.join(project, "resnet18-random.pth")
  )
  _build_step("convert_torch", project)


@pytest.fixture(scope="module", name="project")
def fixture_project(tmp_path_factory) -> str:
  """The project folder, built once even when pytest-xdist runs this module's tests in two
  workers (they share the session's temporary root, and take turns through a lock)."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent
  project = str(shared / "documented_commands")
  with open(str(shared / "documented_commands.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(project, ".built")):
      if os.path.exists(project):  # Left by a build that failed (in the other worker).
        raise RuntimeError(f"An earlier build of {project} failed; see that test's output.")
      os.makedirs(project)
      _build(project)
      open(os.path.join(project, ".built"), "w").close()
  return project


@pytest.fixture(name="converted")
def fixture_converted(project) -> str:
  """The project, when it has the run converted from torchvision's ResNet-18 (else a skip)."""
  if not os.path.isdir(os.path.join(project, "runs", "tv_resnet18")):
    pytest.skip("torch and torchvision are not installed: no converted run")
  return project


def _documents() -> dict[str, str]:
  """README.md and the module docstring of every command line, by path."""
  paths = ["README.md", "launch.py"]
  for path in sorted(glob.glob(os.path.join(ROOT, "incres", "**", "*.py"), recursive=True)):
    with open(path) as f:
      tree = ast.parse(f.read())
    if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body):
      paths.append(os.path.relpath(path, ROOT))
  texts = {}
  for path in paths:
    with open(os.path.join(ROOT, path)) as f:
      text = f.read()
    texts[path] = text if path.endswith(".md") else (ast.get_docstring(ast.parse(text)) or "")
  return texts


_COMMAND = re.compile(r"python (launch\.py|-m incres\.|experiments/)")


def documented_commands(text: str) -> list[str]:
  """The commands in `text`: lines that start with one (continued by trailing backslashes; a
  trailing comment dropped) and inline code that is one."""
  found, lines = [], text.splitlines()
  for i, line in enumerate(lines):
    line = line.strip()
    if not _COMMAND.match(line) or (i and lines[i - 1].rstrip().endswith("\\")):
      continue
    j = i
    while line.endswith("\\") and j + 1 < len(lines):
      j += 1
      line = line[:-1].rstrip() + " " + lines[j].strip()
    found.append(re.sub(r"\s+#.*$", "", line))
  found += [s.strip() for s in re.findall(r"`([^`\n]+)`", text) if _COMMAND.match(s.strip())]
  return list(dict.fromkeys(found))


def shape(command: str) -> tuple:
  """What a stand-in must keep of a documented command: the program, its subcommand or config
  file, the flags it gives (not `--config.KEY` overrides) and any redirection. Values (sizes,
  paths) and positional arguments (images, models) may differ."""
  words = command.split()
  program = words[1] if words[1] != "-m" else words[2]
  rest = words[2:] if words[1] != "-m" else words[3:]
  flags, other = [], []
  for word in rest:
    if word.startswith("--") and not word.startswith("--config."):
      flags.append(word.split("=")[0])
    elif word.startswith("--config="):
      other.append(word.split("=")[1].split(":")[0])
  subcommand = rest[0] if rest and re.fullmatch(r"[a-z]+", rest[0]) else None  # curves, check
  redirect = ">" in words
  return program, subcommand, tuple(other), tuple(sorted(set(flags))), redirect


def test_every_documented_command_is_run():
  stands_for = {doc: name for name, c in COMMANDS.items() for doc in c.documented}
  missing = []
  for path, text in _documents().items():
    for command in documented_commands(text):
      if command in NOT_RUN:
        continue
      if command not in stands_for:
        missing.append(f"{path}: {command}")
        continue
      run = COMMANDS[stands_for[command]].run
      assert shape(run) == shape(command), (run, command)
  assert not missing, (
      "Documented commands that tests/test_commands.py does not run (add a test to COMMANDS, or"
      " the reason to NOT_RUN):\n" + "\n".join(missing)
  )
  everything = {c for text in _documents().values() for c in documented_commands(text)}
  stale = sorted((stands_for.keys() | NOT_RUN.keys()) - everything)
  assert not stale, f"No longer documented: {stale}"


def _main_blocks(tree: ast.Module) -> list[ast.If]:
  """The module's `if __name__ == "__main__":` blocks."""
  return [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]


def _bound(nodes) -> dict[str, str]:
  """Each name the statements bind at their level, and to what ("import incres.errors", "def")."""
  bound = {}
  for node in nodes:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      prefix = f"{node.module}." if isinstance(node, ast.ImportFrom) else ""
      for alias in node.names:
        bound[alias.asname or alias.name.split(".")[0]] = f"import {prefix}{alias.name}"
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound[node.name] = "def"
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      bound[node.id] = "assignment"
  return bound


def test_main_blocks_rebind_no_name_of_their_module():
  # A `__main__` block runs in the module's namespace: `from incres import errors` there replaced
  # evaluate's `errors` function, and every `python -m incres.evaluate` crashed at its end.
  scripts = ["launch.py"] + [
      os.path.relpath(p, ROOT)
      for folder in ("incres", "experiments", "benchmarks")
      for p in sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True))
  ]
  clashes = []
  for path in scripts:
    with open(os.path.join(ROOT, path)) as f:
      tree = ast.parse(f.read())
    blocks = _main_blocks(tree)
    module = _bound(n for n in tree.body if n not in blocks)
    for node in (n for n in tree.body if not isinstance(n, ast.If)):
      module.update(_bound(ast.walk(node)) if isinstance(node, (ast.Assign, ast.AnnAssign)) else {})
    for block in blocks:
      for name, what in _bound(ast.walk(block)).items():
        if name in module and (module[name] != what or what == "assignment"):
          clashes.append(f"{path}: `{name}` ({what}) rebinds the module's {module[name]}")
  assert not clashes, "\n".join(clashes)


@pytest.mark.slow
def test_quickstart_trains_and_evaluates(project):
  assert "Finished 20 steps" in _log(project, "quickstart")
  with open(os.path.join(project, "runs", "quickstart", "metrics.jsonl")) as f:
    metrics = f.read()
  assert '"eval/top1"' in metrics
  assert "20" in os.listdir(os.path.join(project, "runs", "quickstart", "checkpoints"))


@pytest.mark.slow
def test_finetune_from_the_quickstart_run_onto_a_folder(project):
  assert "Finished 10 steps" in _log(project, "finetune_folder")
  with open(os.path.join(project, "runs", "ft_mine", "init_from.txt")) as f:
    loaded = f.read()
  assert "re-initialised (2):" in loaded and "params/head/kernel" in loaded
  assert os.path.isdir(os.path.join(project, "runs", "ft_mine", "checkpoints", "10"))


@pytest.mark.slow
def test_convert_torch_writes_a_run_and_prints_the_next_commands(converted):
  out = _log(converted, "convert_torch")
  assert out.startswith("Wrote ResNet18 (torchvision resnet18, 1000 classes) to runs/tv_resnet18")
  assert "python -m incres.predict --checkpoint=runs/tv_resnet18 image.jpg" in out
  assert os.listdir(os.path.join(converted, "runs", "tv_resnet18", "checkpoints")) == ["0"]


@pytest.mark.slow
def test_evaluate_prints_the_table(project):
  out = _ok(_run_command("evaluate", project))
  assert re.search(
      r"^\| runs/quickstart \| single \| [\d.]+ \| [\d.]+ \| 300 \| 1 \| 1 \|$", out, re.M
  )


@pytest.mark.slow
def test_evaluate_an_ensemble(project):
  out = _ok(_run_command("evaluate_ensemble", project))
  assert re.search(
      r"^\| ensemble of 2 \| center \| [\d.]+ \| [\d.]+ \| 300 \| 1 \| 2 \|$", out, re.M
  )


@pytest.mark.slow
def test_predict_prints_the_top_5_of_each_image(project):
  out = _ok(_run_command("predict", project))
  assert out.splitlines()[0] == "cat.jpg" and "dog.png" in out.splitlines()
  assert len(re.findall(r"^ +[\d.]+%  \d$", out, re.M)) == 10, out  # digits' labels: 0-9.


@pytest.mark.slow
def test_predict_names_imagenet_classes_for_a_converted_run(converted):
  from incres import predict  # pylint: disable=g-import-not-at-top

  out = _ok(_run_command("predict_imagenet_names", converted))
  names = re.findall(r"^ +[\d.]+%  (.+)$", out, re.M)
  assert len(names) == 10 and set(names) <= set(predict.imagenet_class_names()), out


@pytest.mark.slow
def test_export_writes_stablehlo_and_a_saved_model(project):
  out = _ok(_run_command("export", project))
  assert "Wrote stablehlo, saved_model of CifarResNet20" in out
  assert {"model.stablehlo", "saved_model", "export.json"} <= set(
      os.listdir(os.path.join(project, "exported"))
  )


@pytest.mark.slow
def test_export_a_converted_run_for_torch_too(converted):
  out = _ok(_run_command("export_torch", converted))
  assert "Wrote stablehlo, saved_model, torch of ResNet18" in out
  written = os.listdir(os.path.join(converted, "exported_r18"))
  assert {"model.stablehlo", "saved_model", "model.pth"} <= set(written), written


@pytest.mark.slow
def test_analysis_draws_figures_6_and_7(project):
  out = _ok(_run_command("analysis_curves", project))
  assert "ResNet-20 (ft_mine): final training error" in out and "Wrote fig6.png" in out
  out = _ok(_run_command("analysis_responses", project))
  assert "Wrote fig7.png and fig7.csv" in out
  for name in ("fig6.png", "fig7.png"):
    assert os.path.getsize(os.path.join(project, name)) > 1000


@pytest.mark.slow
def test_report_with_figures(project):
  _ok(_run_command("report_figures", project))
  with open(os.path.join(project, "report.md")) as f:
    report = f.read()
  assert "\n| quickstart | CifarResNet20" in report and "\n| ft_mine | CifarResNet20" in report
  assert "![Figure 6" in report and os.path.exists(os.path.join(project, "figs", "fig7.png"))


@pytest.mark.slow
def test_report_with_a_test_protocol(project):
  _ok(_run_command("report_protocol", project))
  with open(os.path.join(project, "report_center.md")) as f:
    report = f.read()
  assert re.search(r"\n\| quickstart \| CifarResNet20.* \| center \|", report), report


@pytest.mark.slow
def test_summary_prints_the_complexity_table(project):
  out = _ok(_run_command("summary", project))
  assert "| ResNet18 | 224 | 11,689,512 | 11,689,512 ✓ | 1.814G | 1.800G | 1.008 |" in out, out
  assert "| GoogLeNet | 224 | 13,378,280 | 13,378,280 ✓ | 1.583G | 1.500G | 1.055 |" in out, out
  assert "| CifarResNet20 | 32 | 269,722 | 269,722 ✓ | 0.041G |" in out, out


@pytest.mark.slow
def test_data_check_lists_nothing_and_prints_no_start_up_lines(project):
  result = _run_command("data_check", project)
  assert _ok(result) == "All 20 images under data/mine decode.\n"
  # TensorFlow's start-up lines (oneDNN's, absl's "before absl::InitializeLog()") came twice.
  lines = result.stderr.splitlines()
  assert len(set(lines)) == len(lines), result.stderr
  assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr, result.stderr


@pytest.mark.slow
def test_finetune_on_imagenette_offline_fails_in_one_paragraph(project):
  _user_error(
      _run_command("finetune_imagenette_offline", project, offline=True),
      "'imagenette' is not prepared",
      "network problem",
      "dataset=digits",
  )


@pytest.mark.slow
def test_googlenet_without_imagenet_fails_in_one_paragraph(project):
  _user_error(
      _run_command("googlenet_imagenet", project, offline=True),
      "'imagenet2012' needs a manual download",
      "ILSVRC2012_img_train.tar",
  )


@pytest.mark.slow
def test_launch_names_the_configs_for_a_missing_config_file(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=experiments/no_such.py"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  configs = sorted(glob.glob("experiments/*.py", root_dir=ROOT))
  message = _user_error(result, "experiments/no_such.py", *configs)
  assert result.stderr.strip() == message and not result.stdout


@pytest.mark.slow
def test_launch_help_exits_0_with_the_usage():
  result = subprocess.run(
      [sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("Trains a model described by an experiment config.")
  assert "--config: Experiment config" in result.stdout and "--workdir" in result.stdout
