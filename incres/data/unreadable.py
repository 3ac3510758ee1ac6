"""Unreadable images: skipped, batches refilled, counted, named in the log; `check_folder`."""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator

from absl import logging
import numpy as np
import tensorflow as tf

from incres.data import loading, sources, tfdata

# Unreadable images named in the log per process; the rest are counted (`check` lists them all).
MAX_NAMED_BAD_IMAGES = 10
# A training batch with unreadable images is refilled from this many following batches' rows.
SPARE_BATCHES = 2

# The unreadable images this process has met, for the limit above. Never reset: a process that
# trains several times (a notebook, a study) names at most MAX_NAMED_BAD_IMAGES in all.
_named_bad_images: set[str] = set()


def example_name(config, source: sources.ArraySource, index: int) -> str:
  """The file (or, for in-memory sources, the example number) behind `index`."""
  if source.kind == "path":
    return str(source.images[index])
  return f"{config.dataset} example {index}"


def _unreadable_reason(source: sources.ArraySource, index: int) -> str:
  """Why example `index` fails to load: TensorFlow's message, trimmed to its first line."""
  try:
    if source.kind == "path":
      loading.decode_image(tf.io.read_file(str(source.images[index])))
    elif source.kind == "encoded":
      loading.decode_image(source.images[index % len(source.images)])
  except tf.errors.OpError as e:
    return _short_error(e)
  return "it decodes, but its preprocessing failed"


def _short_error(error: tf.errors.OpError) -> str:
  """TensorFlow's error message without its op and device decorations."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error.message)).strip().splitlines()[0]
  text = re.sub(r"^.*assertion failed: \[(.*)\]$", r"\1", text)  # augment's check of a JPEG.
  return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip() or type(error).__name__


def report_unreadable(config, source: sources.ArraySource, indices: list[int], where: str) -> None:
  """Names the first MAX_NAMED_BAD_IMAGES unreadable images of this process in the log."""
  for index in indices:
    name = example_name(config, source, index)
    if name in _named_bad_images:
      continue
    _named_bad_images.add(name)
    if len(_named_bad_images) <= MAX_NAMED_BAD_IMAGES:
      logging.warning(
          "Skipping unreadable image %s (%s) in %s.", name, _unreadable_reason(source, index), where
      )
    if len(_named_bad_images) == MAX_NAMED_BAD_IMAGES + 1 and config.dataset.startswith("folder:"):
      logging.warning(
          "Further unreadable images are skipped and counted without being named; list them all "
          "with: python -m incres.data check %s",
          config.dataset,
      )


class SkippingBatches:
  """Batches of a random-access split that pass over unreadable images; `skipped` counts them.

  Batches come from the plain pipeline, `batches(step)`. When a batch fails to load (an image that
  does not decode), it is rebuilt by `repair(step) -> (batch, unreadable indices)`, which loads
  its candidates one by one and drops the failures, and the plain pipeline restarts at the next
  batch. Which images fail depends only on the files, so every batch stays a function of its step:
  good data costs nothing extra, and resuming at any step gives the same batches.
  """

  def __init__(self, batches, repair, step: int, report: Callable[[list[int], int], None]):
    self.skipped = 0  # Unreadable images passed over by the batches yielded so far.
    self._batches, self._repair, self._report = batches, repair, report
    self._step = step
    self._it = None

  def __iter__(self) -> SkippingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._batches(self._step)
    try:
      batch = next(self._it)
    except tf.errors.OpError as error:
      self._it = None  # Restarted after this batch by the next call.
      batch, bad = self._repair(self._step)
      if not bad:  # Nothing unreadable: a real failure, not for us to hide.
        raise error
      self.skipped += len(bad)
      self._report(bad, self._step)
    self._step += 1
    return batch


class CountingBatches:
  """A generator of batches, `generate(self)`, that adds its skipped images to `self.skipped`."""

  def __init__(self, generate: Callable[[CountingBatches], Iterator[dict[str, np.ndarray]]]):
    self.skipped = 0
    self._gen = generate(self)

  def __iter__(self) -> CountingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._gen)


def check_folder(root: str) -> tuple[int, list[tuple[str, str]]]:
  """Decodes every image file under `root`: (number of images, [(unreadable path, reason)])."""
  paths = sorted(
      os.path.join(folder, f)
      for folder, _, files in os.walk(root)
      for f in files
      if f.lower().endswith(sources.IMAGE_EXTENSIONS)
  )
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string, shape=[len(paths)]))
  ds = ds.map(
      lambda p: (p, tf.shape(loading.decode_image(tf.io.read_file(p)))),
      num_parallel_calls=tfdata.AUTOTUNE,
  )
  readable = {p.decode() for p, _ in tfdata.options(ds.ignore_errors()).as_numpy_iterator()}
  bad = []
  for path in paths:
    if path in readable:
      continue
    try:  # Again, alone, for TensorFlow's reason (only for the few that failed).
      loading.decode_image(tf.io.read_file(path))
      reason = "failed once, then decoded: unreliable storage?"
    except tf.errors.OpError as e:
      reason = _short_error(e)
    bad.append((path, reason))
  return len(paths), bad
