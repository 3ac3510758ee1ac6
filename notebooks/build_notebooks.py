"""Writes notebooks/*.ipynb (without outputs) from the cell lists below: edit here, then run

  python notebooks/build_notebooks.py

so the committed notebooks and their reviewable source stay in step (tests check they do).
"""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

# The pip arguments for what this Python lacks of incres' requirements. Kept separate from SETUP
# so the tests can run it against made-up installed versions.
REQUIREMENTS = r'''
def missing_requirements(requires, version_of):
  """pip arguments for the `requires` lines that `version_of(name) -> version or None` lacks.

  Colab ships `tensorflow` (GPU build) and its own jax: those are kept when new enough. incres asks
  for `tensorflow-cpu`, which any TensorFlow build satisfies; installing it beside Colab's
  `tensorflow` would overwrite its files, so a too-old `tensorflow` is upgraded under its own
  name. jax is upgraded with the extra that matches the installed accelerator plugin (CUDA or TPU).
  """
  from packaging.requirements import Requirement

  def ok(name, spec):
    v = version_of(name)
    return v is not None and spec.contains(v, prereleases=True)

  missing = []
  for line in requires:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
      continue  # For another platform.
    name, spec = req.name.lower().replace("_", "-"), req.specifier
    if name in ("tensorflow", "tensorflow-cpu"):
      if ok("tensorflow", spec) or ok("tensorflow-cpu", spec):
        continue
      has_gpu_tf = version_of("tensorflow") is not None
      missing.append(f"{'tensorflow' if has_gpu_tf else 'tensorflow-cpu'}{spec}")
    elif name in ("jax", "jaxlib"):
      if ok(name, spec):
        continue
      extra = (
          "[tpu]" if version_of("libtpu") is not None
          else "[cuda12]" if version_of("jax-cuda12-plugin") is not None
          else "[cuda13]" if version_of("jax-cuda13-plugin") is not None
          else ""
      )
      missing.append(f"jax{extra}{spec}" if name == "jax" else f"jaxlib{spec}")
    elif not ok(name, spec):
      missing.append(str(req))
  return missing
'''.strip()

SETUP = (
    r"""
# Find the incres checkout (or clone INCRES_REPO), install only what is missing, work from its root.
import configparser, importlib.metadata, os, subprocess, sys

IN_COLAB = "google.colab" in sys.modules


def _is_checkout(d):
  return os.path.isfile(os.path.join(d, "setup.cfg")) and os.path.isdir(os.path.join(d, "incres"))


def _find_checkout():
  # The checkout this notebook was opened from (a parent of the working directory), else the
  # places a Colab user puts one: /content/incres (cloned or uploaded) or Google Drive.
  d = os.path.abspath(os.getcwd())
  while d != os.path.dirname(d):
    if _is_checkout(d):
      return d
    d = os.path.dirname(d)
  for d in ("/content/incres", "/content/drive/MyDrive/incres"):
    if _is_checkout(d):
      return d
  return None


ROOT = _find_checkout()
if ROOT is None and INCRES_REPO:
  ROOT = "/content/incres" if IN_COLAB else os.path.abspath("incres")
  subprocess.run(["git", "clone", "--depth=1", INCRES_REPO, ROOT], check=True)
if ROOT is None:
  raise SystemExit(
      "No incres checkout found (looked above the working directory, in /content/incres and in "
      "/content/drive/MyDrive/incres). Set INCRES_REPO in the first cell to the git URL of your "
      "copy of incres (e.g. your GitHub fork) and run again, or upload the repository to "
      "/content/incres, or put it on Google Drive at MyDrive/incres and mount Drive first "
      "(from google.colab import drive; drive.mount('/content/drive'))."
  )
os.chdir(ROOT)
sys.path.insert(0, ROOT)  # This checkout's incres, even where another copy is pip-installed.

"""
    + REQUIREMENTS
    + r"""


def _version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


_cfg = configparser.ConfigParser()
_cfg.read(os.path.join(ROOT, "setup.cfg"))
_requires = [r.strip() for r in _cfg["options"]["install_requires"].splitlines() if r.strip()]
MISSING = missing_requirements(_requires, _version)
if MISSING and IN_COLAB:  # Only what is missing: Colab's jax and TensorFlow stay when new enough.
  print("Installing", *MISSING)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", *MISSING], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", ROOT],
                 check=True)
elif MISSING:  # Your own environment: incres does not pip-install into it behind your back.
  print(f"Missing or too old: {' '.join(MISSING)}; run `pip install -e {ROOT}` first.")

RUNS = os.path.abspath(RUNS)  # Relative to the checkout.
os.makedirs(RUNS, exist_ok=True)

from incres import runtime

runtime.setup_process()  # As launch.py: TensorFlow's start-up lines off.
runtime.keep_tensorflow_off_accelerators()  # TensorFlow only feeds data; JAX keeps the GPU memory.
import jax

print("JAX", jax.__version__, "devices:", jax.devices(), "runs in", RUNS)
PLATFORM = jax.devices()[0].platform  # "tpu", "gpu" or "cpu"
DTYPE = "bfloat16" if PLATFORM == "tpu" else "float32"
"""
).strip()

