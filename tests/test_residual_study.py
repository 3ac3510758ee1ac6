"""experiments/residual_study.py: its configs, a tiny run of each net, the report and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from incres import complexity, configs, data, errors, report, state, train

from test_launch import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "residual_study.py")


def _module():
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("residual_study", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


study = _module()


def _resolved(name: str):
  c = study.get_config(study.run_arg(name))
  return configs.resolve_config(c, data.DatasetInfo("digits", 10, 1_497, 300, (32, 32, 3), ()))


def test_the_twins_of_a_study_differ_only_in_the_net_and_the_seed():
  differing = {"model", "model_kwargs", "seed"}
  for study_name, (_, _, names) in study.STUDIES.items():
    first, second = names[:2]  # The claim's pair.
    a, b = _resolved(f"{first}_s0").to_dict(), _resolved(f"{second}_s1").to_dict()
    assert {k for k in a if a[k] != b[k]} <= differing, study_name
    steps, batch = study.BUDGETS[study_name]
    assert a["num_train_steps"] == steps and a["batch_size"] == batch  # The stated budget.
    assert (a["seed"], b["seed"]) == (0, 1)


def test_the_diagnostic_twin_differs_from_the_twin_only_in_clipping():
  plain = _resolved("inception_plain_s0").to_dict()
  noclip = _resolved("inception_plain_noclip_s0").to_dict()
  assert plain["grad_clip_norm"] == 2.0 and noclip["grad_clip_norm"] is None
  assert {k for k in plain if plain[k] != noclip[k]} == {"grad_clip_norm"}
  assert study.STUDIES["inception"][2] == (
      "inception_residual",
      "inception_plain",
      "inception_plain_noclip",
  )


def test_the_twins_have_the_same_parameter_count():
  for _, _, names in study.STUDIES.values():
    counts = []
    for name in names:
      c = _resolved(f"{name}_s0")
      c.num_classes = 10
      if c.model.startswith("Inception"):  # One block of each kind: a quicker eval_shape.
        c.model_kwargs.num_blocks = (1, 1, 1)
      counts.append(
          complexity.count_params(complexity.abstract_variables(state.create_model(c), 32))
      )
    assert len(set(counts)) == 1, (names, counts)


def test_an_unknown_study_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="use study=inception or study=preact"):
    study.get_config("study=googlenet")


@pytest.mark.slow  # Four tiny compilations of the training and evaluation steps.
# The no-clipping twin is the twin's net and config but for clipping (tested above): not repeated.
@pytest.mark.parametrize("arm", [n for n, _, _ in study.ARMS if n != "inception_plain_noclip"])
def test_each_net_trains_two_steps(tmp_path, arm):
  config = study.get_config(study.run_arg(f"{arm}_s0") + ",smoke=True")
  # Same code path at a fraction of the compile time: one block (unit) of each kind, few filters.
  if config.model.startswith("Inception"):
    config.model_kwargs.update(width=0.0625, num_blocks=(1, 1, 1))
  else:
    config.model_kwargs.update(width=4, stage_sizes=(1, 1, 1))
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  result = train.train_and_evaluate(config, str(tmp_path / arm))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert 0.0 <= result["eval/top1"] <= 1.0


def _fake_run(workdir, losses, errors):
  """A `metrics.jsonl` as the training loop writes it: losses every 10 steps, errors every 20."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, loss in enumerate(losses):
      f.write(json.dumps({"step": 10 * (i + 1), "train/loss": loss, "train/accuracy": 0.5}) + "\n")
    for i, err in enumerate(errors):
      f.write(json.dumps({"step": 20 * (i + 1), "eval/top1": 1.0 - err / 100.0}) + "\n")


def test_the_report_and_figures_render_from_metrics(tmp_path):
  out = str(tmp_path)
  for seed in (0, 1):
    _fake_run(f"{out}/inception_residual_s{seed}", [2.0, 0.8, 0.4, 0.2], [50.0, 10.0])
    _fake_run(f"{out}/inception_plain_s{seed}", [2.3, 2.2, 1.0, 0.45 + seed], [90.0, 40.0])
  _fake_run(f"{out}/inception_plain_noclip_s0", [2.3, 0.3, 0.2, 0.1], [80.0, 5.0])
  _fake_run(f"{out}/resnet56_preact_s0", [2.0, 1.0, 0.6, 0.3], [30.0, 5.0])
  text = study.study_report(out)
  assert os.path.getsize(tmp_path / "inception.png") > 0 and (tmp_path / "preact.png").exists()
  assert (
      "| Inception-ResNet-v1-32 | inception_residual_s0 | 40 | 0.200 | 10.00 | 10.00 | 30 |" in text
  )
  assert (
      "| non-residual twin | inception_plain_s1 | 40 | 1.450 | 40.00 | 40.00 | not reached |"
      in text
  )
  assert "| **non-residual twin** | mean of 2 seeds | | 0.950 | 40.00 | 40.00 | – |" in text
  assert (
      "(2 pairs): reaches training loss 0.5 first in 2, ends with the lower training loss in 2"
      in text
  )
  # The diagnostic arm gets its row; the verdict stays residual against the clipped twin.
  assert "| twin, no clipping | inception_plain_noclip_s0 | 40 | 0.100 | 5.00 | 5.00 | 20 |" in text
  assert text.count("seed by seed") == 1
  assert "![" in text and "(inception.png)" in text
  # A study with one net (the other's runs missing) still gets its rows, without the verdict.
  assert "| pre-activation ResNet-56 | resnet56_preact_s0 | 40 | 0.300 | 5.00 | 5.00 | 40 |" in text


def test_steps_to_threshold_is_the_first_logged_step_at_or_below_it():
  assert report.steps_to_threshold([10, 20, 30], [0.9, 0.5, 0.4], 0.5) == 20
  assert report.steps_to_threshold([10, 20], [0.9, 0.6], 0.5) is None


@pytest.mark.slow  # Two short subprocesses (no JAX computation).
@pytest.mark.parametrize(
    "args,message",
    [
        (["--only=inception_residual_s0,bogus_s0"], "--only: unknown run bogus_s0"),
        (["--skip_training"], "No finished runs in"),
    ],
)
def test_user_errors_exit_2_with_one_message(tmp_path, args, message):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--outdir={tmp_path / 'out'}", *args],
      capture_output=True,
      text=True,
      cwd=str(tmp_path),
      env=env,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
