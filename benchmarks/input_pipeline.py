r"""python benchmarks/input_pipeline.py [--seconds=8] [--batch_size=64]

Images per second of each training augmentation and evaluation view on this machine, through
`incres.data.create_train_iter` / `create_eval_iter` exactly as training uses them: fake
ImageNet-sized photos (375×500 smooth-noise JPEGs) go through the real JPEG decode path; the CIFAR
recipe is measured on 32×32 images (fake JPEGs, and the in-memory digits of the quickstart).
Default run: about a minute. Compare with the accelerator's step rate to see whether the input
pipeline keeps it fed (ImageNet recipes need many cores: one core decodes and augments ~100/s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from absl import flags

from incres import cli, configs, data, errors

IMAGENET_SHAPE = (375, 500, 3)

# (row name, config overrides, evaluation view?)
ROWS = (
    ("resnet_imagenet train", dict(augment="resnet_imagenet", image_size=224), False),
    ("googlenet train", dict(augment="googlenet", image_size=224), False),
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


def _rate(config, evaluate: bool, seconds: float) -> float:
  """Images per second after a warm-up, over about `seconds`."""
  make = (
      (lambda: data.create_eval_iter(config))
      if evaluate
      else (lambda: data.create_train_iter(config))
  )
  it = make()
  for _ in range(3):  # Warm-up: graph tracing, thread pools, the prefetch buffer.
    next(it)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    try:
      batch = next(it)
    except StopIteration:  # Evaluation iterators are finite: start another pass.
      it = make()
      continue
    count += len(batch["label"])
  return count / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
  """Measures every row and prints the table."""
  args = flags.FlagValues()
  flags.DEFINE_float("seconds", 8.0, "Timed seconds per row.", flag_values=args)
  flags.DEFINE_integer("batch_size", 64, "Images per batch.", flag_values=args)
  cli.parse(
      args,
      argv,
      prog="python benchmarks/input_pipeline.py",
      description=__doc__.split("\n\n")[1],
  )

  print(
      f"Input pipeline on {os.cpu_count()} CPU cores, batch {args.batch_size}, "
      f"{args.seconds:g} s per row."
  )
  print(f"{'pipeline':<26} {'input':>11} {'output':>9} {'images/s':>9}")
  for name, overrides, evaluate in ROWS:
    c = configs.base_config()
    c.update(dataset="fake", fake_image_shape=IMAGENET_SHAPE, num_classes=1000, fake_num_eval=4096)
    c.update(overrides)
    c.batch_size = c.eval_batch_size = args.batch_size
    shape = "32x32" if c.dataset == "digits" else "x".join(map(str, c.fake_image_shape[:2]))
    rate = _rate(c, evaluate, args.seconds)
    size = f"{c.image_size}x{c.image_size}"
    print(f"{name:<26} {shape:>11} {size:>9} {rate:>9.0f}", flush=True)


if __name__ == "__main__":
  errors.run(main)  # A flag error: its message and exit status 2, no traceback.
