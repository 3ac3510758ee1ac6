"""Behaviour is unchanged: the tiny run reproduces its recorded metrics and final parameters.

`tests/data/golden_tiny_jax<version>.json` holds, for one jax version (one supported stack), the
metrics.jsonl rows (timing fields dropped), the resolved config, the environment it was recorded in
and a SHA-256 of the final variables of `tests/tiny_config.py:steps=6,every=3` (6 steps, checkpoints
at 3 and 6, one evaluation); the `.npz` beside it holds the variables. The test reruns that config
and compares it with the recording of its own jax version, else the nearest one:

- the recording's environment exactly (CPU model, jax, jaxlib and XLA_FLAGS: the suite's, set in
  conftest): bitwise equality;
- the same jax and jaxlib on another CPU (XLA may pick other kernels): a relative tolerance of
  `RTOL_SAME_JAX` per metric and per variable (the norm of the difference over the norm);
- another jax version, with no recording of its own: `RTOL_ACROSS_JAX`, the drift measured between
  the supported stacks' compilers with a margin (below), which a real numerics change still exceeds.

Measured drift of this run between jax 0.10.2 (Python 3.11) and jax 0.12.1 (Python 3.12), both at
the suite's XLA_FLAGS on the same 2-core AMD EPYC: at most 3.3e-3 (the norm of a BN bias's
difference over its norm; metrics at most 1.4e-3, step 6's gradient norm 4.0378 vs 4.0320), so
`RTOL_ACROSS_JAX` is 1e-2. One-line numerics changes planted in a scratch copy, against each
stack's recording, on each stack: ResNet's BN momentum 0.9 -> 0.91 moves the run by up to 0.17
(step 6's eval/top1; 8.3e-2 on the stem BN's running mean), label smoothing 0 -> 0.01 in the loss
by up to 2.0 (step 6's train/accuracy; 0.70 on a BN bias): red in every mode, bitwise or not.

Re-record this stack's file (after a change that is meant to alter training numerics, re-record on
every supported stack and say why in the commit):

  INCRES_RECORD_GOLDEN=1 python -m pytest -q tests/test_golden.py
"""

from __future__ import annotations

import glob
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
CONFIG_ARG = "steps=6,every=3"
RTOL_SAME_JAX = 1e-5
RTOL_ACROSS_JAX = 1e-2  # 3x the drift measured between jax 0.10.2 and 0.12.1 (docstring).
# Wall-clock measurements: different on every run.
_TIMING = ("images_per_sec", "time", "seconds", "duration", "elapsed", "eta")


def _paths(jax_version: str) -> tuple[str, str]:
  """The recording of one jax version: (json, npz)."""
  stem = os.path.join(DATA, f"golden_tiny_jax{jax_version}")
  return stem + ".json", stem + ".npz"


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


def _version(v: str) -> tuple[int, ...]:
  return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())


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
  """Writes this jax version's recording from a fresh run in `workdir`."""
  resolved, rows, flat = _run(workdir)
  json_path, npz_path = _paths(jax.__version__)
  os.makedirs(DATA, exist_ok=True)
  with open(json_path, "w") as f:
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
  np.savez_compressed(npz_path, **flat)


def recordings() -> list[dict]:
  """Every stack's recording, each with its variables under "variables"."""
  found = []
  for json_path in sorted(glob.glob(os.path.join(DATA, "golden_tiny_jax*.json"))):
    with open(json_path) as f:
      golden = json.load(f)
    with np.load(json_path[: -len(".json")] + ".npz") as npz:
      golden["variables"] = {k: npz[k] for k in npz.files}
    found.append(golden)
  return found


def choose(found: list[dict], env: dict[str, str]) -> tuple[dict, str, float]:
  """The recording to compare with, the mode ("bitwise", "same jax", "across jax") and its rtol."""
  for golden in found:
    if golden["environment"] == env:
      return golden, "bitwise", 0.0
  for golden in found:
    if (golden["environment"]["jax"], golden["environment"]["jaxlib"]) == (
        env["jax"],
        env["jaxlib"],
    ):
      return golden, "same jax", RTOL_SAME_JAX
  nearest = min(
      found,
      key=lambda g: (
          abs(_version(g["environment"]["jax"])[1] - _version(env["jax"])[1]),
          _version(g["environment"]["jax"]),
      ),
  )
  return nearest, "across jax", RTOL_ACROSS_JAX


