"""Unreadable images: skipped deterministically, counted, named; exact resume; the check CLI."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from incres import checkpoint, data, metrics, train

import tiny_config  # tests/ is on the path (pytest's rootdir-relative import).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Three classes of 30 images; every 10th per class (000, 010, 020) is the evaluation split.
CLASSES = ("cat", "dog", "emu")
# One of each kind of broken file, all in the training split.
BAD = {
    "cat/004.jpg": "truncated",
    "dog/006.jpg": "empty",
    "emu/007.png": "text",
}


pytestmark = pytest.mark.usefixtures("compilation_cache")


def write_folder(root: str, bad: dict[str, str] = BAD, per_class: int = 30) -> list[str]:
  """Small JPEG/PNG files per class, then the `bad` ones overwritten; returns the bad paths."""
  rng = np.random.default_rng(0)
  for name in CLASSES:
    os.makedirs(os.path.join(root, name))
    for i in range(per_class):
      image = rng.integers(0, 256, (12 + i % 5, 14, 3), dtype=np.uint8)
      ext = "png" if i % 2 else "jpg"
      encoded = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image)
      tf.io.write_file(os.path.join(root, name, f"{i:03d}.{ext}"), encoded)
  for relative, kind in bad.items():
    path = os.path.join(root, relative)
    assert os.path.exists(path), path  # Broken copies of real files (even numbers are JPEGs).
    with open(path, "rb") as f:
      content = f.read()
    with open(path, "wb") as f:
      broken = {"truncated": content[: len(content) // 2], "empty": b"", "text": b"not an image"}
      f.write(broken[kind])
  return sorted(os.path.join(root, relative) for relative in bad)


def folder_config(root: str, steps: int = 12):
  config = tiny_config.get_config(f"steps={steps},every=4")
  config.dataset = f"folder:{root}"
  config.batch_size = 8
  config.eval_batch_size = 8
  config.lr_boundaries = (8,)
  return config


def take(it, n):
  return [next(it) for _ in range(n)]


def skipping_steps(config, steps: int) -> list[int]:
  """The steps whose batch had unreadable images, from the iterator's counter."""
  it, out, seen = data.create_train_iter(config), [], 0
  for step in range(steps):
    next(it)
    if it.skipped > seen:
      out.append(step)
      seen = it.skipped
  return out


def test_batches_skip_unreadable_images_and_start_at_any_step(tmp_path, caplog):
  bad = write_folder(str(tmp_path))
  config = folder_config(str(tmp_path))
  caplog.set_level(logging.WARNING)
  it = data.create_train_iter(config)
  full = take(it, 14)  # 81 training images, 10 batches an epoch: every bad file is met.
  assert it.skipped >= 3
  for message in (r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()):
    assert any(path in message for path in bad), message
  assert all(any(path in r.getMessage() for r in caplog.records) for path in bad)
  assert all(b["image"].shape == (8, 16, 16, 3) and b["label"].shape == (8,) for b in full)
  assert all(np.all(np.isfinite(b["image"])) for b in full)
  steps = skipping_steps(config, 14)
  assert steps, "no batch met an unreadable file"
  for start in sorted({0, 1, 7, *steps}):
    resumed = take(data.create_train_iter(config, start_step=start), 14 - start)
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_good_batches_are_the_plain_pipelines(tmp_path):
  # The same folder without the broken files: batches away from them are unchanged.
  write_folder(str(tmp_path / "bad"))
  write_folder(str(tmp_path / "good"), bad={})
  bad_config = folder_config(str(tmp_path / "bad"))
  good_config = folder_config(str(tmp_path / "good"))
  affected = set(skipping_steps(bad_config, 10))
  assert 0 < len(affected) < 10
  bad_batches = take(data.create_train_iter(bad_config), 10)
  good_batches = take(data.create_train_iter(good_config), 10)
  for step, (a, b) in enumerate(zip(bad_batches, good_batches)):
    if step not in affected:
      np.testing.assert_array_equal(a["image"], b["image"])
    else:
      assert not np.array_equal(a["image"], b["image"])


def test_a_spare_row_is_another_view_of_its_image_than_in_its_own_batch(tmp_path):
  # A repaired batch's spares are the first rows of the next batch: drawn with the spare seed, not
  # the row's own, or those images would be shown twice that epoch with the same augmentation.
  write_folder(str(tmp_path))
  config = folder_config(str(tmp_path))
  config.augment = "resnet_imagenet"  # Random crops and flips, on the host (CPU: no device work).
  assert data.device_preprocess(config) is None
  it = data.create_train_iter(config)
  batch = next(it)
  k = it.skipped
  after = next(it)
  # Batch 0 meets an unreadable image, batch 1 none: batch 0's k spares are batch 1's first rows.
  assert k >= 1 and it.skipped == k, (k, it.skipped)
  np.testing.assert_array_equal(batch["label"][-k:], after["label"][:k])
  for spare, row in zip(batch["image"][-k:], after["image"][:k]):
    assert not np.array_equal(spare, row), "a spare row has its own row's augmentation"


