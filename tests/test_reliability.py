"""Reliability: damaged checkpoints, SIGKILL at random moments, the workdir lock, atomic files.

In-process runs use `tests/tiny_config.py` (CifarResNet20 of width 4 on 16×16 digits); the
subprocess tests run `launch.py` on it. Parameters are compared bit for bit with an uninterrupted
run (same program on the same CPU: no tolerance needed).
"""

from __future__ import annotations

import gc
import glob
import json
import logging as std_logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import yaml

import tiny_config
from incres import checkpoint, data, fileio, metrics, train
from test_checkpoint import complete_steps, saving_now  # The kill tests' checkpoint probes.

# Subprocess and multi-run tests: out of the quick `-m "not slow"` subset (CI runs them all).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
TINY = os.path.join(ROOT, "tests", "tiny_config.py")
TIMEOUT = 300


def config_of(steps: int, every: int = 2, boundary: int | None = 4):
  """The tiny config (`launch.py --config=tests/tiny_config.py:steps=S,every=E`, boundary None)."""
  config = tiny_config.get_config(f"steps={steps},every={every}")
  if boundary is not None:  # Independent of `steps`, so a 4-step run is a 6-step run's prefix.
    config.lr_boundaries = (boundary,)
  return config


def params_of(workdir: str):
  return jax.device_get(checkpoint.load_variables(workdir)[2])


