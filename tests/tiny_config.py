"""The tiny training config of the tests (seconds on a CPU): CifarResNet20 of width 4, 16×16 digits.

  python launch.py --config=tests/tiny_config.py --workdir=/tmp/tiny

Tests build it with `get(steps=..., every=..., key=value, ...)`, overriding only what they test,
so that the one recipe lives here; and here are the ways the tests train on it: one jitted
`train_step` on a random batch (`jitted_train_step`, `random_batch`), and a run stopped and
resumed against an uninterrupted one (`assert_exact_resume`).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable

import ml_collections

from incres import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = configs.parse_arg(arg, steps=12, every=4, model="CifarResNet20")
  config = configs.base_config()
  config.model = args.model
  width = {"width": 4} if args.model == "CifarResNet20" else {}
  config.model_kwargs = ml_collections.ConfigDict(width)
  config.dataset = "digits"
  config.image_size = 16
  config.augment = "none"
  config.batch_size = 16
  config.eval_batch_size = 128
  config.num_train_steps = args.steps
  config.log_every_steps = args.every
  config.eval_every_steps = args.steps
  config.checkpoint_every_steps = args.every
  config.lr_boundaries = (args.steps // 2,)
  config.learning_rate = 0.05
  return config


def get(steps: int = 12, every: int = 4, **overrides: Any) -> ml_collections.ConfigDict:
  """The tiny config of `steps` steps, logged and checkpointed every `every`, then `overrides`."""
  config = get_config(f"steps={steps},every={every}")
  config.update(overrides)
  return config


# --- Training on it ------------------------------------------------------------------------------
# JAX and the training modules are imported when a helper is called: launch.py and `configs.load`
# read this file as a config, which needs neither.


def random_batch(size: int = 8, image_size: int = 16) -> dict[str, Any]:
  """`size` standard-normal images of `image_size`² and labels of 10 classes (NumPy, seed 0)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  return {
      "image": rng.normal(size=(size, image_size, image_size, 3)).astype(np.float32),
      "label": rng.integers(0, 10, size).astype(np.int32),
  }


def jitted_train_step(
    config: ml_collections.ConfigDict, model: Any, **step_options: Any
) -> tuple[Any, Callable[..., Any]]:
  """`(state, step)`: `model`'s fresh `TrainState` under `config`'s schedule and optimizer, and
  `train.train_step` jitted for it with `step_options` (`aux_loss_weight`, `label_smoothing` and
  `ema_decay` are required; the test names each value it checks).

  Unlike `train.jit_steps`, the state is not donated: tests step from one state more than once.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from incres import state as state_lib  # pylint: disable=g-import-not-at-top
  from incres import train  # pylint: disable=g-import-not-at-top

  lr_fn = state_lib.create_learning_rate_fn(config)
  tx = state_lib.create_optimizer(config, lr_fn)
  state = state_lib.create_train_state(config, model, tx, state_lib.create_mesh())
  step = functools.partial(
      train.train_step, model=model, tx=tx, learning_rate_fn=lr_fn, **step_options
  )
  return state, jax.jit(step)


def params_of(workdir: str, **kw: Any) -> Any:
  """A run's variables on the host (`checkpoint.load_variables`' `step`, `averaged`)."""
  import jax  # pylint: disable=g-import-not-at-top

  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  return jax.device_get(checkpoint.load_variables(workdir, **kw)[2])


def assert_trees_equal(a: Any, b: Any) -> None:
  """The same tree paths, and the same bits at each (the failure names the leaf)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_exact_resume(
    config: ml_collections.ConfigDict,
    tmp_path: pathlib.Path,
    stop: int,
    *,
    averaged: tuple[bool | str, ...] = (False,),
    reference: str | None = None,
) -> str:
  """Trains `config` for `stop` steps, then to its `num_train_steps` in a second run from the
  first's last checkpoint, and asserts that it ends with the bits of an uninterrupted run: the
  variables that `checkpoint.load_variables` gives for each of `averaged` (False: the raw ones;
  "ema", "polyak": the averages).

  `reference` is the uninterrupted run's workdir where the test has one; otherwise it is trained
  in `tmp_path / "uninterrupted"`. The stopped run prefetches no batches to the devices
  (`device_prefetch=0`), so its batches' order is shown not to depend on prefetching either.
  Returns the resumed run's workdir (`tmp_path / "resumed"`).
  """
  from incres import train  # pylint: disable=g-import-not-at-top

  steps = config.num_train_steps
  if reference is None:
    reference = str(tmp_path / "uninterrupted")
    assert train.train_and_evaluate(config, reference)["step"] == steps
  workdir = str(tmp_path / "resumed")
  first = config.copy_and_resolve_references()
  first.num_train_steps, first.device_prefetch = stop, 0
  assert train.train_and_evaluate(first, workdir)["step"] == stop
  assert train.train_and_evaluate(config, workdir)["step"] == steps
  for which in averaged:
    assert_trees_equal(params_of(workdir, averaged=which), params_of(reference, averaged=which))
  return workdir
