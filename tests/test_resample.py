"""ResNet's crop resampling on the accelerator (config `resample`, issue #15).

The host decodes each crop's window and ships it with where to sample it
(`augment.resized_crop_for_device`); the train step resamples and normalises it
(`resample.finish`): the same draws, the host's pixels to float32 rounding, the same training, and
exact resume.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

from incres import augment, configs, data, resample, train

import test_corrupt  # tests/ is on the path: the broken-folder helpers ...
import test_train  # ... and the tiny-run ones.

pytestmark = pytest.mark.usefixtures("compilation_cache")

MEAN = np.array(augment.IMAGENET_MEAN_RGB, np.float32)


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
  host = augment.resnet_imagenet_train(image, seed, size=size, mean=MEAN, **kw).numpy()
  out = augment.resnet_imagenet_train(
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
  finish = jax.jit(resample.finish, static_argnums=2)
  for encoded in (False, True):  # Decoded arrays and JPEGs (the window-decoding path).
    src = tf.io.encode_jpeg(image, quality=92) if encoded else tf.constant(image)
    for i in range(6):
      host, buffer, params = _host_and_device(src, _seed(i))
      assert buffer.shape == (augment.device_buffer_bytes(224),) and buffer.dtype == np.uint8
      assert params.shape == (10,) and params.dtype == np.float32
      device = np.asarray(finish(buffer[None], params[None], 224, MEAN))[0]
      np.testing.assert_allclose(device, host, rtol=0, atol=2e-5)
      # Un-jitted (op by op, no fused multiply-adds): crop_and_resize's arithmetic, bit for bit.
      unfused = resample.finish(buffer[None], params[None], 224, MEAN)
      np.testing.assert_array_equal(np.asarray(unfused)[0], host)


def test_which_views_the_host_resamples():
  """Only views shrunk more than ANTIALIAS_ABOVE (2x) are resampled on the host; every other
  window fits the buffer, up to the bound: shrink exactly 2 at every offset."""
  flags = {}
  for shape in [(375, 500), (2000, 1500)]:
    encoded = tf.io.encode_jpeg(_photo(shape + (3,)))
    flags[shape] = [_host_and_device(encoded, _seed(i))[2][6] for i in range(30)]
  assert flags[(375, 500)] == [0.0] * 30  # Shrink <= 375/256.
  assert flags[(2000, 1500)] == [1.0] * 30  # Shrink >= 1500/480 > 2.

  capacity = augment.device_buffer_bytes(224)
  for short, long in [(512, 512), (512, 4000), (511, 700)]:  # Shorter side 256: shrink 2.
    image = np.zeros((short, long, 3), np.uint8)
    longer = round(long * 256 / short)  # The resized image is 256 x longer.
    for top in (0, 1, 7, 256 - 224):  # Both ends: the windows clamped at the image's edges.
      for left in (0, 3, 5, longer // 2, longer - 224):

        def box(height, width, top=top, left=left):
          new = augment._shorter_side_shape(height, width, 256)
          return new[0], new[1], top, left

        buffer, params = augment.resized_crop_for_device(tf.constant(image), 224, box)
        assert params[6] == 0.0, (short, long, top, left)
        assert params[0] * params[1] * 3 <= capacity
        assert params[0] <= 2 * 224 + 8 and params[1] <= 2 * 224 + 8
  assert augment.device_buffer_bytes(224) == 456 * 456 * 3
  assert augment.device_buffer_bytes(8) >= 4 * 8 * 8 * 3  # The float32 view fits, small too.


def test_a_noisy_photo_within_the_rounding_of_the_sampling_positions():
  """Jitted, a sampling position may move by an ulp (fused multiply-adds): on sharp noise that
  moves a pixel by up to ~0.01 of 255 (measured 7.6e-3), i.e. ~3e-5 on the [0, 1] scale."""
  rng = np.random.default_rng(1)
  image = tf.constant(rng.integers(0, 256, (511, 700, 3), dtype=np.uint8))
  finish = jax.jit(resample.finish, static_argnums=2)
  for i in range(6):
    host, buffer, params = _host_and_device(image, _seed(i))
    device = np.asarray(finish(buffer[None], params[None], 224, MEAN))[0]
    np.testing.assert_allclose(device, host, rtol=0, atol=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_a_window_too_large_for_the_buffer_is_resampled_on_the_host(monkeypatch, flip):
  """The fallback no bilinear window should need (the bound above), forced by a small buffer:
  the host's view, mirrored or not, shipped as its float32 bytes."""
  image = tf.constant(_photo((600, 800, 3)))

  def box(height, width):
    return height // 2, width // 2, 20, 30  # Shrink 2: a ~456² window, > 4·224²·3 bytes.

  want = augment.resized_crop(image, 224, box, flip=tf.constant(flip)).numpy()
  monkeypatch.setattr(augment, "device_buffer_bytes", lambda size: 4 * size * size * 3)
  buffer, params = augment.resized_crop_for_device(image, 224, box, flip=tf.constant(flip))
  assert buffer.shape == (4 * 224 * 224 * 3,) and params[6] == 1.0
  np.testing.assert_array_equal(
      np.asarray(resample.view(buffer.numpy(), params.numpy(), 224)), want
  )


def test_flips_are_the_hosts_draws():
  """A view is mirrored (its columns sampled right to left) exactly where the host's flip draw
  (`tf.image.stateless_random_flip_left_right`'s decision, `augment._flips`) says so."""
  image = tf.constant(_photo((300, 400, 3)))
  mirrored = []
  for i in range(40):
    _, _, params = _host_and_device(image, _seed(i))
    flip = augment._flips(augment._seeds(_seed(i), 4)[2]).numpy()
    assert (params[5] < 0) == flip
    mirrored.append(flip)
  assert 8 < sum(mirrored) < 32


