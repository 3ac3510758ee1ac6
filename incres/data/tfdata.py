"""tf.data settings shared by every pipeline: deterministic order and host-sized parallelism."""

from __future__ import annotations

import os

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def host_threads() -> int:
  """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic order (the resume guarantee), tf.data's own parallelism sized to the host."""
  opts = tf.data.Options()
  opts.deterministic = True  # Parallel map() still yields in order: batch k is batch k.
  opts.autotune.enabled = True  # Parallel calls and prefetch buffers sized at run time.
  opts.experimental_optimization.map_parallelization = True
  # A pool of its own, one thread per core, rather than the process-wide inter-op pool.
  opts.threading.private_threadpool_size = host_threads()
  # Parallelism comes from decoding many images at once (map()), not from threads inside one op
  # (kept from before: on the shared 2-core machine the alternatives could not be told apart,
  # benchmarks/RESULTS.md, "Input pipeline").
  opts.threading.max_intra_op_parallelism = 1
  return ds.with_options(opts)
