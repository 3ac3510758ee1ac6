"""Crop-first views (issue #15): the same draws and nearly the same pixels as decoding everything.

`resnet_augment.resnet_imagenet_train` and `eval_views.eval_center` decode (of a JPEG) and
resample only the window under their crop; `resnet_augment.resnet_imagenet_train_reference` is the
whole-image implementation they replaced. Tolerances, on pixel values scaled to [0, 1]:
- where the view is upscaled (and for antialiased downscales, above `crops.ANTIALIAS_ABOVE`) the
  two compute the same samples: max abs difference < 1e-3 (float rounding, JPEG window edges);
- downscaled by up to ANTIALIAS_ABOVE the new path interpolates bilinearly where the reference
  filtered (antialiased): mean abs difference < 2/255 per view and < 1/255 over all views.
"""

import numpy as np
import pytest
import tensorflow as tf

from incres import data
from incres.data import crops, eval_views, image_ops, resnet_augment

import tiny_config  # tests/ is on the path (pytest's rootdir-relative import).

SIZE = 32  # The crop; ResNet's scale range becomes round([256, 480] * 32 / 224) = [37, 69].


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
  """A photo-like uint8 image: smooth structure plus mild pixel noise (as `data.sources.fake_pool`)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
  image = tf.image.resize(coarse, [h, w], method="bicubic").numpy()
  image += rng.normal(0, 4, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _seed(i: int) -> tf.Tensor:
  return tf.constant([11, i], tf.int64)


def _new(image, i, **kw):
  return resnet_augment.resnet_imagenet_train(image, _seed(i), size=SIZE, mean=0.0, **kw).numpy()


def _reference(image, i, **kw):
  return resnet_augment.resnet_imagenet_train_reference(
      image, _seed(i), size=SIZE, mean=0.0, **kw
  ).numpy()


def _reference_draw(h: int, w: int, i: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
  """(shorter side, resized shape, crop offset) as the whole-image implementation draws them."""
  scale_seed, crop_seed, _, _ = image_ops.split_seed(_seed(i), 4)
  lo, hi = round(256 * SIZE / 224), round(480 * SIZE / 224)
  shorter = int(tf.random.stateless_uniform([], scale_seed, lo, hi + 1, tf.int32))
  resized = image_ops.resize_shorter_side(tf.zeros([h, w, 1]), shorter)
  nh, nw = int(resized.shape[0]), int(resized.shape[1])
  # The crop of an image whose pixels are their own indices names its offset.
  index = tf.reshape(tf.range(nh * nw), [nh, nw, 1])
  corner = int(tf.image.stateless_random_crop(index, [SIZE, SIZE, 1], seed=crop_seed)[0, 0, 0])
  return shorter, (nh, nw), divmod(corner, nw)


def test_the_fused_flip_decides_as_tf_image_stateless_random_flip():
  """The crop samples its columns in reverse (`image_ops.flips`) exactly when the reference's
  `tf.image.stateless_random_flip_left_right` with the same seed mirrors the image."""
  ramp = tf.constant([[[0.0], [1.0]]])  # Mirrored, its first pixel is 1.
  decisions = []
  for i in range(200):
    _, _, flip_seed, _ = image_ops.split_seed(_seed(i), 4)
    mirrored = float(tf.image.stateless_random_flip_left_right(ramp, seed=flip_seed)[0, 0, 0])
    assert bool(image_ops.flips(flip_seed)) == (mirrored == 1.0), i
    decisions.append(mirrored)
  assert 70 < sum(decisions) < 130  # Both outcomes are exercised.


@pytest.mark.parametrize("h,w", [(45, 60), (60, 45), (40, 40), (33, 90)])
def test_scale_and_crop_box_are_those_of_the_whole_image_implementation(h, w):
  for i in range(40):
    shorter, shape, offset = resnet_augment.resnet_scale_and_offset(h, w, _seed(i), size=SIZE)
    assert (int(shorter), tuple(shape.numpy()), tuple(offset.numpy())) == _reference_draw(h, w, i)


def test_jpeg_views_are_close_to_the_whole_image_implementation():
  means, upscaled = [], 0
  for k, (h, w) in enumerate([(45, 60), (60, 45), (52, 52)]):
    encoded = tf.io.encode_jpeg(_photo(h, w, k), quality=95)
    for i in range(12):
      diff = np.abs(_new(encoded, i) - _reference(encoded, i))
      assert diff.mean() < 2 / 255, (h, w, i)
      means.append(diff.mean())
      shorter = int(resnet_augment.resnet_scale_and_offset(h, w, _seed(i), size=SIZE)[0])
      if shorter >= min(h, w):  # Upscaled: bilinear samples are the antialiased ones.
        upscaled += 1
        assert diff.max() < 1e-3, (h, w, i)
  assert np.mean(means) < 1 / 255
  assert upscaled >= 5  # The exact case was exercised.


def test_large_images_take_the_antialiased_path_with_the_reference_pixels():
  # Shorter side 150 and crops from a side resized to 37..69: downscaled by 2.2..4 (antialiased).
  image = _photo(150, 200)
  for i in range(4):
    np.testing.assert_allclose(_new(image, i), _reference(image, i), atol=1e-3)


def test_png_and_arrays_give_the_same_view_as_each_other():
  image = _photo(45, 60)
  png = tf.io.encode_png(image)
  for i in range(6):
    from_array = _new(tf.constant(image), i)
    np.testing.assert_allclose(_new(png, i), from_array, atol=1e-6)
    assert np.abs(from_array - _reference(tf.constant(image), i)).mean() < 2 / 255


def test_center_view_of_a_jpeg_is_close_to_the_whole_image_one():
  for h, w in [(45, 60), (60, 45), (36, 36)]:  # Downscaled, and upscaled (36 -> shorter 37).
    encoded = tf.io.encode_jpeg(_photo(h, w), quality=95)
    new = eval_views.eval_center(encoded, size=SIZE, mean=0.0).numpy()
    decoded = tf.io.decode_jpeg(encoded, channels=3)
    reference = eval_views.eval_center(decoded, size=SIZE, mean=0.0).numpy()
    assert new.shape == (SIZE, SIZE, 3)
    assert np.abs(new - reference).mean() < 2 / 255, (h, w)
    if min(h, w) < 37:
      np.testing.assert_allclose(new, reference, atol=1e-3)


@pytest.mark.parametrize("view", ["train", "center"])
def test_a_truncated_jpeg_fails_whatever_the_crop(view):
  encoded = tf.io.encode_jpeg(_photo(200, 60)).numpy()
  truncated = tf.constant(encoded[: len(encoded) * 3 // 4])
  # Most of these windows lie wholly above the cut and would decode on their own (6 of the 8 do):
  # every draw must fail, as decoding the whole image does, so that a damaged file is skipped
  # whatever its crop.
  for i in range(8 if view == "train" else 1):
    with pytest.raises(tf.errors.InvalidArgumentError):
      if view == "train":
        _new(truncated, i)
      else:
        eval_views.eval_center(truncated, size=SIZE, mean=0.0)


def test_fake_jpeg_training_resumes_bitwise_with_crop_first_decoding():
  config = tiny_config.get_config()
  config.update(
      dataset="fake",
      augment="resnet_imagenet",
      fake_image_shape=(40, 52, 3),
      fake_num_train=24,
      batch_size=8,
      image_size=SIZE,
  )
  fresh = data.create_train_iter(config)
  batches = [next(fresh) for _ in range(4)]
  resumed = next(data.create_train_iter(config, start_step=3))
  np.testing.assert_array_equal(resumed["image"], batches[3]["image"])
  np.testing.assert_array_equal(resumed["label"], batches[3]["label"])
  assert not np.array_equal(batches[0]["image"], batches[3]["image"])
