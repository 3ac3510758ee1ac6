"""Orbax's expected noise while checkpoints are read, silenced only while they are being read.

Two kinds of report tell the user nothing:
- orbax's warning each time a read-only `CheckpointManager` is opened, which is exactly what a
  reader asks for;
- the reports of the reads a failed restore abandons. When one array file of a step is missing or
  cut short, orbax raises at once and leaves the other arrays' reads unfinished: their coroutines
  report "Exception ignored in: <coroutine object _read_array_index_and_device_put ...>" whenever
  the garbage collector reaches them, and their TensorStore callbacks report "Event loop is
  closed" when they complete, in other threads, after the damaged step was named and moved aside
  (a hundred tracebacks for a ResNet).

`quieted()` (or `acquire`/`release`) installs a filter on absl's logger and a
`sys.unraisablehook` that drop those reports and pass every other one on. Installations are
reference-counted, so readers and checkpointers open at the same time share one; when the last
one leaves, the previous hook and the logger's filters are restored exactly, except after a
restore that abandoned reads (`keep_hook_until_exit`): those report whenever their TensorStore
callbacks complete, also after the checkpointer closed (seen in CI: 133 "Event loop is closed"
reports after a cut array file), so the hook then stays for the rest of the process. Importing this
module (or `incres.checkpoint`) changes nothing process-wide.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging


def _is_orbax_coroutine(obj: Any) -> bool:
  code = getattr(obj, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _is_closed_loop_callback(unraisable: Any) -> bool:
  """A TensorStore read finishing after orbax closed the event loop that awaited it."""
  exc, tb = unraisable.exc_value, unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (
      isinstance(exc, RuntimeError)
      and str(exc) == "Event loop is closed"
      and tb is not None
      and f"{os.sep}asyncio{os.sep}" in tb.tb_frame.f_code.co_filename
  )


class _DropReadOnlyNotices:
  """Orbax warns each time a read-only manager is opened, which is exactly what we ask for."""

  def filter(self, record: Any) -> bool:
    message = str(record.msg)
    return not ("read_only=True" in message or "directory is read only" in message)


class _Installation:
  """The filter and the hook, installed while `count` > 0."""

  def __init__(self):
    self.count = 0
    self.lock = threading.Lock()  # Checkpointers may be opened and closed from several threads.
    self.filter = _DropReadOnlyNotices()
    self.previous: Callable[[Any], None] | None = None
    self.hook: Callable[[Any], None] | None = None
    self.pinned = False  # A restore abandoned reads: the hook stays until the process ends.

  def acquire(self) -> None:
    with self.lock:
      self.count += 1
      if self.count > 1:
        return
      logging.get_absl_logger().addFilter(self.filter)
      if self.hook is not None:  # Pinned by an earlier restore's abandoned reads: still in place.
        return
      previous = sys.unraisablehook

      def hook(unraisable: Any) -> None:
        if not (_is_orbax_coroutine(unraisable.object) or _is_closed_loop_callback(unraisable)):
          previous(unraisable)

      self.previous, self.hook = previous, hook
      sys.unraisablehook = hook

  def release(self) -> None:
    with self.lock:
      if self.count == 0:
        raise RuntimeError("checkpoint_quiet.release() without a matching acquire().")
      self.count -= 1
      if self.count > 0:
        return
      logging.get_absl_logger().removeFilter(self.filter)
      if self.pinned:
        return
      # A hook installed on top of ours since (it forwards to ours, ours to the previous one) is
      # left in place: putting the previous one back would silently drop the newer one.
      if sys.unraisablehook is self.hook:
        sys.unraisablehook = self.previous
      self.previous = self.hook = None


_INSTALLATION = _Installation()


def keep_hook_until_exit() -> None:
  """Keeps the unraisable hook after the last `release`: a failed restore abandoned reads."""
  with _INSTALLATION.lock:
    _INSTALLATION.pinned = True


def acquire() -> None:
  """Installs the filters (or counts one more user of them)."""
  _INSTALLATION.acquire()


def release() -> None:
  """Undoes one `acquire`; the last one restores the previous hook and logger filters."""
  _INSTALLATION.release()


@contextlib.contextmanager
def quieted() -> Iterator[None]:
  """The filters, for the duration of a `with` block."""
  acquire()
  try:
    yield
  finally:
    release()
