"""Bag of Tricks' colour augmentation on the random-resized crop (incres.data.color_jitter): each op
against mxnet's `image_aug_default.cc` formulas written in numpy, the factors' and order's
distributions, determinism in (image, seed), the crop's other draws untouched by it, and its
config keys."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from incres import configs, data, errors
from incres.data import color_jitter, imagenet_stats, modern, resnet_augment

# mxnet's src/io/image_aug_default.cc: eigenvalue x eigenvector on the 0-255 scale (R, G, B rows).
MXNET_EIGVEC = np.array(
    [
        [55.46 * -0.5675, 4.794 * 0.7192, 1.148 * 0.4009],
        [55.46 * -0.5808, 4.794 * -0.0045, 1.148 * -0.8140],
        [55.46 * -0.5836, 4.794 * -0.6948, 1.148 * 0.4203],
    ]
)


def _image(h=12, w=10, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
  """OpenCV's cvtColor(CV_RGB2GRAY) on uint8, applied to mxnet's BGR buffer: `x` is RGB here, so
  its channels reversed are what OpenCV reads as (R, G, B)."""
  bgr = x[..., ::-1].astype(np.int64)
  return (bgr @ np.array([4899, 9617, 1868]) + (1 << 13)) >> 14  # R2Y, G2Y, B2Y over 2^14.


def _saturate(v: np.ndarray) -> np.ndarray:
  return np.clip(np.round(v), 0, 255).astype(np.uint8)  # saturate_cast: half to even.


def _mxnet(x: np.ndarray, op: str, a: float) -> np.ndarray:
  """One op of image_aug_default.cc's colour jitter, in float32 as OpenCV computes it."""
  a = np.float32(a)
  f = x.astype(np.float32)
  if op == "brightness":  # convertTo(res, -1, alpha_b, 0)
    return _saturate(f * a)
  g = _gray(x).astype(np.float32)
  if op == "contrast":  # convertTo(res, -1, alpha_c, (1 - alpha_c) * gray_mean)
    return _saturate(f * a + (np.float32(1) - a) * np.float32(g.mean()))
  return _saturate(f * a + g[..., None] * (np.float32(1) - a))  # addWeighted with the gray


def test_gray_is_opencvs_luma_of_mxnets_bgr_buffer():
  red, blue = np.array([[[255, 0, 0]]], np.uint8), np.array([[[0, 0, 255]]], np.uint8)
  # 0.114 x 255 for red and 0.299 x 255 for blue: RGB2GRAY on BGR swaps their weights.
  assert color_jitter.gray(tf.constant(red)).numpy().item() == 29
  assert color_jitter.gray(tf.constant(blue)).numpy().item() == 76
  x = _image()
  np.testing.assert_array_equal(color_jitter.gray(tf.constant(x)).numpy()[..., 0], _gray(x))


@pytest.mark.parametrize("op", color_jitter.OPS)
@pytest.mark.parametrize("factor", [0.6, 0.83, 1.27, 1.4])
def test_each_op_is_mxnets_formula(op, factor):
  x = _image()
  got = color_jitter.adjust(tf.constant(x), op, tf.constant(factor, tf.float32)).numpy()
  want = _mxnet(x, op, factor)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, x)  # Every op at these factors changes some pixel.


def test_ops_run_in_the_drawn_order_and_zero_strength_ops_are_skipped():
  x = _image(seed=1)
  factors = tf.constant([1.3, 0.7, 1.35], tf.float32)
  for order in itertools.permutations(range(3)):
    got = color_jitter.apply_jitter(
        tf.constant(x), tf.constant(order, tf.int32), factors, (0.4, 0.4, 0.4)
    ).numpy()
    want = x
    for k in order:
      want = _mxnet(want, color_jitter.OPS[k], factors.numpy()[k])
    np.testing.assert_array_equal(got, want, err_msg=str(order))
  # Contrast's strength 0: only brightness then saturation, whatever its factor says.
  got = color_jitter.apply_jitter(
      tf.constant(x), tf.constant([0, 1, 2], tf.int32), factors, (0.4, 0.0, 0.4)
  ).numpy()
  np.testing.assert_array_equal(got, _mxnet(_mxnet(x, "brightness", 1.3), "saturation", 1.35))


