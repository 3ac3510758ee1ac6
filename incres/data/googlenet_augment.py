"""GoogLeNet's training augmentation (§6): a crop of 8%–100% of the area with aspect ratio in
[3/4, 4/3], a random interpolation to the input size, a flip, the photometric distortions
(`incres.data.photometric`), the mean.

Of a JPEG only the crop's window is decoded (`decoding.decode_window`). With
`photometric_on_device=True` the colour distortions, and with `resize_on_device=True` also the
resize and flip, are left to the train step (`incres.data.device_photometric`,
`incres.data.device_resample.googlenet_finish`), with the same draws.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from incres import wire
from incres.data import crops, decoding, image_ops, photometric

# GoogLeNet §6: crop area and aspect ratio.
GOOGLENET_AREA_RANGE = (0.08, 1.0)
GOOGLENET_ASPECT_RANGE = (3 / 4, 4 / 3)
# GoogLeNet §6's random interpolation methods (`random_resize` draws one uniformly); the resize
# vector's "kernel" is an index into this tuple.
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")


def sample_crop_window(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    *,
    area_range: Sequence[float] = GOOGLENET_AREA_RANGE,
    aspect_range: Sequence[float] = GOOGLENET_ASPECT_RANGE,
    attempts: int = 10,
) -> tf.Tensor:
  """A random window `[top, left, h, w]` with area fraction and aspect (w/h) in the ranges.

  Area is uniform in `area_range` ("distributed evenly between 8% and 100%", GoogLeNet §6) and the
  aspect ratio log-uniform. Windows that do not fit are redrawn (`attempts` draws at once, the first
  that fits wins); if none fits, the largest centred window with an allowed aspect ratio is used.
  """
  draw_seed, offset_seed = image_ops.split_seed(seed, 2)
  u = tf.random.stateless_uniform([attempts, 2], draw_seed, dtype=tf.float32)
  h_img = tf.cast(height, tf.float32)
  w_img = tf.cast(width, tf.float32)
  area = h_img * w_img * (area_range[0] + (area_range[1] - area_range[0]) * u[:, 0])
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
  w = tf.round(tf.sqrt(area * aspect))
  h = tf.round(tf.sqrt(area / aspect))
  fits = (w <= w_img) & (h <= h_img) & (w >= 1) & (h >= 1)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback: the whole image with its aspect clamped into range, centred.
  image_aspect = w_img / h_img
  fb_w = tf.where(image_aspect > aspect_range[1], tf.round(h_img * aspect_range[1]), w_img)
  fb_h = tf.where(image_aspect < aspect_range[0], tf.round(w_img / aspect_range[0]), h_img)
  any_fits = tf.reduce_any(fits)
  crop_h = tf.cast(tf.where(any_fits, h[first], fb_h), tf.int32)
  crop_w = tf.cast(tf.where(any_fits, w[first], fb_w), tf.int32)
  offsets = tf.random.stateless_uniform([2], offset_seed, dtype=tf.float32)
  top = tf.cast(offsets[0] * tf.cast(height - crop_h + 1, tf.float32), tf.int32)
  left = tf.cast(offsets[1] * tf.cast(width - crop_w + 1, tf.float32), tf.int32)
  top = tf.where(any_fits, tf.minimum(top, height - crop_h), (height - crop_h) // 2)
  left = tf.where(any_fits, tf.minimum(left, width - crop_w), (width - crop_w) // 2)
  return tf.stack([top, left, crop_h, crop_w])


def random_resize(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Resizes to `size`×`size` with an interpolation drawn uniformly from `INTERPOLATIONS`."""
  which = tf.random.stateless_uniform([], seed, maxval=len(INTERPOLATIONS), dtype=tf.int32)
  branches = [lambda m=m: tf.image.resize(image, [size, size], method=m) for m in INTERPOLATIONS]
  return tf.clip_by_value(tf.switch_case(which, branches), 0.0, 1.0)  # Bicubic overshoots.


