r"""Images/s of `launch.py`'s own training loop on fake ImageNet-sized JPEGs, next to the model alone.

  python benchmarks/end_to_end.py --config=experiments/resnet_imagenet.py --batch=256 \
      --dtype=bfloat16 --steps=50 --json                                    # on a GPU
  python benchmarks/end_to_end.py --config=experiments/googlenet.py --batch=8 --steps=5 --warmup=2

Three measurements of the same model, batch and dtype, one after the other:
- loop: `python launch.py --config=CONFIG:dataset=fake` in a subprocess, exactly as a user runs
  it (input pipeline with its JPEG decoding and augmentation, host-to-device copies, device
  prefetch, the jitted step, metrics, logging), for `--warmup` + `--steps` steps in a fresh
  workdir. Its rate is the loop's own: `train/images_per_sec` in `metrics.jsonl`, logged every
  `--warmup` steps, is timed from the end of the first step (compilation excluded); the logs at
  step `--warmup` and at the last step give the time of the last `--steps` steps. Evaluation and
  the checkpoint come only after the last step (one evaluation batch), outside the timed steps.
- model: the same network (`incres.state.create_model` of the config) timed by
  `benchmarks/throughput.py`'s code (its `setup_jax` / `time_steps`: the median of `--steps`
  SGD-with-momentum steps on a fixed batch kept on the device), i.e. no input pipeline and no
  host-to-device copies: the rate the accelerator could train at if it were always fed (for
  GoogLeNet with its colour distortions, and ResNet with its crop resampling, on the accelerator
  (config `photometric`, `resample`: "auto" puts them there on a GPU or TPU), without their share
  of the step; the result's `photometric_on_device` and `resample_on_device` say where they ran).
- model with preprocess: only when the config leaves such work to the train step: the same, from
  one batch of the real input pipeline kept on the device, its share of the augmentation included
  (`incres.data.device_preprocess`).
- input: the config's training input pipeline alone (`incres.data.create_train_iter`), `--steps`
  batches after `--warmup`.

The run is input-bound when the input pipeline alone is slower than the model alone (with its
share of the augmentation, where the train step has one); the loop's
rate over the model's says how much of the model's speed a real run keeps (on a CPU the pipeline
and the model share the cores, so the loop is slower than either). `fake` images are 375x500
JPEGs for the ImageNet configs (their `dataset=fake` setting; `--fake_image_shape` changes it).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402  (benchmarks/ is not a package)
from incres import cli, configs, errors, metrics, runtime  # noqa: E402

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch.py")


def parse_args(argv: Sequence[str] | None = None) -> flags.FlagValues:
  """The benchmark's flags, parsed from `argv` (default: sys.argv)."""
  args = flags.FlagValues()
  flags.DEFINE_string(
      "config",
      None,
      "experiments/<name>.py[:arg] taking dataset=fake (googlenet.py, resnet_imagenet.py, ...).",
      required=True,
      flag_values=args,
  )
  flags.DEFINE_integer("batch", None, "Global batch size; default: the config's.", flag_values=args)
  flags.DEFINE_enum(
      "dtype",
      None,
      ["float32", "bfloat16"],
      "Compute dtype; default: the config's.",
      flag_values=args,
  )
  flags.DEFINE_integer("steps", 50, "Timed steps (after the warm-up).", flag_values=args)
  flags.DEFINE_integer(
      "warmup", 10, "Untimed steps first (the first one compiles).", flag_values=args
  )
  flags.DEFINE_list(
      "fake_image_shape", None, "H,W,C of the fake JPEGs; default: the config's.", flag_values=args
  )
  flags.DEFINE_string(
      "workdir",
      None,
      "The loop's workdir (must not exist or be empty; kept); default: a temporary one, deleted.",
      flag_values=args,
  )
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=args)
  prog = "python benchmarks/end_to_end.py"
  cli.parse(args, argv, prog=prog, description=__doc__)
  if args.steps < 1 or args.warmup < 1:
    raise cli.UsageError("--steps and --warmup must be at least 1 (the first step compiles)", prog)
  if args.batch is not None and args.batch < 1:
    raise cli.UsageError(f"--batch={args.batch} must be at least 1", prog)
  return args


