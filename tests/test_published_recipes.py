"""The published recipes as configs, each checked against its source's table (incres/paper.py).

experiments/resnet_imagenet.py:recipe=torchvision_v2 | rsb_a1 | rsb_a2 | rsb_a3 | bag_of_tricks and
experiments/resnet_cifar.py:model=wrn28_10, resolved on ImageNet's 1,281,167 and CIFAR's 50,000
training images as a run resolves them: step counts, schedules, every hyper-parameter of the
source; the pieces they added (zero-init of the last BN, reflect padding) against torchvision's and
timm's; and each recipe's smoke setting trained a few steps as launch.py trains it.
"""

from __future__ import annotations

import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from incres import configs, convert_torch, data, errors, models, paper, train
from incres import state as state_lib
from incres.data import cifar_augment

pytestmark = pytest.mark.usefixtures("compilation_cache")

IMAGENET_TRAIN = 1_281_167
CIFAR_TRAIN = 50_000
IMAGENET = "experiments/resnet_imagenet.py"
CIFAR = "experiments/resnet_cifar.py"
SPECS = {
    "torchvision_v2": f"{IMAGENET}:recipe=torchvision_v2",
    "rsb_a1": f"{IMAGENET}:recipe=rsb_a1",
    "rsb_a2": f"{IMAGENET}:recipe=rsb_a2",
    "rsb_a3": f"{IMAGENET}:recipe=rsb_a3",
    "bag_of_tricks": f"{IMAGENET}:recipe=bag_of_tricks",
    "wrn28_10": f"{CIFAR}:model=wrn28_10",
}
# num_train_steps, warm-up steps and decay steps, worked out by hand from the sources' epochs and
# batch sizes (round(epochs x images / batch); the rest their fraction of it).
STEPS = {
    "torchvision_v2": (750_684, 6_256, ()),  # 600 x 1,281,167 / 1,024 = 750,683.8.
    "rsb_a1": (376_814, 3_140, ()),  # 600 x 1,281,167 / 2,040 = 376,813.8 (BATCH_HERE).
    "rsb_a2": (188_407, 3_140, ()),
    "rsb_a3": (62_557, 3_128, ()),
    "bag_of_tricks": (250_228, 6_256, ()),  # 200 x 1,281,167 / 1,024 = 250,227.9.
    "wrn28_10": (78_125, 0, (23_438, 46_875, 62_500)),  # 200 x 50,000 / 128, 60/120/160 epochs.
}

# Where a config's batch differs from its source's, and why: timm's RA sampler deals the 3 copies
# of each image out to the replicas regardless of batch boundaries, while incres keeps each
# image's views in one global batch (incres.data.repeated), so the batch must be a multiple of 3
# and of the 8 devices it is sized for: 2,040 (the nearest below 2,048), learning rate unchanged.
BATCH_HERE = {"rsb_a1": 2040, "rsb_a2": 2040}


# The fields that make a ResNet's structure (incres.models.resnet.ResNet).
STRUCTURE = (
    "stage_sizes",
    "block",
    "width",
    "stem",
    "shortcut",
    "stride_in_1x1",
    "groups",
    "base_width",
    "avg_down",
    "residual",
)


def _resolved(name):
  c = configs.load(SPECS[name])
  num_train = CIFAR_TRAIN if name == "wrn28_10" else IMAGENET_TRAIN
  info = data.DatasetInfo(c.dataset, 10 if name == "wrn28_10" else 1000, num_train, 1, (), ())
  return configs.resolve_config(c, info)


def _timm_randaugment(spec: str) -> tuple[int, float]:
  """timm's "rand-m7-mstd0.5-inc1" -> (M, mstd)."""
  parts = spec.split("-")
  assert parts[0] == "rand" and "inc1" in parts, spec
  m = next(int(p[1:]) for p in parts if p.startswith("m") and not p.startswith("mstd"))
  mstd = next(float(p[4:]) for p in parts if p.startswith("mstd"))
  return m, mstd