@pytest.mark.slow
def test_training_runs_through_names_counts_and_resumes_exactly(tmp_path, caplog):
  root = str(tmp_path / "images")
  bad = write_folder(root)
  config = folder_config(root)
  steps = [s for s in skipping_steps(config, 12) if s > 0]
  caplog.set_level(logging.WARNING)
  reference = str(tmp_path / "uninterrupted")
  result = train.train_and_evaluate(config, reference)
  assert result["step"] == 12 and np.isfinite(result["train/loss"])
  logged = "\n".join(r.getMessage() for r in caplog.records)
  assert all(path in logged for path in bad)
  records = metrics.read_metrics(reference)
  counts = [r["train/skipped_images"] for r in records if "train/skipped_images" in r]
  assert len(counts) == 3  # Steps 4, 8, 12.
  it = data.create_train_iter(config)
  take(it, 12)
  assert sum(counts) == it.skipped >= 3

  # A real launch.py run on the same folder, killed with SIGKILL after its first checkpoint (no
  # handler, no cleanup), then resumed by a second launch.py: the same bits as the uninterrupted
  # run, with batches that skip bad images after the resume point.
  from test_checkpoint import complete_steps  # pylint: disable=g-import-not-at-top
  from test_reliability import launch, wait_for  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "resumed")
  args = [
      f"--config={os.path.join(ROOT, 'tests', 'tiny_config.py')}:steps=12,every=4",
      f"--config.dataset=folder:{root}",
      "--config.batch_size=8",
      "--config.eval_batch_size=8",
      "--config.lr_boundaries=(8,)",
      f"--workdir={workdir}",
      f"--jax_cache_dir={tmp_path / 'jax_cache'}",
  ]
  for attempt in range(3):  # A run that reached its end before the kill is tried afresh.
    shutil.rmtree(workdir, ignore_errors=True)
    p = launch(*args)
    wait_for(lambda: complete_steps(workdir), "its first checkpoint", p)
    p.kill()
    p.communicate(timeout=300)
    if p.returncode == -signal.SIGKILL and complete_steps(workdir)[-1] < 12:
      break
  else:
    raise AssertionError(f"the run finished before it was killed, {attempt + 1} times")
  # Killed after checkpoint 4 or (rarely) 8: either way batches with bad images come later.
  resumed_at = complete_steps(workdir)[-1]
  assert any(s >= resumed_at for s in steps), (resumed_at, steps)
  p = launch(*args)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  assert f"at step {resumed_at}." in err  # It resumed, and from that checkpoint.
  a = jax.device_get(checkpoint.load_variables(workdir)[2])
  b = jax.device_get(checkpoint.load_variables(reference)[2])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  rows = metrics.read_metrics(workdir)
  assert [r["step"] for r in rows if "train/loss" in r] == [4, 8, 12]  # Each step logged once.
  resumed_counts = [r["train/skipped_images"] for r in rows if "train/skipped_images" in r]
  assert resumed_counts == counts  # Counted as the uninterrupted run counted them.


_READ_AN_EPOCH = """
import sys
sys.path.insert(0, sys.argv[2])
import test_corrupt
from incres import data
config = test_corrupt.folder_config(sys.argv[1])
it = data.create_train_iter(config)
for _ in range(11):  # 81 training images in batches of 8: every one is met.
  next(it)
assert it.skipped == 1, it.skipped
print(sum(int(b["mask"].sum()) for b in data.create_eval_iter(config)))
"""


@pytest.mark.slow  # A subprocess: libjpeg writes to the process's stderr, which capfd cannot pin.
def test_a_cut_jpeg_is_named_once_without_libjpegs_own_line(tmp_path):
  # libjpeg printed "Improper call to JPEG library in state 201" each time the file was decoded
  # (the pixel mean, the batch, its repair, the reason): 8 lines for one file in 24 steps.
  [bad] = write_folder(str(tmp_path / "images"), bad={"cat/004.jpg": "truncated"})
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-c", _READ_AN_EPOCH, str(tmp_path / "images"), os.path.join(ROOT, "tests")],
      capture_output=True,
      text=True,
      cwd=str(tmp_path),
      env=env,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["9"]  # The evaluation split is whole.
  assert result.stderr.count(bad) == 1, result.stderr[-3000:]
  assert "Skipping unreadable image" in result.stderr and "does not decode" in result.stderr
  assert "Improper call" not in result.stderr and "JPEG library" not in result.stderr


def test_unreadable_eval_image_is_masked_out_and_named(tmp_path, caplog):
  bad = write_folder(str(tmp_path), bad={"dog/010.jpg": "truncated"})
  config = folder_config(str(tmp_path))
  caplog.set_level(logging.WARNING)
  it = data.create_eval_iter(config)
  batches = list(it)
  assert it.skipped == 1 and sum(b["mask"].sum() for b in batches) == 9 - 1
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
  np.testing.assert_array_equal(np.sort(labels), [0, 0, 0, 1, 1, 2, 2, 2])
  assert any(bad[0] in r.getMessage() for r in caplog.records)


