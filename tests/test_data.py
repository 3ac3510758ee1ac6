"""Input pipelines: datasets, exact resume, evaluation coverage, multi-process slicing, errors."""

import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from incres import configs, data


def _config(**overrides):
  c = configs.base_config()
  c.update(overrides)
  return c


@pytest.fixture
def indexed_digits(monkeypatch):
  """digits whose every image encodes its index in the full array (pixels 0 and 1, base 256)."""
  images, labels = data.sources._digits_arrays()
  images = images.copy()
  index = np.arange(len(images))
  images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
  monkeypatch.setattr(data.sources, "_digits_arrays", lambda: (images, labels))
  n_train = len(images) - data.DIGITS_NUM_TEST

  def decode(batch):
    """Indices within the split of a batch made with augment='none', normalize='none'."""
    pixels = np.round(batch["image"][:, 0, 0, :2] * 255).astype(int)
    return pixels[:, 0] + 256 * pixels[:, 1]

  return decode, n_train


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_digits_info_and_batches():
  info = data.dataset_info(_config())
  assert (info.num_train, info.num_eval, info.num_classes) == (1497, 300, 10)
  assert info.image_shape == (32, 32, 3) and len(info.label_names) == 10
  batch = next(data.create_train_iter(_config(batch_size=64)))
  assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= set(range(10))


def test_digits_are_the_real_sklearn_images():
  images, labels = data.sources._digits_arrays()
  assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
  assert images.max() == 255 and np.all(images[..., 0] == images[..., 2])  # Grey in RGB.
  assert np.bincount(labels).min() > 170  # ~180 of each digit.


def test_cifar_recipe_subtracts_the_training_per_pixel_mean():
  c = _config(augment="none")
  mean = data.preprocess._pixel_mean(
      tuple((k, data.preprocess._hashable(c.get(k))) for k in data.preprocess._MEAN_KEYS)
  )
  images, _ = data.sources._digits_arrays()
  np.testing.assert_allclose(mean, images[:1497].mean(0) / 255, atol=1e-6)
  # With augment="none" and the pixel mean, one view of every eval image averages to the eval
  # mean minus the training mean.
  c = _config(normalize="pixel_mean", eval_batch_size=100)
  total = sum(b["image"].sum(0) for b in data.create_eval_iter(c))
  np.testing.assert_allclose(total / 300, images[1497:].mean(0) / 255 - mean, atol=1e-5)


