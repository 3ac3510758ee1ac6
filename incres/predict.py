"""Classify images with a trained (or converted) model.

  python -m incres.predict --checkpoint=runs/quickstart img1.jpg img2.png ...

prints the top-5 classes of each image with their names and probabilities. `--checkpoint` is a
workdir (newest checkpoint) or `<workdir>/checkpoints/<step>`. Images get the run's evaluation view
(`config.eval_preprocess` and normalisation). The run's averaged parameters are used when it kept
them (`--raw` for the raw ones). Images are read and classified `--batch_size` (64) at a time, so
memory stays flat however many are given. Files that cannot be read as images are reported by name
and skipped; the rest are still classified.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import resources

from absl import flags
import numpy as np

from incres import cli, errors


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


class NotARunError(errors.MissingFileError):
  """`--checkpoint` names no saved incres run."""


def resolve_run(checkpoint: str) -> tuple[str, int | None]:
  """`checkpoint` (a workdir or `<workdir>/checkpoints/<step>`) -> (workdir, step or None).

  Raises NotARunError, saying what to pass instead, when it holds no saved step.
  """
  from incres import checkpoint as ckpt  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.path.expanduser(checkpoint))
  m = re.fullmatch(r"(.*)/" + re.escape(ckpt.CHECKPOINT_DIR) + r"/(\d+)/?", path)
  workdir, step = (m.group(1), int(m.group(2))) if m else (path, None)
  directory = ckpt.checkpoint_dir(workdir)
  steps = (
      sorted(int(n) for n in os.listdir(directory) if n.isdigit())
      if os.path.isdir(directory)
      else []
  )
  if steps and step is not None and step not in steps:
    problem = f"names step {step}, which the run does not have (it has {steps})"
  elif not os.path.exists(path):
    problem = "does not exist"
  elif not steps:
    problem = f"is not an incres run (no saved step in {directory})"
  else:
    return workdir, step
  raise NotARunError(
      f"--checkpoint={checkpoint} {problem}. Pass a training run's workdir (the --workdir of"
      " launch.py, holding checkpoints/<step>), one of its checkpoints/<step> folders, or the --out"
      " folder of `python -m incres.convert_torch`."
  )


def classify_batch(apply: Callable, variables, images: np.ndarray) -> np.ndarray:
  """Softmax probabilities of one batch (a function of its own so tests can count batches)."""
  return np.asarray(apply(variables, images))


def _batches(
    paths: Sequence[str], config, batch_size: int, failed: list
) -> Iterator[tuple[list[str], np.ndarray]]:
  """(paths, preprocessed images) of at most `batch_size` readable images at a time; unreadable
  files are appended to `failed` as (path, error)."""
  from incres import data  # pylint: disable=g-import-not-at-top

  ok, images = [], []
  for path in paths:
    try:
      images.append(data.preprocess_for_eval(read_image(path), config))
      ok.append(path)
    except Exception as e:  # pylint: disable=broad-except  (report it, classify the rest)
      failed.append((path, f"{type(e).__name__}: {e}"))
    if len(images) == batch_size:
      yield ok, np.stack(images)
      ok, images = [], []
  if images:
    yield ok, np.stack(images)


def classify_images(
    checkpoint: str,
    paths: Sequence[str],
    *,
    top_k: int = 5,
    averaged: bool = True,
    batch_size: int = 64,
):
  """Returns ([(path, [(name, probability), ...]), ...], [(path, error), ...]).

  Images are classified `batch_size` at a time; every batch is padded to one shape, so there is
  one compile.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from incres import checkpoint as ckpt  # pylint: disable=g-import-not-at-top

  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
  workdir, step = resolve_run(checkpoint)
  try:
    config, model, variables = ckpt.load_variables(workdir, step, averaged=averaged)
  except ValueError:  # The run kept no average of its parameters.
    config, model, variables = ckpt.load_variables(workdir, step, averaged=False)
  names = label_names(config)
  apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)[0]))
  rows = min(batch_size, len(paths))
  results, failed = [], []
  for ok, images in _batches(paths, config, batch_size, failed):
    padded = np.zeros((rows, *images.shape[1:]), images.dtype)
    padded[: len(images)] = images  # The padded rows are dropped (eval-mode BN is per example).
    probs = classify_batch(apply, variables, padded)[: len(images)]
    for path, p in zip(ok, probs):
      order = np.argsort(-p)[:top_k]
      results.append((path, [(names[i], float(p[i])) for i in order]))
  return results, failed


def main(argv: Sequence[str] | None = None) -> int:
  args = flags.FlagValues()
  flags.DEFINE_string(
      "checkpoint",
      None,
      "A workdir or <workdir>/checkpoints/<step>.",
      required=True,
      flag_values=args,
  )
  flags.DEFINE_integer("top_k", 5, "Classes printed per image.", flag_values=args)
  flags.DEFINE_bool("raw", False, "Use the raw, not the averaged, parameters.", flag_values=args)
  flags.DEFINE_integer(
      "batch_size", 64, "Images classified at a time.", lower_bound=1, flag_values=args
  )
  prog = "python -m incres.predict"
  images = cli.parse(
      args, argv, prog=prog, description=__doc__.split("\n\n")[0], positional="IMAGE [IMAGE ...]"
  )
  if not images:
    raise cli.UsageError("Name at least one image file to classify", prog)
  try:
    results, failed = classify_images(
        args.checkpoint,
        images,
        top_k=args.top_k,
        averaged=not args.raw,
        batch_size=args.batch_size,
    )
  except (errors.UserError, FileNotFoundError, ValueError) as e:
    print(errors.message(e), file=sys.stderr)
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

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
