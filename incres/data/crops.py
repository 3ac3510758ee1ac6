"""Resized crops made crop first: of a view (a square of the image resized), only the window of the
original under it is decoded (of a JPEG) and resampled, on the host (`resized_crop`) or, shipped
as uint8 with its sampling positions, in the train step (`resized_crop_for_device`, finished by
`incres.data.device_resample`). ResNet's scale augmentation and the centre evaluation view use
them (issue #15: the view a whole-image resize then crop gives, without the work outside it).
"""

from __future__ import annotations

import math

import tensorflow as tf

from incres import wire
from incres.data import decoding

# A view that shrinks the image by more than this factor is resampled with the antialiased
# (triangle) kernel of `tf.image.resize(..., antialias=True)`, as the whole-image implementation
# did; up to it, with plain bilinear interpolation at the same sampling positions (identical when
# the view is enlarged). Up to 2x every source pixel still reaches the output. On the noisy 375x500
# fake JPEGs of benchmarks/input_pipeline.py (a harsh case) bilinear ResNet crops differ from the
# antialiased ones by 0.3/255 per pixel on average (1.4/255 for the worst of 40 views), the centre
# view by 2.0/255; on one core the antialiased resampler (`tf.raw_ops.ScaleAndTranslate`) took
# 3.7 ms a view against 2.1 for bilinear (`tf.image.crop_and_resize`) and 2.2 for decoding the
# window. ImageNet's ResNet crops shrink by at most shorter side / 256 (1.46 for a 375-pixel
# side), so only large photos take the antialiased path.
ANTIALIAS_ABOVE = 2.0


def _source_span(length: tf.Tensor, new_length: tf.Tensor, start: tf.Tensor, size: int):
  """`(scale, lo, hi)`: rows `[lo, hi)` of the original that `[start, start + size)` of it resized
  to `new_length` reads, with the resampling kernel's reach (+1) as margin."""
  scale = tf.cast(new_length, tf.float32) / tf.cast(length, tf.float32)
  reach = tf.math.ceil(tf.maximum(1.0 / scale, 1.0)) + 1.0
  start = tf.cast(start, tf.float32)
  lo = tf.maximum(tf.floor(start / scale) - reach, 0.0)
  hi = tf.minimum(tf.math.ceil((start + size) / scale) + reach, tf.cast(length, tf.float32))
  return scale, tf.cast(lo, tf.int32), tf.cast(hi, tf.int32)


def _resample(
    window: tf.Tensor, size: int, scale, offset, flip: tf.Tensor | None = None
) -> tf.Tensor:
  """float32 `[size, size, 3]` (0-255): output pixel `(i, j)` of `window` scaled by `scale` (per
  axis) and shifted by `offset`: the window's continuous coordinate `(i + 0.5 + offset) / scale`, as
  in `tf.image.resize` (half-pixel centres). Antialiased above ANTIALIAS_ABOVE, bilinear up to it.
  With `flip` (a boolean scalar) true, mirrored left to right: the bilinear path samples its
  columns in reverse order (no extra pass over the pixels), the antialiased one reverses them."""
  scale = tf.convert_to_tensor(scale, tf.float32)
  offset = tf.convert_to_tensor(offset, tf.float32)

  def antialiased():
    # tf.image.resize(antialias=True) is this op with translation 0 (exactly the same pixels).
    x = tf.raw_ops.ScaleAndTranslate(
        images=window[None],
        size=[size, size],
        scale=scale,
        translation=-offset,
        kernel_type="triangle",
        antialias=True,
    )[0]
    if flip is None:
      return x
    return tf.cond(flip, lambda: tf.reverse(x, [1]), lambda: x)

  def bilinear():
    # The sampling positions of `tf.image.resize` (pixel k's centre at k); at the image's edges it
    # clamps, which one replicated row and column each side reproduces (an upscaled view samples
    # up to half a pixel outside). Inside the image the margin of `_source_span` is read instead.
    x = tf.concat([window[:1], window, window[-1:]], 0)
    x = tf.concat([x[:, :1], x, x[:, -1:]], 1)
    # Cast before sampling: crop_and_resize reads float32 faster than uint8 (1.0 against 1.4 ms a
    # 224² view on one EPYC core), more than the cast costs (the same values: uint8 is exact).
    x = tf.cast(x, tf.float32)
    box = _bilinear_box(tf.shape(window)[:2], size, scale, offset, flip)
    return tf.image.crop_and_resize(x[None], box[None], [0], [size, size])[0]

  x = tf.cond(_antialiased(scale), antialiased, bilinear)
  return tf.ensure_shape(x, [size, size, 3])


