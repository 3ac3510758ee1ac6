"""Training the runs of a small study (`experiments/degradation.py`, `experiments/residual_study.py`,
`experiments/recipe_study.py`).

Each run is its own `launch.py` process, exactly as a user would start it, so a study's runs are
ordinary workdirs: resumable, and readable by `incres.analysis` and `incres.report`.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence

from absl import flags

from incres import cli


class StudyError(RuntimeError):
  """A run of the study failed (its launch.py process printed why)."""


def train_runs(
    launch: str, runs: Sequence[tuple[str, str]], parallel: int = 1, cwd: str | None = None
) -> None:
  """Trains every `(config spec, workdir)` with `python launch.py`, `parallel` processes at once.

  The runs are dealt round robin in the given order (run i goes to process i % parallel), and each
  process runs its share one after the other: callers put the longest runs first so that the
  processes finish together. Each command is printed before it starts. Raises `StudyError` after
  all processes end if any run failed.
  """

  def share(runs: Sequence[tuple[str, str]]) -> list[str]:
    failed = []
    for spec, workdir in runs:
      cmd = [sys.executable, launch, f"--config={spec}", f"--workdir={workdir}"]
      print("+", " ".join(cmd), flush=True)
      if subprocess.run(cmd, cwd=cwd, check=False).returncode != 0:
        failed.append(workdir)
    return failed

  parallel = max(1, min(parallel, len(runs)))
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    failed = sum(pool.map(share, [runs[i::parallel] for i in range(parallel)]), [])
  if failed:
    raise StudyError(f"Training failed for {', '.join(failed)}; see its output above.")


def define_flags(values: flags.FlagValues, outdir: str, only_example: str) -> None:
  """The flags every study script shares: `--outdir`, `--parallel`, `--only`, `--skip_training`."""
  flags.DEFINE_string("outdir", outdir, "Where the runs and figures go.", flag_values=values)
  flags.DEFINE_integer(
      "parallel", 2, "Training processes at once (each runs its share).", flag_values=values
  )
  flags.DEFINE_list(
      "only", None, f"Train only these runs (e.g. {only_example}); no figures.", flag_values=values
  )
  flags.DEFINE_bool("skip_training", False, "Figures and report only.", flag_values=values)


def check_only(
    only: Sequence[str] | None, known: Sequence[str], prog: str, listed: Sequence[str] = ()
) -> None:
  """A usage error naming the runs of `--only` that are not in `known` (and listing `listed`, or
  `known`)."""
  if unknown := [n for n in only or () if n not in known]:
    raise cli.UsageError(
        f"--only: unknown run {', '.join(unknown)}; the runs: {', '.join(listed or known)}", prog
    )


def train_or_exit(runs: Sequence[tuple[str, str]], parallel: int) -> None:
  """`train_runs` with this checkout's launch.py (run from the checkout); exits with the failed
  runs' names if any failed (their own output above says why)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    train_runs(os.path.join(root, "launch.py"), runs, parallel, cwd=root)
  except StudyError as e:
    sys.exit(str(e))


def seeded_study_main(
    argv: list[str] | None,
    *,
    script: str,
    outdir: str,
    only_example: str,
    description: str,
    seeds: int,
    run_names: Callable[[Iterable[int]], list[str]],
    run_arg: Callable[[str], str],
    study_report: Callable[[str, int], str],
) -> None:
  """The command line of a study whose runs are `<arm>_s<seed>` of the config in `script`.

  Trains the runs of `--seeds` seeds (default `seeds`), or `--only` some of them, each
  `script:run_arg(name)` into `--outdir/name`; then writes `study_report(outdir, seeds)` to
  `report.md` there and prints it (`--skip_training`: only that).
  """
  args = flags.FlagValues()
  define_flags(args, outdir, only_example)
  flags.DEFINE_integer("seeds", seeds, "Seeds per arm (0, 1, ...).", flag_values=args)
  prog = f"python experiments/{os.path.basename(script)}"
  cli.parse(args, argv, prog=prog, description=description)
  if args.seeds < 1:
    raise cli.UsageError(f"--seeds must be at least 1, not {args.seeds}", prog)
  names = run_names(range(args.seeds))
  check_only(args.only, run_names(range(max(args.seeds, 10))), prog, listed=names)
  if not args.skip_training:
    runs = [
        (f"{os.path.abspath(script)}:{run_arg(name)}", os.path.join(args.outdir, name))
        for name in args.only or names
    ]
    train_or_exit(runs, args.parallel)
    if args.only:
      return
  text = study_report(args.outdir, args.seeds)
  with open(os.path.join(args.outdir, "report.md"), "w") as f:
    f.write(text)
  print(text)


DIGITS_NUM_TRAIN = 1_497  # digits' training split (incres.data): a budget in epochs is exact.


def digits_budget(config, steps: int, batch: int, num_evals: int = 10) -> None:
  """Sets `config` (a ConfigDict) to train `steps` steps of `batch` on digits' training split.

  The budget is stated in epochs, which `incres.configs.resolve_config` turns back into exactly
  `steps` steps; evaluation (of the whole test split in one batch) and a checkpoint `num_evals`
  times, the loss logged about 60 times, one checkpoint kept.
  """
  config.batch_size = batch
  config.eval_batch_size = 300  # The whole test split in one batch.
  config.num_epochs = steps * batch / DIGITS_NUM_TRAIN
  config.log_every_steps = max(1, steps // 60)
  config.eval_every_epochs = config.checkpoint_every_epochs = config.num_epochs / num_evals
  config.keep_checkpoints = 1
