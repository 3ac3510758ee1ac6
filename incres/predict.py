"""Classify images with a trained (or converted) model.

  python -m incres.predict --checkpoint=runs/quickstart img1.jpg img2.png ...

prints the top-5 classes of each image with their names and probabilities. `--checkpoint` is a
workdir (newest checkpoint) or `<workdir>/checkpoints/<step>`. Images get the run's evaluation view
(`config.eval_preprocess` and normalisation). The run's averaged parameters are used when it kept
them (`--raw` for the raw ones). Files that cannot be read as images are reported by name and
skipped; the rest are still classified.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from typing import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow is first imported.


def imagenet_class_names() -> tuple[str, ...]:
  """The 1,000 ImageNet class names, in the standard label order."""
  text = resources.files("incres").joinpath("imagenet_classes.txt").read_text()
  return tuple(line for line in text.splitlines() if line)


def label_names(config) -> tuple[str, ...]:
  """The run's class names: its dataset's, ImageNet's for 1000-class ImageNet runs, else numbers."""
  from incres import data

  num_classes = config.num_classes
  if "imagenet" in config.dataset and num_classes == 1000:
    return imagenet_class_names()
  try:
    names = tuple(data.dataset_info(config).label_names)
  except Exception:  # pylint: disable=broad-except  (the dataset need not be present to predict)
    names = ()
  if len(names) == num_classes:
    return names
  return tuple(f"class {i}" for i in range(num_classes))


def read_image(path: str) -> np.ndarray:
  """A file as an RGB uint8 array; raises OSError/ValueError if it is not a readable image."""
  from PIL import Image

  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def predict(checkpoint: str, paths: Sequence[str], *, top_k: int = 5, averaged: bool = True):
  """Returns ([(path, [(name, probability), ...]), ...], [(path, error), ...])."""
  import jax

  from incres import checkpoint as ckpt
  from incres import data, finetune

  workdir, step = finetune.resolve_source(checkpoint)
  try:
    config, model, variables = ckpt.load_variables(workdir, step, averaged=averaged)
  except ValueError:  # The run kept no average of its parameters.
    config, model, variables = ckpt.load_variables(workdir, step, averaged=False)
  names = label_names(config)
  images, ok, failed = [], [], []
  for path in paths:
    try:
      images.append(data.preprocess_for_eval(read_image(path), config))
      ok.append(path)
    except Exception as e:  # pylint: disable=broad-except  (report it, classify the rest)
      failed.append((path, f"{type(e).__name__}: {e}"))
  results = []
  if images:
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)[0]))
    probs = np.asarray(apply(variables, np.stack(images)))
    for path, p in zip(ok, probs):
      order = np.argsort(-p)[:top_k]
      results.append((path, [(names[i], float(p[i])) for i in order]))
  return results, failed


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m incres.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="A workdir or <workdir>/checkpoints/<step>.")
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("--raw", action="store_true", help="Use the raw, not the averaged, parameters.")
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  try:
    results, failed = predict(args.checkpoint, args.images, top_k=args.top_k, averaged=not args.raw)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path, top in results:
    print(path)
    for name, p in top:
      print(f"  {p:7.2%}  {name}")
  for path, error in failed:
    print(f"skipped {path}: not a readable image ({error})", file=sys.stderr)
  return 0 if results or not failed else 1


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.setup_process()  # Before TensorFlow is imported: quiet start-up, quick exit.
  sys.exit(main())
