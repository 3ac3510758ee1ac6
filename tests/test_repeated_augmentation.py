"""Repeated augmentation (`config.repeated_augmentation`, incres.data.pipeline): k views of each
image in a global batch, each augmented on its own, laid out so that an image's views lie on
different devices (and processes); k=1 is today's order; batches and training resume exactly."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import conftest
from incres import configs, data, errors, metrics
from incres.data import repeated

import test_train  # tests/ is on the path: the tiny-run helpers.
import tiny_config as tiny

pytestmark = pytest.mark.usefixtures("compilation_cache")

N_TRAIN = 1497  # digits' training split.


def _config(**overrides):
  c = configs.base_config()
  c.update(augment="none", normalize="none", batch_size=16, repeated_augmentation=4)
  c.update(overrides)
  return c


@pytest.fixture
def decode(monkeypatch):
  """digits whose every image encodes its index (pixels 0 and 1, base 256); returns the decoder of
  a batch made with augment='none', normalize='none' (as test_data's `indexed_digits`)."""
  images, labels = data.sources._digits_arrays()
  images = images.copy()
  index = np.arange(len(images))
  images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
  monkeypatch.setattr(data.sources, "_digits_arrays", lambda: (images, labels))

  def indices(batch):
    pixels = np.round(batch["image"][:, 0, 0, :2] * 255).astype(int)
    return pixels[:, 0] + 256 * pixels[:, 1]

  return indices


def _take(it, n):
  return [next(it) for _ in range(n)]


# --- The layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,k", [(16, 4), (192, 3), (24, 8), (12, 2)])
def test_layout_puts_each_images_views_on_different_devices_and_hosts(batch, k):
  image, view = repeated.layout(batch, k)
  images = batch // k
  np.testing.assert_array_equal(np.bincount(image), np.full(images, k))  # k views of each.
  for i in range(images):  # Views 0..k-1, once each.
    np.testing.assert_array_equal(np.sort(view[image == i]), np.arange(k))
  # The global batch is sharded contiguously: device d (process p) holds rows [d·B/D, (d+1)·B/D).
  for devices in (d for d in (1, 2, 4, 8, 16) if batch % d == 0):
    owner = np.arange(batch) // (batch // devices)
    for i in range(images):
      held = np.bincount(owner[image == i], minlength=devices)
      if k <= devices:  # Each view on a device of its own.
        assert held.max() == 1, (devices, i, held)
      else:  # All devices hold some, evenly: floor or ceil of k / devices each.
        assert set(held) <= {k // devices, -(-k // devices)}, (devices, i, held)


def test_layout_of_one_view_is_the_plain_order_and_bad_splits_are_refused():
  image, view = repeated.layout(8, 1)
  np.testing.assert_array_equal(image, np.arange(8))
  assert not view.any()
  with pytest.raises(ValueError, match="whole images"):
    repeated.layout(10, 4)


# --- Batches --------------------------------------------------------------------------------------


def test_one_view_keeps_the_order_recorded_before_repeated_augmentation(decode):
  """Golden: the indices incres drew for seed 0 before the key existed (integ at b66eb86); step
  187 straddles the first epoch's end (1,497 = 187 × 8 + 1)."""
  c = _config(batch_size=8, repeated_augmentation=1)
  assert decode(next(data.create_train_iter(c))).tolist() == [
      1030, 872, 3, 1192, 311, 960, 804, 1014,
  ]  # fmt: skip
  assert decode(next(data.create_train_iter(c, start_step=187))).tolist() == [
      979, 1004, 130, 1380, 943, 244, 707, 919,
  ]  # fmt: skip
  del c.repeated_augmentation  # A config saved before the key: the same order.
  assert decode(next(data.create_train_iter(c))).tolist()[:3] == [1030, 872, 3]


def test_each_image_appears_k_times_in_the_layout_and_an_epoch_is_its_first_images(decode):
  k, batch = 4, 16
  c = _config(batch_size=batch, repeated_augmentation=k)
  per_epoch = N_TRAIN // k  # 374 images, 1,496 views.
  steps = -(-per_epoch // (batch // k)) + 1  # Into the second epoch.
  batches = [decode(b) for b in _take(data.create_train_iter(c), steps)]
  image, _ = repeated.layout(batch, k)
  drawn = []
  for rows in batches:
    distinct = rows[: batch // k]  # View 0 of each image.
    np.testing.assert_array_equal(rows, distinct[image])
    assert len(set(distinct)) == batch // k
    drawn += distinct.tolist()
  # An epoch: the first N/k images of the permutation drawn without repetition (the same one),
  # then the next epoch's.
  plain = np.concatenate(
      [decode(b) for b in _take(data.create_train_iter(_config(repeated_augmentation=1)), 24)]
  )
  assert drawn[:per_epoch] == plain[:per_epoch].tolist()
  assert len(set(drawn[:per_epoch])) == per_epoch
  assert drawn[per_epoch : per_epoch + 4] != plain[per_epoch : per_epoch + 4].tolist()


def test_views_of_an_image_are_augmented_independently():
  k, batch = 4, 64
  c = _config(augment="cifar", normalize="pixel_mean", batch_size=batch, repeated_augmentation=k)
  b = next(data.create_train_iter(c))
  image, view = repeated.layout(batch, k)
  np.testing.assert_array_equal(b["label"], b["label"][image])  # The views share the label.
  same = [
      np.array_equal(b["image"][(image == i) & (view == u)], b["image"][(image == i) & (view == v)])
      for i in range(batch // k)
      for u in range(k)
      for v in range(u + 1, k)
  ]
  # 2 × 9 × 9 = 162 crops and flips: two views coincide with probability ~1/162.
  assert sum(same) <= 4, f"{sum(same)} of {len(same)} pairs of views are identical"


def test_batches_are_determined_by_the_step_and_resume_exactly():
  # 374 images an epoch at 32 a batch: batch 11 straddles the first epoch's end.
  c = _config(augment="cifar", normalize="pixel_mean", batch_size=128)
  full = _take(data.create_train_iter(c), 14)
  again = _take(data.create_train_iter(c), 2)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for start in (5, 11):
    for a, b in zip(full[start:], _take(data.create_train_iter(c, start_step=start), 14 - start)):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(full[0]["image"], full[1]["image"])


def test_processes_get_their_slices_of_the_same_global_batch(decode, monkeypatch):
  c = _config(batch_size=16, repeated_augmentation=4)
  whole = decode(next(data.create_train_iter(c, start_step=2)))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  halves = []
  for p in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    halves.append(decode(next(data.create_train_iter(c, start_step=2))))
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  # With 2 processes and 4 views, each process holds 2 views of every image of the batch.
  assert sorted(halves[0]) == sorted(halves[1])


@pytest.mark.slow  # ~12 s of CPU, most of it tfds building the mocked dataset.
def test_streamed_datasets_repeat_each_record_and_resume_exactly():
  """imagenette (mocked: 37 records) is streamed: a process's own records, 2 a batch of 8 here,
  each 4 times; an epoch is still 4 batches (32 views), and step 5 (epoch 2) resumes exactly."""
  image, _ = repeated.layout(8, 4)
  with tfds.testing.mock_data(num_examples=37):
    c = _config(dataset="imagenette", batch_size=8, augment="none", eval_preprocess="center")
    c.update(image_size=32, normalize="channel_mean")
    it = data.create_train_iter(c)
    full = _take(it, 6)
    for b in full:  # Unaugmented views: equal copies, in the layout.
      np.testing.assert_array_equal(b["image"], b["image"][image])
      assert not np.array_equal(b["image"][0], b["image"][1]) and set(b) == {"image", "label"}
    resumed = data.create_train_iter(c, start_step=5)
    np.testing.assert_array_equal(next(resumed)["image"], full[5]["image"])
    assert it.skipped == resumed.skipped == 0  # The records counted from the resumed one on.
    c.augment = "resnet_imagenet"  # Each view its own seed.
    b = next(data.create_train_iter(c))
    np.testing.assert_array_equal(b["label"], b["label"][image])
    assert not np.array_equal(b["image"][0], b["image"][2])


@pytest.mark.parametrize(
    "overrides,says",
    [
        (dict(repeated_augmentation=0), "whole number"),
        (dict(repeated_augmentation=-1), "whole number"),
        (dict(repeated_augmentation=3, batch_size=16), "batch_size=16 must be divisible by 3"),
    ],
)
def test_bad_settings_are_user_errors(overrides, says):
  c = _config(**overrides)
  with pytest.raises(errors.ConfigError, match=says):
    next(data.create_train_iter(c))
  resolved = configs.resolve_config(c, types.SimpleNamespace(num_classes=10, num_train=N_TRAIN))
  with pytest.raises(errors.UserError, match=says):
    configs.validate(resolved, num_devices=1, num_processes=1)


def test_each_process_needs_whole_images():
  c = _config(batch_size=20, repeated_augmentation=4)  # 5 images: whole on one process ...
  assert configs.check_repeated_augmentation(c, 1) == 4
  with pytest.raises(errors.ConfigError, match=r"4 x the 2 process.*batch_size=16"):
    configs.check_repeated_augmentation(c, 2)  # ... not halved over two.


# --- On devices, and in training ------------------------------------------------------------------

_EIGHT_DEVICES = """
import numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
from incres import state
from incres.data import repeated
assert jax.device_count() == 8
image, view = repeated.layout(32, 4)  # The rows the pipeline yields (tested above): 8 images.
batch = jax.make_array_from_process_local_data(NamedSharding(state.create_mesh(), P("data")), image)
where = {}
for shard in batch.addressable_shards:  # The train step's sharding of the global batch.
  for i in np.asarray(shard.data):
    where.setdefault(int(i), []).append(shard.device.id)
assert sorted(where) == list(range(8)), where
assert all(len(set(devices)) == len(devices) == 4 for devices in where.values()), where
print("ok")
"""


def test_8_devices_hold_an_images_views_on_4_different_devices():
  conftest.assert_script_prints_ok(_EIGHT_DEVICES, devices=8)


@pytest.mark.slow  # ~17 s of CPU: three tiny runs (the batches' own resume test is above).
def test_training_with_four_views_and_a_fixres_eval_resumes_bitwise(tmp_path):
  """A run stopped at step 2 and resumed ends with the uninterrupted run's bits; it trains on 16²
  crops and evaluates on 20² ones (FixRes-style: the model takes any size, test_fixres)."""
  c = test_train.tiny_config(
      4,
      ema_decay=None,
      polyak=False,
      augment="cifar",
      repeated_augmentation=4,
      eval_preprocess="center",
      eval_resize_size=22,
      eval_crop_size=20,
  )
  c.model_kwargs.stage_sizes = (1, 1, 1)  # An 8-layer ResNet: less to compile.
  resumed = tiny.assert_exact_resume(c, tmp_path, 2)  # Steps 3 and 4 after a restart.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tiny.params_of(resumed)))
  evals = [r for r in metrics.read_metrics(resumed) if "eval/top1" in r]
  assert [r["step"] for r in evals] == [2, 4] and 0 <= evals[-1]["eval/top1"] <= 1
