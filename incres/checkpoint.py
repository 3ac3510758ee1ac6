"""Checkpoints: a small wrapper around orbax's `CheckpointManager` (the `args=` API).

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. `state` is the whole `TrainState` (parameters,
batch statistics, optimizer state, averaged parameters and statistics, step, RNG) saved with
`ocp.args.StandardSave`; `meta` is JSON: the resolved config, the data iterator's position, the
training time summed over the runs that led to it (`meta["time"]`) and the library version. Orbax
writes each step into a temporary directory and renames it when complete, so a process killed at
any moment (mid-save included) leaves the previous checkpoints intact and the half-written one
invisible; leftovers are cleaned up by the next run.

The input pipeline is deterministic in the step (`incres.data.create_train_iter(config,
start_step=k)` yields the k-th batch first), so the iterator's position is the number of batches
consumed, saved in `meta["data"]["next_step"]`.

`Checkpointer` is the public face; each of its other jobs lives in a module of its own:
- `checkpoint_compat`: whether a config may resume a checkpoint (`IncompatibleCheckpointError`
  names the mismatch before anything in the workdir is touched);
- `checkpoint_recovery`: resuming from the newest *intact* step, damaged newer ones moved aside to
  `checkpoints/<step>.damaged` (`DamagedCheckpointError` if none is intact; nothing is deleted);
- `checkpoint_quiet`: orbax's expected noise while reading, silenced only while a reader or a
  resumed `Checkpointer` is open (importing this module changes nothing process-wide).
`lock_workdir` makes the workdir one run's (`incres.fileio.WorkdirLock`) until `close`.

Later stages (evaluation, fine-tuning, prediction) load a trained model with `load_variables`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

import incres
from incres import checkpoint_compat
from incres import checkpoint_quiet
from incres import checkpoint_recovery
from incres import errors
from incres import fileio
from incres import state as state_lib

# The public names of the pieces, where callers have always found them.
IDENTITY_KEYS = checkpoint_compat.IDENTITY_KEYS
IncompatibleCheckpointError = checkpoint_compat.IncompatibleCheckpointError
DamagedCheckpointError = checkpoint_recovery.DamagedCheckpointError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


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


@contextlib.contextmanager
def _open_reader(directory: str, partial: bool = False) -> Iterator[ocp.CheckpointManager]:
  """`_reader_manager`, closed on exit, with orbax's reading noise quieted while it is open."""
  with checkpoint_quiet.quieted():
    reader = _reader_manager(directory, partial)
    try:
      yield reader
    finally:
      reader.close()


# `TrainState` fields added after checkpoints were written without them. A run that leaves one None
# writes the layout it had before the field existed, so its older checkpoints resume unchanged:
# orbax refuses a restore target with a key the checkpoint lacks, even a None one.
_ADDED_FIELDS = ("ema_batch_stats",)


def _stored(state: Any) -> Any:
  """What is written for a `TrainState`: the dict of its fields (orbax writes the dataclass and
  that dict alike), less the added fields left None. Other trees as they are."""
  if not isinstance(state, state_lib.TrainState):
    return state
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return {k: v for k, v in fields.items() if not (k in _ADDED_FIELDS and v is None)}


def _unstored(tree: Any, like: Any) -> Any:
  """The `TrainState` of a restored `_stored` dict when `like` (the restore's target) is one."""
  if not isinstance(like, state_lib.TrainState):
    return tree
  return state_lib.TrainState(**{**dict.fromkeys(_ADDED_FIELDS), **tree})


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      ".".join(state_lib.path_keys(p)): (tuple(x.shape), str(jax.numpy.dtype(x.dtype)))
      for p, x in leaves
  }


