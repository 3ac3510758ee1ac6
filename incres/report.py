r"""A Markdown report that sets each run's measured results beside the paper's figure.

  python -m incres.report --workdir=runs/resnet50 --protocol=10crop > report.md
  python -m incres.report --workdir=runs/plain20 --workdir=runs/resnet20 --figures=docs/ > report.md

For each run: the model, its parameters and multiply-adds (and the paper's), the dataset, the steps
trained, the measured top-1/top-5 error, the paper's error for the same setup (model, dataset and
test protocol) with its source, and the difference. Without `--protocol` the errors are the
training loop's last evaluation (`metrics.jsonl`; protocol `single` or `center` as the run's
config says); with it, the run is re-evaluated by `incres.evaluate`. A difference is given only
where the paper reports the same setup: `digits`, `fake` or `imagenette` runs have none, and
the report names the closest paper figure instead. `--figures=DIR` also draws Figures 6 and 7
(`incres.analysis`) into DIR and links them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from absl import flags
import ml_collections

from incres import cli, paper


class PaperFigure(NamedTuple):
  """A published error (%) and where it is printed; top-1 or top-5 may be missing (None)."""

  top1: float | None
  top5: float | None
  source: str


def paper_figure(model: str, dataset: str, protocol: str) -> PaperFigure | None:
  """The paper's error for `model` trained and tested on `dataset` with `protocol`, if printed."""
  if dataset == "cifar10" and protocol == "single" and model in paper.CIFAR10_ERR:
    return PaperFigure(paper.CIFAR10_ERR[model], None, "ResNet Table 6 (CIFAR-10)")
  if dataset != "imagenet2012":
    return None
  if model.startswith("GoogLeNet") and not model.endswith("32"):
    key = {"center": "1crop", "10crop": "10crop", "144crop": "144crop"}.get(protocol)
    if key:
      return PaperFigure(None, paper.GOOGLENET_TOP5_ERR[key], f"GoogLeNet Table 3 ({key}, 1 model)")
    return None
  if protocol == "10crop":
    top1 = paper.IMAGENET_TOP1_ERR_10CROP.get(model)
    source = "ResNet Table 3 (10-crop)"
    if top1 is None and model in paper.IMAGENET_TOP1_ERR_10CROP_TABLE2:
      top1, source = paper.IMAGENET_TOP1_ERR_10CROP_TABLE2[model], "ResNet Table 2 (10-crop)"
    top5 = paper.IMAGENET_TOP5_ERR_10CROP.get(model)
    if top1 is not None or top5 is not None:
      return PaperFigure(top1, top5, source)
  if protocol == "multiscale" and model in paper.IMAGENET_TOP1_ERR_MULTISCALE:
    return PaperFigure(
        paper.IMAGENET_TOP1_ERR_MULTISCALE[model],
        paper.IMAGENET_TOP5_ERR_MULTISCALE[model],
        "ResNet Table 4 (multi-scale)",
    )
  return None


def closest_paper_figure(model: str) -> str | None:
  """The paper's figure for the model's intended setup, for runs on other data (a pointer only)."""
  if model in paper.CIFAR10_ERR:
    return f"CIFAR-10 {paper.CIFAR10_ERR[model]:.2f}% top-1 (ResNet Table 6)"
  if model in paper.IMAGENET_TOP1_ERR_10CROP:
    return f"ImageNet 10-crop {paper.IMAGENET_TOP1_ERR_10CROP[model]:.2f}% top-1 (ResNet Table 3)"
  if model in paper.IMAGENET_TOP1_ERR_10CROP_TABLE2:
    err = paper.IMAGENET_TOP1_ERR_10CROP_TABLE2[model]
    return f"ImageNet 10-crop {err:.2f}% top-1 (ResNet Table 2)"
  if model.startswith("CifarPlain"):
    return "CIFAR-10: Figure 6 only (no table value for plain nets)"
  if model in ("GoogLeNet", "GoogLeNetBN"):
    return f"ImageNet 1 crop {paper.GOOGLENET_TOP5_ERR['1crop']:.2f}% top-5 (GoogLeNet Table 3)"
  return None


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's resolved config: `config.json` in the workdir, else the checkpoint's."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  from incres import checkpoint  # pylint: disable=g-import-not-at-top

  return checkpoint.load_config(workdir)


