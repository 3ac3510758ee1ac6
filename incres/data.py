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

Encoded images reach the augmentations and evaluation views undecoded: from a JPEG the ResNet and
GoogLeNet crops and the centre view decode only the window they use (`incres.augment`).
GoogLeNet's photometric distortions run on the accelerator when there is one (config
`photometric`): its batches then carry the [0, 1] image and the drawn distortions
(`'photometric'`), and `device_preprocess(config)` finishes them inside the train step. So do the
crops' resampling of ResNet and GoogLeNet (config `resample`): their batches carry each crop's
decoded window, uint8, and how to resample it (`'resample'`; GoogLeNet: `'resize'`).

Evaluation pads the last batch and carries a mask, so every example counts exactly once (unlike
the Flax ImageNet example, issue #262).

Unreadable images (truncated, empty, not an image) are skipped, counted and the first few named in
the log, without giving up exactness: a batch that fails is rebuilt from its readable rows plus
spare rows of the following batches, which depends only on the files (`create_train_iter`).
`python -m incres.data check folder:<path>` lists every unreadable file of a folder dataset.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import io
import math
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
from typing import Any, Callable, Iterator, Sequence

if __name__ == "__main__":  # `python -m incres.data`: quiet TensorFlow's start-up, imported below.
  from incres import runtime as _runtime  # pylint: disable=g-import-not-at-top

  _runtime.setup_process()

from absl import flags, logging  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import requests  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from incres import augment, cli, configs, errors, fileio, photometric, resample, runtime

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
    _probe_download_hosts(builder)
    builder.download_and_prepare()
  except Exception as e:  # Named below by its real cause: a module, the network, the disk.
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {builder.data_dir} and preparing it failed: "
        f"{_prepare_failure(e, name, str(data_dir))} {_OFFLINE}"
    ) from None
  return builder


# Seconds a download host has to accept a connection (and to answer a HEAD request) before tfds's
# download starts. tfds retries an unreachable host 10 times with backoff: without network,
# dataset=cifar10 took 3 min 43 s of retries and progress bars to fail.
PROBE_TIMEOUT_S = 10.0


def _probe_download_hosts(builder) -> None:
  """Raises requests' error at once if a host the dataset downloads from cannot be reached.

  One HEAD request per host of the builder's registered URLs, without retries, through the proxy
  the environment names, as tfds's download would go. Any HTTP answer (an error status included),
  or a connection slow to answer, means the network works and tfds goes ahead; builders without
  registered URLs are not probed.
  """
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (no checksums registered: tfds finds out)
    return
  first_per_host = {}
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
      first_per_host.setdefault((parts.scheme, parts.hostname, parts.port), url)
  with requests.Session() as session:
    for url in first_per_host.values():
      try:
        session.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=False).close()
      except requests.ReadTimeout:
        pass  # Connected, but slow to answer: the network works; tfds's download may too.


