"""Runs a tiny training job for tests/test_distributed.py (in a subprocess).

python tests/distributed_helper.py mesh OUT.json WORKDIR
    8 forced host devices: trains once on all 8 and once on 1, writes both loss trajectories.
python tests/distributed_helper.py late OUT.json PORT PROCESS_ID DELAY FIRST
    One of two processes joined by `runtime.initialize_distributed`: process 1 waits DELAY seconds,
    then both run the collectives incres uses, FIRST ("sum" or "allgather") first: a sum over
    every device of incres' mesh (the train step's group) and `process_allgather` (train.py's,
    one group per local device index); writes their results.
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


def late(out: str, port: str, process_id: str, delay: str, first: str) -> None:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from incres import runtime  # pylint: disable=g-import-not-at-top
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  runtime.initialize_distributed("auto", f"localhost:{port}", 2, int(process_id))
  if jax.process_index() == 1:
    time.sleep(float(delay))

  def mesh_sum():
    sharding = jax.sharding.NamedSharding(
        state_lib.create_mesh(), jax.sharding.PartitionSpec("data")
    )
    mine = np.full((jax.local_device_count(),), jax.process_index() + 1, np.float32)
    return float(jax.jit(jax.numpy.sum)(jax.make_array_from_process_local_data(sharding, mine)))

  def allgather():
    return multihost_utils.process_allgather(np.int32(jax.process_index())).tolist()

  runs = {"sum": mesh_sum, "allgather": allgather}
  result = {name: runs[name]() for name in [first] + [n for n in runs if n != first]}
  result["devices"] = jax.device_count()
  with open(out, "w") as f:
    json.dump(result, f)


def main(argv: list[str]) -> None:
  mode = argv[1]
  if mode == "late":
    late(*argv[2:7])
    return
  out, workdir = argv[2:4]
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
