"""The papers' augmentations: shapes, ranges, statistics, determinism, eager == tf.data."""

import math

import numpy as np
import pytest
import tensorflow as tf

from incres.data import (
    cifar_augment,
    eval_views,
    googlenet_augment,
    image_ops,
    imagenet_stats,
    photometric,
    resnet_augment,
)

# The ImageNet channel mean and std of torchvision's `transforms.Normalize` (the published values,
# pytorch/vision references/classification/presets.py), hard-coded so that a changed constant in
# `incres.data.imagenet_stats` fails here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN = tf.constant(IMAGENET_MEAN)


def test_imagenet_normalisation_constants_are_the_published_ones():
  np.testing.assert_array_equal(imagenet_stats.IMAGENET_MEAN_RGB, IMAGENET_MEAN)
  np.testing.assert_array_equal(imagenet_stats.IMAGENET_STD_RGB, IMAGENET_STD)


def _image(h=300, w=400, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _seed(i):
  return tf.constant([7, i], tf.int64)


TRAIN_FNS = {
    "cifar": (lambda x, s: cifar_augment.cifar_train(x, s, mean=0.5), (32, 32)),
    "resnet_imagenet": (
        lambda x, s: resnet_augment.resnet_imagenet_train(x, s, size=224, mean=MEAN),
        (300, 400),
    ),
    "googlenet": (
        lambda x, s: googlenet_augment.googlenet_train(x, s, size=224, mean=MEAN),
        (300, 400),
    ),
}


@pytest.mark.parametrize("name", sorted(TRAIN_FNS))
def test_train_shape_dtype_range(name):
  fn, (h, w) = TRAIN_FNS[name]
  out = fn(_image(h, w), _seed(0)).numpy()
  size = 32 if name == "cifar" else 224
  assert out.shape == (size, size, 3) and out.dtype == np.float32
  mean = np.array(IMAGENET_MEAN) if name != "cifar" else 0.5
  # PCA noise adds at most a few σ of 0.1 × eigenvalues; everything else stays in [0, 1] - mean.
  slack = 0.1 if name == "resnet_imagenet" else 1e-6
  assert np.all(out >= -mean - slack) and np.all(out <= 1 - mean + slack)


@pytest.mark.parametrize("name", sorted(TRAIN_FNS))
def test_train_is_deterministic_and_equal_eagerly_and_in_tf_data(name):
  fn, (h, w) = TRAIN_FNS[name]
  image = _image(h, w)
  eager = [fn(image, _seed(i)).numpy() for i in range(3)]
  ds = tf.data.Dataset.range(3).map(
      lambda i: fn(image, tf.stack([tf.constant(7, tf.int64), i])), num_parallel_calls=3
  )
  np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), np.stack(eager), atol=1e-5)
  np.testing.assert_array_equal(fn(image, _seed(1)).numpy(), eager[1])
  assert not np.allclose(eager[0], eager[1])  # Different seeds, different views.


def test_cifar_is_a_shifted_possibly_flipped_window_of_the_padded_image():
  image = _image(32, 32)
  mean = np.random.default_rng(1).uniform(0, 1, (32, 32, 3)).astype(np.float32)
  padded = np.pad(image.numpy() / 255.0 - mean, [(4, 4), (4, 4), (0, 0)])
  seen = set()
  for i in range(60):
    out = cifar_augment.cifar_train(image, _seed(i), mean=tf.constant(mean)).numpy()
    matches = [
        (dy, dx, flip)
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
        if np.allclose(
            (padded[dy : dy + 32, dx : dx + 32, :])[:, :: -1 if flip else 1], out, atol=1e-6
        )
    ]
    assert matches, "output is not a window of the zero-padded, mean-subtracted image"
    seen.update(matches)
  # 60 draws from 81 shifts x 2 flips reach the extremes of the 4-pixel pad and both flips.
  assert {m[0] for m in seen} >= {0, 8} or {m[1] for m in seen} >= {0, 8}
  assert {m[2] for m in seen} == {False, True}


def _windows(h, w, n=2000):
  ds = tf.data.Dataset.range(n).map(
      lambda i: googlenet_augment.sample_crop_window(h, w, tf.stack([tf.constant(3, tf.int64), i]))
  )
  return np.stack(list(ds.batch(n).as_numpy_iterator())[0])


# A 500×200 image fits crops of aspect >= 3/4 up to 200 × 266 pixels: 53% of its area.
@pytest.mark.parametrize("h,w,max_area", [(300, 400, 1.0), (256, 256, 1.0), (500, 200, 0.533)])
def test_googlenet_crop_area_and_aspect_statistics(h, w, max_area):
  top, left, ch, cw = _windows(h, w).T
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + ch <= h) and np.all(left + cw <= w)
  area = ch * cw / (h * w)
  aspect = cw / ch
  # Rounding to whole pixels moves area and aspect by well under 2%.
  assert area.min() >= 0.08 * 0.98 and area.max() <= 1.0
  assert aspect.min() >= 0.75 * 0.98 and aspect.max() <= 4 / 3 * 1.02
  # Area spread over its range ("distributed evenly between 8% and 100%"); large crops are
  # rarer than uniform because they must fit, hence the loose bounds.
  assert area.min() < 0.1 and 0.8 * max_area < area.max() <= max_area * 1.01
  assert np.mean(aspect < 0.85) > 0.1 and np.mean(aspect > 1.18) > 0.1
  if max_area == 1.0:  # (The tall image's fit constraint favours small, narrow crops.)
    assert 0.35 < np.median(area) < 0.6
    assert abs(np.mean(np.log(aspect))) < 0.03  # log-uniform aspect: symmetric around 1.


