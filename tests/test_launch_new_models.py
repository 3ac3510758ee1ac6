"""Every model family of issue #16 trains a few steps on the path `launch.py` takes, at tiny widths.

One real `launch.py` subprocess (Inception-v3 through `experiments/inception.py`); the other
families through `incres.train.train_and_evaluate`, the function launch.py's `main` calls, with
the configs launch.py would load (`configs.load` of the same config string).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from incres import configs, runtime, train

from test_launch import ROOT, run_launch

INCEPTION = os.path.join(ROOT, "experiments", "inception.py")
RESNET_CIFAR = os.path.join(ROOT, "experiments", "resnet_cifar.py")


def _launch_on_digits(tmp_path, spec: str, *overrides: str):
  """`launch.py --config=<spec>,dataset=digits,smoke=True,tiny=True` in a subprocess, scoring 16
  test digits (not all 300 at the smoke settings' batch: the test's cost); it must exit 0.
  Returns (its stdout, the run's config.json, its metrics.jsonl rows)."""
  workdir = tmp_path / "run"
  result = run_launch(
      f"--config={spec},dataset=digits,smoke=True,tiny=True",
      f"--workdir={workdir}",
      "--jax_cache_dir=",
      *overrides,
      "--config.eval_split=test[:16]",
      "--config.eval_batch_size=16",
      cwd=str(tmp_path),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / "config.json") as f:
    config = json.load(f)
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return result.stdout, config, rows


@pytest.mark.slow
def test_inception_v3_trains_through_the_launch_py_subprocess(tmp_path):
  stdout, config, rows = _launch_on_digits(tmp_path, f"{INCEPTION}:model=v3")
  assert config["model"] == "InceptionV3" and config["model_kwargs"]["width"] == 0.0625
  assert "step 3/3 (100.0%)" in stdout and "eval at step 3" in stdout
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 3 and np.all(np.isfinite(losses))


# (config string, model it must build): every other new family, as launch.py would load it.
IN_PROCESS = [
    (f"{INCEPTION}:model=v4,dataset=digits,smoke=True,tiny=True", "InceptionV4"),
    (f"{INCEPTION}:model=resnet_v1,dataset=digits,smoke=True,tiny=True", "InceptionResNetV1"),
    (f"{INCEPTION}:model=resnet_v2,dataset=digits,smoke=True,tiny=True", "InceptionResNetV2"),
    (f"{RESNET_CIFAR}:preact=True,depth=164,smoke=True,tiny=True", "CifarPreActResNet164"),
    # No experiment config trains the ImageNet pre-activation nets yet: the tests' tiny recipe.
    (
        os.path.join(ROOT, "tests", "tiny_config.py") + ":model=PreActResNet18,steps=3,every=3",
        "PreActResNet18",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec,model", IN_PROCESS, ids=[m for _, m in IN_PROCESS])
def test_new_family_trains_a_few_steps_as_launch_py_runs_it(tmp_path, spec, model):
  config = configs.load(spec)
  if model == "PreActResNet18":
    config.model_kwargs.update(width=4, stage_sizes=(1, 1, 1, 1))
  config.eval_split, config.eval_batch_size = "test[:16]", 16  # As in the subprocess test.
  config.num_train_steps = min(config.num_train_steps, 3)
  config.eval_every_steps = config.checkpoint_every_steps = config.num_train_steps
  assert config.model == model
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 and np.isfinite(result["train/loss"])
  assert 0.0 <= result["eval/top1"] <= 1.0


# --- The ResNet descendants of issue #26, in bfloat16 with stochastic depth on ---------------------

# Tiny versions (one block per stage, narrow) of each structurally distinct new network: grouped
# bottlenecks (ResNeXt, its real cardinality 32), widened bottlenecks (WRN-50-2), the deep stem and
# average-pool shortcuts (ResNet-D; ResNet-B and -C are its subsets), and the CIFAR wide ResNet
# with dropout. ResNeXt101_32x8d / 64x4d, WideResNet101_2, ResNet50B/C and ResNet101D run the same
# code with other table values (their exact counts and torchvision/timm logits are tested in
# test_models.py and test_convert_torch.py).
DESCENDANTS = {
    "ResNeXt50_32x4d": dict(width=16, stage_sizes=(1, 1, 1, 1)),
    "WideResNet50_2": dict(width=4, stage_sizes=(1, 1, 1, 1)),
    "ResNet50D": dict(width=8, stage_sizes=(1, 1, 1, 1)),
    "WRN28_10": dict(width=2, stage_sizes=(1, 1, 1), dropout_rate=0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(m for m in DESCENDANTS if m != "WRN28_10"))
def test_resnet_descendant_trains_in_bfloat16_with_drop_path(tmp_path, model):
  spec = os.path.join(ROOT, "tests", "tiny_config.py") + f":model={model},steps=2,every=2"
  config = configs.load(spec)  # As launch.py loads --config.
  config.model_kwargs.update(DESCENDANTS[model], drop_path_rate=0.1)
  config.update(dtype="bfloat16", image_size=16, eval_split="test[:16]", eval_batch_size=16)
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train/loss"]) and result["train/loss"] > 1.0
  assert np.isfinite(result["eval/loss"]) and 0.0 <= result["eval/top1"] <= 1.0


@pytest.mark.slow
def test_wrn28_10_in_bfloat16_through_launch_py_evaluates_finite_logits(tmp_path):
  # WRN28_10 runs as users run it: jaxlib 0.12.1's XLA:CPU fuses its bfloat16 inference graph into
  # a YNN fusion that returns NaN logits unless launch.py turns those fusions off before JAX
  # starts (runtime.avoid_cpu_bfloat16_nan): eval/loss was NaN here before it did.
  _, config, rows = _launch_on_digits(
      tmp_path,
      f"{RESNET_CIFAR}:model=wrn28_10",
      "--config.dtype=bfloat16",
      "--config.num_train_steps=2",
      "--config.eval_every_steps=2",
      "--config.checkpoint_every_steps=2",
  )
  assert config["model"] == "WRN28_10" and config["dtype"] == "bfloat16"
  evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
  assert len(evals) == 1 and np.isfinite(evals[0]) and 1.0 < evals[0] < 10.0


@pytest.mark.parametrize(
    "dtype,jaxlib,flags,expected",
    [
        ("bfloat16", "0.12.1", "--xla_force_host_platform_device_count=8", "appended"),
        ("bfloat16", "0.12.1", "", "appended"),
        ("float32", "0.12.1", "", "unchanged"),  # The fusions speed float32 up and are right.
        ("bfloat16", "0.10.2", "", "unchanged"),  # jaxlib 0.10 does not know the flag.
        ("bfloat16", "0.13.0", "", "unchanged"),  # Not seen there: left to XLA.
        ("bfloat16", "0.12.1", "--xla_cpu_experimental_ynn_fusion_type=all", "unchanged"),
    ],
)
def test_the_bfloat16_workaround_only_touches_jaxlib_0_12_bfloat16_runs(
    monkeypatch, dtype, jaxlib, flags, expected
):
  monkeypatch.setenv("XLA_FLAGS", flags)
  monkeypatch.setattr(runtime.metadata, "version", lambda name: {"jaxlib": jaxlib}[name])
  changed = runtime.avoid_cpu_bfloat16_nan(dtype)
  after = os.environ["XLA_FLAGS"]
  if expected == "unchanged":
    assert not changed and after == flags
  else:
    assert changed and after == f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()
