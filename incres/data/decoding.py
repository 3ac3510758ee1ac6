"""Decoding encoded images (JPEG, PNG, BMP, GIF): whole (`decode`), or of a JPEG only the window a
view uses (`decode_window`), which gives the same pixels as decoding everything and cropping after
(`tf.image.decode_and_crop_jpeg`, issue #15). A JPEG cut short fails without libjpeg's own line on
stderr.
"""

from __future__ import annotations

import io
import re

import tensorflow as tf


def decode(image: tf.Tensor) -> tf.Tensor:
  """uint8 `[H, W, 3]` of an encoded image (JPEG, PNG, BMP, first GIF frame); decoded ones as is.

  Fails with `InvalidArgumentError` on unreadable bytes, without libjpeg's own line on stderr for a
  JPEG cut short (see `_refuse_unreadable_jpeg`).
  """
  if image.dtype != tf.string:
    return image
  with tf.control_dependencies(_refuse_unreadable_jpeg(image)):
    return tf.io.decode_image(image, channels=3, expand_animations=False)


def _ends_with_eoi(data: tf.Tensor) -> tf.Tensor:
  """Whether the bytes end with JPEG's end-of-image marker."""
  tail = tf.strings.substr(data, tf.maximum(tf.strings.length(data) - 2, 0), 2)
  return tf.equal(tail, b"\xff\xd9")


def _is_complete_jpeg(data: tf.Tensor) -> tf.Tensor:
  """A JPEG that ends with its end-of-image marker.

  A truncated JPEG is decoded whole (and fails, as it always did) rather than by window: a window
  above the cut would decode, so whether a damaged file is skipped would depend on the crop drawn.
  """
  return tf.io.is_jpeg(data) & _ends_with_eoi(data)


def _pillow_failure(data: bytes) -> str:
  """Why Pillow cannot decode the encoded image `data` whole, or "" if it can."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (only for damaged-looking JPEGs)

  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Image.DecompressionBombError:
    return ""  # Too large for Pillow's default limit, not damaged: TensorFlow decides.
  except Exception as e:  # pylint: disable=broad-except  (any failure to decode)
    reason = re.sub(r"\s*<[^>]*>", "", str(e)).strip()  # Without "<_io.BytesIO object at ...>".
    return (
        "Invalid JPEG data: it does not end with the end-of-image marker (a file cut short?) and"
        f" does not decode ({reason or type(e).__name__})"
    )
  return ""


def _refuse_unreadable_jpeg(image: tf.Tensor) -> list[tf.Operation]:
  """Ops that fail (`InvalidArgumentError`) on a JPEG that lacks its end marker and does not decode.

  libjpeg, under TensorFlow's decoders, prints "Improper call to JPEG library in state 201" (or
  "Unsupported marker type ...") on stderr for such a file, each time it is decoded, besides the
  error incres reports; no TensorFlow option silences it, and redirecting stderr around a decode
  would silence every other thread too. So a JPEG that does not end with its end-of-image marker
  (a damaged file, or one with bytes after the marker, which decodes) is first decoded by Pillow,
  which reports by raising: one that fails never reaches libjpeg under TensorFlow. Complete JPEGs
  and other formats cost one comparison of their last two bytes.
  """
  if tf.executing_eagerly():
    if bool(tf.io.is_jpeg(image)) and not bool(_ends_with_eoi(image)):
      reason = _pillow_failure(image.numpy())
      if reason:
        raise tf.errors.InvalidArgumentError(None, None, reason)
    return []

  def pillow():
    reason = tf.py_function(lambda data: _pillow_failure(data.numpy()), [image], tf.string)
    return tf.ensure_shape(reason, [])

  reason = tf.cond(tf.io.is_jpeg(image) & ~_ends_with_eoi(image), pillow, lambda: tf.constant(""))
  return [tf.debugging.Assert(tf.equal(reason, ""), [reason])]


def decode_window(image: tf.Tensor, window_fn):
  """`(pixels, extras)`: the box `[top, left, h, w]` of `window_fn(height, width) -> (box, extras)`
  of `image` (uint8 or encoded), decoding only that box of a JPEG."""
  if image.dtype != tf.string:
    shape = tf.shape(image)
    box, extras = window_fn(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3]), extras

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image)  # Reads the header only.
    box, extras = window_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(image, box, channels=3), extras

  def other():
    decoded = decode(image)
    shape = tf.shape(decoded)
    box, extras = window_fn(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(decoded, box[0], box[1], box[2], box[3]), extras

  return tf.cond(_is_complete_jpeg(image), jpeg, other)
