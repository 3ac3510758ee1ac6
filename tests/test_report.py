"""The report: the paper's figure for each setup, complexity, measured errors and differences,
figures on request, the command line."""

from __future__ import annotations

import json
import os

import pytest

from incres import report
from test_evaluate import trained_run  # The tiny trained run, shared across the test files.


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
  return trained_run(tmp_path_factory)


def test_paper_figures_by_setup():
  assert report.paper_figure("CifarResNet56", "cifar10", "single") == (
      6.97,
      None,
      "ResNet Table 6 (CIFAR-10)",
  )
  assert report.paper_figure("ResNet50", "imagenet2012", "10crop")[:2] == (22.85, 6.71)
  assert report.paper_figure("ResNet18", "imagenet2012", "10crop")[:2] == (27.88, None)
  assert report.paper_figure("Plain34", "imagenet2012", "10crop")[:2] == (28.54, 10.02)
  assert report.paper_figure("ResNet152", "imagenet2012", "multiscale")[:2] == (19.38, 4.49)
  assert report.paper_figure("GoogLeNet", "imagenet2012", "144crop")[:2] == (None, 7.89)
  assert report.paper_figure("GoogLeNet", "imagenet2012", "center")[:2] == (None, 10.07)
  # Other data or another protocol: no figure (a different setup is not a comparison).
  assert report.paper_figure("CifarResNet56", "digits", "single") is None
  assert report.paper_figure("CifarResNet56", "cifar10", "center") is None
  assert report.paper_figure("ResNet50", "imagenet2012", "144crop") is None


def test_report_sets_measured_beside_paper_with_difference(tmp_path):
  # A finished CIFAR-10 ResNet-56 run, as far as the report reads it (config and metrics only).
  workdir = tmp_path / "resnet56"
  workdir.mkdir()
  config = {
      "model": "CifarResNet56",
      "dataset": "cifar10",
      "image_size": 32,
      "num_classes": 10,
      "dtype": "float32",
      "model_kwargs": {},
      "eval_preprocess": "single",
  }
  (workdir / "config.json").write_text(json.dumps(config))
  records = [
      {"step": 64000, "train/accuracy": 0.995},
      {"step": 64000, "eval/top1": 0.93, "eval/top5": 0.998},
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  text = report.build_report([str(workdir)])
  row = next(line for line in text.splitlines() if line.startswith("| resnet56 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == "CifarResNet56"
  assert cells[2] == "0.853M (0.85M)"  # 853,018 parameters.
  assert cells[3] == "0.125G @32"  # Multiply-adds at 32×32 (ResNet-56: 125M).
  assert cells[4:9] == ["cifar10", "64000", "single", "7.00", "0.20"]
  assert cells[9] == "6.97 / – (ResNet Table 6 (CIFAR-10))"
  assert cells[10] == "+0.03 / –"


def test_report_on_a_trained_run_with_a_protocol_and_figures(run, tmp_path):
  from incres import evaluate, metrics  # pylint: disable=g-import-not-at-top

  text = report.build_report([run], protocol="10crop", figures_dir=str(tmp_path / "figs"))
  row = next(line for line in text.splitlines() if line.startswith("| incres_tiny_trained_run |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == "CifarResNet20, width=4"
  assert cells[2] == "0.017M"  # Not the paper's network: no paper count beside it.
  assert cells[4:7] == ["fake", "2", "10crop"]
  p = evaluate.score_split(run, "10crop")
  assert cells[7] == f"{evaluate.errors(p.probs, p.labels)[0]:.2f}"
  assert cells[9] == "none for this setup" and cells[10] == "–"
  assert "Examples scored: 37" in text
  loop = [r for r in metrics.read_metrics(run) if "eval/top1" in r][-1]
  assert f"| {100 * (1 - loop['eval/top1']):.2f} |" in text  # The training loop's last eval.
  for name in ("fig6.png", "fig7.png", "fig7.csv"):
    assert os.path.getsize(tmp_path / "figs" / name) > 0
  assert f"]({tmp_path / 'figs' / 'fig6.png'})" in text and "| ResNet-20 | 19 |" in text


def test_command_line_prints_markdown(run, capsys):
  report.main([f"--workdir={run}"])
  out = capsys.readouterr().out
  assert out.startswith("# incres report") and "training loop's last eval" in out


def test_degradation_experiment_gives_all_four_nets_one_budget():
  import importlib.util  # pylint: disable=g-import-not-at-top

  from incres import configs, data  # pylint: disable=g-import-not-at-top

  path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "degradation.py"
  )
  spec = importlib.util.spec_from_file_location("degradation", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cs = {name: module.get_config(f"depth={d},plain={p}") for name, d, p in module.RUNS}
  assert [c.model for c in cs.values()] == [
      "CifarPlain20",
      "CifarPlain56",
      "CifarResNet20",
      "CifarResNet56",
  ]
  for c in cs.values():
    assert set(c.keys()) == set(configs.base_config().keys())
    c = configs.resolve_config(c, data.dataset_info(c))  # Stated in epochs of digits.
    budget = (
        c.num_train_steps,
        c.batch_size,
        c.lr_boundaries,
        c.learning_rate,
        c.dataset,
        c.augment,
    )
    halves = (round(module.STEPS * 0.5), round(module.STEPS * 0.75))
    assert budget == (module.STEPS, module.BATCH, halves, 0.1, "digits", "cifar")
  smoke = module.get_config("smoke=True")
  assert configs.resolve_config(smoke, data.dataset_info(smoke)).num_train_steps == 4
