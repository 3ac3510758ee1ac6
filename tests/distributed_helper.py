"""Runs a tiny training job for tests/test_distributed.py (in a subprocess).

  python tests/distributed_helper.py mesh OUT.json WORKDIR
      8 forced host devices: trains once on all 8 and once on 1, writes both loss trajectories.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(steps: int):
  from incres import configs  # pylint: disable=g-import-not-at-top

  config = configs.base_config()
  config.model_kwargs.width = 4
  config.dataset = "digits"
  config.image_size = 16
  config.augment = "none"
  config.batch_size = 16
  config.eval_batch_size = 32
  config.eval_split = "test[:64]"  # Evaluation is not what these tests compare; keep it short.
  config.num_train_steps = steps
  config.log_every_steps = 1
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.lr_boundaries = (steps // 2,)
  config.learning_rate = 0.05
  return config


def main(argv: list[str]) -> None:
  mode, out, workdir = argv[1:4]
  from incres import checkpoint, metrics, train  # pylint: disable=g-import-not-at-top
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  if mode == "mesh":
    assert jax.device_count() == 8, jax.devices()
    result = {}
    for n in (8, 1):
      wd = os.path.join(workdir, f"devices{n}")
      train.train_and_evaluate(tiny_config(5), wd, mesh=state_lib.create_mesh(jax.devices()[:n]))
      result[n] = [r["train/loss"] for r in metrics.read_metrics(wd) if "train/loss" in r]
      _, _, variables = checkpoint.load_variables(wd)
      result[f"params{n}"] = [np.asarray(x).tolist() for x in jax.tree.leaves(variables)]
    with open(out, "w") as f:
      json.dump(result, f)
  else:
    raise ValueError(mode)


if __name__ == "__main__":
  main(sys.argv)
