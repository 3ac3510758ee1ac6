"""experiments/*.py: every documented argument loads, and the paper's values are the defaults.

The configs state their length in epochs; the step counts checked here are what
`incres.configs.resolve_config` derives from the training split's size (given, not read, for the
datasets that need a download).
"""

import importlib.util
import itertools
import os

import numpy as np
import pytest

from incres import configs, data, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _get(name, arg=None):
  return _load(name).get_config(arg)


# Training-split sizes (tfds metadata), so that the tests need no download.
NUM_TRAIN = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "imagenet2012": 1_281_167,
    "imagenette": 9_469,
    "digits": 1_497,
    "fake": None,  # fake_num_train.
    "folder:/tmp/x": 54,
}


def _resolved(c, num_train=None):
  """`c` with its step counts resolved for a training split of `num_train` examples."""
  if num_train is None:
    num_train = NUM_TRAIN[c.dataset] or c.fake_num_train
  info = data.DatasetInfo(c.dataset, 10, num_train, 100, (32, 32, 3), ())
  return configs.resolve_config(c, info)


DATASETS = ("digits", "fake", "smoke=True", "dataset=digits,smoke=True")
CIFAR_ARGS = [
    f"depth={d},plain={p}"
    for d, p in itertools.product((20, 32, 44, 56, 110, 1202), (False, True))
    if not (p and d == 1202)
]
IMAGENET_ARGS = [
    f"depth={d},shortcut={s}" for d, s in itertools.product((18, 34, 50, 101, 152), "ABC")
] + [
    "depth=18,plain=True",
    "depth=34,plain=True",
]
# The published recipes (tests/test_published_recipes.py checks their values).
RECIPE_ARGS = [
    f"recipe={r}"
    for r in ("paper", "torchvision_v2", "rsb_a1", "rsb_a2", "rsb_a3", "bag_of_tricks")
] + [
    "recipe=rsb_a3,dataset=digits",
    "recipe=torchvision_v2,smoke=True",
    "recipe=rsb_a1,dataset=fake",
]
WRN_ARGS = ["model=wrn28_10", "model=wrn28_10,dataset=cifar100", "model=wrn28_10,smoke=True"]
ALL = (
    [("resnet_cifar", a) for a in CIFAR_ARGS + ["val_split=True", "dataset=cifar100"]]
    + [("resnet_imagenet", a) for a in IMAGENET_ARGS + ["dataset=imagenette"]]
    + [("googlenet", a) for a in ("bn=False", "bn=True", "dataset=imagenette")]
    + [
        (f, d if "=" in d else f"dataset={d}")
        for f in ("resnet_cifar", "resnet_imagenet", "googlenet")
        for d in DATASETS
    ]
    + [(f, None) for f in ("resnet_cifar", "resnet_imagenet", "googlenet", "finetune")]
    + [("resnet_imagenet", a) for a in RECIPE_ARGS]
    + [("resnet_cifar", a) for a in WRN_ARGS]
    + [
        ("finetune", a)
        for a in (
            "model=GoogLeNetBN,dataset=cifar10",
            "dataset=digits,model=CifarResNet20,freeze=True",
            "smoke=True",
            "dataset=folder:/tmp/x",
        )
    ]
)


@pytest.mark.parametrize("name,arg", ALL)
def test_every_documented_argument_gives_a_valid_config(name, arg):
  c = _get(name, arg)
  base = configs.base_config()
  assert set(c.keys()) == set(base.keys()), "configs may only set the keys the library reads"
  if name == "finetune" and not c.model:  # The model is the init_from run's (finetune.py).
    assert "model=" not in (arg or "")
  else:
    assert c.model in models.MODELS and callable(getattr(models, c.model))
  assert c.num_epochs > 0 and list(c.lr_boundary_epochs) == sorted(c.lr_boundary_epochs)
  assert all(0 < e < c.num_epochs for e in c.lr_boundary_epochs)
  smoke = "smoke=True" in (arg or "")  # The experiment's argument: configs do not record it.
  if not smoke:  # Sized by the dataset: no step count is fixed in the config.
    assert c.num_train_steps is None and c.lr_boundaries is None and c.eval_every_steps is None
  c = _resolved(c)
  assert c.batch_size % 2 == 0 and c.eval_batch_size > 0 and c.num_train_steps > 0
  assert list(c.lr_boundaries) == sorted(c.lr_boundaries)
  assert all(0 < b < c.num_train_steps for b in c.lr_boundaries)
  assert c.eval_every_steps > 0 and c.checkpoint_every_steps > 0 and c.log_every_steps > 0
  if c.schedule == "exponential":
    assert 0 < c.lr_decay_steps < c.num_train_steps
  assert c.augment in ("cifar", "resnet_imagenet", "googlenet", "random_resized_crop", "none")
  test_size = c.eval_crop_size or c.image_size  # The recipes train smaller than they test.
  assert test_size == (32 if c.dataset in ("digits", "cifar10", "cifar100") else test_size)
  if smoke:
    assert c.num_train_steps <= 20 and c.batch_size <= 32
  for key in ("momentum", "weight_decay", "learning_rate", "seed"):
    assert key in c


