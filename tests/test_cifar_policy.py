"""augment="cifar" with an auto-augment policy (incres.data.cifar_augment, issue #26): the policy
runs on the uint8 view after the pad-crop-flip, a policy that changes nothing leaves the view bit
for bit as without one, the views are a function of (image, seed), batches and training with it
resume exactly, and the config check lets cifar take a policy but not random erasing."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

from incres import configs, data, errors, train
from incres.data import cifar_augment, preprocess

import test_train  # tests/ is on the path: the tiny-run helpers.

pytestmark = pytest.mark.usefixtures("compilation_cache")

SEEDS = [tf.constant([i, 7 * i + 3], tf.int64) for i in range(8)]


def _digit_and_mean():
  rng = np.random.default_rng(0)
  image = tf.constant(rng.integers(0, 256, (32, 32, 3)), tf.uint8)
  mean = tf.constant(rng.uniform(0.2, 0.6, (32, 32, 3)), tf.float32)
  return image, mean


def test_a_policy_that_changes_nothing_gives_the_view_without_one_bitwise():
  image, mean = _digit_and_mean()
  seen = []

  def identity(x, seed):
    seen.append((x.dtype, tuple(x.shape)))
    return x

  for padding in ("zero", "reflect"):
    for seed in SEEDS:
      kw = dict(mean=mean, size=32, padding=padding)
      without = cifar_augment.cifar_train(image, seed, **kw)
      with_identity = cifar_augment.cifar_train(image, seed, **kw, policy=identity)
      np.testing.assert_array_equal(without.numpy(), with_identity.numpy(), err_msg=padding)
  assert seen[0] == (tf.uint8, (32, 32, 3))  # The policy gets the uint8 32×32 view.


def test_the_policy_sees_the_padded_cropped_flipped_uint8_view_with_black_borders():
  """Invert (255 - x) on the view: with mean 0 the inverted and plain views sum to 1 everywhere,
  so the policy saw exactly the pixels of the plain view, and a shifted view has borders of 0
  (black, as torchvision's RandomCrop(padding=4)) that become 1 after the inversion."""
  image, _ = _digit_and_mean()
  shifted = 0
  for seed in SEEDS:
    plain = cifar_augment.cifar_train(image, seed, mean=0.0, policy=lambda x, s: x).numpy()
    inverted = cifar_augment.cifar_train(image, seed, mean=0.0, policy=lambda x, s: 255 - x)
    np.testing.assert_allclose(plain + inverted.numpy(), 1.0, atol=1e-6)
    border = np.all(plain == 0.0, axis=-1)  # The padding (the random image has no black pixel).
    shifted += bool(border.any())
    np.testing.assert_array_equal(inverted.numpy()[border], 1.0)
  assert shifted > 0


def _config(**overrides):
  c = configs.base_config()
  c.update(
      dataset="digits", augment="cifar", auto_augment="randaugment", image_size=32, batch_size=8
  )
  c.update(overrides)
  return c


def test_randaugment_views_are_a_function_of_image_and_seed_and_change_the_view():
  fn = preprocess.train_fn(_config())
  off = preprocess.train_fn(_config(auto_augment="none"))
  image, _ = _digit_and_mean()
  views = [fn(image, s).numpy() for s in SEEDS]
  for s, v in zip(SEEDS, views):
    np.testing.assert_array_equal(v, fn(image, s).numpy())  # The same (image, seed): same bits.
  changed = sum(not np.array_equal(v, off(image, s).numpy()) for s, v in zip(SEEDS, views))
  assert changed >= len(SEEDS) - 2  # Identity is 1 of 14 ops: most views are changed.
  assert len({v.tobytes() for v in views}) == len(SEEDS)


def test_batches_resume_exactly_and_the_policy_changes_them():
  c = _config()
  it = data.create_train_iter(c)
  fresh = [next(it) for _ in range(3)]
  resumed = data.create_train_iter(c, start_step=1)
  for a in fresh[1:]:
    np.testing.assert_array_equal(a["image"], next(resumed)["image"])
  plain = next(data.create_train_iter(_config(auto_augment="none")))
  np.testing.assert_array_equal(plain["label"], fresh[0]["label"])  # Same examples ...
  assert not np.array_equal(plain["image"], fresh[0]["image"])  # ... other views.


def test_cifar_takes_a_policy_but_not_random_erasing():
  configs.check_auto_augment(_config())
  with pytest.raises(errors.UserError, match="random_erasing.*random_resized_crop"):
    configs.check_auto_augment(_config(auto_augment="none", random_erasing=0.25))
  with pytest.raises(errors.UserError, match="auto_augment.*augment='cifar'"):
    configs.check_auto_augment(_config(augment="googlenet"))


@pytest.mark.slow  # Three tiny runs (2 + 4 + 4 steps): ~20 s on two idle cores.
def test_training_with_randaugment_on_cifar_resumes_bitwise(tmp_path):
  """A run stopped at step 2 and resumed ends with the uninterrupted run's bits."""

  def run(steps, workdir):
    c = test_train.tiny_config(
        4, ema_decay=None, polyak=False, augment="cifar", auto_augment="randaugment"
    )
    c.num_train_steps = steps
    c.model_kwargs.stage_sizes = (1, 1, 1)  # An 8-layer ResNet: less to compile.
    c.device_prefetch = 0 if steps < 4 else c.device_prefetch
    train.train_and_evaluate(c, str(tmp_path / workdir))
    return test_train.params_of(str(tmp_path / workdir))

  run(2, "resumed")
  resumed = run(4, "resumed")  # Steps 3 and 4 after a restart.
  uninterrupted = run(4, "uninterrupted")
  test_train.assert_trees_equal(resumed, uninterrupted)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(resumed))