# What `download_and_prepare` raises, by cause (tfds downloads with requests, FTP with urllib).
_CORRUPT_DOWNLOAD = (
    tfds.core.download.download_manager.NonMatchingChecksumError,
    tfds.core.download.extractor.ExtractError,
)
_NETWORK_ERRORS = (
    requests.RequestException,
    tfds.download.DownloadError,  # An HTTP error status.
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    urllib.error.URLError,
)
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def _prepare_failure(error: BaseException, name: str, data_dir: str) -> str:
  """What `download_and_prepare`'s error means and what to do, from its chain of causes."""
  chain, e = [], error
  while e is not None and len(chain) < 20:
    chain.append(e)
    e = e.__cause__ or e.__context__

  def line(e: BaseException) -> str:
    # urllib3 repeats the whole cause chain in one line after "(Caused by": the root says it.
    text = (str(e).strip().splitlines() or ["no message"])[0].split(" (Caused by ")[0]
    return f"{type(e).__name__}: {text[:200]}"

  root = f"; cause: {line(chain[-1])}" if len(chain) > 1 else ""
  what = f"({line(error)}{root})"
  build = f"`tfds build {name} --data_dir=...`"
  for e in chain:
    if isinstance(e, ImportError):
      state = "is not installed" if isinstance(e, ModuleNotFoundError) else "does not import"
      return (
          f"tensorflow-datasets needs the Python module {e.name or '?'!r}, which {state} "
          f"{what}. Reinstall incres's requirements in this environment (`pip install -e .` in the "
          "incres checkout, or `pip install -r requirements.txt`) and run again."
      )
    if isinstance(e, _CORRUPT_DOWNLOAD):
      return (
          f"a downloaded file is damaged or does not match its recorded checksum {what}: the "
          "download was cut short or the source changed. Delete that file (under "
          f"{os.path.join(data_dir, 'downloads')}) and run again."
      )
    if isinstance(e, _NETWORK_ERRORS):
      return (
          f"the download failed: a network problem {what}. Check this machine's network access "
          f"(and proxy), or prepare the dataset on a machine with network access ({build}) and "
          "copy it into data_dir."
      )
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return (
          f"writing under {data_dir} failed: a disk problem {what}. Free disk space or make it "
          "writable, or set data_dir to a directory with room for the dataset."
      )
  return f"{what}. Prepare it elsewhere ({build}) and copy it into data_dir, or set data_dir."


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


def _source(config, split: str) -> _Source:
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
  cached = _read_mean_cache(path, s) if path else None
  if cached is not None:
    return cached
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
  if path:  # Every process may write it: each replaces the file whole, with the same values.
    buffer = io.BytesIO()
    np.save(buffer, mean)
    fileio.atomic_write_bytes(path, buffer.getvalue())
  return mean


def _read_mean_cache(path: str, size: int) -> np.ndarray | None:
  """The cached mean image, or None if there is none or it is damaged (then it is recomputed)."""
  if not os.path.exists(path):
    return None
  try:
    mean = np.load(path)
    if mean.shape != (size, size, 3) or not np.all(np.isfinite(mean)):
      raise ValueError(f"shape {mean.shape}, expected {(size, size, 3)}, or non-finite values")
  except (OSError, ValueError, EOFError) as e:
    logging.warning("The per-pixel mean cache %s is damaged (%s); computing it again.", path, e)
    return None
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


def normalization_mean(config) -> tf.Tensor | float:
  """The mean the images are normalised by (broadcastable to [S, S, 3]); 0.0 for "none".

  The per-pixel mean (normalize="pixel_mean") is computed once over the training split and cached.
  """
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


def _accelerated(place: str) -> bool:
  return place == "device" or (place == "auto" and jax.default_backend() in ("gpu", "tpu"))


def photometric_on_device(config) -> bool:
  """Whether GoogLeNet's photometric distortions run in the train step (config `photometric`;
  "auto" also when its crops are resized there, `resample="device"`: the distortions come after)."""
  place = configs.check_photometric(config)
  if config.augment != "googlenet":
    return False
  return _accelerated(place) or (place == "auto" and configs.check_resample(config) == "device")


def resample_on_device(config) -> bool:
  """Whether the crop's resampling and what follows it run in the train step (config `resample`):
  ResNet's resample, flip and normalisation, or GoogLeNet's resize and flip (with its colour
  distortions there too)."""
  place = configs.check_resample(config)
  if config.augment == "googlenet":
    return _accelerated(place) and photometric_on_device(config)
  return config.augment == "resnet_imagenet" and _accelerated(place)


