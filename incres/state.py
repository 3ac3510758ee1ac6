"""What a run is made of: the model, the mesh, the learning-rate schedule, the optimizer, the state.

Training (`incres.train`) and every later stage (checkpoints, evaluation, prediction, export, weight
conversion, reports) build these the same way from a resolved config, so a checkpoint written by
one is read by the others. Nothing here runs a step or reads data.

All devices form a 1-D `('data',)` mesh (`create_mesh`); the train state is replicated over it.
Initialisation is `jax.eval_shape` (`abstract_train_state`: shapes, dtypes and shardings, which is
also what a restore needs) then a jitted init placed directly on those shardings
(`create_train_state`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from incres import configs
from incres import errors
from incres import models

PyTree = Any

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: what a checkpoint holds."""

  step: jax.Array  # Number of optimizer updates applied (int32 scalar).
  params: PyTree
  batch_stats: PyTree  # {} for models without batch norm.
  opt_state: optax.OptState
  ema_params: PyTree | None  # Exponential moving average of params (config.ema_decay), or None.
  # The same average of batch_stats (config.ema_batch_stats), or None (also without batch norm).
  ema_batch_stats: PyTree | None
  polyak_params: PyTree | None  # Running mean of params since step 0 (config.polyak), or None.
  rng: jax.Array  # Raw uint32 key data (`jax.random.key_data`), so checkpoints are plain arrays.


# --- Mesh, model ---------------------------------------------------------------------------------


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D `('data',)` mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def create_model(config: ml_collections.ConfigDict, num_classes: int | None = None) -> nn.Module:
  """`models.get_model(config.model, num_classes=..., dtype=..., **config.model_kwargs)`."""
  num_classes = config.num_classes if num_classes is None else num_classes
  if num_classes is None or num_classes < 1:
    raise ValueError(
        f"num_classes={num_classes}: call resolve_config(config, dataset_info(config)) first, or"
        " set --config.num_classes."
    )
  if config.dtype not in DTYPES:
    raise ValueError(f"Unknown dtype {config.dtype!r} in the config; use one of {list(DTYPES)}.")
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault("cpu_conv_vjp", config.get("cpu_conv_vjp", "auto"))  # Old configs lack it.
  if config.get("freeze_backbone", False):
    kwargs["frozen_bn"] = True  # A frozen backbone keeps its BN statistics too (finetune.py).
  return models.get_model(
      config.model, num_classes=num_classes, dtype=DTYPES[config.dtype], **kwargs
  )


