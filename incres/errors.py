"""The errors a user can fix, and how every command line reports them.

Every exception incres raises for something the user can fix (a config key, a dataset, a checkpoint
that does not fit or is damaged, a conversion, a non-finite loss, a missing file, a workdir in use,
an existing output) derives from `UserError`, and its message says what to do. The command lines
run their `main` through `run`, which prints that message as one paragraph and exits with status 2;
any other exception is a bug and keeps its traceback (exit status 1).

Each class keeps the built-in base its callers caught before (`ConfigError` is a `ValueError`,
`MissingFileError` a `FileNotFoundError`, ...), so `except ValueError` still works.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

# Exit status of a command line for a user error, flag errors included (`incres.cli.UsageError`):
# the usual status of a usage error.
EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; the message says how (command lines exit 2 without a traceback)."""


class ConfigError(UserError, ValueError):
  """A config key, value or argument that does not exist or is not allowed."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist (or is not what was expected)."""


def message(error: BaseException) -> str:
  """The one paragraph a command line prints for `error`."""
  return f"error: {error}"


def run(main: Callable[[], Any], *, also: tuple[type[BaseException], ...] = ()) -> NoReturn:
  """Runs a command line's `main()` and exits: 2 with the message for a `UserError`, else main's.

  `main` returns an exit status (an int) or anything else for 0. `also` names further exception
  types to report as user errors. Ctrl-C exits 130 with one line instead of a traceback.
  """
  try:
    result = main()
  except (UserError, *also) as e:
    sys.stdout.flush()
    sys.stderr.write(f"\n{message(e)}\n")
    sys.exit(EXIT_USER_ERROR)
  except KeyboardInterrupt:
    sys.stderr.write("\nStopped by Ctrl-C.\n")
    sys.exit(130)
  sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
