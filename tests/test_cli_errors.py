"""Every command line reports a user error as its message and exit status 2, without a traceback.

One real subprocess per command line, each given the cheapest mistake a user makes with it (a path
that does not exist, a model that does not exist). `incres.errors.run` itself is tested in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from incres import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, arguments after `python`, key words of the message); "{tmp}" is a fresh empty directory.
CASES = [
    (
        "launch_init_from",
        [
            "launch.py",
            "--config=tests/tiny_config.py",
            "--config.init_from={tmp}/no_such_run",
            "--workdir={tmp}/run",
            "--jax_cache_dir=",
        ],
        ["config.init_from=", "no_such_run", "neither a workdir"],
    ),
    (
        "launch_config_argument",
        ["launch.py", "--config=experiments/googlenet.py:foo=1", "--workdir={tmp}/run"],
        ["Unknown config argument 'foo'", "known arguments", "bn"],
    ),
    ("evaluate", ["-m", "incres.evaluate", "--workdir={tmp}/nowhere"], ["No checkpoints in"]),
    (
        "predict",
        ["-m", "incres.predict", "--checkpoint={tmp}/nowhere", "{tmp}/cat.png"],
        ["--checkpoint=", "does not exist"],
    ),
    (
        "convert_torch",
        [
            "-m",
            "incres.convert_torch",
            "--model=resnet18",
            "--weights={tmp}/missing.pth",
            "--out={tmp}/out",
        ],
        ["missing.pth", "no such file"],
    ),
    (
        "export",
        ["-m", "incres.export", "--checkpoint={tmp}/nowhere", "--out={tmp}/exported"],
        ["--checkpoint=", "neither a workdir"],
    ),
    (
        "analysis",
        ["-m", "incres.analysis", "curves", "--workdir={tmp}/nowhere", "--out={tmp}/fig6.png"],
        ["No metrics in", "nowhere"],
    ),
    ("report", ["-m", "incres.report", "--workdir={tmp}/nowhere"], ["No checkpoints in"]),
    ("summary", ["-m", "incres.summary", "ResNet19"], ["Unknown model 'ResNet19'", "ResNet18"]),
    (
        "data_check",
        ["-m", "incres.data", "check", "folder:{tmp}/nowhere"],
        ["does not exist", "nowhere"],
    ),
    (
        "degradation",
        ["experiments/degradation.py", "--skip_training", "--outdir={tmp}/degradation"],
        ["No metrics in", "plain20"],
    ),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_exits_2_with_the_message(tmp_path, args, words):
  env = dict(os.environ, PYTHONPATH=ROOT)
  argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
  result = subprocess.run(
      [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 2, result.stderr[-3000:]
  for word in words:
    assert word in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == [], "A failed command wrote files."


def _exit_status(main, capsys, **kwargs) -> tuple[int, str]:
  with pytest.raises(SystemExit) as exit_info:
    errors.run(main, **kwargs)
  return exit_info.value.code, capsys.readouterr().err


def test_run_exits_2_on_user_error_and_keeps_other_tracebacks(capsys):
  def user_error():
    raise errors.ConfigError("Unknown thing; use another.")

  assert _exit_status(user_error, capsys) == (2, "\nerror: Unknown thing; use another.\n")
  assert _exit_status(lambda: 3, capsys)[0] == 3
  assert _exit_status(lambda: ["rows"], capsys)[0] == 0  # Mains that return results exit 0.

  def bug():
    raise KeyError("a bug")

  with pytest.raises(KeyError):  # Not a user error: it propagates (Python prints it, exit 1).
    errors.run(bug)
  assert _exit_status(bug, capsys, also=(KeyError,))[0] == 2


def test_user_errors_keep_the_bases_callers_catch():
  from incres import checkpoint, convert_torch, data, export, fileio, finetune, predict, train

  for cls, base in [
      (checkpoint.IncompatibleCheckpointError, ValueError),
      (checkpoint.DamagedCheckpointError, ValueError),
      (convert_torch.ConversionError, ValueError),
      (convert_torch.OutputExistsError, ValueError),
      (data.DatasetError, Exception),
      (export.ExportError, ValueError),
      (fileio.WorkdirInUseError, RuntimeError),
      (finetune.BackboneMismatchError, ValueError),
      (predict.NotARunError, FileNotFoundError),
      (train.NonFiniteLossError, FloatingPointError),
      (errors.ConfigError, ValueError),
      (errors.MissingFileError, FileNotFoundError),
  ]:
    assert issubclass(cls, errors.UserError) and issubclass(cls, base), cls
