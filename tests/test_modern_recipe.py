"""augment="random_resized_crop" (incres.data.modern): torchvision's and timm's ImageNet train
transform with an auto-augment policy, colour jitter and random erasing. Its crop is torchvision's
RandomResizedCrop, its config keys are checked, it runs on the host everywhere, and batches and
training with it resume exactly."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from incres import configs, data, errors
from incres.data import googlenet_augment, imagenet_stats

import test_train  # tests/ is on the path: the tiny-run helpers.
import tiny_config as tiny

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _config(**overrides):
  """Fake 60×80 JPEGs, 32×32 crops, RandAugment with timm's magnitude std and per-pixel erasing."""
  c = configs.base_config()
  c.update(
      dataset="fake",
      fake_image_shape=(60, 80, 3),
      num_classes=10,
      augment="random_resized_crop",
      image_size=32,
      batch_size=8,
      auto_augment="randaugment",
      randaugment_magnitude_std=1.5,
      random_erasing=0.5,
      random_erasing_fill="pixel",
  )
  c.update(overrides)
  return c


def test_the_crop_is_distributed_as_torchvision_s_random_resized_crop():
  torch = pytest.importorskip("torch")
  v2 = pytest.importorskip("torchvision.transforms.v2")
  h, w, n = 300, 400, 2000
  ds = tf.data.Dataset.range(n).map(
      lambda i: googlenet_augment.sample_crop_window(h, w, tf.stack([tf.constant(1, tf.int64), i]))
  )
  _, _, ch, cw = next(iter(ds.batch(n))).numpy().T
  torch.manual_seed(0)
  crop = v2.RandomResizedCrop(32)  # scale (0.08, 1), ratio (3/4, 4/3): the recipe's.
  assert tuple(crop.scale) == googlenet_augment.GOOGLENET_AREA_RANGE
  np.testing.assert_allclose(crop.ratio, googlenet_augment.GOOGLENET_ASPECT_RANGE)
  theirs = np.array(
      [
          [p["height"], p["width"]]
          for p in (crop.make_params([torch.zeros(3, h, w)]) for _ in range(n))
      ]
  )
  for name, mine, ref in (
      ("area", ch * cw, theirs[:, 0] * theirs[:, 1]),
      ("aspect", cw / ch, theirs[:, 1] / theirs[:, 0]),
  ):
    assert stats.ks_2samp(mine, ref).pvalue > 1e-3, name


def test_view_is_the_normalised_uint8_crop_with_erasing_after_the_std():
  c = _config(auto_augment="none", random_erasing=0.0)
  assert data.normalization(c) == "mean_std"  # "auto": torchvision's and timm's normalisation.
  fn = data.preprocess.train_fn(c)
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
  views = [fn(image, tf.constant([2, i], tf.int64)).numpy() for i in range(3)]
  mean, std = np.array(imagenet_stats.IMAGENET_MEAN_RGB), np.array(imagenet_stats.IMAGENET_STD_RGB)
  for view in views:
    assert view.shape == (32, 32, 3) and view.dtype == np.float32
    pixels = (view * std + mean) * 255  # The crop was rounded to uint8 before the policy.
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
  erased = data.preprocess.train_fn(
      _config(auto_augment="none", random_erasing=1.0, random_erasing_fill="zero")
  )
  out = [erased(image, tf.constant([2, i], tf.int64)).numpy() for i in range(3)]
  for view, plain in zip(out, views):
    changed = view != plain
    assert changed.any() and np.all(view[changed] == 0.0)  # 0 after the std: the mean colour.


@pytest.mark.parametrize(
    "key,value",
    [
        ("auto_augment", "rand-m9"),
        ("randaugment_num_ops", -1),
        ("randaugment_magnitude", 31),
        ("randaugment_magnitude_std", -0.5),
        ("auto_augment_interpolation", "bicubic"),
        ("random_erasing", 1.5),
        ("random_erasing_fill", "const"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(key, value):
  c = _config()
  with c.unlocked():
    c[key] = value
  with pytest.raises(errors.UserError, match=key):
    configs.check_auto_augment(c)
  with pytest.raises(errors.UserError, match=key):
    data.create_train_iter(c)


def test_policy_or_erasing_needs_the_recipe_and_it_runs_on_the_host():
  c = _config(augment="googlenet")
  with pytest.raises(errors.UserError, match="random_resized_crop"):
    configs.validate(train_ready(c), num_devices=1, num_processes=1)
  c = _config()
  for backend in ("cpu", "gpu", "tpu"):
    where = data.decide_placement(c, backend)
    assert not where.on_device and not where.batch_keys, backend
  assert data.device_preprocess(c, data.decide_placement(c, "gpu")) is None
  with pytest.raises(ValueError, match="random_resized_crop"):
    data.decide_placement(_config(resample="device"), "gpu")
  with pytest.raises(ValueError, match="random_resized_crop"):
    data.preprocess.train_fn(_config(augment="rrc"))


def train_ready(c):
  c = c.copy_and_resolve_references()
  c.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2, lr_boundaries=())
  return c


def test_batches_resume_exactly_and_differ_between_steps():
  c = _config(color_jitter=(0.4, 0.4, 0.4), pca_lighting=0.1)  # Bag of Tricks' colour too.
  it = data.create_train_iter(c)
  fresh = [next(it) for _ in range(4)]
  resumed = data.create_train_iter(c, start_step=2)
  for a in fresh[2:]:
    b = next(resumed)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(fresh[0]["image"], fresh[1]["image"])
  assert set(fresh[0]) == {"image", "label"} and fresh[0]["image"].shape == (8, 32, 32, 3)


def test_training_with_trivialaugment_colour_and_erasing_resumes_bitwise(tmp_path):
  """A run stopped at step 2 and resumed ends with the uninterrupted run's bits (with the policy,
  Bag of Tricks' colour jitter and lighting, and erasing)."""

  c = test_train.tiny_config(
      4,
      dataset="fake",
      fake_image_shape=(24, 20, 3),
      num_classes=10,
      eval_split="test",
      fake_num_eval=16,
      eval_batch_size=16,
      ema_decay=None,
      polyak=False,
      augment="random_resized_crop",
      auto_augment="trivialaugment_wide",
      random_erasing=0.25,
      color_jitter=(0.4, 0.4, 0.4),
      pca_lighting=0.1,
  )
  c.model_kwargs.stage_sizes = (1, 1, 1)  # An 8-layer ResNet: less to compile.
  resumed = tiny.assert_exact_resume(c, tmp_path, 2)  # Steps 3 and 4 after a restart.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tiny.params_of(resumed)))
