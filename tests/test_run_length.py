"""Runs sized in epochs from the dataset's actual size; folder datasets' split layouts.

`incres.configs.resolve_config` turns the epoch-valued keys into step counts:
num_train_steps = max(1, round(num_epochs * num_train / batch_size)), and every other step value is
its fraction of the run, round(num_train_steps * value_epochs / num_epochs).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from incres import configs, data, train
from incres import state as state_lib


def _image_folder(root, counts: dict[str, int], size: int = 8) -> str:
  """`root/<class>/<i>.png` for each class and count; returns `root`."""
  rng = np.random.default_rng(0)
  for name, n in counts.items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(n):
      pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, name, f"{i:03d}.png"))
  return str(root)


@pytest.fixture
def folder54(tmp_path):
  """Three classes of 20 images in one tree: 54 for training, every 10th (6) held out."""
  return "folder:" + _image_folder(tmp_path / "mine", {"cat": 20, "dog": 20, "owl": 20})


def _info(num_train: int) -> data.DatasetInfo:
  return data.DatasetInfo("x", 10, num_train, 10, (32, 32, 3), ())


# --- Resolution ---------------------------------------------------------------------------------


def test_a_54_image_folder_sizes_the_run_by_its_own_length(folder54):
  c = configs.load(f"experiments/googlenet.py:dataset={folder54}")
  info = data.dataset_info(c)
  assert (info.num_train, info.num_eval) == (54, 6)
  r = configs.resolve_config(c, info)
  # 60 epochs of 54 at batch 32 = 101.25 steps; the decay every 8/60 and eval every 4/60 of them.
  assert r.num_train_steps == round(60 * 54 / 32) == 101
  assert r.lr_decay_steps == round(101 * 8 / 60) == 13
  assert r.eval_every_steps == r.checkpoint_every_steps == round(101 * 4 / 60) == 7
  ft = configs.resolve_config(configs.load(f"experiments/finetune.py:dataset={folder54}"), info)
  assert ft.num_train_steps == round(5 * 54 / 64) == 4  # Not ImageNet's (or any table's) length.
  assert ft.eval_every_steps == ft.checkpoint_every_steps == 4


@pytest.mark.parametrize("num_train", [1, 53, 54, 55, 1_497, 50_000])
def test_steps_are_the_rounded_epochs_and_the_schedule_its_fractions(num_train):
  c = configs.base_config()
  c.batch_size, c.num_epochs = 64, 10.0
  c.lr_boundary_epochs, c.eval_every_epochs, c.checkpoint_every_epochs = (5.0, 7.5), 2.5, 10.0
  c.warmup_epochs = 0.1
  r = configs.resolve_config(c, _info(num_train))
  total = max(1, round(10 * num_train / 64))
  assert r.num_train_steps == total
  assert tuple(r.lr_boundaries) == (round(total * 0.5), round(total * 0.75))
  assert r.eval_every_steps == max(1, round(total * 0.25))
  assert r.checkpoint_every_steps == total
  assert r.warmup_steps == max(1, round(total * 0.01))  # A non-zero warm-up never vanishes.
  assert r.lr_decay_steps == 0  # lr_decay_epochs is 0: no exponential decay configured.
  assert c.num_train_steps is None and c.lr_boundaries is None  # The caller's config is untouched.


def test_explicit_num_train_steps_keeps_the_schedule_proportions():
  c = configs.load("experiments/resnet_cifar.py:depth=110")
  c.num_train_steps = 1_000
  r = configs.resolve_config(c, _info(50_000))
  assert r.num_train_steps == 1_000
  assert tuple(r.lr_boundaries) == (500, 750)  # 32k/64k and 48k/64k of the run.
  assert r.warmup_steps == round(1_000 * 400 / 64_000)
  assert r.eval_every_steps == r.checkpoint_every_steps == round(1_000 * 4_000 / 64_000)
  # Step values set explicitly are kept as they are.
  c.lr_boundaries, c.eval_every_steps = (100, 900), 7
  r = configs.resolve_config(c, _info(50_000))
  assert (tuple(r.lr_boundaries), r.eval_every_steps, r.checkpoint_every_steps) == (
      (100, 900),
      7,
      62,
  )


def test_unresolved_schedule_asks_for_resolve_config():
  c = configs.base_config()
  with pytest.raises(ValueError, match="resolve_config"):
    state_lib.create_learning_rate_fn(c)
  c.num_epochs = 0.0
  with pytest.raises(ValueError, match="num_epochs=0.0 must be positive"):
    configs.resolve_config(c, _info(100))


def test_the_printed_line_states_examples_epochs_steps_and_boundaries():
  c = configs.load("experiments/resnet_cifar.py:dataset=digits")
  r = configs.resolve_config(c, _info(1_497))
  assert configs.describe_run_length(r, _info(1_497)) == (
      "1,497 examples, 34.2 epochs = 400 steps of batch 128; lr x0.1 at steps 200, 300;"
      " eval every 100, checkpoint every 100 steps"
  )
  g = configs.resolve_config(configs.load("experiments/googlenet.py"), _info(1_281_167))
  assert configs.describe_run_length(g, _info(1_281_167)) == (
      "1,281,167 examples, 60 epochs = 2,402,188 steps of batch 32; lr x0.96 every 320,292 steps;"
      " eval every 160,146, checkpoint every 160,146 steps"
  )


def test_a_run_prints_its_length_and_saves_the_resolved_steps(tmp_path, capsys):
  c = configs.base_config()
  c.model_kwargs.width = 4
  c.dataset, c.train_split, c.eval_split = "digits", "train[:32]", "test[:32]"
  c.image_size, c.augment, c.batch_size, c.eval_batch_size = 16, "none", 16, 32
  c.num_epochs, c.lr_boundary_epochs, c.log_every_steps = 1.0, (0.5,), 1
  c.eval_every_epochs = c.checkpoint_every_epochs = 1.0
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(c, workdir)
  assert result["step"] == 2
  out = capsys.readouterr().out
  assert "32 examples, 1 epochs = 2 steps of batch 16; lr x0.1 at steps 1;" in out
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["num_train_steps"] == 2 and saved["num_epochs"] == 1.0
  assert saved["lr_boundaries"] == [1]
  assert (saved["eval_every_steps"], saved["checkpoint_every_steps"], saved["warmup_steps"]) == (
      2,
      2,
      0,
  )


# --- folder: layouts ----------------------------------------------------------------------------


def _folder_config(root: str, eval_split: str = "test"):
  c = configs.base_config()
  c.dataset, c.eval_split = f"folder:{root}", eval_split
  return c


def test_single_tree_holds_out_every_10th_image_per_class(folder54):
  root = folder54[len("folder:") :]
  train_paths, _, classes = data.sources._folder_files(root, "train")
  eval_paths, eval_labels, _ = data.sources._folder_files(root, "test")
  assert classes == ("cat", "dog", "owl")
  assert [os.path.basename(p) for p in eval_paths] == ["000.png", "010.png"] * 3
  assert list(eval_labels) == [0, 0, 1, 1, 2, 2]
  assert len(train_paths) == 54 and not set(train_paths) & set(eval_paths)


@pytest.mark.parametrize("eval_dir", ["val", "validation", "test"])
@pytest.mark.parametrize("eval_split", ["test", "validation", "val"])
def test_train_and_eval_subfolders_are_used_whatever_the_eval_name(tmp_path, eval_dir, eval_split):
  _image_folder(tmp_path / "train", {"a": 7, "b": 5})
  _image_folder(tmp_path / eval_dir, {"a": 2, "b": 3})
  info = data.dataset_info(_folder_config(str(tmp_path), eval_split))
  assert (info.num_train, info.num_eval, info.label_names) == (12, 5, ("a", "b"))
  paths, labels, _ = data.sources._folder_files(str(tmp_path), eval_split)
  assert all(f"{os.sep}{eval_dir}{os.sep}" in p for p in paths) and list(labels) == [0, 0, 1, 1, 1]


def test_the_exact_split_name_wins_and_two_eval_folders_need_a_choice(tmp_path):
  _image_folder(tmp_path / "train", {"a": 4})
  _image_folder(tmp_path / "val", {"a": 2})
  _image_folder(tmp_path / "test", {"a": 3})
  assert data.dataset_info(_folder_config(str(tmp_path), "val")).num_eval == 2
  assert data.dataset_info(_folder_config(str(tmp_path), "test")).num_eval == 3
  with pytest.raises(data.DatasetError, match="has val, test: name one") as e:
    data.dataset_info(_folder_config(str(tmp_path), "validation"))
  assert "--config.eval_split=val" in str(e.value)


def test_a_missing_eval_folder_names_the_split_folders_there_are(tmp_path):
  _image_folder(tmp_path / "train", {"a": 4})
  _image_folder(tmp_path / "extra", {"a": 2})
  with pytest.raises(data.DatasetError, match="no 'test' split directory.*extra, train"):
    data.dataset_info(_folder_config(str(tmp_path)))
