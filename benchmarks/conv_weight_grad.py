"""GFLOP/s of one convolution's weight gradient: XLA's own, incres.ops', and PyTorch's.

  python benchmarks/conv_weight_grad.py            # the shapes of the benchmarked models
  python benchmarks/conv_weight_grad.py --shape=128,32,16,16,3,1

A shape is batch,size,in_channels,out_channels,kernel,stride (square maps and kernels, k // 2
padding). Each number is the median of `--steps` timed calls after two untimed ones; the three
implementations alternate call by call so that they see the same machine load. Also prints XLA's
forward convolution for scale. CPU only (the custom path is used only there).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # As throughput.py: see RESULTS.md.

from absl import flags  # noqa: E402
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from incres import cli, errors, ops  # noqa: E402

SHAPES = [
    (128, 32, 16, 16, 3, 1),  # CIFAR ResNet stage 1.
    (128, 32, 16, 32, 3, 2),  # Its first stride-2 conv.
    (128, 16, 32, 32, 3, 1),
    (128, 8, 64, 64, 3, 1),
    (32, 224, 3, 64, 7, 2),  # The ImageNet stems.
    (32, 56, 64, 64, 3, 1),  # ResNet-50 stage 1.
    (32, 28, 128, 128, 3, 1),
    (32, 14, 256, 256, 3, 1),
    (32, 7, 512, 512, 3, 1),
    (32, 56, 64, 192, 3, 1),  # GoogLeNet conv2.
    (32, 28, 96, 128, 3, 1),  # Inception 3a.
    (32, 28, 16, 32, 5, 1),
    (32, 14, 24, 64, 5, 1),  # 4b.
]
_DN = ("NHWC", "HWIO", "NHWC")


def _median_s(fn, steps):
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(shape, steps: int = 7) -> dict:
  n, size, cin, cout, k, s = shape
  pad = ((k // 2, k // 2),) * 2
  out = (size + 2 * (k // 2) - k) // s + 1
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, size, size, cin)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((n, out, out, cout)), jnp.float32)
  w = jnp.zeros((k, k, cin, cout), jnp.float32)

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=_DN)

  fns = {
      "xla_forward": jax.jit(conv),
      "xla": jax.jit(lambda x, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]),
      "incres": jax.jit(lambda x, g: ops.conv_weight_grad(x, g, (k, k), (s, s), pad)),
  }
  np.testing.assert_allclose(
      fns["incres"](x, g),
      fns["xla"](x, g),
      rtol=0,
      atol=1e-4 * float(jnp.abs(fns["xla"](x, g)).max()),
  )
  calls = {
      "xla_forward": lambda: fns["xla_forward"](x, w).block_until_ready(),
      "xla": lambda: fns["xla"](x, g).block_until_ready(),
      "incres": lambda: fns["incres"](x, g).block_until_ready(),
  }
  tx = (
      torch.from_numpy(np.array(x))
      .permute(0, 3, 1, 2)
      .contiguous(memory_format=torch.channels_last)
  )
  tg = (
      torch.from_numpy(np.array(g))
      .permute(0, 3, 1, 2)
      .contiguous(memory_format=torch.channels_last)
  )
  wshape = (cout, cin, k, k)
  calls["torch"] = lambda: torch.nn.grad.conv2d_weight(tx, wshape, tg, stride=s, padding=k // 2)
  times: dict[str, list[float]] = {name: [] for name in calls}
  with torch.no_grad():
    for fn in calls.values():
      fn(), fn()
    for _ in range(steps):
      for name, fn in calls.items():
        times[name].append(_median_s(fn, 1))
  flops = 2 * n * out * out * k * k * cin * cout
  return {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}


def _fmt(gflops: float) -> str:
  return f"{gflops:.0f}" if gflops >= 10 else f"{gflops:.2g}"


def main(argv: Sequence[str] | None = None) -> None:
  args = flags.FlagValues()
  flags.DEFINE_multi_string(
      "shape", None, "batch,size,cin,cout,kernel,stride (repeatable)", flag_values=args
  )
  flags.DEFINE_integer(
      "steps", 7, "Timed calls per number (the median is reported).", flag_values=args
  )
  cli.parse(args, argv, prog="python benchmarks/conv_weight_grad.py", description=__doc__)
  shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape else SHAPES
  print(
      "| batch, size, cin->cout, kernel/stride | XLA forward | XLA weight grad | incres weight grad "
      "| torch weight grad | incres / XLA | incres / torch |"
  )
  print("|---|---|---|---|---|---|---|")
  for shape in shapes:
    r = measure(shape, args.steps)
    n, size, cin, cout, k, s = shape
    gflops = " | ".join(_fmt(r[k]) for k in ("xla_forward", "xla", "incres", "torch"))
    print(
        f"| {n}, {size}, {cin}->{cout}, {k}x{k}/{s} | {gflops} | {r['incres'] / r['xla']:.2f} | "
        f"{r['incres'] / r['torch']:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
