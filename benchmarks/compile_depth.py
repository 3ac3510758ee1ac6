r"""Compile time and peak host memory of the training step, by depth, in both ResNet layouts.

  python benchmarks/compile_depth.py                      # the table in benchmarks/RESULTS.md
  python benchmarks/compile_depth.py --cases=CifarResNet1202:remat --steps=2

Every case runs in its own subprocess (a fresh XLA, so one case's compile cache or memory does not
help or hurt another), through the training loop's own pieces: the experiment's config
(`experiments/resnet_cifar.py:depth=N`, `experiments/resnet_imagenet.py:depth=152`) in the case's
layout (`MODEL:unrolled`: `scan_blocks=False`; `MODEL:scan`: `scan_blocks=True`; `MODEL:remat`:
both `scan_blocks` and `remat_blocks`), `incres.state.create_train_state` (the jitted init) and
the train step that `incres.train` jits (SGD with momentum, weight decay, BN statistics, metrics),
compiled ahead of time for the batch. Per case: the init's time (compile and run), the train
step's compile time, the child's peak resident memory (`os.wait4`'s `ru_maxrss`, the whole
process: Python, XLA and the arrays), and the time of `--steps` train steps (the fastest).

CIFAR nets use the paper's batch of 128 at 32 px; ResNet-152 a batch of 8 at 224 px (a CPU-sized
batch: the compile is what is measured, and it does not depend much on the batch). The unscanned
CifarResNet1202 is left out by default: its train step's compile grew past 24 GiB of host memory
(issue #15); `--cases=CifarResNet1202:unrolled` runs it anyway. `CifarResNet1202:scan` (without
remat) was killed by the OOM killer at 18.8 GiB on a 24 GiB machine, so it is left out too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

GiB = 2.0**30
DEFAULT_CASES = (
    "CifarResNet1202:remat",
    "CifarResNet20:unrolled",
    "CifarResNet20:scan",
    "CifarResNet20:remat",
    "CifarResNet56:unrolled",
    "CifarResNet56:scan",
    "CifarResNet110:unrolled",
    "CifarResNet110:scan",
    "ResNet152:unrolled",
    "ResNet152:scan",
)


def _config(model: str, scan: bool, batch: int | None, remat: bool | None = None):
  """The experiment's config for `model`, resolved for a fake dataset of the paper's shapes."""
  from incres import configs, data  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  if model.startswith("Cifar"):
    from experiments import resnet_cifar  # pylint: disable=g-import-not-at-top

    if model.startswith("CifarPreActResNet"):
      c = resnet_cifar.get_config(
          f"preact=True,depth={model.removeprefix('CifarPreActResNet')},dataset=fake"
      )
    else:
      c = resnet_cifar.get_config(f"depth={model.removeprefix('CifarResNet')},dataset=fake")
    info = data.DatasetInfo("fake", 10, 50_000, 10_000, (32, 32, 3), ())
  else:
    from experiments import resnet_imagenet  # pylint: disable=g-import-not-at-top

    c = resnet_imagenet.get_config(f"depth={model.removeprefix('ResNet')},dataset=fake")
    c.batch_size = 8
    info = data.DatasetInfo("fake", 1000, 1_281_167, 50_000, (224, 224, 3), ())
  if batch is not None:
    c.batch_size = batch
  c.model_kwargs.scan_blocks = scan
  if remat is not None or not scan:
    c.model_kwargs.remat_blocks = bool(remat) and scan
  return configs.resolve_config(c, info)


def measure_one(model: str, layout: str, steps: int, batch: int | None) -> dict:
  """Runs in the child: init, compile and time the train step of one case."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from incres import state as state_lib  # pylint: disable=g-import-not-at-top
  from incres import train  # pylint: disable=g-import-not-at-top

  scan = layout != "unrolled"
  config = _config(model, scan, batch, {"scan": False, "remat": True}.get(layout))
  mesh = state_lib.create_mesh()
  model_def = state_lib.create_model(config)
  lr_fn = state_lib.create_learning_rate_fn(config)
  tx = state_lib.create_optimizer(config, lr_fn)
  out = {"model": model, "layout": layout, "batch": config.batch_size}
  print(json.dumps(out), file=sys.stderr, flush=True)  # Progress, for a child that gets killed.

  t0 = time.perf_counter()
  state = state_lib.create_train_state(config, model_def, tx, mesh)
  jax.block_until_ready(state)
  out["init_s"] = time.perf_counter() - t0
  print(json.dumps(out), file=sys.stderr, flush=True)
  out["params"] = int(sum(p.size for p in jax.tree.leaves(state.params)))

  sharding = jax.tree.map(lambda a: a.sharding, state)
  p_train_step, _ = train.jit_steps(config, model_def, tx, lr_fn, sharding, mesh)
  rng = np.random.default_rng(0)
  size = config.image_size
  batch_np = {
      "image": rng.standard_normal((config.batch_size, size, size, 3), np.float32),
      "label": rng.integers(0, config.num_classes, (config.batch_size,), np.int32),
  }
  t0 = time.perf_counter()
  compiled = p_train_step.lower(state, batch_np).compile()
  out["compile_s"] = time.perf_counter() - t0
  print(json.dumps(out), file=sys.stderr, flush=True)

  times = []
  for _ in range(steps):  # Compiled ahead of time: the first call does no tracing or compiling.
    t0 = time.perf_counter()
    state, metrics = compiled(state, jax.device_put(batch_np))
    loss = float(metrics["loss"])
    times.append(time.perf_counter() - t0)
  out["step_s"] = min(times) if times else None
  out["step_times_s"] = [round(t, 3) for t in times]
  out["loss_finite"] = bool(np.isfinite(loss))
  return out