PLATFORM_MD = """
**What to expect on each runtime.** The same cells run everywhere; only the speed differs.
- **TPU** (Runtime → Change runtime type → TPU): Colab's TPU runtime ships JAX for TPU; nothing else
  to install (if its JAX is older than incres needs, `pip install -U "jax[tpu]"` first). All
  TPU cores form the `('data',)` mesh, the global batch is split across them, and the notebook
  computes in bfloat16 (parameters stay float32).
- **GPU**: one device, float32 by default (set `DTYPE = "bfloat16"` to try mixed precision).
- **CPU**: works, slowly: keep `SMOKE = True` or use the offline `digits` dataset.
""".strip()


def params(extra=""):
  return (
      "# Parameters (papermill-style: CI runs every notebook with SMOKE = True and nothing else changed).\n"
      "import os\n\n"
      "SMOKE = False  # True: tiny offline runs (digits) that finish in a minute on a CPU.\n"
      "# Where runs, figures and generated datasets go (relative paths: inside the checkout).\n"
      'RUNS = os.environ.get("INCRES_RUNS", "runs")\n'
      "# Git URL to clone incres from when no checkout is found (e.g. your GitHub fork).\n"
      'INCRES_REPO = os.environ.get("INCRES_REPO", "")\n' + extra
  ).strip()


QUICKSTART = [
    (
        "md",
        "# incres quickstart: train a CIFAR ResNet-20\n\n"
        "Trains the ResNet paper's CIFAR-10 network with its recipe, through the same "
        "`incres.train.train_and_evaluate` that `launch.py` calls, then plots the curves and prints "
        "the test numbers.",
    ),
    ("code", params()),
    ("md", PLATFORM_MD),
    ("code", SETUP),
    (
        "md",
        "## The config\n\n`experiments/resnet_cifar.py` is the paper's recipe (batch 128, lr 0.1 "
        "÷10 at 32k/48k steps, 64k steps). CIFAR-10 needs a download; without network (or with "
        "`SMOKE`) we fall back to scikit-learn's bundled `digits`.",
    ),
    (
        "code",
        r"""
from incres import configs, data, train

dataset = "digits" if SMOKE else "cifar10"
config = configs.load(f"experiments/resnet_cifar.py:dataset={dataset},smoke={SMOKE}")
try:
  info = data.dataset_info(config)
except data.DatasetError as e:  # No network: the offline dataset.
  print(e, "\n-> using digits")
  config = configs.load(f"experiments/resnet_cifar.py:dataset=digits,smoke={SMOKE}")
  info = data.dataset_info(config)
config.dtype = DTYPE
# The run's length in steps comes from the dataset's size (the config states epochs).
print(config.model, config.dataset, "|", configs.describe_run_length(configs.resolve_config(config, info), info))
""".strip(),
    ),
    ("md", "## Train\n\nRe-running the cell resumes from the workdir's newest checkpoint."),
    (
        "code",
        r"""
WORKDIR = f"{RUNS}/notebook_quickstart_{config.dataset}" + ("_smoke" if SMOKE else "")
metrics = train.train_and_evaluate(config, WORKDIR)
""".strip(),
    ),
    (
        "md",
        "## Curves and numbers\n\nTensorBoard reads the workdir too (`%load_ext tensorboard`, "
        "`%tensorboard --logdir {RUNS}` in Colab, with your `RUNS`); here the curves are drawn with matplotlib.",
    ),
    (
        "code",
        r"""
from IPython.display import Image, display
from incres import analysis

curves = analysis.plot_curves([WORKDIR], WORKDIR + "/curves.png")
display(Image(WORKDIR + "/curves.png"))
print(f"test top-1 {metrics['eval/top1']:.2%}, top-5 {metrics['eval/top5']:.2%} "
      f"after {metrics['step']} steps")
assert 0.0 <= metrics["eval/top1"] <= 1.0
""".strip(),
    ),
]

