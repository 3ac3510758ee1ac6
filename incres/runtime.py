"""Process set-up for the command-line entry points: start-up noise off, a quick exit.

`launch.py` and each `python -m incres.<tool>` call `setup_process()` first, before TensorFlow is
imported. A notebook or a library user does not need it (and is not changed by importing incres).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os

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


def setup_process() -> None:
  """Quiets the libraries' start-up lines and makes the process exit in well under a second.

  Call it first thing in a command-line entry point (before TensorFlow is imported). Values already
  set in the environment win.
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
