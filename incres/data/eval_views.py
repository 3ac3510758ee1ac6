"""The test views of the training loop's evaluation: the single original view (`eval_single`) and
ResNet's centre crop (`eval_center`). `incres.evaluate` makes the papers' multi-crop views."""

from __future__ import annotations

import tensorflow as tf

from incres.data import crops, decoding, image_ops

# ResNet's test view: shorter side 256 for a 224 crop; other crop sizes scale it.
EVAL_RESIZE_RATIO = 256 / 224


def eval_single(image: tf.Tensor, *, size: int, mean: tf.Tensor) -> tf.Tensor:
  """The single original view (ResNet §4.2), resized to `size`×`size` only if it is not so."""
  return image_ops.resized_to(image_ops.to_float(decoding.decode(image)), size) - mean


def eval_center(image: tf.Tensor, *, size: int, mean: tf.Tensor) -> tf.Tensor:
  """Shorter side 256, centre 224 crop (scaled by `size / 224` for other crop sizes).

  An encoded image is cropped first (`crops.resized_crop`: of a JPEG only the centre window is
  decoded). A decoded one is resized whole, then cropped: the reference, which `incres.evaluate`'s
  view tables reproduce pixel for pixel; the two agree up to the resampling kernel
  (`crops.ANTIALIAS_ABOVE`).
  """
  shorter = round(size * EVAL_RESIZE_RATIO)
  if image.dtype == tf.string:

    def box(height, width):
      new_shape = image_ops.shorter_side_shape(height, width, shorter)
      return new_shape[0], new_shape[1], (new_shape[0] - size) // 2, (new_shape[1] - size) // 2

    return crops.resized_crop(image, size, box) * (1.0 / 255.0) - mean
  x = image_ops.resize_shorter_side(image_ops.to_float(image), shorter)
  return tf.ensure_shape(image_ops.center_crop(x, size), [size, size, 3]) - mean
