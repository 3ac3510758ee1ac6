"""Dataset readers by name (tfds, `folder:<path>`, `digits`, `fake`) and `dataset_info`."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from incres import errors, runtime
from incres.data import tfds_errors

# tfds datasets with a fixed image shape whose training split is under this many bytes are held in
# memory as uint8 arrays (CIFAR-10/100: 150 MB), which gives random access and free exact resume.
IN_MEMORY_MAX_BYTES = 2**30
# digits: fixed split of the 1,797 examples (a permutation by this seed, the last 300 are test).
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TEST = 300
# fake: number of distinct synthetic images encoded once and reused (cycled over the examples).
FAKE_POOL_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DatasetError(errors.UserError):
  """A missing or unusable dataset; the message says what to fetch, where, and what else to use."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the training loop need to know about a dataset."""

  name: str
  num_classes: int
  num_train: int
  num_eval: int
  image_shape: tuple[int, int, int]  # Shape of the images the iterators yield: (S, S, 3).
  label_names: tuple[str, ...]


_OFFLINE = (
    "Offline alternatives: dataset=digits (scikit-learn's bundled digits, 32×32) or dataset=fake "
    "(synthetic images of any size)."
)


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A random-access split: images as uint8 arrays, encoded bytes, or file paths."""

  kind: str  # "array", "encoded" or "path".
  images: np.ndarray  # uint8 [N, H, W, 3], or bytes/str objects [M] (indexed modulo M).
  labels: np.ndarray  # int32 [N].

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class StreamSource:
  """A tfds split too large for memory, read as a stream."""

  builder: Any
  split: str


Source = ArraySource | StreamSource


def _slice(n: int, split: str, name: str) -> tuple[str, slice]:
  """Parses 'train[10:90%]'-style split strings for the non-tfds sources."""
  match = re.fullmatch(r"(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?", split.strip())
  if not match:
    raise ValueError(f"Cannot parse split {split!r} for dataset {name!r} (e.g. 'train[:90%]').")

  def bound(text):
    if not text:
      return None
    if text.endswith("%"):
      return round(n * int(text[:-1]) / 100)
    return int(text)

  return match.group(1), slice(bound(match.group(2)), bound(match.group(3)))


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 [N, 32, 32, 3] (bilinear ×4 from 8×8, grey in RGB) and labels."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0  # Pixel values are 0..16.
  images = tf.image.resize(images[..., None], [32, 32], method="bilinear").numpy()
  images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
  images = np.repeat(images, 3, axis=-1)
  order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
  return images[order], digits.target[order].astype(np.int32)


def _digits_source(split: str) -> ArraySource:
  """`digits`: 'train' is the first 1,497 of a fixed permutation, 'test' the last 300."""
  images, labels = _digits_arrays()
  n_train = len(images) - DIGITS_NUM_TEST
  base, sl = _slice(n_train if split.startswith("train") else DIGITS_NUM_TEST, split, "digits")
  if base == "train":
    images, labels = images[:n_train], labels[:n_train]
  elif base == "test":
    images, labels = images[n_train:], labels[n_train:]
  else:
    raise ValueError(f"digits has splits 'train' (1,497) and 'test' (300), not {split!r}.")
  return ArraySource("array", images[sl], labels[sl])


@functools.lru_cache(maxsize=8)
def fake_pool(shape: tuple[int, int, int], num: int) -> np.ndarray:
  """`num` distinct smooth-noise JPEGs of `shape` (the size of real photos, unlike white noise)."""
  rng = np.random.default_rng(0)
  h, w, _ = shape
  pool = []
  for _ in range(num):
    coarse = rng.uniform(0, 255, size=(max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    image = tf.image.resize(coarse, [h, w], method="bicubic").numpy()
    image += rng.normal(0, 12, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    pool.append(tf.io.encode_jpeg(image, quality=90).numpy())
  return np.array(pool, dtype=object)


def _fake_source(config, split: str) -> ArraySource:
  """`fake`: label i % C, image pool[label % pool size]: learnable and deterministic."""
  shape = tuple(config.fake_image_shape or (config.image_size, config.image_size, 3))
  num_classes = config.num_classes if config.num_classes > 0 else 10
  base, _ = _slice(0, split, "fake")
  n = config.fake_num_train if base == "train" else config.fake_num_eval
  _, sl = _slice(n, split, "fake")
  labels = (np.arange(n, dtype=np.int32) % num_classes)[sl]
  pool = fake_pool(shape, min(FAKE_POOL_SIZE, num_classes))
  return ArraySource("encoded", pool, labels)


# folder: the directories an evaluation split ('test', 'val' or 'validation') may be stored under.
_FOLDER_EVAL_DIRS = ("val", "validation", "test")


def _folder_split_dir(root: str, base: str) -> str:
  """The directory of split `base` in a `<root>/train/...` layout.

  `<root>/<base>` if it exists; otherwise an evaluation split ('test', 'val' or 'validation') reads
  whichever one of `val/`, `validation/` and `test/` the tree has.
  """
  exact = os.path.join(root, base)
  if os.path.isdir(exact):
    return exact
  present = [d for d in _FOLDER_EVAL_DIRS if os.path.isdir(os.path.join(root, d))]
  if base in _FOLDER_EVAL_DIRS and len(present) == 1:
    return os.path.join(root, present[0])
  found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if base in _FOLDER_EVAL_DIRS and present:
    hint = f"it has {', '.join(present)}: name one (e.g. --config.eval_split={present[0]})"
  else:
    hint = f"its split directories are {', '.join(found)}"
  raise DatasetError(
      f"Folder dataset {root!r} has no {base!r} split directory ({exact}); {hint}. A tree with"
      " train/ evaluates on val/, validation/ or test/ (whichever one it has)."
  )


@functools.lru_cache(maxsize=8)
def _folder_files(root: str, split: str) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
  """Paths, labels and class names of a folder dataset split (see `_folder_source`)."""
  if not os.path.isdir(root):
    raise DatasetError(
        f"Folder dataset {root!r} does not exist. Expected class_name/image.jpg under it (or "
        f"train/class_name/image.jpg and val/class_name/image.jpg). {_OFFLINE}"
    )
  base, sl = _slice(0, split, "folder")
  split_layout = os.path.isdir(os.path.join(root, "train"))
  tree = _folder_split_dir(root, base) if split_layout else root
  class_root = os.path.join(root, "train") if split_layout else root
  classes = tuple(
      sorted(d for d in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, d)))
  )
  paths, labels = [], []
  for label, name in enumerate(classes):
    folder = os.path.join(tree, name)
    files = (
        sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if os.path.isdir(folder)
        else []
    )
    for i, f in enumerate(files):
      # Single tree: every 10th image of each class (in name order) is held out for evaluation.
      if not split_layout and (i % 10 == 0) != (base != "train"):
        continue
      paths.append(os.path.join(folder, f))
      labels.append(label)
  if not paths:
    raise DatasetError(f"Folder dataset {root!r} has no images for split {split!r}. {_OFFLINE}")
  _, sl = _slice(len(paths), split, "folder")
  return tuple(paths[sl]), np.array(labels[sl], np.int32), classes


def check_trainable(config) -> None:
  """Raises `DatasetError` for a one-class folder dataset: it trains to loss 0, learning nothing."""
  if not config.dataset.startswith("folder:"):
    return
  root = config.dataset[len("folder:") :]
  classes = _folder_files(root, config.train_split)[2]
  if len(classes) != 1:  # None: `_folder_files` has said there are no images.
    return
  class_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
  raise DatasetError(
      f"Folder dataset {root!r} has one class, {classes[0]!r} (the only directory in"
      f" {class_root}): a classifier needs at least two classes; with one, every label is the same"
      " and the loss goes to 0 without anything learned. Put each class's images in a directory of"
      f" its own under {class_root} (class_name/image.jpg), at least two of them."
  )


def _folder_source(root: str, split: str) -> ArraySource:
  """`folder:<root>`: with a `<root>/train/<class>/*.jpg` tree, split 'train' is that tree and the
  evaluation split `<root>/<split>/`, or whichever of `val/`, `validation/`, `test/` exists
  (`_folder_split_dir`); otherwise one `<root>/<class>/*.jpg` tree whose every 10th image per class
  (in file-name order, counting from the first) is the evaluation split and the rest 'train'."""
  paths, labels, _ = _folder_files(root, split)
  return ArraySource("path", np.array(paths, dtype=object), labels)


def _tfds_builder(config):
  """The tfds builder, prepared; fails with a DatasetError saying what is missing."""
  name = config.dataset
  try:
    builder = tfds.builder(name, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(
        f"Unknown dataset {name!r}: not a tensorflow-datasets name, 'folder:<path>', 'digits' or "
        f"'fake'. {_OFFLINE}"
    ) from None
  if builder.is_prepared() or _is_mocked(builder, config.train_split):
    return builder
  data_dir = builder.data_dir_root if hasattr(builder, "data_dir_root") else config.data_dir
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  manual_dir = os.path.join(str(data_dir), "downloads", "manual")
  if manual and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
    instructions = " ".join(manual.split())
    raise DatasetError(
        f"Dataset {name!r} needs a manual download: {instructions} Put the files in {manual_dir} "
        f"(tfds then prepares them into {builder.data_dir} on first use), or set data_dir to a "
        f"directory where {name} is already prepared. {_OFFLINE}"
    )
  try:
    tfds_errors.probe_download_hosts(builder)
    builder.download_and_prepare()
  except Exception as e:  # Named below by its real cause: a module, the network, the disk.
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {builder.data_dir} and preparing it failed: "
        f"{tfds_errors.prepare_failure(e, name, str(data_dir))} {_OFFLINE}"
    ) from None
  return builder


def _is_mocked(builder, split: str) -> bool:
  """True under `tfds.testing.mock_data`, whose builders read without being prepared."""
  try:
    builder.as_dataset(split=split)
    return True
  except Exception:  # Unprepared builders raise AssertionError; anything else also means no.
    return False


def _tfds_split_size(builder, split: str) -> int | None:
  """Examples in a (sub-)split from the metadata, or None when unknown (mocked data)."""
  try:
    return builder.info.splits[split].num_examples
  except Exception:  # Unknown split or no metadata (mocked): count instead.
    return None


def _tfds_source(config, split: str) -> Source:
  """tfds split: in memory if small and fixed-shape, else streamed."""
  builder = _tfds_builder(config)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DatasetError(f"Dataset {config.dataset!r} has no 'image' and 'label' features.")
  if _in_memory(builder, split):
    if builder.is_prepared():
      images, labels = _cached_tfds_arrays(config.dataset, config.data_dir, split)
    else:  # Mocked data (tests): never cached.
      images, labels = _read_tfds_arrays(builder, split)
    return ArraySource("array", images, labels)
  return StreamSource(builder, split)


def _in_memory(builder, split: str) -> bool:
  """Whether a tfds split is held in memory (fixed image shape, under IN_MEMORY_MAX_BYTES)."""
  features = builder.info.features
  shape = features["image"].shape
  n = _tfds_split_size(builder, split)
  fixed = all(d is not None for d in shape)
  return fixed and (n is None or n * math.prod(shape) <= IN_MEMORY_MAX_BYTES)


def _read_tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A small tfds split as uint8 [N, H, W, 3] images and int32 labels."""
  # Chunks rather than batch_size=-1, which aborts the process on mocked (infinite) datasets.
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(4096)))
  images = np.concatenate([c["image"] for c in chunks])
  labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images, labels


