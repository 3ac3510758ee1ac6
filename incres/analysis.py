r"""The ResNet paper's Figure 6 (training curves) and Figure 7 (layer responses) for trained runs.

  python -m incres.analysis curves --workdir=runs/plain20 --workdir=runs/plain56 --out=fig6.png
  python -m incres.analysis responses --workdir=runs/plain20 --workdir=runs/resnet20 --out=fig7.png

`curves`: training error (thin lines) and test error (bold lines) against iterations, one colour per
run, from each workdir's `metrics.jsonl` (`train/accuracy`, averaged over the logging window, and
`eval/top1`), as in Figure 6.

`responses`: the standard deviation of every 3×3 layer's response, after BN and before the ReLU or
the addition (the models sow these into the `intermediates` collection), over the test set. The
paper does not say how the std is pooled; here it is the std of each channel over all test images
and positions, averaged over the channels, so a per-channel offset (BN's β) does not count as
response. Two panels as in Figure 7: in layer order, and each run's layers sorted by std,
descending. The numbers are also written as CSV (`--csv`, default: the figure's path with `.csv`).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags
import numpy as np

from incres import cli, errors

_MODEL_LABEL = re.compile(r"^(?:Cifar)?(ResNet|Plain)(\d+)$")


def run_label(workdir: str, model: str | None = None) -> str:
  """ "plain-56" / "ResNet-56" for the CIFAR and ImageNet ResNets, else the workdir's name."""
  match = _MODEL_LABEL.match(model or "")
  if match:
    kind, depth = match.groups()
    return f"{'plain' if kind == 'Plain' else 'ResNet'}-{depth}"
  return os.path.basename(os.path.normpath(workdir))


def _labels(workdirs: Sequence[str], models: Sequence[str | None], labels: Sequence[str] | None):
  """Labels for the legend: given, else from the model, made unique with the workdir's name."""
  if labels:
    if len(labels) != len(workdirs):
      raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs.")
    return list(labels)
  out = [run_label(w, m) for w, m in zip(workdirs, models)]
  return [
      f"{l} ({os.path.basename(os.path.normpath(w))})" if out.count(l) > 1 else l
      for l, w in zip(out, workdirs)
  ]


def _model_name(workdir: str) -> str | None:
  """The run's model, from its `config.json` (no checkpoint needed)."""
  import json  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("model")


# ---------------------------------------------------------------------------------------------
# Figure 6: curves
# ---------------------------------------------------------------------------------------------