def _config(place, **overrides):
  c = configs.base_config()
  c.update(
      dataset="fake",
      fake_image_shape=(90, 120, 3),
      num_classes=10,
      augment="resnet_imagenet",
      image_size=32,
      batch_size=8,
      resample=place,
  )
  c.update(overrides)
  return c


@pytest.mark.parametrize("normalize", ["auto", "mean_std", "none", "pixel_mean"])
def test_device_batches_finish_as_the_host_pipelines_batches(normalize, tmp_path):
  where = dict(normalize=normalize, data_dir=str(tmp_path))  # The pixel mean's cache, if any.
  host = next(data.create_train_iter(_config("host", **where)))
  config = _config("device", **where)
  batch = next(data.create_train_iter(config))
  assert set(host) == {"image", "label"} and set(batch) == {"image", "label", "resample"}
  assert batch["image"].shape == (8, augment.device_buffer_bytes(32))
  assert batch["image"].dtype == np.uint8 and batch["resample"].shape == (8, 10)
  np.testing.assert_array_equal(batch["label"], host["label"])
  finished = np.asarray(jax.jit(data.device_preprocess(config))(batch))
  assert finished.shape == host["image"].shape == (8, 32, 32, 3)
  np.testing.assert_allclose(finished, host["image"], rtol=0, atol=1e-4)


def test_device_batches_resume_exactly():
  config = _config("device")
  it = data.create_train_iter(config)
  fresh = [next(it) for _ in range(5)]
  resumed = next(data.create_train_iter(config, start_step=4))
  for key in fresh[4]:
    np.testing.assert_array_equal(resumed[key], fresh[4][key])


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
    np.testing.assert_allclose(np.asarray(finish(device)), host["image"], rtol=0, atol=1e-4)
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], batches["device"][5][key])


@pytest.mark.parametrize("backend, on_device", [("cpu", False), ("gpu", True), ("tpu", True)])
def test_auto_is_the_train_step_on_accelerators_and_the_host_on_cpus(
    monkeypatch, backend, on_device
):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert data.resample_on_device(_config("auto")) is on_device
  assert (data.device_preprocess(_config("auto")) is not None) is on_device
  assert data.resample_on_device(_config("device"))
  assert not data.resample_on_device(_config("host"))
  # The other augmentations resample on the host (GoogLeNet's random interpolation kernels).
  assert not data.resample_on_device(_config("auto", augment="googlenet"))
  assert data.device_preprocess(_config("auto", augment="cifar")) is None


def test_bad_values_are_refused_with_what_to_do():
  with pytest.raises(ValueError, match="resample='gpu' is not a place.*--config.resample"):
    data.resample_on_device(_config("gpu"))
  with pytest.raises(ValueError, match="resample='gpu'"):
    configs.validate(test_train.tiny_config(resample="gpu"), num_devices=1, num_processes=1)
  with pytest.raises(ValueError, match="resample='device'.*augment is 'cifar'.*leave resample"):
    configs.validate(
        test_train.tiny_config(resample="device", augment="cifar"), num_devices=1, num_processes=1
    )


def test_a_step_without_preprocess_refuses_a_batch_that_needs_it():
  """A custom loop that forgets `device_preprocess` fails when traced, instead of training on
  raw bytes."""
  batch = {
      "image": np.zeros((2, augment.device_buffer_bytes(16)), np.uint8),
      "label": np.zeros(2, np.int32),
      "resample": np.zeros((2, 10), np.float32),
  }
  with pytest.raises(ValueError, match="'resample'.*device_preprocess"):
    unused = dict.fromkeys(("model", "tx", "learning_rate_fn", "ema_decay"))
    train.train_step(None, batch, aux_loss_weight=0.0, label_smoothing=0.0, **unused)


def test_repaired_batches_carry_the_windows_of_their_rows(tmp_path):
  """Batches rebuilt around unreadable images (spare rows) finish as the host's do."""
  test_corrupt.write_folder(str(tmp_path))
  batches = {}
  for place in ("host", "device"):
    config = test_corrupt.folder_config(str(tmp_path))
    config.update(augment="resnet_imagenet", resample=place)
    it = data.create_train_iter(config)
    batches[place] = [next(it) for _ in range(10)]
    assert it.skipped == 3  # Each broken file once in the first epoch.
  config.update(resample="device")
  finish = jax.jit(data.device_preprocess(config))
  for host, device in zip(batches["host"], batches["device"]):
    np.testing.assert_array_equal(device["label"], host["label"])
    np.testing.assert_allclose(np.asarray(finish(device)), host["image"], rtol=0, atol=1e-5)


def test_training_with_device_resampling_matches_the_host_and_resumes_bitwise(tmp_path):
  """The train step finishes the batch: two steps as on the host (float32 rounding apart), and a
  run stopped at step 2 and resumed ends with the uninterrupted run's bits."""
  overrides = dict(
      augment="resnet_imagenet",
      dataset="fake",
      fake_image_shape=(40, 30, 3),
      num_classes=10,
      eval_split="test",
      ema_decay=None,
      polyak=False,
  )

  def run(place, steps, workdir):
    config = test_train.tiny_config(4, resample=place, **overrides)
    config.num_train_steps = steps
    config.device_prefetch = 0 if steps < 4 else config.device_prefetch
    train.train_and_evaluate(config, str(tmp_path / workdir))
    return test_train.params_of(str(tmp_path / workdir))

  host, device = run("host", 2, "host"), run("device", 2, "resumed")
  for a, b in zip(jax.tree.leaves(device), jax.tree.leaves(host)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

  resumed = run("device", 4, "resumed")  # Steps 3 and 4 after a restart.
  test_train.assert_trees_equal(resumed, run("device", 4, "uninterrupted"))
