r"""python experiments/degradation.py --outdir=runs/degradation

Hardware: sized for 2 shared CPU cores (no accelerator). Expected time: about 40 minutes for the
four runs together (two processes in parallel; measured 43 minutes at load average 8-11, and 35
minutes for `--steps=600` at load 5), plus a minute for the figures and the report.
Reproduces, in miniature, the ResNet paper's Figure 6 (plain-56 trains and tests worse than
plain-20, ResNet-56 does not) and Figure 7 (the 3×3 layers of ResNets respond less than those of
plain nets) on scikit-learn's bundled `digits` (1,497 training and 300 test images, 32×32).

Each net is also an ordinary experiment config:

  python launch.py --config=experiments/degradation.py:depth=56,plain=True --workdir=runs/plain56

Arguments (`:depth=20,plain=False,steps=...,batch=...`):
  depth: 20 | 32 | 44 | 56 | 110 (the paper's CIFAR depths).
  plain: True for the plain twin (same layers, no shortcuts).
  steps, batch: the one budget every net gets (defaults below, chosen for the CPU).
  smoke: True shrinks the budget to a few steps (a check that everything runs).

Recipe: the paper's CIFAR recipe, taken from `resnet_cifar.get_config` (SGD momentum 0.9, weight
decay 1e-4, lr 0.1 divided by 10 at 50% and 75% of the steps, pad 4 + random crop + flip, per-pixel
mean, single original view at test) with a smaller batch and a shorter schedule, identical for all
four nets so that only depth and shortcuts differ. Evaluated on the test digits 10 times per run, so
Figure 6 has test curves as well as training curves.

Run as a script, this file trains the four nets (resuming any that were interrupted), then writes
`fig6.png`, `fig7.png`, `responses.csv` and `report.md` in `--outdir`.
"""

from __future__ import annotations

import os
import sys

from absl import flags
import ml_collections

if __package__ in (None, "") and __name__ == "__main__":  # `python experiments/degradation.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from incres import cli, configs, studies  # pylint: disable=g-import-not-at-top

# The fixed budget, the same for every net: 300 steps of 64 = 12.8 epochs of the 1,497 digits.
# Measured on 2 CPU cores shared with other jobs (load ~10): about 7 s / 2 s per step for depth 56 /
# 20 with two runs in parallel, so about 45 minutes in all. Idle cores are several times faster.
STEPS = 300
BATCH = 64
NUM_EVALS = 10
RUNS = (
    ("plain20", 20, True),
    ("plain56", 56, True),
    ("resnet20", 20, False),
    ("resnet56", 56, False),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CIFAR ResNet / plain net of `depth` on digits with the fixed CPU budget."""
  a = configs.parse_arg(arg, depth=20, plain=False, steps=STEPS, batch=BATCH, smoke=False)
  if a.smoke:
    a.steps, a.batch = 4, 16
  if a.depth not in (20, 32, 44, 56, 110):
    raise ValueError(f"depth must be 20, 32, 44, 56 or 110, not {a.depth}.")
  # The paper's CIFAR recipe (optimizer, schedule shape, augmentation, normalisation) on digits;
  # only the budget and the evaluation cadence below are this experiment's.
  c = configs.load(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet_cifar.py")
      + f":depth={a.depth},plain={a.plain},dataset=digits"
  )
  # One budget for every net, so that only depth and shortcuts differ: no warm-up for depth 110.
  c.warmup_epochs, c.warmup_learning_rate = 0.0, 0.0
  studies.digits_budget(c, a.steps, a.batch, NUM_EVALS)
  c.lr_boundary_epochs = (c.num_epochs * 0.5, c.num_epochs * 0.75)  # The paper's 32k/64k, 48k/64k.
  return c


def main(argv: list[str] | None = None) -> None:
  args = flags.FlagValues()
  studies.define_flags(args, "runs/degradation", "plain56,resnet56")
  flags.DEFINE_integer("steps", STEPS, "Training steps of every run.", flag_values=args)
  flags.DEFINE_integer("batch", BATCH, "Batch size of every run.", flag_values=args)
  prog = "python experiments/degradation.py"
  cli.parse(args, argv, prog=prog, description=__doc__.split("\n\n")[1])
  names = [r[0] for r in RUNS]
  studies.check_only(args.only, names, prog)
  if not args.skip_training:
    # Deepest first, so that the processes finish together: (plain56, plain20), (resnet56, ...).
    todo = sorted(args.only or names, key=lambda n: -int(n[-2:]))
    runs = []
    for name in todo:
      _, depth, plain = next(r for r in RUNS if r[0] == name)
      arg = f"depth={depth},plain={plain},steps={args.steps},batch={args.batch}"
      runs.append((f"{os.path.abspath(__file__)}:{arg}", os.path.join(args.outdir, name)))
    studies.train_or_exit(runs, args.parallel)
    if args.only:
      return

  from incres import analysis, report  # pylint: disable=g-import-not-at-top  (heavy imports)

  workdirs = [os.path.join(args.outdir, n) for n in names]
  analysis.main(["curves", *[f"--workdir={w}" for w in workdirs], f"--out={args.outdir}/fig6.png"])
  analysis.main(
      [
          "responses",
          *[f"--workdir={w}" for w in workdirs],
          f"--out={args.outdir}/fig7.png",
          f"--csv={args.outdir}/responses.csv",
      ]
  )
  text = report.build_report(
      workdirs,
      protocol="single",
      fig6=f"{args.outdir}/fig6.png",
      fig7=f"{args.outdir}/fig7.png",
      responses_csv=f"{args.outdir}/responses.csv",
  )
  with open(os.path.join(args.outdir, "report.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  from incres import errors  # pylint: disable=g-import-not-at-top

  errors.run(main)  # A user error: its message and exit status 2, no traceback.
