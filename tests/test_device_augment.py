"""What every part of an augmentation left to the train step must keep (issue #15): GoogLeNet's
colour distortions (config `photometric`, tests/test_photometric.py) and the crops' resampling of
ResNet and GoogLeNet (config `resample`, tests/test_resample.py). Batches resume exactly, "auto"
moves the work only on accelerators, a step built with the run's placement but without its
`device_preprocess` refuses such a batch, batches repaired around unreadable files keep their rows'
draws, and training matches the host pipeline's and resumes bitwise; bad values are refused with
what to do.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest

from incres import configs, data, train

import test_corrupt  # tests/ is on the path: the broken-folder helpers ...
import test_train  # ... and the tiny-run ones.
import tiny_config as tiny

pytestmark = pytest.mark.usefixtures("compilation_cache")

# case -> (config key, augmentation, where-it-runs predicate, the batch's extra keys).
WORK = {
    "photometric": ("photometric", "googlenet", data.photometric_on_device, {"photometric"}),
    "resample": ("resample", "resnet_imagenet", data.resample_on_device, {"resample"}),
    "resample-googlenet": (
        "resample",
        "googlenet",
        data.resample_on_device,
        {"resize", "photometric"},
    ),
}
# The training test's fake images: colour, as saturation and hue change nothing on grey digits.
SHAPES = {"photometric": (24, 20, 3), "resample": (40, 30, 3), "resample-googlenet": (24, 20, 3)}


def config(case, place, **overrides):
  """A tiny run's config on fake 60x80 JPEGs with `case`'s augmentation and key set to `place`."""
  key, augment_name = WORK[case][:2]
  c = test_train.tiny_config()
  c.update(
      dataset="fake",
      fake_image_shape=(60, 80, 3),
      num_classes=10,
      augment=augment_name,
      image_size=32,
      batch_size=8,
  )
  c[key] = place
  c.update(overrides)
  return c


@pytest.mark.parametrize("case", WORK)
def test_device_batches_resume_exactly(case):
  c = config(case, "device")
  it = data.create_train_iter(c)
  fresh = [next(it) for _ in range(5)]
  resumed = next(data.create_train_iter(c, start_step=4))
  assert set(resumed) == {"image", "label", *WORK[case][3]}
  assert data.decide_placement(c).batch_keys == WORK[case][3]
  for name in fresh[4]:
    np.testing.assert_array_equal(resumed[name], fresh[4][name])


@pytest.mark.parametrize("case", WORK)
@pytest.mark.parametrize("backend, on_device", [("cpu", False), ("gpu", True), ("tpu", True)])
def test_auto_is_the_train_step_on_accelerators_and_the_host_on_cpus(
    monkeypatch, case, backend, on_device
):
  # The backend given, or the default one.
  assert data.decide_placement(config(case, "auto"), backend).on_device is on_device
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  where = WORK[case][2]
  assert where(config(case, "auto")) is on_device
  assert (data.device_preprocess(config(case, "auto")) is not None) is on_device
  assert where(config(case, "device"))
  assert not where(config(case, "host"))
  # CIFAR's augmentation leaves nothing to the train step.
  assert not where(config(case, "auto", augment="cifar"))
  assert data.device_preprocess(config(case, "auto", augment="cifar")) is None


@pytest.mark.parametrize("case", WORK)
def test_bad_values_are_refused_with_what_to_do(case):
  key, where = WORK[case][0], WORK[case][2]
  with pytest.raises(ValueError, match=f"{key}='gpu' is not a place.*--config.{key}=auto"):
    where(config(case, "gpu"))
  with pytest.raises(ValueError, match=f"{key}='gpu'"):
    configs.validate(config(case, "gpu"), num_devices=1, num_processes=1)
  with pytest.raises(ValueError, match=f"{key}='device'.*augment is 'cifar'.*leave {key}"):
    configs.validate(config(case, "device", augment="cifar"), num_devices=1, num_processes=1)


def test_googlenets_resize_on_the_device_takes_its_colour_distortions_along(monkeypatch):
  """They come after the resize: "auto" follows resample="device", and "host" is refused."""
  assert data.photometric_on_device(config("resample-googlenet", "device"))
  assert not data.photometric_on_device(config("resample-googlenet", "host"))
  refused = config("resample-googlenet", "device", photometric="host")
  with pytest.raises(ValueError, match="photometric='host'.*leave photometric at 'auto'"):
    configs.validate(refused, num_devices=1, num_processes=1)
  # Colour in the train step, resizing on the host: a supported mix (the CPU default of "device").
  mixed = config("photometric", "device", resample="host")
  assert data.photometric_on_device(mixed) and not data.resample_on_device(mixed)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert data.resample_on_device(config("resample-googlenet", "auto"))
  assert not data.resample_on_device(config("resample-googlenet", "auto", photometric="host"))


@pytest.mark.parametrize("case", WORK)
def test_a_step_without_preprocess_refuses_a_batch_that_needs_it(case):
  """A custom loop that builds the step with the run's placement but forgets its
  `device_preprocess` fails when traced, naming the placement's keys the batch carries, instead of
  training on unfinished images (or raw bytes)."""
  c = config(case, "device")
  where = data.decide_placement(c)
  batch = next(data.create_train_iter(c, where=where))
  # Nothing else is needed: the check comes first.
  step = functools.partial(
      train.train_step,
      aux_loss_weight=0.0,
      label_smoothing=0.0,
      **dict.fromkeys(("model", "tx", "learning_rate_fn", "ema_decay")),
  )
  keys = sorted(WORK[case][3])
  with pytest.raises(ValueError, match=re.escape(f"carries {keys}") + ".*device_preprocess"):
    step(None, batch, placement=where)
  if case == "resample-googlenet":  # The keys are the placement's: colour alone names only its.
    colour_only = data.Placement("googlenet", photometric=True)
    with pytest.raises(ValueError, match=re.escape("carries ['photometric'] for")):
      step(None, batch, placement=colour_only)


@pytest.mark.parametrize("case", WORK)
def test_repaired_batches_carry_the_draws_of_their_rows(tmp_path, case):
  """Batches rebuilt around unreadable images (spare rows) finish as the host's do."""
  test_corrupt.write_folder(str(tmp_path))
  batches = {}
  for place in ("host", "device"):
    c = test_corrupt.folder_config(str(tmp_path))
    c.update({"augment": WORK[case][1], WORK[case][0]: place})
    it = data.create_train_iter(c)
    batches[place] = [next(it) for _ in range(10)]
    assert it.skipped == 3  # Each broken file once in the first epoch.
  finish = jax.jit(data.device_preprocess(c))
  for host, device in zip(batches["host"], batches["device"]):
    np.testing.assert_array_equal(device["label"], host["label"])
    np.testing.assert_allclose(np.asarray(finish(device)), host["image"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", WORK)
def test_training_with_the_work_in_the_step_matches_the_host_and_resumes_bitwise(tmp_path, case):
  """The train step finishes the batch: two steps as on the host (float32 rounding apart: for the
  colour distortions the parameters agreed to 7e-7; this tiny net amplifies such differences to
  ~1e-4 by step 4), and a run stopped at step 2 and resumed ends with the uninterrupted run's
  bits."""
  overrides = dict(
      augment=WORK[case][1],
      dataset="fake",
      fake_image_shape=SHAPES[case],
      num_classes=10,
      eval_split="test",
      ema_decay=None,
      polyak=False,
  )

  host = test_train.tiny_config(4, **{WORK[case][0]: "host"}, **overrides)
  host.num_train_steps, host.device_prefetch = 2, 0  # As the stopped run below.
  train.train_and_evaluate(host, str(tmp_path / "host"))
  device = test_train.tiny_config(4, **{WORK[case][0]: "device"}, **overrides)
  resumed = tiny.assert_exact_resume(device, tmp_path, 2)  # Steps 3 and 4 after a restart.
  # The stopped run's checkpoint at step 2 (runs keep 3), against the host's 2 steps.
  at_2 = tiny.params_of(resumed, step=2)
  for a, b in zip(jax.tree.leaves(at_2), jax.tree.leaves(tiny.params_of(str(tmp_path / "host")))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
