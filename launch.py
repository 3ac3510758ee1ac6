"""Trains a model described by an experiment config.

  python launch.py --config=experiments/resnet_cifar.py:dataset=digits --workdir=runs/quickstart
  python launch.py --config=experiments/googlenet.py --config.batch_size=256

`--workdir` defaults to `runs/<config name>` (plus the config argument, if any). Rerunning a command
resumes from the workdir's newest checkpoint. `--config.KEY=VALUE` overrides any config key.
Ctrl-C (or SIGTERM) saves after the step in flight and prints the command to resume; a second
Ctrl-C ends the process at once. User errors (missing dataset, bad config) exit with status 2.

This file only parses flags and sets up the runtime (logging, the persistent compilation cache,
`jax.distributed` on several hosts, TensorFlow kept off the GPUs); the work happens in
`incres.train.train_and_evaluate`, which a notebook can call the same way.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shlex
import sys

from incres import runtime

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
    os.path.join(os.path.expanduser("~"), ".cache", "incres", "jax"),
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


def _config_path_and_arg(argv: list[str]) -> tuple[str | None, str | None]:
  for i, a in enumerate(argv):
    value = None
    if a.startswith("--config="):
      value = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path, _, arg = value.partition(":")
      return path, (arg or None)
  return None, None


def _flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if hasattr(value, "items"):
      keys += _flat_keys(value, prefix + key + ".")
  return keys


def _valid_keys(argv: list[str]) -> list[str]:
  """The keys of the config that `--config` names (loaded again, only to list them)."""
  path, arg = _config_path_and_arg(argv)
  try:
    spec = importlib.util.spec_from_file_location("_incres_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg is not None else module.get_config()
    return _flat_keys(config)
  except Exception:  # pylint: disable=broad-except
    return []


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a useful error for a misspelled `--config.KEY`."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [m.group(1) for a in argv[1:] if (m := _OVERRIDE.match(a))]
    valid = _valid_keys(argv)
    unknown = [k for k in bad if k not in valid] or bad
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, valid, n=1)
      hints.append(f"--config.{key}" + (f" (did you mean --config.{close[0]}?)" if close else ""))
    sys.stderr.write(
        f"Unknown config key: {', '.join(hints)}. The config has these keys: {', '.join(valid)}."
        f" Fix the spelling, or add the key to incres/configs.py first. ({type(e).__name__}: {e})\n"
    )
    sys.exit(2)
  except flags.Error as e:
    sys.stderr.write(f"{e}\nRun `python launch.py --helpfull` for the flags.\n")
    sys.exit(2)


def default_workdir(config_flag_value: str) -> str:
  """`runs/<config file stem>`, plus a sanitised copy of the config argument if there is one."""
  path, _, arg = config_flag_value.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "-" + re.sub(r"[^\w.=+-]+", "_", arg.replace(",", "-"))
  return os.path.join("runs", name)


def _maybe_initialize_distributed() -> None:
  """Joins the processes of a multi-host run into one JAX runtime."""
  import jax  # pylint: disable=g-import-not-at-top

  explicit = FLAGS.coordinator_address is not None
  env = os.environ
  cluster = (
      int(env.get("SLURM_NTASKS", "1")) > 1
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )
  if FLAGS.distributed == "no" or (FLAGS.distributed == "auto" and not (explicit or cluster)):
    return
  # CPU-only multi-process runs (tests, CPU clusters) need a collectives backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )
  else:  # JAX reads SLURM / Open MPI / Cloud TPU environments itself.
    jax.distributed.initialize()
  logging.info(
      "jax.distributed: process %d of %d, %d local / %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


def _hide_gpus_from_tensorflow() -> None:
  """TensorFlow only feeds data; left alone it would reserve the GPUs' memory that JAX needs."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")


class _QuietLibraries:
  """Logging filter: orbax, JAX and tfds log every checkpoint phase or dataset read at INFO; keep
  their warnings."""

  _PATHS = tuple(
      os.sep + name + os.sep for name in ("orbax", "jax", "jaxlib", "tensorflow_datasets")
  )

  def filter(self, record) -> bool:
    # 30 is Python's WARNING level (absl's logging.WARNING is an absl verbosity, -1).
    return record.levelno >= 30 or not any(p in record.pathname for p in self._PATHS)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if logging.get_verbosity() <= logging.INFO:  # Unless --verbosity asks for more.
    import logging as std_logging  # pylint: disable=g-import-not-at-top

    for handler in std_logging.getLogger().handlers + [logging.get_absl_handler().python_handler]:
      handler.addFilter(_QuietLibraries())
  _hide_gpus_from_tensorflow()
  import jax  # pylint: disable=g-import-not-at-top

  if FLAGS.jax_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.jax_cache_dir)
  _maybe_initialize_distributed()

  from incres import checkpoint, data, fileio, train  # pylint: disable=g-import-not-at-top

  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  if jax.process_index() == 0:
    logging.info("Workdir: %s", os.path.abspath(workdir))
  args = [a for a in sys.argv if not a.startswith("--workdir")]
  resume = " ".join(shlex.quote(a) for a in ["python", *args, f"--workdir={workdir}"])
  try:
    train.train_and_evaluate(FLAGS.config, workdir, resume_command=resume)
  except (
      data.DatasetError,
      checkpoint.IncompatibleCheckpointError,
      fileio.WorkdirInUseError,
      train.NonFiniteLossError,
      ValueError,
  ) as e:
    # Once, on stderr (logging it as well printed it twice); the message says what to do.
    sys.stderr.write(f"\nError ({type(e).__name__}): {e}\n")
    sys.exit(2)
  except KeyboardInterrupt:  # Ctrl-C before the loop took over SIGINT: nothing was trained yet.
    sys.stderr.write("\nStopped by Ctrl-C before training started; nothing to save.\n")
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
