"""The flags of the tools' command lines: absl flags, each tool on its own `flags.FlagValues`.

`launch.py` is a script and defines its flags on absl's process-wide `flags.FLAGS`, as the Flax
examples and big_vision do. The tools (`python -m incres.<tool>`, `experiments/degradation.py`,
`benchmarks/*.py`) are library modules whose `main(argv)` a notebook or a test calls in-process,
several in one process: each builds a fresh `flags.FlagValues` inside its `main` and parses it here,
so that importing a module registers no flag and two tools can share a flag name (`--workdir`).

  def main(argv=None):
    args = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "A run.", required=True, flag_values=args)
    images = cli.parse(args, argv, prog="python -m incres.tool", description=..., positional=...)
    ... args.workdir ...

The syntax is absl's: `--flag=value`, `--flag value`, `--[no]bool`, repeated `--flag` for a
multi-flag, `--` to end the flags; other arguments are returned in order, wherever they stand.
`--help` (or `-h`, `--helpfull`) prints the tool's usage and flags and exits 0. A flag error (an
unknown flag, a bad value, a missing required flag) raises `UsageError`, which `errors.run`
prints as one paragraph, with exit status 2 and no traceback.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Sequence

from absl import flags

from incres import errors

# The spellings of a request for help: absl's `app.run` ones, and `-h`.
_HELP = ("-h", "-?", "--help", "-help", "--helpfull", "-helpfull", "--helpshort", "-helpshort")


class UsageError(errors.ConfigError):
  """A command line's flags or arguments are wrong; the message says where to find the right ones."""

  def __init__(self, problem: str, prog: str):
    problem = " ".join(str(problem).split())  # absl's messages can span lines: one paragraph.
    if not problem.endswith((".", "?", "!")):
      problem += "."
    super().__init__(f"{problem} Run `{prog} --help` for its flags.")


def _needs_wrap(paragraph: str) -> bool:
  """Whether a description paragraph has over-long lines and no hand-made layout."""
  lines = paragraph.splitlines()
  return max(map(len, lines)) > 100 and not any(line.startswith(" ") for line in lines)


def help_text(
    args: flags.FlagValues, *, prog: str, description: str, positional: str | None = None
) -> str:
  """The usage line, the description and every flag with its help and default (absl's format)."""
  usage = f"usage: {prog} [flags]" + (f" {positional}" if positional else "")
  # absl heads the flags with the name of the module that defined them (`__main__` under
  # `python -m`); only the flags' own lines, which it indents, are kept.
  listing = args.get_help(prefix="", include_special_flags=False).splitlines()
  lines = [line for line in listing if line.startswith("  ")]
  lines.append("  -h,--help: Show this help and exit.")
  paragraphs = [  # Long lines wrapped; paragraphs laid out by hand (indented commands) kept.
      textwrap.fill(p, 100) if _needs_wrap(p) else p for p in description.strip().split("\n\n")
  ]
  return f"{usage}\n\n" + "\n\n".join(paragraphs) + "\n\nflags:\n" + "\n".join(lines) + "\n"


def parse(
    args: flags.FlagValues,
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    positional: str | None = None,
) -> list[str]:
  """Parses `argv` (default: `sys.argv[1:]`) into `args`; returns the non-flag arguments.

  `positional` describes the arguments the tool takes besides flags, for the usage line
  (`"IMAGE [IMAGE ...]"`); without it, any such argument is a `UsageError`. `--help` prints
  `help_text` to stdout and exits 0.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  before_dashes = argv[: argv.index("--")] if "--" in argv else argv
  if any(a in _HELP for a in before_dashes):
    sys.stdout.write(help_text(args, prog=prog, description=description, positional=positional))
    sys.exit(0)
  try:
    rest = args([prog, *argv])[1:]
  except flags.Error as e:
    problem = str(e)
    if missing := re.search(r"Flag (--\w+) must have a value other than None", problem):
      problem = f"{missing.group(1)} is required"
    raise UsageError(problem, prog) from None
  if rest and positional is None:
    raise UsageError(f"Unexpected arguments: {' '.join(rest)} (this tool takes only flags)", prog)
  return rest