def _expected(name: str, t: dict, c) -> dict:
  """The config values the source's row `t` implies (`c`: for values that depend on the data)."""
  e = {
      "batch_size": BATCH_HERE.get(name, t["batch_size"]),
      "num_epochs": t["epochs"],
      "optimizer": t["optimizer"],
      "learning_rate": t["lr"],
      "weight_decay": t["weight_decay"],
      "decay_norms": t["decays_norms"],
      "decay_biases": t["decays_biases"],
      "grad_clip_norm": t["grad_clip_norm"],
      "loss": t["loss"],
      "label_smoothing": t["label_smoothing"],
      "warmup_epochs": t["warmup_epochs"],
      "lr_per_epoch": t["lr_per_epoch"],
      "cosine_spans_warmup": t["cosine_spans_warmup"],
  }
  if t["optimizer"] == "sgd":
    e.update(momentum=t["momentum"], nesterov=t["nesterov"])
  else:  # timm's Lamb defaults: betas (0.9, 0.999), eps 1e-6.
    e.update(lamb_b1=0.9, lamb_b2=0.999, lamb_eps=1e-6)
  if t["warmup_epochs"]:
    e["warmup_shape"] = "linear"
    start = t["lr"] * t["warmup_start_factor"] if "warmup_start_factor" in t else t["warmup_lr"]
    e["warmup_learning_rate"] = start
  if t["lr_schedule"] == "cosine":
    e.update(schedule="cosine", lr_boundary_epochs=())
  else:
    e.update(
        schedule="piecewise",
        lr_boundary_epochs=tuple(t["lr_decay_epochs"]),
        lr_decay_factor=t["lr_decay_factor"],
    )
  if name == "wrn28_10":
    e.update(
        model="WRN28_10",
        image_size=32,
        augment="cifar",
        cifar_padding=t["padding"],
        normalize="mean_std",
        eval_preprocess="single",
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        ema_decay=None,
    )
    return e
  e.update(
      bce_target_threshold=t["bce_target_threshold"],
      mixup_alpha=t["mixup_alpha"],
      cutmix_alpha=t["cutmix_alpha"],
      mix_prob=t["mix_prob"],
      random_erasing=t["random_erasing"],
      # The colour on the crop: Bag of Tricks' (mxnet's ImageRecordIter); the others have none.
      color_jitter=t.get("color_jitter", (0.0, 0.0, 0.0)),
      pca_lighting=t.get("pca_lighting", 0.0),
      repeated_augmentation=t["ra_reps"],
      augment="random_resized_crop",
      normalize="mean_std",
      image_size=t["train_size"],
      eval_preprocess="center",
      eval_crop_size=t["test_size"],
      # timm's transforms_imagenet_eval: floor(size / crop_pct).
      eval_resize_size=t.get("test_resize") or math.floor(t["test_size"] / t["test_crop_pct"]),
  )
  if t["mixup_alpha"] and t["cutmix_alpha"]:
    e["mix_switch_prob"] = t["switch_prob"]
  policy = t["auto_augment"]
  if policy is None:
    e["auto_augment"] = "none"
  elif policy == "ta_wide":
    e.update(auto_augment="trivialaugment_wide", auto_augment_interpolation=t["interpolation"])
  else:  # timm's M and mstd count 10 levels; torchvision's bins 30 (incres.data.autoaugment).
    m, mstd = _timm_randaugment(policy)
    e.update(
        auto_augment="randaugment",
        randaugment_num_ops=2,  # timm's default n.
        randaugment_magnitude=3 * m,
        randaugment_magnitude_std=3 * mstd,
    )
  if t["ema"] is None:
    e.update(ema_decay=None, ema_batch_stats=False)
  else:  # torchvision's train.py: alpha = (1 - decay) x world_size x batch x steps / epochs.
    every, decay, batch_stats = t["ema"]
    alpha = min(1.0, (1 - decay) * t["batch_size"] * every / t["epochs"])
    e.update(
        ema_every_steps=every,
        ema_decay=1 - alpha,
        ema_warmup_copy=True,
        ema_batch_stats=batch_stats,
    )
  return e


