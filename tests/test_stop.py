"""Stopping a run (Ctrl-C, SIGTERM, a second Ctrl-C) and what a run prints: one message, no noise.

The subprocess tests run `launch.py` on `tests/tiny_config.py`, long enough (200 steps) that the
signal arrives mid-run; a checkpoint every 5 steps keeps an asynchronous save in flight often.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from incres import checkpoint, metrics, runtime, train

# Subprocess and multi-run tests: out of the quick `-m "not slow"` subset (CI runs them all).
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
STEPS = 200
CONFIG = os.path.join(ROOT, "tests", "tiny_config.py") + f":steps={STEPS},every=5"
TIMEOUT = 240
# Stopping costs the step in flight (milliseconds here) and one save (under a second), then the
# process exits (a second or two: the shutdown of TensorFlow's and JAX's threads). The rest is
# margin for a loaded 2-core machine; before the fix a stop took up to 50 s on a user's machine.
STOP_BOUND_S = 20
NOISE = ("All log messages before absl::InitializeLog", "oneDNN custom operations")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def launch(*args: str, cwd: str = ROOT) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for key in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):  # What a user's shell has.
    env.pop(key, None)
  return subprocess.Popen(
      [sys.executable, LAUNCH, *args],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=cwd,
  )


def start_training(workdir: str, jax_cache: str, saved: bool = False) -> subprocess.Popen:
  """Starts a run; returns once it has logged a step (and, if `saved`, completed a checkpoint)."""
  p = launch(f"--config={CONFIG}", f"--workdir={workdir}", f"--jax_cache_dir={jax_cache}")
  deadline = time.monotonic() + TIMEOUT
  while not (
      any("train/loss" in r for r in metrics.read_metrics(workdir))
      and (not saved or complete_steps(workdir))
  ):
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "training did not start"
    time.sleep(0.01)
  return p


def stop(p: subprocess.Popen, *signals: signal.Signals, gap_s: float = 0.0):
  """Sends `signals` (`gap_s` apart); returns (stdout, stderr, seconds from the last to exit)."""
  for i, sig in enumerate(signals):
    if i:
      time.sleep(gap_s)
    p.send_signal(sig)
  sent = time.monotonic()
  out, err = p.communicate(timeout=TIMEOUT)
  return out, err, time.monotonic() - sent


def complete_steps(workdir: str) -> list[int]:
  """Orbax's finished checkpoints (one being written is `<step>.orbax-checkpoint-tmp-...`)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def test_ctrl_c_prints_one_message_saves_exits_zero_promptly_and_the_rerun_resumes(
    jax_cache, tmp_path
):
  workdir = str(tmp_path / "run")
  out, err, seconds = stop(start_training(workdir, jax_cache), signal.SIGINT)
  assert seconds < STOP_BOUND_S, (seconds, err[-3000:])
  match = re.search(
      rf"^Stopped by Ctrl-C after step (\d+)/{STEPS}; checkpoint saved in .*\. To resume, run:\n"
      r"  (.*)\n",
      out,
      re.MULTILINE,
  )
  assert match, out[-2000:] + err[-2000:]
  assert len(re.findall(r"^Stopped|^Preempted", out, re.MULTILINE)) == 1
  assert "preempted" not in (out + err).lower()
  step = int(match.group(1))
  # Said at once, before the save (seconds for a large model), and once: what is happening.
  saying = re.findall(
      r"^Stopping \(Ctrl-C\): saving step (\d+) before exiting.*Ctrl-C again", out, re.M
  )
  assert saying == [str(step)], out[-2000:]
  assert out.index("Stopping (Ctrl-C)") < match.start(), out[-2000:]
  assert 0 < step < STEPS and complete_steps(workdir)[-1] == step
  assert f"--workdir={workdir}" in match.group(2)

  # The rerun is a normal short run (5 more steps): it resumes and prints no start-up noise.
  p = launch(
      f"--config={CONFIG}",
      f"--config.num_train_steps={step + 5}",
      f"--workdir={workdir}",
      f"--jax_cache_dir={jax_cache}",
  )
  out, err, seconds = stop(p)
  assert p.returncode == 0, err[-3000:]
  assert f"at step {step}." in err  # "Resumed from ... at step N."
  assert f"Finished {step + 5} steps" in out
  for noise in NOISE:
    assert noise not in err, err[:3000]


