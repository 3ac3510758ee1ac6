"""The training loop: data-parallel `jax.jit` over every device of every host.

The same code runs on one CPU, eight GPUs or a TPU pod. All devices form a 1-D `('data',)` mesh;
each batch is a global array sharded along its first axis, the train state is replicated, and XLA
inserts the collectives (so batch-norm statistics and gradients are over the global batch). There
is no `pmap` and no axis name inside the models.

Entry point: `train_and_evaluate(config, workdir)`. The building blocks are module-level functions
with their settings bound by `functools.partial`: `create_learning_rate_fn`, `create_optimizer`,
`create_train_state`, `train_step`, `eval_step`.

Exactness: the k-th training batch depends only on `(config, k)`, the dropout key of step k is
`fold_in(state.rng, k)` and nothing else is random, so a run resumed from a checkpoint computes
the same parameters, bit for bit, as one that was never interrupted (tested on CPU).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import yaml
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from incres import checkpoint as checkpoint_lib
from incres import fileio
from incres import metrics as metrics_lib
from incres import progress as progress_lib

PyTree = Any
Batch = Mapping[str, jax.Array]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: what a checkpoint holds."""

  step: jax.Array  # Number of optimizer updates applied (int32 scalar).
  params: PyTree
  batch_stats: PyTree  # {} for models without batch norm.
  opt_state: optax.OptState
  ema_params: PyTree | None  # Exponential moving average of params (config.ema_decay), or None.
  polyak_params: PyTree | None  # Running mean of params since step 0 (config.polyak), or None.
  rng: jax.Array  # Raw uint32 key data (`jax.random.key_data`), so checkpoints are plain arrays.


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or infinite."""


# --- Mesh, model, config -------------------------------------------------------------------------


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D `('data',)` mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


# Step-valued config keys and the epoch-valued keys they are derived from by `resolve_config`.
EPOCH_KEYS = (
    ("lr_boundaries", "lr_boundary_epochs"),
    ("lr_decay_steps", "lr_decay_epochs"),
    ("warmup_steps", "warmup_epochs"),
    ("eval_every_steps", "eval_every_epochs"),
    ("checkpoint_every_steps", "checkpoint_every_epochs"),
)


def resolve_config(config: ml_collections.ConfigDict, info: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with the values derived from the dataset filled in.

  `num_classes` (-1: the dataset's) and the step counts of a run stated in epochs. With
  N = `info.num_train` (the training split's actual size) and B = `batch_size`:
  `num_train_steps` = max(1, round(num_epochs * N / B)) unless set; every other step value left
  at None is its fraction of the run, round(num_train_steps * value_epochs / num_epochs) (at least
  1 for the decay, eval and checkpoint periods and for a non-zero warm-up). So an explicit
  `num_train_steps` keeps the schedule's proportions, and explicit step values are kept as they are.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the caller's is untouched.
  if config.num_classes == -1:
    config.num_classes = info.num_classes
  if config.num_train_steps is None or any(config[k] is None for k, _ in EPOCH_KEYS):
    if not config.num_epochs or config.num_epochs <= 0:
      raise ValueError(
          f"num_epochs={config.num_epochs} must be positive (or set --config.num_train_steps)."
      )
  if config.num_train_steps is None:
    config.num_train_steps = max(1, round(config.num_epochs * info.num_train / config.batch_size))
  total = config.num_train_steps

  def steps(epochs: float, minimum: int) -> int:
    return max(minimum, round(total * epochs / config.num_epochs)) if epochs > 0 else 0

  if config.lr_boundaries is None:
    config.lr_boundaries = tuple(steps(e, 0) for e in config.lr_boundary_epochs)
  for key, epochs_key in EPOCH_KEYS[1:]:
    if config[key] is None:
      config[key] = steps(config[epochs_key], 1)
  return config


def describe_run_length(config: ml_collections.ConfigDict, info: Any) -> str:
  """One line for the start of a run: "N examples, E epochs = S steps of batch B; ..."."""
  total, batch = config.num_train_steps, config.batch_size
  epochs = total * batch / info.num_train
  parts = [
      f"{info.num_train:,} examples, {round(epochs, 2):g} epochs = {total:,} steps of batch {batch}"
  ]
  if config.schedule == "piecewise" and config.lr_boundaries:
    steps = ", ".join(f"{b:,}" for b in config.lr_boundaries)
    parts.append(f"lr x{config.lr_decay_factor:g} at steps {steps}")
  elif config.schedule == "exponential":
    parts.append(f"lr x{config.lr_decay_rate:g} every {config.lr_decay_steps:,} steps")
  if config.warmup_steps:
    parts.append(f"warm-up {config.warmup_steps:,} steps")
  parts.append(
      f"eval every {config.eval_every_steps:,}, checkpoint every"
      f" {config.checkpoint_every_steps:,} steps"
  )
  return "; ".join(parts)


def create_model(config: ml_collections.ConfigDict, num_classes: int | None = None) -> nn.Module:
  """`getattr(incres.models, config.model)(num_classes=..., dtype=..., **config.model_kwargs)`."""
  import incres.models as models  # pylint: disable=g-import-not-at-top

  num_classes = config.num_classes if num_classes is None else num_classes
  if num_classes is None or num_classes < 1:
    raise ValueError(
        f"num_classes={num_classes}: call resolve_config(config, dataset_info(config)) first, or"
        " set --config.num_classes."
    )
  if config.dtype not in _DTYPES:
    raise ValueError(f"Unknown dtype {config.dtype!r} in the config; use one of {list(_DTYPES)}.")
  known = list(getattr(models, "MODELS", ()))
  model_cls = getattr(models, config.model, None) if config.model in known else None
  if model_cls is None:
    raise ValueError(
        f"Unknown model {config.model!r} (config key `model`). Choose one of: {', '.join(known)};"
        " for example --config.model=CifarResNet20."
    )
  kwargs = dict(config.model_kwargs)
  if config.get("freeze_backbone", False):
    kwargs["frozen_bn"] = True  # A frozen backbone keeps its BN statistics too (finetune.py).
  kwargs.setdefault("cpu_conv_vjp", config.get("cpu_conv_vjp", "auto"))  # Old configs lack it.
  return model_cls(num_classes=num_classes, dtype=_DTYPES[config.dtype], **kwargs)


# --- Optimisation --------------------------------------------------------------------------------


def _resolved(config: ml_collections.ConfigDict, key: str) -> Any:
  """A step-valued key; one left to derive from epochs is only known without the data if 0."""
  value = config[key]
  if value is not None:
    return value
  epochs_key = dict(EPOCH_KEYS).get(key, "num_epochs")
  if not config[epochs_key]:  # 0 epochs (or no boundaries) are 0 steps on any dataset.
    return () if key == "lr_boundaries" else 0
  raise ValueError(
      f"{key} is derived from {epochs_key} and the dataset's size: call"
      " resolve_config(config, data.dataset_info(config)) first (train_and_evaluate does)."
  )


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate as a function of the step, built from optax schedules.

  `schedule`: "piecewise" (multiply by `lr_decay_factor` at each of `lr_boundaries`), "exponential"
  (staircase: times `lr_decay_rate` every `lr_decay_steps`; GoogLeNet's 4% every 8 epochs),
  "cosine" (to zero at `num_train_steps`) or "constant". Warm-up: the first `warmup_steps` steps
  run at `warmup_learning_rate` ("constant", ResNet-110's 0.01) or ramp linearly from it to
  `learning_rate` ("linear"). Piecewise boundaries and exponential decay count absolute steps,
  warm-up included; the cosine spans the steps after warm-up.
  """
  lr, warmup = config.learning_rate, _resolved(config, "warmup_steps")
  if config.schedule == "piecewise":
    boundaries = {int(b): config.lr_decay_factor for b in _resolved(config, "lr_boundaries")}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif config.schedule == "exponential":
    decay_steps = _resolved(config, "lr_decay_steps")
    if decay_steps <= 0:
      raise ValueError(
          "schedule='exponential' needs lr_decay_epochs > 0 (or lr_decay_steps > 0); GoogLeNet's"
          " is 8 epochs."
      )
    main = optax.exponential_decay(
        lr, transition_steps=decay_steps, decay_rate=config.lr_decay_rate, staircase=True
    )
  elif config.schedule == "cosine":
    total = _resolved(config, "num_train_steps")
    main = optax.cosine_decay_schedule(lr, decay_steps=max(1, total - warmup))
  elif config.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(
        f"Unknown schedule {config.schedule!r}; use 'piecewise', 'exponential', 'cosine' or"
        " 'constant'."
    )
  if warmup <= 0:
    return main
  shape = config.warmup_shape
  if shape == "constant":
    ramp = optax.constant_schedule(config.warmup_learning_rate)
  elif shape == "linear":
    ramp = optax.linear_schedule(config.warmup_learning_rate, lr, transition_steps=warmup)
  else:
    raise ValueError(f"Unknown warmup_shape {shape!r}; use 'constant' or 'linear'.")
  if config.schedule != "cosine":  # Absolute steps: join_schedules hands on `step - warmup`.
    main = functools.partial(lambda step, f: f(step + warmup), f=main)
  return optax.join_schedules([ramp, main], [warmup])


