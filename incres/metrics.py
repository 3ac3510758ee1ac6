"""Where a run's numbers go: TensorBoard event files and `metrics.jsonl` in the workdir.

`MetricWriter` writes both; only process 0 of a multi-host run writes (the others get a writer with
`enabled=False`). The event files are written directly as TFRecords of `Event` protos with
`simple_value` scalars (the format TensorBoard reads, produced with TensorFlow's public protos), so
no summary ops run in the loop; `tensorboard --logdir=<workdir>` (a dependency) shows them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging

from incres import fileio

METRICS_FILE = "metrics.jsonl"


def _to_json_value(value: Any) -> Any:
  """Converts numpy/JAX scalars to Python numbers; non-finite floats become strings."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep the information as text.
  return value


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Returns the records of `workdir/metrics.jsonl`, skipping a torn last line (after `kill -9`)."""
  return list(_read_jsonl(os.path.join(workdir, METRICS_FILE)))


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
  if not os.path.exists(path):
    return
  with open(path) as f:
    for line in f:
      if not line.endswith("\n"):
        return  # A last line cut short by a killed process (every record ends in a newline).
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        continue  # Not ours (e.g. edited by hand); the rest of the file is still good.


def _set_aside(path: str) -> str:
  """Renames `path` to `path.<time>.old` (a free name) and returns the new name."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  target, k = f"{path}.{stamp}.old", 1
  while os.path.exists(target):
    target, k = f"{path}.{stamp}-{k}.old", k + 1
  os.rename(path, target)
  return target


class MetricWriter:
  """Writes scalars to TensorBoard event files and to `metrics.jsonl`, one JSON object per step.

  `resume_step`: when resuming, records after this step (written by the interrupted run and about
  to be recomputed, identically, by this one) are dropped from `metrics.jsonl` (the file is
  replaced atomically), and TensorBoard is told to discard them too (a `SessionLog.START` event at
  that step). Without it (a fresh start) an existing `metrics.jsonl`, left by a run killed before
  its first checkpoint, is kept as `metrics.jsonl.<time>.old` and a new file is started: every
  step appears once. Each record is one `write` call, so a kill never leaves half a line in the
  middle of the file; a torn last line is ignored by `read_metrics` and dropped on resume.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self._enabled = enabled
    self._jsonl = None
    self._events = None
    self._last_flush = time.monotonic()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if resume_step is not None and os.path.exists(path):
      kept = [r for r in _read_jsonl(path) if r.get("step", 0) <= resume_step]
      fileio.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    elif resume_step is None and os.path.exists(path):
      old = _set_aside(path)
      logging.warning("A fresh start: the previous %s was kept as %s.", METRICS_FILE, old)
    self._jsonl = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:  # pragma: no cover - a dependency, but training goes on without it.
      logging.warning("TensorFlow is not importable: no TensorBoard event files will be written.")
      return
    self._tf = tf
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
    self._events = tf.io.TFRecordWriter(os.path.join(workdir, name))
    self._write_event(tf.compat.v1.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if resume_step is not None:
      self._write_event(
          tf.compat.v1.Event(
              wall_time=time.time(),
              step=resume_step,
              session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START),
          )
      )

  def _write_event(self, event: Any) -> None:
    self._events.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes one record `{"step": step, **scalars}` and the matching TensorBoard scalars."""
    if not self._enabled:
      return
    record = {"step": int(step), **{k: _to_json_value(v) for k, v in scalars.items()}}
    fileio.append_line(self._jsonl, json.dumps(record) + "\n")
    if self._events is not None:
      tf = self._tf
      values = [
          tf.compat.v1.Summary.Value(tag=k, simple_value=float(_to_json_value(v)))
          for k, v in scalars.items()
          if isinstance(_to_json_value(v), (int, float))
      ]
      self._write_event(
          tf.compat.v1.Event(
              wall_time=time.time(), step=int(step), summary=tf.compat.v1.Summary(value=values)
          )
      )
      if time.monotonic() - self._last_flush > 10:
        self.flush()

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    if self._jsonl is not None:
      os.close(self._jsonl)
      self._jsonl = None
    if self._events is not None:
      self._events.close()
      self._events = None
