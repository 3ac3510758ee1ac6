"""Input pipelines: datasets by name, the papers' augmentations, exactly resumable iterators.

One function builds any dataset named by `config.dataset`:

- a tensorflow-datasets image classification name (`cifar10`, `cifar100`, `imagenet2012`,
  `imagenette`, ...), with tfds split syntax in `config.train_split` / `config.eval_split`;
- `folder:<path>`: a `class_name/image.jpg` tree, or `<split>/class_name/image.jpg` trees;
- `digits`: scikit-learn's 1,797 bundled 8×8 digits upsampled to 32×32×3 (no download);
- `fake`: synthetic JPEG images of any size and class count, through the real decode path.

Training batches are a pure function of (config, step). Random-access sources (digits, fake,
folders, and tfds datasets small enough to hold in memory, such as CIFAR) draw a permutation per
epoch from a stateless RNG seeded by (seed, epoch), and seed every example's augmentation by
(seed, position in the training stream), so `create_train_iter(config, start_step=k)` starts
directly at batch k. Large tfds datasets (ImageNet, full-size Imagenette) are streamed: each
process reads its own tfds sub-split, an epoch is a seeded file order plus a seeded shuffle buffer,
batches never straddle epochs (the remainder of each epoch is dropped), and resuming re-reads the
current epoch's records up to the step *without decoding them*: exact, at the cost of reading at
most one epoch of raw records.

Evaluation pads the last batch and carries a mask, so every example counts exactly once (unlike
the Flax ImageNet example, issue #262).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import re
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from incres import augment

AUTOTUNE = tf.data.AUTOTUNE

# tfds datasets with a fixed image shape whose training split is under this many bytes are held in
# memory as uint8 arrays (CIFAR-10/100: 150 MB), which gives random access and free exact resume.
IN_MEMORY_MAX_BYTES = 2**30
# Examples in the shuffle buffer of streamed datasets (encoded images: ~1 GB on ImageNet).
STREAM_SHUFFLE_BUFFER = 10_000
# digits: fixed split of the 1,797 examples (a permutation by this seed, the last 300 are test).
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TEST = 300
# fake: number of distinct synthetic images encoded once and reused (cycled over the examples).
FAKE_POOL_SIZE = 32
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DatasetError(Exception):
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


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ArraySource:
  """A random-access split: images as uint8 arrays, encoded bytes, or file paths."""

  kind: str  # "array", "encoded" or "path".
  images: np.ndarray  # uint8 [N, H, W, 3], or bytes/str objects [M] (indexed modulo M).
  labels: np.ndarray  # int32 [N].

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class _StreamSource:
  """A tfds split too large for memory, read as a stream."""

  builder: Any
  split: str


_Source = _ArraySource | _StreamSource


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


def _digits_source(split: str) -> _ArraySource:
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
  return _ArraySource("array", images[sl], labels[sl])


@functools.lru_cache(maxsize=8)
def _fake_pool(shape: tuple[int, int, int], num: int) -> np.ndarray:
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


def _fake_source(config, split: str) -> _ArraySource:
  """`fake`: label i % C, image pool[label % pool size]: learnable and deterministic."""
  shape = tuple(config.fake_image_shape or (config.image_size, config.image_size, 3))
  num_classes = config.num_classes if config.num_classes > 0 else 10
  base, _ = _slice(0, split, "fake")
  n = config.fake_num_train if base == "train" else config.fake_num_eval
  _, sl = _slice(n, split, "fake")
  labels = (np.arange(n, dtype=np.int32) % num_classes)[sl]
  pool = _fake_pool(shape, min(FAKE_POOL_SIZE, num_classes))
  return _ArraySource("encoded", pool, labels)


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
        sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMAGE_EXTENSIONS))
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


def _folder_source(root: str, split: str) -> _ArraySource:
  """`folder:<root>`: with a `<root>/train/<class>/*.jpg` tree, split 'train' is that tree and the
  evaluation split `<root>/<split>/`, or whichever of `val/`, `validation/`, `test/` exists
  (`_folder_split_dir`); otherwise one `<root>/<class>/*.jpg` tree whose every 10th image per class
  (in file-name order, counting from the first) is the evaluation split and the rest 'train'."""
  paths, labels, _ = _folder_files(root, split)
  return _ArraySource("path", np.array(paths, dtype=object), labels)


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
    builder.download_and_prepare()
  except Exception as e:  # Any failure here (no network, disk, checksums) has one remedy.
    first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {builder.data_dir} and downloading it failed "
        f"({type(e).__name__}: {first_line}). Prepare it on a machine with network access "
        f"(`tfds build {name} --data_dir=...`) and copy it there, or set data_dir. {_OFFLINE}"
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


def _tfds_source(config, split: str) -> _Source:
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
    return _ArraySource("array", images, labels)
  return _StreamSource(builder, split)


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


@functools.cache
def _hide_gpus_from_tensorflow() -> None:
  """Keeps TensorFlow off the accelerators JAX uses (a no-op with tensorflow-cpu)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices elsewhere: leave them.
    pass


