"""Process set-up in one place: start-up noise off, TensorFlow off the accelerators, JAX's runtime.

`launch.py`, each `python -m incres.<tool>` and the notebooks call `setup_process()` first, before
TensorFlow is imported. `launch.py` then calls `setup_jax()` (the persistent compilation cache,
`jax.distributed` on several processes) and `quiet_library_logs()`. Importing incres changes none
of this by itself.
"""

from __future__ import annotations

import atexit
import functools
import gc
from importlib import metadata
import logging
import os
from typing import Any, Callable, NoReturn

# Makes restarts start fast: compiled programs are kept across processes.
DEFAULT_COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "incres", "jax")

_QUIET_ENV = {
    # TensorFlow's C++ INFO/WARNING lines (CPU feature guard, tf.data notes).
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # TensorFlow only runs the input pipeline here (decoding, crops, flips: no matmul or conv, where
    # its oneDNN kernels would matter); the setting's only visible effect is that TensorFlow stops
    # printing "oneDNN custom operations are on" twice (once per shared library, both before its
    # logging is configured, hence absl's "All log messages before absl::InitializeLog()" line
    # twice as well; TF_CPP_MIN_LOG_LEVEL does not reach those). Set it to 1 to get them back.
    "TF_ENABLE_ONEDNN_OPTS": "0",
}