def _overrides(args: flags.FlagValues, config) -> dict[str, Any]:
  """The config keys this benchmark sets, for the subprocess's `--config.KEY=VALUE` flags."""
  total = args.warmup + args.steps
  out = {
      "dataset": "fake",
      "batch_size": args.batch or config.batch_size,
      "dtype": args.dtype or config.dtype,
      "num_train_steps": total,
      "log_every_steps": args.warmup,
      # Evaluation (one batch) and the checkpoint only at the end, after the timed steps.
      "eval_every_steps": total,
      "checkpoint_every_steps": total,
  }
  out["eval_batch_size"] = out["fake_num_eval"] = out["batch_size"]
  if args.fake_image_shape:
    out["fake_image_shape"] = tuple(int(v) for v in args.fake_image_shape)
  return out


def load_config(args: flags.FlagValues) -> tuple[str, Any]:
  """(the `--config` value launch.py gets, the config with the benchmark's settings).

  The config's own `dataset=fake` variant where its argument takes `dataset` (the experiments
  size the fake images and classes like the real data there), else `--config.dataset=fake`.
  """
  spec = args.config
  config = configs.load(spec)
  if config.dataset != "fake":
    path, _, arg = spec.partition(":")
    if "dataset=" in arg:
      raise errors.ConfigError(
          f"--config={spec} trains on {config.dataset!r}; this benchmark times the fake dataset"
          " only: leave `dataset` out of the config argument."
      )
    fake_spec = f"{path}:{arg},dataset=fake" if arg else f"{path}:dataset=fake"
    try:
      config, spec = configs.load(fake_spec), fake_spec
    except errors.ConfigError:  # Its argument takes no `dataset`: the override below sets it.
      pass
  config.update(_overrides(args, config))
  return spec, config


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise errors.UserError(
        f"--workdir={workdir} exists and is not empty; launch.py would resume the run in it and"
        " the benchmark would time the wrong steps. Name a new directory (or leave --workdir out"
        " for a temporary one)."
    )


