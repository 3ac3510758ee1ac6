"""Checkpoints: retention, and real processes stopped by SIGTERM/SIGINT or killed with `kill -9`.

The subprocess tests run `launch.py` on `tests/tiny_config.py` and compare the final parameters
with an uninterrupted run's, bit for bit (same program on the same CPU: no tolerance needed).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incres import checkpoint, checkpoint_quiet, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
CONFIG = os.path.join(ROOT, "tests", "tiny_config.py") + ":steps=60,every=3"
TIMEOUT = 240


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def launch(workdir: str, jax_cache: str, config: str = CONFIG) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen(
      [
          sys.executable,
          LAUNCH,
          f"--config={config}",
          f"--workdir={workdir}",
          f"--jax_cache_dir={jax_cache}",
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
      cwd=ROOT,
  )


def run_to_end(workdir: str, jax_cache: str) -> tuple[str, str]:
  p = launch(workdir, jax_cache)
  out, err = p.communicate(timeout=TIMEOUT)
  assert p.returncode == 0, err[-3000:]
  return out, err


def wait_for(predicate, what: str, timeout: float = TIMEOUT, poll: float = 0.005):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(poll)
  raise AssertionError(f"Timed out waiting for {what}.")


def complete_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def saving_now(workdir: str) -> bool:
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any("tmp" in n for n in os.listdir(directory))


def final_params(workdir: str):
  return jax.device_get(checkpoint.load_variables(workdir)[2])


def assert_same_bits(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache):
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  out, _ = run_to_end(workdir, jax_cache)
  assert "\r" not in out  # stdout is a pipe: no redrawn progress line.
  return final_params(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_and_exits_zero(reference, jax_cache, tmp_path, sig):
  workdir = str(tmp_path / "run")
  p = launch(workdir, jax_cache)
  wait_for(lambda: any("train/loss" in r for r in metrics.read_metrics(workdir)), "training")
  p.send_signal(sig)
  out, err = p.communicate(timeout=TIMEOUT)
  assert p.returncode == 0, err[-3000:]
  stopped = r"Preempted \(SIGTERM\)" if sig == signal.SIGTERM else "Stopped by Ctrl-C"
  match = re.search(stopped + r" after step (\d+)/\d+; .* To resume, run:\n  (.*)\n", out)
  assert match, out[-2000:]
  step = int(match.group(1))
  assert 0 < step < 60 and complete_steps(workdir)[-1] == step
  assert f"--workdir={workdir}" in match.group(2)
  if sig == signal.SIGTERM:  # Resuming gives the uninterrupted run's parameters.
    _, err = run_to_end(workdir, jax_cache)
    assert f"at step {step}." in err  # "Resumed from ... at step N."
    assert_same_bits(final_params(workdir), reference)


# SIGKILL at any moment (mid-save included): tests/test_reliability.py's
# test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing, which also checks that the
# newest complete checkpoint restores after each kill and that no temporary directory is left.


def test_checkpointer_keeps_the_last_k_and_the_best(tmp_path):
  config = ml_collections.ConfigDict({"model": "x", "num_classes": 3})
  state = {"w": jnp.arange(3.0)}
  ckpt = checkpoint.Checkpointer(
      str(tmp_path), config, save_every_steps=1, keep=2, best_metric="eval/top1", async_save=False
  )
  top1 = {1: 0.5, 2: 0.9, 3: 0.6, 4: None, 5: 0.7, 6: None}
  with ckpt:
    for step, value in top1.items():
      best = None if value is None else {"eval/top1": value}
      ckpt.save(step, {"w": state["w"] + step}, metrics=best)
  assert complete_steps(str(tmp_path)) == [2, 5, 6]  # Best (2) and the last two.
  restored, meta = checkpoint.Checkpointer(
      str(tmp_path), config, save_every_steps=1, keep=2
  ).restore(jax.eval_shape(lambda: state), step=2)
  np.testing.assert_array_equal(restored["w"], [2.0, 3.0, 4.0])
  assert meta["data"] == {"next_step": 2} and meta["config"]["model"] == "x"


def test_a_damaged_steps_warning_gives_the_underlying_errors_text(tmp_path, caplog):
  # Orbax wraps TensorStore's read error in an Exception whose text holds the repr of a bound
  # method (`<bound method pybind11_detail_...spec of TensorStore({...})>`) instead of the reason.
  config = ml_collections.ConfigDict({"model": "x", "num_classes": 3})
  state = {"w": jnp.arange(4096.0)}
  ckpt = checkpoint.Checkpointer(
      str(tmp_path), config, save_every_steps=1, keep=3, async_save=False
  )
  with ckpt:
    ckpt.save(1, state)
    ckpt.save(2, {"w": state["w"] + 1})
  step_dir = os.path.join(ckpt.directory, "2", "state", "ocdbt.process_0", "d")
  data_file = max((os.path.join(step_dir, f) for f in os.listdir(step_dir)), key=os.path.getsize)
  os.truncate(data_file, os.path.getsize(data_file) // 2)
  caplog.set_level("WARNING")
  reader = checkpoint.Checkpointer(str(tmp_path), config, save_every_steps=1, keep=3)
  with reader:
    reader.lock_workdir()
    restored, meta = reader.restore(jax.eval_shape(lambda: state))
  assert meta["data"] == {"next_step": 1}
  np.testing.assert_array_equal(restored["w"], state["w"])
  [warning] = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert "<bound method" not in warning and "TensorStore(" not in warning, warning
  # TensorStore's own text: the damaged item and the checkpoint's files.
  assert re.search(r"restoring its arrays failed: ValueError: \w+: Error reading", warning), warning
  assert os.path.join(ckpt.directory, "2", "state") in warning, warning


def _tiny_state(**overrides):
  """`(config, model, tx, state)`: a fresh state of the tiny config (EMA decay 0.5), no training."""
  from incres import configs  # pylint: disable=g-import-not-at-top
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  config = configs.load(os.path.join(ROOT, "tests", "tiny_config.py"))
  config.update(dict(num_classes=10, ema_decay=0.5, **overrides))
  model = state_lib.create_model(config)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  return config, model, tx, state_lib.create_train_state(config, model, tx, state_lib.create_mesh())


@pytest.mark.parametrize("ema_batch_stats", [False, True])
def test_load_variables_reads_the_model_variables_without_building_an_optimizer(
    tmp_path, monkeypatch, ema_batch_stats
):
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  config, model, _, state = _tiny_state(ema_batch_stats=ema_batch_stats)
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))  # Tell apart.
  if ema_batch_stats:
    state = state.replace(ema_batch_stats=jax.tree.map(lambda s: s + 2.0, state.batch_stats))
  else:
    assert state.ema_batch_stats is None
  with checkpoint.Checkpointer(
      str(tmp_path), config, save_every_steps=1, keep=1, async_save=False
  ) as ckpt:
    ckpt.save(1, state)

  def no_optimizer(*args, **kwargs):
    raise AssertionError("loading variables for inference built an optimizer")

  monkeypatch.setattr(state_lib, "create_optimizer", no_optimizer)
  monkeypatch.setattr(state_lib, "abstract_train_state", no_optimizer)
  _, loaded_model, raw = checkpoint.load_variables(str(tmp_path))
  _, _, ema = checkpoint.load_variables(str(tmp_path), averaged="ema")
  assert loaded_model == model
  assert set(raw) == set(ema) == {"params", "batch_stats"}
  assert_same_bits(raw, {"params": state.params, "batch_stats": state.batch_stats})
  # The EMA's own statistics when the run averaged them, else the run's.
  ema_stats = state.ema_batch_stats if ema_batch_stats else state.batch_stats
  assert_same_bits(ema, {"params": state.ema_params, "batch_stats": ema_stats})
  with pytest.raises(ValueError, match="kept no polyak average"):
    checkpoint.load_variables(str(tmp_path), averaged="polyak")


def test_checkpoints_without_averaged_statistics_keep_the_layout_from_before_them(tmp_path):
  """A run without `ema_batch_stats` writes and resumes checkpoints laid out as before the field
  existed (orbax refuses a target with a key its checkpoint lacks); with the switch, such a
  checkpoint is refused, naming what is missing."""
  from incres import state as state_lib  # pylint: disable=g-import-not-at-top

  config, model, tx, state = _tiny_state()
  mesh = state_lib.create_mesh()
  abstract = state_lib.abstract_train_state(config, model, tx, mesh)

  def before(s):  # The TrainState's fields before ema_batch_stats, as orbax wrote them.
    return {
        f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "ema_batch_stats"
    }

  old, new = str(tmp_path / "old"), str(tmp_path / "new")
  for workdir, tree in ((old, before(state)), (new, state)):
    with checkpoint.Checkpointer(
        workdir, config, save_every_steps=1, keep=1, async_save=False
    ) as c:
      c.save(1, tree)
  with checkpoint.Checkpointer(old, config, save_every_steps=1, keep=1) as c:
    restored, _ = c.restore(abstract)  # An old checkpoint resumes.
  assert isinstance(restored, state_lib.TrainState) and restored.ema_batch_stats is None
  assert_same_bits(restored, state)
  with checkpoint.Checkpointer(new, config, save_every_steps=1, keep=1) as c:
    assert_same_bits(c.restore(before(abstract), step=1)[0], before(state))  # Nothing added.
  on = config.copy_and_resolve_references()
  on.ema_batch_stats = True
  with checkpoint.Checkpointer(old, on, save_every_steps=1, keep=1) as c:
    with pytest.raises(checkpoint.IncompatibleCheckpointError) as e:
      c.check_compatible(state_lib.abstract_train_state(on, model, tx, mesh))
  assert "ema_batch_stats.stage1_block0.bn1.mean is not in the checkpoint" in str(e.value)


def test_importing_changes_nothing_process_wide():
  # Orbax's reading noise is filtered only while a checkpoint is being read: importing the module
  # (as every later stage and a notebook do) leaves the hook and absl's logger as they were.
  program = (
      "import sys\n"
      "from absl import logging\n"
      "hook, filters = sys.unraisablehook, list(logging.get_absl_logger().filters)\n"
      "import incres.checkpoint\n"
      "assert sys.unraisablehook is hook, sys.unraisablehook\n"
      "assert logging.get_absl_logger().filters == filters, logging.get_absl_logger().filters\n"
  )
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=ROOT
  )
  assert result.returncode == 0, result.stderr[-3000:]


def test_a_checkpointer_quiets_orbax_only_until_it_is_closed(tmp_path, monkeypatch):
  from absl import logging  # pylint: disable=g-import-not-at-top

  # A fresh installation: a damaged-restore test earlier in this process may have pinned the hook.
  monkeypatch.setattr(checkpoint_quiet, "_INSTALLATION", checkpoint_quiet._Installation())
  hook, filters = sys.unraisablehook, list(logging.get_absl_logger().filters)
  config = ml_collections.ConfigDict({"model": "x", "num_classes": 3})
  state = {"w": jnp.arange(3.0)}
  with checkpoint.Checkpointer(
      str(tmp_path), config, save_every_steps=1, keep=1, async_save=False
  ) as ckpt:
    ckpt.save(1, state)
  assert sys.unraisablehook is hook and logging.get_absl_logger().filters == filters
  resumed = checkpoint.Checkpointer(str(tmp_path), config, save_every_steps=1, keep=1)
  with resumed:
    resumed.restore(jax.eval_shape(lambda: state))
    # Held after the restore: its abandoned reads (if any) may report later.
    assert sys.unraisablehook is not hook and len(logging.get_absl_logger().filters) > len(filters)
  assert sys.unraisablehook is hook and logging.get_absl_logger().filters == filters
  checkpoint.load_config(str(tmp_path))  # A reader alone restores them too.
  assert sys.unraisablehook is hook and logging.get_absl_logger().filters == filters


def test_after_abandoned_reads_the_hook_outlives_the_checkpointer(monkeypatch):
  from absl import logging  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(checkpoint_quiet, "_INSTALLATION", checkpoint_quiet._Installation())
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # Restored after the test.
  hook, filters = sys.unraisablehook, list(logging.get_absl_logger().filters)
  with checkpoint_quiet.quieted():
    checkpoint_quiet.keep_hook_until_exit()  # What a restore that failed on an array file does.
  assert logging.get_absl_logger().filters == filters  # The filter goes ...
  pinned = sys.unraisablehook
  assert pinned is not hook  # ... the hook stays: late reports of the abandoned reads.
  with checkpoint_quiet.quieted():  # Used again: the same hook, not a second one on top.
    assert sys.unraisablehook is pinned
  assert sys.unraisablehook is pinned and logging.get_absl_logger().filters == filters
