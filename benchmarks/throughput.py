"""Training and inference throughput of an incres model and of its PyTorch twin, each alone.

  python benchmarks/throughput.py --model=ResNet50 --batch=32
  python benchmarks/throughput.py --model=ResNet50 --batch=32 --vs_torch --rounds=3 --json
  python benchmarks/throughput.py --model=ResNet50 --batch=256 --dtype=bfloat16 --vs_torch \
      --rounds=1 --torch_compile --steps=20 --warmup=5 --json   # on a GPU

Prints images/s for one step of the training loop, `incres.train.train_step` (forward, backward, BN
statistics, the metrics; here SGD with momentum and weight decay, GoogLeNet's auxiliary losses
weighted 0.3), and for inference, each the median of `--steps` timed steps after `--warmup`
untimed ones; the compile time of each jitted function; peak host memory (and device memory on an
accelerator); and the achieved FLOP/s (XLA's cost analysis of the lowered step over the median step
time) as a fraction of a large matmul in the same dtype timed in the same run. The batch is put on the device once and reused (`--input=device`, the default:
the model's own rate, as synthetic-data benchmarks report it), or copied from host memory before
every step, synchronously (`--input=host`; the training loop overlaps that copy with the previous
step, `incres.train.DevicePrefetch`, so this is a lower bound). On an H200 the synchronous copy of
ResNet-50's float32 batch of 256 took 3,948 images/s down from 6,439 (benchmarks/RESULTS.md).

`--side=torch` times the torch twin of the same architecture (benchmarks/torch_twins.py) instead
of JAX, on CUDA if torch sees a GPU; with `--torch_compile` the twin is wrapped in
`torch.compile` (its compile time is reported apart). `--vs_torch` measures both sides honestly:
each in its own process (this script with `--side=jax`, then `--side=torch`, then, with
`--torch_compile`, the compiled twin), alternating A B A B for `--rounds` rounds on the same
machine, and prints the medians of each side over the rounds, the JAX/torch ratios of those
medians and each round's ratio, with the CPU's name and the load average when each process
started. Timing the two frameworks step by step in one process, as this script used to, distorts
both (their thread pools compete, and each evicts the other's caches): on an idle 2-core machine
it cut JAX's ResNet-50 training from 7.47 to 4.82 images/s and torch's inference from 31.5 to 19.1
(benchmarks/RESULTS.md).
`--mixing` times the train step with mixup and CutMix of its batch (incres.mixing: torchvision's
2021 recipe, alphas 0.2 and 1.0, either one each step); `--vs_mixing` times the JAX train step
without and with it, each in its own process, alternating for `--rounds` rounds, and prints the
medians' ratio (mixing / plain step time) and each round's.
`--no_cpu_conv_vjp` measures XLA's own convolution and max-pool gradients (incres.ops documents
the custom ones; on a GPU only the max pools' differs). `--cache_dir` turns on JAX's persistent
compilation cache: run twice to measure a second launch's compile time. Needs no TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from incres import cli, errors, models, ops

GiB = 2.0**30


def parse_args(
    argv: Sequence[str] | None = None,
    prog: str = "python benchmarks/throughput.py",
    description: str = __doc__,
) -> flags.FlagValues:
  """The benchmark's flags (also `profile_step.py`'s), parsed from `argv` (default: sys.argv)."""
  args = flags.FlagValues()
  flags.DEFINE_enum("model", "CifarResNet20", sorted(models.MODELS), "The model.", flag_values=args)
  flags.DEFINE_integer("batch", 32, "Images per step.", flag_values=args)
  flags.DEFINE_integer("image_size", None, "default: the model's design size", flag_values=args)
  flags.DEFINE_integer("num_classes", None, "default: 10 at 32 px, else 1000", flag_values=args)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.", flag_values=args)
  flags.DEFINE_integer("steps", 5, "timed steps (the median is reported)", flag_values=args)
  flags.DEFINE_integer("warmup", 2, "untimed steps after compiling", flag_values=args)
  flags.DEFINE_enum(
      "side", "jax", ["jax", "torch"], "Which framework this process times.", flag_values=args
  )
  flags.DEFINE_bool(
      "vs_torch",
      False,
      "Time JAX and the torch twin, each in its own process, alternating for --rounds rounds.",
      flag_values=args,
  )
  flags.DEFINE_integer(
      "rounds", 3, "A/B rounds of --vs_torch (medians are reported)", flag_values=args
  )
  flags.DEFINE_bool(
      "torch_compile",
      False,
      "Wrap the torch twin in torch.compile (--vs_torch: a third process each round).",
      flag_values=args,
  )
  flags.DEFINE_enum(
      "input",
      "device",
      ["device", "host"],
      "device: the batch is put on the accelerator once and every step reuses it (the model's "
      "own rate); host: every step first copies its batch from host memory, synchronously.",
      flag_values=args,
  )
  flags.DEFINE_bool(
      "mixing",
      False,
      "The train step mixes its batch: mixup (alpha 0.2) or CutMix (alpha 1.0), as drawn.",
      flag_values=args,
  )
  flags.DEFINE_bool(
      "vs_mixing",
      False,
      "Time the JAX train step without and with --mixing, each in its own process, alternating"
      " for --rounds rounds.",
      flag_values=args,
  )
  flags.DEFINE_bool("skip_infer", False, "Time the training step only.", flag_values=args)
  flags.DEFINE_bool("no_cpu_conv_vjp", False, "XLA's own conv gradients", flag_values=args)
  flags.DEFINE_string(
      "cache_dir", None, "JAX persistent compilation cache directory", flag_values=args
  )
  flags.DEFINE_bool("json", False, "print one JSON object instead of a table", flag_values=args)
  flags.DEFINE_float("width", None, "GoogLeNet width (tiny smoke runs)", flag_values=args)
  cli.parse(args, argv, prog=prog, description=description)
  if args.rounds < 1:
    raise cli.UsageError(f"--rounds={args.rounds} must be at least 1", prog)
  if args.vs_mixing and (args.vs_torch or args.side != "jax"):
    raise cli.UsageError("--vs_mixing times the JAX side alone: drop --vs_torch/--side", prog)
  return args


def matmul_peak_flops(dtype: Any = jnp.float32, steps: int = 5) -> float:
  """FLOP/s of a large square matmul in `dtype` on JAX's default device (the practical peak)."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype)
  f = jax.jit(jnp.dot)
  f(a, a).block_until_ready()
  t = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(steps))
  return 2 * n**3 / t


