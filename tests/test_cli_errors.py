"""Every command line reports a user error as its message and exit status 2, without a traceback.

One real subprocess per command line, each given the cheapest mistake a user makes with it (a path
that does not exist, a model that does not exist). `incres.errors.run` itself is tested in-process.
"""

from __future__ import annotations

import errno
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
      (fileio.WorkdirNotWritableError, OSError),
      (finetune.BackboneMismatchError, ValueError),
      (predict.NotARunError, FileNotFoundError),
      (train.NonFiniteLossError, FloatingPointError),
      (errors.ConfigError, ValueError),
      (errors.MissingFileError, FileNotFoundError),
  ]:
    assert issubclass(cls, errors.UserError) and issubclass(cls, base), cls


# --- A workdir that cannot be written ------------------------------------------------------------
# The tests run as root, whom permissions do not stop: a workdir under a regular file (ENOTDIR) is
# real, a read-only filesystem (EROFS) is simulated. By hand, a read-only bind mount
# (`mount --bind d m && mount -o remount,ro,bind m`) gave the same message.


@pytest.mark.slow  # A real launch.py process.
def test_launch_with_a_workdir_under_a_file_exits_2_naming_it(tmp_path):
  blocker = tmp_path / "notes.txt"
  blocker.write_text("a file, not a directory\n")
  workdir = blocker / "run"
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=tests/tiny_config.py", f"--workdir={workdir}"],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  error = result.stderr[result.stderr.index("error: ") :]
  assert f"Cannot write the workdir {workdir}: {blocker} is a file" in error, error
  assert "--workdir" in error and len(error.strip().splitlines()) == 1, error
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _read_only_filesystem(monkeypatch, root):
  """Makes `root` and everything under it look like a read-only mount to incres.fileio."""
  from incres import fileio  # pylint: disable=g-import-not-at-top

  root = str(root)
  under = lambda path: os.path.abspath(str(path)).startswith(root)
  real_access, real_statvfs, real_open = os.access, os.statvfs, os.open

  class ReadOnly:

    def __init__(self, st):
      self.f_flag = st.f_flag | os.ST_RDONLY

  def access(path, mode, **kwargs):
    return False if under(path) and mode & os.W_OK else real_access(path, mode, **kwargs)

  def statvfs(path):
    return ReadOnly(real_statvfs(path)) if under(path) else real_statvfs(path)

  def open_(path, flags, *args, **kwargs):
    if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(fileio.os, "access", access)
  monkeypatch.setattr(fileio.os, "statvfs", statvfs)
  monkeypatch.setattr(fileio.os, "open", open_)


def test_a_read_only_workdir_is_refused_before_any_work(tmp_path, monkeypatch):
  import tiny_config  # pylint: disable=g-import-not-at-top
  from incres import data, fileio, train  # pylint: disable=g-import-not-at-top

  _read_only_filesystem(monkeypatch, tmp_path)
  # Refused first: the data and the model are not even looked at.
  monkeypatch.setattr(data, "dataset_info", lambda *a: pytest.fail("the data was read"))
  workdir = tmp_path / "runs" / "a"
  with pytest.raises(fileio.WorkdirNotWritableError) as info:
    train.train_and_evaluate(tiny_config.get(steps=2), str(workdir))
  message = str(info.value)
  assert f"Cannot write the workdir {workdir}: {tmp_path} is on a read-only filesystem" in message
  assert "--workdir" in message and "Nothing was written" in message
  assert list(tmp_path.iterdir()) == []


def test_the_lock_reports_a_refused_write_as_the_user_error(tmp_path, monkeypatch):
  from incres import fileio  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  workdir.mkdir()  # Exists already: only opening the lock file for writing fails.
  _read_only_filesystem(monkeypatch, tmp_path)
  with pytest.raises(fileio.WorkdirNotWritableError, match="read-only filesystem") as info:
    fileio.WorkdirLock(str(workdir)).acquire()
  assert f"{workdir}{os.sep}{fileio.LOCK_FILE} is on a read-only" in str(info.value)
  assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EROFS
  monkeypatch.undo()
  (tmp_path / "file").write_text("")
  # A file where the workdir's parent should be: os.makedirs's own NotADirectoryError.
  with pytest.raises(fileio.WorkdirNotWritableError, match="is a file, not a directory"):
    fileio.make_workdir(str(tmp_path / "file" / "run"))
