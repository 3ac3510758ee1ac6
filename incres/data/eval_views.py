"""The test views of the training loop's evaluation: the single original view (`eval_single`) and
ResNet's centre crop (`eval_center`). `incres.evaluate` makes the papers' multi-crop views."""

from __future__ import annotations

import tensorflow as tf

from incres import configs
from incres.data import crops, decoding, image_ops

# ResNet's test view: shorter side 256 for a 224 crop; other crop sizes scale it.
EVAL_RESIZE_RATIO = configs.EVAL_RESIZE_RATIO


def eval_single(image: tf.Tensor, *, size: int, mean: tf.Tensor) -> tf.Tensor:
  """The single original view (ResNet §4.2), resized to `size`×`size` only if it is not so."""
  return image_ops.resized_to(image_ops.to_float(decoding.decode(image)), size) - mean


def eval_center(
    image: tf.Tensor, *, size: int, mean: tf.Tensor, resize: int | None = None
) -> tf.Tensor:
  """Shorter side 256, centre 224 crop (scaled by `size / 224` for other crop sizes); with `resize`,
  shorter side `resize` and centre `size` crop in torchvision's geometry (FixRes-style evaluation,
  `configs.eval_view_sizes`).

  `resize` None keeps the view incres has always taken: the longer side rounded, the crop's offset
  the floor of half the margin. With `resize`, the view of torchvision's `ClassificationPresetEval`
  (`Resize(resize, bilinear, antialias=True)`, `CenterCrop(size)`; v2's kernels): the longer side
  `int(resize * long / short)` and the offset `round(margin / 2)`, halves to even, so that a recipe
  evaluated at torchvision's sizes sees its pixels (a one-pixel shift otherwise, e.g. a 235 resize
  of a square image: offset 6 for torchvision, 5 by the floor). The old view is kept as it was so
  that runs without the FixRes keys evaluate bitwise as before.

  An encoded image is cropped first (`crops.resized_crop`: of a JPEG only the centre window is
  decoded). A decoded one is resized whole, then cropped: the reference, which `incres.evaluate`'s
  view tables reproduce pixel for pixel; the two agree up to the resampling kernel
  (`crops.ANTIALIAS_ABOVE`).
  """
  torchvision = resize is not None
  shorter = round(size * EVAL_RESIZE_RATIO) if resize is None else resize
  shape_fn = (
      image_ops.torchvision_shorter_side_shape if torchvision else image_ops.shorter_side_shape
  )

  def offset(length):
    return (
        image_ops.torchvision_center_offset(length, size) if torchvision else (length - size) // 2
    )

  if image.dtype == tf.string:

    def box(height, width):
      new_shape = shape_fn(height, width, shorter)
      return new_shape[0], new_shape[1], offset(new_shape[0]), offset(new_shape[1])

    return crops.resized_crop(image, size, box) * (1.0 / 255.0) - mean
  x = image_ops.resize_shorter_side(
      image_ops.to_float(image), shorter, torchvision_shape=torchvision
  )
  if torchvision:
    shape = tf.shape(x)
    x = tf.image.crop_to_bounding_box(x, offset(shape[0]), offset(shape[1]), size, size)
  else:
    x = image_ops.center_crop(x, size)
  return tf.ensure_shape(x, [size, size, 3]) - mean