def device_preprocess(config) -> Callable[[dict[str, Any]], Any] | None:
  """`batch -> model input` for the train step when the pipeline leaves work to the accelerator
  (`photometric_on_device`, `resample_on_device`), else None (the batch's 'image' is the input)."""
  photometric_here, resample_here = photometric_on_device(config), resample_on_device(config)
  if not (photometric_here or resample_here):
    return None
  mean = np.asarray(normalization_mean(config), np.float32)
  std = np.asarray(augment.IMAGENET_STD_RGB, np.float32)
  std = std if normalization(config) == "mean_std" else None
  size = config.image_size
  if resample_here and config.augment == "googlenet":
    side = augment.device_resize_max_side(size)
    return lambda batch: resample.googlenet_finish(
        batch["image"], batch["resize"], batch["photometric"], size, side, mean, std
    )
  if resample_here:
    return lambda batch: resample.finish(batch["image"], batch["resample"], size, mean, std)
  return lambda batch: photometric.finish(batch["image"], batch["photometric"], mean, std)


def _train_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor | dict[str, tf.Tensor]]:
  """(image, seed) -> float32 [S, S, 3] for `config.augment`; the image uint8 or encoded bytes.

  With `photometric_on_device(config)`: a dict of the [0, 1] image and its `'photometric'` draws
  (the mean, std and distortions are applied by `device_preprocess`); with
  `resample_on_device(config)`: a dict of the crop's uint8 window (a flat buffer) and how to
  finish it (ResNet: `'resample'`, `augment.resized_crop_for_device`; GoogLeNet: `'resize'` and
  `'photometric'`), resampled and normalised by `device_preprocess`."""
  size = config.image_size
  if photometric_on_device(config):  # GoogLeNet only.
    return functools.partial(
        augment.googlenet_train,
        size=size,
        mean=0.0,
        photometric_on_device=True,
        resize_on_device=resample_on_device(config),
    )
  if resample_on_device(config):
    return functools.partial(
        augment.resnet_imagenet_train, size=size, mean=0.0, resample_on_device=True
    )
  return _scaled_by_std(config, _unscaled_train_fn(config))


def _example(out: tf.Tensor | dict[str, tf.Tensor], label: tf.Tensor) -> dict[str, tf.Tensor]:
  """A training example from a `_train_fn` output and its label."""
  return {**out, "label": label} if isinstance(out, dict) else {"image": out, "label": label}