def _timed(fn: Callable[[], Any]) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _flops(lowered) -> float | None:
  """XLA's FLOP count of the lowered (not yet optimised) program.

  The unoptimised HLO counts every convolution and matmul on every backend; after compilation the
  GPU backend's convolutions are cuDNN custom calls that its cost analysis does not count.
  """
  try:
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost["flops"]) or None
  except Exception:  # pylint: disable=broad-except  (optional; not every backend has one)
    return None


def _max_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux: KiB.


def _batch(images: Any, labels: Any) -> dict[str, Any]:
  """What `incres.train.train_step` takes: the images (or the pipeline's batch) and the labels."""
  return (
      {**images, "label": labels}
      if isinstance(images, dict)
      else {"image": images, "label": labels}
  )


def setup_jax(
    args: flags.FlagValues,
    images: Any,
    labels: np.ndarray,
    model: Any = None,
    preprocess: Callable[[Any], jax.Array] | None = None,
    placement: Any = None,
) -> tuple[dict[str, Any], dict[str, tuple[Callable[[], None], float | None]]]:
  """Compiles and warms up the JAX train step and inference of `model` (default: `args.model`).

  With `preprocess`, `images` is a batch as the input pipeline leaves it to the train step (a
  dict, e.g. `{"image": ..., "resample": ...}`) and `preprocess(images)` (the config's
  `incres.data.device_preprocess` for its `placement`, `incres.data.decide_placement`, which
  the train step gets too) makes the model's input inside the jitted steps.
  Returns (measurements so far, {"train"/"infer": (step function, XLA's FLOPs per step)}).
  """
  prepare = preprocess or (lambda x: x)
  if model is None:
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    kwargs = {"num_classes": args.num_classes, "dtype": dtype}
    if args.width is not None:
      kwargs["width"] = args.width
    model = models.get_model(args.model, **kwargs)
  first = jax.tree.map(lambda a: jnp.asarray(a[:1]), images)
  variables = jax.jit(lambda: model.init(jax.random.key(0), prepare(first), train=False))()
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  # incres.train needs ml_collections (its state and configs): imported here, not with the module,
  # so that the torch side runs without it.
  from incres import mixing, state as state_lib, train  # pylint: disable=g-import-not-at-top

  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=None,
      ema_batch_stats=None,
      polyak_params=None,
      rng=jax.random.key_data(jax.random.key(1)),
  )
  # The training loop's own step: the loss, the auxiliary losses weighted 0.3, its metrics.
  train_step = functools.partial(
      train.train_step,
      model=model,
      tx=tx,
      learning_rate_fn=optax.constant_schedule(0.1),
      aux_loss_weight=0.3,
      label_smoothing=0.0,
      ema_decay=None,
      preprocess=preprocess,
      placement=placement,
      mixing=mixing.Mixing(mixup_alpha=0.2, cutmix_alpha=1.0) if args.mixing else None,
  )

  def infer(variables, x):
    return model.apply(variables, prepare(x), train=False)[0]

  out: dict[str, Any] = {"params": int(sum(p.size for p in jax.tree.leaves(params)))}
  x, y = jax.tree.map(jnp.asarray, images), jnp.asarray(labels)
  t0 = time.perf_counter()
  lowered = jax.jit(train_step, donate_argnums=0).lower(state, _batch(x, y))
  train = lowered.compile()
  out["compile_s"] = time.perf_counter() - t0
  train_flops = _flops(lowered)

  if args.input == "device":  # Copied once: `device_put` below is then a no-op.
    images, labels = jax.device_put(images), jax.device_put(labels)

  def step():
    nonlocal state
    xb, yb = jax.device_put(images), jax.device_put(labels)  # --input=host: from host memory.
    state, metrics = train(state, _batch(xb, yb))
    metrics["loss"].block_until_ready()

  steps = {"train": (step, train_flops)}
  if not args.skip_infer:
    params, batch_stats = state.params, state.batch_stats
    variables = (
        {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    )
    variables = jax.tree.map(jnp.copy, variables)  # The train step donates (deletes) `state`.
    t0 = time.perf_counter()
    lowered = jax.jit(infer).lower(variables, x)
    infer_c = lowered.compile()
    out["infer_compile_s"] = time.perf_counter() - t0
    steps["infer"] = (
        lambda: infer_c(variables, jax.device_put(images)).block_until_ready(),
        _flops(lowered),
    )
  for _ in range(args.warmup):
    for fn, _ in steps.values():
      fn()
  out["peak_host_gib"] = _max_rss_gib()
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_device_gib"] = stats["peak_bytes_in_use"] / GiB
  return out, steps


def setup_torch(args: flags.FlagValues, images: np.ndarray, labels: np.ndarray):
  """The torch twin's train step and inference, warmed up, as `setup_jax` returns them.

  With `args.torch_compile` the twin is wrapped in `torch.compile` (the optimizer step stays
  eager) and the measurements' keys start with `torch_compile_` instead of `torch_`.
  """
  import torch  # Only the torch side needs torch.

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_twins

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  twin = torch_twins.torch_twin(args.model, args.num_classes).to(device)
  if device.type == "cuda":  # The usual fast settings on a GPU (NVIDIA's ResNet-50 recipe's).
    twin = twin.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
  model = torch.compile(twin) if args.torch_compile else twin
  autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bfloat16")
  opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

  def copy():
    return (
        torch.from_numpy(images_nchw).to(device, non_blocking=True, memory_format=memory_format),
        torch.from_numpy(labels).long().to(device, non_blocking=True),
    )

  batch = copy
  if args.input == "device":  # Copied once, reused by every step.
    resident = copy()
    batch = lambda: resident

  def step():
    x, y = batch()
    opt.zero_grad(set_to_none=True)
    with autocast:
      logits, aux = torch_twins.split_outputs(model(x))
      loss = torch.nn.functional.cross_entropy(logits.float(), y)
      for a in aux:
        loss = loss + 0.3 * torch.nn.functional.cross_entropy(a.float(), y)
    loss.backward()
    opt.step()
    sync()

  def infer():
    with torch.inference_mode(), autocast:
      model(batch()[0])
    sync()

  def train_mode(fn, training):
    def run():
      model.train(training)
      fn()

    return run

  prefix = "torch_compile_" if args.torch_compile else "torch_"
  steps = {"train": (train_mode(step, True), None)}
  if not args.skip_infer:
    steps["infer"] = (train_mode(infer, False), None)
  out: dict[str, Any] = {}
  for kind, (fn, _) in steps.items():  # The first call compiles under torch.compile.
    out[f"{prefix}first_{kind}_step_s"] = _timed(fn)
  for _ in range(args.warmup):
    for fn, _ in steps.values():
      fn()
  out.update(
      {
          "torch_params": torch_twins.num_params(twin),
          "torch_version": torch.__version__,
          "torch_device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
          "torch_threads": torch.get_num_threads(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      }
  )
  if device.type == "cuda":
    out["torch_peak_device_gib"] = torch.cuda.max_memory_allocated() / GiB
  return out, steps


def synthetic_batch(args: flags.FlagValues) -> tuple[np.ndarray, np.ndarray]:
  """A fixed random batch at the model's size; fills in `args.num_classes` if unset."""
  size = args.image_size or models.MODELS[args.model]
  args.num_classes = args.num_classes or (10 if size <= 64 else 1000)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, size, size, 3), np.float32)
  return images, rng.integers(0, args.num_classes, args.batch).astype(np.int32)


