r"""python experiments/recipe_study.py --outdir=runs/recipe_study

Hardware: sized for 2 CPU cores (no accelerator). Measured on the shared 2-core AMD EPYC, two
runs in parallel: 18.5-25 minutes per run at load average 8-11 (other sessions' work on the same
cores; the preact study's 7.5-9 minutes per ResNet-56 run were at load 4-5), so about 1.5 hours
for the eight runs at that load and 35-40 minutes on a quieter machine, plus a minute for the
figure and the report; `--seeds=1` halves it (README, "Modern recipe components on digits").

Asks, in miniature, on scikit-learn's bundled `digits` (1,497 training and 300 test images,
32×32), whether one of the modern recipe components of issue #26 changes a ResNet's test error at
the CPU budget of `experiments/residual_study.py`'s preact study (300 steps of 64, 12.8 epochs):

- mixup 0.2 + CutMix 1.0 (Zhang et al. 2018; Yun et al. 2019), one of the two per batch with the
  switch probability 0.5, as torchvision's 2021 ResNet-50 recipe (`incres.mixing`);
- RandAugment, N=2 ops of magnitude M=9 (Cubuk et al. 2020; torchvision's `RandAugment()`
  defaults, nearest sampling) on each uint8 32×32 digit after the CIFAR pad-crop-flip, as
  timm's and torchvision's CIFAR recipes place it (`incres.data.cifar_augment`);
- stochastic depth (Huang et al. 2016), drop-path rate 0.1 at the last unit, linear over the
  depth (`incres.models.layers.drop_path_rates`).

Each arm is the baseline with one component switched on: nothing else differs (the test checks
it). The baseline is the preact study's pre-activation ResNet-56 (`CifarPreActResNet110`'s basic
units, 9 a stage, option A shortcuts; 0.85M parameters) with its recipe, `resnet_cifar.py`'s CIFAR
recipe cut to the budget: SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 50% and
75% of the steps, no warm-up, per-pixel mean. Why the pre-activation net and not the original
ResNet-56: at this budget the original one's test error is 40.67% and 22.67% on seeds 0 and 1
(README, "Residual connections and pre-activation on digits"), a seed spread that would drown any
component's effect; the pre-activation one's is 4.33% and 3.33%.

What two seeds can say: a difference smaller than the spread between the seeds of one arm (a
percentage point is three test digits) is not a finding. The final training loss of the mixup arm
is measured on mixed targets and that of the RandAugment arm on harder views: only the test
error compares across arms.

Each run is also an ordinary experiment config:

  python launch.py --config=experiments/recipe_study.py:arm=randaugment,seed=1 \
      --workdir=runs/recipe_randaugment_s1

Arguments (`:arm=baseline,seed=0,steps=0,batch=0,smoke=False`):
  arm: baseline | mix | randaugment | sdepth.
  seed: the run's seed (initialisation, data order, augmentation, mixing, drop-path draws).
  steps, batch: the budget every arm gets (0: the preact study's 300 and 64).
  smoke: True shrinks the budget to a few steps (a check that everything runs).
Evaluated on the test digits 10 times per run.

Run as a script, this file trains the runs (resuming any that were interrupted), then writes
`recipes.png` and `report.md` in `--outdir` (`--skip_training` redraws them from the runs;
`incres.report.format_pair_section` writes the table).
"""

from __future__ import annotations

import os
import sys

import ml_collections

if __package__ in (None, "") and __name__ == "__main__":  # `python experiments/recipe_study.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from incres import configs, errors, studies  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
# The training loss the report's "steps to threshold" column counts up to (the window mean).
LOSS_THRESHOLD = 0.5
SEEDS = (0, 1)
# (name, the arm's settings over the baseline, label). The runs are `<name>_s<seed>`, seed 0 of
# every arm first.
ARMS = (
    ("baseline", {}, "baseline (pre-act ResNet-56)"),
    (
        "mix",
        {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 1.0, "mix_switch_prob": 0.5},
        "mixup 0.2 + CutMix 1.0",
    ),
    (
        "randaugment",
        {"auto_augment": "randaugment", "randaugment_num_ops": 2, "randaugment_magnitude": 9},
        "RandAugment N=2, M=9",
    ),
    ("sdepth", {"model_kwargs.drop_path_rate": 0.1}, "stochastic depth 0.1"),
)
TITLE = "Modern recipe components on a pre-activation ResNet-56"
CLAIM = (
    "Does one component of the modern recipes (issue #26) change the test error at the preact"
    " study's budget? The pre-activation ResNet-56 (0.85M parameters), 300 steps of 64 on digits,"
    " the CIFAR recipe (SGD, lr 0.1, /10 at 50% and 75%), against the same run with mixup 0.2 +"
    " CutMix 1.0 (switch 0.5), RandAugment (N=2, M=9) after the pad-crop-flip, or stochastic depth"
    " 0.1 (linear over depth). The training losses of the mixup and RandAugment arms are on mixed"
    " targets and harder views: only the test error compares across arms."
)