def test_lighting_is_the_pca_shift_on_0_255_truncated_and_clipped():
  x = _image(seed=2)
  seed = tf.constant([5, 9], tf.int64)
  got = color_jitter.lighting(tf.constant(x), seed, 0.1).numpy()
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=0.1).numpy()
  shift = MXNET_EIGVEC @ alpha  # mxnet's pca_r, pca_g, pca_b.
  # The shared PCA table ([0, 1] scale, 4 digits) is mxnet's to 0.05%.
  np.testing.assert_allclose(255 * resnet_augment.pca_shift(seed, 0.1).numpy(), shift, rtol=2e-3)
  ours = 255 * resnet_augment.pca_shift(seed, 0.1).numpy().astype(np.float32)
  want = np.clip(np.trunc(x.astype(np.float32) + ours), 0, 255).astype(np.uint8)  # int vp += pca
  np.testing.assert_array_equal(got, want)
  assert np.abs(shift).max() > 0.5 and not np.array_equal(got, x)


def test_factors_are_uniform_in_the_range_and_every_order_equally_likely():
  n = 3000
  ds = tf.data.Dataset.range(n).map(
      lambda i: color_jitter.jitter_params(tf.stack([tf.constant(7, tf.int64), i]), (0.4, 0.2, 0.0))
  )
  order, factors = (t.numpy() for t in next(iter(ds.batch(n))))
  for k, s in enumerate((0.4, 0.2)):
    f = factors[:, k]
    assert f.min() >= 1 - s and f.max() <= 1 + s
    assert stats.kstest(f, stats.uniform(loc=1 - s, scale=2 * s).cdf).pvalue > 1e-3, k
  assert np.all(factors[:, 2] == 1.0)  # Strength 0: factor 1.
  assert np.corrcoef(factors[:, 0], factors[:, 1])[0, 1] ** 2 < 0.01  # Independent draws.
  counts = np.unique([tuple(o) for o in order], axis=0, return_counts=True)[1]
  assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-3


def _config(**overrides):
  c = configs.base_config()
  c.update(
      dataset="fake",
      fake_image_shape=(60, 80, 3),
      num_classes=10,
      augment="random_resized_crop",
      image_size=32,
      batch_size=8,
  )
  c.update(overrides)
  return c


def _pixels(view: np.ndarray) -> np.ndarray:
  """The uint8 crop a normalised view was made of (the view's mean and std undone)."""
  mean, std = np.array(imagenet_stats.IMAGENET_MEAN_RGB), np.array(imagenet_stats.IMAGENET_STD_RGB)
  pixels = (view * std + mean) * 255
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
  return np.round(pixels).astype(np.uint8)


def test_the_view_is_the_crop_then_the_colour_from_its_own_stream_and_deterministic():
  """With the colour on, the crop, flip and erasing draw as without it (runs without jitter keep
  their views bitwise), and the colour is a function of (image, seed)."""
  image = tf.constant(_image(60, 80, seed=3))
  off = data.preprocess.train_fn(_config())
  on = data.preprocess.train_fn(_config(color_jitter=(0.4, 0.4, 0.4), pca_lighting=0.1))
  # The keys at 0 are the transform without them: modern.train's own defaults.
  mean = tf.constant(imagenet_stats.IMAGENET_MEAN_RGB, tf.float32)
  std = tf.constant(imagenet_stats.IMAGENET_STD_RGB, tf.float32)
  changed = 0
  for i in range(4):
    seed = tf.constant([2, i], tf.int64)
    plain = off(image, seed).numpy()
    np.testing.assert_array_equal(plain, modern.train(image, seed, size=32, mean=mean, std=std))
    crop = _pixels(plain)
    coloured = on(image, seed).numpy()
    np.testing.assert_array_equal(coloured, on(image, seed).numpy())  # Deterministic.
    want = color_jitter.color_augment(
        tf.constant(crop), color_jitter.stream(seed), strengths=(0.4, 0.4, 0.4), lighting_std=0.1
    ).numpy()
    np.testing.assert_array_equal(_pixels(coloured), want)
    changed += not np.array_equal(_pixels(coloured), crop)
  assert changed == 4
  other = on(image, tf.constant([3, 0], tf.int64)).numpy()
  assert not np.array_equal(other, on(image, tf.constant([2, 0], tf.int64)).numpy())


@pytest.mark.parametrize(
    "key,value",
    [("color_jitter", (0.4, 0.4)), ("color_jitter", (0.4, 1.5, 0.4)), ("pca_lighting", -0.1)],
)
def test_bad_values_are_user_errors_naming_the_key(key, value):
  c = _config()
  with c.unlocked():
    c[key] = value
  with pytest.raises(errors.UserError, match=key):
    data.create_train_iter(c)


@pytest.mark.parametrize("augment", ["resnet_imagenet", "googlenet", "cifar"])
@pytest.mark.parametrize("key,value", [("color_jitter", (0.4, 0.0, 0.0)), ("pca_lighting", 0.1)])
def test_other_recipes_refuse_it(augment, key, value):
  c = _config(augment=augment)
  c[key] = value
  with pytest.raises(errors.UserError, match=f"{key}.*random_resized_crop"):
    configs.check_auto_augment(c)