def time_steps(
    steps: dict[str, tuple[Callable[[], None], float | None]], n: int
) -> dict[str, list[float]]:
  """Seconds of each of `n` calls of every step function, the kinds alternating call by call."""
  times: dict[str, list[float]] = {kind: [] for kind in steps}
  for _ in range(n):
    for kind, (fn, _) in steps.items():
      times[kind].append(_timed(fn))
  return times


def cpu_name() -> str:
  """The CPU's model name as `lscpu` gives it (else the platform's processor string)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    out = ""
  for line in out.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "Model name":
      return value.strip()
  return platform.processor() or platform.machine()


def _machine(args: flags.FlagValues, size: int) -> dict[str, Any]:
  return {
      "model": args.model,
      "batch": args.batch,
      "image_size": size,
      "dtype": args.dtype,
      "input": args.input,
      "cpu": cpu_name(),
      "cpu_count": os.cpu_count(),
      "load_avg": list(os.getloadavg()),  # 1, 5 and 15 minutes, when the measurement started.
  }


def run_jax(args: flags.FlagValues) -> dict:
  """JAX's side alone: the result dict printed by `main` for `--side=jax`."""
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if args.no_cpu_conv_vjp:
    ops.set_cpu_conv_vjp(False)
  images, labels = synthetic_batch(args)
  result = _machine(args, images.shape[1])
  result.update(
      {
          "side": "jax",
          "backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind,
          "cpu_conv_vjp": ops.cpu_conv_vjp_enabled(),
          "max_pool_views": ops.max_pool_views_enabled(),
          "jax_version": jax.__version__,
          "mixing": args.mixing,
      }
  )
  peak = matmul_peak_flops(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  result["matmul_peak_tflop_per_s"] = peak / 1e12
  measured, steps = setup_jax(args, images, labels)
  result.update(measured)
  times = time_steps(steps, args.steps)
  for kind, (_, flops) in steps.items():
    t = statistics.median(times[kind])
    result[f"{kind}_img_per_s"] = args.batch / t
    result[f"{kind}_step_s"] = t
    if flops:
      result[f"{kind}_tflop_per_s"] = flops / t / 1e12
      result[f"{kind}_fraction_of_matmul_peak"] = flops / t / peak
  result["peak_host_gib_total"] = _max_rss_gib()
  return result


def run_torch(args: flags.FlagValues) -> dict:
  """The torch twin's side alone (eager, or compiled with `--torch_compile`)."""
  images, labels = synthetic_batch(args)
  result = _machine(args, images.shape[1])
  result["side"] = "torch_compile" if args.torch_compile else "torch"
  measured, steps = setup_torch(args, images, labels)
  result.update(measured)
  prefix = "torch_compile_" if args.torch_compile else "torch_"
  times = time_steps(steps, args.steps)
  for kind in steps:
    t = statistics.median(times[kind])
    result[f"{prefix}{kind}_img_per_s"] = args.batch / t
    result[f"{prefix}{kind}_step_s"] = t
  result["peak_host_gib_total"] = _max_rss_gib()
  return result


def run(args: flags.FlagValues) -> dict:
  """One side, in this process: the result dict printed by `main` without `--vs_torch`."""
  return run_torch(args) if args.side == "torch" else run_jax(args)


# The flags a side's process gets from the `--vs_torch` driver (its own are added).
_SIDE_FLAGS = (
    "model",
    "batch",
    "image_size",
    "num_classes",
    "dtype",
    "steps",
    "warmup",
    "input",
    "skip_infer",
    "no_cpu_conv_vjp",
    "cache_dir",
    "width",
)


def _run_side(args: flags.FlagValues, side: str) -> dict:
  """Runs this script for one side in a fresh process; returns its JSON result.

  `side`: "jax", "torch", "torch_compile", or "jax_mixing" (JAX with `--mixing`).
  """
  argv = [args[name].serialize() for name in _SIDE_FLAGS if args[name].value is not None]
  argv += [f"--side={'torch' if side.startswith('torch') else 'jax'}", "--json"]
  argv.append("--torch_compile" if side == "torch_compile" else "--notorch_compile")
  argv.append("--mixing" if side == "jax_mixing" else "--nomixing")
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True
  )
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"The {side} process failed (exit status {proc.returncode}):\n{tail}")
  return json.loads(lines[-1])