def run_names(seeds=SEEDS) -> list[str]:
  """`<arm>_s<seed>`, seed by seed."""
  return [f"{name}_s{seed}" for seed in seeds for name, _, _ in ARMS]


def run_arg(name: str) -> str:
  """The config string of a run name (`mix_s1` -> `arm=mix,seed=1`)."""
  arm, seed = name.rsplit("_s", 1)
  return f"arm={arm},seed={int(seed)}"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One arm of the study on digits with the preact study's CPU budget."""
  a = configs.parse_arg(arg, arm="baseline", seed=0, steps=0, batch=0, smoke=False)
  settings = {name: s for name, s, _ in ARMS}
  if a.arm not in settings:
    raise errors.ConfigError(
        f"Unknown arm={a.arm!r} in --config=experiments/recipe_study.py:{arg}; use arm="
        + ", arm=".join(settings)
        + "."
    )
  base = (
      f"study=preact,preact=True,depth=56,seed={a.seed},steps={a.steps},batch={a.batch},"
      f"smoke={a.smoke}"
  )
  c = configs.load(os.path.join(HERE, "residual_study.py") + ":" + base)
  for key, value in settings[a.arm].items():
    node, _, leaf = key.rpartition(".")
    (c[node] if node else c)[leaf] = value
  return c


def main(argv: list[str] | None = None) -> None:
  studies.seeded_study_main(
      argv,
      script=__file__,
      outdir="runs/recipe_study",
      only_example="randaugment_s0",
      description=__doc__.split("\n\n")[2],
      seeds=len(SEEDS),
      run_names=run_names,
      run_arg=run_arg,
      study_report=study_report,
  )


def study_report(outdir: str, seeds: int = len(SEEDS)) -> str:
  """Draws `recipes.png` in `outdir` from the finished runs; returns the report."""
  from incres import analysis, report  # pylint: disable=g-import-not-at-top  (heavy imports)

  arms = []
  for name, _, label in ARMS:
    runs = [os.path.join(outdir, f"{name}_s{seed}") for seed in range(seeds)]
    runs = tuple(w for w in runs if os.path.exists(os.path.join(w, "metrics.jsonl")))
    if runs:
      arms.append(report.Arm(label, runs))
  if not arms:
    raise errors.MissingFileError(
        f"No finished runs in {outdir} (expected {', '.join(run_names(range(seeds)))}); train"
        " them first: python experiments/recipe_study.py --outdir=" + outdir
    )
  figure = os.path.join(outdir, "recipes.png")
  analysis.plot_pairs([tuple(a) for a in arms], figure, title=TITLE, threshold=LOSS_THRESHOLD)
  # The preact study's verdict is about training speed; here the question is the test error, each
  # component against the baseline, seed by seed.
  section = report.format_pair_section(
      TITLE, CLAIM, arms, LOSS_THRESHOLD, figure=os.path.basename(figure), verdict=False
  )
  return report.study_report([section + _against_baseline(arms)], title="Recipe study")


def _against_baseline(arms) -> str:
  """One line per component: its final test error against the baseline's, seed by seed."""
  from incres import report  # pylint: disable=g-import-not-at-top

  if not arms or arms[0].label != ARMS[0][2]:
    return ""
  errs = {a.label: [report.summarize_run(w, LOSS_THRESHOLD) for w in a.workdirs] for a in arms}
  base = {
      os.path.basename(w).rsplit("_s", 1)[1]: r["final_test_err"]
      for w, r in zip(arms[0].workdirs, errs[arms[0].label])
  }
  lines = []
  for arm in arms[1:]:
    diffs = []
    for w, r in zip(arm.workdirs, errs[arm.label]):
      seed = os.path.basename(w).rsplit("_s", 1)[1]
      if base.get(seed) is not None and r["final_test_err"] is not None:
        diffs.append((seed, r["final_test_err"] - base[seed]))
    if diffs:
      each = ", ".join(f"seed {s}: {d:+.2f}" for s, d in diffs)
      lines.append(
          f"- {arm.label} against the baseline, final test error in points ({each}): lower in"
          f" {sum(d < 0 for _, d in diffs)} of {len(diffs)} seeds."
      )
  return "\n" + "\n".join(lines) + "\n" if lines else ""


if __name__ == "__main__":
  errors.run(main)  # A user error: its message and exit status 2, no traceback.