def error_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train": (steps, error %), "test": (steps, error %)} from `metrics.jsonl`."""
  from incres import metrics  # pylint: disable=g-import-not-at-top

  records = metrics.read_metrics(workdir)
  if not records:
    raise errors.MissingFileError(f"No metrics in {os.path.join(workdir, metrics.METRICS_FILE)}.")
  curves = {}
  for name, key in (("train", "train/accuracy"), ("test", "eval/top1")):
    points = {}
    for r in records:  # A resumed run may repeat a step: the last record wins.
      if key in r and isinstance(r[key], (int, float)):
        points[int(r["step"])] = 100.0 * (1.0 - float(r[key]))
    steps = np.array(sorted(points), dtype=np.int64)
    curves[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return curves


def plot_curves(
    workdirs: Sequence[str],
    out: str,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Writes Figure 6 for `workdirs` to `out` (PNG); returns the curves by label."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = _labels(workdirs, [_model_name(w) for w in workdirs], labels)
  all_curves = {}
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
  for i, (workdir, name) in enumerate(zip(workdirs, names)):
    curves = error_curves(workdir)
    all_curves[name] = curves
    color = f"C{i}"
    ax.plot(*curves["train"], color=color, linewidth=0.8, alpha=0.8, label=f"{name} train")
    ax.plot(
        *curves["test"], color=color, linewidth=2.4, marker="o", markersize=3, label=f"{name} test"
    )
  ax.set_xlabel("iterations")
  ax.set_ylabel("error (%)")
  ax.set_title(title or "Training (thin) and test (bold) error")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  _save(fig, out)
  plt.close(fig)
  return all_curves


# ---------------------------------------------------------------------------------------------
# Paired studies (experiments/residual_study.py): training loss and test error of twin nets
# ---------------------------------------------------------------------------------------------


def loss_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"loss": (steps, training loss), "test": (steps, test error %)} from `metrics.jsonl`.

  The training loss is the logging window's mean (`train/loss`), the test error `eval/top1`'s.
  """
  from incres import metrics  # pylint: disable=g-import-not-at-top

  records = metrics.read_metrics(workdir)
  if not records:
    raise errors.MissingFileError(f"No metrics in {os.path.join(workdir, metrics.METRICS_FILE)}.")
  curves = {}
  for name, key, scale in (("loss", "train/loss", None), ("test", "eval/top1", 100.0)):
    points = {}
    for r in records:  # A resumed run may repeat a step: the last record wins.
      if key in r and isinstance(r[key], (int, float)):
        points[int(r["step"])] = float(r[key]) if scale is None else scale * (1.0 - float(r[key]))
    steps = np.array(sorted(points), dtype=np.int64)
    curves[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return curves


def plot_pairs(
    arms: Sequence[tuple[str, Sequence[str]]],
    out: str,
    *,
    title: str | None = None,
    threshold: float | None = None,
) -> None:
  """Training loss (left, log scale) and test error (right) of each arm's runs, one colour per
  arm and one line style per seed; `arms` is [(label, [workdir of seed 0, seed 1, ...])]."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.4), dpi=90)
  styles = ("-", "--", ":", "-.")
  for i, (label, workdirs) in enumerate(arms):
    for j, workdir in enumerate(workdirs):
      curves = loss_curves(workdir)
      kwargs = dict(color=f"C{i}", linestyle=styles[j % len(styles)], linewidth=1.2)
      name = f"{label} ({os.path.basename(os.path.normpath(workdir))})"
      left.plot(*curves["loss"], label=name, **kwargs)
      right.plot(*curves["test"], marker="o", markersize=2.5, label=name, **kwargs)
  if threshold is not None:
    left.axhline(threshold, color="0.5", linewidth=0.8, linestyle=":")
  left.set_yscale("log")
  left.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 0.5, not 5 x 10^-1.
  left.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  left.set_ylabel("training loss (window mean)")
  right.set_ylabel("test error (%)")
  for ax in (left, right):
    ax.set_xlabel("iterations")
    ax.grid(True, alpha=0.3)
  right.legend(fontsize=6)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, out)
  plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Figure 7: responses
# ---------------------------------------------------------------------------------------------


def _layer_key(name: str) -> tuple:
  """Network order for sown layer names: the stem first, then stages, blocks, convs (naturally)."""
  parts = re.split(r"(\d+)", name)
  return (0 if name.startswith("stem") else 1, [int(p) if p.isdigit() else p for p in parts])


def _flatten(tree: Any) -> dict[str, Any]:
  """{'stage1_block0': {'bn_out1': (x,)}} -> {'stage1_block0/bn_out1': x} (`_0`, `_1`, ... for a
  layer that sowed several values)."""
  import jax  # pylint: disable=g-import-not-at-top

  from incres import state  # pylint: disable=g-import-not-at-top

  out = {}
  # `sow` keeps each layer's values in a tuple: the tuples are the leaves.
  is_sown = lambda x: isinstance(x, tuple)
  for path, value in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_sown)[0]:
    name = "/".join(state.path_keys(path))
    if isinstance(value, tuple):
      for i, v in enumerate(value):
        out[name if len(value) == 1 else f"{name}_{i}"] = v
    else:
      out[name] = value
  return out


