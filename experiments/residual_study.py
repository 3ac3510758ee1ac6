r"""python experiments/residual_study.py --outdir=runs/residual_study

Hardware: sized for 2 CPU cores (no accelerator). Measured: 34 minutes for the ten runs (2 seeds of
5 nets, two processes in parallel) on a 2-core AMD EPYC at load average 4-5 (5-6 minutes per
Inception run, 7.5-9 per ResNet-56 run), plus a minute for the figures and the report;
`--seeds=1` halves it (README, "Residual connections and pre-activation on digits").
Reproduces, in miniature, on scikit-learn's bundled `digits` (1,497 training and 300 test images,
32×32), two claims of the papers that joined Inception and ResNet:

- `study=inception`: "residual connections accelerate the training of Inception networks
  significantly" (Szegedy et al. 2016, arXiv 1602.07261, abstract and §5, Figures 21-26: training
  curves of Inception-ResNet against a similarly expensive non-residual Inception).
  `InceptionResNetV1_32` (Inception-ResNet-v1's blocks after a 32-pixel stem, at a quarter of the
  filters) against its non-residual twin: the same network with the identity term of every block
  removed (`model_kwargs.residual=False`; same parameters and multiply-adds); and, as a diagnostic,
  the twin without the recipe's gradient clipping (`clip=0`).
- `study=preact`: pre-activation units train more easily than the original ones (He et al. 2016,
  arXiv 1603.05027, Figure 1 and Table 3: CIFAR-10 ResNet-110 6.61% -> 6.37%, ResNet-164 5.93% ->
  5.46%, with lower training loss). CIFAR ResNet-56 (the deepest pair that fits this machine's
  budget; 110 takes about 6 s a step here) against its pre-activation twin, the basic-unit
  `CifarPreActResNet110` layout with 9 units a stage (option A shortcuts, as the original).

Each net is also an ordinary experiment config:

  python launch.py --config=experiments/residual_study.py:study=inception,residual=False,seed=1 \
      --workdir=runs/inception_plain_s1

Arguments (`:study=inception,residual=True,preact=False,depth=56,width=0.25,seed=0,...`):
  study: inception | preact.
  residual (inception): False for the non-residual twin.
  clip (inception): the gradient clipping norm (the recipe's 2.0; 0: none, a diagnostic run).
  width (inception): multiplies every filter count of the Inception-ResNet (1.0: the paper's).
  preact (preact): True for the pre-activation ResNet, False for the original (He et al. 2015).
  depth (preact): 20 | 32 | 44 | 56 | 110 (basic units).
  seed: the run's seed (initialisation, data order, augmentation).
  steps, batch: the one budget both nets of a study get (defaults below, chosen for the CPU).
  smoke: True shrinks the budget to a few steps (a check that everything runs).

Recipes: each study's paper recipe, identical for its two nets, shortened to the CPU budget.
- inception: `experiments/inception.py`'s (RMSProp decay 0.9, epsilon 1.0, momentum 0.9, lr 0.045
  x0.94 every 2 epochs, clipping at global norm 2.0, weight decay 4e-5, dropout 0.2, batch 32),
  with three changes for 32-pixel digits: 32x32 input instead of 299 (so the 32-pixel stem), the
  CIFAR augmentation (4-pixel pad, random crop, flip) instead of Inception crops of 8-100% of the
  area, and no parameter EMA (its decay 0.9999 averages over 10,000 steps, longer than the run).
- preact: `experiments/resnet_cifar.py`'s (SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by
  10 at 50% and 75% of the steps, pad 4 + random crop + flip, per-pixel mean), batch 64 and no
  warm-up for either net (as `experiments/degradation.py`, whose ResNet-56 is the same run).
Evaluated on the test digits 10 times per run.

Run as a script, this file trains the runs (resuming any that were interrupted), then writes
`inception.png`, `preact.png` and `report.md` in `--outdir` (`--skip_training` redraws them from
the runs; `incres.report.format_pair_section` writes each section).
"""

