"""Runs a tiny training job for tests/test_distributed.py (in a subprocess).

python tests/distributed_helper.py mesh OUT.json WORKDIR
    8 forced host devices: trains once on all 8 and once on 1, writes both loss trajectories.
python tests/distributed_helper.py late OUT.json PORT PROCESS_ID DELAY
    One of two processes joined by `runtime.initialize_distributed`: process 1 waits DELAY seconds,
    then both sum one value per device over incres' mesh and write the sum.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(steps: int):
  import tiny_config as tiny  # pylint: disable=g-import-not-at-top  (tests/ is this script's path)

  # Evaluation is not what these tests compare; keep it short.
  return tiny.get(
      steps=steps, every=1, eval_batch_size=32, eval_split="test[:64]", checkpoint_every_steps=steps
  )


def late(out: str, port: str, process_id: str, delay: str) -> None:
  from incres import runtime  # pylint: disable=g-import-not-at-top
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  runtime.initialize_distributed("auto", f"localhost:{port}", 2, int(process_id))
  if jax.process_index() == 1:
    time.sleep(float(delay))
  mesh = state_lib.create_mesh()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  mine = np.full((jax.local_device_count(),), jax.process_index() + 1, np.float32)
  total = jax.jit(jax.numpy.sum)(jax.make_array_from_process_local_data(sharding, mine))
  with open(out, "w") as f:
    json.dump({"sum": float(total), "devices": jax.device_count()}, f)


def main(argv: list[str]) -> None:
  mode, out, workdir = argv[1:4]
  from incres import checkpoint, metrics, train  # pylint: disable=g-import-not-at-top
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  if mode == "late":
    late(*argv[2:6])
  elif mode == "mesh":
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
