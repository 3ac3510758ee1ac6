"""Figures 6 and 7: curves read from metrics.jsonl, layer responses against a direct computation,
real PNG files and CSV, the command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from incres import analysis
from test_evaluate import trained_run  # The tiny trained run, shared across the test files.


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
  return trained_run(tmp_path_factory)


def _fake_run(path, model, records):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"model": model}))
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _assert_png(path, min_size=(400, 300)):
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    # Not blank: a plot has many distinct colours.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


def test_labels_follow_the_paper():
  assert analysis.run_label("runs/a", "CifarPlain56") == "plain-56"
  assert analysis.run_label("runs/a", "CifarResNet110") == "ResNet-110"
  assert analysis.run_label("runs/a", "ResNet50") == "ResNet-50"
  assert analysis.run_label("runs/my_googlenet", "GoogLeNet") == "my_googlenet"


def test_layer_order_is_network_order():
  names = [
      "stage1_block10/bn_out1",
      "stage2_block0/bn_out1",
      "stem_bn_out",
      "stage1_block2/bn_out2",
      "stage1_block2/bn_out1",
  ]
  assert sorted(names, key=analysis._layer_key) == [
      "stem_bn_out",
      "stage1_block2/bn_out1",
      "stage1_block2/bn_out2",
      "stage1_block10/bn_out1",
      "stage2_block0/bn_out1",
  ]


def test_error_curves_read_training_and_test_error(tmp_path):
  records = [
      {"step": 10, "train/accuracy": 0.25, "train/loss": 2.0},
      {"step": 20, "train/accuracy": 0.5},
      {"step": 20, "eval/top1": 0.6, "eval/top5": 0.9},
      {"step": 30, "train/accuracy": 0.75},
      {"step": 40, "train/accuracy": 0.9},
      {"step": 40, "eval/top1": 0.8, "eval/top5": 1.0},
  ]
  curves = analysis.error_curves(_fake_run(tmp_path / "r", "CifarPlain20", records))
  np.testing.assert_array_equal(curves["train"][0], [10, 20, 30, 40])
  np.testing.assert_allclose(curves["train"][1], [75, 50, 25, 10])
  np.testing.assert_array_equal(curves["test"][0], [20, 40])
  np.testing.assert_allclose(curves["test"][1], [40, 20])


def test_curves_command_draws_figure_6(tmp_path, capsys):
  a = _fake_run(
      tmp_path / "a",
      "CifarPlain20",
      [{"step": s, "train/accuracy": s / 100, "eval/top1": s / 110} for s in range(10, 100, 10)],
  )
  b = _fake_run(
      tmp_path / "b",
      "CifarPlain56",
      [{"step": s, "train/accuracy": s / 200, "eval/top1": s / 220} for s in range(10, 100, 10)],
  )
  out = tmp_path / "fig" / "fig6.png"
  curves = analysis.main(["curves", f"--workdir={a}", f"--workdir={b}", f"--out={out}"])
  assert list(curves) == ["plain-20", "plain-56"]
  _assert_png(out)
  assert "plain-56: final training error 55.00%" in capsys.readouterr().out


def test_responses_equal_a_direct_computation(run):
  import jax  # pylint: disable=g-import-not-at-top

  from incres import checkpoint, data  # pylint: disable=g-import-not-at-top

  stds = analysis.layer_responses(run)
  # CifarResNet20: the stem conv and 2 convs × 9 blocks.
  assert (
      len(stds) == 19
      and list(stds)[0] == "stem_bn_out"
      and list(stds)[-1] == "stage3_block2/bn_out2"
  )
  config, model, variables = checkpoint.load_variables(run)
  batches = list(data.create_eval_iter(config))
  images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  assert len(images) == 37
  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  x = np.asarray(jax.device_get(state["intermediates"]["stage2_block1"]["bn_out2"][0]), np.float64)
  expected = x.reshape(-1, x.shape[-1]).std(axis=0).mean()
  assert stds["stage2_block1/bn_out2"] == pytest.approx(expected, rel=1e-4)


def test_responses_command_draws_figure_7_and_writes_csv(run, tmp_path):
  out = tmp_path / "fig7.png"
  result = analysis.main(
      [
          "responses",
          f"--workdir={run}",
          f"--workdir={run}",
          f"--out={out}",
          "--labels=a,b",
          "--max_examples=20",
      ]
  )
  _assert_png(out, (400, 400))
  assert list(result) == ["a", "b"] and result["a"] == result["b"]
  with open(tmp_path / "fig7.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 19
  assert [int(r["layer_index"]) for r in rows[:19]] == list(range(1, 20))
  assert sorted(int(r["sorted_rank"]) for r in rows[:19]) == list(range(1, 20))
  assert analysis.read_responses_csv(tmp_path / "fig7.csv")["a"] == pytest.approx(
      result["a"], rel=1e-5
  )