def model_variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
  """What `model.apply` takes: `{"params", "batch_stats"}`, without batch_stats when it is empty."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


# --- Optimisation --------------------------------------------------------------------------------


def _resolved(config: ml_collections.ConfigDict, key: str) -> Any:
  """A step-valued key; one left to derive from epochs is only known without the data if 0."""
  value = config[key]
  if value is not None:
    return value
  epochs_key = dict(configs.EPOCH_KEYS).get(key, "num_epochs")
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
  warm-up included; the cosine spans the steps after warm-up, or with `cosine_spans_warmup` the
  whole run, the warm-up replacing its start (timm's CosineLRScheduler without --warmup-prefix).

  `lr_per_epoch`: the rate changes only at the first step of each epoch, as with torchvision's and
  timm's schedulers stepped once an epoch: in epoch e (which starts at step
  round(e * num_train_steps / num_epochs), `resolve_config`'s conversion of epochs to steps) it is
  the schedule above with every length counted in epochs (`num_epochs`, `warmup_epochs`,
  `lr_boundary_epochs` rounded up to whole epochs, `lr_decay_epochs`) evaluated at e: the warm-up
  flat within each epoch, the cosine a staircase, the values the sources' formulas give.
  """
  if not config.get("lr_per_epoch", False):
    return _schedule(config)
  total, epochs = _resolved(config, "num_train_steps"), config.num_epochs
  if not epochs or epochs <= 0:
    raise errors.ConfigError(
        f"lr_per_epoch=True needs the run's length in epochs (num_epochs={epochs}): set"
        " --config.num_epochs, or --config.lr_per_epoch=False."
    )
  used = {"piecewise": ("lr_boundaries",), "exponential": ("lr_decay_steps",)}
  keys = ("warmup_steps", *used.get(config.schedule, ()))
  explicit = [
      k for k in keys if _resolved(config, k) != configs.steps_of_epochs(config, _EPOCHS[k])
  ]
  if explicit:
    raise errors.ConfigError(
        f"lr_per_epoch=True counts the schedule in epochs, but {', '.join(explicit)} is set in"
        " steps: set " + ", ".join(f"--config.{_EPOCHS[k]}" for k in explicit) + " instead (and"
        " leave the step value unset), or --config.lr_per_epoch=False."
    )
  in_epochs = ml_collections.ConfigDict(config.to_dict(), type_safe=False)  # Float lengths.
  in_epochs.update(
      num_train_steps=epochs,
      warmup_steps=config.warmup_epochs,
      lr_boundaries=tuple(math.ceil(b) for b in config.lr_boundary_epochs),
      lr_decay_steps=config.lr_decay_epochs,
  )
  schedule = _schedule(in_epochs)
  starts = np.asarray(sorted({round(e * total / epochs) for e in range(math.ceil(epochs))}))

  def per_epoch(step):
    epoch = jnp.searchsorted(jnp.asarray(starts), jnp.asarray(step), side="right") - 1
    return schedule(jnp.maximum(epoch, 0))

  return per_epoch


_EPOCHS = dict(configs.EPOCH_KEYS)


def _schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """`create_learning_rate_fn`'s schedule as it moves every step."""
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
    spans_warmup = config.get("cosine_spans_warmup", False)
    main = optax.cosine_decay_schedule(
        lr, decay_steps=max(1, total - (0 if spans_warmup else warmup))
    )
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
  if config.schedule != "cosine" or config.get("cosine_spans_warmup", False):
    # Absolute steps: join_schedules hands on `step - warmup`.
    main = functools.partial(lambda step, f: f(step + warmup), f=main)
  return optax.join_schedules([ramp, main], [warmup])


def weight_decay_mask(params: PyTree, *, norms: bool = False, biases: bool = False) -> PyTree:
  """True for the parameters weight decay touches: the kernels (ndim >= 2) always; the biases of
  layers with a kernel if `biases`; every other parameter (the norms' scales and offsets) if
  `norms`. Kernels only is the default (`config.decay_norms`, `config.decay_biases`)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  with_kernel = {path_keys(p)[:-1] for p, _ in flat if path_keys(p)[-1] == "kernel"}

  def decayed(path, p):
    keys = path_keys(path)
    if p.ndim >= 2:
      return True
    if keys[-1] == "bias" and keys[:-1] in with_kernel:
      return biases
    return norms

  return jax.tree_util.tree_map_with_path(decayed, params)


def config_decay_mask(config: ml_collections.ConfigDict) -> Callable[[PyTree], PyTree]:
  """`weight_decay_mask` with the config's switches (absent from older configs: off)."""
  return functools.partial(
      weight_decay_mask,
      norms=bool(config.get("decay_norms", False)),
      biases=bool(config.get("decay_biases", False)),
  )


def path_keys(path: Sequence[Any]) -> tuple[str, ...]:
  """A `jax.tree_util` key path as strings, one per level: its dict keys, attribute names, indices.

  `(DictKey('opt_state'), SequenceKey(0), GetAttrKey('trace'))` -> `('opt_state', '0', 'trace')`;
  joined with "/" these are the variable paths of `is_head`, fine-tuning's logs and the exports.
  """
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey.
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return tuple(parts)


def is_head(path: str) -> bool:
  """Whether a parameter path ("head/kernel", "aux_4a/fc1/bias") belongs to a classifier head."""
  top = path.split("/")[0]
  return top == "head" or top.startswith("aux_")