@dataclasses.dataclass(frozen=True)
class TrainingTime:
  """The training time of the runs a checkpoint resumed (`meta["time"]`), and their number."""

  prior_s: float = 0.0
  resumes: int = 0

  @classmethod
  def resumed_from(cls, meta: Mapping[str, Any]) -> TrainingTime:
    """The runs up to a restored checkpoint, this one's resume included."""
    time_info = meta.get("time", {})
    return cls(float(time_info.get("train_s", 0.0)), int(time_info.get("resumes", 0)) + 1)

  def total(self, this_run_s: float) -> tuple[float, int]:
    """`(total seconds, resumes)`: `this_run_s` plus the time of the runs this one resumed."""
    return self.prior_s + float(this_run_s), self.resumes


def _manager_options(keep: int, best_metric: str | None, async_save: bool):
  """Keep the newest `keep` steps, and the best one by `best_metric` if given."""
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
  return ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
  )


class Checkpointer:
  """Saves and restores a run's `TrainState` in `<workdir>/checkpoints`.

  It composes the pieces: orbax's manager with the retention policy (saving), the compatibility
  check (`checkpoint_compat`), the recovery from damaged steps (`checkpoint_recovery`), the
  training time across resumes (`TrainingTime`) and the workdir lock (`fileio.WorkdirLock`).

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
    self._options = _manager_options(keep, best_metric, async_save)
    self._manager: ocp.CheckpointManager | None = None
    self._lock: fileio.WorkdirLock | None = None
    self._time = TrainingTime()
    self._quiet = False  # Whether this checkpointer holds `checkpoint_quiet` (until `close`).

  # --- Reading (touches nothing) ---

  def latest_step(self) -> int | None:
    if not os.path.isdir(self.directory):
      return None
    with _open_reader(self.directory) as reader:
      return reader.latest_step()

  def _verify(self, abstract_state: Any) -> checkpoint_recovery.Verify:
    """`verify` for a readable step: refuses one written for another model or config."""

    def verify(where: str, saved_config: dict[str, Any], saved_tree: Any) -> None:
      checkpoint_compat.check(
          where, saved_config, self._config, _shapes(saved_tree), _shapes(abstract_state)
      )

    return verify

  def check_compatible(self, abstract_state: Any) -> int | None:
    """Raises `IncompatibleCheckpointError` unless the newest readable checkpoint can be resumed.

    Returns its step (None if there is no checkpoint). A step whose metadata cannot be read is
    damaged, not foreign: it is skipped here and moved aside by `restore`; if every step is
    damaged, `DamagedCheckpointError` says so. Reads only: nothing in the workdir is touched.
    """
    if not os.path.isdir(self.directory):
      return None
    verify = self._verify(abstract_state)
    damaged = []
    with _open_reader(self.directory) as reader:
      for step in sorted(reader.all_steps(), reverse=True):
        damage, saved_config, saved_tree = checkpoint_recovery.read_step(reader, step)
        if damage is not None:
          damaged.append((step, damage))
          continue
        verify(os.path.join(self.directory, str(step)), saved_config, saved_tree)
        changed = checkpoint_compat.changed_keys(saved_config, self._config)
        if changed:
          logging.warning("Resuming step %d with a changed config: %s", step, "; ".join(changed))
        return step
    if damaged:
      # A live run deleting its old steps looks like damage from here: name that run instead.
      fileio.raise_if_locked(os.path.dirname(self.directory))
      raise checkpoint_recovery.none_intact(self.directory, damaged)
    return None

  # --- Resuming (after `lock_workdir`: may move damaged steps aside) ---

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores `(state, meta)` with `abstract_state`'s shardings.

    Default: the newest intact step. Each step is verified (metadata readable, arrays restored)
    newest first; damaged ones above the first intact step are moved aside to
    `<step>.damaged` (process 0 renames; nothing is deleted) with a warning naming the reason.
    `DamagedCheckpointError` if no step is intact (then nothing is moved). `meta["data"]
    ["next_step"]` is the step restored. An explicit `step` restores exactly that one.
    """
    if step is not None:
      restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(_stored(abstract_state)),
              meta=ocp.args.JsonRestore(),
          ),
      )
      return _unstored(restored.state, abstract_state), restored.meta
    if not os.path.isdir(self.directory):
      raise errors.MissingFileError(f"No checkpoints in {self.directory}.")
    if not self._quiet:
      # Held until `close`: a failed restore's abandoned reads report later, from other threads.
      checkpoint_quiet.acquire()
      self._quiet = True
    with _open_reader(self.directory) as reader:
      step, restored, damaged = checkpoint_recovery.find_newest_intact(
          reader, self.directory, _stored(abstract_state), self._verify(abstract_state)
      )
    checkpoint_recovery.set_aside(self.directory, damaged, step)
    self._time = TrainingTime.resumed_from(restored.meta)
    return _unstored(restored.state, abstract_state), restored.meta

  # --- Writing ---

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory, item_handlers=_item_handlers(), options=self._options
      )
    return self._manager

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
        "config": checkpoint_compat.config_dict(self._config),
        "data": {"next_step": int(step)},
        "incres_version": incres.__version__,
    }
    if train_time_s is not None:
      total_s, resumes = self.train_time(train_time_s)
      meta["time"] = {"train_s": total_s, "resumes": resumes}
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_stored(state)), meta=ocp.args.JsonSave(meta)
        ),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=True,
    )

  def train_time(self, this_run_s: float) -> tuple[float, int]:
    """`(total seconds, resumes)`: `this_run_s` plus the time of the runs this one resumed."""
    return self._time.total(this_run_s)

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
    """Waits for pending saves to finish, releases the manager, the workdir lock and the quiet."""
    try:
      if self._manager is not None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._manager = None
    finally:
      try:
        if self._lock is not None:
          self._lock.release()
          self._lock = None
      finally:
        if self._quiet:
          self._quiet = False
          checkpoint_quiet.release()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """Returns the resolved config saved with a workdir's checkpoint (default: newest)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise errors.MissingFileError(f"No checkpoints in {directory}: train there first (launch.py).")
  with _open_reader(directory) as reader:
    step = reader.latest_step() if step is None else step
    if step is None or step not in reader.all_steps():
      raise errors.MissingFileError(
          f"No checkpoint {'' if step is None else step} in {directory}; available steps:"
          f" {list(reader.all_steps())}."
      )
    meta = reader.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
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
  run kept (EMA first). Batch statistics are the training run's running averages, except with the
  EMA of a run that also averaged them (`config.ema_batch_stats`, as torchvision's and timm's EMA
  do): then its averaged statistics. The Polyak average is of the parameters only.
  The arrays are replicated over `mesh` (default: all devices). Only those arrays are read from
  the checkpoint (not the optimizer state), and no optimizer is built.

  Example:
    config, model, variables = load_variables("runs/quickstart")
    logits, extras = model.apply(variables, images, train=False)
  """
  config = load_config(workdir, step)
  model = state_lib.create_model(config)
  mesh = mesh if mesh is not None else state_lib.create_mesh()
  params_key, stats_key = "params", "batch_stats"
  if averaged:
    kinds = ("ema", "polyak") if averaged is True else (averaged,)
    for kind in kinds:
      if kind not in ("ema", "polyak"):
        raise ValueError(f"averaged={averaged!r}: use False, True, 'ema' or 'polyak'.")
      if (config.ema_decay is not None) if kind == "ema" else config.polyak:
        params_key = f"{kind}_params"
        if kind == "ema" and state_lib.averages_batch_stats(config):
          stats_key = "ema_batch_stats"
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
    wanted[stats_key] = abstract["batch_stats"]
  with _open_reader(checkpoint_dir(workdir), partial=True) as reader:
    step = reader.latest_step() if step is None else step
    restore = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore=True,
    )
    restored = reader.restore(step, args=ocp.args.Composite(state=restore)).state
  variables = {"params": restored[params_key]}
  if stats_key in restored:
    variables["batch_stats"] = restored[stats_key]
  return config, model, variables
