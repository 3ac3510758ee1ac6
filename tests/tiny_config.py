"""A tiny training config for the launch/checkpoint subprocess tests (seconds on a CPU).

  python launch.py --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

from __future__ import annotations

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