def test_train_epoch_is_a_permutation_and_epochs_differ(indexed_digits):
  decode, n = indexed_digits
  c = _config(augment="none", normalize="none", batch_size=8)
  steps = -(-2 * n // 8)
  order = np.concatenate([decode(b) for b in _take(data.create_train_iter(c), steps)])
  np.testing.assert_array_equal(np.sort(order[:n]), np.arange(n))
  np.testing.assert_array_equal(np.sort(order[n : 2 * n]), np.arange(n))
  assert not np.array_equal(order[:n], order[n : 2 * n])
  # Another seed, another order.
  other = next(
      data.create_train_iter(_config(augment="none", normalize="none", batch_size=8, seed=1))
  )
  assert not np.array_equal(decode(other), order[:8])


@pytest.mark.parametrize("augment", ["cifar", "googlenet", "resnet_imagenet"])
def test_resume_gives_exactly_the_uninterrupted_batches(augment):
  # 1,497 examples at batch 128: step 11 straddles the first epoch boundary.
  c = _config(augment=augment, batch_size=128)
  full = _take(data.create_train_iter(c), 14)
  for start in (5, 11):
    resumed = _take(data.create_train_iter(c, start_step=start), 14 - start)
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_covers_every_example_exactly_once(indexed_digits):
  decode, n_train = indexed_digits
  c = _config(normalize="none", eval_batch_size=128)  # 300 eval examples: 128 + 128 + 44 (+84 pad).
  batches = list(data.create_eval_iter(c))
  assert len(batches) == 3
  assert all(
      b["image"].shape == (128, 32, 32, 3) and b["mask"].dtype == np.float32 for b in batches
  )
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 300 and np.all(mask[:300] == 1) and np.all(mask[300:] == 0)
  seen = np.concatenate([decode(b) for b in batches])[mask == 1]
  np.testing.assert_array_equal(np.sort(seen), n_train + np.arange(300))


def test_processes_get_disjoint_slices_of_the_same_global_batch(indexed_digits, monkeypatch):
  decode, _ = indexed_digits
  c = _config(augment="none", normalize="none", batch_size=16, eval_batch_size=128)
  single = [decode(b) for b in _take(data.create_train_iter(c, start_step=3), 2)]
  single_eval = [(decode(b), b["mask"]) for b in data.create_eval_iter(c)]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  per_process, per_process_eval = [], []
  for p in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    batches = _take(data.create_train_iter(c, start_step=3), 2)
    assert all(b["image"].shape[0] == 8 for b in batches)
    per_process.append([decode(b) for b in batches])
    per_process_eval.append([(decode(b), b["mask"]) for b in data.create_eval_iter(c)])
  for step in range(2):
    np.testing.assert_array_equal(
        np.concatenate([per_process[0][step], per_process[1][step]]), single[step]
    )
  assert len(per_process_eval[0]) == len(per_process_eval[1]) == len(single_eval)
  for (i0, m0), (i1, m1), (i, m) in zip(*per_process_eval, single_eval):
    np.testing.assert_array_equal(
        np.concatenate([i0, i1])[np.concatenate([m0, m1]) == 1], i[m == 1]
    )


def test_batch_must_split_over_devices(monkeypatch):
  monkeypatch.setattr(jax, "local_device_count", lambda: 3)
  with pytest.raises(ValueError, match="divisible"):
    data.create_train_iter(_config(batch_size=128))


@pytest.mark.parametrize(
    "augment,eval_preprocess",
    [("googlenet", "center"), ("resnet_imagenet", "center"), ("none", "single")],
)
def test_fake_goes_through_jpeg_decode_at_any_size(augment, eval_preprocess):
  c = _config(
      dataset="fake",
      augment=augment,
      eval_preprocess=eval_preprocess,
      image_size=48,
      fake_image_shape=(60, 80, 3),
      num_classes=7,
      batch_size=8,
      eval_batch_size=32,
      fake_num_train=40,
      fake_num_eval=50,
  )
  info = data.dataset_info(c)
  assert (info.num_classes, info.num_train, info.num_eval) == (7, 40, 50)
  batch = next(data.create_train_iter(c))
  assert batch["image"].shape == (8, 48, 48, 3) and np.all(np.isfinite(batch["image"]))
  assert set(batch["label"]) <= set(range(7))
  assert sum(b["mask"].sum() for b in data.create_eval_iter(c)) == 50


def _write_tree(root, classes=("cat", "dog", "emu"), per_class=12):
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(os.path.join(root, name))
    for i in range(per_class):
      image = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
      encoded = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image)
      ext = "png" if i % 2 else "jpg"
      tf.io.write_file(os.path.join(root, name, f"{i:03d}.{ext}"), encoded)


def test_folder_dataset(tmp_path):
  _write_tree(str(tmp_path))
  c = _config(dataset=f"folder:{tmp_path}", augment="googlenet", batch_size=4, eval_batch_size=4)
  info = data.dataset_info(c)
  # Every 10th image of each class (indices 0 and 10 of 12) is held out.
  assert info.label_names == ("cat", "dog", "emu") and (info.num_train, info.num_eval) == (30, 6)
  assert next(data.create_train_iter(c))["image"].shape == (4, 32, 32, 3)
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in data.create_eval_iter(c)])
  np.testing.assert_array_equal(np.sort(labels), [0, 0, 1, 1, 2, 2])


def test_folder_dataset_with_split_directories(tmp_path):
  _write_tree(str(tmp_path / "train"), per_class=3)
  _write_tree(str(tmp_path / "validation"), per_class=2)
  c = _config(dataset=f"folder:{tmp_path}", eval_split="validation", eval_preprocess="center")
  info = data.dataset_info(c)
  assert (info.num_train, info.num_eval) == (9, 6)


def test_training_a_folder_of_one_class_is_refused(tmp_path):
  # It trained to loss 0 without a word: every label was the same.
  import tiny_config  # pylint: disable=g-import-not-at-top
  from incres import train  # pylint: disable=g-import-not-at-top

  root = tmp_path / "photos"
  _write_tree(str(root), classes=("cat",), per_class=11)
  config = tiny_config.get(steps=2, dataset=f"folder:{root}")
  workdir = tmp_path / "run"
  with pytest.raises(data.DatasetError) as e:
    train.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert f"Folder dataset '{root}' has one class, 'cat' (the only directory in {root})" in message
  assert "at least two classes" in message and "\n" not in message
  assert not workdir.exists()  # Refused before anything was written.
  # Only training refuses it (evaluating a model on the images of one class is fine).
  assert data.dataset_info(config).label_names == ("cat",)
  _write_tree(str(root), classes=("dog",), per_class=11)
  data.sources._folder_files.cache_clear()  # pylint: disable=protected-access  (the listing changed)
  data.check_trainable(config)


