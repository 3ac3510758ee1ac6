"""FixRes-style evaluation (`config.eval_resize_size`, `eval_crop_size`): torchvision's eval view
(resize the shorter side, centre crop) at sizes apart from training's, in the training loop's
evaluation, `incres.evaluate`'s `center` and `10crop`, and the export; unset keys keep today's view
bitwise; every model family takes another eval size."""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from incres import checkpoint, configs, data, errors, evaluate, export, models
from incres import state as state_lib
from incres.data import eval_views, image_ops, imagenet_stats

torch = pytest.importorskip("torch")  # conftest.py imports torchvision before TensorFlow.
v2 = pytest.importorskip("torchvision.transforms.v2")

MEAN = tf.constant(imagenet_stats.IMAGENET_MEAN_RGB, tf.float32)


def _image(h, w, seed=0):
  """A smooth pattern plus noise: resampling errors and one-pixel shifts both show."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  x = 127 + 60 * (np.sin(xx / 7.0) * np.cos(yy / 11.0))[..., None]
  x = x + rng.normal(0, 20, (h, w, 1)) * np.array([1.0, 0.5, 0.2])
  return np.ascontiguousarray(x.clip(0, 255).astype(np.uint8))


def _config(**overrides):
  c = configs.base_config()
  c.update(eval_preprocess="center", image_size=16)
  c.update(overrides)
  return c


# --- The view against torchvision ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(333, 500), (500, 333), (301, 301), (260, 300)])
@pytest.mark.parametrize("resize,crop", [(232, 224), (235, 224)])
def test_center_view_is_torchvisions_resize_and_center_crop(shape, resize, crop):
  """torchvision's ClassificationPresetEval (v2: bilinear, antialias) on the same decoded image.
  (301, 301) at 235 has an odd margin (offset 5.5: torchvision rounds it to 6); (260, 300) at 232
  a longer side of 267.7 (torchvision truncates it to 267)."""
  image = _image(*shape)
  ours = eval_views.eval_center(tf.constant(image), size=crop, mean=0.0, resize=resize).numpy()
  transform = v2.Compose(
      [
          v2.Resize(resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
          v2.CenterCrop(crop),
      ]
  )
  reference = transform(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
  # TensorFlow's and torch's antialiased bilinear kernels agree to float32 rounding here.
  np.testing.assert_allclose(ours, reference.permute(1, 2, 0).numpy(), rtol=0, atol=0.01 / 255)


def test_geometry_is_torchvisions_on_many_shapes():
  rng = np.random.default_rng(1)
  shapes = [tuple(int(v) for v in rng.integers(100, 700, 2)) for _ in range(16)]
  for h, w in shapes + [(375, 500), (301, 301)]:
    for resize, crop in ((232, 224), (235, 224), (320, 287)):
      resized = v2.functional.resize(
          torch.zeros(1, h, w, dtype=torch.uint8), [resize], v2.InterpolationMode.NEAREST
      )
      shape = tuple(resized.shape[1:])
      assert tuple(image_ops.torchvision_shorter_side_shape(h, w, resize).numpy()) == shape
      assert evaluate.torchvision_resized_shape(h, w, resize) == shape
      marker = torch.arange(shape[0] * shape[1], dtype=torch.int32).reshape(1, *shape)
      offsets = divmod(int(v2.functional.center_crop(marker, [crop])[0, 0, 0]), shape[1])
      assert tuple(int(image_ops.torchvision_center_offset(n, crop)) for n in shape) == offsets
      assert tuple(evaluate.torchvision_center_offset(n, crop) for n in shape) == offsets


def test_unset_sizes_keep_todays_view_bitwise():
  """Golden: the view incres took before the keys (shorter side 18 for a 16 crop: the longer side
  rounded, 55 · 18 / 41 = 24.1 -> 24; offsets floor((18 - 16) / 2) = 1 and floor(8 / 2) = 4), built
  from TensorFlow's ops here, and an older config (without the keys) evaluates as a new one."""
  image = tf.constant(_image(41, 55))
  x = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [18, 24], "bilinear", antialias=True)
  reference = x[1:17, 4:20] - MEAN
  config = _config(normalize="channel_mean")
  assert configs.eval_view_sizes(config) is None
  got = data.preprocess.eval_fn(config)(image)
  np.testing.assert_array_equal(got.numpy(), reference.numpy())
  fake = dict(dataset="fake", fake_image_shape=(40, 53, 3), num_classes=5, fake_num_eval=8)
  fake.update(normalize="channel_mean")
  new, old = _config(eval_batch_size=8, **fake), _config(eval_batch_size=8, **fake)
  del old.eval_resize_size, old.eval_crop_size
  for a, b in zip(data.create_eval_iter(new), data.create_eval_iter(old), strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])