def test_each_run_names_its_unreadable_images_once(tmp_path, caplog):
  # A run is a config object (`train_and_evaluate` resolves one per run): its training and
  # evaluation iterators share one record of the images named, and a second run in the same
  # process (a notebook) names them again, where a process-wide record named nothing.
  root = str(tmp_path)
  bad = write_folder(root, bad={"cat/004.jpg": "empty", "dog/010.jpg": "truncated"})
  caplog.set_level(logging.WARNING)

  def named(read) -> list[str]:
    caplog.clear()
    read()
    return [path for path in bad for r in caplog.records if path in r.getMessage()]

  for _ in range(2):  # Two runs.
    config = folder_config(root)
    assert named(lambda: next(data.create_train_iter(config))) == bad[:1]  # cat/004.jpg.
    assert named(lambda: list(data.create_eval_iter(config))) == bad[1:]  # dog/010.jpg.
    assert named(lambda: list(data.create_eval_iter(config))) == []  # Its next evaluation.
    assert named(lambda: next(data.create_train_iter(config))) == []  # Its resume.


def test_a_batch_that_cannot_be_filled_names_the_files(tmp_path):
  names = [f"{c}/{i:03d}.{'png' if i % 2 else 'jpg'}" for c in CLASSES for i in range(1, 10)]
  broken = dict.fromkeys(names, "text")
  write_folder(str(tmp_path), bad=broken, per_class=10)  # Only the eval images are readable.
  config = folder_config(str(tmp_path))
  expected = r"cannot be filled.*00\d\.(png|jpg).*incres\.data check"
  with pytest.raises(data.DatasetError, match=expected):
    next(data.create_train_iter(config))


def run_check(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
      [sys.executable, "-m", "incres.data", "check", *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=env,
      timeout=300,
  )


def test_check_lists_exactly_the_unreadable_files(tmp_path):
  bad = write_folder(str(tmp_path))
  result = run_check(f"folder:{tmp_path}")
  assert result.returncode == 1, result.stderr
  listed = sorted(line.split(": ")[0] for line in result.stdout.splitlines() if ": " in line)
  assert listed == bad
  assert "Input is empty" in result.stdout and "Unknown image file format" in result.stdout
  assert "Invalid JPEG data: it does not end with the end-of-image marker" in result.stdout
  assert (
      "Improper call" not in result.stderr
  )  # libjpeg's own line (see incres.data.decoding.decode).
  assert "Traceback" not in result.stderr


def test_check_user_errors_exit_2_without_traceback(tmp_path):
  result = run_check(f"folder:{tmp_path / 'missing'}")
  assert result.returncode == 2 and "does not exist" in result.stderr, result.stderr
  assert "Traceback" not in result.stderr


def test_check_in_process_other_outcomes(tmp_path, capsys):
  assert data.main(["check", "cifar10"]) == 2
  assert "is not one" in capsys.readouterr().err
  assert data.main(["check", f"folder:{tmp_path}"]) == 2  # An empty folder.
  assert "no image files" in capsys.readouterr().err
  write_folder(str(tmp_path / "good"), bad={})
  assert data.main(["check", f"folder:{tmp_path / 'good'}"]) == 0
  assert "All 90 images" in capsys.readouterr().out


def test_streamed_tfds_skips_and_counts_unreadable_records(caplog):
  # 37 records, 4 of them broken: every epoch (4 batches of 8 from 33 readable records) passes
  # over at least 3 of them.
  good = tf.io.encode_jpeg(np.full((40, 50, 3), 128, np.uint8)).numpy()
  images = [b"broken" if i in (2, 9, 20, 30) else good for i in range(37)]

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del self, split, decoders, read_config, shuffle_files, kwargs
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(37) % 10})

  caplog.set_level(logging.WARNING)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    config = folder_config("unused")
    config.update(dataset="imagenette", eval_split="validation", image_size=32)
    it = data.create_train_iter(config)
    batches = take(it, 8)
    assert all(b["image"].shape == (8, 32, 32, 3) and set(b) == {"image", "label"} for b in batches)
    assert 6 <= it.skipped <= 8
    evaluated = data.create_eval_iter(config)
    assert sum(b["mask"].sum() for b in evaluated) == 33 and evaluated.skipped == 4
  logged = [r.getMessage() for r in caplog.records if "unreadable record" in r.getMessage()]
  # Each epoch (4 batches) passes over at least 3 of the 4, named by the shared counter's log.
  assert any("of imagenette train in epoch 0 (before record" in m for m in logged), logged
  assert any("of imagenette train in epoch 1 (before record" in m for m in logged), logged
  in_eval = [m for m in logged if "of imagenette validation in evaluation" in m]
  assert sum(int(m.split()[1]) for m in in_eval) == 4, in_eval
