"""incres.studies: a study's runs, each its own launch.py process, shared among parallel processes."""

from __future__ import annotations

import json
import os
import sys

import pytest

from incres import studies

# Stands in for launch.py: records its flags in the workdir, fails for a workdir named "bad*".
FAKE_LAUNCH = """
import json, os, sys
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
os.makedirs(flags["workdir"])
with open(os.path.join(flags["workdir"], "argv.json"), "w") as f:
  json.dump({"flags": flags, "cwd": os.getcwd(), "python": sys.executable}, f)
sys.exit(1 if os.path.basename(flags["workdir"]).startswith("bad") else 0)
"""


@pytest.fixture
def fake_launch(tmp_path):
  path = tmp_path / "launch.py"
  path.write_text(FAKE_LAUNCH)
  return str(path)


@pytest.mark.parametrize("parallel", [1, 2, 5])
def test_every_run_gets_its_own_launch_py_process(fake_launch, tmp_path, parallel, capsys):
  runs = [(f"experiments/x.py:depth={d}", str(tmp_path / f"run{d}")) for d in (56, 32, 20)]
  studies.train_runs(fake_launch, runs, parallel, cwd=str(tmp_path))
  for spec, workdir in runs:
    with open(os.path.join(workdir, "argv.json")) as f:
      seen = json.load(f)
    assert seen["flags"] == {"config": spec, "workdir": workdir}
    assert seen["cwd"] == str(tmp_path) and seen["python"] == sys.executable
  printed = capsys.readouterr().out
  assert printed.count("+ ") == 3 and "--config=experiments/x.py:depth=56" in printed


def test_a_failed_run_is_named_after_the_others_ran(fake_launch, tmp_path):
  runs = [(f"c.py:i={i}", str(tmp_path / name)) for i, name in enumerate(["a", "bad1", "b", "c"])]
  with pytest.raises(studies.StudyError, match="bad1"):
    studies.train_runs(fake_launch, runs, parallel=2)
  # The share that failed went on with its next run; the other share was untouched.
  assert all(os.path.exists(os.path.join(w, "argv.json")) for _, w in runs)
