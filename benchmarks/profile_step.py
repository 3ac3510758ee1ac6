"""Where a JAX train step's time goes, per XLA operation, from a `jax.profiler` trace.

  python benchmarks/profile_step.py --model=CifarResNet20 --batch=128 [--no_cpu_conv_vjp]

Compiles the same train step as `throughput.py` (same flags), traces `--steps` steps, and prints
the share of the traced op time taken by each kind of XLA op (the HLO name with its numeric suffix
removed: `convolution`, `dot`, `transpose_copy_fusion`, `while`...) and the slowest single ops.
Times are summed over XLA's threads, so shares, not absolute times, are what to compare.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import throughput  # noqa: E402
from incres import errors, ops  # noqa: E402


def _op_events(trace_dir: str) -> list[dict]:
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  # XLA:CPU's per-op events carry the HLO instruction name; host-side Python/runtime events
  # (PjRt, jit dispatch) do not have an "hlo_op" argument.
  return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def main(argv: list[str] | None = None) -> None:
  args = throughput.parse_args(argv, prog="python benchmarks/profile_step.py", description=__doc__)
  args.skip_infer = True
  if args.no_cpu_conv_vjp:
    ops.set_cpu_conv_vjp(False)
  _, steps = throughput.setup_jax(args, *throughput.synthetic_batch(args))
  step, _ = steps["train"]
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        step()
    events = _op_events(trace_dir)
  if not events:
    raise SystemExit("The trace holds no XLA op events (this jax version names them otherwise).")
  by_kind: dict[str, float] = collections.defaultdict(float)
  by_op: dict[str, float] = collections.defaultdict(float)
  for e in events:
    name = e["args"]["hlo_op"]
    by_kind[re.sub(r"[._]?\d+$", "", name)] += e["dur"]
    by_op[name] += e["dur"]
  total = sum(by_kind.values())
  print(
      f"{args.model}, batch {args.batch}, {args.steps} steps, cpu_conv_vjp="
      f"{ops.cpu_conv_vjp_enabled()}: {total / 1e3 / args.steps:.0f} ms of op time per step"
  )
  for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1])[:15]:
    print(f"  {100 * t / total:5.1f}%  {kind}")
  print("slowest ops:")
  for name, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]:
    print(f"  {100 * t / total:5.1f}%  {t / 1e3 / args.steps:7.2f} ms  {name}")


if __name__ == "__main__":
  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