class _Moments:
  """Per-channel count, sum and sum of squares (float64), accumulated batch by batch."""

  def __init__(self):
    self.n, self.s, self.ss = 0.0, None, None

  def add(self, s: np.ndarray, ss: np.ndarray, n: float) -> None:
    s, ss = np.asarray(s, np.float64), np.asarray(ss, np.float64)
    self.s = s if self.s is None else self.s + s
    self.ss = ss if self.ss is None else self.ss + ss
    self.n += float(n)

  def std(self) -> float:
    mean = self.s / self.n
    var = np.maximum(self.ss / self.n - mean**2, 0.0)
    return float(np.mean(np.sqrt(var)))


def layer_responses(
    workdir: str,
    *,
    dataset: str | None = None,
    eval_split: str | None = None,
    max_examples: int | None = None,
    step: int | None = None,
) -> dict[str, float]:
  """{layer name: std of its response} over the run's eval split, in network order.

  The images are the training loop's eval views (`incres.data.create_eval_iter`); padded rows of
  the last batch are left out. Sums are accumulated per channel in float32 on the device and in
  float64 across batches; responses after BN are O(1), so float32 sums of one batch are accurate.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from incres import checkpoint, data  # pylint: disable=g-import-not-at-top
  from incres.models import resnet  # pylint: disable=g-import-not-at-top

  run_config, model, variables = checkpoint.load_variables(workdir, step=step)
  config = ml_collections.ConfigDict(run_config.to_dict())
  for key, value in (("dataset", dataset), ("eval_split", eval_split)):
    if value is not None:
      config[key] = value

  @jax.jit
  def moments(variables, images, mask):
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    # A scanned ResNet sows each stage's repeated blocks stacked: split them into layers.
    responses = resnet.unstack_blocks(state.get("intermediates", {}))
    out = {}
    for name, x in _flatten(responses).items():
      x = x.astype(jnp.float32)
      m = mask.reshape((-1,) + (1,) * (x.ndim - 1))
      axes = tuple(range(x.ndim - 1))
      positions = np.prod(x.shape[1:-1])
      out[name] = (jnp.sum(x * m, axes), jnp.sum(x * x * m, axes), jnp.sum(mask) * positions)
    return out

  acc: dict[str, _Moments] = {}
  seen = 0
  for batch in data.create_eval_iter(config):
    mask = batch["mask"]
    if max_examples is not None:
      keep = np.clip(max_examples - seen - np.arange(len(mask)), 0, 1).astype(mask.dtype)
      mask = mask * keep
    seen += int(mask.sum())
    if not mask.any():
      break
    for name, (s, ss, n) in jax.device_get(moments(variables, batch["image"], mask)).items():
      acc.setdefault(name, _Moments()).add(s, ss, n)
  if not acc:
    raise ValueError(
        f"{run_config.model} sows no layer responses into `intermediates` (only the ResNet family"
        " does), or the eval split is empty."
    )
  return {name: acc[name].std() for name in sorted(acc, key=_layer_key)}


def plot_responses(
    responses: dict[str, dict[str, float]], out: str, *, title: str | None = None
) -> None:
  """Writes Figure 7 (layer order, and sorted by magnitude) for {label: {layer: std}}."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), dpi=100)
  for i, (label, stds) in enumerate(responses.items()):
    values = np.array(list(stds.values()))
    index = np.arange(1, len(values) + 1)
    top.plot(index, values, color=f"C{i}", marker=".", markersize=4, linewidth=1, label=label)
    bottom.plot(
        index,
        np.sort(values)[::-1],
        color=f"C{i}",
        marker=".",
        markersize=4,
        linewidth=1,
        label=label,
    )
  top.set_xlabel("layer index (original)")
  bottom.set_xlabel("layer index (sorted by magnitude)")
  for ax in (top, bottom):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("std of response")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  top.set_title(title or "Std of 3×3 layer responses (after BN, before ReLU/addition)")
  fig.tight_layout()
  _save(fig, out)
  plt.close(fig)


