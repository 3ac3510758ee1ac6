"""Damaged checkpoint steps: told apart from intact ones, moved aside, and skipped on resume.

A step is damaged when its metadata cannot be read or its arrays do not restore (a file deleted or
cut short, by a disk problem or by hand). Resuming verifies the steps newest first and moves each
damaged one above the first intact step aside to `checkpoints/<step>.damaged`, which orbax does not
list, with a warning naming it and why; nothing is deleted. If no step is intact,
`DamagedCheckpointError` says so and nothing is moved.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from incres import checkpoint_compat
from incres import checkpoint_quiet
from incres import fileio

# `verify(where, saved_config, saved_tree)`: raises if the step holds another model (see
# `checkpoint_compat.check`).
Verify = Callable[[str, dict[str, Any], Any], None]


class DamagedCheckpointError(checkpoint_compat.IncompatibleCheckpointError):
  """No checkpoint in the workdir is intact (each one's metadata or arrays cannot be read)."""


def short_error(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message` of the root cause, cut to `limit` characters.

  The root cause (the end of the `raise ... from` chain) says what is wrong: orbax wraps each
  TensorStore read error in an `Exception` whose text is the array's index and, where it meant the
  store's spec, the repr of the bound method `<bound method ....spec of TensorStore({...})>`
  (pages long, and no reason); its cause, TensorStore's error, names the file and the damage.
  """
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text if len(text) <= limit else text[: limit - 3] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_step(
    reader: ocp.CheckpointManager, step: int
) -> tuple[str | None, dict[str, Any] | None, Any]:
  """`(damage, saved_config, saved_tree)` of a step: `damage` is why it cannot be read, or None."""
  try:
    meta = reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    saved_config = meta["config"]
    next_step = int(meta["data"]["next_step"])
  except Exception as e:  # pylint: disable=broad-except  (anything unreadable is damage)
    return f"its metadata (meta) cannot be read: {short_error(e)}", None, None
  if next_step != step:
    return f"its metadata says step {next_step}", None, None
  try:
    saved_tree = reader.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-except
    return f"the state's metadata cannot be read: {short_error(e)}", None, None
  saved_tree = getattr(saved_tree, "tree", saved_tree)
  if saved_tree is None:  # What orbax returns when state/_METADATA is missing.
    return "the state's array metadata (state/_METADATA) is missing", None, None
  return None, saved_config, saved_tree


def none_intact(directory: str, damaged: list[tuple[int, str]]) -> DamagedCheckpointError:
  """The error for a checkpoint directory none of whose steps is intact."""
  listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
  return DamagedCheckpointError(
      f"No checkpoint in {directory} is intact ({listing}), so the run cannot resume."
      " Nothing was changed. To start this run again from step 0 in the same --workdir, move"
      f" {directory} away (keep it if you want to inspect or repair it); or use a new"
      " --workdir."
  )


def move_aside(directory: str, step: int, reason: str) -> str:
  """Renames a damaged step to `<step>.damaged[-k]`, a name orbax does not list as a step."""
  target = os.path.join(directory, f"{step}.damaged")
  k = 1
  while os.path.exists(target):
    target = os.path.join(directory, f"{step}.damaged-{k}")
    k += 1
  os.rename(os.path.join(directory, str(step)), target)
  fileio.fsync_dir(directory)
  logging.warning(
      "Checkpoint step %d is damaged (%s): moved it aside to %s (nothing deleted).",
      step,
      reason,
      target,
  )
  return target


def find_newest_intact(
    reader: ocp.CheckpointManager, directory: str, abstract_state: Any, verify: Verify
) -> tuple[int, Any, list[tuple[int, str]]]:
  """`(step, restored, damaged)`: the newest intact step, its `state` and `meta`, and the
  `(step, why)` of the damaged steps above it. Reads only.

  `verify` refuses a readable step of another model. Call this with `checkpoint_quiet` installed,
  from before the first restore until well after it returns: a failed restore's abandoned reads
  report from other threads, one possibly before the restore has returned.
  """
  damaged = []
  for step in sorted(reader.all_steps(), reverse=True):
    damage, saved_config, saved_tree = read_step(reader, step)
    if damage is None:
      verify(os.path.join(directory, str(step)), saved_config, saved_tree)
      try:
        restored = reader.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
      except Exception as e:  # pylint: disable=broad-except  (a missing or cut array file)
        damage = f"restoring its arrays failed: {short_error(e)}"
        gc.collect()  # The failed restore's abandoned read coroutines, now, not at random later.
        checkpoint_quiet.keep_hook_until_exit()  # Their callbacks may report after `close`.
    if damage is None:
      return step, restored, damaged
    damaged.append((step, damage))
  raise none_intact(directory, damaged)


def set_aside(directory: str, damaged: list[tuple[int, str]], resumed_step: int) -> None:
  """Moves the damaged steps aside (process 0 renames; the others wait for it)."""
  if not damaged:
    return
  if jax.process_index() == 0:
    for step, why in damaged:
      move_aside(directory, step, why)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("incres_checkpoint_moved_aside")
  logging.warning("Resuming from step %d, the newest intact checkpoint.", resumed_step)