FINETUNE = [
    (
        "md",
        "# Fine-tuning: restore a checkpoint, replace the head, train on a new task\n\n"
        "A source model comes from `INIT_FROM` (a training run's workdir), from torchvision's "
        "ImageNet weights converted with `incres.convert_torch` (`TORCHVISION_WEIGHTS`, a `.pth` "
        "file you supply), or, if neither is given, from a short run on `digits` trained here. It is "
        "fine-tuned with `experiments/finetune.py` onto a new task: by default digits 0–4 written "
        "as a `folder:` dataset (the layout your own images would have).",
    ),
    (
        "code",
        params(
            'INIT_FROM = ""  # A workdir to start from; "" trains a small source on digits here.\n'
            'TORCHVISION_WEIGHTS = ""  # e.g. "resnet50-0676ba61.pth" (converted to INIT_FROM).\n'
            'TORCHVISION_MODEL = "resnet50"\n'
            'DATASET = ""  # The new task; "" = digits 0-4 as a folder: dataset.\n'
            "FREEZE_BACKBONE = True  # Linear probe; False fine-tunes everything.\n"
        ),
    ),
    ("md", PLATFORM_MD),
    ("code", SETUP),
    (
        "code",
        r"""
from incres import configs, convert_torch, train

if TORCHVISION_WEIGHTS:
  INIT_FROM = f"{RUNS}/imported_{TORCHVISION_MODEL}"
  if not os.path.isdir(INIT_FROM):  # Converted on an earlier run of this cell: reuse it.
    _, variables = convert_torch.convert(
        convert_torch.load_state_dict(TORCHVISION_WEIGHTS), TORCHVISION_MODEL)
    convert_torch.save(TORCHVISION_MODEL, variables, INIT_FROM)
if not INIT_FROM:  # A source model trained here on all ten digits.
  INIT_FROM = f"{RUNS}/notebook_source_digits" + ("_smoke" if SMOKE else "")
  source = configs.load(f"experiments/resnet_cifar.py:dataset=digits,smoke={SMOKE}")
  if not SMOKE:
    source.num_train_steps, source.lr_boundaries = 400, (200, 300)
  source.dtype = DTYPE
  train.train_and_evaluate(source, INIT_FROM)
""".strip(),
    ),
    (
        "code",
        r"""
import numpy as np
from PIL import Image as PILImage
from sklearn.datasets import load_digits

if not DATASET:  # Digits 0-4 as class folders: a new 5-class task.
  root = f"{RUNS}/digits_0_to_4"
  d = load_digits()
  for i, (image, label) in enumerate(zip(d.images, d.target)):
    if label < 5:
      os.makedirs(f"{root}/digit_{label}", exist_ok=True)
      pixels = np.clip(image * 16, 0, 255).astype(np.uint8)
      PILImage.fromarray(pixels).resize((32, 32), PILImage.BILINEAR).convert("RGB").save(
          f"{root}/digit_{label}/{i}.png")
  DATASET = "folder:" + root

from incres import checkpoint

source_config = checkpoint.load_config(INIT_FROM)
config = configs.load(
    f"experiments/finetune.py:model={source_config.model},dataset={DATASET},"
    f"freeze={FREEZE_BACKBONE},smoke={SMOKE}")
config.init_from = INIT_FROM
config.dtype = DTYPE
if SMOKE:
  config.num_train_steps = 30
WORKDIR = f"{RUNS}/notebook_finetune" + ("_smoke" if SMOKE else "")
metrics = train.train_and_evaluate(config, WORKDIR)
print(open(WORKDIR + "/init_from.txt").read()[:1500])
""".strip(),
    ),
    ("md", "## Predictions on the new task"),
    (
        "code",
        r"""
import matplotlib.pyplot as plt
from incres import data

cfg, model, variables = checkpoint.load_variables(WORKDIR)
batch = next(data.create_eval_iter(cfg))
logits, _ = model.apply(variables, batch["image"], train=False)
predicted = np.argmax(np.asarray(logits), -1)
names = data.dataset_info(cfg).label_names
fig, axes = plt.subplots(3, 6, figsize=(9, 5))
for ax, image, label, guess in zip(axes.flat, batch["image"], batch["label"], predicted):
  shown = (image - image.min()) / (np.ptp(image) + 1e-6)
  ax.imshow(shown)
  ax.set_title(f"{names[guess]}\n(true {names[label]})", fontsize=8,
               color="green" if guess == label else "red")
  ax.axis("off")
plt.tight_layout()
plt.show()
print(f"fine-tuned test top-1 {metrics['eval/top1']:.2%}")
""".strip(),
    ),
]

