"""Fine-tuning from a trained run onto a new task with a new head."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from incres import checkpoint, configs, finetune, train
from incres import state as state_lib

import tiny_config as tiny  # tests/ is on the path (pytest's rootdir-relative import).


def _config(**overrides):
  # 32x32 crops with CIFAR augmentation and a constant rate: fine-tuning needs a few real epochs.
  c = tiny.get(
      steps=150,
      every=20,
      image_size=32,
      augment="cifar",
      batch_size=32,
      eval_batch_size=100,
      learning_rate=0.1,
      schedule="constant",
      lr_boundaries=None,
      eval_every_steps=1000,
      checkpoint_every_steps=1000,
  )
  c.update(overrides)
  return c


def _read(path):
  with open(path) as f:
    return f.read()


def _five_digit_folder(root):
  """digits 0-4 as a folder: dataset (32x32 PNGs), the user's own class_name/image layout."""
  d = load_digits()
  for image, label in zip(d.images, d.target):
    if label >= 5:
      continue
    folder = os.path.join(root, f"digit_{label}")
    os.makedirs(folder, exist_ok=True)
    pixels = np.clip(image * 16, 0, 255).astype(np.uint8)
    big = Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB")
    big.save(os.path.join(folder, f"{len(os.listdir(folder))}.png"))
  return f"folder:{root}"


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("source"))
  metrics = train.train_and_evaluate(_config(), workdir)
  assert metrics["eval/top1"] > 0.5  # The source learned something to transfer.
  return workdir


@pytest.mark.slow
def test_frozen_backbone_fine_tuning_onto_a_five_class_folder(source_run, tmp_path):
  dataset = _five_digit_folder(str(tmp_path / "five"))
  common = dict(dataset=dataset, init_from=source_run, freeze_backbone=True)
  # Step 0 of the fine-tune (lr 0 for one step): the re-initialised head is at chance.
  before = train.train_and_evaluate(
      _config(**common, num_train_steps=1, learning_rate=0.0), str(tmp_path / "before")
  )
  workdir = str(tmp_path / "after")
  after = train.train_and_evaluate(_config(**common, num_train_steps=80), workdir)
  assert after["eval/top1"] > before["eval/top1"] + 0.2
  assert after["eval/top1"] > 0.6

  _, _, src = checkpoint.load_variables(source_run)
  cfg, _, new = checkpoint.load_variables(workdir)
  assert cfg.num_classes == 5 and new["params"]["head"]["kernel"].shape == (16, 5)
  src_flat, new_flat = finetune._flat(src), finetune._flat(new)
  backbone = [p for p in new_flat if not finetune.is_head(p.split("/", 1)[1])]
  assert len(backbone) > 50 and any(p.startswith("batch_stats/") for p in backbone)
  for path in backbone:  # Parameters and BN statistics: bitwise unchanged.
    np.testing.assert_array_equal(np.asarray(new_flat[path]), np.asarray(src_flat[path]), path)

  log = _read(os.path.join(workdir, "init_from.txt"))
  reinit = log.split("re-initialised")[1].split("skipped")[0]
  assert "params/head/kernel" in reinit and "params/head/bias" in reinit
  assert "stage1_block0" not in reinit


def test_a_frozen_backbone_keeps_its_batch_statistics_in_training():
  # The quick counterpart of the test above (whose source run takes minutes): the model a frozen
  # fine-tune builds, run in training mode, normalises with its running statistics and leaves them.
  config = tiny.get(freeze_backbone=True, num_classes=10)
  model = state_lib.create_model(config)
  rng = np.random.default_rng(0)
  # Not the statistics' initial mean 0 and variance 1: statistics that were updated would move.
  x = (3 + 2 * rng.normal(size=(8, 16, 16, 3))).astype(np.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  train_mode = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  _, new = train_mode(variables, x)
  old = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
  assert len(old) > 20  # Every BN layer's mean and variance.
  assert jax.tree.structure(new["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
  for (path, a), b in zip(old, jax.tree.leaves(new["batch_stats"])):
    np.testing.assert_array_equal(b, a, jax.tree_util.keystr(path))


@pytest.mark.slow
def test_full_fine_tuning_with_a_separate_head_rate_changes_the_backbone(source_run, tmp_path):
  workdir = str(tmp_path / "ft")
  c = _config(init_from=source_run, num_train_steps=5, learning_rate=0.01, head_learning_rate=0.1)
  train.train_and_evaluate(c, workdir)
  _, _, src = checkpoint.load_variables(source_run)
  _, _, new = checkpoint.load_variables(workdir)
  before = src["params"]["stage1_block0"]["conv1"]["kernel"]
  after = new["params"]["stage1_block0"]["conv1"]["kernel"]
  assert not np.array_equal(np.asarray(before), np.asarray(after))
  # Same number of classes: the head is loaded, not re-initialised.
  reinit = _read(os.path.join(workdir, "init_from.txt")).split("re-initialised")[1]
  assert "params/head/kernel" not in reinit.split("skipped")[0]


def test_backbone_mismatch_is_refused_with_the_paths(source_run, tmp_path):
  with pytest.raises(finetune.BackboneMismatchError, match="width=8.*used 4"):
    train.train_and_evaluate(
        _config(init_from=source_run, model_kwargs={"width": 8}), str(tmp_path / "w")
    )
  with pytest.raises(finetune.BackboneMismatchError, match="CifarResNet32.*CifarResNet20"):
    train.train_and_evaluate(
        _config(init_from=source_run, model="CifarResNet32"), str(tmp_path / "d")
    )
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_merge_reports_loaded_reinitialised_and_skipped():
  init = {"params": {"conv": {"kernel": jnp.zeros((3, 3))}, "head": {"kernel": jnp.zeros((4, 5))}}}
  src = {
      "params": {
          "conv": {"kernel": jnp.ones((3, 3))},
          "head": {"kernel": jnp.ones((4, 10))},
          "aux_4a": {"fc": {"kernel": jnp.ones((2, 2))}},
      }
  }
  merged, log = finetune.merge(init, src)
  np.testing.assert_array_equal(merged["params"]["conv"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["params"]["head"]["kernel"], 0.0)
  assert log.loaded == ["params/conv/kernel"]
  assert log.reinitialized == ["params/head/kernel"]
  assert log.skipped == ["params/aux_4a/fc/kernel"]
  bad = {"params": {"conv": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 5))}}}
  with pytest.raises(finetune.BackboneMismatchError, match=r"params/conv/kernel: source \(3, 4\)"):
    finetune.merge(init, bad)


def test_frozen_optimizer_leaves_the_backbone_bitwise_unchanged():
  params = {"conv": {"kernel": jnp.ones((3, 3))}, "head": {"kernel": jnp.ones((3, 2))}}
  config = _config(freeze_backbone=True, weight_decay=1e-2)
  tx = state_lib.create_optimizer(config, optax.constant_schedule(0.1))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["conv"]["kernel"], params["conv"]["kernel"])
  assert not np.array_equal(new["head"]["kernel"], params["head"]["kernel"])