@pytest.mark.parametrize("name", sorted(SPECS))
def test_config_is_its_sources_recipe(name):
  t = paper.RECIPES[name]
  c = _resolved(name)
  for key, value in _expected(name, t, c).items():
    got = c[key]
    if isinstance(value, float) and value is not None:
      assert got == pytest.approx(value, rel=1e-12, abs=0), key
    else:
      assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
  kwargs = c.model_kwargs
  if name == "wrn28_10":
    assert kwargs.dropout_rate == t["dropout"] and c.model == "WRN28_10"
  else:  # The network converted torchvision's / timm's weights go into, plus the recipe's options.
    imported = convert_torch.import_config(t["network"])
    ours = models.get_model(c.model, **kwargs)
    theirs = models.get_model(imported.model, **imported.model_kwargs)
    for field in STRUCTURE:
      assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.drop_path_rate == t["drop_path_rate"]
    assert ours.zero_init_last_bn == t["zero_init_last_bn"]
  # Runs as is on the hardware it is sized for: one GPU (WRN), one 8-accelerator host (ImageNet).
  configs.validate(c, num_devices=1 if name == "wrn28_10" else 8, num_processes=1)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_run_length_and_schedule_on_the_real_split(name):
  t = paper.RECIPES[name]
  c = _resolved(name)
  num_train = CIFAR_TRAIN if name == "wrn28_10" else IMAGENET_TRAIN
  total, warmup, boundaries = STEPS[name]
  assert (
      c.num_train_steps
      == total
      == round(t["epochs"] * num_train / BATCH_HERE.get(name, t["batch_size"]))
  )
  assert c.warmup_steps == warmup == round(total * t["warmup_epochs"] / t["epochs"])
  lr = state_lib.create_learning_rate_fn(c)
  peak = t["lr"]
  if t["lr_schedule"] == "cosine" and t["lr_per_epoch"]:
    # The source's rate in epoch e, from its scheduler's formula, held for the whole epoch.
    assert tuple(c.lr_boundaries) == boundaries
    epochs, w = t["epochs"], t["warmup_epochs"]
    start = peak * t["warmup_start_factor"] if "warmup_start_factor" in t else t["warmup_lr"]
    span = (0, epochs) if t["cosine_spans_warmup"] else (w, epochs - w)  # timm / torchvision.

    def source(e):
      if e < w:
        return start + (peak - start) * e / w
      return 0.5 * peak * (1 + math.cos(math.pi * (e - span[0]) / span[1]))

    for e in (0, 1, w - 1, w, w + 1, epochs // 2, epochs - 1):
      first, last = round(e * total / epochs), round((e + 1) * total / epochs) - 1
      for step in (first, (first + last) // 2, last):
        assert float(lr(step)) == pytest.approx(source(e), rel=1e-5, abs=peak * 1e-6), (e, step)
  elif t["lr_schedule"] == "cosine":
    assert tuple(c.lr_boundaries) == boundaries
    start = peak * t["warmup_start_factor"] if "warmup_start_factor" in t else t["warmup_lr"]
    assert float(lr(0)) == pytest.approx(start, abs=peak * 1e-6)  # float32: (start - peak) + peak.
    assert float(lr(warmup // 2)) == pytest.approx((start + peak) / 2, rel=1e-3)
    assert float(lr(warmup)) == pytest.approx(peak, rel=1e-6)
    middle = warmup + (total - warmup) // 2
    assert float(lr(middle)) == pytest.approx(peak / 2, rel=1e-4)
    assert float(lr(total)) == pytest.approx(0.0, abs=1e-9)
  else:  # WRN: x0.2 at epochs 60, 120, 160.
    assert (
        tuple(c.lr_boundaries)
        == boundaries
        == tuple(round(total * e / t["epochs"]) for e in t["lr_decay_epochs"])
    )
    for k, b in enumerate((0,) + boundaries):
      assert float(lr(b)) == pytest.approx(peak * t["lr_decay_factor"] ** k, rel=1e-6)
      if b:
        assert float(lr(b - 1)) == pytest.approx(peak * t["lr_decay_factor"] ** (k - 1), rel=1e-6)


def test_the_sources_defaults_the_recipes_rely_on():
  """timm's and torchvision's defaults that the table records, read from the installed libraries."""
  timm_resnet = pytest.importorskip("timm.models.resnet")
  tv_resnet = pytest.importorskip("torchvision.models.resnet")
  # RSB's zero-init of the last BN is timm's ResNet default; torchvision's recipe leaves it off.
  assert inspect.signature(timm_resnet.ResNet).parameters["zero_init_last"].default is True
  assert inspect.signature(tv_resnet.ResNet).parameters["zero_init_residual"].default is False
  timm_lamb = pytest.importorskip("timm.optim")
  lamb = inspect.signature(timm_lamb.Lamb).parameters
  assert lamb["max_grad_norm"].default == 1.0 and lamb["eps"].default == 1e-6
  assert lamb["betas"].default == (0.9, 0.999)
  transforms = pytest.importorskip("timm.data")
  # timm's eval resize for crop_pct 0.95 at 224: the shorter side 235.
  resize = transforms.create_transform(224, crop_pct=0.95, interpolation="bilinear").transforms[0]
  assert resize.size in (235, [235], (235, 235))
  c = configs.load(SPECS["rsb_a1"])
  assert c.eval_resize_size == 235


def _zero_scales(model, size: int = 16) -> set[tuple[str, ...]]:
  """The BN scales `model` initialises to 0 (the others to 1), read from each BatchNorm's
  `scale_init` during an abstract init (no compiled program: seconds on a loaded CPU)."""
  inits = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      inits[tuple(context.module.scope.path)] = context.module.scale_init
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  assert inits, "no BatchNorm was called"
  zeros = set()
  for path, init in inits.items():
    value = np.asarray(init(jax.random.key(0), (3,), jnp.float32))
    assert np.all(value == 0) or np.all(value == 1), path
    if np.all(value == 0):
      zeros.add((*path, "scale"))
  return zeros


def _torch_zero_scales(module, name: str) -> set[tuple[str, ...]]:
  zeros = set()
  for key, tensor in module.state_dict().items():
    where = convert_torch.incres_variable(key, name, tensor.ndim)
    if where and where[0] == "params" and where[1][-1] == "scale" and not tensor.any():
      zeros.add(where[1])
  return zeros


@pytest.mark.parametrize("family", ["torchvision_basic", "torchvision_bottleneck", "timm_resnet_d"])
def test_zero_init_last_bn_zeroes_the_bns_torchvision_and_timm_zero(family):
  """`zero_init_last_bn` is torchvision's `zero_init_residual` and timm's `zero_init_last`: the
  last BN of every residual branch (bn2 of a basic block, bn3 of a bottleneck), not the
  projection shortcut's."""
  tv = pytest.importorskip("torchvision.models.resnet")
  timm_resnet = pytest.importorskip("timm.models.resnet")
  layers = [1, 1, 1, 1]
  if family == "torchvision_basic":
    theirs = _torch_zero_scales(
        tv.ResNet(tv.BasicBlock, layers, zero_init_residual=True), "resnet18"
    )
    ours = models.ResNet18(stage_sizes=(1, 1, 1, 1), zero_init_last_bn=True)
  elif family == "torchvision_bottleneck":
    theirs = _torch_zero_scales(
        tv.ResNet(tv.Bottleneck, layers, zero_init_residual=True), "resnet50"
    )
    ours = models.ResNet50(stage_sizes=(1, 1, 1, 1), stride_in_1x1=False, zero_init_last_bn=True)
  else:
    net = timm_resnet.ResNet(
        timm_resnet.Bottleneck, layers, stem_width=32, stem_type="deep", avg_down=True
    )
    theirs = _torch_zero_scales(net, "resnet50d")
    ours = models.ResNet50D(stage_sizes=(1, 1, 1, 1), zero_init_last_bn=True)
  last = "bn2" if family == "torchvision_basic" else "bn3"
  assert theirs == {(f"stage{i}_block0", last, "scale") for i in range(1, 5)}
  assert _zero_scales(ours) == theirs
  assert not _zero_scales(ours.clone(zero_init_last_bn=False))


def test_reflect_padding_crops_a_window_of_the_mirrored_image():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
  mean = np.float32([0.4, 0.5, 0.6])
  # Mirrored without repeating the edge: torchvision's RandomCrop(padding_mode="reflect").
  padded = np.pad(image.numpy() / 255.0 - mean, [(4, 4), (4, 4), (0, 0)], mode="reflect")
  zero = np.pad(image.numpy() / 255.0 - mean, [(4, 4), (4, 4), (0, 0)])
  corners = set()
  for i in range(40):
    seed = tf.constant([3, i], tf.int64)
    out = cifar_augment.cifar_train(image, seed, mean=mean, padding="reflect").numpy()
    same = cifar_augment.cifar_train(image, seed, mean=mean).numpy()
    found = [
        (dy, dx, f)
        for dy in range(9)
        for dx in range(9)
        for f in (1, -1)
        if np.allclose(padded[dy : dy + 32, dx : dx + 32][:, ::f], out, atol=1e-6)
    ]
    assert found, "not a window of the reflect-padded image"
    dy, dx, f = found[0]
    assert np.allclose(zero[dy : dy + 32, dx : dx + 32][:, ::f], same, atol=1e-6)  # Same draws.
    corners.add((dy in (0, 8)) or (dx in (0, 8)))
  assert True in corners  # Some window reaches into the border.


def test_bad_arguments_and_padding_are_user_errors():
  with pytest.raises(errors.UserError, match="Unknown recipe 'rsb_a4'"):
    configs.load(f"{IMAGENET}:recipe=rsb_a4")
  with pytest.raises(errors.UserError, match="depth 50"):
    configs.load(f"{IMAGENET}:recipe=rsb_a1,depth=101")
  with pytest.raises(errors.UserError, match="model=wrn28_10"):
    configs.load(f"{CIFAR}:model=wrn40_4")
  with pytest.raises(errors.UserError, match="no depth, plain or preact"):
    configs.load(f"{CIFAR}:model=wrn28_10,preact=True")
  c = configs.load(f"{CIFAR}:model=wrn28_10,dataset=digits")
  c.cifar_padding = "mirror"
  with pytest.raises(errors.UserError, match="cifar_padding='mirror'"):
    data.create_train_iter(c)
  c = _resolved("wrn28_10")
  c.cifar_padding = "mirror"
  with pytest.raises(errors.UserError, match="cifar_padding='mirror'"):
    configs.validate(c, num_devices=1, num_processes=1)


def test_the_paper_recipe_is_unchanged_by_the_new_argument():
  default = configs.load(IMAGENET)
  assert default.to_dict() == configs.load(f"{IMAGENET}:recipe=paper").to_dict()
  assert (default.model, default.augment, default.optimizer) == (
      "ResNet50",
      "resnet_imagenet",
      "sgd",
  )
  assert default.repeated_augmentation == 1 and default.eval_resize_size is None
  assert configs.load(CIFAR).cifar_padding == "zero"


# Smoke settings of every recipe, each a few steps on fake ImageNet-like photos (WRN: digits), at a
# tiny width, through `train_and_evaluate` (launch.py's `main` calls it with `configs.load(spec)`).
# Slow: each compiles its own init, train and eval steps (about 1.5x the tiny config's run).
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_smoke_recipe_trains_a_few_steps(tmp_path, name):
  spec = SPECS[name] + ",smoke=True,tiny=True"
  config = configs.load(spec)
  config.num_train_steps = 2
  config.eval_every_steps = config.checkpoint_every_steps = 2
  if name == "wrn28_10":
    config.eval_split, config.eval_batch_size = "test[:16]", 16
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert 0.0 <= result["eval/top1"] <= 1.0
  if config.ema_decay is not None:
    assert 0.0 <= result["eval_ema/top1"] <= 1.0
