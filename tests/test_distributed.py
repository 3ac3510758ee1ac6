"""The same training on 1 device, 8 devices and 2 processes (all on CPU).

Tolerances: the runs differ only in how sums over the batch are split (per-device partial sums
combined by an all-reduce, or gloo between processes), i.e. float32 rounding, ~1e-7 relative per
step. Batch norm over a 16-example batch amplifies such differences, so the first step is compared
tightly and later steps loosely; a per-device (non-global) batch norm would already be off by far
more on the first step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import conftest
from incres import checkpoint

# Subprocess and multi-run tests: out of the quick `-m "not slow"` subset (CI runs them all).
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "distributed_helper.py")
LAUNCH = os.path.join(ROOT, "launch.py")
TINY = os.path.join(ROOT, "tests", "tiny_config.py") + ":steps=4,every=1"


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(extra)
  # The suite's compile flags (conftest), then the test's own; not the parent's device count.
  env["XLA_FLAGS"] = f"{conftest.TEST_XLA_FLAGS} {extra.get('XLA_FLAGS', '')}".strip()
  return env


def test_8_devices_follow_the_1_device_loss_trajectory(tmp_path):
  out = tmp_path / "losses.json"
  result = subprocess.run(
      [sys.executable, HELPER, "mesh", str(out), str(tmp_path)],
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
      capture_output=True,
      text=True,
      timeout=400,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    r = json.load(f)
  eight, one = np.array(r["8"]), np.array(r["1"])
  assert len(eight) == len(one) == 5
  np.testing.assert_allclose(eight[0], one[0], rtol=1e-6)  # Same init, data and global BN.
  np.testing.assert_allclose(eight, one, rtol=1e-3)
  for a, b in zip(r["params8"], r["params1"], strict=True):
    np.testing.assert_allclose(np.array(a), np.array(b), atol=2e-3)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _why(err: str) -> str:
  """A failed process's first error lines, then its last lines (which alone can be just
  faulthandler's list of extension modules after an abort)."""
  errors = [line for line in err.splitlines() if re.search(r"Error|^[EF]\d{4} ", line)]
  return "\n".join(errors[:30])[:4000] + "\n...\n" + err[-1500:]


@contextlib.contextmanager
def _processes(commands: list[list[str]], **env):
  """Starts one process per command; on the way out, kills any still running (never leaves one)."""
  procs = [
      subprocess.Popen(
          c, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
      for c in commands
  ]
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.communicate()


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  """Waits for every process, then checks that all exited 0 (naming each that did not, since the
  cause is often in another process than the one that aborted); returns their stderr."""
  errs = [p.communicate(timeout=400)[1] for p in procs]
  failed = [
      f"process {i} exited {p.returncode}:\n{_why(err)}"
      for i, (p, err) in enumerate(zip(procs, errs))
      if p.returncode != 0
  ]
  assert not failed, "\n\n".join(failed)
  return errs


def test_two_processes_end_with_the_parameters_of_one(tmp_path):
  cache = str(tmp_path / "cache")
  port = _free_port()
  common = [sys.executable, LAUNCH, f"--config={TINY}", f"--jax_cache_dir={cache}"]
  two = [
      common
      + [
          f"--workdir={tmp_path / 'two'}",
          f"--coordinator_address=localhost:{port}",
          "--num_processes=2",
          f"--process_id={i}",
      ]
      for i in range(2)
  ]
  with _processes(two) as procs:
    one = subprocess.run(
        common + [f"--workdir={tmp_path / 'one'}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert one.returncode == 0, _why(one.stderr)
    _, err = _finish(procs)
  assert "process 1 of 2" in err
  # Process 0 alone writes logs; both wrote their halves of the checkpoint.
  a = jax.device_get(checkpoint.load_variables(str(tmp_path / "two"))[2])
  b = jax.device_get(checkpoint.load_variables(str(tmp_path / "one"))[2])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_a_process_that_reaches_the_first_collective_late_still_joins(tmp_path):
  """jaxlib (0.10.2) gives processes a fixed 30 s to reach a gloo group's first collective together
  (see `runtime.connect_cpu_collectives`). Without that warm-up in `initialize_distributed`, a
  process 40 s late failed the run and the other aborted. Two pairs of processes with 2 devices
  each: one pair's late collective is the train step's sum over the mesh, the other's train.py's
  `process_allgather` (different gloo groups once processes have several devices)."""
  commands, outputs = [], []
  for first in ("sum", "allgather"):
    port = _free_port()
    for i in range(2):
      outputs.append(tmp_path / f"{first}{i}.json")
      commands.append(
          [sys.executable, HELPER, "late", str(outputs[-1]), str(port), str(i), "40", first]
      )
  with _processes(commands, XLA_FLAGS="--xla_force_host_platform_device_count=2") as procs:
    _finish(procs)
  for path in outputs:
    with open(path) as f:
      r = json.load(f)
    assert r["devices"] == 4
    assert r["sum"] == 6.0  # 1 from each of process 0's devices, 2 from each of process 1's.
    assert r["allgather"] == [0, 1]
