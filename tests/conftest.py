"""Shared pytest setup."""

# torchvision (through torch._dynamo) imports triton, and importing triton after TensorFlow
# segfaults the process (their bundled native libraries clash; the reverse order is fine). Tests
# import TensorFlow early, so the test-only torch stack is imported first, when it is installed.
try:
  import torchvision  # noqa: F401
except ImportError:
  pass

import json
import os
import subprocess
import sys
import uuid
import warnings

import pytest

# The tests run tiny programs, so XLA's compile time, not run time, is most of the suite: with
# LLVM at -O0 a tiny GoogLeNet32's eager `init` compiled in 78 s instead of 213-256 s, and its
# train step in 43 s instead of 69 s (a loaded 2-core AMD EPYC), while the tiny steps ran about
# 2x slower (0.15 s for three). Set before JAX starts its backend; launch.py subprocesses inherit
# it. Every comparison in the suite is between runs under the same flags, or has a tolerance.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

# Marks every process of this test run (xdist workers, launch.py subprocesses, notebook kernels
# inherit it), so the checkout guard can tell a run of the user's from the suite's (below).
TEST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
os.environ["INCRES_TEST_RUN"] = TEST_RUN

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written by Python, pytest and tools while the suite runs; never a user's data.
_CACHES = {
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".venv",
    "venv",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    ".hypothesis",
}


def _tracked(root: str) -> set[str]:
  """Paths git tracks in `root` (empty when it is not a git checkout)."""
  try:
    out = subprocess.run(
        ["git", "-C", root, "ls-files", "-z"], capture_output=True, check=True, timeout=60
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return set()
  return {p for p in out.decode().split("\0") if p}


def snapshot_checkout(root: str = CHECKOUT) -> dict[str, tuple[int, int] | None]:
  """Every file of the checkout outside caches: (size, mtime) for untracked and ignored files
  (runs, figures, data: what a test could clobber), None for tracked ones (which a developer may
  edit while the suite runs; their appearing or vanishing still counts)."""
  tracked = _tracked(root)
  files = {}
  for d, dirs, names in os.walk(root):
    dirs[:] = [
        x
        for x in dirs
        if x not in _CACHES and not x.endswith(".egg-info") and not x.startswith(".venv-")
    ]
    for name in names:
      path = os.path.join(d, name)
      rel = os.path.relpath(path, root)
      if rel in tracked:
        files[rel] = None
      else:
        st = os.lstat(path)
        files[rel] = (st.st_size, st.st_mtime_ns)
  return files


def describe_changes(before: dict, after: dict) -> str:
  """The paths added, removed or changed between two snapshots, one per line."""
  lines = [f"added {p}" for p in sorted(after.keys() - before.keys())]
  lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
  lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
  return "\n".join(lines)


def _lock_holder(root: str, rel: str) -> int | None:
  """The pid named by the incres.lock of the nearest workdir holding `rel` (None if none)."""
  d = os.path.dirname(os.path.join(root, rel))
  while len(d) >= len(root):
    try:
      with open(os.path.join(d, "incres.lock")) as f:
        return int(json.load(f)["pid"])
    except FileNotFoundError:
      d = os.path.dirname(d)
    except (OSError, ValueError, KeyError, TypeError):
      return None  # An empty body (a run that has ended) or not incres' lock.
  return None


def _of_this_run(pid: int) -> bool:
  """Whether process `pid` is one of this test run's (it inherited INCRES_TEST_RUN)."""
  try:
    with open(f"/proc/{pid}/environ", "rb") as f:
      return f"INCRES_TEST_RUN={TEST_RUN}".encode() in f.read().split(b"\0")
  except OSError:
    return True  # Gone or unreadable: nothing says it was someone else's.


def foreign_changes(changes: str, root: str = CHECKOUT) -> tuple[str, str]:
  """Splits `describe_changes` lines into (the suite's, another process's).

  A change is another process's when it lies in a workdir whose lock names a live process that is
  not part of this test run (a user's `launch.py` writing `runs/` while the suite runs). The guard
  cannot attribute anything else: a run that has already ended leaves an empty lock, and other
  programs leave none, so those changes count as the suite's."""
  ours, theirs = [], []
  for line in changes.splitlines():
    pid = _lock_holder(root, line.split(" ", 1)[1])
    (theirs if pid is not None and not _of_this_run(pid) else ours).append(line)
  return "\n".join(ours), "\n".join(theirs)


def assert_checkout_unchanged(before: dict, root: str = CHECKOUT) -> None:
  """Fails if the suite changed the checkout since `before`; another live run's writes only warn."""
  ours, theirs = foreign_changes(describe_changes(before, snapshot_checkout(root)), root)
  if theirs:
    with warnings.catch_warnings():  # Shown in pytest's warnings summary, not raised by `error`.
      warnings.simplefilter("always")
      warnings.warn(
          f"Not counted against the tests: changes in {root} by a run that is not part of this"
          f" test session (its workdir lock names a live process outside the suite):\n{theirs}",
          UserWarning,
      )
  if ours:
    pytest.fail(
        f"The checkout {root} changed while the tests ran:\n{ours}\nTests write only under"
        " pytest's temporary directories, so this is a test's doing, unless you (or a program)"
        " wrote there yourself while the suite ran: the guard recognises another run by its live"
        " workdir lock, and cannot tell other writes, or those of a run that has already ended,"
        " from the suite's. Run the suite again with nothing else writing into the checkout, or"
        " give your own runs a --workdir outside it.",
        pytrace=False,
    )


@pytest.fixture(scope="session", autouse=True)
def checkout_untouched():
  """Fails the session if any test wrote, changed or deleted a file in the checkout (a user's
  `runs/` lives there): tests write only under pytest's temporary directories."""
  before = snapshot_checkout()
  yield
  assert_checkout_unchanged(before)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A persistent JAX compilation cache for a module whose tests each jit fresh functions
  (`train_and_evaluate`): repeats of a program then load instead of compiling. Use with
  `pytestmark = pytest.mark.usefixtures("compilation_cache")`."""
  import jax  # pylint: disable=g-import-not-at-top  (after torchvision, above)

  old = (
      jax.config.jax_compilation_cache_dir,
      jax.config.jax_persistent_cache_min_compile_time_secs,
  )
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def assert_script_prints_ok(script: str, devices: int = 8) -> None:
  """Runs the Python `script` in a fresh process on `devices` CPU devices (the suite's compile
  flags, the checkout on the path) and asserts that it printed just "ok"."""
  env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
  result = subprocess.run(
      [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
