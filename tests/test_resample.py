"""ResNet's crop resampling on the accelerator (config `resample`, issue #15).

The host decodes each crop's window and ships it with where to sample it
(`crops.resized_crop_for_device`); the train step resamples and normalises it
(`device_resample.finish`): the same draws, the host's pixels to float32 rounding, the same
training, and exact resume. The parameter vectors are read by field name (`incres.wire`).

What every such move must keep (resume, 'auto', refusals, repairs, training) is in
tests/test_device_augment.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

from incres import data, wire
from incres.data import (
    crops,
    device_photometric,
    device_resample,
    googlenet_augment,
    image_ops,
    imagenet_stats,
    resnet_augment,
)

import test_device_augment  # tests/ is on the path: the shared config.

pytestmark = pytest.mark.usefixtures("compilation_cache")

MEAN = np.array(imagenet_stats.IMAGENET_MEAN_RGB, np.float32)
RESAMPLE = wire.resample_layout(224)  # ResNet's vector for a 224 view.
RESIZE = wire.resize_layout(224)  # GoogLeNet's.


def _seed(i):
  return tf.constant([7, i], tf.int64)


def _photo(shape, seed=0):
  """A smooth random photo-like uint8 image (sharp noise would hide nothing, but smooth images
  are what the interpolation weights matter on) with a few hard edges."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (max(shape[0] // 16, 2), max(shape[1] // 16, 2), 3))
  x = tf.image.resize(coarse[None], shape[:2], method="bicubic")[0].numpy()
  x[:, shape[1] // 3] = 255.0
  return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)


def _host_and_device(image, seed, size=224, **kw):
  host = resnet_augment.resnet_imagenet_train(image, seed, size=size, mean=MEAN, **kw).numpy()
  out = resnet_augment.resnet_imagenet_train(
      image, seed, size=size, mean=MEAN, resample_on_device=True, **kw
  )
  buffer, params = out["image"].numpy(), out["resample"].numpy()
  return host, buffer, params


# Shapes: ImageNet's typical landscape and portrait, an image the view enlarges, one shrunk more
# than 2x (the antialiased kernel, resampled on the host), a square, a long strip.
SHAPES = [(375, 500), (500, 333), (150, 110), (1400, 1000), (224, 224), (1100, 260)]


@pytest.mark.parametrize("shape", SHAPES)
def test_device_views_equal_the_host_views(shape):
  image = _photo(shape + (3,))
  finish = jax.jit(device_resample.finish, static_argnums=2)
  for encoded in (False, True):  # Decoded arrays and JPEGs (the window-decoding path).
    src = tf.io.encode_jpeg(image, quality=92) if encoded else tf.constant(image)
    for i in range(6):
      host, buffer, params = _host_and_device(src, _seed(i))
      assert buffer.shape == (crops.device_buffer_bytes(224),) and buffer.dtype == np.uint8
      assert params.shape == (3 + 2 * 224 + 3,) and params.dtype == np.float32
      device = np.asarray(finish(buffer[None], params[None], 224, MEAN))[0]
      np.testing.assert_allclose(device, host, rtol=0, atol=1e-6)
      # Un-jitted (op by op, no fused multiply-adds): crop_and_resize's arithmetic, bit for bit.
      unfused = device_resample.finish(buffer[None], params[None], 224, MEAN)
      np.testing.assert_array_equal(np.asarray(unfused)[0], host)