# --- Config -------------------------------------------------------------------------------------


def test_sizes_default_to_todays_when_one_is_set():
  assert configs.eval_view_sizes(_config(image_size=224, eval_resize_size=232)) == (232, 224)
  assert configs.eval_view_sizes(_config(image_size=176, eval_crop_size=160)) == (201, 160)
  c = _config(image_size=176, eval_resize_size=232, eval_crop_size=224)  # torchvision's 2021.
  assert configs.eval_view_sizes(c) == (232, 224) and data.eval_image_size(c) == 224


@pytest.mark.parametrize(
    "overrides,says",
    [
        (dict(eval_resize_size=200, eval_crop_size=224), "larger than the image"),
        (dict(eval_crop_size=19), "larger than the image"),  # 16's default resize is 18.
        (dict(eval_crop_size=0), "whole number"),
        (dict(eval_resize_size=-3), "whole number"),
        (dict(eval_preprocess="single", eval_crop_size=16), "eval_preprocess=center"),
    ],
)
def test_bad_sizes_are_user_errors(overrides, says):
  c = _config(**overrides)
  with pytest.raises(errors.ConfigError, match=says):
    data.preprocess.eval_fn(c)
  resolved = configs.resolve_config(c, types.SimpleNamespace(num_classes=10, num_train=100))
  with pytest.raises(errors.UserError, match=says):
    configs.validate(resolved, num_devices=1, num_processes=1)


# --- Where the view is used ----------------------------------------------------------------------


def test_eval_batches_have_the_crop_size_and_a_pixel_mean_becomes_a_channel_mean():
  c = _config(dataset="digits", augment="cifar", eval_batch_size=100)  # Per-pixel mean.
  c.update(eval_resize_size=24, eval_crop_size=20)
  pixel_mean = data.normalization_mean(c)
  assert tuple(pixel_mean.shape) == (16, 16, 3)
  batch = next(iter(data.create_eval_iter(c)))
  assert batch["image"].shape == (100, 20, 20, 3)
  images, _ = data.sources._digits_arrays()  # pylint: disable=protected-access
  first = images[len(images) - data.DIGITS_NUM_TEST]
  mean = tf.reduce_mean(pixel_mean, (0, 1))
  expected = eval_views.eval_center(tf.constant(first), size=20, mean=mean, resize=24)
  np.testing.assert_allclose(batch["image"][0], expected.numpy(), atol=1e-6)


def test_evaluate_center_and_10crop_take_the_runs_sizes():
  image = tf.constant(_image(40, 52))
  center = evaluate.make_view_fn("center", 18, MEAN, resize=21)(image).numpy()[0]
  loop = eval_views.eval_center(image, size=18, mean=MEAN, resize=21).numpy()
  np.testing.assert_array_equal(center, loop)  # The training loop's view, pixel for pixel.
  crops = evaluate.make_view_fn("10crop", 18, MEAN, resize=21)(image).numpy()
  assert crops.shape == (10, 18, 18, 3)
  np.testing.assert_array_equal(crops[4], loop)  # Its centre crop is that view ...
  np.testing.assert_array_equal(crops[9], loop[:, ::-1])  # ... and so is its mirror's.
  # 52 · 21 / 40 = 27.3 -> 27 columns; the corners are their ends.
  assert [v.box for v in evaluate.views("10crop", 40, 52, 18, 21)[:4]] == [
      (0, 0, 18, 18),
      (0, 9, 18, 18),
      (3, 0, 18, 18),
      (3, 9, 18, 18),
  ]
  with pytest.raises(ValueError, match="takes no resize"):
    evaluate.views("multiscale", 40, 52, 18, 21)