def _median_or_first(values: list[Any]) -> Any:
  """Measurements (floats): their median; descriptions and counts: the first round's."""
  return statistics.median(values) if all(isinstance(v, float) for v in values) else values[0]


def run_ab(args: flags.FlagValues) -> dict:
  """`--vs_torch`: each side in its own process, A B A B for `args.rounds` rounds; medians."""
  sides = ["jax", "torch"] + (["torch_compile"] if args.torch_compile else [])
  runs: dict[str, list[dict]] = {side: [] for side in sides}
  for r in range(args.rounds):
    for side in sides:
      runs[side].append(_run_side(args, side))
      rate = [v for k, v in runs[side][-1].items() if k.endswith("train_img_per_s")][0]
      print(f"round {r + 1}/{args.rounds}: {side} train {rate:.4g} img/s", file=sys.stderr)
  result: dict[str, Any] = {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup}
  for side in reversed(sides):  # JAX's machine description last: it wins.
    for key in runs[side][0]:
      if key not in ("load_avg", "side"):
        result[key] = _median_or_first([run[key] for run in runs[side]])
  result["load_avg"] = {side: [run["load_avg"] for run in runs[side]] for side in sides}
  for kind in ("train", "infer"):
    ours = [run.get(f"{kind}_img_per_s") for run in runs["jax"]]
    if None in ours:
      continue
    result[f"{kind}_img_per_s_rounds"] = ours
    for side in sides[1:]:
      theirs = [run[f"{side}_{kind}_img_per_s"] for run in runs[side]]
      result[f"{side}_{kind}_img_per_s_rounds"] = theirs
      name = f"{kind}_ratio_vs_{side}"
      result[name] = statistics.median(ours) / statistics.median(theirs)
      result[f"{name}_rounds"] = [a / b for a, b in zip(ours, theirs)]
  return result