def test_which_views_the_host_resamples():
  """Only views shrunk more than ANTIALIAS_ABOVE (2x) are resampled on the host; every other
  window fits the buffer, up to the bound: shrink exactly 2 at every offset."""
  flags = {}
  for shape in [(375, 500), (2000, 1500)]:
    encoded = tf.io.encode_jpeg(_photo(shape + (3,)))
    params = [_host_and_device(encoded, _seed(i))[2] for i in range(30)]
    flags[shape] = [RESAMPLE.get(p, "host_resampled") for p in params]
  assert flags[(375, 500)] == [0.0] * 30  # Shrink <= 375/256.
  assert flags[(2000, 1500)] == [1.0] * 30  # Shrink >= 1500/480 > 2.

  capacity = crops.device_buffer_bytes(224)
  for short, long in [(512, 512), (512, 4000), (511, 700)]:  # Shorter side 256: shrink 2.
    image = np.zeros((short, long, 3), np.uint8)
    longer = round(long * 256 / short)  # The resized image is 256 x longer.
    for top in (0, 1, 7, 256 - 224):  # Both ends: the windows clamped at the image's edges.
      for left in (0, 3, 5, longer // 2, longer - 224):

        def box(height, width, top=top, left=left):
          new = image_ops.shorter_side_shape(height, width, 256)
          return new[0], new[1], top, left

        buffer, params = crops.resized_crop_for_device(tf.constant(image), 224, box)
        rows, cols = RESAMPLE.get(params, "rows"), RESAMPLE.get(params, "cols")
        # Not resampled on the host.
        assert RESAMPLE.get(params, "host_resampled") == 0.0, (short, long, top, left)
        assert rows * cols * 3 <= capacity
        assert rows <= 2 * 224 + 8 and cols <= 2 * 224 + 8
  assert crops.device_buffer_bytes(224) == 456 * 456 * 3
  assert crops.device_buffer_bytes(8) >= 4 * 8 * 8 * 3  # The float32 view fits, small too.


def test_a_noisy_photo_as_the_host_sees_it():
  """Sharp noise magnifies any difference in the sampling positions (with positions computed in
  the compiled step, fused multiply-adds moved pixels by up to 7.6e-3 of 255): the host computes
  them, so the jitted view differs only by the rounding of the blend."""
  rng = np.random.default_rng(1)
  image = tf.constant(rng.integers(0, 256, (511, 700, 3), dtype=np.uint8))
  finish = jax.jit(device_resample.finish, static_argnums=2)
  for i in range(6):
    host, buffer, params = _host_and_device(image, _seed(i))
    device = np.asarray(finish(buffer[None], params[None], 224, MEAN))[0]
    np.testing.assert_allclose(device, host, rtol=0, atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_a_window_too_large_for_the_buffer_is_resampled_on_the_host(monkeypatch, flip):
  """The fallback no bilinear window should need (the bound above), forced by a small buffer:
  the host's view, mirrored or not, shipped as its float32 bytes."""
  image = tf.constant(_photo((600, 800, 3)))

  def box(height, width):
    return height // 2, width // 2, 20, 30  # Shrink 2: a ~456² window, > 4·224²·3 bytes.

  want = crops.resized_crop(image, 224, box, flip=tf.constant(flip)).numpy()
  monkeypatch.setattr(crops, "device_buffer_bytes", lambda size: 4 * size * size * 3)
  buffer, params = crops.resized_crop_for_device(image, 224, box, flip=tf.constant(flip))
  assert buffer.shape == (4 * 224 * 224 * 3,) and RESAMPLE.get(params, "host_resampled") == 1.0
  np.testing.assert_array_equal(
      np.asarray(device_resample.view(buffer.numpy(), params.numpy(), 224)), want
  )


def test_flips_are_the_hosts_draws():
  """A view is mirrored (its columns sampled right to left) exactly where the host's flip draw
  (`tf.image.stateless_random_flip_left_right`'s decision, `image_ops.flips`) says so."""
  image = tf.constant(_photo((300, 400, 3)))
  mirrored = []
  for i in range(40):
    _, _, params = _host_and_device(image, _seed(i))
    flip = image_ops.flips(image_ops.split_seed(_seed(i), 4)[2]).numpy()
    columns = RESAMPLE.get(params, "col_positions")
    assert (columns[1] < columns[0]) == flip  # Sampled right to left.
    mirrored.append(flip)
  assert 8 < sum(mirrored) < 32


def _config(place, **overrides):
  return test_device_augment.config("resample", place, **overrides)


@pytest.mark.parametrize("normalize", ["auto", "mean_std", "none", "pixel_mean"])
def test_device_batches_finish_as_the_host_pipelines_batches(normalize, tmp_path):
  where = dict(normalize=normalize, data_dir=str(tmp_path))  # The pixel mean's cache, if any.
  host = next(data.create_train_iter(_config("host", **where)))
  config = _config("device", **where)
  batch = next(data.create_train_iter(config))
  assert set(host) == {"image", "label"} and set(batch) == {"image", "label", "resample"}
  assert batch["image"].shape == (8, crops.device_buffer_bytes(32))
  assert batch["image"].dtype == np.uint8 and batch["resample"].shape == (8, 3 + 2 * 32 + 3)
  np.testing.assert_array_equal(batch["label"], host["label"])
  finished = np.asarray(jax.jit(data.device_preprocess(config))(batch))
  assert finished.shape == host["image"].shape == (8, 32, 32, 3)
  np.testing.assert_allclose(finished, host["image"], rtol=0, atol=1e-5)


def test_streamed_tfds_batches_finish_as_the_hosts_and_resume_exactly():
  """The streamed path (tfds datasets too large to hold: ImageNet) carries the windows too."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=37):
    batches = {}
    for place in ("host", "device"):
      config = _config(place, dataset="imagenette", eval_split="validation", image_size=64)
      it = data.create_train_iter(config)
      batches[place] = [next(it) for _ in range(6)]
    resumed = next(data.create_train_iter(config, start_step=5))  # The second epoch.
  finish = jax.jit(data.device_preprocess(config))
  for host, device in zip(batches["host"], batches["device"]):
    assert set(device) == {"image", "label", "resample"}
    np.testing.assert_array_equal(device["label"], host["label"])
    np.testing.assert_allclose(np.asarray(finish(device)), host["image"], rtol=0, atol=1e-5)
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], batches["device"][5][key])


# --- GoogLeNet: the crop's window resized on the accelerator with its drawn kernel ---------------


@pytest.mark.parametrize("kernel", googlenet_augment.INTERPOLATIONS)
@pytest.mark.parametrize("shape", [(375, 500), (100, 80), (17, 23), (300, 301), (527, 390)])
def test_each_kernel_equals_tensorflows_resize(kernel, shape):
  """`googlenet_view` against `tf.image.resize` (+ clip, + mirror) on sharp noise, enlarged and
  shrunk up to `device_resize_max_side`: equal to the float32 rounding of the sums (at the host's
  positions, bicubic's table entries are TensorFlow's)."""
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
  buffer = np.zeros(crops.device_buffer_bytes(224), np.uint8)
  buffer[: image.size] = image.reshape(-1)
  side = googlenet_augment.device_resize_max_side(224)
  view = jax.jit(device_resample.googlenet_view, static_argnums=(2, 3))
  x = tf.constant(image, tf.float32) / 255.0
  want = np.clip(tf.image.resize(x, [224, 224], method=kernel).numpy(), 0, 1)
  axes = [googlenet_augment._resize_positions(length, 224).numpy() for length in shape]
  for flip in (0.0, 1.0):
    params = RESIZE.pack(
        np.concatenate,
        rows=np.float32([shape[0]]),
        cols=np.float32([shape[1]]),
        kernel=np.float32([googlenet_augment.INTERPOLATIONS.index(kernel)]),
        flip=np.float32([flip]),
        host_resized=np.float32([0.0]),
        row_axis=axes[0],
        col_axis=axes[1],
    )
    got = np.asarray(view(buffer, params, 224, side))
    np.testing.assert_allclose(got, want[:, ::-1] if flip else want, rtol=0, atol=1e-6)


def _googlenet(image, seed, **kw):
  return googlenet_augment.googlenet_train(
      image, seed, size=224, mean=0.0, photometric_on_device=True, **kw
  )


def test_googlenet_device_views_equal_the_host_views():
  """The whole GoogLeNet view (crop, kernel, flip, colour, mean) from the window and from the
  host's [0, 1] crop; large photos' windows over `device_resize_max_side` resized on the host."""
  finish_host = jax.jit(lambda x, p: device_photometric.finish(x, p, MEAN))
  finish_device = jax.jit(
      lambda b, r, p: device_resample.googlenet_finish(
          b, r, p, 224, googlenet_augment.device_resize_max_side(224), MEAN
      )
  )
  kinds = set()
  for shape in [(375, 500), (150, 110), (1400, 1000)]:
    encoded = tf.io.encode_jpeg(_photo(shape + (3,)))
    for i in range(8):
      host = _googlenet(encoded, _seed(i))
      out = _googlenet(encoded, _seed(i), resize_on_device=True)
      params = out["resize"].numpy()
      resize_seed, flip_seed = image_ops.split_seed(_seed(i), 4)[1:3]
      drawn = tf.random.stateless_uniform([], resize_seed, maxval=4, dtype=tf.int32).numpy()
      host_resized = float(RESIZE.get(params, "host_resized"))
      if host_resized == 0:  # The draws: random_resize's kernel, the flip.
        assert RESIZE.get(params, "kernel") == drawn
        assert RESIZE.get(params, "flip") == image_ops.flips(flip_seed).numpy()
      kinds.add((shape, host_resized))
      np.testing.assert_array_equal(out["photometric"], host["photometric"])
      want = np.asarray(finish_host(host["image"].numpy()[None], host["photometric"].numpy()[None]))
      got = finish_device(
          out["image"].numpy()[None], params[None], out["photometric"].numpy()[None]
      )
      np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-6)
  assert ((375, 500), 0.0) in kinds and ((1400, 1000), 1.0) in kinds  # Both paths were taken.


@pytest.mark.parametrize("normalize", ["auto", "mean_std"])
def test_googlenet_device_batches_finish_as_the_host_pipelines_batches(normalize):
  host = next(data.create_train_iter(_config("host", augment="googlenet", normalize=normalize)))
  config = _config("device", augment="googlenet", normalize=normalize)
  batch = next(data.create_train_iter(config))
  assert set(batch) == {"image", "label", "resize", "photometric"}
  assert batch["image"].dtype == np.uint8 and batch["resize"].shape == (8, 5 + 2 * (2 * 32 + 2))
  np.testing.assert_array_equal(batch["label"], host["label"])
  finished = np.asarray(jax.jit(data.device_preprocess(config))(batch))
  np.testing.assert_allclose(finished, host["image"], rtol=0, atol=1e-5)