def test_score_split_evaluates_a_fixres_run_as_its_training_loop(tmp_path):
  """`incres.evaluate`'s `center` on a run with the sizes: the softmax of the eval iterator's
  batches (what the training loop scores). Its view of the decoded image and the iterator's of the
  JPEG are the same pixels where the view shrinks the image over `crops.ANTIALIAS_ABOVE` (2x)."""
  config = _config(
      model="CifarResNet20",
      model_kwargs={"width": 4},
      dataset="fake",
      fake_image_shape=(48, 64, 3),  # Shrunk over 2x: both take the antialiased kernel.
      num_classes=5,
      fake_num_eval=12,
      eval_batch_size=12,
      normalize="channel_mean",
      eval_resize_size=22,
      eval_crop_size=20,
      num_train_steps=1,
  )
  config = configs.resolve_config(config, types.SimpleNamespace(num_classes=5, num_train=64))
  model = state_lib.create_model(config)
  tx = state_lib.create_optimizer(config, state_lib.create_learning_rate_fn(config))
  state = state_lib.create_train_state(config, model, tx, state_lib.create_mesh())
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.02 * rng.standard_normal(p.shape, np.float32), state.params)
  state = state.replace(params=params)
  workdir = str(tmp_path / "run")
  with checkpoint.Checkpointer(workdir, config, save_every_steps=1, keep=1, async_save=False) as c:
    c.save(1, state)
  p = evaluate.score_split(workdir, "center")
  batch = next(iter(data.create_eval_iter(config)))
  assert batch["image"].shape == (12, 20, 20, 3)
  variables = state_lib.model_variables(state.params, state.batch_stats)
  logits, _ = model.apply(variables, batch["image"], train=False)
  np.testing.assert_allclose(p.probs, jax.nn.softmax(logits), atol=1e-5)
  assert np.ptp(p.probs[:, 0]) > 1e-4  # The images' scores differ, so would a wrong view's.
  # The export serves the same view: crop-sized inputs, the sizes in its sidecar.
  out = str(tmp_path / "exported")
  export.export(workdir, out, "stablehlo", averaged=False, platforms=("cpu",))
  with open(os.path.join(out, "export.json")) as f:
    info = json.load(f)["input"]
  assert info["shape"] == [None, 20, 20, 3]
  assert (info["view"], info["resize"], info["crop"]) == ("center", 22, 20)


@pytest.mark.parametrize(
    "name,train_size,eval_size",
    [  # One model of each family's module (their heads: incres.models).
        ("CifarResNet20", 32, 40),
        ("ResNet50", 176, 224),  # torchvision's 2021 recipe: trained at 176, evaluated at 224.
        ("PreActResNet18", 224, 160),
        ("GoogLeNet", 224, 256),
        ("InceptionV3", 299, 320),
        ("InceptionV4", 299, 320),
    ],
)
def test_every_family_evaluates_at_another_size(name, train_size, eval_size):
  """The parameters made at the training size take another eval size (global average pooling):
  shapes only (`jax.eval_shape`)."""
  model = models.get_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((1, train_size, train_size, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((2, eval_size, eval_size, 3), jnp.float32)

  def init_then_apply(x, y):
    return model.apply(model.init(jax.random.key(0), x, train=False), y, train=False)

  logits, extras = jax.eval_shape(init_then_apply, x, y)
  assert logits.shape == (2, 7) and extras["features"].shape[0] == 2
