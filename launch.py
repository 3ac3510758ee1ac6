"""Trains a model described by an experiment config.

  python launch.py --config=experiments/resnet_cifar.py:dataset=digits --workdir=runs/quickstart
  python launch.py --config=experiments/googlenet.py --config.batch_size=256

`--workdir` defaults to `runs/<config name>` (plus the config argument, if any). Rerunning a command
resumes from the workdir's newest checkpoint. `--config.KEY=VALUE` overrides any config key.
Ctrl-C (or SIGTERM) saves after the step in flight and prints the command to resume; a second
Ctrl-C ends the process at once. User errors (missing dataset, bad config) exit with status 2.

This file is flags -> config -> runtime (`incres.runtime`: logging, the persistent compilation
cache, `jax.distributed` on several hosts, TensorFlow kept off the GPUs) ->
`incres.train.train_and_evaluate`, which a notebook can call the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from incres import configs, errors, runtime

runtime.setup_process()  # Before TensorFlow is first imported.

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config: experiments/<name>.py, optionally :key=value,... for its variants.",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and logs; default runs/<config name>[-<arg>]."
)
flags.DEFINE_string(
    "jax_cache_dir",
    runtime.DEFAULT_COMPILATION_CACHE,
    "Persistent compilation cache (makes restarts start fast); empty to disable.",
)
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "Call jax.distributed.initialize: 'auto' does when launched on several processes (explicit"
    " --coordinator_address, SLURM, Open MPI or a multi-host TPU slice).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.mark_flags_as_required(["config"])

FLAGS = flags.FLAGS

_OVERRIDE = re.compile(r"^--config\.([\w.]+)")


def _config_spec(argv: list[str]) -> str:
  """The value of `--config` in `argv` ("" if absent)."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


_HELP = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def _available_configs() -> str:
  """The experiment configs beside this file, as a user would pass them to `--config`."""
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments")
  shown = os.path.relpath(root)
  if shown.startswith(os.pardir):
    shown = root
  names = sorted(n for n in os.listdir(root) if n.endswith(".py") and not n.startswith("_"))
  return ", ".join(os.path.join(shown, n) for n in names)


def _missing_config_file(spec: str) -> str | None:
  """The paragraph for a `--config` whose file does not exist, else None."""
  path = spec.split(":", 1)[0]
  if not path or os.path.isfile(path):
    return None
  return (
      f"error: --config={spec}: there is no config file {path!r} (looked in {os.getcwd()}). The"
      f" configs: {_available_configs()}. Pass one of them, with :args if it takes any."
  )


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a useful error for a misspelled `--config.KEY` or config file."""
  before_dashes = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if help_flag := next((a for a in before_dashes if a in _HELP), None):
    # absl's --help exits with status 1; a request for help is not an error.
    app.usage(shorthelp="full" not in help_flag, writeto_stdout=True, exitcode=0)
  spec = _config_spec(argv)
  if problem := _missing_config_file(spec):
    sys.stderr.write(problem + "\n")
    sys.exit(errors.EXIT_USER_ERROR)
  try:
    rest = FLAGS(argv)
    # config_flags keeps a config file's OSError (a file it opens is missing, say) for the config's
    # first use, deep inside training: report it now.
    getattr(FLAGS.config, "lock")
    return rest
  except OSError as e:
    cause = e.__cause__ or e  # The config file's own error, which config_flags wraps.
    if isinstance(cause, errors.UserError):
      problem = errors.message(cause)
    else:
      problem = f"error: --config={spec}: {' '.join(str(cause).split())}"
    sys.stderr.write(problem + "\n")
    sys.exit(errors.EXIT_USER_ERROR)
  except (AttributeError, KeyError) as e:
    keys = [m.group(1) for a in argv[1:] if (m := _OVERRIDE.match(a))]
    message = configs.unknown_keys_message(_config_spec(argv), keys)
    sys.stderr.write(f"{message} ({type(e).__name__}: {e})\n")
    sys.exit(errors.EXIT_USER_ERROR)
  except flags.Error as e:
    # A config file's own error (e.g. an unknown `:key=value` argument) reaches here re-raised by
    # config_flags with the traceback's text in its message: report the original error itself.
    chain, cause = [], e
    while cause is not None:
      chain.append(cause)
      cause = cause.__cause__ or cause.__context__
    user_errors = [c for c in chain if isinstance(c, errors.UserError)]
    problem = errors.message(user_errors[-1]) if user_errors else str(e)
    if "Traceback (most recent call last)" in problem:  # Some other error of the config file.
      head, _, tail = problem.partition("Traceback (most recent call last)")
      problem = f"{head.strip()} {tail.strip().splitlines()[-1]}"
    sys.stderr.write(f"{problem}\nRun `python launch.py --helpfull` for the flags.\n")
    sys.exit(errors.EXIT_USER_ERROR)


def default_workdir(config_flag_value: str) -> str:
  """`runs/<config file stem>`, plus a sanitised copy of the config argument if there is one."""
  path, _, arg = config_flag_value.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "-" + re.sub(r"[^\w.=+-]+", "_", arg.replace(",", "-"))
  return os.path.join("runs", name)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  runtime.quiet_library_logs()
  runtime.avoid_cpu_bfloat16_nan(FLAGS.config.get("dtype"))  # Before JAX starts its backends.
  runtime.setup_jax(
      FLAGS.jax_cache_dir,
      FLAGS.distributed,
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
  )
  import jax  # pylint: disable=g-import-not-at-top

  from incres import train  # pylint: disable=g-import-not-at-top

  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  if jax.process_index() == 0:
    logging.info("Workdir: %s", os.path.abspath(workdir))
  args = [a for a in sys.argv if not a.startswith("--workdir")]
  resume = " ".join(shlex.quote(a) for a in ["python", *args, f"--workdir={workdir}"])
  try:
    train.train_and_evaluate(FLAGS.config, workdir, resume_command=resume)
  except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT: nothing was trained yet.
    sys.stderr.write("\nStopped by Ctrl-C before training started; nothing to save.\n")
    sys.exit(130)


if __name__ == "__main__":
  # Config values are checked with ValueError throughout the library (train.py, the models), so
  # launch.py reports those as user errors as well.
  errors.run(lambda: app.run(main, flags_parser=_parse_flags), also=(ValueError,))
