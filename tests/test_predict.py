"""`incres.predict`: batched classification (flat memory), the same answers one at a time, and a
clear refusal of a path that is not a run."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from incres import predict
from test_evaluate import trained_run  # The tiny trained run, shared across the test files.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
  return trained_run(tmp_path_factory)


def _images(folder, n: int) -> list[str]:
  rng = np.random.default_rng(0)
  os.makedirs(folder)
  paths = []
  for i in range(n):
    pixels = rng.integers(0, 256, size=(20 + i % 7, 24 + i % 5, 3), dtype=np.uint8)
    paths.append(str(folder / f"{i}.png"))
    Image.fromarray(pixels).save(paths[-1])
  return paths


def test_500_images_are_classified_64_at_a_time_as_one_at_a_time(run, tmp_path, monkeypatch):
  paths = _images(tmp_path / "images", 500)
  (tmp_path / "notes.png").write_text("not an image")
  paths.insert(100, str(tmp_path / "notes.png"))
  shapes = []
  real = predict.classify_batch

  def counting(apply, variables, images):
    shapes.append(images.shape)
    return real(apply, variables, images)

  monkeypatch.setattr(predict, "classify_batch", counting)
  results, failed = predict.classify_images(run, paths, top_k=3)
  assert len(shapes) == math.ceil(500 / 64) == 8
  assert {s[0] for s in shapes} == {64}  # One shape (one compile); the last batch is padded.
  assert [p for p, _ in failed] == [str(tmp_path / "notes.png")]
  assert [p for p, _ in results] == [p for p in paths if not p.endswith("notes.png")]

  picks = [0, 63, 64, 499]
  shapes.clear()
  alone, _ = predict.classify_images(run, [results[i][0] for i in picks], top_k=3, batch_size=1)
  assert len(shapes) == len(picks) and {s[0] for s in shapes} == {1}
  for i, (path, top) in zip(picks, alone):
    assert path == results[i][0]
    assert [name for name, _ in top] == [name for name, _ in results[i][1]]
    np.testing.assert_allclose([p for _, p in top], [p for _, p in results[i][1]], rtol=1e-5)


def test_a_missing_step_or_path_is_named(run, tmp_path, capsys):
  image = _images(tmp_path / "images", 1)[0]
  assert predict.main([f"--checkpoint={run}/checkpoints/999", image]) == 2
  assert "names step 999, which the run does not have (it has [2])" in capsys.readouterr().err
  assert predict.main([f"--checkpoint={tmp_path / 'nowhere'}", image]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_cli_on_a_folder_that_is_not_a_run_exits_2_without_traceback(tmp_path):
  image = _images(tmp_path / "images", 1)[0]
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, "-m", "incres.predict", f"--checkpoint={tmp_path / 'images'}", image],
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env=env,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr
  assert "is not an incres run (no saved step in" in result.stderr
  assert "convert_torch" in result.stderr and "init_from" not in result.stderr
  assert "Traceback" not in result.stderr
