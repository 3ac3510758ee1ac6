r"""python benchmarks/input_pipeline.py [--seconds=8] [--batch_size=64] [--rounds=3]

Images per second of each training augmentation and evaluation view on this machine, through
`incres.data.create_train_iter` / `create_eval_iter` exactly as training uses them: fake
ImageNet-sized photos (375×500 smooth-noise JPEGs) go through the real JPEG decode path; the CIFAR
recipe is measured on 32×32 images (fake JPEGs, and the in-memory digits of the quickstart).

Then, side by side (issue #15), alternating in rounds in this one process: the ResNet augmentation
and the centre evaluation view as they were before
(`resnet_augment.resnet_imagenet_train_reference`: decode all, resize all, crop) and as they are
(decode and resample only the crop), a plain tf.data pipeline on the same JPEGs (decode_jpeg of the
whole image, bilinear resize without antialiasing to a shorter side drawn in [256, 480], random 224
crop, flip), and GoogLeNet's augmentation with its photometric distortions on the host and left to
the accelerator (config `photometric`) and its resize too, and the ResNet augmentation with its
resampling left to the accelerator (config `resample`), and the floor under all of them: decoding
each whole JPEG and nothing else (`tf.io.decode_jpeg`); once per core (a child process pinned to one
core, so tf.data and TensorFlow have one thread's worth of CPU) and once on all cores. Medians over
the rounds. `--table=false --seconds=6` took 7 min 40 s on 2 cores (the default takes longer).
Compare with the accelerator's step rate to see whether the input pipeline keeps it fed.
`--decoders` also times libjpeg's other settings against the floor.

`--cases=auto_augment` times instead, side by side in the same way (issue #26), the ResNet
augmentation on the host against the modern ImageNet transform (`augment="random_resized_crop"`:
random-resized crop and flip) without a policy, with RandAugment (torchvision's N=2, M=9), with
TrivialAugment-Wide, with AutoAugment's ImageNet policy, and with RandAugment and random erasing
(p=0.25, per-pixel normal fill), and prints the host CPU time per image of each besides the rate
(on a machine others share, the rate follows their load, the CPU time much less); `--cases=all`
times both sets.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import flags
import tensorflow as tf

from incres import cli, configs, data, errors
from incres.data import decoding, eval_views, resnet_augment

IMAGENET_SHAPE = (375, 500, 3)

# (row name, config overrides, evaluation view?)
ROWS = (
    (
        "resnet_imagenet train",
        dict(augment="resnet_imagenet", image_size=224, resample="host"),
        False,
    ),
    (
        "resnet, resample on device",
        dict(augment="resnet_imagenet", image_size=224, resample="device"),
        False,
    ),
    (
        "googlenet train",
        dict(augment="googlenet", image_size=224, photometric="host", resample="host"),
        False,
    ),
    (
        "googlenet, colour on device",
        dict(augment="googlenet", image_size=224, photometric="device", resample="host"),
        False,
    ),
    (
        "googlenet, resize on device",
        dict(augment="googlenet", image_size=224, resample="device"),
        False,
    ),
    ("none (decode+resize)", dict(augment="none", image_size=224), False),
    (
        "center eval 256/224",
        dict(augment="resnet_imagenet", eval_preprocess="center", image_size=224),
        True,
    ),
    (
        "cifar train (fake JPEG)",
        dict(augment="cifar", image_size=32, fake_image_shape=(32, 32, 3)),
        False,
    ),
    ("cifar train (digits)", dict(dataset="digits", augment="cifar", image_size=32), False),
)


def _config(batch_size: int, **overrides):
  """A `fake` ImageNet-sized config with `overrides`."""
  c = configs.base_config()
  c.update(dataset="fake", fake_image_shape=IMAGENET_SHAPE, num_classes=1000, fake_num_eval=4096)
  c.update(overrides)
  c.batch_size = c.eval_batch_size = batch_size
  return c


def _timed(make, seconds: float, cpu_ms: list | None = None) -> float:
  """Images per second of the batches of `make()` after a warm-up, over about `seconds`; with
  `cpu_ms`, also appends this process's CPU time per image (ms, all its threads): unlike the
  rate, barely moved by other processes on a shared machine."""
  it = make()
  for _ in range(3):  # Warm-up: graph tracing, thread pools, the prefetch buffer.
    next(it)
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    try:
      batch = next(it)
    except StopIteration:  # Evaluation iterators are finite: start another pass.
      it = make()
      continue
    count += len(batch["label"])
  if cpu_ms is not None:
    cpu_ms.append(1e3 * (time.process_time() - cpu_start) / count)
  return count / (time.perf_counter() - start)


def _rate(config, evaluate: bool, seconds: float) -> float:
  """Images per second of incres' own iterator for `config`."""
  if evaluate:
    return _timed(lambda: data.create_eval_iter(config), seconds)
  return _timed(lambda: data.create_train_iter(config), seconds)


