"""The training loop: data-parallel `jax.jit` over every device of every host.

The same code runs on one CPU, eight GPUs or a TPU pod. All devices form a 1-D `('data',)` mesh;
each batch is a global array sharded along its first axis, the train state is replicated, and XLA
inserts the collectives (so batch-norm statistics and gradients are over the global batch). There
is no `pmap` and no axis name inside the models.

Entry point: `train_and_evaluate(config, workdir)`. What a run is made of (model, mesh, schedule,
optimizer, train state) is built by `incres.state`; this module holds the steps, `train_step` and
`eval_step` (module-level functions with their settings bound by `functools.partial`, jitted by
`jit_steps`), and the loop, in four parts: `prepare_run` (the resolved config and everything built
from it, a `Run`; the workdir only read), restore or initialise the state (the workdir locked),
the loop (`_Loop`: steps, logs, evaluations, saves, stop requests), and the closing line.

Exactness: the k-th training batch depends only on `(config, k)`, the dropout key of step k is
`fold_in(state.rng, k)` and nothing else is random, so a run resumed from a checkpoint computes
the same parameters, bit for bit, as one that was never interrupted (tested on CPU).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from incres import checkpoint as checkpoint_lib
from incres import configs
from incres import errors
from incres import fileio
from incres import finetune
from incres import losses as losses_lib
from incres import metrics as metrics_lib
from incres import mixing as mixing_lib
from incres import progress as progress_lib
from incres import state as state_lib
from incres.data import placement as placement_lib  # Light: no TensorFlow.

PyTree = Any
Batch = Mapping[str, jax.Array]


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """The loss or the gradient became NaN or infinite."""


# --- Steps ---------------------------------------------------------------------------------------


def ema_update(
    average: PyTree,
    new: PyTree,
    *,
    step: jax.Array,
    decay: float,
    every_steps: int = 1,
    copy_steps: int = 0,
) -> PyTree:
  """The EMA's rule, for the parameters and the batch statistics alike.

  After step `step` (counted from 0): `decay * average + (1 - decay) * new` when `step` is a
  multiple of `every_steps`, `new` itself at such steps below `copy_steps`, else `average`
  unchanged. torchvision's references/classification/utils.py `ExponentialMovingAverage` is an
  `AveragedModel(..., use_buffers=True)` (torch/optim/swa_utils.py), which applies this rule to the
  BN running means and variances too (its warm-up restart copies them with the parameters); timm's
  `ModelEmaV2` / `ModelEmaV3` (timm/utils/model_ema.py) average the whole state_dict, buffers
  included (V3 unless `exclude_buffers`). Flax's batch_stats hold only the float means and
  variances: nothing like torch's integer `num_batches_tracked`, which timm copies.
  """
  averaged = optax.incremental_update(new, average, step_size=1.0 - decay)
  if every_steps > 1 or copy_steps > 0:
    due = step % every_steps == 0
    copy = step < copy_steps
    averaged = jax.tree.map(
        lambda avg, n, old: jnp.where(due, jnp.where(copy, n, avg), old), averaged, new, average
    )
  return averaged


def train_step(
    state: state_lib.TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    aux_loss_weight: float,
    label_smoothing: float,
    ema_decay: float | None,
    preprocess: Callable[[Batch], jax.Array] | None = None,
    placement: placement_lib.Placement | None = None,
    mixing: mixing_lib.Mixing | None = None,
    loss: str = "softmax_ce",
    bce_target_threshold: float | None = None,
    ema_every_steps: int = 1,
    ema_copy_steps: int = 0,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch; returns the new state and scalar metrics.

  The loss (`loss`: "softmax_ce", or "bce", `losses.binary_cross_entropy` with
  `bce_target_threshold`) is the batch mean against the label-smoothed one-hot targets, plus `aux_loss_weight` times each
  auxiliary classifier's, against the same targets (GoogLeNet). Batch-norm statistics come from
  the whole global batch. `placement` (`data.decide_placement`) is what the input pipeline leaves to
  the accelerator; `preprocess(batch)`, its `data.device_preprocess`, makes the model's input from
  the batch (by default `batch["image"]`). A step given a placement but no preprocess refuses a
  batch that carries the placement's keys (`Placement.batch_keys`). `mixing` (`incres.mixing`) then mixes the global batch's images and targets,
  drawn from the step's key; with mixing, `accuracy` counts the logits' top class against the
  mixed target's largest weight (the dominant label of the pair, as torchvision's recipe reports
  its training accuracy).

  The average `ema_params` moves towards the new parameters by `1 - ema_decay` after the steps
  whose index (`state.step`, counted from 0) is a multiple of `ema_every_steps`, and is replaced
  by them at such steps below `ema_copy_steps` (torchvision's recipe: see `configs.py`).
  `ema_batch_stats`, when the state keeps it (`config.ema_batch_stats`), follows this step's new
  batch statistics by the same rule (`ema_update`). The Polyak average stays params-only.
  """
  unfinished = sorted(placement.batch_keys & set(batch)) if placement is not None else []
  if unfinished and preprocess is None:  # When traced.
    raise ValueError(
        f"The batch carries {unfinished} for the train step to finish (GoogLeNet's colour"
        " distortions, or the crops' resampling), but the step was built without"
        " `preprocess=data.device_preprocess(config, placement)`."
    )
  if loss not in losses_lib.LOSSES:
    raise errors.ConfigError(f"Unknown loss {loss!r}; use one of {sorted(losses_lib.LOSSES)}.")
  images = batch["image"] if preprocess is None else preprocess(batch)
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  draw = None
  if mixing is not None:  # Its own key: the dropout stream stays as it was.
    draw = mixing_lib.draw(mixing_lib.step_key(dropout_rng), mixing, *images.shape[1:3])
    images = mixing_lib.mix_images(images, draw)
  loss_of = functools.partial(losses_lib.LOSSES[loss], target_threshold=bce_target_threshold)

  def loss_fn(params):
    variables = state_lib.model_variables(params, state.batch_stats)
    (logits, extras), new_vars = model.apply(
        variables,
        images,
        train=True,
        rngs={"dropout": dropout_rng},
        mutable=["batch_stats"],
    )
    targets = losses_lib.one_hot_targets(batch["label"], logits.shape[-1], label_smoothing)
    if draw is not None:
      targets = mixing_lib.mix_targets(targets, draw.lam)
    main_loss = loss_of(logits, targets).mean()
    aux_loss = jnp.zeros((), jnp.float32)
    for aux_logits in extras.get("aux_logits", ()):
      aux_loss += loss_of(aux_logits, targets).mean()
    total = main_loss + aux_loss_weight * aux_loss
    return total, (main_loss, aux_loss, logits, targets, new_vars.get("batch_stats", {}))

  grads, (main_loss, aux_loss, logits, targets, batch_stats) = jax.grad(loss_fn, has_aux=True)(
      state.params
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  ema = functools.partial(
      ema_update,
      step=state.step,
      decay=ema_decay,
      every_steps=ema_every_steps,
      copy_steps=ema_copy_steps,
  )
  ema_params = None if state.ema_params is None else ema(state.ema_params, params)
  ema_batch_stats = state.ema_batch_stats
  if ema_batch_stats is not None:  # After this step's statistics, as torchvision's buffers.
    ema_batch_stats = ema(ema_batch_stats, batch_stats)
  polyak_params = state.polyak_params
  if polyak_params is not None:  # Running mean of the iterates 1..step.
    polyak_params = optax.incremental_update(
        params, polyak_params, step_size=1.0 / step.astype(jnp.float32)
    )
  new_state = state.replace(
      step=step,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema_params=ema_params,
      ema_batch_stats=ema_batch_stats,
      polyak_params=polyak_params,
  )
  labels = batch["label"] if draw is None else jnp.argmax(targets, -1)
  metrics = {
      "loss": main_loss,
      "aux_loss": aux_loss,
      "total_loss": main_loss + aux_loss_weight * aux_loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
      "learning_rate": learning_rate_fn(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),  # Non-finite params are caught before a save.
  }
  return new_state, metrics


def eval_step(variables: PyTree, batch: Batch, *, model: nn.Module) -> dict[str, jax.Array]:
  """Sums over a (padded) evaluation batch: loss, top-1 and top-5 hits, and real examples.

  Padding rows (`mask == 0`) count for nothing; divide the sums by `count` after the last batch.
  """
  logits, _ = model.apply(variables, batch["image"], train=False)
  logits = logits.astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  labels = batch["label"]
  k = min(5, logits.shape[-1])
  _, top_k = jax.lax.top_k(logits, k)
  hit5 = jnp.any(top_k == labels[:, None], axis=-1)
  hit1 = top_k[:, 0] == labels
  return {
      "loss": jnp.sum(losses_lib.cross_entropy(logits, labels) * mask),
      "top1": jnp.sum(hit1 * mask),
      "top5": jnp.sum(hit5 * mask),
      "count": jnp.sum(mask),
  }


# --- Loop helpers --------------------------------------------------------------------------------


def make_global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> Batch:
  """Assembles the per-process batches into global arrays sharded along the batch axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


class DevicePrefetch:
  """Global batches already on their way to the devices, `size` steps ahead of the loop.

  `make_global_batch` starts the host-to-device copies without waiting for them, so taking batch k
  from here queues the copies of batches k+1..k+size, which then overlap step k (and the host's
  wait for step k-1's metrics). The batches and their order are the iterator's own, so the run and
  its resume are bitwise those without prefetching; `size=0` is the loop without it. `skipped`
  (unreadable images, counted by `data.create_train_iter`) is the source's count as of the batch
  last handed out, not of the batches still in flight.
  """

  def __init__(self, batches: Iterator[Any], sharding: NamedSharding, size: int):
    self._batches = batches
    self._sharding = sharding
    self._size = size
    self._queue: collections.deque[tuple[Batch, int]] = collections.deque()
    self._skipped = 0

  def __iter__(self) -> DevicePrefetch:
    return self

  def __next__(self) -> Batch:
    while len(self._queue) <= self._size:
      try:
        batch = make_global_batch(next(self._batches), self._sharding)
      except StopIteration:
        break
      self._queue.append((batch, getattr(self._batches, "skipped", 0)))
    if not self._queue:
      raise StopIteration
    batch, self._skipped = self._queue.popleft()
    return batch

  @property
  def skipped(self) -> int:
    return self._skipped

  def close(self) -> None:
    """Drops the source and the batches in flight: a freed tf.data iterator stops its threads."""
    self._batches = iter(())
    self._queue.clear()

  def __enter__(self) -> DevicePrefetch:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def evaluate_split(
    p_eval_step: Callable[..., dict[str, jax.Array]],
    variables: PyTree,
    eval_iter: Iterator[Mapping[str, np.ndarray]],
    batch_sharding: NamedSharding,
) -> dict[str, float]:
  """Top-1, top-5 and loss over the whole evaluation split (every example exactly once)."""
  totals = None
  for batch in eval_iter:
    sums = p_eval_step(variables, make_global_batch(batch, batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("The evaluation split is empty.")
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return {
      "top1": float(totals["top1"]) / count,
      "top5": float(totals["top5"]) / count,
      "loss": float(totals["loss"]) / count,
      "num_examples": int(totals["count"]),
  }


class _StopRequest:
  """Turns SIGTERM/SIGINT into "finish this step, save, return"; a second Ctrl-C ends the process.

  The handler only records the request: the loop stops after the step in flight (abandoning an
  evaluation in progress), saves and returns, so stopping costs at most one step and one save.
  The first signal also gives Ctrl-C back to the operating system's default action, so a second
  Ctrl-C ends the process at once even inside a long XLA compilation or a save, where a Python
  handler would only run afterwards. That loses nothing complete: orbax writes each checkpoint
  into a temporary directory and renames it when done, so a killed save is never taken for a
  checkpoint and the next run resumes from the newest complete one (and removes the leftover).
  """

  _CODES = {signal.SIGINT: 1, signal.SIGTERM: 2}  # Shared between processes; the larger wins.
  _REASONS = {0: None, 1: "Ctrl-C", 2: "SIGTERM", 3: "a preemption notice"}

  def __init__(self):
    self.code = 0
    self._previous = {}

  @property
  def reason(self) -> str | None:
    """What stopped the run: "Ctrl-C", "SIGTERM", "a preemption notice", or None."""
    return self._REASONS[self.code]

  @property
  def preempted(self) -> bool:
    """Stopped from outside (SIGTERM, a cluster's notice) rather than by the user's Ctrl-C."""
    return self.code >= 2

  def __enter__(self) -> _StopRequest:
    if threading.current_thread() is threading.main_thread():
      for sig in self._CODES:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    # No printing here: a handler that writes while the loop is writing to the same stream
    # raises "reentrant call". The one message comes when the checkpoint is saved.
    self.code = max(self.code, self._CODES[signal.Signals(signum)])
    signal.signal(signal.SIGINT, signal.SIG_DFL)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int, sync: bool) -> bool:
    """Whether to stop after `step`. With several processes all must agree, so the local flag is
    only shared at `sync` steps (where the loop waits for the device anyway)."""
    if jax.process_count() == 1:
      return self.code > 0
    try:  # Preemption notices from the cluster (e.g. TPU maintenance), agreed on by all hosts.
      if multihost_utils.reached_preemption_sync_point(step):
        self.code = max(self.code, 3)
        return True
    except Exception:  # pylint: disable=broad-except  (no preemption service on this platform)
      pass
    if not sync:
      return False
    self.code = int(np.max(multihost_utils.process_allgather(np.int32(self.code))))
    return self.code > 0

  def batches(self, batches: Iterator[Any]) -> Iterator[Any]:
    """`batches` until a stop is requested (one process only; others would wait in collectives)."""
    for batch in batches:
      if self.code and jax.process_count() == 1:
        raise _EvaluationAbandoned
      yield batch


class _EvaluationAbandoned(Exception):
  """A stop request arrived during an evaluation; its result is not needed to resume."""


def _check_finite(step: int, metrics: Mapping[str, float], last_checkpoint: int | None) -> None:
  watched = ("loss", "grad_norm", "param_norm")
  bad = {k: v for k, v in metrics.items() if k in watched and not math.isfinite(v)}
  if bad:
    where = (
        f"the last good checkpoint, step {last_checkpoint}, is kept and the next run resumes"
        " from it"
        if last_checkpoint is not None
        else "no checkpoint had been saved yet"
    )
    raise NonFiniteLossError(
        f"Training diverged at step {step}: "
        + ", ".join(f"{k}={v}" for k, v in bad.items())
        + f". Nothing from this step on was saved; {where}. Lower the learning rate"
        " (--config.learning_rate), add warm-up (--config.warmup_steps) or gradient clipping"
        " (--config.grad_clip_norm), or check the input data."
    )


def _skipped_images(train_iter: Iterator[Any]) -> int:
  """Unreadable training images the iterators of all processes have skipped so far."""
  skipped = getattr(train_iter, "skipped", 0)  # `data.create_train_iter` counts them.
  if jax.process_count() > 1:  # Called at log steps, which every process reaches together.
    skipped = int(np.sum(multihost_utils.process_allgather(np.int64(skipped))))
  return skipped


# --- Loop bookkeeping ----------------------------------------------------------------------------


class _Due(NamedTuple):
  """What a step is due for; the last step is due for all three."""

  log: bool
  evaluate: bool
  save: bool

  @classmethod
  def at(
      cls, step: int, config: ml_collections.ConfigDict, ckpt: checkpoint_lib.Checkpointer
  ) -> _Due:
    is_last = step == config.num_train_steps
    return cls(
        log=step % config.log_every_steps == 0 or is_last,
        evaluate=step % config.eval_every_steps == 0 or is_last,
        save=ckpt.should_save(step) or is_last,
    )

  @property
  def any(self) -> bool:
    """Whether the loop waits for the device at this step (and processes agree on stopping)."""
    return self.log or self.evaluate or self.save


@dataclasses.dataclass
class _TrainLog:
  """The training metrics read since the last log step, and the window images/s is timed over."""

  progress: progress_lib.Progress
  last_checkpoint: int | None  # Named in the message if a step's metrics are not finite.
  rows: list[dict[str, float]] = dataclasses.field(default_factory=list)
  window_start: tuple[float, int] | None = None  # (time, step) where the images/s window began.
  skipped_logged: int = 0  # Unreadable training images skipped up to the last log step.

  def read(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Reads one step's metrics (waiting for that step only) and checks they are finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(step, values, self.last_checkpoint)
    self.rows.append(values)
    if self.window_start is None:  # The first step includes compilation: start timing after it.
      self.window_start = (time.monotonic(), step)
    self.progress.update(step, {f"train/{k}": v for k, v in values.items()})

  def summary(
      self, step: int, train_iter: Iterator[Any], batch_size: int, steps_per_epoch: float
  ) -> dict[str, float]:
    """The log step's `train/...` scalars: the window's means, images/s; starts a new window."""
    now = time.monotonic()
    t0, s0 = self.window_start
    summary = {f"train/{k}": float(np.mean([m[k] for m in self.rows])) for k in self.rows[-1]}
    summary["train/learning_rate"] = self.rows[-1]["learning_rate"]
    summary["train/epoch"] = step / steps_per_epoch
    skipped = _skipped_images(train_iter)
    summary["train/skipped_images"] = skipped - self.skipped_logged  # Since the last log step.
    self.skipped_logged = skipped
    if step > s0 and now > t0:
      ips = (step - s0) * batch_size / (now - t0)
      summary["train/images_per_sec"] = ips
      self.progress.set_speed(ips, batch_size)
    self.rows.clear()
    return summary

  def restart_timing(self, step: int) -> None:
    """Time spent evaluating and saving is not training time: images/s is timed from here."""
    self.window_start = (time.monotonic(), step)


def _evaluate_state(
    p_eval_step: Callable[..., dict[str, jax.Array]],
    state: state_lib.TrainState,
    config: ml_collections.ConfigDict,
    stop: _StopRequest,
    batch_sharding: NamedSharding,
) -> dict[str, float]:
  """`eval/...` for the parameters, and `eval_ema/...`, `eval_polyak/...` for their averages.

  Each is paired with the run's batch statistics, except the EMA with its own average of them when
  the run keeps one (`config.ema_batch_stats`).

  Raises `_EvaluationAbandoned` if a stop is requested meanwhile.
  """
  from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

  results = {}
  ema_stats = state.batch_stats if state.ema_batch_stats is None else state.ema_batch_stats
  candidates = [
      ("eval", state.params, state.batch_stats),
      ("eval_ema", state.ema_params, ema_stats),
      ("eval_polyak", state.polyak_params, state.batch_stats),  # Polyak: the parameters only.
  ]
  for prefix, params, batch_stats in candidates:
    if params is None:
      continue
    m = evaluate_split(
        p_eval_step,
        state_lib.model_variables(params, batch_stats),
        stop.batches(data.create_eval_iter(config)),  # Abandoned if a stop is requested.
        batch_sharding,
    )
    results.update({f"{prefix}/{k}": v for k, v in m.items() if k != "num_examples"})
  return results


def _best(
    config: ml_collections.ConfigDict, eval_metrics: dict[str, float] | None
) -> dict[str, float] | None:
  """The metric a checkpoint is ranked by (`best_metric`), when this step evaluated it."""
  if eval_metrics and config.best_metric in eval_metrics:
    return {config.best_metric: eval_metrics[config.best_metric]}
  return None


def _stopping_message(stop: _StopRequest, step: int) -> str:
  """The line printed as soon as the loop sees a stop request: the save takes seconds."""
  again = (
      " (Ctrl-C again quits at once; the next run then resumes from the newest complete"
      " checkpoint)"
      if stop.reason == "Ctrl-C"
      else ""
  )
  return f"Stopping ({stop.reason}): saving step {step} before exiting{again}..."


def _end_message(
    stop: _StopRequest,
    stopped: bool,
    step: int,
    ckpt: checkpoint_lib.Checkpointer,
    elapsed: float,
    workdir: str,
    resume_command: str | None,
    total: int,
) -> str:
  """The run's last line: how to resume a stopped run, or how long a finished one took."""
  if stopped:
    how = f"Preempted ({stop.reason})" if stop.preempted else f"Stopped by {stop.reason}"
    resume = (
        f"To resume, run:\n  {resume_command}"
        if resume_command
        else "Run the same command (same workdir) to resume."
    )
    return f"{how} after step {step}/{total}; checkpoint saved in {ckpt.directory}. {resume}"
  duration = progress_lib.format_duration(elapsed)
  total_s, resumes = ckpt.train_time(elapsed)
  if resumes:
    duration += (
        f" (this run; {progress_lib.format_duration(total_s)} in total across {resumes}"
        f" resume{'s' if resumes > 1 else ''})"
    )
  return f"Finished {total} steps in {duration}; workdir: {workdir}"


def step_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`train_step`'s recipe settings from a resolved config: mixing, loss, the EMA's timing.

  Configs saved before these keys existed get the old behaviour.
  """
  every = int(config.get("ema_every_steps", 1))
  copy = config.get("ema_warmup_copy", False) and config.ema_decay is not None
  return {
      "mixing": mixing_lib.from_config(config),
      "loss": config.get("loss", "softmax_ce"),
      "bce_target_threshold": config.get("bce_target_threshold", None),
      "ema_every_steps": every,
      # torchvision restarts its average at every update during warm-up: the updates before
      # step `warmup_steps + every` (the first one after warm-up included) copy the parameters.
      "ema_copy_steps": (int(config.warmup_steps or 0) + every) if copy else 0,
  }


def jit_steps(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    state_sharding: state_lib.TrainState,
    mesh: Mesh,
    placement: placement_lib.Placement | None = None,
) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """`(p_train_step, p_eval_step)`: the steps jitted with their shardings (the state donated).

  `placement` (`data.decide_placement`) is what the pipeline leaves to the train step: the step
  gets it and its `data.device_preprocess`; None: the batches' images are finished.
  """
  preprocess = None
  if placement is not None:
    from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

    preprocess = data.device_preprocess(config, placement)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  p_train_step = jax.jit(
      functools.partial(
          train_step,
          model=model,
          tx=tx,
          learning_rate_fn=learning_rate_fn,
          aux_loss_weight=config.aux_loss_weight,
          label_smoothing=config.label_smoothing,
          ema_decay=config.ema_decay,
          preprocess=preprocess,
          placement=placement,
          **step_options(config),
      ),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,),
  )
  p_eval_step = jax.jit(
      functools.partial(eval_step, model=model),
      in_shardings=(replicated, batch_sharding),
      out_shardings=replicated,
  )
  return p_train_step, p_eval_step


def _placement_message(
    config: ml_collections.ConfigDict, placement: placement_lib.Placement
) -> str | None:
  """The line saying where "auto" put the augmentation (it depends on the machine), or None."""
  if placement.resample:
    work = {"googlenet": "resized, flipped and colour-distorted"}
    what = work.get(config.augment, "resampled, flipped and normalised")
    return f"The crops are {what} in the train step; the input pipeline decodes their windows."
  if placement.photometric:
    return "GoogLeNet's colour distortions run in the train step, not the input pipeline."
  return None


# --- The loop ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """What one run is made of (`prepare_run`): nothing in its workdir is written yet."""

  config: ml_collections.ConfigDict  # Resolved: the run length in steps (`configs.resolve_config`).
  workdir: str
  info: Any  # `data.DatasetInfo`.
  init_from: tuple[str, int | None] | None  # Fine-tuning: the source run (`finetune`), or None.
  mesh: Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState
  state_sharding: state_lib.TrainState
  batch_sharding: NamedSharding
  # Decided once: the input pipeline, the train step and the run's message all read it.
  placement: placement_lib.Placement
  p_train_step: Callable[..., Any]
  p_eval_step: Callable[..., Any]
  ckpt: checkpoint_lib.Checkpointer
  resume_step: int | None  # The newest checkpoint's step, or None: a fresh start.
  is_chief: bool

  @property
  def steps_per_epoch(self) -> float:
    """Training steps per pass over the training split (fractional)."""
    return self.info.num_train / self.config.batch_size

  def train_batches(self, start_step: int) -> DevicePrefetch:
    """The global training batches from `start_step` on, on their way to the devices."""
    from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

    batches = data.create_train_iter(self.config, start_step=start_step, where=self.placement)
    return DevicePrefetch(batches, self.batch_sharding, self.config.device_prefetch)


def prepare_run(
    config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None
) -> Run:
  """`config` resolved and checked, and its model, mesh, optimizer, steps and checkpointer built.

  Reads the workdir only: raises what `train_and_evaluate` documents (the workdir not writable,
  the data missing, a bad config, another run or a live one in `workdir`) before writing anything.
  """
  from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

  fileio.check_writable_workdir(workdir)  # Before minutes of data and model: creates nothing.
  info = data.dataset_info(config)  # Fails first, clearly, if the data is missing.
  data.check_trainable(config)
  config = configs.resolve_config(config, info)
  init_from = finetune.resolve_init_from(config)  # Fine-tuning: the source run, or None.
  model = state_lib.create_model(config)
  mesh = state_lib.create_mesh() if mesh is None else mesh
  configs.validate(config, num_devices=mesh.size, num_processes=jax.process_count())
  is_chief = jax.process_index() == 0

  learning_rate_fn = state_lib.create_learning_rate_fn(config)
  tx = state_lib.create_optimizer(config, learning_rate_fn)
  abstract_state = state_lib.abstract_train_state(config, model, tx, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  ckpt = checkpoint_lib.Checkpointer(
      workdir,
      config,
      save_every_steps=config.checkpoint_every_steps,
      keep=config.keep_checkpoints,
      best_metric=config.best_metric or None,
  )
  if is_chief:  # A run training here now: refused before its checkpoints are read mid-save.
    fileio.raise_if_locked(workdir)
  resume_step = ckpt.check_compatible(abstract_state)  # Reads only; raises on a mismatch.

  placement = data.decide_placement(config, jax.default_backend())
  p_train_step, p_eval_step = jit_steps(
      config, model, tx, learning_rate_fn, state_sharding, mesh, placement
  )
  return Run(
      config=config,
      workdir=workdir,
      info=info,
      init_from=init_from,
      mesh=mesh,
      model=model,
      tx=tx,
      abstract_state=abstract_state,
      state_sharding=state_sharding,
      batch_sharding=NamedSharding(mesh, P("data")),
      placement=placement,
      p_train_step=p_train_step,
      p_eval_step=p_eval_step,
      ckpt=ckpt,
      resume_step=resume_step,
      is_chief=is_chief,
  )


def _restore_or_initialize(run: Run) -> tuple[state_lib.TrainState, int | None]:
  """Takes the workdir (locked) and returns its newest intact state, or a fresh (or fine-tuning)
  one, with the step it resumes at (None for a fresh start); saves the resolved config."""
  fileio.make_workdir(run.workdir)
  run.ckpt.lock_workdir()  # Raises fileio.WorkdirInUseError if another live run has it.
  try:
    if run.resume_step is not None:
      # The newest intact step: damaged newer ones are moved aside (checkpoint.py).
      state, meta = run.ckpt.restore(run.abstract_state)
      resume_step = int(meta["data"]["next_step"])
      logging.info("Resumed from %s at step %d.", run.ckpt.directory, resume_step)
    else:
      state = state_lib.create_train_state(run.config, run.model, run.tx, run.mesh)
      if run.init_from is not None:
        state = finetune.initialize_from(
            state, run.init_from, run.tx, run.state_sharding, run.workdir, run.is_chief
        )
      resume_step = None
  except BaseException:
    run.ckpt.close()  # Releases the lock (a notebook may call again).
    raise
  if run.is_chief:
    configs.save_config(run.config, run.workdir)
  return state, resume_step


def _open_outputs(
    run: Run, resume_step: int | None
) -> tuple[metrics_lib.MetricWriter, progress_lib.Progress]:
  """The metrics writer and the progress display, which opens with the run length and placement."""
  writer = metrics_lib.MetricWriter(run.workdir, enabled=run.is_chief, resume_step=resume_step)
  progress = progress_lib.Progress(
      run.config.num_train_steps,
      steps_per_epoch=run.steps_per_epoch,
      stream=None if run.is_chief else open(os.devnull, "w"),
  )
  progress.message(configs.describe_run_length(run.config, run.info))
  placement_message = _placement_message(run.config, run.placement)
  if placement_message:
    progress.message(placement_message)
  return writer, progress


@dataclasses.dataclass
class _Loop:
  """The training state, the loop's outputs and how far it got: the step, whether it stopped, the
  last metrics."""

  run: Run
  writer: metrics_lib.MetricWriter
  progress: progress_lib.Progress
  log: _TrainLog
  stop: _StopRequest
  state: state_lib.TrainState  # The only reference: a step's donated input is freed as it goes.
  step: int
  start_time: float = dataclasses.field(default_factory=time.time)
  stopped: bool = False
  last_train: dict[str, float] = dataclasses.field(default_factory=dict)
  last_eval: dict[str, float] = dataclasses.field(default_factory=dict)

  def train(self, train_iter: DevicePrefetch) -> None:
    """Steps to `num_train_steps` or a stop request, logging, evaluating and saving when due."""
    config, pending = self.run.config, None
    while self.step < config.num_train_steps:
      self.state, step_metrics = self.run.p_train_step(self.state, next(train_iter))
      self.step += 1
      # Keep the device busy: read the previous step's metrics only now that this one is queued.
      if pending is not None:
        self.log.read(*pending)
      pending = (self.step, step_metrics)
      due = _Due.at(self.step, config, self.run.ckpt)
      stopping = self.stop.requested(self.step, sync=due.any)
      if stopping:
        self._say_stopping()
      if not (due.any or stopping):
        continue
      self.log.read(*pending)  # The state about to be logged/evaluated/saved must be finite.
      pending = None
      if self._when_due(due, stopping, train_iter):
        self.stopped = True
        break
    if pending is not None:
      self.log.read(*pending)

  def _when_due(self, due: _Due, stopping: bool, train_iter: DevicePrefetch) -> bool:
    """Logs, evaluates and saves as `due` (a stop: logs and saves); returns whether to stop."""
    config, step = self.run.config, self.step
    if due.log or stopping:
      batch_size, steps_per_epoch = config.batch_size, self.run.steps_per_epoch
      self.last_train = self.log.summary(step, train_iter, batch_size, steps_per_epoch)
      self.writer.write_scalars(step, self.last_train)
      self.progress.log(step, self.last_train)
    eval_metrics = None
    if due.evaluate and not stopping:  # Stopping costs one step and one save, no evaluation.
      eval_metrics = self._evaluate()
      stopping = eval_metrics is None
    if due.save or stopping:
      train_time_s = time.time() - self.start_time
      best = _best(config, eval_metrics)
      self.run.ckpt.save(step, self.state, metrics=best, train_time_s=train_time_s)
      self.log.last_checkpoint = step
    self.writer.flush()
    if due.evaluate or due.save:
      self.log.restart_timing(step)
    return stopping

  def _evaluate(self) -> dict[str, float] | None:
    """The evaluation metrics, written and shown; None if a stop request abandoned them."""
    run = self.run
    try:
      metrics = _evaluate_state(
          run.p_eval_step, self.state, run.config, self.stop, run.batch_sharding
      )
    except _EvaluationAbandoned:
      self._say_stopping()
      return None
    self.last_eval = metrics
    self.writer.write_scalars(self.step, metrics)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
    self.progress.message(f"eval at step {self.step}: {shown}")
    return metrics

  def _say_stopping(self) -> None:
    """The line printed as soon as the loop sees a stop request (by the chief only)."""
    if self.run.is_chief:
      self.progress.message(_stopping_message(self.stop, self.step))


def _finish(loop: _Loop, resume_command: str | None) -> dict[str, Any]:
  """Prints the run's last line; returns `train_and_evaluate`'s result."""
  run, stop, stopped = loop.run, loop.stop, loop.stopped
  elapsed = time.time() - loop.start_time
  total = run.config.num_train_steps
  message = _end_message(
      stop, stopped, loop.step, run.ckpt, elapsed, run.workdir, resume_command, total
  )
  if run.is_chief:
    loop.progress.message(message)
  return {
      "step": loop.step,
      "stopped": stopped,
      "preempted": stopped and stop.preempted,
      **loop.last_train,
      **loop.last_eval,
  }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    resume_command: str | None = None,
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  Writes `checkpoints/`, TensorBoard event files, `metrics.jsonl` (one JSON object per logged
  step) and the resolved config (`config.json`, `config.yaml`) into `workdir`. SIGTERM or SIGINT
  (Ctrl-C) finishes the current step, saves, prints one line saying how to resume
  (`resume_command`, if given, is the command it shows) and returns with `"stopped": True`
  (`"preempted"` too for SIGTERM); rerunning the same command resumes, from the newest intact
  checkpoint (damaged newer ones are moved aside; see `incres.checkpoint`). A second Ctrl-C ends
  the process at once, keeping the newest complete checkpoint. Raises `NonFiniteLossError` if the
  loss or gradient stops being finite, `checkpoint.IncompatibleCheckpointError` (touching nothing)
  if `workdir` holds another run or no intact checkpoint (`DamagedCheckpointError`), and
  `fileio.WorkdirInUseError` if another live process is training in `workdir`, and
  `fileio.WorkdirNotWritableError` (before anything else) if `workdir` cannot be created or written.

  The returned dict holds the last step's training metrics (`train/...`), the last evaluation
  (`eval/top1`, `eval/top5`, `eval/loss`, and `eval_ema/...`, `eval_polyak/...` when averaging is
  on), `step`, `stopped` and `preempted`.
  """
  run = prepare_run(config, workdir, mesh=mesh)
  state, resume_step = _restore_or_initialize(run)  # From here on the workdir is ours.
  writer, progress = _open_outputs(run, resume_step)
  log = _TrainLog(progress, last_checkpoint=resume_step)
  loop = _Loop(run, writer, progress, log, _StopRequest(), state, step=resume_step or 0)
  del state  # The loop holds the state (each step's donated input freed as it is replaced).
  try:
    with run.train_batches(loop.step) as train_iter, loop.stop:
      loop.train(train_iter)
  finally:
    progress.close()
    writer.close()
    run.ckpt.close()  # Waits for the last asynchronous save.
  return _finish(loop, resume_command)