def complexity_of(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(parameters, multiply-adds per image at `config.image_size`), from shapes alone."""
  from incres import complexity, state  # pylint: disable=g-import-not-at-top

  model = state.create_model(config)
  variables = complexity.abstract_variables(model, config.image_size)
  return complexity.count_params(variables), complexity.count_macs(
      model, config.image_size, variables
  )


def last_eval(workdir: str) -> dict[str, Any]:
  """The last `eval/...` record and training summary of `metrics.jsonl`."""
  from incres import metrics  # pylint: disable=g-import-not-at-top

  records = metrics.read_metrics(workdir)
  evals = [r for r in records if "eval/top1" in r]
  trains = [r for r in records if "train/accuracy" in r]
  out: dict[str, Any] = {"step": max((r["step"] for r in records), default=0)}
  if evals:
    out["top1_err"] = 100.0 * (1.0 - evals[-1]["eval/top1"])
    out["top5_err"] = 100.0 * (1.0 - evals[-1]["eval/top5"]) if "eval/top5" in evals[-1] else None
    out["best_top1_err"] = min(100.0 * (1.0 - r["eval/top1"]) for r in evals)
  if trains:
    out["train_err"] = 100.0 * (1.0 - trains[-1]["train/accuracy"])
  return out


def measure(workdir: str, protocol: str | None = None, **kwargs: Any) -> dict[str, Any]:
  """Everything the report says about one run (see the module docstring)."""
  config = run_config(workdir)
  params, macs = complexity_of(config)
  history = last_eval(workdir)
  modified = bool(config.get("model_kwargs"))
  row = {
      "workdir": workdir,
      "model": config.model,
      "dataset": kwargs.get("dataset") or config.dataset,
      "image_size": config.image_size,
      "params": params,
      "macs": macs,
      # A model with changed fields (e.g. model_kwargs.width) is not the paper's network.
      "paper_params": None if modified else paper.PARAMS.get(config.model),
      "paper_macs": None if modified else paper.MACS.get(config.model),
      "model_kwargs": dict(config.get("model_kwargs") or {}),
      "steps": history["step"],
      "train_err": history.get("train_err"),
      "best_top1_err": history.get("best_top1_err"),
      "loop_top1_err": history.get("top1_err"),
  }
  if protocol is None:
    row.update(
        protocol=config.eval_preprocess,
        top1_err=history.get("top1_err"),
        top5_err=history.get("top5_err"),
        examples=None,
        source="training loop's last eval",
    )
  else:
    from incres import evaluate  # pylint: disable=g-import-not-at-top

    summary = evaluate.summarize(evaluate.score_split(workdir, protocol, **kwargs))
    row.update(
        protocol=protocol,
        top1_err=summary["top1_err"],
        top5_err=summary["top5_err"],
        examples=summary["examples"],
        source=f"incres.evaluate, {summary['views_per_example']} views/example",
    )
  figure = None if modified else paper_figure(config.model, row["dataset"], row["protocol"])
  row["paper"] = figure
  row["closest"] = None if figure or modified else closest_paper_figure(config.model)
  return row


def _fmt(value: float | None, digits: int = 2) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def _diff(measured: float | None, published: float | None) -> str:
  return "–" if measured is None or published is None else f"{measured - published:+.2f}"


def _count(n: int | None, paper_n: float | None, unit: str) -> str:
  if n is None:
    return "–"
  text = f"{n / 1e6:.3f}M" if unit == "params" else f"{n / 1e9:.3f}G"
  if paper_n:
    text += f" ({paper_n / 1e6:.2f}M)" if unit == "params" else f" ({paper_n / 1e9:.2f}G)"
  return text


def format_report(
    rows: Sequence[dict[str, Any]],
    *,
    figures: dict[str, str] | None = None,
    responses: dict[str, dict[str, float]] | None = None,
) -> str:
  """The Markdown report for `measure` rows (and figures / responses, if drawn)."""
  lines = ["# incres report", ""]
  lines += [
      "Errors in %. Paper values are for the same model, dataset and test protocol; Δ = measured −"
      " paper. Parameters and multiply-adds per image are counted from the model's shapes (paper's"
      " figure in brackets).",
      "",
      "| run | model | params | mult-adds | dataset | steps | protocol | top-1 err | top-5 err |"
      " paper top-1 / top-5 | Δ top-1 / top-5 |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  notes = []
  for r in rows:
    p = r["paper"]
    if p:
      published = f"{_fmt(p.top1)} / {_fmt(p.top5)} ({p.source})"
      delta = f"{_diff(r['top1_err'], p.top1)} / {_diff(r['top5_err'], p.top5)}"
    else:
      published, delta = "none for this setup", "–"
      if r["closest"]:
        notes.append(
            f"- {os.path.basename(os.path.normpath(r['workdir']))} ({r['model']} on"
            f" {r['dataset']}): the paper's nearest figure is {r['closest']}; not comparable."
        )
    model = r["model"] + "".join(f", {k}={v}" for k, v in sorted(r["model_kwargs"].items()))
    lines.append(
        f"| {os.path.basename(os.path.normpath(r['workdir']))} | {model} |"
        f" {_count(r['params'], r['paper_params'], 'params')} |"
        f" {_count(r['macs'], r['paper_macs'], 'macs')} @{r['image_size']} | {r['dataset']} |"
        f" {r['steps']} | {r['protocol']} | {_fmt(r['top1_err'])} | {_fmt(r['top5_err'])} |"
        f" {published} | {delta} |"
    )
  lines.append("")
  counts = [str(r["examples"]) for r in rows if r["examples"] is not None]
  lines.append(
      "Measured by: "
      + "; ".join(sorted({r["source"] for r in rows}))
      + "."
      + (
          f" Examples scored: {', '.join(counts)}."
          if counts
          else " Every example of the eval split."
      )
  )
  if notes:
    lines += ["", *notes]
  lines += [
      "",
      "## Training summary",
      "",
      "| run | final training error (last logging window) | final test error (training loop) |"
      " best test error (training loop) |",
      "|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {os.path.basename(os.path.normpath(r['workdir']))} | {_fmt(r['train_err'])} |"
        f" {_fmt(r['loop_top1_err'])} | {_fmt(r['best_top1_err'])} |"
    )
  if responses:
    lines += [
        "",
        "## Layer responses (Figure 7)",
        "",
        "Std of each 3×3 layer's response after BN, before ReLU/addition, over the test set"
        " (per channel, averaged over channels).",
        "",
        "| run | layers | mean std | median std | max std |",
        "|---|---|---|---|---|",
    ]
    import numpy as np  # pylint: disable=g-import-not-at-top

    for label, stds in responses.items():
      v = np.array(list(stds.values()))
      lines.append(f"| {label} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | {v.max():.3f} |")
  if figures:
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
      lines.append(f"![{title}]({path})")
      lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def build_report(
    workdirs: Sequence[str],
    *,
    protocol: str | None = None,
    figures_dir: str | None = None,
    fig6: str | None = None,
    fig7: str | None = None,
    responses_csv: str | None = None,
    **kwargs: Any,
) -> str:
  """Measures every run and returns the report. `figures_dir` draws Figures 6 and 7 there;
  `fig6`/`fig7` link figures already drawn (with `responses_csv`, or fig7's `.csv`, for numbers)."""
  from incres import analysis  # pylint: disable=g-import-not-at-top

  rows = [measure(w, protocol, **kwargs) for w in workdirs]
  figures, responses = {}, None
  if figures_dir:
    fig6 = os.path.join(figures_dir, "fig6.png")
    fig7 = os.path.join(figures_dir, "fig7.png")
    analysis.plot_curves(workdirs, fig6)
    responses = analysis.responses_figure(workdirs, fig7, dataset=kwargs.get("dataset"))
  elif fig7:
    csv_path = responses_csv or os.path.splitext(fig7)[0] + ".csv"
    if os.path.exists(csv_path):
      responses = analysis.read_responses_csv(csv_path)
  if fig6:
    figures["Figure 6: training (thin) and test (bold) error"] = fig6
  if fig7:
    figures["Figure 7: std of 3×3 layer responses"] = fig7
  return format_report(rows, figures=figures, responses=responses)


# ---------------------------------------------------------------------------------------------
# Paired studies (experiments/residual_study.py): a net against its twin at equal budget
# ---------------------------------------------------------------------------------------------


class Arm(NamedTuple):
  """One net of a paired study: its label and its runs, one workdir per seed (seed order)."""

  label: str
  workdirs: tuple[str, ...]


def steps_to_threshold(steps: Sequence[int], losses: Sequence[float], threshold: float):
  """The first logged step whose training loss is at or below `threshold` (None: never)."""
  return next((int(s) for s, l in zip(steps, losses) if l <= threshold), None)


def summarize_run(workdir: str, threshold: float) -> dict[str, Any]:
  """Final training loss, final and best test error (%), steps to `threshold`, from metrics."""
  from incres import analysis  # pylint: disable=g-import-not-at-top

  curves = analysis.loss_curves(workdir)
  (steps, loss), (_, err) = curves["loss"], curves["test"]
  return {
      "steps": int(steps[-1]) if len(steps) else 0,
      "final_loss": float(loss[-1]) if len(loss) else None,
      "final_test_err": float(err[-1]) if len(err) else None,
      "best_test_err": float(err.min()) if len(err) else None,
      "to_threshold": steps_to_threshold(steps, loss, threshold),
  }


def _mean(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def format_pair_section(
    title: str,
    claim: str,
    arms: Sequence[Arm],
    threshold: float,
    *,
    figure: str | None = None,
    verdict: bool = True,
) -> str:
  """A Markdown section: one row per run and per net (mean over seeds), and (with `verdict`) the
  claim checked seed by seed: the first arm, the net the paper says trains faster, against the
  second; further arms (diagnostics) get their rows only."""
  lines = [f"## {title}", "", claim, ""]
  lines += [
      f"| net | run | steps | final training loss | final test error (%) | best test error (%) |"
      f" steps to training loss ≤ {threshold:g} |",
      "|---|---|---|---|---|---|---|",
  ]
  summaries = {}
  for arm in arms:
    rows = [summarize_run(w, threshold) for w in arm.workdirs]
    summaries[arm.label] = rows
    for w, r in zip(arm.workdirs, rows):
      lines.append(
          f"| {arm.label} | {os.path.basename(os.path.normpath(w))} | {r['steps']} |"
          f" {_fmt(r['final_loss'], 3)} | {_fmt(r['final_test_err'])} |"
          f" {_fmt(r['best_test_err'])} | {r['to_threshold'] or 'not reached'} |"
      )
    if len(rows) > 1:
      reached = [r["to_threshold"] for r in rows]
      to = _fmt(_mean(reached), 0) if all(x is not None for x in reached) else "–"
      lines.append(
          f"| **{arm.label}** | mean of {len(rows)} seeds | |"
          f" {_fmt(_mean([r['final_loss'] for r in rows]), 3)} |"
          f" {_fmt(_mean([r['final_test_err'] for r in rows]))} |"
          f" {_fmt(_mean([r['best_test_err'] for r in rows]))} | {to} |"
      )
  if verdict and len(arms) >= 2:
    first, second = (summaries[a.label] for a in arms[:2])
    pairs = list(zip(first, second))
    inf = float("inf")
    faster = sum((a["to_threshold"] or inf) < (b["to_threshold"] or inf) for a, b in pairs)
    lower = sum(
        a["final_loss"] is not None
        and b["final_loss"] is not None
        and a["final_loss"] < b["final_loss"]
        for a, b in pairs
    )
    better_test = sum(
        a["final_test_err"] is not None
        and b["final_test_err"] is not None
        and a["final_test_err"] < b["final_test_err"]
        for a, b in pairs
    )
    lines += [
        "",
        f"{arms[0].label} against {arms[1].label}, seed by seed ({len(pairs)}"
        f" pair{'s' if len(pairs) > 1 else ''}): reaches training loss {threshold:g} first in {faster}, ends with the lower training loss in"
        f" {lower}, with the lower final test error in {better_test}.",
    ]
  if figure:
    lines += ["", f"![{title}]({figure})"]
  return "\n".join(lines) + "\n"


def study_report(sections: Sequence[str], title: str = "Residual study") -> str:
  """The sections of `format_pair_section` under one title."""
  return "\n".join([f"# {title}", "", *sections]).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> str:
  args = flags.FlagValues()
  flags.DEFINE_multi_string(
      "workdir", None, "A run; repeat for several.", required=True, flag_values=args
  )
  flags.DEFINE_string(
      "protocol", None, "Re-evaluate with this incres.evaluate protocol.", flag_values=args
  )
  flags.DEFINE_string(
      "dataset", None, "Override the runs' dataset (with --protocol).", flag_values=args
  )
  flags.DEFINE_string(
      "figures", None, "Draw Figures 6 and 7 into this directory.", flag_values=args
  )
  cli.parse(args, argv, prog="python -m incres.report", description=__doc__.splitlines()[0])
  kwargs = {"dataset": args.dataset} if args.dataset else {}
  text = build_report(args.workdir, protocol=args.protocol, figures_dir=args.figures, **kwargs)
  sys.stdout.write(text)
  return text


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
