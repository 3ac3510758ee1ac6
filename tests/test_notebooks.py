"""Every notebook runs top to bottom on CPU with SMOKE = True (and nothing else changed)."""

import glob
import os
import shutil

import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
ROOT = os.path.dirname(NOTEBOOKS)

nbclient = pytest.importorskip("nbclient")


def _smoke(nb):
  (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert "SMOKE = False" in cell.source
  cell.source = cell.source.replace("SMOKE = False", "SMOKE = True", 1)
  return nb


@pytest.mark.parametrize("name", ["quickstart.ipynb", "finetune.ipynb", "analysis.ipynb"])
def test_notebook_runs_with_smoke(name):
  for path in glob.glob(os.path.join(ROOT, "runs", "notebook_*")) + [
      os.path.join(ROOT, "runs", "digits_0_to_4")
  ]:
    shutil.rmtree(path, ignore_errors=True)  # Fresh runs, not resumed ones.
  nb = _smoke(nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4))
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
  )
  client.execute()  # Raises CellExecutionError if any cell fails.
  outputs = "".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "devices:" in outputs
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the notebook shows its figures"


def test_committed_notebooks_match_their_source_and_have_no_outputs():
  import importlib.util

  spec = importlib.util.spec_from_file_location("build", os.path.join(NOTEBOOKS, "build_notebooks.py"))
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  for name, cells in build.NOTEBOOKS.items():
    committed = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in build.build(cells).cells], name
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
