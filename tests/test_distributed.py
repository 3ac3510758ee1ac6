"""The same training on 1 device, 8 devices and 2 processes (all on CPU).

Tolerances: the runs differ only in how sums over the batch are split (per-device partial sums
combined by an all-reduce, or gloo between processes), i.e. float32 rounding, ~1e-7 relative per
step. Batch norm over a 16-example batch amplifies such differences, so the first step is compared
tightly and later steps loosely; a per-device (non-global) batch norm would already be off by far
more on the first step.
"""

from __future__ import annotations

import json
import os
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


def test_two_processes_end_with_the_parameters_of_one(tmp_path):
  cache = str(tmp_path / "cache")
  port = _free_port()
  common = [sys.executable, LAUNCH, f"--config={TINY}", f"--jax_cache_dir={cache}"]
  two = [
      subprocess.Popen(
          common
          + [
              f"--workdir={tmp_path / 'two'}",
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2",
              f"--process_id={i}",
          ],
          env=_env(),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  one = subprocess.run(
      common + [f"--workdir={tmp_path / 'one'}"],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=400,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  for p in two:
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in err
  # Process 0 alone writes logs; both wrote their halves of the checkpoint.
  a = jax.device_get(checkpoint.load_variables(str(tmp_path / "two"))[2])
  b = jax.device_get(checkpoint.load_variables(str(tmp_path / "one"))[2])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