def run_loop(args: flags.FlagValues, spec: str, config, workdir: str) -> dict[str, Any]:
  """Runs launch.py in a subprocess; returns the loop's rate from its metrics.jsonl."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):  # As configs.load: relative to the current directory, else the repo.
    path = os.path.join(os.path.dirname(LAUNCH), path)
  command = [
      sys.executable,
      LAUNCH,
      f"--config={os.path.abspath(path)}" + (f":{arg}" if arg else ""),
      f"--workdir={workdir}",
      "--jax_cache_dir=",  # Every run compiles afresh; compilation is not timed anyway.
  ]
  for key, value in _overrides(args, config).items():
    value = "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else value
    command.append(f"--config.{key}={value}")
  t0 = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
    raise RuntimeError(f"launch.py failed (exit status {proc.returncode}):\n{tail}")
  rows = {r["step"]: r for r in metrics.read_metrics(workdir) if "train/images_per_sec" in r}
  warmup, total, batch = args.warmup, config.num_train_steps, config.batch_size
  if total not in rows or (warmup > 1 and warmup not in rows):
    raise RuntimeError(f"launch.py logged no images/s at steps {warmup} and {total}: {rows}")
  # images_per_sec at a log step is the rate since the end of step 1 (the loop starts timing after
  # the compiling step and restarts only after an evaluation or a save, none of which happens
  # before the last step here), so the time since then is (step - 1) * batch / rate.
  elapsed = (total - 1) * batch / rows[total]["train/images_per_sec"]
  if warmup > 1:
    elapsed -= (warmup - 1) * batch / rows[warmup]["train/images_per_sec"]
  return {
      "loop_img_per_s": args.steps * batch / elapsed,
      "loop_step_s": elapsed / args.steps,
      "loop_process_wall_s": wall,
  }


def run_input(config, placement, warmup: int, steps: int) -> tuple[float, dict[str, Any]]:
  """Images/s of the training input pipeline alone (host side: decode, augment, batch, leaving
  to the train step what `placement` says), and its last batch."""
  from incres import data  # pylint: disable=g-import-not-at-top  (TensorFlow)

  it = data.create_train_iter(config, where=placement)
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  count = 0
  for _ in range(steps):
    batch = next(it)
    count += len(batch["label"])
  return count / (time.perf_counter() - t0), batch


def run_model(
    args: flags.FlagValues,
    config,
    batch: dict[str, Any] | None = None,
    placement: Any = None,
    prefix: str = "model",
) -> dict[str, Any]:
  """The same model, batch and dtype timed by throughput.py's code (no input pipeline).

  With `batch` (a batch of the pipeline that leaves work to the train step, as `placement`, the
  run's `data.decide_placement`, says), the step starts from it, on the device, and runs
  `data.device_preprocess(config, placement)` first: the model with its share of the
  augmentation. Keys start with `prefix`."""
  from incres import data, state  # pylint: disable=g-import-not-at-top

  bench = throughput.parse_args(
      [
          f"--model={config.model}",
          f"--batch={config.batch_size}",
          f"--image_size={config.image_size}",
          f"--num_classes={config.num_classes}",
          f"--dtype={config.dtype}",
          f"--steps={args.steps}",
          f"--warmup={args.warmup}",
          "--skip_infer",
      ]
  )
  images, labels = throughput.synthetic_batch(bench)
  preprocess = None
  if batch is not None:
    images = {k: v for k, v in batch.items() if k != "label"}
    labels, preprocess = batch["label"], data.device_preprocess(config, placement)
  model = state.create_model(config)
  measured, steps = throughput.setup_jax(
      bench, images, labels, model=model, preprocess=preprocess, placement=placement
  )
  t = statistics.median(throughput.time_steps(steps, args.steps)["train"])
  out = {f"{prefix}_img_per_s": config.batch_size / t, f"{prefix}_step_s": t}
  out[f"{prefix}_compile_s"] = measured["compile_s"]
  if "peak_device_gib" in measured:
    out[f"{prefix}_peak_device_gib"] = measured["peak_device_gib"]
  return out


def run(args: flags.FlagValues) -> dict[str, Any]:
  """The whole benchmark; returns the result dict printed by `main`."""
  spec, config = load_config(args)
  if args.workdir:
    _check_workdir(args.workdir)
  workdir = args.workdir or tempfile.mkdtemp(prefix="incres-end-to-end-")
  result: dict[str, Any] = {
      "config": spec,
      "model": config.model,
      "batch": config.batch_size,
      "dtype": config.dtype,
      "image_size": config.image_size,
      "fake_image_shape": list(config.fake_image_shape or (config.image_size,) * 2 + (3,)),
      "steps": args.steps,
      "warmup": args.warmup,
      "cpu": throughput.cpu_name(),
      "cpu_count": os.cpu_count(),
      "load_avg": list(os.getloadavg()),
      "workdir": os.path.abspath(workdir) if args.workdir else None,
  }
  try:
    # The loop first, while this process holds no accelerator memory.
    result.update(run_loop(args, spec, config, workdir))
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  runtime.setup_jax(None)  # TensorFlow off the accelerators, as launch.py does.
  import jax  # pylint: disable=g-import-not-at-top

  from incres import data  # pylint: disable=g-import-not-at-top

  config = configs.resolve_config(config, data.dataset_info(config))
  placement = data.decide_placement(config)  # Once, as the training loop does.
  result["photometric_on_device"] = placement.photometric
  result["resample_on_device"] = placement.resample
  result["input_img_per_s"], batch = run_input(config, placement, args.warmup, args.steps)
  result.update(run_model(args, config))
  if placement.on_device:  # The model with its share of the augmentation.
    result.update(run_model(args, config, batch, placement, prefix="model_with_preprocess"))
  result.update(
      {
          "backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind,
          "jax_version": jax.__version__,
          "num_classes": config.num_classes,
      }
  )
  result["loop_fraction_of_model"] = result["loop_img_per_s"] / result["model_img_per_s"]
  if "model_with_preprocess_img_per_s" in result:
    result["loop_fraction_of_model_with_preprocess"] = (
        result["loop_img_per_s"] / result["model_with_preprocess_img_per_s"]
    )
  # Against the step the loop runs: with its share of the augmentation where it has one.
  model = result.get("model_with_preprocess_img_per_s", result["model_img_per_s"])
  result["input_bound"] = result["input_img_per_s"] < model
  result["load_avg_end"] = list(os.getloadavg())
  return result


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  result = run(args)
  if args.json:
    print(json.dumps(result))
    return
  width = max(map(len, result))
  for k, v in result.items():
    print(f"{k:<{width}}  {throughput.format_value(v)}")
  bound = "input-bound" if result["input_bound"] else "not input-bound (the model is slower)"
  print(
      f"\nloop {result['loop_img_per_s']:.4g} img/s = {result['loop_fraction_of_model']:.1%} of"
      f" the model alone ({result['model_img_per_s']:.4g}); input pipeline alone"
      f" {result['input_img_per_s']:.4g}: {bound}."
  )


if __name__ == "__main__":
  runtime.setup_process()  # Before TensorFlow is first imported.
  errors.run(main)  # A flag or config error: its message and exit status 2, no traceback.