from __future__ import annotations

import os
import sys

import ml_collections

if __package__ in (None, "") and __name__ == "__main__":  # `python experiments/residual_study.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from incres import configs, errors, studies  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_EVALS = 10
# The budget of each study, the same for both of its nets: inception 600 steps of 32 (12.8 epochs;
# ~0.7 s a step on 2 loaded cores), preact 300 steps of 64 (12.8 epochs; ~2 s a step for depth 56).
BUDGETS = {"inception": (600, 32), "preact": (300, 64)}
# Training loss the "steps to threshold" column of the report counts up to (the window mean).
LOSS_THRESHOLDS = {"inception": 0.5, "preact": 0.5}
SEEDS = (0, 1)
# The runs of each net are `<name>_s<seed>`; seed 0 of every net trains first, so that one seed is
# complete early. Per study, the first net is the one its paper says trains faster.
ARMS = (
    ("inception_residual", "study=inception,residual=True", "Inception-ResNet-v1-32"),
    ("inception_plain", "study=inception,residual=False", "non-residual twin"),
    # A diagnostic, not a claim: the twin without the recipe's clipping at global norm 2.0, whose
    # exploding early gradients the clipping shrinks by up to ~1e4 (README).
    ("inception_plain_noclip", "study=inception,residual=False,clip=0", "twin, no clipping"),
    ("resnet56_preact", "study=preact,preact=True", "pre-activation ResNet-56"),
    ("resnet56_original", "study=preact,preact=False", "original ResNet-56"),
)
STUDIES = {
    "inception": (
        "Residual connections and the training speed of Inception networks",
        "Szegedy et al. 2016 (arXiv 1602.07261, §5 and Figures 21-26): residual connections"
        " speed up the training of Inception networks. Here Inception-ResNet-v1's blocks after a"
        " 32-pixel stem, a quarter of the filters (1.32M parameters), against the same net with"
        " the residual connection of every block removed; 600 steps of 32 on digits, the"
        " Inception-v4 recipe (RMSProp, lr 0.045, clipping 2.0).",
        ("inception_residual", "inception_plain", "inception_plain_noclip"),
    ),
    "preact": (
        "Pre-activation against the original ResNet",
        "He et al. 2016 (arXiv 1603.05027, Figure 1 and Table 3): pre-activation units ease"
        " optimisation (lower training loss) and generalise better, most visibly at 164 and 1001"
        " layers on CIFAR. Here CIFAR ResNet-56 (0.85M parameters), the deepest pair this CPU"
        " budget trains; 300 steps of 64 on digits, the CIFAR recipe (SGD, lr 0.1, /10 at 50% and"
        " 75%).",
        ("resnet56_preact", "resnet56_original"),
    ),
}


def run_names(seeds=SEEDS) -> list[str]:
  """`<arm>_s<seed>`, seed by seed."""
  return [f"{name}_s{seed}" for seed in seeds for name, _, _ in ARMS]