@pytest.mark.parametrize("name,eval_split", [("cifar10", "test"), ("imagenette", "validation")])
def test_tfds_datasets_with_mock_data(name, eval_split):
  # cifar10 is held in memory; imagenette (variable-size images) takes the streamed path.
  with tfds.testing.mock_data(num_examples=37):
    c = _config(dataset=name, eval_split=eval_split, batch_size=8, eval_batch_size=16)
    if name == "imagenette":
      c.update(augment="resnet_imagenet", eval_preprocess="center", image_size=64)
    info = data.dataset_info(c)
    assert (info.num_classes, info.num_train, info.num_eval) == (10, 37, 37)
    full = _take(data.create_train_iter(c), 6)
    assert full[0]["image"].shape == (8, c.image_size, c.image_size, 3)
    # Streamed: 4 whole batches per epoch, so step 5 is in the second epoch.
    resumed = _take(data.create_train_iter(c, start_step=5), 1)[0]
    np.testing.assert_array_equal(resumed["image"], full[5]["image"])
    batches = list(data.create_eval_iter(c))
    assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 37


def test_missing_manual_download_fails_with_instructions(tmp_path):
  c = _config(dataset="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(data.DatasetError) as e:
    data.dataset_info(c)
  message = str(e.value)
  assert "ILSVRC2012_img_train.tar" in message and str(tmp_path) in message
  assert "digits" in message and "fake" in message and "\n" not in message


def test_failed_download_fails_with_a_short_message(tmp_path, monkeypatch):
  def no_network(self, *args, **kwargs):
    raise ConnectionError("Failed to resolve host www.cs.toronto.edu\nlong traceback ...")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  monkeypatch.setattr(
      data.tfds_errors, "probe_download_hosts", lambda builder: None
  )  # No real request.
  with pytest.raises(data.DatasetError, match=r"cifar10.*ConnectionError.*digits") as e:
    data.create_train_iter(_config(dataset="cifar10", data_dir=str(tmp_path)))
  assert "long traceback" not in str(e.value)


def test_unknown_dataset_name():
  with pytest.raises(data.DatasetError, match="Unknown dataset 'no_such_set'.*digits"):
    data.dataset_info(_config(dataset="no_such_set"))


def test_streamed_eval_gives_every_process_the_same_batch_count(monkeypatch):
  # Mocked tfds ignores sub-splits, so this checks the padding arithmetic only: 37 examples over
  # 2 processes is at most 19 each, i.e. 3 batches of 8 on every process.
  with tfds.testing.mock_data(num_examples=37):
    c = _config(dataset="imagenette", eval_split="validation", eval_batch_size=16, image_size=32)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for p in (0, 1):
      monkeypatch.setattr(jax, "process_index", lambda p=p: p)
      batches = list(data.create_eval_iter(c))
      assert len(batches) == 3 and all(b["mask"].shape == (8,) for b in batches)


def test_mean_std_normalisation_is_torchvisions():
  config = configs.base_config()
  config.update(
      dataset="fake",
      image_size=32,
      augment="none",
      eval_preprocess="single",
      normalize="mean_std",
      num_classes=3,
  )
  image = np.full((32, 32, 3), 255, np.uint8)
  out = data.preprocess_for_eval(image, config)
  expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5)


def test_the_package_names_every_module_and_its_public_names():
  # `incres.data` loads its modules and public names lazily, from a table: a module missing from
  # it, or a name whose module moved, would fail only when first used.
  package = os.path.dirname(data.__file__)
  modules = {f[:-3] for f in os.listdir(package) if f.endswith(".py") and not f.startswith("_")}
  assert {"crops", "resnet_augment", "googlenet_augment", "device_resample"} <= modules
  assert modules <= set(dir(data)), modules - set(dir(data))
  for name in modules:
    assert getattr(data, name).__name__ == f"incres.data.{name}"
  for name in data.__all__:
    assert getattr(data, name) is not None, name