@functools.lru_cache(maxsize=4)
def _cached_tfds_arrays(
    name: str, data_dir: str | None, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """`_read_tfds_arrays` of a prepared dataset, read once per process (CIFAR: ~2 s, 150 MB)."""
  return _read_tfds_arrays(tfds.builder(name, data_dir=data_dir), split)


def source(config, split: str) -> Source:
  """The split of `config.dataset` named `split`."""
  runtime.keep_tensorflow_off_accelerators()
  name = config.dataset
  if name == "digits":
    return _digits_source(split)
  if name == "fake":
    return _fake_source(config, split)
  if name.startswith("folder:"):
    return _folder_source(name[len("folder:") :], split)
  return _tfds_source(config, split)


def _num_classes_and_names(config) -> tuple[int, tuple[str, ...]]:
  """The dataset's classes (config.num_classes > 0 overrides the count)."""
  name = config.dataset
  if name == "digits":
    names = tuple(str(i) for i in range(10))
  elif name == "fake":
    names = tuple(f"class_{i}" for i in range(config.num_classes if config.num_classes > 0 else 10))
  elif name.startswith("folder:"):
    names = _folder_files(name[len("folder:") :], config.train_split)[2]
  else:
    names = tuple(_tfds_builder(config).info.features["label"].names)
  return (config.num_classes if config.num_classes > 0 else len(names)), names


def _split_size(config, split: str) -> int:
  """Examples in a split, from tfds metadata when there is some (no data is read then)."""
  if config.dataset not in ("digits", "fake") and not config.dataset.startswith("folder:"):
    n = _tfds_split_size(_tfds_builder(config), split)
    if n is not None:
      return n
  return source_size(source(config, split))


def source_size(source: Source) -> int:
  """Number of examples (counted by a pass over the records if the metadata lacks it)."""
  if isinstance(source, ArraySource):
    return len(source)
  n = _tfds_split_size(source.builder, source.split)
  if n is None:
    ds = source.builder.as_dataset(
        split=source.split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
  return n


def dataset_info(config) -> DatasetInfo:
  """Sizes, classes and yielded image shape; raises DatasetError if the data is missing."""
  num_classes, names = _num_classes_and_names(config)
  s = config.image_size
  return DatasetInfo(
      name=config.dataset,
      num_classes=num_classes,
      num_train=_split_size(config, config.train_split),
      num_eval=_split_size(config, config.eval_split),
      image_shape=(s, s, 3),
      label_names=names,
  )