def run_arg(name: str) -> str:
  """The config string of a run name (`inception_plain_s1` -> `study=...,seed=1`)."""
  arm, seed = name.rsplit("_s", 1)
  return f"{next(a for n, a, _ in ARMS if n == arm)},seed={int(seed)}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One net of a study on digits with the study's fixed CPU budget."""
  a = configs.parse_arg(
      arg,
      study="inception",
      residual=True,
      width=0.25,
      clip=2.0,
      preact=False,
      depth=56,
      seed=0,
      steps=0,
      batch=0,
      smoke=False,
  )
  if a.study not in BUDGETS:
    raise errors.ConfigError(
        f"Unknown study={a.study!r} in --config=experiments/residual_study.py:{arg}; use"
        " study=inception or study=preact."
    )
  steps, batch = BUDGETS[a.study]
  steps, batch = a.steps or steps, a.batch or batch
  if a.smoke:
    steps, batch = 4, 16
  if a.study == "inception":
    c = configs.load(os.path.join(HERE, "inception.py") + ":model=resnet_v1,dataset=digits")
    c.model = "InceptionResNetV1_32"
    c.model_kwargs.width = a.width
    c.model_kwargs.residual = a.residual
    c.image_size = 32  # The 32-pixel stem (incres.models.inception_v4), not a 75-pixel resize.
    c.augment = "cifar"  # Inception crops of 8% of a 32-pixel digit leave too little of it.
    c.ema_decay = None  # 0.9999 averages over 10k steps: the whole run would be the init.
    c.grad_clip_norm = a.clip or None  # clip=0: none (a diagnostic; the recipe clips at 2.0).
  else:
    if a.depth not in (20, 32, 44, 56, 110):
      raise errors.ConfigError(
          f"depth must be 20, 32, 44, 56 or 110 for study=preact, not {a.depth}."
      )
    c = configs.load(os.path.join(HERE, "resnet_cifar.py") + f":depth={a.depth},dataset=digits")
    if a.preact:
      n = (a.depth - 2) // 6
      c.model = "CifarPreActResNet110"  # Basic units, option A; the depth by its stage table.
      if a.depth != 110:
        c.model_kwargs.stage_sizes = (n, n, n)
    # One budget for both nets, so that only the unit differs: no warm-up for depth 110 either.
    c.warmup_epochs, c.warmup_learning_rate = 0.0, 0.0
  c.seed = a.seed
  studies.digits_budget(c, steps, batch, NUM_EVALS)
  if a.study == "preact":
    c.lr_boundary_epochs = (c.num_epochs * 0.5, c.num_epochs * 0.75)  # The paper's 32k/64k, 48k.
  return c


def main(argv: list[str] | None = None) -> None:
  # The runs in seed-major order, dealt round robin: each process gets both studies and finishes
  # seed 0 of its share first.
  studies.seeded_study_main(
      argv,
      script=__file__,
      outdir="runs/residual_study",
      only_example="inception_plain_s0",
      description=__doc__.split("\n\n")[1],
      seeds=len(SEEDS),
      run_names=run_names,
      run_arg=run_arg,
      study_report=study_report,
  )


def study_report(outdir: str, seeds: int = len(SEEDS)) -> str:
  """Draws `<study>.png` in `outdir` for every study with finished runs; returns the report."""
  from incres import analysis, report  # pylint: disable=g-import-not-at-top  (heavy imports)

  labels = {name: label for name, _, label in ARMS}
  sections = []
  for study, (title, claim, names) in STUDIES.items():
    arms = []
    for name in names:
      runs = [os.path.join(outdir, f"{name}_s{seed}") for seed in range(seeds)]
      runs = tuple(w for w in runs if os.path.exists(os.path.join(w, "metrics.jsonl")))
      if runs:
        arms.append(report.Arm(labels[name], runs))
    if not arms:
      continue
    figure = os.path.join(outdir, f"{study}.png")
    threshold = LOSS_THRESHOLDS[study]
    analysis.plot_pairs([tuple(a) for a in arms], figure, title=title, threshold=threshold)
    # The verdict compares the study's first two nets (the claim), when both have runs.
    verdict = [a.label for a in arms[:2]] == [labels[n] for n in names[:2]]
    sections.append(
        report.format_pair_section(
            title, claim, arms, threshold, figure=os.path.basename(figure), verdict=verdict
        )
    )
  if not sections:
    raise errors.MissingFileError(
        f"No finished runs in {outdir} (expected {', '.join(run_names(range(seeds)))}); train"
        " them first: python experiments/residual_study.py --outdir=" + outdir
    )
  return report.study_report(sections)


if __name__ == "__main__":
  errors.run(main)  # A user error: its message and exit status 2, no traceback.
