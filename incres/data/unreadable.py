"""Unreadable images: skipped, batches refilled, counted, named in the log; `check_folder`.

Random-access splits rebuild a batch that fails (`SkippingBatches`: the train iterator refills it
from spare rows, the eval iterator masks the failed rows out); streamed ones drop unreadable
records, and `CountingBatches` counts the gaps in the record numbers. Every iterator counts its
skipped images in `skipped`; the first MAX_NAMED_BAD_IMAGES of a run are named in the log
(`named_images`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Iterator
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from incres.data import loading, sources, tfdata

# Unreadable images named in the log per run; the rest are counted (`check` lists them all).
MAX_NAMED_BAD_IMAGES = 10
# A training batch with unreadable images is refilled from this many following batches' rows.
SPARE_BATCHES = 2


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
  text = re.sub(r"^.*assertion failed: \[(.*)\]$", r"\1", text)  # decoding's check of a JPEG.
  return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip() or type(error).__name__


class NamedImages:
  """The unreadable images one run has met, of which it names the first MAX_NAMED_BAD_IMAGES."""

  def __init__(self):
    self._names: set[str] = set()

  def report(self, config, source: sources.ArraySource, indices: list[int], where: str) -> None:
    """Names each of `indices` met for the first time in the log, up to the run's limit."""
    for index in indices:
      name = example_name(config, source, index)
      if name in self._names:
        continue
      self._names.add(name)
      count = len(self._names)
      if count <= MAX_NAMED_BAD_IMAGES:
        logging.warning(
            "Skipping unreadable image %s (%s) in %s.",
            name,
            _unreadable_reason(source, index),
            where,
        )
      if count == MAX_NAMED_BAD_IMAGES + 1 and config.dataset.startswith("folder:"):
        logging.warning(
            "Further unreadable images are skipped and counted without being named; list them all "
            "with: python -m incres.data check %s",
            config.dataset,
        )


# (config, its run's NamedImages), for the configs still alive.
_runs: list[tuple[weakref.ref, NamedImages]] = []


def named_images(config: Any) -> NamedImages:
  """The record of the unreadable images named in `config`'s run.

  A run is one config object: `train.train_and_evaluate` resolves its config once and builds its
  training and evaluation iterators from it, so an image is named once per run (not at every
  evaluation), while a second run in the same process (a notebook) resolves a new config
  and names its images again. A config that cannot be weakly referenced gets a fresh record.
  """
  try:
    ref = weakref.ref(config)
  except TypeError:
    return NamedImages()
  _runs[:] = [(r, named) for r, named in _runs if r() is not None]
  for r, named in _runs:
    if r() is config:
      return named
  named = NamedImages()
  _runs.append((ref, named))
  return named


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
  """Batches of a streamed split whose unreadable records were dropped (`ignore_errors`): the gaps
  in each batch's record numbers are counted in `skipped` and logged.

  `segments` yields `(batches, first, where)`: batches whose 'record' holds each row's record
  number in the segment (an epoch, a process's evaluation share; -1 for padding rows, and removed
  from the batches yielded), the number of the segment's first record, and the segment's name in
  the log ("imagenet2012 train in epoch 3").
  """

  def __init__(self, segments: Iterable[tuple[Iterator[dict[str, np.ndarray]], int, str]]):
    self.skipped = 0  # Unreadable records passed over by the batches yielded so far.
    self._gen = self._generate(segments)

  def __iter__(self) -> CountingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._gen)

  def _generate(self, segments) -> Iterator[dict[str, np.ndarray]]:
    for batches, expected, where in segments:  # `expected`: the next record, if all decode.
      for batch in batches:
        records = batch.pop("record")
        records = records[records >= 0]
        if len(records):
          skipped = int(records[-1]) + 1 - expected - len(records)
          expected = int(records[-1]) + 1
          if skipped:
            self.skipped += skipped
            logging.warning(
                "Skipped %d unreadable record(s) of %s (before record %d).",
                skipped,
                where,
                expected - 1,
            )
        yield batch


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