def weight_decay_mask(params: PyTree) -> PyTree:
  """Decay kernels (ndim >= 2) only, not biases or batch-norm scales/offsets (the usual choice)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """`optax.chain`: optional global-norm clipping, masked L2 weight decay, SGD with momentum.

  Weight decay is added to the gradient before momentum (as in the papers and `torch.optim.SGD`).
  With `freeze_backbone` or `head_learning_rate` (fine-tuning) the chain is split between the heads
  and the backbone with `optax.multi_transform` (`incres.finetune.wrap_optimizer`).
  """
  from incres import finetune  # pylint: disable=g-import-not-at-top

  return finetune.wrap_optimizer(functools.partial(_sgd, config), learning_rate_fn, config)


def _sgd(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  if config.optimizer != "sgd":
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; only 'sgd' is implemented.")
  parts = []
  if config.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask))
  parts.append(
      optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov)
  )
  return optax.chain(*parts)


# --- State ---------------------------------------------------------------------------------------


def _copy_tree(tree: PyTree) -> PyTree:
  """A copy that does not alias `tree` (the averaged params must survive params' donation)."""
  return jax.tree.map(jnp.copy, tree)


def init_train_state(
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
) -> TrainState:
  """Builds a fresh `TrainState` (a pure function: wrap it in `jax.eval_shape` or `jax.jit`)."""
  init_rng, train_rng = jax.random.split(rng)
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  variables = model.init({"params": init_rng}, images, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=_copy_tree(params) if config.ema_decay is not None else None,
      polyak_params=_copy_tree(params) if config.polyak else None,
      rng=jax.random.key_data(train_rng),
  )


def abstract_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
  """The state's shapes and dtypes (`jax.ShapeDtypeStruct`s), replicated over `mesh`."""
  init = functools.partial(init_train_state, config=config, model=model, tx=tx)
  shapes = jax.eval_shape(init, jax.random.key(0))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
  )


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
  """Initialises the state with a jitted init placed directly on its (replicated) sharding."""
  abstract = abstract_train_state(config, model, tx, mesh)
  init = functools.partial(init_train_state, config=config, model=model, tx=tx)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))


