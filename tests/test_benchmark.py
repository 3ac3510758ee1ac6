"""A smoke run of benchmarks/throughput.py on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import json
import os
import sys

import pytest

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
  assert result["torch_train_img_per_s"] > 0 and result["torch_infer_img_per_s"] > 0
  assert result["train_ratio_vs_torch"] > 0
  # The twin is the same network: same number of parameters.
  assert result["params"] == result["torch_params"] == 269_722