@pytest.mark.parametrize("name", ["resnet_cifar", "resnet_imagenet", "googlenet", "finetune"])
def test_docstring_starts_with_the_command_hardware_time_and_paper_number(name):
  doc = _load(name).__doc__.strip()
  lines = doc.splitlines()
  assert lines[0].startswith(f"python launch.py --config=experiments/{name}.py")
  assert lines[2].startswith("Hardware:") and lines[3].startswith("Expected time")
  assert "Reproduces" in doc and "%" in doc


def test_resnet_cifar_paper_values():
  c = _get("resnet_cifar")
  # 64k iterations of 128 on CIFAR-10's 50k training images, stated in epochs.
  assert c.num_epochs == pytest.approx(163.84)
  np.testing.assert_allclose(c.lr_boundary_epochs, (81.92, 122.88))
  c = _resolved(c)
  assert (c.model, c.dataset, c.batch_size, c.num_train_steps) == (
      "CifarResNet20",
      "cifar10",
      128,
      64_000,
  )
  assert tuple(c.lr_boundaries) == (32_000, 48_000) and c.lr_decay_factor == 0.1
  assert c.eval_every_steps == c.checkpoint_every_steps == 4_000
  assert (c.learning_rate, c.momentum, c.weight_decay) == (0.1, 0.9, 1e-4)
  assert (c.augment, c.eval_preprocess, c.normalize, c.image_size) == (
      "cifar",
      "single",
      "pixel_mean",
      32,
  )
  assert c.warmup_steps == 0 and (c.train_split, c.eval_split) == ("train", "test")
  assert _get("resnet_cifar", "depth=56,plain=True").model == "CifarPlain56"
  c110 = _resolved(_get("resnet_cifar", "depth=110"))
  assert (c110.model, c110.warmup_steps, c110.warmup_learning_rate) == ("CifarResNet110", 400, 0.01)
  assert _resolved(_get("resnet_cifar", "dataset=cifar100")).num_train_steps == 64_000
  val = _resolved(_get("resnet_cifar", "val_split=True"), 45_000)
  assert (val.train_split, val.eval_split) == ("train[:90%]", "train[90%:]")  # 45k / 5k.
  # The same 163.84 epochs of the 45k split.
  assert (val.num_train_steps, tuple(val.lr_boundaries)) == (57_600, (28_800, 43_200))
  with pytest.raises(ValueError):
    _get("resnet_cifar", "depth=1202,plain=True")
  with pytest.raises(ValueError):
    _get("resnet_cifar", "depth=21")


def test_resnet_cifar_digits_quickstart_keeps_the_schedule_proportions():
  # Resolved against the real digits dataset: the README's quickstart numbers.
  c = _get("resnet_cifar", "dataset=digits")
  c = configs.resolve_config(c, data.dataset_info(c))
  assert (c.model, c.batch_size, c.num_train_steps) == ("CifarResNet20", 128, 400)
  assert tuple(c.lr_boundaries) == (200, 300)
  assert (c.eval_every_steps, c.checkpoint_every_steps, c.log_every_steps) == (100, 100, 10)
  c = _resolved(_get("resnet_cifar", "dataset=digits,depth=110"))
  assert c.warmup_steps == round(400 * 400 / 64_000) and c.warmup_learning_rate == 0.01


@pytest.mark.parametrize(
    "name,arg,expected",
    [  # (num_train_steps, lr_boundaries, lr_decay_steps, eval_every_steps, log_every_steps)
        ("resnet_cifar", "smoke=True", (20, (10, 15), 0, 5, 1)),
        ("resnet_cifar", "dataset=digits,smoke=True", (20, (10, 15), 0, 5, 1)),
        ("resnet_imagenet", "smoke=True", (4, (2, 3), 0, 2, 1)),
        ("googlenet", "smoke=True", (3, (), 1, 3, 1)),
        ("finetune", "smoke=True", (10, (), 0, 10, 1)),
        ("degradation", None, (300, (150, 225), 0, 30, 5)),
        ("degradation", "smoke=True", (4, (2, 3), 0, 1, 1)),
        ("degradation", "steps=600", (600, (300, 450), 0, 60, 10)),
    ],
)
def test_smoke_and_fixed_budget_settings_keep_their_step_counts(name, arg, expected):
  c = _resolved(_get(name, arg))  # The smoke settings' lengths do not depend on the size.
  got = (
      c.num_train_steps,
      tuple(c.lr_boundaries),
      c.lr_decay_steps,
      c.eval_every_steps,
      c.log_every_steps,
  )
  assert got == expected
  assert c.checkpoint_every_steps == c.eval_every_steps


