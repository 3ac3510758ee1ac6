"""The tiny training config of the tests (seconds on a CPU): CifarResNet20 of width 4, 16×16 digits.

  python launch.py --config=tests/tiny_config.py --workdir=/tmp/tiny

Tests build it with `get(steps=..., every=..., key=value, ...)`, overriding only what they test,
so that the one recipe lives here.
"""

from __future__ import annotations

from typing import Any

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