def test_sigterm_says_preempted(jax_cache, tmp_path):
  workdir = str(tmp_path / "run")
  p = start_training(workdir, jax_cache)
  out, err, seconds = stop(p, signal.SIGTERM)
  assert p.returncode == 0, err[-3000:]
  assert seconds < STOP_BOUND_S, (seconds, err[-3000:])
  assert re.search(r"^Preempted \(SIGTERM\) after step \d+/", out, re.MULTILINE), out[-2000:]
  assert len(re.findall(r"^Stopping \(SIGTERM\): saving step \d+ ", out, re.M)) == 1, out[-2000:]
  assert len(re.findall(r"^Stopped|^Preempted", out, re.MULTILINE)) == 1 and "Ctrl-C" not in out


def test_a_second_ctrl_c_exits_at_once_keeping_the_newest_complete_checkpoint(jax_cache, tmp_path):
  workdir = str(tmp_path / "run")
  p = start_training(workdir, jax_cache, saved=True)
  # The second signal lands while the first one's save (or the step before it) is in flight.
  out, err, seconds = stop(p, signal.SIGINT, signal.SIGINT, gap_s=0.05)
  assert p.returncode == -signal.SIGINT, err[-3000:]  # Ended by the default action: at once.
  assert seconds < 10, seconds
  assert "Traceback" not in err
  steps = complete_steps(workdir)
  assert steps and steps[-1] < STEPS
  reader = checkpoint.Checkpointer(workdir, None, save_every_steps=1, keep=1)
  assert reader.latest_step() == steps[-1]
  _, _, variables = checkpoint.load_variables(workdir)  # The newest complete one restores.
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_missing_imagenet_is_one_message_exit_2_no_traceback(tmp_path):
  p = launch(
      f"--config={os.path.join(ROOT, 'experiments', 'googlenet.py')}",
      f"--config.data_dir={tmp_path / 'tfds'}",  # Empty: ImageNet is not there.
      f"--workdir={tmp_path / 'run'}",
      "--jax_cache_dir=",
      cwd=str(tmp_path),
  )
  out, err, _ = stop(p)
  assert p.returncode == 2, err[-3000:]
  assert err.count("needs a manual download") == 1, err
  assert "Traceback" not in err and "Variant folder" not in err
  for noise in NOISE:
    assert noise not in err, err
  assert not os.path.exists(tmp_path / "run")  # A user error changes nothing.


def test_stop_request_handler():
  # The process's own handlers, whatever the test runner left (an xdist worker may ignore SIGINT).
  outer = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  try:
    _check_stop_request_handler()
  finally:
    signal.signal(signal.SIGINT, outer[0])
    signal.signal(signal.SIGTERM, outer[1])


def _check_stop_request_handler():
  with train._StopRequest() as request:
    assert request.reason is None and not request.preempted
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # Python runs the handler at the next bytecode boundary.
    assert request.reason == "SIGTERM" and request.preempted
    # After the first signal a Ctrl-C is the operating system's again: it ends the process.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    request._handle(signal.SIGINT, None)
    assert request.reason == "SIGTERM"  # SIGTERM, the stronger reason, is kept.
    with pytest.raises(train._EvaluationAbandoned):
      list(request.batches(iter([1, 2])))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Restored.
  ctrl_c = train._StopRequest()
  ctrl_c._handle(signal.SIGINT, None)
  signal.signal(signal.SIGINT, signal.default_int_handler)  # What _handle changed, put back.
  assert ctrl_c.reason == "Ctrl-C" and not ctrl_c.preempted


def test_missing_variant_folder_warning_is_dropped_only_when_the_folder_is_missing(tmp_path):
  keep = runtime._DropMissingVariantFolders()

  def record(folder):
    msg = "Variant folder %s has no %s"
    return logging.LogRecord("absl", logging.WARNING, "f.py", 1, msg, (folder, "x.json"), None)

  assert not keep.filter(record(tmp_path / "imagenet2012" / "5.1.0"))
  assert keep.filter(record(tmp_path))  # Exists but has no dataset_info.json: news.
  other = logging.LogRecord("absl", logging.WARNING, "f.py", 1, "other %s", ("x",), None)
  assert keep.filter(other)