def _antialiased(scale: tf.Tensor) -> tf.Tensor:
  """Whether `_resample` takes the antialiased kernel for this `[scale_y, scale_x]`."""
  return tf.reduce_max(1.0 / scale) > ANTIALIAS_ABOVE


def _bilinear_box(window_shape, size: int, scale, offset, flip) -> tf.Tensor:
  """The `tf.image.crop_and_resize` box `[y1, x1, y2, x2]` (normalised) of `_resample`'s bilinear
  view in the window of `window_shape` with one replicated row and column each side."""
  extent = tf.cast(window_shape, tf.float32) + 1.0  # (shape + 2) - 1.
  first = (offset + 0.5) / scale + 0.5  # -0.5 in the window, +1 for the replicated edge.
  last = (offset + size - 0.5) / scale + 0.5
  if flip is not None:  # crop_and_resize mirrors a box whose x1 > x2.
    first, last = (
        tf.stack([first[0], tf.where(flip, last[1], first[1])]),
        tf.stack([last[0], tf.where(flip, first[1], last[1])]),
    )
  return tf.concat([first, last], 0) / tf.tile(extent, [2])


def resized_crop(
    image: tf.Tensor, size: int, box_fn, *, flip: tf.Tensor | None = None
) -> tf.Tensor:
  """float32 `[size, size, 3]` on the pixel scale [0, 255] (callers fold the 1/255 into their
  normalisation: one pass less): the `size` square at `(top, left)` of the image resized to
  `new_h`×`new_w`, where `box_fn(height, width) -> (new_h, new_w, top, left)`; mirrored left to
  right where `flip` (a boolean scalar) is true.

  Only the window of the original under that square is decoded and resampled (crop, then resize):
  the view a whole-image resize then crop gives, without the work outside the crop.
  """

  window, scale, offset = _decode_view_window(image, size, box_fn)
  return _resample(window, size, scale, offset, flip)


def _decode_view_window(image: tf.Tensor, size: int, box_fn):
  """`(window, [scale_y, scale_x], [offset_y, offset_x])`: the decoded window of `image` under
  `resized_crop`'s view, its scale and the view's offset in it (in resized pixels)."""

  def window_fn(height, width):
    new_h, new_w, top, left = box_fn(height, width)
    scale_y, r0, r1 = _source_span(height, new_h, top, size)
    scale_x, c0, c1 = _source_span(width, new_w, left, size)
    # The square starts `top - r0 * scale_y` resized pixels into the window.
    offset_y = tf.cast(top, tf.float32) - tf.cast(r0, tf.float32) * scale_y
    offset_x = tf.cast(left, tf.float32) - tf.cast(c0, tf.float32) * scale_x
    return tf.stack([r0, c0, r1 - r0, c1 - c0]), (scale_y, scale_x, offset_y, offset_x)

  window, (scale_y, scale_x, offset_y, offset_x) = decoding.decode_window(image, window_fn)
  return window, tf.stack([scale_y, scale_x]), tf.stack([offset_y, offset_x])


def device_buffer_bytes(size: int) -> int:
  """Bytes of `resized_crop_for_device`'s buffer for a `size` view: the largest window the
  bilinear path reads (shrink <= ANTIALIAS_ABOVE = 2, plus `_source_span`'s margins: at most
  2·size + 8 pixels a side), which also holds the float32 view (4·size² ·3 bytes)."""
  side = math.ceil(ANTIALIAS_ABOVE * size) + 8
  return max(side * side * 3, 4 * size * size * 3)


