"""launch.py: the command line, its defaults and its errors; the progress line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from incres import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
TINY = os.path.join(ROOT, "tests", "tiny_config.py")


def run_launch(*args: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
      [sys.executable, LAUNCH, *args],
      capture_output=True,
      text=True,
      cwd=cwd,
      env=env,
      timeout=timeout,
  )


@pytest.mark.slow
def test_trains_into_the_default_workdir_with_a_compilation_cache_and_plain_log_lines(tmp_path):
  cache = tmp_path / "jax_cache"
  result = run_launch(f"--config={TINY}:steps=4", f"--jax_cache_dir={cache}", cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = tmp_path / "runs" / "tiny_config-steps=4"  # runs/<config name>-<config argument>
  with open(workdir / "config.json") as f:
    assert json.load(f)["num_train_steps"] == 4
  assert os.listdir(cache), "the persistent compilation cache stays empty"
  lines = result.stdout.splitlines()
  assert "\r" not in result.stdout  # Not a terminal: no redrawn line.
  assert any(line.startswith("step 4/4 (100.0%) | epoch") for line in lines), result.stdout
  assert "eval at step 4" in result.stdout
  assert "async_checkpointer" not in result.stderr  # Orbax's INFO chatter is filtered out.


def test_misspelled_config_key_names_the_valid_keys(tmp_path):
  result = run_launch(f"--config={TINY}", "--config.learnig_rate=0.2", cwd=str(tmp_path))
  assert result.returncode == 2
  assert "did you mean --config.learning_rate?" in result.stderr
  assert "learning_rate, log_every_steps" in result.stderr  # The list of valid keys.
  assert "Traceback" not in result.stderr


def test_bad_model_name_is_one_clear_paragraph(tmp_path):
  result = run_launch(
      f"--config={TINY}",
      "--config.model=ResNet19",
      f"--workdir={tmp_path / 'w'}",
      "--jax_cache_dir=",
      cwd=str(tmp_path),
  )
  assert result.returncode == 2  # A user error: exit 2, the message printed once.
  assert result.stderr.count("Unknown model 'ResNet19'") == 1, result.stderr
  assert "CifarResNet20" in result.stderr and "Traceback" not in result.stderr


def test_progress_redraws_only_on_a_terminal():
  piped, tty = io.StringIO(), io.StringIO()
  metrics = {"train/loss": 1.5, "train/accuracy": 0.5}
  for stream, interactive in ((piped, False), (tty, True)):
    p = progress.Progress(
        100, steps_per_epoch=10, stream=stream, interactive=interactive, min_interval_s=0
    )
    p.set_speed(1000.0, batch_size=100)
    for step in range(1, 11):
      p.update(step, metrics)
    p.log(10, metrics)
    p.close()
  assert piped.getvalue() == (
      "step  10/100 ( 10.0%) | epoch 1.00 | loss 1.5000 | acc 0.500 | 1,000 img/s | ETA 0:09\n"
  )
  assert tty.getvalue().count("\r") == 11 and tty.getvalue().endswith("ETA 0:09\n")
