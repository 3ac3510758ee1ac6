"""Checkpoints: a small wrapper around orbax's `CheckpointManager` (the `args=` API).

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. `state` is the whole `TrainState` (parameters,
batch statistics, optimizer state, averaged parameters, step, RNG) saved with
`ocp.args.StandardSave`; `meta` is JSON: the resolved config, the data iterator's position and the
library version. Orbax writes each step into a temporary directory and renames it when complete,
so a process killed at any moment (mid-save included) leaves the previous checkpoints intact and
the half-written one invisible; leftovers are cleaned up by the next run.

The input pipeline is deterministic in the step (`incres.data.create_train_iter(config,
start_step=k)` yields the k-th batch first), so the iterator's position is the number of batches
consumed, saved in `meta["data"]["next_step"]`.

Resuming reads the newest *intact* checkpoint: each step is verified newest first (its metadata
is readable and its arrays restore), and a damaged one (a file deleted or cut short, by a disk
problem or by hand) is moved aside to `checkpoints/<step>.damaged`, which orbax does not list,
with a warning naming it and why; nothing is deleted. If no step is intact,
`DamagedCheckpointError` says so and nothing is moved. If the workdir holds a checkpoint of
another model or of an incompatible config, `IncompatibleCheckpointError` names the mismatch
before anything in the workdir is touched.

`lock_workdir` makes the workdir one run's (`incres.fileio.WorkdirLock`) until `close`. Each
checkpoint's meta also holds the training time summed over the runs that led to it
(`meta["time"]`).

Later stages (evaluation, fine-tuning, prediction) load a trained model with `load_variables`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

import incres
from incres import errors
from incres import fileio
from incres import state as state_lib

CHECKPOINT_DIR = "checkpoints"

# Config keys that define what a checkpoint *is*: resuming with any of them changed is refused.
# Other keys (learning rate, number of steps, ...) may change between runs; the change is logged.
IDENTITY_KEYS = ("model", "model_kwargs", "num_classes", "dataset", "image_size")


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


_quiet_hook_installed = False


def _quiet_abandoned_reads() -> None:
  """Drops, for the rest of the process, the reports of the reads a failed restore abandons.

  When one array file of a step is missing or cut short, orbax raises at once and leaves the other
  arrays' reads unfinished: their coroutines report "Exception ignored in: <coroutine object
  _read_array_index_and_device_put ...>" whenever the garbage collector reaches them, and their
  TensorStore callbacks report "Event loop is closed" when they complete, in other threads, long
  after the damaged step was named and moved aside (a hundred tracebacks for a ResNet). Installed
  before the first restore (a callback can fire before the failed restore returns), the filter
  drops those two kinds of report from then on; every other unraisable exception still reaches the
  previous hook. `_collect_abandoned_reads` then collects the abandoned coroutines at once.
  """
  global _quiet_hook_installed
  if not _quiet_hook_installed:
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
      if not (_is_orbax_coroutine(unraisable.object) or _is_closed_loop_callback(unraisable)):
        previous(unraisable)

    sys.unraisablehook = hook
    _quiet_hook_installed = True


def _collect_abandoned_reads() -> None:
  """After a failed restore: its abandoned read coroutines, collected now (and their reports
  dropped by `_quiet_abandoned_reads`'s filter)."""
  gc.collect()


class _DropReadOnlyNotices:
  """Orbax warns each time a read-only manager is opened, which is exactly what we ask for."""

  def filter(self, record: Any) -> bool:
    message = str(record.msg)
    return not ("read_only=True" in message or "directory is read only" in message)


logging.get_absl_logger().addFilter(_DropReadOnlyNotices())


def _item_handlers(partial: bool = False) -> dict[str, Any]:
  """The items' handlers, named up front so that a fresh manager can read their metadata.

  `partial`: the state is read with the `PyTreeCheckpointHandler` that `StandardCheckpointHandler`
  wraps (same files), whose `PyTreeRestore(partial_restore=True)` reads only the subtrees asked for.
  """
  state = ocp.PyTreeCheckpointHandler() if partial else ocp.StandardCheckpointHandler()
  return {"state": state, "meta": ocp.JsonCheckpointHandler()}


def _reader_manager(directory: str, partial: bool = False) -> ocp.CheckpointManager:
  """A manager that only reads: no directory creation, no cleanup, no saving."""
  return ocp.CheckpointManager(
      directory,
      item_handlers=_item_handlers(partial),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0),
  )


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """The workdir holds a checkpoint this config cannot resume from."""


class DamagedCheckpointError(IncompatibleCheckpointError):
  """No checkpoint in the workdir is intact (each one's metadata or arrays cannot be read)."""


def _short_error(e: BaseException, limit: int = 300) -> str:
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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _config_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), for saving and comparing."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(dict(config)))