ANALYSIS = [
    (
        "md",
        "# Analysis: complexity, Figure 6 and Figure 7\n\n"
        "The complexity table of every model, then the ResNet paper's Figure 6 (training and test "
        "error against iterations) and Figure 7 (std of every 3×3 layer's response) for the runs in "
        "`WORKDIRS` (e.g. those of `experiments/degradation.py`). With no workdirs given, two short "
        "runs (plain-20 and ResNet-20 on digits) are trained here.",
    ),
    (
        "code",
        params('WORKDIRS = []  # e.g. ["runs/degradation/plain20", "runs/degradation/resnet20"]\n'),
    ),
    ("md", PLATFORM_MD),
    ("code", SETUP),
    (
        "code",
        r"""
from incres import summary

names = ["GoogLeNet", "GoogLeNetBN", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
         "Plain34", "CifarResNet20", "CifarResNet56", "CifarResNet110", "CifarPlain56"]
print(summary.format_table(summary.rows(names, xla=False)))
""".strip(),
    ),
    (
        "code",
        r"""
from incres import configs, train

if not WORKDIRS:
  for plain in (True, False):
    config = configs.load(f"experiments/resnet_cifar.py:dataset=digits,plain={plain},smoke={SMOKE}")
    config.dtype = DTYPE
    if not SMOKE:
      config.num_train_steps, config.lr_boundaries = 300, (150, 225)
    config.eval_every_steps = max(1, config.num_train_steps // 4)
    config.log_every_steps = max(1, config.num_train_steps // 10)
    workdir = f"{RUNS}/notebook_{config.model}" + ("_smoke" if SMOKE else "")
    train.train_and_evaluate(config, workdir)
    WORKDIRS.append(workdir)
""".strip(),
    ),
    (
        "code",
        r"""
import numpy as np
from IPython.display import Image, display
from incres import analysis

analysis.plot_curves(WORKDIRS, f"{RUNS}/notebook_fig6.png")
display(Image(f"{RUNS}/notebook_fig6.png"))
responses = analysis.responses_figure(
    WORKDIRS, f"{RUNS}/notebook_fig7.png", csv_path=f"{RUNS}/notebook_fig7.csv",
    max_examples=100 if SMOKE else None)
display(Image(f"{RUNS}/notebook_fig7.png"))
for label, layers in responses.items():
  print(f"{label}: mean std {np.mean(list(layers.values())):.3f} over {len(layers)} 3x3 layers")
""".strip(),
    ),
]


def build(cells):
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  nb.metadata["accelerator"] = "TPU"
  for kind, text in cells:
    if kind == "md":
      nb.cells.append(nbformat.v4.new_markdown_cell(text))
    else:
      cell = nbformat.v4.new_code_cell(text)
      if text.startswith("# Parameters"):
        cell.metadata["tags"] = ["parameters"]
      nb.cells.append(cell)
  for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i}"  # Stable ids keep diffs small.
  return nb


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "finetune.ipynb": FINETUNE, "analysis.ipynb": ANALYSIS}


def main():
  for name, cells in NOTEBOOKS.items():
    nbformat.write(build(cells), os.path.join(HERE, name))


if __name__ == "__main__":
  main()