def run_case(case: str, steps: int, batch: int | None, timeout: float) -> dict:
  """Runs one case in a subprocess; adds its peak RSS (of that child alone) and wall time."""
  model, layout = case.split(":")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", case, f"--steps={steps}"]
  if batch is not None:
    cmd.append(f"--batch={batch}")
  with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
    status = None
    while status is None:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid == 0:
        status = None
        if time.perf_counter() - t0 > timeout:
          proc.kill()
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout.seek(0)
    lines = [l for l in stdout.read().splitlines() if l.startswith("{")]
    stderr.seek(0)
    progress = [l for l in stderr.read().splitlines() if l.startswith("{")]
  # A child killed (e.g. out of memory) still reports the phases it finished.
  out = json.loads((lines or progress)[-1]) if lines or progress else {"model": model}
  out["peak_rss_gib"] = round(usage.ru_maxrss * 1024 / GiB, 2)  # Linux: KiB.
  out["wall_s"] = round(time.perf_counter() - t0, 1)
  out["returncode"] = proc.returncode
  return out


def main(argv: list[str] | None = None) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  from incres import cli  # pylint: disable=g-import-not-at-top

  args = flags.FlagValues()
  flags.DEFINE_string(
      "cases", ",".join(DEFAULT_CASES), "MODEL:unrolled|scan|remat, ...", flag_values=args
  )
  flags.DEFINE_integer(
      "steps", 1, "Timed train steps (the fastest reported).", lower_bound=0, flag_values=args
  )
  flags.DEFINE_integer(
      "batch", None, "Default: 128 (CIFAR), 8 (ResNet-152).", lower_bound=1, flag_values=args
  )
  flags.DEFINE_float("timeout", 1800, "Seconds per case.", flag_values=args)
  flags.DEFINE_string(
      "child", None, "(internal) Measure one case in this process.", flag_values=args
  )
  cli.parse(args, argv, prog="python benchmarks/compile_depth.py", description=__doc__)
  if args.child:
    model, layout = args.child.split(":")
    print(json.dumps(measure_one(model, layout, args.steps, args.batch)), flush=True)
    return
  print(f"# load average before: {os.getloadavg()}", flush=True)
  for case in args.cases.split(","):
    result = run_case(case, args.steps, args.batch, args.timeout)
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  from incres import errors  # pylint: disable=g-import-not-at-top

  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
