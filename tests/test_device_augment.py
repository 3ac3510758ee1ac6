"""What every part of an augmentation left to the train step must keep (issue #15): GoogLeNet's
colour distortions (config `photometric`, tests/test_photometric.py) and ResNet's crop resampling
(config `resample`, tests/test_resample.py). Batches resume exactly, "auto" moves the work only
on accelerators, a step built without `device_preprocess` refuses such a batch, batches repaired
around unreadable files keep their rows' draws, and training matches the host pipeline's and
resumes bitwise; bad values are refused with what to do.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from incres import configs, data, train

import test_corrupt  # tests/ is on the path: the broken-folder helpers ...
import test_train  # ... and the tiny-run ones.

pytestmark = pytest.mark.usefixtures("compilation_cache")

# config key (also the batch's extra key) -> (its augmentation, where-it-runs predicate, the
# training test's fake image shape: colour, as saturation and hue change nothing on grey digits).
WORK = {
    "photometric": ("googlenet", data.photometric_on_device, (24, 20, 3)),
    "resample": ("resnet_imagenet", data.resample_on_device, (40, 30, 3)),
}


def config(key, place, **overrides):
  """A tiny run's config on fake 60x80 JPEGs with `key`'s augmentation and `key=place`."""
  c = test_train.tiny_config()
  c.update(
      dataset="fake",
      fake_image_shape=(60, 80, 3),
      num_classes=10,
      augment=WORK[key][0],
      image_size=32,
      batch_size=8,
  )
  c[key] = place
  c.update(overrides)
  return c


@pytest.mark.parametrize("key", WORK)
def test_device_batches_resume_exactly(key):
  c = config(key, "device")
  it = data.create_train_iter(c)
  fresh = [next(it) for _ in range(5)]
  resumed = next(data.create_train_iter(c, start_step=4))
  assert set(resumed) == {"image", "label", key}
  for name in fresh[4]:
    np.testing.assert_array_equal(resumed[name], fresh[4][name])


@pytest.mark.parametrize("key", WORK)
@pytest.mark.parametrize("backend, on_device", [("cpu", False), ("gpu", True), ("tpu", True)])
def test_auto_is_the_train_step_on_accelerators_and_the_host_on_cpus(
    monkeypatch, key, backend, on_device
):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  where = WORK[key][1]
  assert where(config(key, "auto")) is on_device
  assert (data.device_preprocess(config(key, "auto")) is not None) is on_device
  assert where(config(key, "device"))
  assert not where(config(key, "host"))
  # The other augmentation has its own key, and CIFAR's leaves nothing to the train step.
  other = next(a for k, (a, _, _) in WORK.items() if k != key)
  assert not where(config(key, "auto", augment=other))
  assert data.device_preprocess(config(key, "auto", augment="cifar")) is None


@pytest.mark.parametrize("key", WORK)
def test_bad_values_are_refused_with_what_to_do(key):
  with pytest.raises(ValueError, match=f"{key}='gpu' is not a place.*--config.{key}=auto"):
    WORK[key][1](config(key, "gpu"))
  with pytest.raises(ValueError, match=f"{key}='gpu'"):
    configs.validate(config(key, "gpu"), num_devices=1, num_processes=1)
  with pytest.raises(ValueError, match=f"{key}='device'.*augment is 'cifar'.*leave {key}"):
    configs.validate(config(key, "device", augment="cifar"), num_devices=1, num_processes=1)


@pytest.mark.parametrize("key", WORK)
def test_a_step_without_preprocess_refuses_a_batch_that_needs_it(key):
  """A custom loop that forgets `device_preprocess` fails when traced, instead of training on
  unfinished images (or raw bytes)."""
  batch = next(data.create_train_iter(config(key, "device")))
  with pytest.raises(ValueError, match=f"'{key}'.*device_preprocess"):
    # Nothing else is needed: the check comes first.
    unused = dict.fromkeys(("model", "tx", "learning_rate_fn", "ema_decay"))
    train.train_step(None, batch, aux_loss_weight=0.0, label_smoothing=0.0, **unused)


@pytest.mark.parametrize("key", WORK)
def test_repaired_batches_carry_the_draws_of_their_rows(tmp_path, key):
  """Batches rebuilt around unreadable images (spare rows) finish as the host's do."""
  test_corrupt.write_folder(str(tmp_path))
  batches = {}
  for place in ("host", "device"):
    c = test_corrupt.folder_config(str(tmp_path))
    c.update({"augment": WORK[key][0], key: place})
    it = data.create_train_iter(c)
    batches[place] = [next(it) for _ in range(10)]
    assert it.skipped == 3  # Each broken file once in the first epoch.
  finish = jax.jit(data.device_preprocess(c))
  for host, device in zip(batches["host"], batches["device"]):
    np.testing.assert_array_equal(device["label"], host["label"])
    np.testing.assert_allclose(np.asarray(finish(device)), host["image"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", WORK)
def test_training_with_the_work_in_the_step_matches_the_host_and_resumes_bitwise(tmp_path, key):
  """The train step finishes the batch: two steps as on the host (float32 rounding apart: for the
  colour distortions the parameters agreed to 7e-7; this tiny net amplifies such differences to
  ~1e-4 by step 4), and a run stopped at step 2 and resumed ends with the uninterrupted run's
  bits."""
  overrides = dict(
      augment=WORK[key][0],
      dataset="fake",
      fake_image_shape=WORK[key][2],
      num_classes=10,
      eval_split="test",
      ema_decay=None,
      polyak=False,
  )

  def run(place, steps, workdir):
    c = test_train.tiny_config(4, **{key: place}, **overrides)
    c.num_train_steps = steps
    c.device_prefetch = 0 if steps < 4 else c.device_prefetch
    train.train_and_evaluate(c, str(tmp_path / workdir))
    return test_train.params_of(str(tmp_path / workdir))

  host, device = run("host", 2, "host"), run("device", 2, "resumed")
  for a, b in zip(jax.tree.leaves(device), jax.tree.leaves(host)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

  resumed = run("device", 4, "resumed")  # Steps 3 and 4 after a restart.
  test_train.assert_trees_equal(resumed, run("device", 4, "uninterrupted"))
