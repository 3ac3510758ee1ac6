"""Examples out of a source: decoding, index -> (image, label), and `eval_images`."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from incres.data import decoding, sources, tfdata


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> uint8 [H, W, 3]; fails (InvalidArgumentError) on unreadable bytes."""
  return decoding.decode(data)


def loader(
    source: sources.ArraySource, *, decode: bool = True
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """index -> (uint8 image [H, W, 3], int32 label), for a random-access source.

  With `decode=False` encoded images stay encoded (a scalar string), for the augmentations, which
  decode only the part they use.
  """
  images = tf.constant(source.images if source.kind == "array" else source.images.astype(bytes))
  labels = tf.constant(source.labels, tf.int32)
  finish = decode_image if decode else (lambda data: data)

  def load(index):
    if source.kind == "array":
      image = tf.gather(images, index)
    elif source.kind == "encoded":
      image = finish(tf.gather(images, index % tf.size(images, tf.int64)))
    else:
      image = finish(tf.io.read_file(tf.gather(images, index)))
    return image, tf.gather(labels, index)

  return load


def decodes(load: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]], index: int) -> bool:
  """Whether example `index` of a random-access source loads and decodes (whole) on its own."""
  try:
    decode_image(load(tf.constant(index, tf.int64))[0])
    return True
  except tf.errors.OpError:
    return False


def index_dataset(source: sources.Source) -> tf.data.Dataset:
  """(index, image) over a whole split in order, without unreadable images; for the pixel mean."""
  if isinstance(source, sources.ArraySource):
    load = loader(source)
    ds = tf.data.Dataset.range(len(source)).map(
        lambda i: (i, load(i)[0]), num_parallel_calls=tfdata.AUTOTUNE
    )
    return ds.ignore_errors()
  ds = source.builder.as_dataset(split=source.split, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.enumerate().map(
      lambda i, ex: (i, decode_image(ex["image"])), num_parallel_calls=tfdata.AUTOTUNE
  )
  return ds.ignore_errors()


def eval_images(config, split: str | None = None) -> tuple[tf.data.Dataset, int]:
  """`(dataset, n)`: a split's n examples in order, as (uint8 image [H, W, 3], int32 label).

  The images are as stored (decoded, not resized, cropped or normalised), for evaluation protocols
  that make their own views (`incres.evaluate`). Default split: `config.eval_split`.
  """
  source = sources.source(config, config.eval_split if split is None else split)
  n = sources.source_size(source)
  if isinstance(source, sources.ArraySource):
    load = loader(source)
    ds = tf.data.Dataset.range(n).map(load, num_parallel_calls=tfdata.AUTOTUNE)
  else:
    ds = source.builder.as_dataset(
        split=source.split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    ds = ds.map(
        lambda ex: (decode_image(ex["image"]), tf.cast(ex["label"], tf.int32)),
        num_parallel_calls=tfdata.AUTOTUNE,
    )
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options), n