class _DropMissingVariantFolders(logging.Filter):
  """tfds warns "Variant folder X has no dataset_info.json" while looking for a dataset that was
  never prepared, when X does not exist at all; incres then says what is missing. A folder that
  exists but lacks the file (an interrupted preparation) is news and is kept."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Variant folder %s has no"):
      return True
    args = record.args if isinstance(record.args, tuple) else ()
    return bool(args) and os.path.exists(str(args[0]))


@functools.cache  # Once per process: `incres.data` calls it before importing TensorFlow too.
def setup_process() -> None:
  """Quiets the libraries' start-up lines and makes the process exit in well under a second.

  Call it first thing in a command-line entry point or a notebook (before TensorFlow is imported).
  Values already set in the environment win.
  """
  for key, value in _QUIET_ENV.items():
    os.environ.setdefault(key, value)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  absl_logging.get_absl_logger().addFilter(_DropMissingVariantFolders())
  # With TensorFlow, JAX and orbax loaded the heap holds about a million objects, and the
  # interpreter's shutdown runs full garbage collections over them while it tears down modules:
  # 1-13 s after the last line was printed, measured. This handler is registered first, so it runs
  # last, after every library's own exit handler (log flushing, orbax, JAX); freezing the heap
  # then makes those final collections skip it. All files incres writes are closed explicitly
  # before this point, and the operating system reclaims the memory either way.
  atexit.register(gc.freeze)


# The XLA flag that turns XLA:CPU's YNNPACK fusions off, and the jaxlib releases that need it.
_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_YNN_BF16_NAN_JAXLIB = ((0, 12),)


def avoid_cpu_bfloat16_nan(dtype: str | None) -> bool:
  """Turns XLA:CPU's YNN fusions off for a bfloat16 run on jaxlib 0.12; True when it did.

  Deviation from running XLA as it comes: jaxlib 0.12.1's XLA:CPU fuses the bfloat16 inference
  graph of the CIFAR pre-activation nets (`WRN28_10`, `CifarPreActResNet164`: 32x32 inputs, a
  first unit that widens through a projection) into one YNNPACK fusion that returns NaN logits,
  so `eval/loss` is NaN while training looks healthy. The same program op by op, in float32, or
  on jaxlib 0.10 gives finite logits. This appends `--xla_cpu_experimental_ynn_fusion_type=` (no
  YNN fusions) to `XLA_FLAGS`; the flag is read only by the CPU backend, so GPU and TPU runs are
  untouched. Nothing is changed for float32 runs (whose speed the fusions help), on other
  jaxlib releases (older ones do not know the flag and would refuse it), or when `XLA_FLAGS`
  already names the flag (the user's setting wins). It must run before JAX starts its backends:
  `launch.py` calls it right after reading the config.
  """
  if dtype != "bfloat16" or _YNN_FUSION_FLAG in os.environ.get("XLA_FLAGS", ""):
    return False
  try:
    release = tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return False
  if release not in _YNN_BF16_NAN_JAXLIB:
    return False
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN_FUSION_FLAG}=".strip()
  return True


def run_command_line(main: Callable[[], Any]) -> NoReturn:
  """A tool's `if __name__ == "__main__":` block: `setup_process`, then `errors.run(main)`.

  The block imports only this module: any name it imports becomes a global of the tool's module
  run as `__main__`, replacing one of the same name that `main` uses (evaluate's `errors` function
  once became the `incres.errors` module that way, and every evaluation crashed at its end).
  """
  setup_process()  # Before TensorFlow is imported: quiet start-up, quick exit.
  from incres import errors  # pylint: disable=g-import-not-at-top

  errors.run(main)


@functools.cache
def keep_tensorflow_off_accelerators() -> None:
  """TensorFlow only feeds data; left alone it would reserve the GPU memory that JAX needs.

  A no-op with tensorflow-cpu, without TensorFlow, or once TensorFlow has set up its devices.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices elsewhere: leave them.
    pass


class _QuietLibraries(logging.Filter):
  """orbax, JAX and tfds log every checkpoint phase or dataset read at INFO; keep their warnings."""

  _PATHS = tuple(
      os.sep + name + os.sep for name in ("orbax", "jax", "jaxlib", "tensorflow_datasets")
  )

  def filter(self, record: logging.LogRecord) -> bool:
    # 30 is Python's WARNING level (absl's logging.WARNING is an absl verbosity, -1).
    return record.levelno >= 30 or not any(p in record.pathname for p in self._PATHS)


def quiet_library_logs() -> None:
  """Drops the libraries' INFO lines from the log, unless `--verbosity` asks for more than INFO."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  if absl_logging.get_verbosity() > absl_logging.INFO:
    return
  handlers = logging.getLogger().handlers + [absl_logging.get_absl_handler().python_handler]
  for handler in handlers:
    handler.addFilter(_QuietLibraries())


def _cluster_in_environment() -> bool:
  """Whether SLURM, Open MPI or a multi-host TPU slice started several processes."""
  env = os.environ
  return (
      int(env.get("SLURM_NTASKS", "1")) > 1
      or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )


def connect_cpu_collectives() -> None:
  """Connects the processes' gloo groups now, while they are in step, not at the first train step.

  jaxlib (0.10.2) connects a gloo group at its first collective and waits a fixed 30 s there for
  the other processes (`GetKeyValue() timed out ... cpu:gloo`, which the flag
  `--xla_cpu_collective_timeout_seconds` does not change). A process that arrives later, e.g. one
  that compiled slower on a loaded host, fails the run ("Gloo context initialization failed"; the
  others then abort). Connected groups wait for a late process (tests/test_distributed.py: 40 s).
  `jax.distributed.initialize` returns when all processes have joined, so this connects, right
  after it, the groups incres uses: the train step's over every device of the ('data',) mesh, and
  those of `jax.experimental.multihost_utils` (orbax's barriers, `process_allgather` in train.py),
  one per local device index when processes have several devices.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from incres import state  # pylint: disable=g-import-not-at-top

  data = jax.sharding.NamedSharding(state.create_mesh(), jax.sharding.PartitionSpec("data"))
  ones = jax.make_array_from_process_local_data(data, np.ones(jax.local_device_count(), np.int32))
  jax.block_until_ready(jax.jit(jax.numpy.sum)(ones))
  multihost_utils.sync_global_devices("incres: connect the processes' CPU collectives")


def initialize_distributed(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Joins the processes of a multi-host run into one JAX runtime.

  `mode` "auto" does when launched on several processes (an explicit `coordinator_address`, SLURM,
  Open MPI or a multi-host TPU slice), "yes" always, "no" never.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  explicit = coordinator_address is not None
  if mode == "no" or (mode == "auto" and not (explicit or _cluster_in_environment())):
    return
  # CPU-only multi-process runs (tests, CPU clusters) need a collectives backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
  else:  # JAX reads SLURM / Open MPI / Cloud TPU environments itself.
    jax.distributed.initialize()
  absl_logging.info(
      "jax.distributed: process %d of %d, %d local / %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    connect_cpu_collectives()


def setup_jax(
    compilation_cache_dir: str | None = DEFAULT_COMPILATION_CACHE,
    distributed: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """TensorFlow off the accelerators, then JAX's compilation cache and `jax.distributed`.

  Call it before the first JAX computation. An empty or None `compilation_cache_dir` disables
  the cache; the other arguments are `initialize_distributed`'s.
  """
  keep_tensorflow_off_accelerators()  # Before JAX claims the GPUs.
  import jax  # pylint: disable=g-import-not-at-top

  if compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
  initialize_distributed(distributed, coordinator_address, num_processes, process_id)