def _path_str(path: tuple[Any, ...]) -> str:
  """`('opt_state', 0, 'trace', 'conv')` style key path -> `opt_state.0.trace.conv`."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return ".".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): (tuple(x.shape), str(jax.numpy.dtype(x.dtype))) for p, x in leaves}


def _describe_tree_mismatch(saved: Any, expected: Any, limit: int = 6) -> list[str]:
  saved_shapes, expected_shapes = _shapes(saved), _shapes(expected)
  problems = []
  # Parameters first: they say most about what differs.
  names = sorted(set(saved_shapes) | set(expected_shapes), key=lambda n: (n[:7] != "params.", n))
  for name in names:
    s, e = saved_shapes.get(name), expected_shapes.get(name)
    if s == e:
      continue
    if s is None:
      problems.append(f"{name} is not in the checkpoint")
    elif e is None:
      problems.append(f"{name} is in the checkpoint but not in this model/optimizer")
    else:
      problems.append(f"{name}: checkpoint {s[0]} {s[1]}, this config {e[0]} {e[1]}")
  if len(problems) > limit:
    problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
  return problems


class Checkpointer:
  """Saves and restores a run's `TrainState` in `<workdir>/checkpoints`.

  Args:
    workdir: the run's directory.
    config: the resolved config (saved in every checkpoint, compared on resume).
    save_every_steps: `should_save(step)` is true every this many steps.
    keep: how many of the newest checkpoints to keep.
    best_metric: also keep the checkpoint with the best value of this metric (the `metrics` passed
      to `save`); higher is better unless the name ends in "loss".
    async_save: save in a background thread (the arrays are copied to host memory first, so the
      training step may reuse their buffers right away).
  """

  def __init__(
      self,
      workdir: str,
      config: ml_collections.ConfigDict,
      *,
      save_every_steps: int,
      keep: int,
      best_metric: str | None = None,
      async_save: bool = True,
  ):
    self.directory = checkpoint_dir(workdir)
    self._config = config
    self._save_every = save_every_steps
    policies = [ocp.checkpoint_managers.LatestN(n=max(1, keep))]
    if best_metric:
      lower_is_better = best_metric.endswith("loss")
      policies.append(
          ocp.checkpoint_managers.BestN(
              get_metric_fn=lambda m: m[best_metric],
              reverse=lower_is_better,
              n=1,
              keep_checkpoints_without_metrics=False,
          )
      )
    self._options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager: ocp.CheckpointManager | None = None
    self._lock: fileio.WorkdirLock | None = None
    self._prior_train_s = 0.0  # Training time of the runs this one resumed (from the meta).
    self._resumes = 0

  # --- Reading (touches nothing) ---

  def _reader(self) -> ocp.CheckpointManager | None:
    if not os.path.isdir(self.directory):
      return None
    return _reader_manager(self.directory)

  def latest_step(self) -> int | None:
    reader = self._reader()
    if reader is None:
      return None
    try:
      return reader.latest_step()
    finally:
      reader.close()

  def _inspect(
      self, reader: ocp.CheckpointManager, step: int, abstract_state: Any
  ) -> tuple[str | None, dict[str, Any] | None]:
    """`(damage, saved_config)` of a step: `damage` is why it cannot be read, or None.

    Raises `IncompatibleCheckpointError` if the step is readable but holds another model.
    """
    where = os.path.join(self.directory, str(step))
    try:
      meta = reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      saved_config = meta["config"]
      next_step = int(meta["data"]["next_step"])
    except Exception as e:  # pylint: disable=broad-except  (anything unreadable is damage)
      return f"its metadata (meta) cannot be read: {_short_error(e)}", None
    if next_step != step:
      return f"its metadata says step {next_step}", None
    try:
      saved_tree = reader.item_metadata(step)["state"]
    except Exception as e:  # pylint: disable=broad-except
      return f"the state's metadata cannot be read: {_short_error(e)}", None
    saved_tree = getattr(saved_tree, "tree", saved_tree)
    if saved_tree is None:  # What orbax returns when state/_METADATA is missing.
      return "the state's array metadata (state/_METADATA) is missing", None
    current = _config_dict(self._config)
    mismatched = [
        f"{k}: checkpoint {saved_config.get(k)!r}, this config {current.get(k)!r}"
        for k in IDENTITY_KEYS
        if saved_config.get(k) != current.get(k)
    ]
    tree_problems = _describe_tree_mismatch(saved_tree, abstract_state)
    if mismatched or tree_problems:
      other = [
          f"{k}: checkpoint {saved_config.get(k)!r}, this config {current.get(k)!r}"
          for k in sorted(set(saved_config) & set(current))
          if k not in IDENTITY_KEYS and saved_config[k] != current[k]
      ]
      lines = mismatched + tree_problems + [f"(also differs) {o}" for o in other[:6]]
      raise IncompatibleCheckpointError(
          f"Cannot resume: the workdir's checkpoint {where} was written for a different model or"
          " an incompatible config:\n  - "
          + "\n  - ".join(lines)
          + "\nNothing in the workdir was changed. Train this config in a new --workdir, or pass"
          " the checkpoint's values (e.g. --config.model=...) to resume the old run."
      )
    return None, saved_config

  def _none_intact(self, damaged: list[tuple[int, str]]) -> DamagedCheckpointError:
    listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
    return DamagedCheckpointError(
        f"No checkpoint in {self.directory} is intact ({listing}), so the run cannot resume."
        " Nothing was changed. To start this run again from step 0 in the same --workdir, move"
        f" {self.directory} away (keep it if you want to inspect or repair it); or use a new"
        " --workdir."
    )

  def check_compatible(self, abstract_state: Any) -> int | None:
    """Raises `IncompatibleCheckpointError` unless the newest readable checkpoint can be resumed.

    Returns its step (None if there is no checkpoint). A step whose metadata cannot be read is
    damaged, not foreign: it is skipped here and moved aside by `restore`; if every step is
    damaged, `DamagedCheckpointError` says so. Reads only: nothing in the workdir is touched.
    """
    reader = self._reader()
    if reader is None:
      return None
    try:
      steps = sorted(reader.all_steps(), reverse=True)
      damaged = []
      for step in steps:
        damage, saved_config = self._inspect(reader, step, abstract_state)
        if damage is not None:
          damaged.append((step, damage))
          continue
        current = _config_dict(self._config)
        changed = [
            f"{k}: {saved_config[k]!r} -> {current[k]!r}"
            for k in sorted(set(saved_config) & set(current))
            if saved_config[k] != current[k]
        ]
        if changed:
          logging.warning("Resuming step %d with a changed config: %s", step, "; ".join(changed))
        return step
      if damaged:
        # A live run deleting its old steps looks like damage from here: name that run instead.
        fileio.raise_if_locked(os.path.dirname(self.directory))
        raise self._none_intact(damaged)
      return None
    finally:
      reader.close()

  # --- Resuming (after `lock_workdir`: may move damaged steps aside) ---

  def _move_aside(self, step: int, reason: str) -> str:
    """Renames a damaged step to `<step>.damaged[-k]`, a name orbax does not list as a step."""
    target = os.path.join(self.directory, f"{step}.damaged")
    k = 1
    while os.path.exists(target):
      target = os.path.join(self.directory, f"{step}.damaged-{k}")
      k += 1
    os.rename(os.path.join(self.directory, str(step)), target)
    fileio.fsync_dir(self.directory)
    logging.warning(
        "Checkpoint step %d is damaged (%s): moved it aside to %s (nothing deleted).",
        step,
        reason,
        target,
    )
    return target

  def _restore_newest_intact(self, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Tries the steps newest first; moves the damaged ones above the first intact one aside."""
    reader = self._reader()
    if reader is None:
      raise errors.MissingFileError(f"No checkpoints in {self.directory}.")
    damaged = []
    try:
      for step in sorted(reader.all_steps(), reverse=True):
        damage, _ = self._inspect(reader, step, abstract_state)
        if damage is None:
          _quiet_abandoned_reads()
          try:
            restored = reader.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
          except Exception as e:  # pylint: disable=broad-except  (a missing or cut array file)
            damage = f"restoring its arrays failed: {_short_error(e)}"
          if damage is not None:
            _collect_abandoned_reads()
        if damage is not None:
          damaged.append((step, damage))
          continue
        break
      else:
        raise self._none_intact(damaged)
    finally:
      reader.close()
    if damaged:
      if jax.process_index() == 0:  # One process renames; the others wait for it.
        for bad_step, why in damaged:
          self._move_aside(bad_step, why)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("incres_checkpoint_moved_aside")
      logging.warning("Resuming from step %d, the newest intact checkpoint.", step)
    return restored.state, restored.meta

  # --- Writing ---

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory, item_handlers=_item_handlers(), options=self._options
      )
    return self._manager

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores `(state, meta)` with `abstract_state`'s shardings.

    Default: the newest intact step. Each step is verified (metadata readable, arrays restored)
    newest first; damaged ones above the first intact step are moved aside to
    `<step>.damaged` (process 0 renames; nothing is deleted) with a warning naming the reason.
    `DamagedCheckpointError` if no step is intact (then nothing is moved). `meta["data"]
    ["next_step"]` is the step restored. An explicit `step` restores exactly that one.
    """
    if step is None:
      state, meta = self._restore_newest_intact(abstract_state)
      time_info = meta.get("time", {})
      self._prior_train_s = float(time_info.get("train_s", 0.0))
      self._resumes = int(time_info.get("resumes", 0)) + 1
      return state, meta
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored.state, restored.meta

  def should_save(self, step: int) -> bool:
    return step % self._save_every == 0

  def save(
      self,
      step: int,
      state: Any,
      *,
      metrics: Mapping[str, float] | None = None,
      train_time_s: float | None = None,
  ) -> bool:
    """Starts saving `state` as checkpoint `step` (asynchronously); returns whether it saved.

    `train_time_s`: this run's training time so far; the checkpoint stores the total across
    resumes (see `train_time`).
    """
    if step in self.manager.all_steps():
      return False  # Already saved (e.g. the final step coincides with a periodic save).
    meta = {
        "config": _config_dict(self._config),
        "data": {"next_step": int(step)},
        "incres_version": incres.__version__,
    }
    if train_time_s is not None:
      total_s, resumes = self.train_time(train_time_s)
      meta["time"] = {"train_s": total_s, "resumes": resumes}
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=True,
    )

  def train_time(self, this_run_s: float) -> tuple[float, int]:
    """`(total seconds, resumes)`: `this_run_s` plus the time of the runs this one resumed."""
    return self._prior_train_s + float(this_run_s), self._resumes

  def lock_workdir(self) -> None:
    """Makes the workdir this run's (`fileio.WorkdirLock`, process 0 only); `close` releases it.

    Raises `fileio.WorkdirInUseError` naming the holder if another live process has it.
    """
    if jax.process_index() == 0 and self._lock is None:
      lock = fileio.WorkdirLock(os.path.dirname(self.directory))
      lock.acquire()
      self._lock = lock

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves to finish, releases the manager, then the workdir lock."""
    try:
      if self._manager is not None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._manager = None
    finally:
      if self._lock is not None:
        self._lock.release()
        self._lock = None

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """Returns the resolved config saved with a workdir's checkpoint (default: newest)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.MissingFileError(f"No checkpoints in {directory}: train there first (launch.py).")
  reader = _reader_manager(directory)
  try:
    step = reader.latest_step() if step is None else step
    if step is None or step not in reader.all_steps():
      raise errors.MissingFileError(
          f"No checkpoint {'' if step is None else step} in {directory}; available steps:"
          f" {list(reader.all_steps())}."
      )
    meta = reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  finally:
    reader.close()
  config = ml_collections.ConfigDict(meta["config"])
  for key in ("lr_boundaries",):  # JSON turned tuples into lists.
    if key in config and isinstance(config[key], list):
      config[key] = tuple(config[key])
  return config


def load_variables(
    workdir: str,
    step: int | None = None,
    averaged: bool | str = False,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
  """Loads a trained model from a workdir: `(config, model, variables)`.

  `variables` is what `model.apply` takes: `{"params": ..., "batch_stats": ...}` (no
  `"batch_stats"` for models without batch norm). `averaged` picks the parameters: False for the
  raw ones, "ema" or "polyak" for an average kept during training, True for whichever average the
  run kept (EMA first). Batch statistics are always the training run's running averages.
  The arrays are replicated over `mesh` (default: all devices). Only those arrays are read from
  the checkpoint (not the optimizer state), and no optimizer is built.

  Example:
    config, model, variables = load_variables("runs/quickstart")
    logits, extras = model.apply(variables, images, train=False)
  """
  config = load_config(workdir, step)
  model = state_lib.create_model(config)
  mesh = mesh if mesh is not None else state_lib.create_mesh()
  params_key = "params"
  if averaged:
    kinds = ("ema", "polyak") if averaged is True else (averaged,)
    for kind in kinds:
      if kind not in ("ema", "polyak"):
        raise ValueError(f"averaged={averaged!r}: use False, True, 'ema' or 'polyak'.")
      if (config.ema_decay is not None) if kind == "ema" else config.polyak:
        params_key = f"{kind}_params"
        break
    else:
      raise ValueError(
          f"The run in {workdir} kept no {' or '.join(kinds)} average of the parameters (config"
          " ema_decay / polyak); load with averaged=False."
      )
  abstract = state_lib.abstract_variables(config, model, mesh)
  # Only these subtrees of the saved TrainState are read: no optimizer is built or restored.
  wanted = {params_key: abstract["params"]}
  if abstract["batch_stats"]:
    wanted["batch_stats"] = abstract["batch_stats"]
  reader = _reader_manager(checkpoint_dir(workdir), partial=True)
  try:
    step = reader.latest_step() if step is None else step
    restore = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True,
    )
    restored = reader.restore(step, args=ocp.args.Composite(state=restore)).state
  finally:
    reader.close()
  variables = {"params": restored[params_key]}
  if "batch_stats" in restored:
    variables["batch_stats"] = restored["batch_stats"]
  return config, model, variables
