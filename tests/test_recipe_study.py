"""experiments/recipe_study.py: its arms differ from the baseline in one component each, the
baseline is the preact study's run, all components train together in a tiny run, and the report
and figure render from runs' metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from incres import configs, data, errors, train

from test_launch import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "recipe_study.py")
DIGITS = data.DatasetInfo("digits", 10, 1_497, 300, (32, 32, 3), ())


def _module(name: str):
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", name + ".py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


study = _module("recipe_study")


def _resolved(name: str) -> dict:
  return configs.resolve_config(study.get_config(study.run_arg(name)), DIGITS).to_dict()


def test_each_arm_is_the_baseline_with_one_component_on():
  base = _resolved("baseline_s0")
  # The baseline is the preact study's pre-activation ResNet-56 run, key for key.
  residual_study = _module("residual_study")
  preact = residual_study.get_config(residual_study.run_arg("resnet56_preact_s0"))
  assert base == configs.resolve_config(preact, DIGITS).to_dict()
  assert (base["num_train_steps"], base["batch_size"], base["lr_boundaries"]) == (
      300,
      64,
      (150, 225),
  )
  expected = {
      "mix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},  # mix_prob 1, switch 0.5: the defaults.
      "randaugment": {"auto_augment": "randaugment"},  # N=2, M=9: the defaults.
      "sdepth": {"model_kwargs": {"stage_sizes": (9, 9, 9), "drop_path_rate": 0.1}},
  }
  for arm, changed in expected.items():
    c = _resolved(f"{arm}_s1")
    assert {k: c[k] for k in c if c[k] != base[k]} == {**changed, "seed": 1}, arm
  assert (c["mix_prob"], c["mix_switch_prob"]) == (1.0, 0.5)
  assert (c["randaugment_num_ops"], c["randaugment_magnitude"]) == (2, 9)
  assert [n for n, _, _ in study.ARMS] == ["baseline", "mix", "randaugment", "sdepth"]


def test_an_unknown_arm_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="use arm=baseline, arm=mix"):
    study.get_config("arm=cutout")


@pytest.mark.slow  # One tiny compilation of the training and evaluation steps (as the preact study's).
def test_the_components_train_together_in_a_tiny_run(tmp_path):
  """Every arm's settings at once on a 2-unit pre-activation net of width 4: two steps."""
  config = study.get_config("arm=mix,smoke=True")
  config.auto_augment = study.get_config("arm=randaugment,smoke=True").auto_augment
  config.model_kwargs.drop_path_rate = study.get_config("arm=sdepth").model_kwargs.drop_path_rate
  assert config.auto_augment == "randaugment" and config.model_kwargs.drop_path_rate == 0.1
  config.model_kwargs.update(width=4, stage_sizes=(1, 1, 1))
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert 0.0 <= result["eval/top1"] <= 1.0


def _fake_run(workdir, losses, test_errors):
  """A `metrics.jsonl` as the training loop writes it: losses every 10 steps, errors every 20."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, loss in enumerate(losses):
      f.write(json.dumps({"step": 10 * (i + 1), "train/loss": loss, "train/accuracy": 0.5}) + "\n")
    for i, err in enumerate(test_errors):
      f.write(json.dumps({"step": 20 * (i + 1), "eval/top1": 1.0 - err / 100.0}) + "\n")


def test_the_report_and_figure_render_from_metrics(tmp_path):
  out = str(tmp_path)
  for seed, err in ((0, 4.0), (1, 3.0)):
    _fake_run(f"{out}/baseline_s{seed}", [2.0, 0.8, 0.4, 0.2], [50.0, err])
  _fake_run(f"{out}/mix_s0", [2.2, 1.4, 1.0, 0.9], [60.0, 3.0])
  _fake_run(f"{out}/mix_s1", [2.2, 1.4, 1.0, 0.9], [60.0, 3.5])
  _fake_run(f"{out}/sdepth_s0", [2.0, 0.9, 0.5, 0.3], [50.0, 5.0])  # Seed 1 not finished.
  study.main([f"--outdir={out}", "--skip_training"])
  text = (tmp_path / "report.md").read_text()
  assert os.path.getsize(tmp_path / "recipes.png") > 0 and "(recipes.png)" in text
  assert "| mixup 0.2 + CutMix 1.0 | mix_s1 | 40 | 0.900 | 3.50 | 3.50 | not reached |" in text
  assert (
      "| **baseline (pre-act ResNet-56)** | mean of 2 seeds | | 0.200 | 3.50 | 3.50 | 30 |" in text
  )
  assert "seed 0: -1.00, seed 1: +0.50): lower in 1 of 2 seeds" in text
  assert (
      "stochastic depth 0.1 against the baseline, final test error in points (seed 0: +1.00)"
      in text
  )
  assert "RandAugment" not in text.split("![")[0].split("|---|")[1]  # No run: no row.
  assert "seed by seed (" not in text  # Not the preact study's training-speed verdict.