def param_labels(params: PyTree) -> PyTree:
  """'head' or 'backbone' for every parameter leaf (the labels of `optax.multi_transform`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "head" if is_head(path_keys(path)[0]) else "backbone",
      params,
  )


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """`optax.chain`: optional global-norm clipping, then SGD, RMSProp, LAMB or LARS with masked
  weight decay (`config_decay_mask`).

  SGD and RMSProp add the weight decay to the gradient before momentum (as in the papers and
  `torch.optim.SGD`); LAMB and LARS inside their update (below). Fine-tuning (`incres.finetune`)
  splits the chain between the heads and the backbone with `optax.multi_transform`:
  `freeze_backbone` gives the backbone `optax.set_to_zero()` (it stays bitwise unchanged), and
  `head_learning_rate` gives the heads the same schedule scaled to it.
  """
  freeze = bool(config.get("freeze_backbone", False))
  head_lr = config.get("head_learning_rate", None)
  if not freeze and head_lr is None:
    return _optimizer(config, learning_rate_fn)
  head_fn = learning_rate_fn
  if head_lr is not None:
    scale = head_lr / config.learning_rate
    head_fn = lambda step: learning_rate_fn(step) * scale  # noqa: E731
  transforms = {
      "head": _optimizer(config, head_fn),
      "backbone": optax.set_to_zero() if freeze else _optimizer(config, learning_rate_fn),
  }
  return optax.multi_transform(transforms, param_labels)


def _lamb(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """LAMB (You et al. 2020, Algorithm 2): Adam's step, plus `weight_decay * w`, scaled per
  parameter by the trust ratio `||w|| / ||step||`, times the learning rate.

  `optax.lamb`'s transforms, with one difference: the parameters the decay mask excludes get
  neither the decay nor the trust ratio (a plain Adam step), as in timm's `Lamb` with
  `filter_bias_and_bn`, which ResNet strikes back trained with; `optax.lamb` scales them all.
  (With `weight_decay=0` timm adapts nothing, and its LAMB is Adam; here the kernels keep their
  trust ratio, the paper's algorithm.) timm's `Lamb` also clips the global gradient norm to 1 by
  default: set `grad_clip_norm=1.0` to reproduce it.
  """
  mask = config_decay_mask(config)
  return optax.chain(
      optax.scale_by_adam(b1=config.lamb_b1, b2=config.lamb_b2, eps=config.lamb_eps),
      optax.add_decayed_weights(config.weight_decay, mask=mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(learning_rate_fn),
  )


def _lars(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """LARS (You et al. 2017), `optax.lars`: `g + weight_decay * w`, scaled per parameter by
  `lars_trust_coefficient * ||w|| / (||g + weight_decay * w|| + lars_eps)`, times the learning
  rate, then momentum (heavy ball, or Nesterov's with `nesterov`).

  Deviation: the paper's Algorithm 1 (and timm's `Lars`) divides by `||g|| + weight_decay * ||w||`
  instead, an upper bound of optax's denominator (the triangle inequality), so its trust ratios
  are at most optax's. optax's is the one of SimCLR's and MoCo v3's LARS. The parameters the
  decay mask excludes get neither the decay nor the trust ratio (plain SGD with momentum), as in
  timm and those references.
  """
  mask = config_decay_mask(config)
  return optax.lars(
      learning_rate_fn,
      weight_decay=config.weight_decay,
      weight_decay_mask=mask,
      trust_coefficient=config.lars_trust_coefficient,
      eps=config.lars_eps,
      trust_ratio_mask=mask,
      momentum=config.momentum,
      nesterov=config.nesterov,
  )


def _optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """The optimizer of the whole network (or of one part of it, when fine-tuning splits it)."""
  if config.optimizer not in configs.OPTIMIZERS:
    raise errors.ConfigError(
        f"Unknown optimizer {config.optimizer!r}; use one of {list(configs.OPTIMIZERS)}"
        " (--config.optimizer=...)."
    )
  parts = []
  if config.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "lamb":
    return optax.chain(*parts, _lamb(config, learning_rate_fn))
  if config.optimizer == "lars":
    return optax.chain(*parts, _lars(config, learning_rate_fn))
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=config_decay_mask(config)))
  if config.optimizer == "rmsprop":
    # TensorFlow's RMSPropOptimizer, which the Inception papers trained with: epsilon inside the
    # square root, the mean square starting at `rmsprop_initial_scale` (TF: 1), momentum applied to
    # the learning-rate-scaled step.
    parts.append(
        optax.rmsprop(
            learning_rate_fn,
            decay=config.rmsprop_decay,
            eps=config.rmsprop_epsilon,
            initial_scale=config.rmsprop_initial_scale,
            eps_in_sqrt=True,
            momentum=config.momentum or None,
            nesterov=config.nesterov,
        )
    )
  else:
    parts.append(
        optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov)
    )
  return optax.chain(*parts)


# --- State ---------------------------------------------------------------------------------------


def averages_batch_stats(config: ml_collections.ConfigDict) -> bool:
  """Whether a run with `config` keeps an EMA of its batch statistics (if its model has any).

  Configs saved before the key existed did not.
  """
  return config.ema_decay is not None and bool(config.get("ema_batch_stats", False))


def _copy_tree(tree: PyTree) -> PyTree:
  """A copy that does not alias `tree` (the averaged params must survive params' donation)."""
  return jax.tree.map(jnp.copy, tree)


def _init_variables(
    rng: jax.Array, config: ml_collections.ConfigDict, model: nn.Module
) -> dict[str, PyTree]:
  """The model's fresh `{"params", "batch_stats"}` (`batch_stats` is {} without batch norm)."""
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  variables = model.init({"params": rng}, images, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_train_state(
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
) -> TrainState:
  """Builds a fresh `TrainState` (a pure function: wrap it in `jax.eval_shape` or `jax.jit`)."""
  init_rng, train_rng = jax.random.split(rng)
  variables = _init_variables(init_rng, config, model)
  params, batch_stats = variables["params"], variables["batch_stats"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=_copy_tree(params) if config.ema_decay is not None else None,
      ema_batch_stats=(
          _copy_tree(batch_stats) if batch_stats and averages_batch_stats(config) else None
      ),
      polyak_params=_copy_tree(params) if config.polyak else None,
      rng=jax.random.key_data(train_rng),
  )


def _replicated(shapes: PyTree, mesh: Mesh) -> PyTree:
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def abstract_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> TrainState:
  """The state's shapes and dtypes (`jax.ShapeDtypeStruct`s), replicated over `mesh`."""
  init = functools.partial(init_train_state, config=config, model=model, tx=tx)
  return _replicated(jax.eval_shape(init, jax.random.key(0)), mesh)


def abstract_variables(
    config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh
) -> dict[str, PyTree]:
  """The `{"params", "batch_stats"}` part of the state's shapes, replicated; no optimizer built."""
  init = functools.partial(_init_variables, config=config, model=model)
  return _replicated(jax.eval_shape(init, jax.random.key(0)), mesh)


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


def replace_variables(
    state: TrainState,
    variables: dict[str, PyTree],
    tx: optax.GradientTransformation,
    state_sharding: TrainState,
) -> TrainState:
  """`state` with these `{"params", "batch_stats"}`: the optimizer and the averages start afresh.

  `state_sharding` is the state's tree of shardings (those of `abstract_train_state`).
  """
  params = jax.device_put(variables["params"], state_sharding.params)
  batch_stats = jax.device_put(variables["batch_stats"], state_sharding.batch_stats)
  return state.replace(
      params=params,
      batch_stats=batch_stats,
      opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params),
      ema_params=None if state.ema_params is None else _copy_tree(params),
      ema_batch_stats=None if state.ema_batch_stats is None else _copy_tree(batch_stats),
      polyak_params=None if state.polyak_params is None else _copy_tree(params),
  )