@contextlib.contextmanager
def _before_issue_15():
  """The ResNet augmentation and centre view as they were: decode all, resize all, crop."""
  train, center = resnet_augment.resnet_imagenet_train, eval_views.eval_center
  resnet_augment.resnet_imagenet_train = resnet_augment.resnet_imagenet_train_reference
  eval_views.eval_center = lambda image, **kw: center(decoding.decode(image), **kw)
  try:
    yield
  finally:
    resnet_augment.resnet_imagenet_train, eval_views.eval_center = train, center


def _plain_iter(batch_size: int):
  """A plain tf.data pipeline: decode the whole JPEG, resize (bilinear), random crop, flip."""
  pool = tf.constant(data.sources.fake_pool(IMAGENET_SHAPE, data.FAKE_POOL_SIZE).astype(bytes))

  def example(i):
    seed = tf.stack([tf.constant(0, tf.int64), i])
    scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = tf.io.decode_jpeg(pool[i % data.FAKE_POOL_SIZE], channels=3)
    shorter = tf.random.stateless_uniform([], scale_seed, 256, 481, tf.int32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.cast(tf.round(shape * tf.cast(shorter, tf.float32) / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, new) / 255.0  # Bilinear, no antialiasing.
    image = tf.image.stateless_random_crop(image, [224, 224, 3], crop_seed)
    return {"image": tf.image.stateless_random_flip_left_right(image, flip_seed), "label": i}

  ds = tf.data.Dataset.range(2**62).map(example, num_parallel_calls=tf.data.AUTOTUNE)
  return _plain_options(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def _decode_iter(batch_size: int, **decode_options):
  """The host's floor: `tf.io.decode_jpeg(..., **decode_options)` of each whole JPEG of the same
  pool and nothing else, with incres' own tf.data settings (`data.tfdata.options`). Each example keeps
  the decoded shape and its last pixel (which needs the whole file decoded), so that the batches
  stay small."""
  pool = tf.constant(data.sources.fake_pool(IMAGENET_SHAPE, data.FAKE_POOL_SIZE).astype(bytes))

  def example(i):
    image = tf.io.decode_jpeg(pool[i % data.FAKE_POOL_SIZE], channels=3, **decode_options)
    return {"shape": tf.shape(image), "last_pixel": image[-1, -1], "label": i}

  ds = tf.data.Dataset.range(2**62).map(example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return data.tfdata.options(ds).as_numpy_iterator()


def _plain_options(ds: tf.data.Dataset):
  """`ds` as a numpy iterator, with one thread per core as incres' pipelines when pinned."""
  if data.tfdata.host_threads() == 1:  # Per core: as incres' pipelines (which set it everywhere).
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  return ds.as_numpy_iterator()


# The modern ImageNet transform's side-by-side cases (`--cases=auto_augment`): name -> overrides.
AUTO_AUGMENT_CASES = {
    "rrc+flip, no policy": dict(auto_augment="none"),
    "rrc+flip, randaugment": dict(auto_augment="randaugment"),
    "rrc+flip, trivialaugment": dict(auto_augment="trivialaugment_wide"),
    "rrc+flip, autoaugment": dict(auto_augment="autoaugment_imagenet"),
    "rrc+flip, randaugment+erase": dict(
        auto_augment="randaugment", random_erasing=0.25, random_erasing_fill="pixel"
    ),
    "rrc+flip, colour jitter+lighting": dict(color_jitter=(0.4, 0.4, 0.4), pca_lighting=0.1),
}
CASE_SETS = ("issue15", "auto_augment", "all")


def side_by_side(
    batch_size: int, seconds: float, rounds: int, cases: str = "issue15", cpu_ms: dict | None = None
) -> dict:
  """{name: [images/s per round]}: the cases of `cases` (CASE_SETS), alternating within each
  round; the auto_augment cases also fill `cpu_ms` ({name: [CPU ms per image per round]})."""
  cpu_ms = {} if cpu_ms is None else cpu_ms
  train = _config(batch_size, augment="resnet_imagenet", image_size=224, resample="host")
  resnet_device = _config(batch_size, augment="resnet_imagenet", image_size=224, resample="device")
  center = _config(batch_size, eval_preprocess="center", image_size=224)
  googlenet = {
      name: _config(batch_size, augment="googlenet", image_size=224, **places)
      for name, places in (
          ("host", dict(photometric="host", resample="host")),
          ("device", dict(photometric="device", resample="host")),
          ("resize", dict(resample="device")),
      )
  }

  def before(config, evaluate):
    with _before_issue_15():
      return _rate(config, evaluate, seconds)

  issue15 = {
      "resnet train, before": lambda: before(train, False),
      "resnet train, after": lambda: _rate(train, False, seconds),
      # ResNet's resampling and normalisation left to the accelerator (its host share only: the
      # window decode; the train step resamples, incres.data.device_resample).
      "resnet, resample on device": lambda: _rate(resnet_device, False, seconds),
      "plain tf.data": lambda: _timed(lambda: _plain_iter(batch_size), seconds),
      "center eval, before": lambda: before(center, True),
      "center eval, after": lambda: _rate(center, True, seconds),
      # GoogLeNet's photometric distortions on the host, or left to the accelerator (its host
      # share only: the distortions then run in the train step, data.device_photometric).
      "googlenet, host": lambda: _rate(googlenet["host"], False, seconds),
      "googlenet, colour on device": lambda: _rate(googlenet["device"], False, seconds),
      # ... and its resize and flip too (the host decodes the crop's window, device_resample).
      "googlenet, resize on device": lambda: _rate(googlenet["resize"], False, seconds),
      # What no host pipeline of these JPEGs can beat without another decoder.
      "jpeg decode only (floor)": lambda: _timed(lambda: _decode_iter(batch_size), seconds),
  }
  # Issue #26: the modern transform with and without its policies, on the host (where it runs).
  timed = lambda c, name: _timed(
      lambda: data.create_train_iter(c), seconds, cpu_ms.setdefault(name, [])
  )
  modern = {"resnet train, after": lambda: timed(train, "resnet train, after")}
  for name, overrides in AUTO_AUGMENT_CASES.items():
    config = _config(batch_size, augment="random_resized_crop", image_size=224, **overrides)
    modern[name] = lambda c=config, n=name: timed(c, n)
  cases = {"issue15": issue15, "auto_augment": modern, "all": {**issue15, **modern}}[cases]
  rates = {name: [] for name in cases}
  for _ in range(rounds):
    for name, run in cases.items():
      rates[name].append(run())
  return rates


# libjpeg's settings against the floor with `--decoders`. TensorFlow's default DCT is already the
# fast integer one (INTEGER_FAST: the same pixels); each of the others changes pixels.
DECODERS = {
    "decode_jpeg (as incres)": {},
    "dct_method=INTEGER_ACCURATE": dict(dct_method="INTEGER_ACCURATE"),
    "fancy_upscaling=False": dict(fancy_upscaling=False),
    "ratio=2 (half-size DCT)": dict(ratio=2),
}


def decoders(batch_size: int, seconds: float, rounds: int) -> dict:
  """{name: [images/s per round]} of `_decode_iter` with each of DECODERS, alternating."""
  rates = {name: [] for name in DECODERS}
  for _ in range(rounds):
    for name, options in DECODERS.items():
      rates[name].append(_timed(lambda o=options: _decode_iter(batch_size, **o), seconds))
  return rates


def main(argv: Sequence[str] | None = None) -> None:
  """Measures every row and prints the tables."""
  args = flags.FlagValues()
  flags.DEFINE_float(
      "seconds", 8.0, "Timed seconds per row (per case and round side by side).", flag_values=args
  )
  flags.DEFINE_integer("batch_size", 64, "Images per batch.", flag_values=args)
  flags.DEFINE_integer(
      "rounds", 3, "Alternating rounds of the side-by-side cases.", flag_values=args
  )
  flags.DEFINE_bool(
      "table", True, "Also measure every augmentation (the first table).", flag_values=args
  )
  flags.DEFINE_enum(
      "side_by_side",
      "both",
      ["both", "here", "none"],
      "both: per core (a child process pinned to one core) and on all cores; here: in this "
      "process only, on the cores it may use.",
      flag_values=args,
  )
  flags.DEFINE_enum(
      "cases",
      "issue15",
      list(CASE_SETS),
      "The side-by-side cases: issue15 (the crops before and after decoding only their windows,"
      " the work left to accelerators, the decode floor), auto_augment (the ResNet augmentation"
      " against augment=random_resized_crop with and without RandAugment, TrivialAugment-Wide,"
      " AutoAugment and random erasing) or all.",
      flag_values=args,
  )
  flags.DEFINE_bool(
      "decoders",
      False,
      "Also time whole-JPEG decoding with libjpeg's other settings (DECODERS), alternating, "
      "on the cores this process may use.",
      flag_values=args,
  )
  cli.parse(
      args,
      argv,
      prog="python benchmarks/input_pipeline.py",
      description=__doc__.split("\n\n")[1],
  )

  cores = data.tfdata.host_threads()
  load = os.getloadavg()[0]
  print(
      f"Input pipeline on {cores} CPU cores (1-min load average {load:.2f} at the start), "
      f"batch {args.batch_size}."
  )
  if args.table:
    print(f"\n{'pipeline':<26} {'input':>11} {'output':>9} {'images/s':>9}   ({args.seconds:g} s)")
    for name, overrides, evaluate in ROWS:
      c = _config(args.batch_size, **overrides)
      shape = "32x32" if c.dataset == "digits" else "x".join(map(str, c.fake_image_shape[:2]))
      rate = _rate(c, evaluate, args.seconds)
      size = f"{c.image_size}x{c.image_size}"
      print(f"{name:<26} {shape:>11} {size:>9} {rate:>9.0f}", flush=True)

  if args.side_by_side == "both":
    # Per core: the same benchmark in a child that pins itself to one core before TensorFlow
    # starts a thread (so its pools have one core too).
    flags_ = ["--table=false", "--side_by_side=here", f"--seconds={args.seconds}"]
    flags_ += [f"--batch_size={args.batch_size}", f"--rounds={args.rounds}"]
    flags_ += ["--decoders" if args.decoders else "--nodecoders", f"--cases={args.cases}"]
    pin = (
        f"import os, runpy, sys; os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}}); "
        f"sys.argv = {[os.path.abspath(__file__)] + flags_!r}; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    sys.stdout.flush()
    subprocess.run([sys.executable, "-c", pin], check=True)
  if args.side_by_side != "none":
    _print_side_by_side(args, cores)
  if args.decoders:
    rates = decoders(args.batch_size, args.seconds, args.rounds)
    base = statistics.median(rates["decode_jpeg (as incres)"])
    where = "one core" if cores == 1 else f"{cores} cores"
    print(f"\nWhole-JPEG decoding on {where}: images/s, median of {args.rounds} alternating rounds")
    for name, r in rates.items():
      med = statistics.median(r)
      print(f"  {name:<28} {med:>7.0f}   {med / base:.2f}x   ({' '.join(f'{x:.0f}' for x in r)})")


def _print_side_by_side(args, cores: int) -> None:
  """The before/after/plain table on the cores this process may use."""
  label = "per core (pinned to one core)" if cores == 1 else f"on all {cores} cores"
  cpu_ms = {}
  rates = side_by_side(args.batch_size, args.seconds, args.rounds, args.cases, cpu_ms)
  med = {name: statistics.median(r) for name, r in rates.items()}
  print(
      f"\nSide by side, {label}: images/s, median of {args.rounds} alternating rounds "
      f"(1-min load average now {os.getloadavg()[0]:.2f})"
  )
  for name, r in rates.items():
    each = " ".join(f"{x:.0f}" for x in r)
    print(f"  {name:<28} {med[name]:>7.0f}   ({each})")
  if args.cases != "issue15":
    base, plain = med["resnet train, after"], med["rrc+flip, no policy"]
    ratios = ", ".join(
        f"{name.removeprefix('rrc+flip, ')} {med[name] / base:.2f}x ({med[name] / plain:.2f}x)"
        for name in AUTO_AUGMENT_CASES
    )
    print(
        f"  random_resized_crop against the resnet train pipeline (against no policy): {ratios}",
        flush=True,
    )
    print(f"  host CPU ms per image (all threads of this process), median of {args.rounds}:")
    for name, ms in cpu_ms.items():
      print(
          f"    {name:<28} {statistics.median(ms):>6.2f} ms   ({' '.join(f'{x:.2f}' for x in ms)})"
      )
  if args.cases == "auto_augment":
    return
  train_after = med["resnet train, after"]
  colour = med["googlenet, colour on device"] / med["googlenet, host"]
  resampled = med["resnet, resample on device"]
  print(
      f"  resnet train after/before {train_after / med['resnet train, before']:.2f}x, "
      f"after/plain {train_after / med['plain tf.data']:.2f}x; resnet host share with its"
      f" resampling on the accelerator {resampled / train_after:.2f}x of after,"
      f" {resampled / med['resnet train, before']:.2f}x of before; center eval after/before "
      f"{med['center eval, after'] / med['center eval, before']:.2f}x; googlenet host share with"
      f" its colour distortions on the accelerator {colour:.2f}x, and its resize too"
      f" {med['googlenet, resize on device'] / med['googlenet, host']:.2f}x",
      flush=True,
  )
  floor = med["jpeg decode only (floor)"]
  print(
      f"  against decoding each whole JPEG and nothing else ({floor:.0f}/s): resnet with its"
      f" resampling on the accelerator {resampled / floor:.2f}x, googlenet with its resize"
      f" {med['googlenet, resize on device'] / floor:.2f}x, plain tf.data"
      f" {med['plain tf.data'] / floor:.2f}x",
      flush=True,
  )


if __name__ == "__main__":
  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
