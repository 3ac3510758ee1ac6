"""`python -m incres.data check folder:<path>`: lists every unreadable image of a folder."""

from __future__ import annotations

import os
import sys
from typing import Sequence

if __name__ == "__main__":  # `python -m incres.data`: quiet TensorFlow's start-up, imported below.
  from incres import runtime as _runtime  # pylint: disable=g-import-not-at-top

  _runtime.setup_process()

from absl import flags  # pylint: disable=g-import-not-at-top

from incres import cli, runtime  # pylint: disable=g-import-not-at-top
from incres.data import sources, unreadable  # pylint: disable=g-import-not-at-top


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m incres.data check folder:<path>`: lists every unreadable image of a folder."""
  prog = "python -m incres.data"
  rest = cli.parse(
      flags.FlagValues(),  # `check` has no flags.
      argv,
      prog=prog,
      positional="check DATASET",
      description=(
          "Checks of incres datasets.\n\n"
          "check DATASET: decodes every image file under a folder: dataset (every split) as "
          "training would, and "
          "lists each one that fails with the reason. Training skips such files anyway and names "
          "only the first few; this lists them all. DATASET is folder:<path>, as given to "
          "--config.dataset. Exit status: 0 if every image decodes, 1 if unreadable images were "
          "found (listed on stdout), 2 for a usage error (such as a folder that does not exist)."
      ),
  )
  if len(rest) != 2 or rest[0] != "check":
    given = f" (given: {' '.join(rest)})" if rest else ""
    raise cli.UsageError(f"Expected `check DATASET`, e.g. check folder:/data/flowers{given}", prog)
  dataset = rest[1]
  if not dataset.startswith("folder:"):
    print(
        f"error: `check` decodes the files of a folder dataset; {dataset!r} is not one. Pass "
        "folder:<path> (tensorflow-datasets names are checked by tfds when they are prepared).",
        file=sys.stderr,
    )
    return 2
  root = dataset[len("folder:") :]
  if not os.path.isdir(root):
    print(
        f"error: folder dataset {root!r} does not exist or is not a directory. Pass the folder "
        "that holds class_name/image.jpg (or <split>/class_name/image.jpg), e.g. "
        "python -m incres.data check folder:/data/flowers",
        file=sys.stderr,
    )
    return 2
  runtime.keep_tensorflow_off_accelerators()
  total, bad = unreadable.check_folder(root)
  if total == 0:
    print(
        f"error: no image files ({', '.join(sources.IMAGE_EXTENSIONS)}) under {root!r}. Expected "
        "class_name/image.jpg (or <split>/class_name/image.jpg) under it.",
        file=sys.stderr,
    )
    return 2
  for path, reason in bad:
    print(f"{path}: {reason}")
  if bad:
    print(
        f"{len(bad)} of {total} images under {root} are unreadable. Training skips them (and "
        "names the first few in its log); remove or replace them to train on every image."
    )
    return 1
  print(f"All {total} images under {root} decode.")
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