def drift(rows: list[dict], flat: dict[str, np.ndarray], golden: dict) -> dict[str, float]:
  """Relative differences from a recording: every metric (|a - b| / |b|) and every variable
  (||a - b|| / ||b||), keyed "<step> <metric>" and "<variable path>"."""
  out = {}
  for row, want in zip(rows, golden["metrics"]):
    for key, value in want.items():
      if isinstance(value, (int, float)) and key != "step":
        out[f"{row['step']} {key}"] = abs(row[key] - value) / max(abs(value), 1e-12)
  for name, want in golden["variables"].items():
    want = want.astype(np.float64)
    diff = np.linalg.norm(flat[name].astype(np.float64) - want)
    out[name] = float(diff / max(np.linalg.norm(want), 1e-12))
  return out


def test_tiny_run_reproduces_the_recording(tmp_path):
  if os.environ.get("INCRES_RECORD_GOLDEN") == "1":
    record(str(tmp_path / "run"))
    pytest.skip(f"Recorded {_paths(jax.__version__)}.")
  found = recordings()
  assert found, f"no recording in {DATA}"
  resolved, rows, flat = _run(str(tmp_path / "run"))
  golden, mode, rtol = choose(found, _environment())
  print(
      f"golden comparison: {mode} (rtol {rtol}) against {golden['environment']}; here: {_environment()}"
  )

  # The same run: a changed tiny config or config resolution is not a numerics change. Keys added
  # since the recording are allowed (a new setting whose default keeps the old behaviour).
  assert {k: resolved.get(k, "<missing>") for k in golden["config"]} == golden["config"]
  if set(resolved) - set(golden["config"]):
    print(f"config keys added since the recording: {sorted(set(resolved) - set(golden['config']))}")
  assert sorted(flat) == sorted(golden["variables"])
  assert [sorted(r) for r in rows] == [sorted(r) for r in golden["metrics"]]
  if mode == "bitwise":
    assert rows == golden["metrics"]
    for name in sorted(flat):
      np.testing.assert_array_equal(flat[name], golden["variables"][name], err_msg=name)
    assert _digest(flat) == golden["variables_sha256"]
  else:
    differences = drift(rows, flat, golden)
    worst = max(differences, key=differences.get)
    print(f"largest relative difference: {differences[worst]:.3g} ({worst})")
    over = {k: v for k, v in differences.items() if v > rtol}
    assert not over, f"differences over rtol {rtol}: {over}"


def test_each_stack_compares_with_its_own_recording_and_a_planted_change_is_red():
  found = recordings()
  assert {g["environment"]["jax"] for g in found} >= {"0.10.2", "0.12.1"}  # Both CI stacks.
  for golden in found:
    env = dict(golden["environment"])
    assert choose(found, env)[:2] == (golden, "bitwise")
    assert choose(found, {**env, "cpu": "another CPU"})[1:] == ("same jax", RTOL_SAME_JAX)
  newer = {**found[-1]["environment"], "jax": "0.99.0", "jaxlib": "0.99.0"}
  assert choose(found, newer)[1:] == ("across jax", RTOL_ACROSS_JAX)
  golden = found[0]
  rows = [dict(r) for r in golden["metrics"]]
  flat = {k: v.copy() for k, v in golden["variables"].items()}
  assert max(drift(rows, flat, golden).values()) == 0.0
  # A change far smaller than the planted ones of the docstring is still over the tolerance.
  name = sorted(flat)[0]
  flat[name] = flat[name] * (1 + 3 * RTOL_ACROSS_JAX)
  rows[-1]["eval/loss"] *= 1 + 3 * RTOL_ACROSS_JAX
  over = {k for k, v in drift(rows, flat, golden).items() if v > RTOL_ACROSS_JAX}
  assert over == {name, f"{rows[-1]['step']} eval/loss"}