def device_resize_max_side(size: int) -> int:
  """The longest window side `googlenet_train(..., resize_on_device=True)` leaves to the
  accelerator: about the longest that fits `crops.device_buffer_bytes(size)` at GoogLeNet's most
  elongated aspect (4/3; the buffer's size is checked too), and at most a 3x shrink (area's TAPS
  in `incres.data.device_resample`)."""
  pixels = crops.device_buffer_bytes(size) // 3
  return min(3 * size, math.isqrt(pixels * 4 // 3) + 1)


def googlenet_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    mean: tf.Tensor,
    flip: bool = True,
    photometric_on_device: bool = False,
    resize_on_device: bool = False,
) -> tf.Tensor | dict[str, tf.Tensor]:
  """GoogLeNet §6: 8%–100% area crop, aspect in [3/4, 4/3], photometric distortions, random
  interpolation, then mean subtraction.

  The paper does not mention flips; `flip=True` adds the horizontal flip every ImageNet recipe since
  AlexNet uses (and the Inception reference preprocessing does).

  `photometric_on_device=True` stops before the photometric distortions and the mean, and returns
  `{"image": [0, 1] image, "photometric": photometric.photometric_params}`: the accelerator
  finishes the batch (`incres.data.device_photometric.finish`, in the train step) with the same
  draws, to float32 rounding. `resize_on_device=True` (with it) stops after decoding the crop's
  window: `"image"` is the window, uint8, flattened and zero-padded to
  `crops.device_buffer_bytes(size)`, and `"resize"` float32
  `[5 + 2·(2·size + 2)]` says how to finish it: its rows and columns, the drawn kernel (an index
  into INTERPOLATIONS), the flip, 1 where the host resized it itself (a window with a side over
  `device_resize_max_side(size)`: its [0, 1] float32 pixels' bytes, flipped, fill the buffer's
  start), then each axis' sampling positions (`_resize_positions`).
  `incres.data.device_resample.googlenet_finish` resizes, flips and distorts in the train step.
  """
  crop_seed, resize_seed, flip_seed, color_seed = image_ops.split_seed(seed, 4)
  # Of a JPEG only the crop is decoded.
  x, _ = decoding.decode_window(image, lambda h, w: (sample_crop_window(h, w, crop_seed), ()))
  if resize_on_device:
    if not (photometric_on_device and flip):
      raise ValueError("resize_on_device needs photometric_on_device and flip.")
    out = _googlenet_window_for_device(x, size, resize_seed, flip_seed)
    return {**out, "photometric": photometric.photometric_params(color_seed)}
  x = random_resize(image_ops.to_float(x), size, resize_seed)
  if flip:
    x = tf.image.stateless_random_flip_left_right(x, seed=flip_seed)
  if photometric_on_device:
    return {"image": x, "photometric": photometric.photometric_params(color_seed)}
  x = photometric.photometric_distortions(x, color_seed)
  return x - mean


def _resize_positions(length: tf.Tensor, size: int) -> tf.Tensor:
  """float32 `[1 + size + (size + 1)]` for one axis of `length` pixels resized to `size` by
  `tf.image.resize`: the scale `length / size`, the half-pixel positions `(i + 0.5)·scale`
  (nearest; minus 0.5, bilinear and bicubic) and the cell edges `i·scale` (area), with the
  kernels' float32 roundings (an accelerator's compiler could fuse or reorder them, and one ulp
  can change a bicubic weight)."""
  scale = tf.cast(length, tf.float32) / float(size)
  i = tf.range(size + 1, dtype=tf.float32)
  return tf.concat([[scale], (i[:size] + 0.5) * scale, i * scale], 0)


def _googlenet_window_for_device(
    window: tf.Tensor, size: int, resize_seed: tf.Tensor, flip_seed: tf.Tensor
) -> dict[str, tf.Tensor]:
  """`{"image": buffer, "resize": params}` of `googlenet_train(..., resize_on_device=True)`."""
  capacity = crops.device_buffer_bytes(size)
  layout = wire.resize_layout(size)
  which = tf.random.stateless_uniform([], resize_seed, maxval=len(INTERPOLATIONS), dtype=tf.int32)
  mirrored = image_ops.flips(flip_seed)  # stateless_random_flip_left_right's decision.
  shape = tf.shape(window)[:2]
  axis_params = layout.field("row_axis").length

  def on_host():
    x = random_resize(image_ops.to_float(window), size, resize_seed)
    x = tf.where(mirrored, tf.reverse(x, [1]), x)
    return crops.float_buffer(x, capacity), layout.pack(
        tf.concat,
        rows=[1.0],
        cols=[1.0],
        kernel=[0.0],
        flip=[0.0],
        host_resized=[1.0],
        row_axis=tf.ones([axis_params]),
        col_axis=tf.ones([axis_params]),
    )

  def on_device():
    rows, cols = tf.unstack(tf.cast(shape, tf.float32))
    kernel, flip = tf.cast(which, tf.float32), tf.cast(mirrored, tf.float32)
    return crops.padded_buffer(tf.reshape(window, [-1]), capacity), layout.pack(
        tf.concat,
        rows=[rows],
        cols=[cols],
        kernel=[kernel],
        flip=[flip],
        host_resized=[0.0],
        row_axis=_resize_positions(shape[0], size),
        col_axis=_resize_positions(shape[1], size),
    )

  fits = tf.reduce_max(shape) <= device_resize_max_side(size)
  buffer, params = tf.cond(fits & (tf.size(window) <= capacity), on_device, on_host)
  return {"image": buffer, "resize": tf.ensure_shape(params, [layout.length])}
