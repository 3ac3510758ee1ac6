"""Behaviour is unchanged: the tiny run reproduces its recorded metrics and final parameters.

`tests/data/golden_tiny.json` holds the metrics.jsonl rows (timing fields dropped), the resolved
config and a SHA-256 of the final variables of `tests/tiny_config.py:steps=6,every=3` (6 steps,
checkpoints at 3 and 6, one evaluation); `tests/data/golden_tiny.npz` holds the variables. The
test reruns that config: on the recording's CPU model, jax, jaxlib and XLA_FLAGS (the suite's,
set in conftest) it asserts bitwise equality; elsewhere XLA may pick other kernels, so it asserts
a relative tolerance of 1e-5 and says so in its output.

Re-record (after a change that is meant to alter training numerics, and say why in the commit):

  INCRES_RECORD_GOLDEN=1 python -m pytest -q tests/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
import jaxlib
import numpy as np
import pytest

from incres import checkpoint, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GOLDEN_JSON = os.path.join(DATA, "golden_tiny.json")
GOLDEN_NPZ = os.path.join(DATA, "golden_tiny.npz")
CONFIG_ARG = "steps=6,every=3"
RTOL = 1e-5
# Wall-clock measurements: different on every run.
_TIMING = ("images_per_sec", "time", "seconds", "duration", "elapsed", "eta")


def _cpu_model() -> str:
  """The first "model name" of /proc/cpuinfo (empty where there is none)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


def _environment() -> dict[str, str]:
  # XLA_FLAGS: the suite compiles at LLVM -O0 (conftest), which rounds differently from -O3.
  return {
      "cpu": _cpu_model(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _is_timing(key: str) -> bool:
  return any(t in key.split("/")[-1] for t in _TIMING)


def _run(workdir: str) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
  """Trains the tiny config in `workdir`: (config, metrics rows without timings, variables)."""
  config = tiny_config.get_config(CONFIG_ARG)
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [{k: v for k, v in row.items() if not _is_timing(k)} for row in rows]
  with open(os.path.join(workdir, "config.json")) as f:
    resolved = json.load(f)
  variables = jax.device_get(checkpoint.load_variables(workdir)[2])
  flat = {
      jax.tree_util.keystr(path): np.asarray(x)
      for path, x in jax.tree_util.tree_flatten_with_path(variables)[0]
  }
  return resolved, rows, flat


def _digest(flat: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for name in sorted(flat):
    h.update(name.encode())
    h.update(str(flat[name].dtype).encode())
    h.update(str(flat[name].shape).encode())
    h.update(np.ascontiguousarray(flat[name]).tobytes())
  return h.hexdigest()


def record(workdir: str) -> None:
  """Writes tests/data/golden_tiny.{json,npz} from a fresh run in `workdir`."""
  resolved, rows, flat = _run(workdir)
  os.makedirs(DATA, exist_ok=True)
  with open(GOLDEN_JSON, "w") as f:
    json.dump(
        {
            "environment": _environment(),
            "config_arg": CONFIG_ARG,
            "config": resolved,
            "metrics": rows,
            "variables_sha256": _digest(flat),
        },
        f,
        indent=1,
        sort_keys=True,
    )
    f.write("\n")
  np.savez_compressed(GOLDEN_NPZ, **flat)


def test_tiny_run_reproduces_the_recording(tmp_path):
  if os.environ.get("INCRES_RECORD_GOLDEN") == "1":
    record(str(tmp_path / "run"))
    pytest.skip(f"Recorded {GOLDEN_JSON} and {GOLDEN_NPZ}.")
  with open(GOLDEN_JSON) as f:
    golden = json.load(f)
  with np.load(GOLDEN_NPZ) as npz:
    golden_flat = {k: npz[k] for k in npz.files}
  resolved, rows, flat = _run(str(tmp_path / "run"))

  # The same run: a changed tiny config or config resolution is not a numerics change. Keys added
  # since the recording are allowed (a new setting whose default keeps the old behaviour).
  assert {k: resolved.get(k, "<missing>") for k in golden["config"]} == golden["config"]
  if set(resolved) - set(golden["config"]):
    print(f"config keys added since the recording: {sorted(set(resolved) - set(golden['config']))}")
  assert sorted(flat) == sorted(golden_flat)
  bitwise = _environment() == golden["environment"]
  mode = "bitwise" if bitwise else f"rtol={RTOL} (recorded on {golden['environment']})"
  print(f"golden comparison: {mode}; here: {_environment()}")
  if bitwise:
    assert rows == golden["metrics"]
    for name in sorted(flat):
      np.testing.assert_array_equal(flat[name], golden_flat[name], err_msg=name)
    assert _digest(flat) == golden["variables_sha256"]
  else:
    assert [sorted(r) for r in rows] == [sorted(r) for r in golden["metrics"]]
    for row, want in zip(rows, golden["metrics"]):
      for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=RTOL, abs=1e-7), (row["step"], key)
    for name in sorted(flat):
      np.testing.assert_allclose(flat[name], golden_flat[name], rtol=RTOL, atol=1e-7, err_msg=name)