# --- Steps ---------------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    aux_loss_weight: float,
    label_smoothing: float,
    ema_decay: float | None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch; returns the new state and scalar metrics.

  The loss is the mean softmax cross-entropy plus `aux_loss_weight` times each auxiliary
  classifier's (GoogLeNet). Batch-norm statistics come from the whole global batch.
  """
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    (logits, extras), new_vars = model.apply(
        variables,
        batch["image"],
        train=True,
        rngs={"dropout": dropout_rng},
        mutable=["batch_stats"],
    )
    loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
    aux_loss = jnp.zeros((), jnp.float32)
    for aux_logits in extras.get("aux_logits", ()):
      aux_loss += cross_entropy(aux_logits, batch["label"], label_smoothing).mean()
    total = loss + aux_loss_weight * aux_loss
    return total, (loss, aux_loss, logits, new_vars.get("batch_stats", {}))

  grads, (loss, aux_loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  ema_params = state.ema_params
  if ema_params is not None:
    ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay)
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
      polyak_params=polyak_params,
  )
  metrics = {
      "loss": loss,
      "aux_loss": aux_loss,
      "total_loss": loss + aux_loss_weight * aux_loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
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
      "loss": jnp.sum(cross_entropy(logits, labels) * mask),
      "top1": jnp.sum(hit1 * mask),
      "top5": jnp.sum(hit5 * mask),
      "count": jnp.sum(mask),
  }


# --- Loop helpers --------------------------------------------------------------------------------


def make_global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> Batch:
  """Assembles the per-process batches into global arrays sharded along the batch axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _variables(params: PyTree, batch_stats: PyTree) -> PyTree:
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def evaluate(
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


def _validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % num_devices or config[key] % jax.process_count():
      raise ValueError(
          f"{key}={config[key]} is not divisible by the {num_devices} devices"
          f" ({jax.process_count()} processes): every device gets an equal share of the global"
          f" batch. Use a multiple of {num_devices}, e.g. --config.{key}="
          f"{max(1, round(config[key] / num_devices)) * num_devices}."
      )
  for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[key] <= 0:
      raise ValueError(f"{key}={config[key]} must be positive.")
  averaged = [n for n, on in (("eval_ema", config.ema_decay), ("eval_polyak", config.polyak)) if on]
  known = [f"{p}/{m}" for p in ["eval"] + averaged for m in ("top1", "top5", "loss")]
  if config.best_metric and config.best_metric not in known:
    raise ValueError(f"best_metric={config.best_metric!r} is not computed; use one of {known}.")


def _init_from(
    state: TrainState,
    source: tuple[str, int | None],
    tx: optax.GradientTransformation,
    state_sharding: Any,
    workdir: str,
    is_chief: bool,
) -> TrainState:
  """The fresh state with the source run's backbone (and matching heads) copied in."""
  from incres import finetune  # pylint: disable=g-import-not-at-top

  _, _, source_vars = checkpoint_lib.load_variables(*source)
  merged, log = finetune.merge(
      {"params": state.params, "batch_stats": state.batch_stats}, jax.device_get(source_vars)
  )
  summary = f"init_from {source[0]} (step {source[1] or 'newest'}):\n{log.summary()}"
  logging.info("%s", summary)
  if is_chief:
    fileio.atomic_write_text(os.path.join(workdir, "init_from.txt"), summary + "\n")
  params = jax.device_put(merged["params"], state_sharding.params)
  batch_stats = jax.device_put(merged["batch_stats"], state_sharding.batch_stats)
  return state.replace(
      params=params,
      batch_stats=batch_stats,
      opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params),
      ema_params=None if state.ema_params is None else _copy_tree(params),
      polyak_params=None if state.polyak_params is None else _copy_tree(params),
  )


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as `config.json` and plain `config.yaml`, atomically."""
  text = config.to_json(indent=2, sort_keys=True)
  fileio.atomic_write_text(os.path.join(workdir, "config.json"), text + "\n")
  # Plain YAML (`yaml.safe_load` reads it), not ConfigDict.to_yaml's `!!python/object` tags.
  fileio.atomic_write_text(
      os.path.join(workdir, "config.yaml"), yaml.safe_dump(json.loads(text), sort_keys=True)
  )


# --- The loop ------------------------------------------------------------------------------------


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
  `fileio.WorkdirInUseError` if another live process is training in `workdir`.

  The returned dict holds the last step's training metrics (`train/...`), the last evaluation
  (`eval/top1`, `eval/top5`, `eval/loss`, and `eval_ema/...`, `eval_polyak/...` when averaging is
  on), `step`, `stopped` and `preempted`.
  """
  from incres import data  # pylint: disable=g-import-not-at-top  (heavy: TensorFlow)

  info = data.dataset_info(config)  # Fails first, clearly, if the data is missing.
  config = resolve_config(config, info)
  init_from = None
  if config.get("init_from"):  # Fine-tuning: the backbone is the source run's (finetune.py).
    from incres import finetune  # pylint: disable=g-import-not-at-top

    init_from = finetune.resolve_source(config.init_from, config.get("init_from_step"))
    filled = finetune.inherit_architecture(config, checkpoint_lib.load_config(*init_from))
    if filled:
      logging.info("From the init_from run: %s", ", ".join(filled))
  elif not config.model:
    raise ValueError(
        "config.model is empty, which means \"the init_from run's model\", but config.init_from"
        " is not set. Pass --config.init_from=<a run's workdir or a convert_torch --out>, or"
        " --config.model=<name>."
    )
  model = create_model(config)
  mesh = create_mesh() if mesh is None else mesh
  _validate(config, mesh.size)
  is_chief = jax.process_index() == 0

  learning_rate_fn = create_learning_rate_fn(config)
  tx = create_optimizer(config, learning_rate_fn)
  abstract_state = abstract_train_state(config, model, tx, mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  ckpt = checkpoint_lib.Checkpointer(
      workdir,
      config,
      save_every_steps=config.checkpoint_every_steps,
      keep=config.keep_checkpoints,
      best_metric=config.best_metric or None,
  )
  resume_step = ckpt.check_compatible(abstract_state)  # Reads only; raises on a mismatch.

  # From here on the workdir is ours.
  os.makedirs(workdir, exist_ok=True)
  ckpt.lock_workdir()  # Raises fileio.WorkdirInUseError if another live run has it.
  try:
    if resume_step is not None:
      # The newest intact step: damaged newer ones are moved aside (checkpoint.py).
      state, meta = ckpt.restore(abstract_state)
      resume_step = start_step = int(meta["data"]["next_step"])
      logging.info("Resumed from %s at step %d.", ckpt.directory, start_step)
    else:
      state = create_train_state(config, model, tx, mesh)
      if init_from is not None:
        state = _init_from(state, init_from, tx, state_sharding, workdir, is_chief)
      start_step = 0
  except BaseException:
    ckpt.close()  # Releases the lock (a notebook may call again).
    raise
  if is_chief:
    save_config(config, workdir)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_chief, resume_step=resume_step)
  steps_per_epoch = info.num_train / config.batch_size
  progress = progress_lib.Progress(
      config.num_train_steps,
      steps_per_epoch=steps_per_epoch,
      stream=None if is_chief else open(os.devnull, "w"),
  )
  progress.message(describe_run_length(config, info))

  p_train_step = jax.jit(
      functools.partial(
          train_step,
          model=model,
          tx=tx,
          learning_rate_fn=learning_rate_fn,
          aux_loss_weight=config.aux_loss_weight,
          label_smoothing=config.label_smoothing,
          ema_decay=config.ema_decay,
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

  def run_eval(state: TrainState) -> dict[str, float]:
    results = {}
    candidates = [("eval", state.params), ("eval_ema", state.ema_params)]
    candidates.append(("eval_polyak", state.polyak_params))
    for prefix, params in candidates:
      if params is None:
        continue
      m = evaluate(
          p_eval_step,
          _variables(params, state.batch_stats),
          stop.batches(data.create_eval_iter(config)),  # Abandoned if a stop is requested.
          batch_sharding,
      )
      results.update({f"{prefix}/{k}": v for k, v in m.items() if k != "num_examples"})
    return results

  total = config.num_train_steps
  step = start_step
  last_checkpoint = resume_step
  train_window: list[dict[str, float]] = []
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}
  pending: tuple[int, dict[str, jax.Array]] | None = None
  window_start: tuple[float, int] | None = None  # (time, step) where the images/s window began.
  stopped = False
  skipped_logged = 0  # Unreadable training images skipped up to the last log step.
  start_time = time.time()

  def consume(item: tuple[int, dict[str, jax.Array]]) -> None:
    """Reads one step's metrics (waiting for that step only) and checks they are finite."""
    nonlocal window_start
    at, values = item
    values = {k: float(v) for k, v in jax.device_get(values).items()}
    _check_finite(at, values, last_checkpoint)
    train_window.append(values)
    if window_start is None:  # The first step includes compilation: start timing after it.
      window_start = (time.monotonic(), at)
    progress.update(at, {f"train/{k}": v for k, v in values.items()})

  train_iter = data.create_train_iter(config, start_step=start_step)
  try:
    with _StopRequest() as stop:
      while step < total:
        batch = make_global_batch(next(train_iter), batch_sharding)
        state, step_metrics = p_train_step(state, batch)
        step += 1
        # Keep the device busy: read the previous step's metrics only now that this one is queued.
        if pending is not None:
          consume(pending)
        pending = (step, step_metrics)

        is_last = step == total
        log_now = step % config.log_every_steps == 0 or is_last
        eval_now = step % config.eval_every_steps == 0 or is_last
        save_now = ckpt.should_save(step) or is_last
        sync = log_now or eval_now or save_now
        stopping = stop.requested(step, sync=sync)
        if not (sync or stopping):
          continue
        consume(pending)  # The state about to be logged/evaluated/saved must be finite.
        pending = None

        if log_now or stopping:
          now = time.monotonic()
          t0, s0 = window_start
          summary = {f"train/{k}": float(np.mean([m[k] for m in train_window])) for k in
                     train_window[-1]}
          summary["train/learning_rate"] = train_window[-1]["learning_rate"]
          summary["train/epoch"] = step / steps_per_epoch
          skipped = _skipped_images(train_iter)
          summary["train/skipped_images"] = skipped - skipped_logged  # Since the last log step.
          skipped_logged = skipped
          if step > s0 and now > t0:
            ips = (step - s0) * config.batch_size / (now - t0)
            summary["train/images_per_sec"] = ips
            progress.set_speed(ips, config.batch_size)
          train_window.clear()
          last_train = summary
          writer.write_scalars(step, summary)
          progress.log(step, summary)

        eval_metrics = None
        if eval_now and not stopping:  # Stopping costs one step and one save, no evaluation.
          try:
            eval_metrics = run_eval(state)
          except _EvaluationAbandoned:
            stopping = True
          else:
            last_eval = eval_metrics
            writer.write_scalars(step, eval_metrics)
            progress.message(
                f"eval at step {step}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items()))
            )
        if save_now or stopping:
          best = None
          if eval_metrics and config.best_metric in eval_metrics:
            best = {config.best_metric: eval_metrics[config.best_metric]}
          ckpt.save(step, state, metrics=best, train_time_s=time.time() - start_time)
          last_checkpoint = step
        writer.flush()
        if eval_now or save_now:  # Time spent evaluating and saving is not training time.
          window_start = (time.monotonic(), step)
        if stopping:
          stopped = True
          break
      if pending is not None:
        consume(pending)
  finally:
    # The input pipeline's threads would keep filling their prefetch buffers while the save
    # finishes; closing the iterator stops them first.
    train_iter = None
    progress.close()
    writer.close()
    ckpt.close()  # Waits for the last asynchronous save.

  elapsed = time.time() - start_time
  if stopped:
    how = f"Preempted ({stop.reason})" if stop.preempted else f"Stopped by {stop.reason}"
    resume = (
        f"To resume, run:\n  {resume_command}"
        if resume_command
        else "Run the same command (same workdir) to resume."
    )
    message = f"{how} after step {step}/{total}; checkpoint saved in {ckpt.directory}. {resume}"
  else:
    duration = progress_lib.format_duration(elapsed)
    total_s, resumes = ckpt.train_time(elapsed)
    if resumes:
      duration += (
          f" (this run; {progress_lib.format_duration(total_s)} in total across {resumes}"
          f" resume{'s' if resumes > 1 else ''})"
      )
    message = f"Finished {total} steps in {duration}; workdir: {workdir}"
  if is_chief:
    progress.message(message)
  return {
      "step": step,
      "stopped": stopped,
      "preempted": stopped and stop.preempted,
      **last_train,
      **last_eval,
  }
