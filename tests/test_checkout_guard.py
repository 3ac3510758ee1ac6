"""The suite's checkout guard (conftest) tells a live run of the user's from the tests' own writes."""

import json
import os
import subprocess
import sys

from conftest import describe_changes, foreign_changes, snapshot_checkout


def _workdir(root, name, pid):
  """A workdir whose lock names `pid` (None: an ended run's empty lock) and one file in it."""
  d = root / "runs" / name
  (d / "checkpoints").mkdir(parents=True)
  body = json.dumps({"host": "here", "pid": pid, "start": "now"}) if pid is not None else ""
  (d / "incres.lock").write_text(body)
  (d / "checkpoints" / "1").write_text("state")


def test_a_live_run_outside_the_suite_is_told_apart_from_the_suites_writes(tmp_path):
  before = snapshot_checkout(str(tmp_path))
  env = {k: v for k, v in os.environ.items() if k != "INCRES_TEST_RUN"}
  user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
  ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _workdir(tmp_path, "users_run", user.pid)  # A user's launch.py, still running.
    _workdir(tmp_path, "tests_run", ours.pid)  # A test's launch.py subprocess.
    _workdir(tmp_path, "ended_run", None)  # A run that has ended: nothing names it.
    (tmp_path / "stray.txt").write_text("x")  # Outside any workdir.
    changes = describe_changes(before, snapshot_checkout(str(tmp_path)))
    suites, others = foreign_changes(changes, str(tmp_path))
  finally:
    for p in (user, ours):
      p.kill()
      p.wait()
  assert others.splitlines() == [
      "added runs/users_run/checkpoints/1",
      "added runs/users_run/incres.lock",
  ]
  assert sorted(suites.splitlines()) == sorted(
      line for line in changes.splitlines() if "users_run" not in line
  )
  assert "added stray.txt" in suites and "added runs/tests_run/checkpoints/1" in suites
  # Once the user's process has ended, its writes can no longer be told from the suite's.
  assert foreign_changes(changes, str(tmp_path)) == (changes, "")