# --- No model flag: the architecture comes from the source run ---


def test_the_model_and_its_width_are_inherited_when_unset(source_run):
  config = _config(init_from=source_run, model="")
  config.model_kwargs = ml_collections.ConfigDict()
  filled = finetune.inherit_architecture(config, checkpoint.load_config(source_run))
  assert config.model == "CifarResNet20" and config.model_kwargs.width == 4
  assert config.normalize == "pixel_mean"  # The digits source's "auto", resolved as it did.
  assert filled == ["model='CifarResNet20'", "model_kwargs.width=4", "normalize='pixel_mean'"]
  explicit = _config(init_from=source_run, model="CifarResNet20", normalize="channel_mean")
  finetune.inherit_architecture(explicit, checkpoint.load_config(source_run))
  assert explicit.normalize == "channel_mean"  # What the user set is kept.


def test_an_empty_model_without_init_from_says_what_to_do(tmp_path):
  config = configs.load("experiments/finetune.py:dataset=digits,smoke=True")
  with pytest.raises(ValueError, match="config.init_from is not set"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "googlenet"]
)
def test_every_converted_model_fits_the_finetune_config_without_a_model_flag(name):
  from incres import complexity, convert_torch

  source = convert_torch.import_config(name, num_classes=1000)
  config = configs.load("experiments/finetune.py:dataset=imagenette")
  assert not config.model  # experiments/finetune.py names no model: it is inherited.
  config.num_classes = 10
  filled = finetune.inherit_architecture(config, source)
  assert config.model == convert_torch.TORCHVISION_MODELS[name] and config.normalize == "mean_std"
  assert f"model={config.model!r}" in filled
  if name == "googlenet":
    assert config.model_kwargs.transform_input is True
  else:
    assert config.model_kwargs.stride_in_1x1 is False  # v1.5: no parameter shape would tell.
  new = complexity.abstract_variables(state_lib.create_model(config), 224)
  old = complexity.abstract_variables(state_lib.create_model(source), 224)
  _, log = finetune.merge(dict(new), dict(old))  # Raises BackboneMismatchError if it did not fit.
  assert log.reinitialized and all(finetune.is_head(p.split("/", 1)[1]) for p in log.reinitialized)


@pytest.mark.slow
def test_the_converters_next_step_fine_tunes_a_converted_resnet18(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  import shlex

  from incres import convert_torch

  torch.manual_seed(0)
  weights = tmp_path / "resnet18.pth"
  torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # 1000 classes.
  out = tmp_path / "tv_resnet18"
  assert convert_torch.main(["--model=resnet18", f"--weights={weights}", f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  command = next(shlex.split(l) for l in printed.splitlines() if "launch.py" in l)
  flags = dict(a.split("=", 1) for a in command[2:])
  assert set(flags) == {"--config", "--config.init_from", "--workdir"}  # No model flag.
  assert f"--checkpoint={out}" in printed  # ... and the predict command.

  # The printed command, on the offline digits data instead of imagenette, for two steps.
  spec = flags["--config"].replace("dataset=imagenette", "dataset=digits,smoke=True")
  config = configs.load(spec)
  config.init_from = flags["--config.init_from"]
  config.num_train_steps = 2
  # The test's cost: 64-pixel views and 32 test digits instead of 224 and all 300.
  config.image_size, config.eval_split = 64, "test[:32]"
  workdir = str(tmp_path / "ft")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 2 and np.isfinite(metrics["train/loss"])
  saved = checkpoint.load_config(workdir)
  assert saved.model == "ResNet18" and saved.normalize == "mean_std"
  assert saved.model_kwargs.stride_in_1x1 is False and saved.num_classes == 10
  reinit = _read(os.path.join(workdir, "init_from.txt")).split("re-initialised")[1]
  assert "params/head/kernel" in reinit.split("skipped")[0]  # 1000 -> 10 classes: a new head.
