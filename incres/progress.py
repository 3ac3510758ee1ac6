"""A progress line for the training loop: step/total, epoch, loss, accuracy, images/s and ETA.

On a terminal the line is redrawn in place (at most a few times a second) and a permanent copy is
left at every logging step. When stdout is a file or a pipe (cluster logs), nothing is redrawn: one
plain line per logging step, so log files stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
  """Formats seconds as `H:MM:SS` (or `M:SS` under an hour)."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
  """Reports training progress on `stream` (stdout by default)."""

  def __init__(
      self,
      total_steps: int,
      *,
      steps_per_epoch: float,
      stream: TextIO | None = None,
      interactive: bool | None = None,
      min_interval_s: float = 0.25,
  ):
    self._total = total_steps
    self._steps_per_epoch = steps_per_epoch
    self._stream = stream if stream is not None else sys.stdout
    if interactive is None:
      isatty = getattr(self._stream, "isatty", None)
      interactive = bool(isatty and isatty())
    self.interactive = interactive
    self._min_interval = min_interval_s
    self._last_draw = 0.0
    self._live = False  # Whether a redrawable line is on screen.
    self._images_per_sec: float | None = None
    self._batch_size: int | None = None

  def set_speed(self, images_per_sec: float, batch_size: int) -> None:
    """Records the latest measured throughput, used for images/s and the ETA."""
    self._images_per_sec = images_per_sec
    self._batch_size = batch_size

  def _line(self, step: int, metrics: Mapping[str, Any]) -> str:
    width = len(str(self._total))
    parts = [f"step {step:>{width}}/{self._total} ({100.0 * step / self._total:5.1f}%)"]
    parts.append(f"epoch {step / self._steps_per_epoch:.2f}")
    for key, label, fmt in (
        ("train/loss", "loss", ".4f"),
        ("train/accuracy", "acc", ".3f"),
        ("train/learning_rate", "lr", ".3g"),
        ("eval/top1", "eval top-1", ".4f"),
    ):
      if key in metrics:
        parts.append(f"{label} {float(metrics[key]):{fmt}}")
    if self._images_per_sec:
      parts.append(f"{self._images_per_sec:,.0f} img/s")
      remaining = (self._total - step) * self._batch_size / self._images_per_sec
      parts.append(f"ETA {format_duration(remaining)}")
    return " | ".join(parts)

  def update(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Called every step: redraws the live line on a terminal; does nothing otherwise."""
    if not self.interactive:
      return
    now = time.monotonic()
    if now - self._last_draw < self._min_interval and step != self._total:
      return
    self._last_draw = now
    self._stream.write("\r\x1b[K" + self._line(step, metrics))
    self._stream.flush()
    self._live = True

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Called at logging steps: writes a permanent line."""
    prefix = "\r\x1b[K" if self._live else ""
    self._stream.write(prefix + self._line(step, metrics) + "\n")
    self._stream.flush()
    self._live = False

  def message(self, text: str) -> None:
    """Writes a line of text without garbling the live line."""
    prefix = "\r\x1b[K" if self._live else ""
    self._stream.write(prefix + text + "\n")
    self._stream.flush()
    self._live = False

  def close(self) -> None:
    if self._live:
      self._stream.write("\n")
      self._stream.flush()
      self._live = False