def padded_buffer(flat: tf.Tensor, capacity: int) -> tf.Tensor:
  """uint8 `flat` followed by zeros up to `capacity` bytes (flat: an image would be padded by
  `tf.pad`, 0.6 ms a window on one core)."""
  filler = tf.zeros([capacity - tf.size(flat)], tf.uint8)
  return tf.ensure_shape(tf.concat([flat, filler], 0), [capacity])


def float_buffer(x: tf.Tensor, capacity: int) -> tf.Tensor:
  """A float32 view's bytes (little-endian) at the start of a `capacity`-byte buffer."""
  return padded_buffer(tf.reshape(tf.bitcast(x, tf.uint8), [-1]), capacity)


def resized_crop_for_device(
    image: tf.Tensor, size: int, box_fn, *, flip: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
  """`resized_crop`'s view left for the accelerator to resample: `(buffer, params)`.

  `buffer` is uint8 `[device_buffer_bytes(size)]`: the decoded window under the view, row-major
  (`rows`×`cols`×3), zero-padded to a fixed length so that examples batch. `params` is float32
  `[3 + 2·size]`: `rows`, `cols`, `host_resampled`, then the `size` row and the `size` column
  sampling positions (columns descending when flipped) that `tf.image.crop_and_resize` computes for
  `resized_crop`'s bilinear view, in the window with one replicated row and column each side,
  computed here with its float32 roundings (`y1·(h - 1) + i·step`; on an accelerator XLA would
  fuse that multiply-add and move positions by an ulp). `incres.data.device_resample.view` samples
  them: the pixels of `resized_crop` to float32 rounding. The buffer is about as large as the
  float32 view it replaces (623,808 against 602,112 bytes at 224): the host saves the resampling,
  not bytes.

  A view that shrinks its window by more than ANTIALIAS_ABOVE is resampled here (the antialiased
  kernel, which the accelerator does not reproduce), as is one whose window would not fit the
  buffer (none should: `device_buffer_bytes` bounds the bilinear path's windows); its float32
  pixels are shipped bit for bit in the buffer's first 4·size²·3 bytes (`host_resampled` = 1).
  """
  capacity = device_buffer_bytes(size)
  layout = wire.resample_layout(size)  # All but its colour shift, which the caller appends.
  window, scale, offset = _decode_view_window(image, size, box_fn)
  shape = tf.shape(window)[:2]

  def on_host():
    x = _resample(window, size, scale, offset, flip)
    return float_buffer(x, capacity), layout.pack(
        tf.concat,
        rows=[1.0],
        cols=[1.0],
        host_resampled=[1.0],
        row_positions=tf.zeros([size]),
        col_positions=tf.zeros([size]),
    )

  def on_device():
    # crop_and_resize's own arithmetic: in_y = y1·(height - 1) + i·((y2 - y1)·(height - 1) /
    # (size - 1)), of the padded window (height = rows + 2); likewise for columns.
    box = _bilinear_box(shape, size, scale, offset, flip)
    extent = tf.cast(shape, tf.float32) + 1.0
    start = box[:2] * extent
    step = (box[2:] - box[:2]) * extent / float(max(size - 1, 1))
    positions = start[:, None] + tf.range(size, dtype=tf.float32)[None, :] * step[:, None]
    rows_cols = tf.cast(shape, tf.float32)
    return padded_buffer(tf.reshape(window, [-1]), capacity), layout.pack(
        tf.concat,
        rows=rows_cols[:1],
        cols=rows_cols[1:],
        host_resampled=[0.0],
        row_positions=positions[0],
        col_positions=positions[1],
    )

  fits = tf.size(window) <= capacity
  buffer, params = tf.cond(_antialiased(scale) | ~fits, on_host, on_device)
  return buffer, tf.ensure_shape(params, [layout.offset("colour_shift")])
