"""Complexity table: `python -m incres.summary` prints every named model's size and cost.

Parameters are counted exactly from `jax.eval_shape` of `init`. Multiply-adds are counted by formula
(conv and dense layers of the inference forward pass, `incres.complexity.count`), in under a minute
for every model on 2 CPU cores. `--xla` adds XLA's cost analysis of the lowered forward pass
(flops / 2) beside it as a cross-check; that traces every layer of every model again, unscanned,
and takes several times as long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from absl import flags

from incres import cli, complexity, errors, models, paper


def _fmt(n: float | None, scale: float, unit: str) -> str:
  return "" if n is None else f"{n / scale:.3f}{unit}"


def rows(names: Sequence[str] | None = None, xla: bool = False) -> Iterator[dict[str, Any]]:
  """Yields one dict per model: name, input size, params, MACs, the paper's figures, ratios.

  `xla` adds XLA's count (`xla_macs`, else None), a cross-check that traces the model again.
  """
  for name in names or models.MODELS:
    size = models.MODELS[name]
    model = models.get_model(name)
    params, macs = complexity.count(model, size)
    yield {
        "model": name,
        "input": size,
        "params": params,
        "paper_params": paper.PARAMS.get(name),
        "macs": macs,
        "xla_macs": complexity.xla_macs(model, size) if xla else None,
        "paper_macs": paper.MACS.get(name),
    }


def format_table(table: Iterable[dict[str, Any]]) -> str:
  """The rows as a Markdown table; the XLA column only if a row has XLA's count."""
  table = list(table)
  xla = any(r["xla_macs"] is not None for r in table)
  head = ["model", "input", "params", "paper params", "MACs (formula)"]
  head += ["MACs (XLA)"] * xla + ["paper MACs", "MACs ratio"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table:
    ratio = f"{r['macs'] / r['paper_macs']:.3f}" if r["paper_macs"] else ""
    pp = r["paper_params"]
    pp = "" if pp is None else (f"{pp:,}" + (" ✓" if pp == r["params"] else " ✗"))
    cells = [r["model"], r["input"], f"{r['params']:,}", pp, _fmt(r["macs"], 1e9, "G")]
    cells += [_fmt(r["xla_macs"], 1e9, "G")] * xla + [_fmt(r["paper_macs"], 1e9, "G"), ratio]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines)


NOTES = """
Parameters include the auxiliary heads of the GoogLeNets (without them: GoogLeNet 6,998,552,
GoogLeNetBN 6,624,904) and of InceptionV3 (23,834,568 without; its 5.713G at 299x299 is
torchvision's figure, which the paper's abstract rounds to "5 billion"). MACs are for one image at the model's input size, inference only.
GoogLeNet's 1.58G is 5.5% above the paper's "1.5 billion": every Table 1 row matches its
formula count except two rows that are inconsistent in the paper itself (conv1 lists 34M ops where
a 7x7x3x64 conv on 112x112 outputs is 118M; 5a lists 54M where its filter counts give 51M); the
sum of Table 1's ops column with conv1 corrected is 1.586G, 0.2% from the count here.
ResNet MACs use the paper's strides (v1: stride on the bottleneck's first 1x1).
XLA's lowered cost analysis (--xla) skips the zero-padded positions, so it reads lower on padded
convs.
Inception-v4 / Inception-ResNet: the paper gives no parameter or multiply-add counts; InceptionV4
and the *Timm twins equal timm's parameter counts, the paper's two Inception-ResNets are counted
from its figures (incres/models/inception_v4.py).
"""


def main(argv: Sequence[str] | None = None) -> int:
  args = flags.FlagValues()
  flags.DEFINE_bool(
      "xla",
      False,
      "Also XLA's cost analysis of each model's lowered forward pass, a cross-check of the formula"
      " (several times as slow: it traces every layer of every model again).",
      flag_values=args,
  )
  # The cross-check was on by default before --xla; the spelling that turned it off still works.
  flags.DEFINE_bool("no_xla", False, "Without XLA's cross-check (the default).", flag_values=args)
  flags.DEFINE_alias("no-xla", "no_xla", flag_values=args)
  names = cli.parse(
      args,
      argv,
      prog="python -m incres.summary",
      description=__doc__.splitlines()[0] + "\n\nMODEL: model names (default: every model).",
      positional="[MODEL ...]",
  )
  unknown = [n for n in names if n not in models.MODELS]
  if unknown:
    raise errors.ConfigError(
        f"Unknown model {', '.join(map(repr, unknown))}. incres.models has:"
        f" {', '.join(models.MODELS)}."
    )
  start = time.time()
  print(format_table(rows(names or None, xla=args.xla and not args.no_xla)))
  print(NOTES.strip())
  print(f"\n({time.time() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