def run_mixing_ab(args: flags.FlagValues) -> dict:
  """`--vs_mixing`: the JAX train step without and with mixing, each in its own process, A B A B
  for `args.rounds` rounds; the medians of the step times and their ratio."""
  runs: dict[str, list[dict]] = {"jax": [], "jax_mixing": []}
  for r in range(args.rounds):
    for side in runs:
      runs[side].append(_run_side(args, side))
      step_s = runs[side][-1]["train_step_s"]
      print(f"round {r + 1}/{args.rounds}: {side} train step {step_s:.4g} s", file=sys.stderr)
  result: dict[str, Any] = {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup}
  for key in runs["jax"][0]:
    if key not in ("load_avg", "side", "mixing") and not key.startswith("infer"):
      result[key] = _median_or_first([run[key] for run in runs["jax"]])
  plain = [run["train_step_s"] for run in runs["jax"]]
  mixed = [run["train_step_s"] for run in runs["jax_mixing"]]
  result["train_step_s_rounds"] = plain
  result["mixing_train_step_s"] = statistics.median(mixed)
  result["mixing_train_step_s_rounds"] = mixed
  result["mixing_step_ratio"] = statistics.median(mixed) / statistics.median(plain)
  result["mixing_step_ratio_rounds"] = [m / p for m, p in zip(mixed, plain)]
  result["load_avg"] = {side: [run["load_avg"] for run in runs[side]] for side in runs}
  return result


def format_value(v: Any) -> str:
  """One result value as the table prints it: floats to 4 significant digits, lists and dicts
  item by item."""
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, list):
    return "[" + ", ".join(map(format_value, v)) + "]"
  if isinstance(v, dict):
    return "; ".join(f"{k}: {format_value(x)}" for k, x in v.items())
  return str(v)


def main(argv: list[str] | None = None) -> None:
  # OpenMP's default (GNU: spin before sleeping) makes torch's threads burn their time slices
  # spinning whenever other processes share the cores; on a loaded 2-core machine it cut torch's
  # CIFAR ResNet-20 training 4-8x (RESULTS.md). Passive waiting is torch's best setting there.
  # XLA's thread pool does not use OpenMP. Takes effect only if torch is not loaded yet; an
  # OMP_WAIT_POLICY already in the environment wins.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  args = parse_args(argv)
  if args.side == "torch" and not args.vs_torch:
    # Nothing here should start JAX's GPU client; if something did, it must not take 75% of the
    # memory the torch twin needs.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.vs_mixing:
    result = run_mixing_ab(args)
  else:
    result = run_ab(args) if args.vs_torch else run(args)
  if args.json:
    print(json.dumps(result))
  else:
    width = max(map(len, result))
    for k, v in result.items():
      print(f"{k:<{width}}  {format_value(v)}")


if __name__ == "__main__":
  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