def _unscaled_train_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  s, mean = config.image_size, normalization_mean(config)
  if config.augment == "cifar":
    return lambda image, seed: tf.ensure_shape(
        augment.cifar_train(image, seed, mean=mean, size=s), [s, s, 3]
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
  """Image (uint8 or encoded) -> float32 [S, S, 3] for `config.eval_preprocess`, `config.normalize`."""
  return _scaled_by_std(config, _unscaled_eval_fn(config))


def _unscaled_eval_fn(config) -> Callable[[tf.Tensor], tf.Tensor]:
  s, mean = config.image_size, normalization_mean(config)
  if config.eval_preprocess == "single":
    return functools.partial(augment.eval_single, size=s, mean=mean)
  if config.eval_preprocess == "center":
    return functools.partial(augment.eval_center, size=s, mean=mean)
  raise ValueError(f"eval_preprocess must be single or center, not {config.eval_preprocess!r}.")


def _decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> uint8 [H, W, 3]; fails (InvalidArgumentError) on unreadable bytes."""
  return augment.decode(data)


def _loader(
    source: _ArraySource, *, decode: bool = True
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """index -> (uint8 image [H, W, 3], int32 label), for a random-access source.

  With `decode=False` encoded images stay encoded (a scalar string), for the augmentations, which
  decode only the part they use.
  """
  images = tf.constant(source.images if source.kind == "array" else source.images.astype(bytes))
  labels = tf.constant(source.labels, tf.int32)
  finish = _decode if decode else (lambda data: data)

  def load(index):
    if source.kind == "array":
      image = tf.gather(images, index)
    elif source.kind == "encoded":
      image = finish(tf.gather(images, index % tf.size(images, tf.int64)))
    else:
      image = finish(tf.io.read_file(tf.gather(images, index)))
    return image, tf.gather(labels, index)

  return load


def _decodes(load: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]], index: int) -> bool:
  """Whether example `index` of a random-access source loads and decodes (whole) on its own."""
  try:
    _decode(load(tf.constant(index, tf.int64))[0])
    return True
  except tf.errors.OpError:
    return False


def _index_dataset(source: _Source) -> tf.data.Dataset:
  """(index, image) over a whole split in order, without unreadable images; for the pixel mean."""
  if isinstance(source, _ArraySource):
    load = _loader(source)
    ds = tf.data.Dataset.range(len(source)).map(
        lambda i: (i, load(i)[0]), num_parallel_calls=AUTOTUNE
    )
    return ds.ignore_errors()
  ds = source.builder.as_dataset(split=source.split, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().map(lambda i, ex: (i, _decode(ex["image"])), num_parallel_calls=AUTOTUNE)
  return ds.ignore_errors()


def eval_images(config, split: str | None = None) -> tuple[tf.data.Dataset, int]:
  """`(dataset, n)`: a split's n examples in order, as (uint8 image [H, W, 3], int32 label).

  The images are as stored (decoded, not resized, cropped or normalised), for evaluation protocols
  that make their own views (`incres.evaluate`). Default split: `config.eval_split`.
  """
  source = _source(config, config.eval_split if split is None else split)
  n = _source_size(source)
  if isinstance(source, _ArraySource):
    load = _loader(source)
    ds = tf.data.Dataset.range(n).map(load, num_parallel_calls=AUTOTUNE)
  else:
    ds = source.builder.as_dataset(
        split=source.split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    ds = ds.map(
        lambda ex: (_decode(ex["image"]), tf.cast(ex["label"], tf.int32)),
        num_parallel_calls=AUTOTUNE,
    )
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options), n


# ---------------------------------------------------------------------------------------------
# Unreadable images
# ---------------------------------------------------------------------------------------------

# Unreadable images named in the log per process; the rest are counted (`check` lists them all).
MAX_NAMED_BAD_IMAGES = 10
# A training batch with unreadable images is refilled from this many following batches' rows.
SPARE_BATCHES = 2

_named_bad_images: set[str] = set()


def _example_name(config, source: _ArraySource, index: int) -> str:
  """The file (or, for in-memory sources, the example number) behind `index`."""
  if source.kind == "path":
    return str(source.images[index])
  return f"{config.dataset} example {index}"


def _unreadable_reason(source: _ArraySource, index: int) -> str:
  """Why example `index` fails to load: TensorFlow's message, trimmed to its first line."""
  try:
    if source.kind == "path":
      _decode(tf.io.read_file(str(source.images[index])))
    elif source.kind == "encoded":
      _decode(source.images[index % len(source.images)])
  except tf.errors.OpError as e:
    return _short_error(e)
  return "it decodes, but its preprocessing failed"


def _short_error(error: tf.errors.OpError) -> str:
  """TensorFlow's error message without its op and device decorations."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error.message)).strip().splitlines()[0]
  text = re.sub(r"^.*assertion failed: \[(.*)\]$", r"\1", text)  # augment's check of a JPEG.
  return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip() or type(error).__name__


def _report_unreadable(config, source: _ArraySource, indices: list[int], where: str) -> None:
  """Names the first MAX_NAMED_BAD_IMAGES unreadable images of this process in the log."""
  for index in indices:
    name = _example_name(config, source, index)
    if name in _named_bad_images:
      continue
    _named_bad_images.add(name)
    if len(_named_bad_images) <= MAX_NAMED_BAD_IMAGES:
      logging.warning(
          "Skipping unreadable image %s (%s) in %s.", name, _unreadable_reason(source, index), where
      )
    if len(_named_bad_images) == MAX_NAMED_BAD_IMAGES + 1 and config.dataset.startswith("folder:"):
      logging.warning(
          "Further unreadable images are skipped and counted without being named; list them all "
          "with: python -m incres.data check %s",
          config.dataset,
      )


class _SkippingBatches:
  """Batches of a random-access split that pass over unreadable images; `skipped` counts them.

  Batches come from the plain pipeline, `batches(step)`. When a batch fails to load (an image that
  does not decode), it is rebuilt by `repair(step) -> (batch, unreadable indices)`, which loads
  its candidates one by one and drops the failures, and the plain pipeline restarts at the next
  batch. Which images fail depends only on the files, so every batch stays a function of its step:
  good data costs nothing extra, and resuming at any step gives the same batches.
  """

  def __init__(self, batches, repair, step: int, report: Callable[[list[int], int], None]):
    self.skipped = 0  # Unreadable images passed over by the batches yielded so far.
    self._batches, self._repair, self._report = batches, repair, report
    self._step = step
    self._it = None

  def __iter__(self) -> _SkippingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._batches(self._step)
    try:
      batch = next(self._it)
    except tf.errors.OpError as error:
      self._it = None  # Restarted after this batch by the next call.
      batch, bad = self._repair(self._step)
      if not bad:  # Nothing unreadable: a real failure, not for us to hide.
        raise error
      self.skipped += len(bad)
      self._report(bad, self._step)
    self._step += 1
    return batch


class _CountingBatches:
  """A generator of batches, `generate(self)`, that adds its skipped images to `self.skipped`."""

  def __init__(self, generate: Callable[[_CountingBatches], Iterator[dict[str, np.ndarray]]]):
    self.skipped = 0
    self._gen = generate(self)

  def __iter__(self) -> _CountingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._gen)


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


_PERMUTATION, _AUGMENT, _STREAM, _SPARE = 1, 2, 3, 4


def _host_threads() -> int:
  """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic order (the resume guarantee), tf.data's own parallelism sized to the host."""
  options = tf.data.Options()
  options.deterministic = True  # Parallel map() still yields in order: batch k is batch k.
  options.autotune.enabled = True  # Parallel calls and prefetch buffers sized at run time.
  options.experimental_optimization.map_parallelization = True
  # A pool of its own, one thread per core, rather than the process-wide inter-op pool.
  options.threading.private_threadpool_size = _host_threads()
  # Parallelism comes from decoding many images at once (map()), not from threads inside one op
  # (kept from before: on the shared 2-core machine the alternatives could not be told apart,
  # benchmarks/RESULTS.md, "Input pipeline").
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def create_train_iter(config, *, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 [B_local, S, S, 3], 'label': int32 [B_local]} forever; where the
  train step finishes the augmentation (`device_preprocess(config)`), 'image' is its input:
  the undistorted [0, 1] image plus 'photometric' float32 [B_local, 8]
  (`photometric_on_device(config)`), or the crops' windows, uint8 [B_local, N]
  (N = `augment.device_buffer_bytes(S)`), plus 'resample' float32 [B_local, 3 + 2·S + 3] (ResNet)
  or 'resize' [B_local, 5 + 2·(2·S + 2)] and 'photometric' (GoogLeNet) where
  `resample_on_device(config)`.

  B_local = config.batch_size // jax.process_count(). The batch at step k depends only on
  (config, k) (and, for streamed tfds datasets, the process count), so
  `create_train_iter(config, start_step=k)` yields what an uninterrupted iterator yields from its
  k-th batch on. Process p gets the p-th slice of each global batch.

  Unreadable images (a truncated JPEG, an empty file, text named `.png`) are skipped, counted in
  the iterator's `skipped` attribute and the first few named in the log. In random-access
  datasets a batch with unreadable images takes the first readable rows of its own and the next
  SPARE_BATCHES batches' rows of this process (so a few images appear twice that epoch, with
  other augmentations); since that only depends on the files, resuming stays exact. Streamed
  datasets drop unreadable records and fill the epoch from the records beyond its last whole batch;
  a resumed streamed run is exact only if no record before the resume step was unreadable in its
  epoch (the resume skips raw records without decoding them).
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
  spare_seed = _base_seed(config, _SPARE)
  load = _loader(source, decode=False)  # The augmentation decodes (of a JPEG, only its crop).

  def epoch(e):
    # A fresh permutation per epoch from a stateless RNG: epoch e's order is a function of e.
    keys = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(perm_seed, e))
    positions = e * n + tf.range(n, dtype=tf.int64)  # Position in the infinite training stream.
    return tf.data.Dataset.from_tensor_slices((positions, tf.cast(tf.argsort(keys), tf.int64)))

  def rows(step):
    """(stream position, example index) of this process's rows from global batch `step` on."""
    start = step * global_batch
    ds = tf.data.Dataset.range(start // n, 2**62).flat_map(epoch).skip(start % n)
    # Keep this process's rows of each global batch; integers only, so cheap for every process.
    return ds.filter(lambda g, i: (g % global_batch >= lo) & (g % global_batch < lo + local))

  def example(g, index, seed=aug_seed):
    image, label = load(index)
    return _example(train_fn(image, tf.random.experimental.stateless_fold_in(seed, g)), label)

  def batches(step):
    ds = rows(step).map(example, num_parallel_calls=AUTOTUNE).batch(local, drop_remainder=True)
    return _options(ds.prefetch(AUTOTUNE)).as_numpy_iterator()

  def repair(step):
    """Batch `step` made of the first `local` readable candidates: its rows, then spares."""
    candidates = rows(step).take((1 + SPARE_BATCHES) * local)
    indices = [int(i) for _, i in _options(candidates).as_numpy_iterator()]

    def candidate(c, row):
      # A spare is also a row of a later batch: another augmentation seed gives another view.
      g, index = row
      return c, example(g, index, tf.where(c < local, aug_seed, spare_seed))

    ds = candidates.enumerate().map(candidate, num_parallel_calls=AUTOTUNE).ignore_errors()
    good = list(_options(ds.take(local)).as_numpy_iterator())
    used = {int(c) for c, _ in good}
    last = max(used) if len(good) == local else len(indices) - 1
    bad = [indices[c] for c in range(last + 1) if c not in used]
    if any(_decodes(load, i) for i in bad):
      # An image that decodes failed later (its augmentation, say): not unreadable, a real error,
      # which the caller raises as it is.
      return None, []
    if len(good) < local:
      names = ", ".join(_example_name(config, source, i) for i in bad[:MAX_NAMED_BAD_IMAGES])
      raise DatasetError(
          f"Training batch {step} of {config.dataset!r} cannot be filled: {len(bad)} of the "
          f"{len(indices)} images tried are unreadable ({names}, ...). Remove or replace them "
          f"(`python -m incres.data check {config.dataset}` lists every unreadable file)."
      )
    batch = {k: np.stack([ex[k] for _, ex in good]) for k in good[0][1]}
    return batch, bad

  def report(bad, step):
    _report_unreadable(config, source, bad, f"training batch {step}")

  return _SkippingBatches(batches, repair, start_step, report)


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
    ds = ds.enumerate().skip(skip_steps * local)

    def example(i, ex):
      out = train_fn(ex["image"], tf.random.experimental.stateless_fold_in(aug_seed, e * n + i))
      return {**_example(out, tf.cast(ex["label"], tf.int32)), "record": i}

    # Unreadable records are dropped; the records past the epoch's last whole batch stand in.
    ds = ds.map(example, num_parallel_calls=AUTOTUNE).ignore_errors()
    ds = ds.take((steps_per_epoch - skip_steps) * local).batch(local, drop_remainder=True)
    return _options(ds.prefetch(AUTOTUNE)).as_numpy_iterator()

  def generate(counter):
    e, skip = divmod(start_step, steps_per_epoch)
    while True:
      expected = skip * local  # The next record of the epoch, if every record decodes.
      for batch in epoch_batches(e, skip):
        records = batch.pop("record")
        skipped = int(records[-1]) + 1 - expected - len(records)
        expected = int(records[-1]) + 1
        if skipped:
          counter.skipped += skipped
          logging.warning(
              "Skipped %d unreadable record(s) of %s %s in epoch %d (before record %d).",
              skipped,
              config.dataset,
              config.train_split,
              e,
              expected - 1,
          )
        yield batch
      e, skip = e + 1, 0

  return _CountingBatches(generate)


def create_eval_iter(config) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image', 'label', 'mask'} batches covering the eval split exactly once.

  Every batch has config.eval_batch_size // process_count() rows; the last is padded with
  mask 0 (mask is float32, 1 for real examples). All processes yield the same number of batches.
  Unreadable images get mask 0 (they are not counted), are counted in the iterator's `skipped`
  attribute and named in the log.
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
  rows = rows.reshape(-1).astype(np.int64)
  load = _loader(source, decode=False)  # The view decodes (of a JPEG, only its crop).

  def example(index):
    valid = index < n
    image, label = load(tf.where(valid, index, 0))
    return {
        "image": eval_fn(image),
        "label": tf.where(valid, label, 0),
        "mask": tf.cast(valid, tf.float32),
    }

  def batches(b):
    ds = tf.data.Dataset.from_tensor_slices(rows[b * local :])
    ds = ds.map(example, num_parallel_calls=AUTOTUNE).batch(local).prefetch(AUTOTUNE)
    return _options(ds).as_numpy_iterator()

  def repair(b):
    """Batch `b` with its unreadable rows zeroed and masked out."""
    chunk = rows[b * local : (b + 1) * local]
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(chunk)), chunk))
    ds = ds.map(lambda r, i: (r, example(i)), num_parallel_calls=AUTOTUNE).ignore_errors()
    s = config.image_size
    batch = {
        "image": np.zeros((len(chunk), s, s, 3), np.float32),
        "label": np.zeros(len(chunk), np.int32),
        "mask": np.zeros(len(chunk), np.float32),
    }
    loaded = set()
    for r, ex in _options(ds).as_numpy_iterator():
      loaded.add(int(r))
      for key in batch:
        batch[key][r] = ex[key]
    # A failed padding row (it loads example 0) is masked out anyway: not an unreadable image.
    bad = [int(i) for r, i in enumerate(chunk) if r not in loaded and i < n]
    if any(_decodes(load, i) for i in bad):
      return None, []  # A readable image failed later: a real error, raised as it is.
    return batch, bad

  def report(bad, b):
    _report_unreadable(config, source, bad, f"evaluation batch {b} (masked out)")

  return _SkippingBatches(batches, repair, 0, report)


