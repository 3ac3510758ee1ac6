"""Shared pytest setup."""

# torchvision (through torch._dynamo) imports triton, and importing triton after TensorFlow
# segfaults the process (their bundled native libraries clash; the reverse order is fine). Tests
# import TensorFlow early, so the test-only torch stack is imported first, when it is installed.
try:
  import torchvision  # noqa: F401
except ImportError:
  pass

import os
import subprocess

import pytest

# The tests run tiny programs, so XLA's compile time, not run time, is most of the suite: with
# LLVM at -O0 a tiny GoogLeNet32's eager `init` compiled in 78 s instead of 213-256 s, and its
# train step in 43 s instead of 69 s (a loaded 2-core AMD EPYC), while the tiny steps ran about
# 2x slower (0.15 s for three). Set before JAX starts its backend; launch.py subprocesses inherit
# it. Every comparison in the suite is between runs under the same flags, or has a tolerance.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

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
    dirs[:] = [x for x in dirs if x not in _CACHES and not x.endswith(".egg-info")]
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


@pytest.fixture(scope="session", autouse=True)
def checkout_untouched():
  """Fails the session if any test wrote, changed or deleted a file in the checkout (a user's
  `runs/` lives there): tests write only under pytest's temporary directories."""
  before = snapshot_checkout()
  yield
  changes = describe_changes(before, snapshot_checkout())
  if changes:
    pytest.fail(
        f"The tests changed files in the checkout {CHECKOUT} (files you created or deleted yourself"
        f" while the suite ran count too; then run it again):\n{changes}",
        pytrace=False,
    )


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
