"""Files written outside orbax: atomic replacement, and the lock that makes a workdir one run's.

`atomic_write_text`/`atomic_write_bytes` write a temporary file in the target's directory, fsync
it, `os.replace` it over the target and fsync the directory: a reader (or the next run after a
`kill -9`) sees the old file or the new one, never a mix. What survives a power loss is up to the
filesystem honouring fsync.

`WorkdirLock` is an `fcntl.flock` on `<workdir>/incres.lock`, whose body (JSON: host, pid, start
time) names the holder. The kernel drops a flock when its process dies, however it dies, so a
lock left by a killed run is free: the next run takes it over (and says whose it was).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile
from typing import Any

from absl import logging

from incres import errors

LOCK_FILE = "incres.lock"


def fsync_dir(directory: str) -> None:
  """Makes a rename in `directory` durable (where the filesystem allows opening directories)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # Some filesystems refuse fsync on directories; the rename is still atomic.
  finally:
    os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` with `data` atomically (temporary sibling + fsync + rename + fsync dir)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make shared caches unreadable to others.
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise
  fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def append_line(fd: int, line: str) -> None:
  """Appends `line` (which must end in a newline) with one `write` call on an O_APPEND fd.

  One system call per line: a process killed at any moment leaves whole lines (a regular file's
  write is not interrupted half-way by a signal), so readers never see two records glued together.
  """
  data = line.encode("utf-8")
  written = os.write(fd, data)
  while written < len(data):  # Only on a full disk or an exotic filesystem.
    written += os.write(fd, data[written:])


class WorkdirInUseError(errors.UserError, RuntimeError):
  """Another running process holds the workdir's lock."""


class WorkdirNotWritableError(errors.UserError, OSError):
  """The workdir cannot be created or written (a read-only filesystem, no permission, a file)."""


def _not_writable_message(workdir: str, why: str) -> str:
  return (
      f"Cannot write the workdir {workdir}: {why}. A run writes its checkpoints, logs and lock file"
      " there. Pass a --workdir on a writable filesystem where you may create files (for example"
      " under your home directory). Nothing was written."
  )


def _nearest_existing(path: str) -> str:
  """`path` or its nearest ancestor that exists."""
  while not os.path.lexists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _read_only(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def check_writable_workdir(workdir: str) -> None:
  """Raises `WorkdirNotWritableError` if `workdir` could not be created or written; creates nothing.

  Checked before a run spends minutes on its data and model: the nearest existing directory on the
  way to `workdir` must be a directory that this process may write (`os.access` also reports a
  read-only filesystem, even to root). `make_workdir` and `WorkdirLock.acquire` still report a
  refusal that only the write itself meets (a filesystem whose permissions `access` does not see).
  """
  workdir = os.path.abspath(workdir)
  existing = _nearest_existing(workdir)
  if not os.path.isdir(existing):
    raise WorkdirNotWritableError(
        _not_writable_message(workdir, f"{existing} is a file, not a directory")
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    if _read_only(existing):
      why = f"{existing} is on a read-only filesystem"
    else:
      why = f"this user ({_user()}) may not create files in {existing}"
    raise WorkdirNotWritableError(_not_writable_message(workdir, why))


def _user() -> str:
  try:
    import pwd  # pylint: disable=g-import-not-at-top  (POSIX only, like fcntl)

    return pwd.getpwuid(os.geteuid()).pw_name
  except (ImportError, KeyError):
    return f"uid {os.geteuid()}"


def make_workdir(workdir: str) -> None:
  """`os.makedirs(workdir, exist_ok=True)`; `WorkdirNotWritableError` if that is refused."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    _raise_not_writable(os.path.abspath(workdir), e)


def _raise_not_writable(workdir: str, error: OSError) -> None:
  """Re-raises a refused write under `workdir` (read-only, no permission, a file in the way) as
  `WorkdirNotWritableError`; any other `OSError` as it is."""
  where = error.filename or workdir
  if error.errno == errno.EROFS:
    why = f"{where} is on a read-only filesystem"
  elif error.errno in (errno.EACCES, errno.EPERM):
    why = f"this user ({_user()}) may not write {where}"
  elif error.errno in (errno.ENOTDIR, errno.EEXIST):
    why = f"a part of {where} is a file, not a directory"
  else:
    raise error
  raise WorkdirNotWritableError(
      _not_writable_message(workdir, f"{why} ({error.strerror})")
  ) from error


def _describe(holder: dict[str, Any]) -> str:
  return (
      f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} (started"
      f" {holder.get('start', '?')})"
  )


def raise_if_locked(workdir: str) -> None:
  """Raises `WorkdirInUseError` if a live process holds `workdir`'s lock; changes nothing."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUseError(_in_use_message(os.path.dirname(path), _read_holder(fd))) from None
    fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def _in_use_message(workdir: str, holder: dict[str, Any] | None) -> str:
  return (
      f"The workdir {workdir} is in use by {_describe(holder or {})}: two runs writing one"
      " workdir would overwrite each other's checkpoints. Wait for that run to finish (or stop"
      " it), or use another --workdir. Nothing was changed."
  )


def _read_holder(fd: int) -> dict[str, Any] | None:
  """The JSON body of a lock file: who holds (or last held) it; None if empty."""
  os.lseek(fd, 0, os.SEEK_SET)
  raw = b""
  while chunk := os.read(fd, 4096):
    raw += chunk
  if not raw.strip():
    return None
  try:
    holder = json.loads(raw)
  except ValueError:
    return {"pid": "?", "host": "?", "start": "?"}  # A body cut short: still a previous holder.
  return holder if isinstance(holder, dict) else None


class WorkdirLock:
  """An exclusive lock on a workdir, held from `acquire()` until `release()` or process exit."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock, or raises `WorkdirInUseError` naming the live holder."""
    if self._fd is not None:
      return
    make_workdir(self.workdir)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      _raise_not_writable(self.workdir, e)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise WorkdirInUseError(_in_use_message(self.workdir, _read_holder(fd))) from None
      previous = _read_holder(fd)
      if previous is not None:
        other_host = previous.get("host") not in ("?", socket.gethostname())
        logging.warning(
            "Taking over the lock of %s on %s: it is no longer running (it was killed or"
            " crashed; its newest complete checkpoint is used).%s",
            _describe(previous),
            self.workdir,
            " That process ran on another host: if it is in fact still running (a filesystem"
            " that does not share locks between hosts), stop it now."
            if other_host
            else "",
        )
      body = {
          "host": socket.gethostname(),
          "pid": os.getpid(),
          "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      }
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, (json.dumps(body) + "\n").encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)  # Closing the only descriptor also drops a flock taken above.
      raise
    self._fd = fd

  def release(self) -> None:
    """Empties the holder's body (a clean exit leaves no stale holder) and unlocks."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass
    finally:
      os.close(fd)  # The file stays: deleting a lock file races with a process opening it.

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()