def _stream_eval_iter(config, source: _StreamSource, eval_fn, local: int):
  """Streamed eval: this process's even share, padded to the batch count all processes share."""
  processes = jax.process_count()
  split = tfds.split_for_jax_process(source.split) if processes > 1 else source.split
  # tfds' even splits differ by at most one example: every process pads to the largest share,
  # ceil(n / P), taking exactly num_batches * local rows of (its examples + padding).
  num_batches = -(-(-(-_source_size(source) // processes)) // local)
  s = config.image_size
  ds = source.builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().map(
      lambda i, ex: {
          "image": eval_fn(ex["image"]),
          "label": tf.cast(ex["label"], tf.int32),
          "mask": tf.constant(1.0),
          "record": i,
      },
      num_parallel_calls=AUTOTUNE,
  )
  ds = ds.ignore_errors()  # Unreadable records are left out; the padding keeps the batch count.
  pad = {
      "image": tf.zeros([s, s, 3]),
      "label": tf.constant(0),
      "mask": tf.constant(0.0),
      "record": tf.constant(-1, tf.int64),
  }
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat()).take(num_batches * local)
  batches = _options(ds.batch(local).prefetch(AUTOTUNE)).as_numpy_iterator()

  def generate(counter):
    expected = 0  # The next record of this process's share, if every record decodes.
    for batch in batches:
      records = batch.pop("record")
      records = records[records >= 0]
      if len(records):
        skipped = int(records[-1]) + 1 - expected - len(records)
        expected = int(records[-1]) + 1
        if skipped:
          counter.skipped += skipped
          logging.warning(
              "Skipped %d unreadable record(s) of %s %s in evaluation.",
              skipped,
              config.dataset,
              config.eval_split,
          )
      yield batch

  return _CountingBatches(generate)


# ---------------------------------------------------------------------------------------------
# Command line: python -m incres.data check folder:<path>
# ---------------------------------------------------------------------------------------------


def check_folder(root: str) -> tuple[int, list[tuple[str, str]]]:
  """Decodes every image file under `root`: (number of images, [(unreadable path, reason)])."""
  paths = sorted(
      os.path.join(folder, f)
      for folder, _, files in os.walk(root)
      for f in files
      if f.lower().endswith(_IMAGE_EXTENSIONS)
  )
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string, shape=[len(paths)]))
  ds = ds.map(lambda p: (p, tf.shape(_decode(tf.io.read_file(p)))), num_parallel_calls=AUTOTUNE)
  readable = {p.decode() for p, _ in _options(ds.ignore_errors()).as_numpy_iterator()}
  bad = []
  for path in paths:
    if path in readable:
      continue
    try:  # Again, alone, for TensorFlow's reason (only for the few that failed).
      _decode(tf.io.read_file(path))
      reason = "failed once, then decoded: unreliable storage?"
    except tf.errors.OpError as e:
      reason = _short_error(e)
    bad.append((path, reason))
  return len(paths), bad


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m incres.data check folder:<path>`: lists every unreadable image of a folder."""
  prog = "python -m incres.data"
  rest = cli.parse(
      flags.FlagValues(),  # `check` has no flags.
      argv,
      prog=prog,
      positional="check DATASET",
      description=(
          "Checks of incres datasets.\n\n"
          "check DATASET: decodes every image file under a folder: dataset (every split) as "
          "training would, and "
          "lists each one that fails with the reason. Training skips such files anyway and names "
          "only the first few; this lists them all. DATASET is folder:<path>, as given to "
          "--config.dataset. Exit status: 0 if every image decodes, 1 if unreadable images were "
          "found (listed on stdout), 2 for a usage error (such as a folder that does not exist)."
      ),
  )
  if len(rest) != 2 or rest[0] != "check":
    given = f" (given: {' '.join(rest)})" if rest else ""
    raise cli.UsageError(f"Expected `check DATASET`, e.g. check folder:/data/flowers{given}", prog)
  dataset = rest[1]
  if not dataset.startswith("folder:"):
    print(
        f"error: `check` decodes the files of a folder dataset; {dataset!r} is not one. Pass "
        "folder:<path> (tensorflow-datasets names are checked by tfds when they are prepared).",
        file=sys.stderr,
    )
    return 2
  root = dataset[len("folder:") :]
  if not os.path.isdir(root):
    print(
        f"error: folder dataset {root!r} does not exist or is not a directory. Pass the folder "
        "that holds class_name/image.jpg (or <split>/class_name/image.jpg), e.g. "
        "python -m incres.data check folder:/data/flowers",
        file=sys.stderr,
    )
    return 2
  runtime.keep_tensorflow_off_accelerators()
  total, bad = check_folder(root)
  if total == 0:
    print(
        f"error: no image files ({', '.join(_IMAGE_EXTENSIONS)}) under {root!r}. Expected "
        "class_name/image.jpg (or <split>/class_name/image.jpg) under it.",
        file=sys.stderr,
    )
    return 2
  for path, reason in bad:
    print(f"{path}: {reason}")
  if bad:
    print(
        f"{len(bad)} of {total} images under {root} are unreadable. Training skips them (and "
        "names the first few in its log); remove or replace them to train on every image."
    )
    return 1
  print(f"All {total} images under {root} decode.")
  return 0


if __name__ == "__main__":
  from incres import runtime  # pylint: disable=g-import-not-at-top

  runtime.run_command_line(main)  # Quiet start-up; a user error: its message, exit 2, no traceback.
