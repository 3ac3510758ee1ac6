"""The small stateless image ops the recipes share: seed splitting, the [0, 1] scale, shorter-side
resizing, the centre crop and the flip decision.

Only stateless random ops are used, so each recipe's output is a pure function of (image, seed):
the same eagerly and inside `tf.data`, whatever the parallelism, which is what makes resumed
training exact (`incres.data.pipeline` seeds each example by its position in the training stream).
"""

from __future__ import annotations

import tensorflow as tf


def split_seed(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  """Splits one stateless seed into `n` independent ones."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return tf.cast(image, tf.float32) / 255.0


def shorter_side_shape(height: tf.Tensor, width: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
  """`[new_h, new_w]` (int32) with the shorter side `size` and the aspect kept."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  size = tf.cast(size, tf.float32)
  scale = size / tf.minimum(h, w)
  # Rounding the longer side only: the shorter one must be exactly `size`.
  new_h = tf.where(h <= w, size, tf.round(h * scale))
  new_w = tf.where(h <= w, tf.round(w * scale), size)
  return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def torchvision_shorter_side_shape(
    height: tf.Tensor, width: tf.Tensor, size: tf.Tensor | int
) -> tf.Tensor:
  """`[new_h, new_w]` (int32) as torchvision's `Resize(size)` computes it
  (`_compute_resized_output_size`): the shorter side `size`, the longer `int(size * long / short)`,
  truncated, in float64 as Python divides (`shorter_side_shape` rounds it instead)."""
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  size = tf.cast(size, tf.float64)
  new_h = tf.where(h <= w, size, tf.floor(size * h / w))
  new_w = tf.where(h <= w, tf.floor(size * w / h), size)
  return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def torchvision_center_offset(length: tf.Tensor, size: int) -> tf.Tensor:
  """The start (int32) of torchvision's `center_crop` of `size` in `length`: `round((length -
  size) / 2)`, halves to even as Python's `round` (`center_crop` takes the floor instead)."""
  return tf.cast(tf.round(tf.cast(length - size, tf.float64) / 2.0), tf.int32)


def resize_shorter_side(
    image: tf.Tensor, size: tf.Tensor | int, *, torchvision_shape: bool = False
) -> tf.Tensor:
  """Resizes (bilinear, antialiased) so that the shorter side is `size`, keeping the aspect: the
  longer side rounded (`shorter_side_shape`), or with `torchvision_shape` truncated as torchvision's
  `Resize` does (`torchvision_shorter_side_shape`)."""
  shape = tf.shape(image)
  shape_fn = torchvision_shorter_side_shape if torchvision_shape else shorter_side_shape
  new_shape = shape_fn(shape[0], shape[1], size)
  return tf.image.resize(image, new_shape, method="bilinear", antialias=True)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central `size`×`size` square."""
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def resized_to(x: tf.Tensor, size: int) -> tf.Tensor:
  """`x` (float) resized to `size`×`size` only if it is not so already (then it is unchanged)."""
  shape = tf.shape(x)
  x = tf.cond(
      (shape[0] == size) & (shape[1] == size),
      lambda: x,
      lambda: tf.image.resize(x, [size, size], method="bilinear", antialias=True),
  )
  return tf.ensure_shape(x, [size, size, 3])


def flips(seed: tf.Tensor) -> tf.Tensor:
  """The decision of `tf.image.stateless_random_flip_left_right(image, seed)` for one image
  (tensorflow/python/ops/image_ops_impl.py, `_random_flip`: a uniform draw below 0.5 mirrors)."""
  return tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0) < 0.5
