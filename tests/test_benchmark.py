"""A smoke run of benchmarks/throughput.py on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import pytest

from incres import complexity, models

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import throughput  # noqa: E402  (benchmarks/ is not a package)


def test_throughput_json_vs_torch(capsys):
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  throughput.main(
      ["--model=CifarResNet20", "--batch=2", "--steps=1", "--warmup=0", "--vs_torch", "--json"]
  )
  result = json.loads(capsys.readouterr().out)
  for key in ("model", "batch", "train_img_per_s", "infer_img_per_s", "compile_s"):
    assert key in result, key
  assert result["model"] == "CifarResNet20" and result["batch"] == 2
  assert result["image_size"] == 32 and result["jax_version"] == jax.__version__
  for kind in ("train", "infer"):
    speed = result[f"{kind}_img_per_s"]
    assert math.isfinite(speed) and speed > 0, kind
    assert speed * result[f"{kind}_step_s"] == pytest.approx(2)  # Images per second of batch 2.
    torch_speed = result[f"torch_{kind}_img_per_s"]
    assert math.isfinite(torch_speed) and torch_speed > 0, kind
    assert result[f"{kind}_ratio_vs_torch"] == pytest.approx(speed / torch_speed)
  # Compilation is timed apart from the steps, and a step is not a recompilation.
  assert 0 < result["compile_s"] and result["train_step_s"] < result["compile_s"]
  # XLA's FLOPs per step against incres.complexity's multiply-adds (2 FLOPs each): inference is
  # the forward pass (XLA counted 0.92x on CPU, jax 0.10), training forward and two backward
  # passes (3.0x).
  model = models.get_model("CifarResNet20", num_classes=10)
  macs = complexity.count_macs(model, 32) * 2  # Batch 2.
  flops = {k: result[f"{k}_tflop_per_s"] * 1e12 * result[f"{k}_step_s"] for k in ("train", "infer")}
  assert 0.8 < flops["infer"] / (2 * macs) < 1.2, flops
  assert 2.5 < flops["train"] / (2 * macs) < 3.5, flops
  # The twin is the same network: same number of parameters.
  assert result["params"] == result["torch_params"] == 269_722


def test_profile_step_attributes_time_to_xla_ops(capsys):
  import profile_step  # noqa: E402  (benchmarks/ is not a package)

  profile_step.main(["--model=CifarResNet20", "--batch=2", "--steps=1", "--warmup=0"])
  out = capsys.readouterr().out
  header, *lines = out.splitlines()
  assert header.startswith("CifarResNet20, batch 2, 1 steps") and "ms of op time per step" in header
  shares = [float(line.split("%")[0]) for line in lines[: lines.index("slowest ops:")]]
  assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
  assert any("convolution" in line or "ynn_fusion" in line for line in lines)


def test_conv_weight_grad_table(capsys):
  pytest.importorskip("torch")
  import conv_weight_grad  # noqa: E402  (asserts incres' gradient equals XLA's before timing)

  conv_weight_grad.main(["--shape=4,8,16,16,3,1", "--shape=4,9,3,8,7,2", "--steps=1"])
  rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 4,")]
  assert [r.split("|")[1].strip() for r in rows] == ["4, 8, 16->16, 3x3/1", "4, 9, 3->8, 7x7/2"]
  for row in rows:
    assert all(float(v) > 0 for v in row.strip("|").split("|")[1:])
