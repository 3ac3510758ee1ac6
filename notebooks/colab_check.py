"""Runs every notebook as a Colab user would, in the Python that runs this script (see colab_check.sh).

  python notebooks/colab_check.py --repo=URL_OR_PATH --work=DIR [notebook.ipynb ...]

What is simulated: the kernel starts in DIR/content (no checkout above it, as /content on Colab),
the setup cell's IN_COLAB is True (its Colab branch: it clones `--repo` and
pip-installs what is missing of incres's requirements), and /content in the setup cell is DIR/content
(this machine's /content is not ours to write). The first notebook clones and installs; the next
ones find DIR/content/incres, as a second notebook in the same Colab runtime does. Every notebook
runs top to bottom with SMOKE = True, as tests/test_notebooks.py runs them. Prints one line per
notebook (its result, seconds and the setup cell's output) and the versions after the install.
"""

import importlib.metadata
import json
import os
import sys
import time

from absl import app, flags  # absl-py comes with TensorFlow, as on Colab.
import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
IN_COLAB = 'IN_COLAB = "google.colab" in sys.modules'


def _versions():
  def v(name):
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return None

  names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "tensorflow-cpu"]
  names += ["tensorflow-datasets", "ml-collections", "keras", "numpy", "protobuf", "ml-dtypes"]
  return {"python": sys.version.split()[0], **{n: v(n) for n in names}}


def run(path, work, repo):
  nb = nbformat.read(path, as_version=4)
  (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert "SMOKE = False" in params.source
  params.source = params.source.replace("SMOKE = False", "SMOKE = True", 1)
  (setup,) = [c for c in nb.cells if c.cell_type == "code" and "IN_COLAB =" in c.source]
  assert IN_COLAB in setup.source
  # The Colab branch without a fake google.colab module (jax and others import its submodules).
  setup.source = setup.source.replace(IN_COLAB, "IN_COLAB = True  # colab_check.py", 1)
  setup.source = setup.source.replace('"/content', f'"{work}/content')
  os.environ.update(INCRES_REPO=repo, INCRES_RUNS=os.path.join(work, "runs"))
  cwd = os.path.join(work, "content")
  os.makedirs(cwd, exist_ok=True)
  client = nbclient.NotebookClient(
      nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": cwd}}
  )
  t0 = time.time()
  error = None
  try:
    client.execute()
  except Exception as e:  # pylint: disable=broad-except
    error = f"{type(e).__name__}: {str(e)[-3000:]}"
  seconds = time.time() - t0
  setup_out = "".join(o.get("text", "") for o in setup.get("outputs", []))
  images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
  return {
      "notebook": os.path.basename(path),
      "ok": error is None,
      "seconds": round(seconds, 1),
      "figures": images,
      "setup_output": setup_out.strip(),
      **({"error": error} if error else {}),
  }


_REPO = flags.DEFINE_string("repo", None, "what the setup cell clones (INCRES_REPO)", required=True)
_WORK = flags.DEFINE_string(
    "work", None, "scratch directory (its content/ is /content)", required=True
)


def main(argv):
  names = argv[1:] or ["quickstart.ipynb", "finetune.ipynb", "analysis.ipynb"]
  work = os.path.abspath(_WORK.value)
  print("before:", json.dumps(_versions()), flush=True)
  results = []
  for name in names:
    r = run(os.path.join(HERE, name), work, _REPO.value)
    results.append(r)
    print(json.dumps(r, indent=1), flush=True)
  print("after:", json.dumps(_versions()), flush=True)
  return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
  app.run(main)
