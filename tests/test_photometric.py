"""GoogLeNet's photometric distortions on the accelerator (config `photometric`, issue #15).

The host draws them (`photometric.photometric_params`), the train step applies them
(`device_photometric.finish`): the same draws as `tf.image.stateless_random_*`, the same pixels as
TensorFlow's kernels to float32 rounding, the same training, and exact resume.

What every such move must keep (resume, 'auto', refusals, repairs, training) is in
tests/test_device_augment.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

from incres import data, wire
from incres.data import device_photometric, image_ops, photometric

import test_device_augment  # tests/ is on the path: the shared config.

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _seed(i):
  return tf.constant([11, i], tf.int64)


def _images(n=48, size=24):
  """[0, 1] images with the cases HSV code branches on: channel ties, grey, black, white."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
  x[:8] = np.round(x[:8] * 4) / 4  # Two or three channels equal (which one is the maximum).
  x[8] = 0.5
  x[9] = 0.0
  x[10] = 1.0
  x[11, ..., 0] = x[11, ..., 1]  # Red and green tie for the maximum everywhere.
  return x


def _tf_reference(image, seed):
  """The distortions as incres applied them before the draws were split out: each
  `tf.image.stateless_random_*` op with its own seed, in a random order, clipped after each."""
  order_seed, b_seed, c_seed, s_seed, h_seed = image_ops.split_seed(seed, 5)
  ops = (
      lambda x: tf.image.stateless_random_brightness(x, photometric.BRIGHTNESS_DELTA, b_seed),
      lambda x: tf.image.stateless_random_contrast(x, *photometric.CONTRAST_RANGE, c_seed),
      lambda x: tf.image.stateless_random_saturation(x, *photometric.SATURATION_RANGE, s_seed),
      lambda x: tf.image.stateless_random_hue(x, photometric.HUE_DELTA, h_seed),
  )
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  x = image
  for position in range(4):
    x = tf.switch_case(order[position], [lambda op=op, x=x: op(x) for op in ops])
    x = tf.clip_by_value(x, 0.0, 1.0)
  return x


def test_host_distortions_are_bitwise_those_of_the_stateless_random_ops():
  images = _images(12)
  for i, image in enumerate(images):
    np.testing.assert_array_equal(
        photometric.photometric_distortions(tf.constant(image), _seed(i)).numpy(),
        _tf_reference(tf.constant(image), _seed(i)).numpy(),
    )


def test_params_hold_a_permutation_and_magnitudes_in_their_ranges():
  params = np.stack([photometric.photometric_params(_seed(i)).numpy() for i in range(200)])
  assert params.shape == (200, wire.PHOTOMETRIC.length) == (200, 8)
  assert params.dtype == np.float32
  order = wire.PHOTOMETRIC.get(params, "order")
  magnitudes = wire.PHOTOMETRIC.get(params, "magnitudes")
  for row in order:
    assert sorted(row) == [0, 1, 2, 3]
  assert len({tuple(r) for r in order}) > 12  # Many of the 24 orders occur.
  ranges = {
      "brightness": (-photometric.BRIGHTNESS_DELTA, photometric.BRIGHTNESS_DELTA),
      "contrast": photometric.CONTRAST_RANGE,
      "saturation": photometric.SATURATION_RANGE,
      "hue": (-photometric.HUE_DELTA, photometric.HUE_DELTA),
  }
  for k, name in enumerate(photometric.PHOTOMETRIC_OPS):
    lo, hi = ranges[name]
    assert lo <= magnitudes[:, k].min() < lo + 0.1 * (hi - lo)
    assert hi - 0.1 * (hi - lo) < magnitudes[:, k].max() <= hi


def test_device_distortions_equal_tensorflows_kernels():
  images = _images()
  params = np.stack([photometric.photometric_params(_seed(i)).numpy() for i in range(len(images))])
  host = np.stack(
      [
          photometric.apply_photometric(tf.constant(x), tf.constant(p)).numpy()
          for x, p in zip(images, params)
      ]
  )
  device = np.asarray(jax.jit(device_photometric.distort)(images, params))
  np.testing.assert_allclose(device, host, rtol=0, atol=3e-6)
  assert np.abs(device - images).mean() > 0.02  # They do distort.


@pytest.mark.parametrize("op", range(4))
@pytest.mark.parametrize("magnitude_index", range(3))
def test_each_op_alone_at_its_extremes_equals_tensorflows(op, magnitude_index):
  """One op first, at the ends and the middle of its range (saturation's clip, hue's wrap)."""
  ranges = [
      (-photometric.BRIGHTNESS_DELTA, photometric.BRIGHTNESS_DELTA),
      photometric.CONTRAST_RANGE,
      photometric.SATURATION_RANGE,
      (-photometric.HUE_DELTA, photometric.HUE_DELTA),
  ]
  lo, hi = ranges[op]
  magnitudes = np.array([0.0, 1.0, 1.0, 0.0], np.float32)  # The other ops leave the image as is.
  magnitudes[op] = (lo, (lo + hi) / 2, hi)[magnitude_index]
  order = np.array([op] + [k for k in range(4) if k != op], np.float32)
  params = wire.PHOTOMETRIC.pack(np.concatenate, order=order, magnitudes=magnitudes)[None]
  images = _images(16)
  tf_op = [
      tf.image.adjust_brightness,
      tf.image.adjust_contrast,
      tf.image.adjust_saturation,
      tf.image.adjust_hue,
  ][op]
  for x in images:
    want = np.clip(tf_op(tf.constant(x), float(magnitudes[op])).numpy(), 0, 1)
    got = np.asarray(device_photometric.distort(x[None], params))[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-6)


def _config(place, **overrides):
  return test_device_augment.config("photometric", place, **overrides)


@pytest.mark.parametrize("normalize", ["auto", "mean_std", "none"])
def test_device_batches_finish_as_the_host_pipelines_batches(normalize):
  host = next(data.create_train_iter(_config("host", normalize=normalize)))
  config = _config("device", normalize=normalize)
  batch = next(data.create_train_iter(config))
  assert set(host) == {"image", "label"} and set(batch) == {"image", "label", "photometric"}
  assert batch["photometric"].shape == (8, 8)
  assert 0 <= batch["image"].min() and batch["image"].max() <= 1  # Before the distortions.
  np.testing.assert_array_equal(batch["label"], host["label"])
  finished = np.asarray(jax.jit(data.device_preprocess(config))(batch))
  np.testing.assert_allclose(finished, host["image"], rtol=0, atol=1e-5)


def test_where_tensorflows_saturation_kernel_greys_a_pixel_the_device_keeps_its_colour():
  """The one difference known (photometric's docstring): hue rounding to 1.0 in TF's kernel."""
  x = np.array([[[1.0, 0.5, np.nextafter(np.float32(0.5), np.float32(1))]]], np.float32)
  np.testing.assert_array_equal(tf.image.adjust_saturation(x, 1.0).numpy(), np.full_like(x, 0.5))
  np.testing.assert_array_equal(
      np.asarray(device_photometric._saturation(x[None], np.float32(1.0)))[0], x
  )