def test_resnet_imagenet_paper_values():
  c = _get("resnet_imagenet")
  assert (c.num_epochs, tuple(c.lr_boundary_epochs), c.eval_every_epochs) == (120, (30, 60, 90), 5)
  c = _resolved(c)
  assert (c.model, c.dataset, c.batch_size, c.image_size) == ("ResNet50", "imagenet2012", 256, 224)
  assert (c.learning_rate, c.momentum, c.weight_decay, c.lr_decay_factor) == (0.1, 0.9, 1e-4, 0.1)
  # 120 epochs of 1,281,167 images at 256: the paper's "up to 60×10^4 iterations".
  assert abs(c.num_train_steps - 600_000) / 600_000 < 0.01
  assert c.num_train_steps == round(120 * 1_281_167 / 256) == 600_547
  epoch = 1_281_167 / 256
  np.testing.assert_allclose(c.lr_boundaries, [30 * epoch, 60 * epoch, 90 * epoch], atol=1)
  assert (c.augment, c.eval_preprocess, c.eval_split) == ("resnet_imagenet", "center", "validation")
  assert c.model_kwargs.shortcut == "B"
  assert _get("resnet_imagenet", "depth=34").model_kwargs.shortcut == "A"
  assert _get("resnet_imagenet", "depth=34,shortcut=C").model_kwargs.shortcut == "C"
  assert _get("resnet_imagenet", "depth=18,plain=True").model == "Plain18"
  with pytest.raises(ValueError):
    _get("resnet_imagenet", "depth=50,plain=True")
  with pytest.raises(ValueError):
    _get("resnet_imagenet", "shortcut=D")


def test_googlenet_paper_and_chosen_values():
  c = _get("googlenet")
  assert (c.num_epochs, c.lr_decay_epochs, c.eval_every_epochs) == (60, 8, 4)
  c = _resolved(c)
  assert c.num_train_steps == round(60 * 1_281_167 / 32) == 2_402_188
  assert (c.model, c.dataset, c.image_size, c.augment, c.eval_preprocess) == (
      "GoogLeNet",
      "imagenet2012",
      224,
      "googlenet",
      "center",
  )
  assert (c.momentum, c.schedule, c.lr_decay_rate, c.polyak, c.aux_loss_weight) == (
      0.9,
      "exponential",
      0.96,
      True,
      0.3,
  )
  assert c.lr_decay_steps == round(8 * 1_281_167 / 32)  # 4% every 8 epochs.
  # Not in the paper: the public Caffe replication's values (PAPERS.md).
  assert (c.learning_rate, c.batch_size, c.weight_decay) == (0.01, 32, 2e-4)
  assert _get("googlenet", "bn=True").model == "GoogLeNetBN"
  digits = _get("googlenet", "dataset=digits")
  assert (digits.model, digits.image_size) == ("GoogLeNet32", 32)
  assert _get("googlenet", "dataset=digits,bn=True").model == "GoogLeNetBN32"


def test_unknown_argument_fails():
  with pytest.raises(ValueError, match="Unknown config argument"):
    _get("resnet_cifar", "dept=20")


@pytest.mark.parametrize(
    "name,arg",
    [
        ("resnet_cifar", "dataset=digits"),
        ("resnet_imagenet", "dataset=digits"),
        ("googlenet", "dataset=digits"),
        ("resnet_imagenet", "smoke=True"),
        ("googlenet", "smoke=True"),
        ("resnet_cifar", "model=wrn28_10,smoke=True"),
    ],
)
def test_configs_drive_the_input_pipeline(name, arg):
  c = _get(name, arg)
  c.batch_size = min(c.batch_size, 8)
  batch = next(data.create_train_iter(c))
  assert batch["image"].shape == (c.batch_size, c.image_size, c.image_size, 3)
  info = data.dataset_info(c)
  assert info.num_classes == (
      10 if "smoke=True" in arg or c.dataset == "digits" else info.num_classes
  )
