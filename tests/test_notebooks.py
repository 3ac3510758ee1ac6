"""Every notebook runs top to bottom on CPU with SMOKE = True (and nothing else changed), writing
only where it is told to: never into the user's `runs/`."""

import hashlib
import importlib.util
import os
import pathlib
import shutil

import nbformat
import pytest

from conftest import assert_checkout_unchanged, describe_changes, snapshot_checkout

# Subprocess and multi-run tests: out of the quick `-m "not slow"` subset (CI runs them all).
pytestmark = pytest.mark.slow

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
ROOT = os.path.dirname(NOTEBOOKS)

nbclient = pytest.importorskip("nbclient")


def _build_module():
  path = os.path.join(NOTEBOOKS, "build_notebooks.py")
  spec = importlib.util.spec_from_file_location("build", path)
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  return build


def _run(notebook_dir: str, name: str) -> nbformat.NotebookNode:
  """Executes notebooks/<name> with SMOKE = True, the kernel started in `notebook_dir`."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert "SMOKE = False" in cell.source
  cell.source = cell.source.replace("SMOKE = False", "SMOKE = True", 1)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": notebook_dir}}
  )
  client.execute()  # Raises CellExecutionError if any cell fails.
  outputs = "".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "devices:" in outputs
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the notebook shows its figures"
  return nb


@pytest.mark.parametrize("name", ["finetune.ipynb", "analysis.ipynb"])
def test_notebook_runs_with_smoke_and_writes_only_under_incres_runs(name, tmp_path, monkeypatch):
  runs = tmp_path / "runs"
  monkeypatch.setenv("INCRES_RUNS", str(runs))  # The kernel inherits the environment.
  monkeypatch.setenv("INCRES_REPO", "")
  before = snapshot_checkout(ROOT)
  _run(NOTEBOOKS, name)
  assert_checkout_unchanged(before, ROOT)
  assert any(n.startswith("notebook_") for n in os.listdir(runs)), os.listdir(runs)


def _hashes(root):
  return {
      os.path.relpath(os.path.join(d, f), root): hashlib.sha256(
          pathlib.Path(d, f).read_bytes()
      ).hexdigest()
      for d, _, files in os.walk(root)
      for f in files
  }


def test_quickstart_in_a_checkout_keeps_an_existing_run_beside_its_own(tmp_path, monkeypatch):
  # A copy of the checkout (the library linked, not copied) that already holds a CIFAR run where
  # the quickstart would put one: the notebook, with its default `runs`, must add its own run
  # beside it and leave it byte for byte.
  checkout = tmp_path / "incres"
  os.makedirs(checkout / "notebooks")
  for name in ("incres", "experiments"):
    os.symlink(os.path.join(ROOT, name), checkout / name)
  shutil.copy(os.path.join(ROOT, "setup.cfg"), checkout / "setup.cfg")
  existing = checkout / "runs" / "notebook_quickstart_cifar10"
  os.makedirs(existing / "checkpoints" / "4")
  (existing / "metrics.jsonl").write_text('{"step": 4, "train/loss": 2.1}\n')
  (existing / "checkpoints" / "4" / "state").write_bytes(os.urandom(1000))
  kept = _hashes(existing)
  monkeypatch.delenv("INCRES_RUNS", raising=False)
  monkeypatch.setenv("INCRES_REPO", "")
  before = snapshot_checkout(ROOT)
  _run(str(checkout / "notebooks"), "quickstart.ipynb")
  assert _hashes(existing) == kept
  assert (checkout / "runs" / "notebook_quickstart_digits_smoke" / "curves.png").exists()
  assert_checkout_unchanged(before, ROOT)


def test_committed_notebooks_match_their_source_and_have_no_outputs():
  build = _build_module()
  for name, cells in build.NOTEBOOKS.items():
    committed = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in build.build(cells).cells], name
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


def test_no_placeholder_links_in_notebooks_or_readme():
  for path in [os.path.join(NOTEBOOKS, n) for n in os.listdir(NOTEBOOKS)] + [
      os.path.join(ROOT, "README.md")
  ]:
    if os.path.isfile(path):
      with open(path) as f:
        assert "YOUR_GITHUB_USER" not in f.read(), path


def _missing(requires, installed):
  namespace = {}
  exec(_build_module().REQUIREMENTS, namespace)  # pylint: disable=exec-used
  return namespace["missing_requirements"](requires, installed.get)


REQUIRES = ["jax>=0.10.2", "jaxlib>=0.10.2", "tensorflow-cpu>=2.21", "ml-collections>=1.1.0"]


def test_colab_setup_keeps_colabs_tensorflow_and_jax_when_new_enough():
  colab = {
      "jax": "0.10.3",
      "jaxlib": "0.10.3",
      "tensorflow": "2.21.1",
      "jax-cuda12-plugin": "0.10.3",
  }
  assert _missing(REQUIRES, colab) == ["ml-collections>=1.1.0"]  # Never tensorflow-cpu.


def test_colab_setup_upgrades_old_ones_under_their_own_names():
  colab = {
      "jax": "0.7.2",
      "jaxlib": "0.7.2",
      "tensorflow": "2.19.0",
      "jax-cuda12-plugin": "0.7.2",
      "ml-collections": "1.1.0",
  }
  assert _missing(REQUIRES, colab) == ["jax[cuda12]>=0.10.2", "jaxlib>=0.10.2", "tensorflow>=2.21"]
  tpu = {"jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.20"}
  assert _missing(REQUIRES[:1], tpu) == ["jax[tpu]>=0.10.2"]
  assert _missing(REQUIRES[2:3], {}) == ["tensorflow-cpu>=2.21"]  # No TensorFlow at all.
  assert _missing(["tensorflow>=2.21"], {"tensorflow-cpu": "2.21.0"}) == []
  assert _missing(['pywin32>=300; sys_platform == "win32"'], {}) == []  # Another platform's.


def test_the_checkout_snapshot_sees_runs_added_removed_and_changed(tmp_path):
  run = tmp_path / "runs" / "notebook_quickstart_cifar10"
  os.makedirs(run)
  (run / "metrics.jsonl").write_text("{}\n")
  (run / "old.txt").write_text("x")
  os.makedirs(tmp_path / "incres" / "__pycache__")
  before = snapshot_checkout(str(tmp_path))
  (run / "metrics.jsonl").write_text("{}\n{}\n")
  (run / "old.txt").unlink()
  (tmp_path / "fig6.png").write_bytes(b"png")
  (tmp_path / "incres" / "__pycache__" / "x.pyc").write_bytes(b"")  # A cache: not counted.
  assert describe_changes(before, snapshot_checkout(str(tmp_path))).splitlines() == [
      "added fig6.png",
      "removed runs/notebook_quickstart_cifar10/old.txt",
      "changed runs/notebook_quickstart_cifar10/metrics.jsonl",
  ]