def write_responses_csv(responses: dict[str, dict[str, float]], path: str) -> None:
  """Rows: run, layer_index (network order, from 1), layer, std, sorted_rank (1 = largest)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run", "layer_index", "layer", "std", "sorted_rank"])
    for label, stds in responses.items():
      ranks = {name: r + 1 for r, name in enumerate(sorted(stds, key=lambda n: -stds[n]))}
      for i, (name, std) in enumerate(stds.items()):
        writer.writerow([label, i + 1, name, f"{std:.6g}", ranks[name]])


def read_responses_csv(path: str) -> dict[str, dict[str, float]]:
  """The inverse of `write_responses_csv`."""
  out: dict[str, dict[str, float]] = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      out.setdefault(row["run"], {})[row["layer"]] = float(row["std"])
  return out


def _save(fig, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)


def responses_figure(
    workdirs: Sequence[str],
    out: str,
    *,
    csv_path: str | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
  """Measures every run's responses, writes Figure 7 and the CSV; returns {label: {layer: std}}."""
  names = _labels(workdirs, [_model_name(w) for w in workdirs], labels)
  responses = {name: layer_responses(w, **kwargs) for w, name in zip(workdirs, names)}
  plot_responses(responses, out, title=title)
  write_responses_csv(responses, csv_path or os.path.splitext(out)[0] + ".csv")
  return responses


def main(argv: Sequence[str] | None = None) -> Any:
  args = flags.FlagValues()
  flags.DEFINE_multi_string(
      "workdir", None, "A run; repeat for several.", required=True, flag_values=args
  )
  flags.DEFINE_string("out", None, "The figure (PNG).", required=True, flag_values=args)
  flags.DEFINE_string(
      "labels", None, "Comma-separated legend labels, one per run.", flag_values=args
  )
  flags.DEFINE_string("title", None, "The figure's title.", flag_values=args)
  # `responses` only:
  flags.DEFINE_string(
      "csv", None, "responses: default: the figure's path with .csv.", flag_values=args
  )
  flags.DEFINE_string("dataset", None, "responses: override the run's dataset.", flag_values=args)
  flags.DEFINE_string(
      "eval_split", None, "responses: override the run's eval split.", flag_values=args
  )
  flags.DEFINE_integer(
      "max_examples", None, "responses: measure on the first examples only.", flag_values=args
  )
  prog = "python -m incres.analysis"
  rest = cli.parse(
      args,
      argv,
      prog=prog,
      positional="curves|responses",
      description=__doc__.splitlines()[0]
      + "\n\ncurves: Figure 6.\nresponses: Figure 7 (the flags that start with 'responses:' are"
      " its own).",
  )
  if len(rest) != 1 or rest[0] not in ("curves", "responses"):
    given = f" (given: {' '.join(rest)})" if rest else ""
    raise cli.UsageError(f"Expected one command, curves or responses{given}", prog)
  command = rest[0]
  own = [f"--{n}" for n in ("csv", "dataset", "eval_split", "max_examples") if args[n].present]
  if command == "curves" and own:
    raise cli.UsageError(f"{', '.join(own)}: flags of `responses`, not of `curves`", prog)
  labels = args.labels.split(",") if args.labels else None
  if command == "curves":
    curves = plot_curves(args.workdir, args.out, labels=labels, title=args.title)
    for label, c in curves.items():
      train, test = c["train"][1], c["test"][1]
      print(
          f"{label}: final training error {train[-1] if len(train) else float('nan'):.2f}%,"
          f" final test error {test[-1] if len(test) else float('nan'):.2f}%"
      )
    print(f"Wrote {args.out}")
    return curves
  result = responses_figure(
      args.workdir,
      args.out,
      csv_path=args.csv,
      labels=labels,
      title=args.title,
      dataset=args.dataset,
      eval_split=args.eval_split,
      max_examples=args.max_examples,
  )
  for label, stds in result.items():
    values = np.array(list(stds.values()))
    print(f"{label}: {len(values)} layers, mean std {values.mean():.3f}, max {values.max():.3f}")
  print(f"Wrote {args.out} and {args.csv or os.path.splitext(args.out)[0] + '.csv'}")
  return result


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