def _source(config, split: str) -> _Source:
  """The split of `config.dataset` named `split`."""
  _hide_gpus_from_tensorflow()
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
  return _source_size(_source(config, split))


def _source_size(source: _Source) -> int:
  """Number of examples (counted by a pass over the records if the metadata lacks it)."""
  if isinstance(source, _ArraySource):
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


# ---------------------------------------------------------------------------------------------
# Normalisation and per-example preprocessing
# ---------------------------------------------------------------------------------------------


def normalization(config) -> str:
  """'pixel_mean' (CIFAR), 'channel_mean' (ImageNet recipes), 'mean_std' (torchvision) or 'none'."""
  mode = config.get("normalize", "auto")
  if mode == "auto":
    return "pixel_mean" if config.augment == "cifar" else "channel_mean"
  if mode not in ("pixel_mean", "channel_mean", "mean_std", "none"):
    raise ValueError(
        f"normalize must be auto, pixel_mean, channel_mean, mean_std or none, not {mode!r}."
    )
  return mode


def _mean_cache_path(config) -> str:
  """Where the per-pixel mean of a streamed dataset is cached."""
  root = config.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  key = hashlib.sha1(
      f"{config.dataset}|{config.train_split}|{config.image_size}".encode()
  ).hexdigest()
  return os.path.join(root, "incres_mean", f"{key[:16]}.npy")


@functools.lru_cache(maxsize=16)
def _pixel_mean(config_items: tuple) -> np.ndarray:
  """Per-pixel mean image [S, S, 3] on the [0, 1] scale of the training split (cached)."""
  config = ml_collections.ConfigDict(dict(config_items))
  source = _source(config, config.train_split)
  s = config.image_size
  if isinstance(source, _ArraySource) and source.kind == "array":
    images = source.images
    if images.shape[1:3] != (s, s):
      images = tf.image.resize(images, [s, s], antialias=True).numpy()
    return (images.astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)
  path = _mean_cache_path(config) if isinstance(source, _StreamSource) else None
  if path and os.path.exists(path):
    return np.load(path)
  # One pass over the split, every image resized to S×S (the same view `eval_single` gives).
  ds = _index_dataset(source).map(
      lambda i, image: augment.eval_single(image, size=s, mean=0.0), num_parallel_calls=AUTOTUNE
  )
  total = ds.batch(256).reduce(
      (tf.zeros([s, s, 3], tf.float64), tf.constant(0, tf.int64)),
      lambda acc, x: (
          acc[0] + tf.reduce_sum(tf.cast(x, tf.float64), 0),
          acc[1] + tf.shape(x, tf.int64)[0],
      ),
  )
  mean = (total[0] / tf.cast(total[1], tf.float64)).numpy().astype(np.float32)
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, mean)
  return mean


_MEAN_KEYS = (
    "dataset",
    "data_dir",
    "train_split",
    "image_size",
    "num_classes",
    "fake_image_shape",
    "fake_num_train",
    "fake_num_eval",
)


def _mean(config) -> tf.Tensor | float:
  """The mean the images are normalised by (broadcastable to [S, S, 3])."""
  mode = normalization(config)
  if mode == "none":
    return 0.0
  if mode in ("channel_mean", "mean_std"):
    return tf.constant(augment.IMAGENET_MEAN_RGB, tf.float32)
  key = tuple((k, _hashable(config.get(k))) for k in _MEAN_KEYS)
  return tf.constant(_pixel_mean(key))