def test_googlenet_crop_falls_back_to_an_allowed_aspect_for_extreme_images():
  # A 100:1 strip: a crop of >= 8% of its area and aspect <= 4/3 is >= 28 pixels tall, which does
  # not fit, so every draw takes the centred fallback: full height, widest allowed aspect.
  top, left, ch, cw = _windows(10, 1000, n=50).T
  assert np.all(ch == 10) and np.all(cw == 13) and np.all(top == 0)
  assert np.all(left == (1000 - 13) // 2)


def test_random_resize_uses_every_interpolation():
  image = tf.constant(np.random.default_rng(0).uniform(0, 1, (37, 53, 3)), tf.float32)
  refs = [
      tf.clip_by_value(tf.image.resize(image, [24, 24], method=m), 0, 1).numpy()
      for m in googlenet_augment.INTERPOLATIONS
  ]
  used = []
  for i in range(40):
    out = googlenet_augment.random_resize(image, 24, _seed(i)).numpy()
    used.append([k for k, ref in enumerate(refs) if np.allclose(out, ref)][0])
  assert set(used) == set(range(len(googlenet_augment.INTERPOLATIONS)))


def test_photometric_distortions_stay_in_range_and_change_the_image():
  image = tf.constant(np.random.default_rng(0).uniform(0, 1, (16, 16, 3)), tf.float32)
  outs = [photometric.photometric_distortions(image, _seed(i)).numpy() for i in range(10)]
  assert all(o.min() >= 0 and o.max() <= 1 for o in outs)
  assert all(not np.allclose(o, image.numpy(), atol=1e-3) for o in outs)


def test_pca_lighting_noise_has_the_alexnet_covariance():
  image = tf.zeros([1, 1, 3])
  shifts = np.stack(
      [resnet_augment.pca_lighting(image, _seed(i)).numpy()[0, 0] for i in range(3000)]
  )
  vec = np.array(imagenet_stats.PCA_EIGENVECTORS)
  expected = vec @ np.diag((0.1 * np.array(imagenet_stats.PCA_EIGENVALUES)) ** 2) @ vec.T
  np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.1 * expected.max())
  # Almost all of the variance is along the first (luminance) eigenvector.
  along = shifts @ vec[:, 0]
  assert np.var(along) / np.var(shifts, axis=0).sum() > 0.95


def test_resnet_scale_range_is_256_to_480_for_a_224_crop():
  # Observe the sampled scale through a one-row "ruler" image: after resizing the shorter side to s
  # and cropping 224 from it, the crop shows a fraction 224/s of the ruler's width range.
  ruler = np.tile(np.linspace(0, 255, 400, dtype=np.float32)[None, :, None], (400, 1, 3))
  spans = []
  for i in range(200):
    out = resnet_augment.resnet_imagenet_train(
        tf.constant(ruler.astype(np.uint8)), _seed(i), size=224, mean=0.0, pca_std=0.0
    ).numpy()
    row = out[112, :, 0]
    spans.append(abs(row[-20] - row[19]) * 224 / 184)  # Avoid the antialiased edges.
  scales = 224 / np.array(spans)  # shorter side / 1 (the ruler spans 1.0 over its width)
  assert 245 < scales.min() < 275 and 440 < scales.max() < 490


def test_resize_shorter_side_and_eval_views():
  image = _image(300, 400)
  assert image_ops.resize_shorter_side(tf.cast(image, tf.float32), 256).shape == (256, 341, 3)
  # Shorter side 256, then the central 224x224: 300x400 -> 256x341, rows 16:240, columns 58:282
  # ((341 - 224) // 2 = 58, as torchvision's CenterCrop); the portrait twin transposes that.
  for (h, w), (top, left) in [((300, 400), (16, 58)), ((400, 300), (58, 16))]:
    image = _image(h, w)
    center = eval_views.eval_center(image, size=224, mean=MEAN).numpy()
    assert center.shape == (224, 224, 3)
    resized = image_ops.resize_shorter_side(image / 255, 256).numpy()
    expected = resized[top : top + 224, left : left + 224] - np.array(IMAGENET_MEAN)
    np.testing.assert_allclose(center, expected, atol=1e-5)
  # The single view of an image already at the model's size is the image itself minus the mean.
  small = _image(32, 32)
  np.testing.assert_allclose(
      eval_views.eval_single(small, size=32, mean=0.25).numpy(),
      small.numpy() / 255 - 0.25,
      atol=1e-6,
  )
  assert math.isclose(eval_views.EVAL_RESIZE_RATIO * 224, 256)
