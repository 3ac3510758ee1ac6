"""Normalisation (the cached per-pixel mean), the recipes' per-example preprocessing and
`device_preprocess`, the part the train step finishes."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from typing import Any, Callable

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf

from incres import configs, fileio
from incres.data import (
    cifar_augment,
    device_photometric,
    device_resample,
    eval_views,
    googlenet_augment,
    imagenet_stats,
    loading,
    modern,
    placement,
    resnet_augment,
    sources,
    tfdata,
)


def normalization(config) -> str:
  """'pixel_mean' (CIFAR), 'channel_mean' (ImageNet recipes), 'mean_std' (torchvision's, and the
  "auto" of augment="random_resized_crop", whose torchvision and timm recipes divide by the std)
  or 'none'."""
  mode = config.get("normalize", "auto")
  if mode == "auto":
    if config.augment == modern.AUGMENT:
      return "mean_std"
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
  source = sources.source(config, config.train_split)
  s = config.image_size
  if isinstance(source, sources.ArraySource) and source.kind == "array":
    images = source.images
    if images.shape[1:3] != (s, s):
      images = tf.image.resize(images, [s, s], antialias=True).numpy()
    return (images.astype(np.float64).mean(axis=0) / 255.0).astype(np.float32)
  path = _mean_cache_path(config) if isinstance(source, sources.StreamSource) else None
  cached = _read_mean_cache(path, s) if path else None
  if cached is not None:
    return cached
  # One pass over the split, every image resized to S×S (the same view `eval_single` gives).
  ds = loading.index_dataset(source).map(
      lambda i, image: eval_views.eval_single(image, size=s, mean=0.0),
      num_parallel_calls=tfdata.AUTOTUNE,
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
    return tf.constant(imagenet_stats.IMAGENET_MEAN_RGB, tf.float32)
  key = tuple((k, _hashable(config.get(k))) for k in _MEAN_KEYS)
  return tf.constant(_pixel_mean(key))


def _hashable(value):
  """Tuples for lists (config fields may hold either)."""
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _scaled_by_std(config, fn: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """Divides `fn`'s mean-subtracted output by the ImageNet channel std (normalize="mean_std")."""
  if normalization(config) != "mean_std":
    return fn
  std = tf.constant(imagenet_stats.IMAGENET_STD_RGB, tf.float32)
  return lambda *args: fn(*args) / std


def device_preprocess(
    config, where: placement.Placement | None = None
) -> Callable[[dict[str, Any]], Any] | None:
  """`batch -> model input` for the train step when the pipeline leaves work to the accelerator
  (`where`, default `decide_placement(config)`), else None (the batch's 'image' is the input)."""
  where = placement.decide_placement(config) if where is None else where
  photometric_here, resample_here = where.photometric, where.resample
  if not (photometric_here or resample_here):
    return None
  mean = np.asarray(normalization_mean(config), np.float32)
  std = np.asarray(imagenet_stats.IMAGENET_STD_RGB, np.float32)
  std = std if normalization(config) == "mean_std" else None
  size = config.image_size
  if resample_here and config.augment == "googlenet":
    side = googlenet_augment.device_resize_max_side(size)
    return lambda batch: device_resample.googlenet_finish(
        batch["image"], batch["resize"], batch["photometric"], size, side, mean, std
    )
  if resample_here:
    return lambda batch: device_resample.finish(batch["image"], batch["resample"], size, mean, std)
  return lambda batch: device_photometric.finish(batch["image"], batch["photometric"], mean, std)


def train_fn(
    config, where: placement.Placement | None = None
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor | dict[str, tf.Tensor]]:
  """(image, seed) -> float32 [S, S, 3] for `config.augment`; the image uint8 or encoded bytes.

  `where` (default `decide_placement(config)`) says which part the train step finishes.

  With `photometric_on_device(config)`: a dict of the [0, 1] image and its `'photometric'` draws
  (the mean, std and distortions are applied by `device_preprocess`); with
  `resample_on_device(config)`: a dict of the crop's uint8 window (a flat buffer) and how to
  finish it (ResNet: `'resample'`, `crops.resized_crop_for_device`; GoogLeNet: `'resize'` and
  `'photometric'`), resampled and normalised by `device_preprocess`."""
  size = config.image_size
  where = placement.decide_placement(config) if where is None else where
  if where.photometric:  # GoogLeNet only.
    return functools.partial(
        googlenet_augment.googlenet_train,
        size=size,
        mean=0.0,
        photometric_on_device=True,
        resize_on_device=where.resample,
    )
  if where.resample:
    return functools.partial(
        resnet_augment.resnet_imagenet_train, size=size, mean=0.0, resample_on_device=True
    )
  if config.augment == modern.AUGMENT:  # Divides by the std itself: random erasing comes after.
    std = imagenet_stats.IMAGENET_STD_RGB if normalization(config) == "mean_std" else 1.0
    return modern.train_fn(
        config, mean=normalization_mean(config), std=tf.constant(std, tf.float32)
    )
  return _scaled_by_std(config, _unscaled_train_fn(config))