def _hashable(value):
  """Tuples for lists (config fields may hold either)."""
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _scaled_by_std(config, fn: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """Divides `fn`'s mean-subtracted output by the ImageNet channel std (normalize="mean_std")."""
  if normalization(config) != "mean_std":
    return fn
  std = tf.constant(augment.IMAGENET_STD_RGB, tf.float32)
  return lambda *args: fn(*args) / std


def _train_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """(uint8 image, seed) -> float32 [S, S, 3] for `config.augment`."""
  return _scaled_by_std(config, _unscaled_train_fn(config))


def _unscaled_train_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  s, mean = config.image_size, _mean(config)
  if config.augment == "cifar":
    return lambda image, seed: tf.ensure_shape(
        augment.cifar_train(image, seed, mean=mean), [s, s, 3]
    )
  if config.augment == "resnet_imagenet":
    return functools.partial(augment.resnet_imagenet_train, size=s, mean=mean)
  if config.augment == "googlenet":
    return functools.partial(augment.googlenet_train, size=s, mean=mean)
  if config.augment == "none":
    return lambda image, seed: augment.eval_single(image, size=s, mean=mean)
  raise ValueError(
      f"augment must be cifar, resnet_imagenet, googlenet or none, not {config.augment!r}."
  )


def preprocess_for_eval(image: np.ndarray, config) -> np.ndarray:
  """One decoded uint8 [H, W, 3] image -> the float32 [S, S, 3] view the evaluation uses."""
  return _eval_fn(config)(tf.convert_to_tensor(image, tf.uint8)).numpy()


def _eval_fn(config) -> Callable[[tf.Tensor], tf.Tensor]:
  """uint8 image -> float32 [S, S, 3] for `config.eval_preprocess` (and `config.normalize`)."""
  return _scaled_by_std(config, _unscaled_eval_fn(config))


def _unscaled_eval_fn(config) -> Callable[[tf.Tensor], tf.Tensor]:
  s, mean = config.image_size, _mean(config)
  if config.eval_preprocess == "single":
    return functools.partial(augment.eval_single, size=s, mean=mean)
  if config.eval_preprocess == "center":
    return functools.partial(augment.eval_center, size=s, mean=mean)
  raise ValueError(f"eval_preprocess must be single or center, not {config.eval_preprocess!r}.")


def _decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> uint8 [H, W, 3]."""
  return tf.io.decode_image(data, channels=3, expand_animations=False)


def _loader(source: _ArraySource) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """index -> (uint8 image [H, W, 3], int32 label), for a random-access source."""
  images = tf.constant(source.images if source.kind == "array" else source.images.astype(bytes))
  labels = tf.constant(source.labels, tf.int32)

  def load(index):
    if source.kind == "array":
      image = tf.gather(images, index)
    elif source.kind == "encoded":
      image = _decode(tf.gather(images, index % tf.size(images, tf.int64)))
    else:
      image = _decode(tf.io.read_file(tf.gather(images, index)))
    return image, tf.gather(labels, index)

  return load


def _index_dataset(source: _Source) -> tf.data.Dataset:
  """(index, image) over a whole split in order; used for the pixel mean."""
  if isinstance(source, _ArraySource):
    load = _loader(source)
    return tf.data.Dataset.range(len(source)).map(
        lambda i: (i, load(i)[0]), num_parallel_calls=AUTOTUNE
    )
  ds = source.builder.as_dataset(split=source.split, decoders={"image": tfds.decode.SkipDecoding()})
  return ds.enumerate().map(lambda i, ex: (i, _decode(ex["image"])), num_parallel_calls=AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Iterators
# ---------------------------------------------------------------------------------------------


def _local_batch(global_batch: int, what: str) -> int:
  """Rows per process, checked to split evenly over processes and local devices."""
  processes, devices = jax.process_count(), jax.local_device_count()
  if global_batch % (processes * devices):
    raise ValueError(
        f"{what}={global_batch} must be divisible by the number of devices "
        f"({processes} processes × {devices} local devices)."
    )
  return global_batch // processes


def _base_seed(config, stream: int) -> tf.Tensor:
  """A stateless seed for one random stream (permutation, augmentation, ...) of the run."""
  return tf.random.experimental.stateless_fold_in(tf.constant([config.seed, 0], tf.int64), stream)


_PERMUTATION, _AUGMENT, _STREAM = 1, 2, 3


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic order (the resume guarantee) with the usual optimisations."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1  # Parallelism comes from map(), not inside ops.
  return ds.with_options(options)


def create_train_iter(config, *, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 [B_local, S, S, 3], 'label': int32 [B_local]} forever.

  B_local = config.batch_size // jax.process_count(). The batch at step k depends only on
  (config, k) (and, for streamed tfds datasets, the process count), so
  `create_train_iter(config, start_step=k)` yields what an uninterrupted iterator yields from its
  k-th batch on. Process p gets the p-th slice of each global batch.
  """
  local = _local_batch(config.batch_size, "batch_size")
  source = _source(config, config.train_split)
  train_fn = _train_fn(config)
  if isinstance(source, _StreamSource):
    return _stream_train_iter(config, source, train_fn, local, start_step)

  n, global_batch = len(source), config.batch_size
  if n == 0:
    raise DatasetError(f"Training split {config.train_split!r} of {config.dataset!r} is empty.")
  lo = jax.process_index() * local
  perm_seed, aug_seed = _base_seed(config, _PERMUTATION), _base_seed(config, _AUGMENT)
  start = start_step * global_batch
  load = _loader(source)

  def epoch(e):
    # A fresh permutation per epoch from a stateless RNG: epoch e's order is a function of e.
    keys = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(perm_seed, e))
    positions = e * n + tf.range(n, dtype=tf.int64)  # Position in the infinite training stream.
    return tf.data.Dataset.from_tensor_slices((positions, tf.cast(tf.argsort(keys), tf.int64)))

  ds = tf.data.Dataset.range(start // n, 2**62).flat_map(epoch).skip(start % n)
  # Keep this process's rows of each global batch; integers only, so cheap for every process.
  ds = ds.filter(lambda g, i: (g % global_batch >= lo) & (g % global_batch < lo + local))

  def example(g, index):
    image, label = load(index)
    image = train_fn(image, tf.random.experimental.stateless_fold_in(aug_seed, g))
    return {"image": image, "label": label}

  ds = ds.map(example, num_parallel_calls=AUTOTUNE).batch(local, drop_remainder=True)
  return _options(ds.prefetch(AUTOTUNE)).as_numpy_iterator()


def _stream_train_iter(config, source: _StreamSource, train_fn, local: int, start_step: int):
  """Streamed tfds training data: per-process sub-splits, epochs of whole batches."""
  processes = jax.process_count()
  split = source.split
  if processes > 1:  # Equal shares (the remainder is dropped): every process has n // P examples.
    split = tfds.split_for_jax_process(source.split, drop_remainder=True)
  n = _source_size(source) // processes
  steps_per_epoch = n // local
  if steps_per_epoch == 0:
    raise DatasetError(
        f"{config.dataset!r} {config.train_split!r} has fewer examples than a batch."
    )
  aug_seed = tf.random.experimental.stateless_fold_in(
      _base_seed(config, _STREAM), jax.process_index()
  )

  def epoch_batches(e, skip_steps):
    seed = int(tf.random.experimental.stateless_fold_in(aug_seed, e).numpy()[0]) & 0x7FFFFFFF
    ds = source.builder.as_dataset(
        split=split,
        shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    ds = ds.shuffle(STREAM_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
    # Resume: skip the consumed records before decoding, so skipping costs reads, not decodes.
    ds = ds.take(steps_per_epoch * local).enumerate().skip(skip_steps * local)

    def example(i, ex):
      image = train_fn(
          _decode(ex["image"]), tf.random.experimental.stateless_fold_in(aug_seed, e * n + i)
      )
      return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(example, num_parallel_calls=AUTOTUNE).batch(local, drop_remainder=True)
    return _options(ds.prefetch(AUTOTUNE)).as_numpy_iterator()

  e, skip = divmod(start_step, steps_per_epoch)
  while True:
    yield from epoch_batches(e, skip)
    e, skip = e + 1, 0


def create_eval_iter(config) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image', 'label', 'mask'} batches covering the eval split exactly once.

  Every batch has config.eval_batch_size // process_count() rows; the last is padded with
  mask 0 (mask is float32, 1 for real examples). All processes yield the same number of batches.
  """
  local = _local_batch(config.eval_batch_size, "eval_batch_size")
  source = _source(config, config.eval_split)
  eval_fn = _eval_fn(config)
  if isinstance(source, _StreamSource):
    return _stream_eval_iter(config, source, eval_fn, local)

  n, global_batch = len(source), config.eval_batch_size
  num_batches = -(-n // global_batch)
  lo = jax.process_index() * local
  # Row r of global batch b is example b * global_batch + r; indices past the end are padding.
  rows = np.arange(num_batches)[:, None] * global_batch + lo + np.arange(local)[None, :]
  rows = rows.reshape(-1)
  load = _loader(source)

  def example(index):
    valid = index < n
    image, label = load(tf.where(valid, index, 0))
    return {
        "image": eval_fn(image),
        "label": tf.where(valid, label, 0),
        "mask": tf.cast(valid, tf.float32),
    }

  ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
  ds = ds.map(example, num_parallel_calls=AUTOTUNE).batch(local).prefetch(AUTOTUNE)
  return _options(ds).as_numpy_iterator()


def _stream_eval_iter(config, source: _StreamSource, eval_fn, local: int):
  """Streamed eval: this process's even share, padded to the batch count all processes share."""
  processes = jax.process_count()
  split = tfds.split_for_jax_process(source.split) if processes > 1 else source.split
  # tfds' even splits differ by at most one example: every process pads to the largest share,
  # ceil(n / P), taking exactly num_batches * local rows of (its examples + padding).
  num_batches = -(-(-(-_source_size(source) // processes)) // local)
  s = config.image_size
  ds = source.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(
      lambda ex: {
          "image": eval_fn(_decode(ex["image"])),
          "label": tf.cast(ex["label"], tf.int32),
          "mask": tf.constant(1.0),
      },
      num_parallel_calls=AUTOTUNE,
  )
  pad = {"image": tf.zeros([s, s, 3]), "label": tf.constant(0), "mask": tf.constant(0.0)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(num_batches * local)
  return _options(ds.batch(local).prefetch(AUTOTUNE)).as_numpy_iterator()