def assert_same_bits(a, b):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def steps_on_disk(workdir: str) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def logged_steps(workdir: str) -> list[int]:
  return [r["step"] for r in metrics.read_metrics(workdir) if "train/loss" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """6 uninterrupted steps: the parameters every resumed run must reproduce."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  train.train_and_evaluate(config_of(6), workdir)
  return params_of(workdir)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
  """The first 4 of those 6 steps, checkpoints at 2 and 4 (copied, then damaged, by tests)."""
  workdir = str(tmp_path_factory.mktemp("four") / "run")
  train.train_and_evaluate(config_of(4), workdir)
  assert steps_on_disk(workdir) == ["2", "4"]
  return workdir


def _biggest_array_file(step_dir: str) -> str:
  return max(
      glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize
  )


DAMAGE = {
    "deleted_data_file": lambda d: os.remove(_biggest_array_file(d)),
    "deleted_METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "truncated_array_file": lambda d: os.truncate(
        _biggest_array_file(d), os.path.getsize(_biggest_array_file(d)) // 2
    ),
    "deleted_meta": lambda d: shutil.rmtree(os.path.join(d, "meta")),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_the_run_resumes_exactly(
    reference, four_steps, tmp_path, kind, caplog, capsys
):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps, workdir)
  DAMAGE[kind](os.path.join(workdir, "checkpoints", "4"))
  with caplog.at_level(std_logging.WARNING):
    result = train.train_and_evaluate(config_of(6), workdir)
  assert result["step"] == 6 and not result["preempted"]
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= std_logging.WARNING]
  moved = [w for w in warnings if "Checkpoint step 4 is damaged" in w]
  assert moved and "4.damaged" in moved[0], warnings
  # The reason is the underlying error's text (TensorStore's names the file), not the repr of a
  # method that orbax's wrapper prints in its place.
  assert "<bound method" not in moved[0] and "TensorStore(" not in moved[0], moved[0]
  if kind in ("deleted_data_file", "truncated_array_file"):
    assert "restoring its arrays failed: ValueError: " in moved[0], moved[0]
    assert os.path.join(workdir, "checkpoints", "4", "state") in moved[0], moved[0]
  assert steps_on_disk(workdir) == ["2", "4", "4.damaged", "6"]  # The damaged step is kept.
  assert_same_bits(params_of(workdir), reference)
  assert logged_steps(workdir) == [2, 4, 6]  # Steps 3-4 were redone and logged once.
  assert "in total across 1 resume)" in capsys.readouterr().out
  # Nothing of the failed restore is left for the garbage collector to report later (orbax's
  # abandoned reads used to print ~100 "Exception ignored in: <coroutine ...>" tracebacks, and
  # pytest turns any unraisable exception into an error of whichever test is running then).
  gc.collect()


def test_a_second_damaged_copy_of_a_step_gets_its_own_name(four_steps, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps, workdir)
  os.makedirs(os.path.join(workdir, "checkpoints", "4.damaged"))  # From an earlier accident.
  DAMAGE["deleted_meta"](os.path.join(workdir, "checkpoints", "4"))
  assert train.train_and_evaluate(config_of(4), workdir)["step"] == 4
  assert steps_on_disk(workdir) == ["2", "4", "4.damaged", "4.damaged-1"]


def snapshot(directory: str) -> dict[str, int]:
  return {
      os.path.join(root, name): os.path.getsize(os.path.join(root, name))
      for root, _, files in os.walk(directory)
      for name in files
  }


@pytest.mark.slow  # Real launch.py processes.
def test_no_intact_checkpoint_is_one_clear_error_and_moves_nothing(four_steps, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_steps, workdir)
  DAMAGE["deleted_meta"](os.path.join(workdir, "checkpoints", "4"))
  DAMAGE["deleted_METADATA"](os.path.join(workdir, "checkpoints", "2"))
  before = snapshot(workdir)
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"No checkpoint in .* is intact"):
    train.train_and_evaluate(config_of(6), workdir)
  assert snapshot(workdir) == before
  # The lock was released: the same process can try again (and gets the same answer).
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"step 4: .*meta"):
    train.train_and_evaluate(config_of(6), workdir)

  result = run_launch(f"--config={TINY}:steps=6,every=2", f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "is intact" in result.stderr and "Traceback" not in result.stderr
  assert snapshot(workdir) == before


def test_config_yaml_is_plain_yaml_with_the_values_of_config_json(four_steps):
  with open(os.path.join(four_steps, "config.yaml")) as f:
    from_yaml = yaml.safe_load(f)
  with open(os.path.join(four_steps, "config.json")) as f:
    from_json = json.load(f)
  assert from_yaml == from_json and from_json["num_train_steps"] == 4


def test_checkpoint_meta_holds_the_training_time(four_steps):
  directory = checkpoint.checkpoint_dir(four_steps)
  reader = checkpoint._reader_manager(directory)  # pylint: disable=protected-access
  try:
    meta = reader.restore(
        4, args=checkpoint.ocp.args.Composite(meta=checkpoint.ocp.args.JsonRestore())
    ).meta
  finally:
    reader.close()
  assert meta["time"]["resumes"] == 0 and meta["time"]["train_s"] > 0


# --- metrics.jsonl -------------------------------------------------------------------------------


def test_fresh_start_keeps_the_old_metrics_file_and_starts_a_clean_one(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 2, "train/loss": 1.0}\n{"step": 4, "train/lo')  # Killed, no checkpoint.
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write_scalars(2, {"train/loss": 0.5})
  writer.close()
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [2]
  old = glob.glob(str(tmp_path / "metrics.jsonl.*.old"))
  assert len(old) == 1
  with open(old[0]) as f:
    assert f.read().startswith('{"step": 2, "train/loss": 1.0}')


def test_resume_trims_later_rows_and_a_torn_last_line(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (2, 4, 6)) + '{"step"')
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [2, 4, 6]
  writer = metrics.MetricWriter(str(tmp_path), resume_step=4)
  writer.write_scalars(6, {"x": 7})
  writer.close()
  assert path.read_text() == "".join(
      json.dumps(r) + "\n" for r in ({"step": 2, "x": 2}, {"step": 4, "x": 4}, {"step": 6, "x": 7})
  )
  assert not glob.glob(str(tmp_path / "*.old")) and not glob.glob(str(tmp_path / ".*tmp"))


# --- Atomic files --------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "sub" / "f.txt")
  fileio.atomic_write_text(path, "old\n")
  fileio.atomic_write_text(path, "new\n")
  with open(path) as f:
    assert f.read() == "new\n" and os.listdir(tmp_path / "sub") == ["f.txt"]
  assert os.stat(path).st_mode & 0o777 == 0o644


def test_a_damaged_pixel_mean_cache_is_recomputed(tmp_path, monkeypatch, caplog):
  """The cache is only used for streamed tfds datasets: one is faked with four known images."""
  images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 51, 102, 255)])
  monkeypatch.setattr(
      data.sources, "source", lambda config, split: data.sources.StreamSource(None, split)
  )
  monkeypatch.setattr(
      data.loading,
      "index_dataset",
      lambda source: tf.data.Dataset.from_tensor_slices((np.arange(4), images)),
  )
  config = tiny_config.get_config()
  config.update(dataset="some_tfds_set", data_dir=str(tmp_path), image_size=8)
  key = tuple((k, data.preprocess._hashable(config.get(k))) for k in data.preprocess._MEAN_KEYS)
  path = data.preprocess._mean_cache_path(config)
  first = data.preprocess._pixel_mean(key)
  np.testing.assert_allclose(first, 102 / 255, rtol=1e-5)
  assert np.array_equal(np.load(path), first)
  with open(path, "r+b") as f:  # A half-written file, as a killed process used to leave.
    f.truncate(os.path.getsize(path) // 2)
  data.preprocess._pixel_mean.cache_clear()
  with caplog.at_level(std_logging.WARNING):
    again = data.preprocess._pixel_mean(key)
  assert np.array_equal(again, first) and np.array_equal(np.load(path), first)
  assert any(path in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
  data.preprocess._pixel_mean.cache_clear()


# --- The workdir lock ----------------------------------------------------------------------------

_HOLD = (
    "import sys, time; sys.path.insert(0, {root!r}); from incres import fileio;"
    " fileio.WorkdirLock({workdir!r}).acquire(); print('held', flush=True); time.sleep(600)"
)


def test_lock_names_a_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", _HOLD.format(root=ROOT, workdir=workdir)],
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(fileio.WorkdirInUseError) as e:
      fileio.WorkdirLock(workdir).acquire()
    assert f"process {holder.pid} on host {socket.gethostname()}" in str(e.value)
    # The probe a run makes before reading the workdir's checkpoints says the same.
    with pytest.raises(fileio.WorkdirInUseError, match=f"process {holder.pid} on host"):
      fileio.raise_if_locked(workdir)
  finally:
    holder.kill()
    holder.communicate()
  fileio.raise_if_locked(workdir)  # A dead holder's lock: free.
  fileio.raise_if_locked(str(tmp_path / "new"))  # No workdir: free, and nothing is created.
  assert not os.path.exists(tmp_path / "new")
  lock = fileio.WorkdirLock(workdir)
  with caplog.at_level(std_logging.WARNING):
    lock.acquire()
  assert any(
      f"Taking over the lock of process {holder.pid}" in r.getMessage() for r in caplog.records
  )
  assert lock_holder(workdir)["pid"] == os.getpid()
  lock.release()
  caplog.clear()
  with caplog.at_level(std_logging.WARNING), fileio.WorkdirLock(workdir):  # Released cleanly:
    pass
  assert not caplog.records  # no stale holder to report.


def test_taking_over_a_stale_lock_warns_of_another_host_only_when_it_was_one(tmp_path, caplog):
  # A killed holder leaves its body in the lock file; no subprocess needed to make one.
  workdir = tmp_path / "run"
  workdir.mkdir()
  warnings = {}
  for case, host in [("same", socket.gethostname()), ("other", "elsewhere.example"), ("cut", "?")]:
    holder = {"host": host, "pid": 4242, "start": "2024-01-01T00:00:00+00:00"}
    (workdir / fileio.LOCK_FILE).write_text(json.dumps(holder) + "\n")
    caplog.clear()
    with caplog.at_level(std_logging.WARNING), fileio.WorkdirLock(str(workdir)):
      pass
    [warnings[case]] = [r.getMessage() for r in caplog.records if "Taking over" in r.getMessage()]
    assert f"process 4242 on host {host}" in warnings[case]
  assert "ran on another host" in warnings["other"]
  assert "ran on another host" not in warnings["same"]
  assert "ran on another host" not in warnings["cut"]  # An unknown host: nothing to say.


# --- Real processes: concurrent launches, SIGKILL at random moments -------------------------------


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def launch(*args: str) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, LAUNCH, *args],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=_env(),
      cwd=ROOT,
  )


def run_launch(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, LAUNCH, "--jax_cache_dir=", *args],
      capture_output=True,
      text=True,
      env=_env(),
      cwd=ROOT,
      timeout=TIMEOUT,
  )


def wait_for(predicate, what: str, process: subprocess.Popen | None = None, poll: float = 0.005):
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    if process is not None and process.poll() is not None:
      raise AssertionError(f"The run ended before {what}: {process.communicate()[1][-3000:]}")
    time.sleep(poll)
  raise AssertionError(f"Timed out waiting for {what}.")


def lock_holder(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, fileio.LOCK_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


@pytest.mark.slow  # Real launch.py processes.
def test_second_launch_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path / "run")
  cache = f"--jax_cache_dir={tmp_path / 'jax_cache'}"
  config = f"--config={TINY}:steps=100000,every=2"
  first = launch(config, f"--workdir={workdir}", cache)
  try:
    wait_for(lambda: complete_steps(workdir), "a checkpoint", first)
    assert lock_holder(workdir)["pid"] == first.pid
    second = run_launch(config, f"--workdir={workdir}")
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by process {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None  # The first run goes on.
  finally:
    first.kill()
    first.communicate()
  latest = complete_steps(workdir)[-1]
  third = run_launch(config, f"--workdir={workdir}", f"--config.num_train_steps={latest + 2}")
  assert third.returncode == 0, third.stderr[-3000:]
  assert f"Taking over the lock of process {first.pid}" in third.stderr
  assert f"at step {latest}." in third.stderr  # "Resumed from ... at step N."
  assert complete_steps(workdir)[-1] == latest + 2


@pytest.fixture(scope="module")
def reference_40(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference40") / "run")
  train.train_and_evaluate(config_of(40, boundary=None), workdir)
  return params_of(workdir)


@pytest.mark.slow  # Real launch.py processes.
def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(reference_40, tmp_path):
  workdir = str(tmp_path / "run")
  args = [
      f"--config={TINY}:steps=40,every=2",
      f"--workdir={workdir}",
      f"--jax_cache_dir={tmp_path / 'jax_cache'}",
  ]
  rng = random.Random(0)
  moments = {  # When to kill each run: all are SIGKILL, with no handler and no cleanup.
      "at its first logged step": lambda: metrics.read_metrics(workdir),
      "during a save": lambda: complete_steps(workdir) and saving_now(workdir),
      "at a random time after a new checkpoint": None,
  }
  killed_mid_save = 0
  for what, ready in moments.items():
    before = complete_steps(workdir)
    p = launch(*args)
    if ready is None:
      wait_for(lambda: complete_steps(workdir)[-1:] > before[-1:], what, p)
      time.sleep(rng.uniform(0.0, 0.5))
    else:
      wait_for(ready, what, p)
    killed_mid_save += saving_now(workdir)
    p.kill()
    p.communicate(timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL, f"the run finished before it was killed {what}"
    if complete_steps(workdir):  # The newest complete checkpoint restores, whatever was killed.
      _, _, variables = checkpoint.load_variables(workdir)
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables)), what
  assert killed_mid_save >= 1
  latest = complete_steps(workdir)[-1]
  p = launch(*args)
  _, err = p.communicate(timeout=TIMEOUT)
  assert p.returncode == 0, err[-3000:]
  assert f"at step {latest}." in err  # Resumed from the newest complete checkpoint.
  assert not any("tmp" in n for n in os.listdir(os.path.join(workdir, "checkpoints")))
  with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
    raw = f.read()
  assert raw.endswith("\n") and all(json.loads(line) for line in raw.splitlines())  # No torn line.
  assert logged_steps(workdir) == list(range(2, 41, 2))  # Every logged step exactly once.
  assert_same_bits(params_of(workdir), reference_40)