def as_example(out: tf.Tensor | dict[str, tf.Tensor], label: tf.Tensor) -> dict[str, tf.Tensor]:
  """A training example from a `train_fn` output and its label."""
  return {**out, "label": label} if isinstance(out, dict) else {"image": out, "label": label}


def _unscaled_train_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  s, mean = config.image_size, normalization_mean(config)
  if config.augment == "cifar":
    padding = configs.check_cifar_padding(config)
    configs.check_auto_augment(config)
    policy = modern.policy_fn(config)  # auto_augment after the pad-crop-flip (None: off).
    return lambda image, seed: tf.ensure_shape(
        cifar_augment.cifar_train(image, seed, mean=mean, size=s, padding=padding, policy=policy),
        [s, s, 3],
    )
  if config.augment == "resnet_imagenet":
    return functools.partial(resnet_augment.resnet_imagenet_train, size=s, mean=mean)
  if config.augment == "googlenet":
    return functools.partial(googlenet_augment.googlenet_train, size=s, mean=mean)
  if config.augment == "none":
    return lambda image, seed: eval_views.eval_single(image, size=s, mean=mean)
  raise ValueError(
      "augment must be cifar, resnet_imagenet, googlenet, random_resized_crop or none, not"
      f" {config.augment!r}."
  )


def preprocess_for_eval(image: np.ndarray, config) -> np.ndarray:
  """One decoded uint8 [H, W, 3] image -> the float32 [E, E, 3] view the evaluation uses
  (E = `eval_image_size(config)`)."""
  return eval_fn(config)(tf.convert_to_tensor(image, tf.uint8)).numpy()


def eval_image_size(config) -> int:
  """The side of the evaluation view: `eval_crop_size` for a FixRes-style view
  (`configs.eval_view_sizes`), else `image_size`."""
  sizes = configs.eval_view_sizes(config)
  return config.image_size if sizes is None else sizes[1]


def eval_mean(config) -> tf.Tensor | float:
  """The mean the evaluation view subtracts: `normalization_mean(config)`, except that a per-pixel
  mean image (image_size²) becomes its per-channel average for a view of another size, as
  `incres.evaluate` does for its views of other sizes (no mean image of that size exists)."""
  mean = normalization_mean(config)
  if getattr(mean, "shape", None) is not None and mean.shape.rank == 3:
    if eval_image_size(config) != config.image_size:
      return tf.reduce_mean(mean, axis=(0, 1))
  return mean


def eval_fn(config) -> Callable[[tf.Tensor], tf.Tensor]:
  """Image (uint8 or encoded) -> float32 [E, E, 3] for `config.eval_preprocess` and `normalize`
  (E = `eval_image_size(config)`)."""
  return _scaled_by_std(config, _unscaled_eval_fn(config))


def _unscaled_eval_fn(config) -> Callable[[tf.Tensor], tf.Tensor]:
  s = config.image_size
  if config.eval_preprocess == "single":
    configs.eval_view_sizes(config)  # The FixRes sizes need the centre view: refused here.
    return functools.partial(eval_views.eval_single, size=s, mean=normalization_mean(config))
  if config.eval_preprocess == "center":
    sizes = configs.eval_view_sizes(config)
    if sizes is None:
      return functools.partial(eval_views.eval_center, size=s, mean=normalization_mean(config))
    resize, crop = sizes
    return functools.partial(
        eval_views.eval_center, size=crop, mean=eval_mean(config), resize=resize
    )
  raise ValueError(f"eval_preprocess must be single or center, not {config.eval_preprocess!r}.")
