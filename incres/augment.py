"""The papers' augmentations and test views, as seeded, stateless TensorFlow functions.

Every function maps one image and a `[2]` integer seed to a float32 image (`googlenet_train` with
`photometric_on_device=True`: the image before its colour distortions, and their draws, which the
train step applies, `incres.photometric`; `resnet_imagenet_train` with `resample_on_device=True`:
the crop's decoded window and where to sample it, `incres.resample`). The image is either
decoded, uint8 `[H, W, 3]`, or encoded bytes (a scalar string: JPEG, PNG, BMP, GIF); from a JPEG
the crops decode only the window they use (`tf.image.decode_and_crop_jpeg`, issue #15), which gives
the same view as decoding everything and cropping after. Only stateless random ops are used, so the output is a pure function of (image, seed): the same eagerly
and inside `tf.data`, whatever the parallelism, which is what makes resumed training exact
(`incres.data` seeds each example by its position in the training stream).

Pixel values are scaled to [0, 1] before the mean is subtracted. The papers' Caffe-era pipelines
worked on raw 0–255 values; the scale is absorbed by the BatchNorm after the first convolution and
[0, 1] keeps every input O(1) for the models without BatchNorm (GoogLeNet with LRN).
"""

from __future__ import annotations

import io
import math
import re
from typing import Sequence

import tensorflow as tf

from incres import wire

# Per-channel RGB mean of ImageNet on the [0, 1] scale (the values torchvision and the Flax example
# use). The ResNet paper subtracts a per-pixel mean; over random scales and crops of ImageNet that
# mean image is spatially flat, so a per-channel mean is the same thing in practice.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
# torchvision's normalisation divides by these too (normalize="mean_std", for imported weights).
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, §4.1): eigenvalues and eigenvectors
# (columns) of the 3×3 covariance of ImageNet RGB pixels on the [0, 1] scale, as published with
# fb.resnet.torch (55.46, 4.794, 1.148 on the 0–255 scale).
PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# ResNet §3.4 scale augmentation and test view, for a 224 crop; other crop sizes scale them.
RESNET_SCALE_RANGE = (256, 480)
EVAL_RESIZE_RATIO = 256 / 224

# GoogLeNet §6: crop area and aspect ratio.
GOOGLENET_AREA_RANGE = (0.08, 1.0)
GOOGLENET_ASPECT_RANGE = (3 / 4, 4 / 3)
# The paper cites Howard's photometric distortions without magnitudes; these are the ones of the
# Inception reference preprocessing (TF-slim `inception_preprocessing.distort_color`).
BRIGHTNESS_DELTA = 32 / 255
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  """Splits one stateless seed into `n` independent ones."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]."""
  return tf.cast(image, tf.float32) / 255.0


def _shorter_side_shape(height: tf.Tensor, width: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
  """`[new_h, new_w]` (int32) with the shorter side `size` and the aspect kept."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  size = tf.cast(size, tf.float32)
  scale = size / tf.minimum(h, w)
  # Rounding the longer side only: the shorter one must be exactly `size`.
  new_h = tf.where(h <= w, size, tf.round(h * scale))
  new_w = tf.where(h <= w, tf.round(w * scale), size)
  return tf.cast(tf.stack([new_h, new_w]), tf.int32)


def resize_shorter_side(image: tf.Tensor, size: tf.Tensor | int) -> tf.Tensor:
  """Resizes (bilinear, antialiased) so that the shorter side is `size`, keeping the aspect."""
  shape = tf.shape(image)
  new_shape = _shorter_side_shape(shape[0], shape[1], size)
  return tf.image.resize(image, new_shape, method="bilinear", antialias=True)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central `size`×`size` square."""
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _resized_to(x: tf.Tensor, size: int) -> tf.Tensor:
  """`x` (float) resized to `size`×`size` only if it is not so already (then it is unchanged)."""
  shape = tf.shape(x)
  x = tf.cond(
      (shape[0] == size) & (shape[1] == size),
      lambda: x,
      lambda: tf.image.resize(x, [size, size], method="bilinear", antialias=True),
  )
  return tf.ensure_shape(x, [size, size, 3])


# ---------------------------------------------------------------------------------------------
# Decoding only what a view uses
# ---------------------------------------------------------------------------------------------

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


def _decode_window(image: tf.Tensor, window_fn):
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
  """float32 `[size, size, 3]` (0-255): output pixel `(i, j)` of `window` scaled by `scale` (per axis)
  and shifted by `offset`: the window's continuous coordinate `(i + 0.5 + offset) / scale`, as in
  `tf.image.resize` (half-pixel centres). Antialiased above ANTIALIAS_ABOVE, bilinear up to it.
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

  window, (scale_y, scale_x, offset_y, offset_x) = _decode_window(image, window_fn)
  return window, tf.stack([scale_y, scale_x]), tf.stack([offset_y, offset_x])


def device_buffer_bytes(size: int) -> int:
  """Bytes of `resized_crop_for_device`'s buffer for a `size` view: the largest window the
  bilinear path reads (shrink <= ANTIALIAS_ABOVE = 2, plus `_source_span`'s margins: at most
  2·size + 8 pixels a side), which also holds the float32 view (4·size² ·3 bytes)."""
  side = math.ceil(ANTIALIAS_ABOVE * size) + 8
  return max(side * side * 3, 4 * size * size * 3)


def _padded(flat: tf.Tensor, capacity: int) -> tf.Tensor:
  """uint8 `flat` followed by zeros up to `capacity` bytes (flat: an image would be padded by
  `tf.pad`, 0.6 ms a window on one core)."""
  filler = tf.zeros([capacity - tf.size(flat)], tf.uint8)
  return tf.ensure_shape(tf.concat([flat, filler], 0), [capacity])


def _shipped(x: tf.Tensor, capacity: int) -> tf.Tensor:
  """A float32 view's bytes (little-endian) at the start of a `capacity`-byte buffer."""
  return _padded(tf.reshape(tf.bitcast(x, tf.uint8), [-1]), capacity)


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
  fuse that multiply-add and move positions by an ulp). `incres.resample.view` samples them: the
  pixels of `resized_crop` to float32 rounding. The buffer is about as large as the float32 view
  it replaces (623,808 against 602,112 bytes at 224): the host saves the resampling, not bytes.

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
    return _shipped(x, capacity), layout.pack(
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
    return _padded(tf.reshape(window, [-1]), capacity), layout.pack(
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


def resnet_scale_and_offset(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    scale_range: tuple[int, int] = RESNET_SCALE_RANGE,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """ResNet §3.4's draw for an image of `height`×`width`: `(shorter, [new_h, new_w], [top, left])`.

  The shorter side, the resized shape and the `size` crop's offset in the resized image, drawn
  with the ops of the original implementation (`tf.random.stateless_uniform` for the side,
  `tf.image.stateless_random_crop`'s offset draw), so that a seed gives the same view as before.
  """
  scale_seed, crop_seed, _, _ = _seeds(seed, 4)
  lo = round(scale_range[0] * size / 224)
  hi = round(scale_range[1] * size / 224)
  shorter = tf.random.stateless_uniform([], scale_seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
  new_shape = _shorter_side_shape(height, width, shorter)
  # `tf.image.stateless_random_crop(x, [size, size, 3], crop_seed)` on the resized image draws its
  # offset thus (tensorflow/python/ops/random_crop_ops.py).
  limit = tf.concat([new_shape - size + 1, [1]], 0)
  offset = tf.random.stateless_uniform([3], crop_seed, maxval=tf.int32.max, dtype=tf.int32) % limit
  return shorter, new_shape, offset[:2]


def cifar_train(
    image: tf.Tensor, seed: tf.Tensor, *, mean: tf.Tensor, pad: int = 4, size: int | None = None
) -> tf.Tensor:
  """ResNet §4.2: per-pixel mean subtraction, `pad` zero pixels each side, random crop, flip.

  The mean image is subtracted before padding: it is a per-pixel mean of the unshifted images, so it
  must be aligned with them, and the zero padding is then the mean colour, as in fb.resnet.torch.
  The crop has the input's size (32×32 on CIFAR). Deviation, for datasets that are not CIFAR: with
  `size`, an image of another size (a `folder:` of photos) is first resized to `size`×`size`, the
  view `eval_single` gives and the per-pixel mean is computed in; a 32×32 image is untouched.
  """
  crop_seed, flip_seed = _seeds(seed, 2)
  x = _to_float(decode(image))
  if size is not None:
    x = _resized_to(x, size)
  x = x - mean
  shape = tf.shape(x)
  x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
  x = tf.image.stateless_random_crop(x, shape, seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(x, seed=flip_seed)


def pca_shift(seed: tf.Tensor, std: float = 0.1) -> tf.Tensor:
  """AlexNet colour augmentation's RGB shift: sum_i alpha_i * lambda_i * v_i,
  alpha_i ~ N(0, std²)."""
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=std)
  eigvec = tf.constant(PCA_EIGENVECTORS, tf.float32)
  return tf.linalg.matvec(eigvec, alpha * tf.constant(PCA_EIGENVALUES, tf.float32))


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, std: float = 0.1) -> tf.Tensor:
  """AlexNet colour augmentation: `image` plus `pca_shift(seed, std)`."""
  return image + pca_shift(seed, std)


def _flips(seed: tf.Tensor) -> tf.Tensor:
  """The decision of `tf.image.stateless_random_flip_left_right(image, seed)` for one image
  (tensorflow/python/ops/image_ops_impl.py, `_random_flip`: a uniform draw below 0.5 mirrors)."""
  return tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0) < 0.5


def resnet_imagenet_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    mean: tf.Tensor,
    scale_range: tuple[int, int] = RESNET_SCALE_RANGE,
    pca_std: float = 0.1,
    resample_on_device: bool = False,
) -> tf.Tensor | dict[str, tf.Tensor]:
  """ResNet §3.4: shorter side uniform in [256, 480], random 224 crop, flip, mean, PCA colour.

  `scale_range` is given for a 224 crop and scaled by `size / 224`, so smaller inputs (e.g. 32×32
  digits) get the same relative augmentation. The crop is made before the resize: a 224 crop of the
  image resized to shorter side S is the resized crop of side 224·short/S of the original, so only
  that window is decoded (of a JPEG) and resampled (`resized_crop`). Same draws as
  `_resnet_imagenet_train_reference`, the whole-image implementation, and the same pixels up to
  the resampling kernel (ANTIALIAS_ABOVE).

  `resample_on_device=True` stops after decoding the window and returns `{"image": the window
  (uint8 buffer), "resample": its sampling parameters and the colour shift}`
  (`resized_crop_for_device`'s `[3 + 2·size]`, then the PCA shift's 3): the
  accelerator resamples, flips and normalises the batch (`incres.resample.finish`, in the train
  step) with the same draws, to float32 rounding. `mean` is then not used.
  """
  _, _, flip_seed, pca_seed = _seeds(seed, 4)

  def box(height, width):
    _, new_shape, offset = resnet_scale_and_offset(
        height, width, seed, size=size, scale_range=scale_range
    )
    return new_shape[0], new_shape[1], offset[0], offset[1]

  if resample_on_device:
    buffer, params = resized_crop_for_device(image, size, box, flip=_flips(flip_seed))
    # `params` packs `wire.resample_layout(size)` up to its last field, the colour shift.
    params = tf.concat([params, pca_shift(pca_seed, pca_std)], 0)
    return {
        "image": buffer,
        "resample": tf.ensure_shape(params, [wire.resample_layout(size).length]),
    }
  # The flip is the crop's sampling order, and 1/255, the mean and the colour shift one fused
  # affine map (issue #15: 17% of this function's time on one core); the same values as
  # flipping, scaling, subtracting and shifting in turn, to float32 rounding.
  x = resized_crop(image, size, box, flip=_flips(flip_seed))
  return x * (1.0 / 255.0) + (pca_shift(pca_seed, pca_std) - mean)


def _resnet_imagenet_train_reference(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    mean: tf.Tensor,
    scale_range: tuple[int, int] = RESNET_SCALE_RANGE,
    pca_std: float = 0.1,
) -> tf.Tensor:
  """`resnet_imagenet_train` as it was before issue #15: decode all, resize all, then crop.

  Kept as the reference the tests and `benchmarks/input_pipeline.py` compare the crop-first path
  with; not used for training.
  """
  scale_seed, crop_seed, flip_seed, pca_seed = _seeds(seed, 4)
  lo = round(scale_range[0] * size / 224)
  hi = round(scale_range[1] * size / 224)
  shorter = tf.random.stateless_uniform([], scale_seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
  x = resize_shorter_side(_to_float(decode(image)), shorter)
  x = tf.image.stateless_random_crop(x, [size, size, 3], seed=crop_seed)
  x = tf.image.stateless_random_flip_left_right(x, seed=flip_seed)
  return pca_lighting(x - mean, pca_seed, pca_std)


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
  draw_seed, offset_seed = _seeds(seed, 2)
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


# The photometric distortions, in the order of `photometric_params`' last four entries.
PHOTOMETRIC_OPS = ("brightness", "contrast", "saturation", "hue")


def photometric_params(seed: tf.Tensor) -> tf.Tensor:
  """The random draws of `photometric_distortions` as float32 `[8]`.

  Entries 0-3: the op applied at each of the four positions (an index into `PHOTOMETRIC_OPS`);
  4-7: the brightness delta, contrast factor, saturation factor and hue delta, drawn exactly as
  `tf.image.stateless_random_{brightness,contrast,saturation,hue}` draw them from their seeds.
  The accelerator applies them with `incres.photometric.distort` (config `photometric`).
  """
  order_seed, b_seed, c_seed, s_seed, h_seed = _seeds(seed, 5)
  order = tf.argsort(tf.random.stateless_uniform([len(PHOTOMETRIC_OPS)], order_seed))
  uniform = tf.random.stateless_uniform
  values = [
      uniform([], b_seed, minval=-BRIGHTNESS_DELTA, maxval=BRIGHTNESS_DELTA),
      uniform([], c_seed, minval=CONTRAST_RANGE[0], maxval=CONTRAST_RANGE[1]),
      uniform([], s_seed, minval=SATURATION_RANGE[0], maxval=SATURATION_RANGE[1]),
      uniform([], h_seed, minval=-HUE_DELTA, maxval=HUE_DELTA),
  ]
  return wire.PHOTOMETRIC.pack(
      tf.concat, order=tf.cast(order, tf.float32), magnitudes=tf.stack(values)
  )


def apply_photometric(image: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
  """The four distortions of `params` (`photometric_params`) in its order, each clipped to
  [0, 1]."""
  order = tf.cast(params[:4], tf.int32)
  ops = (
      lambda x: tf.image.adjust_brightness(x, params[4]),
      lambda x: tf.image.adjust_contrast(x, params[5]),
      lambda x: tf.image.adjust_saturation(x, params[6]),
      lambda x: tf.image.adjust_hue(x, params[7]),
  )
  x = image
  for position in range(len(ops)):
    # Bind the current `x` now: the branches are traced inside this iteration.
    x = tf.switch_case(order[position], [lambda op=op, x=x: op(x) for op in ops])
    x = tf.clip_by_value(x, 0.0, 1.0)
  return x


def photometric_distortions(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation and hue, applied in a random order; input/output in [0, 1].

  On the host these four cost more than the rest of GoogLeNet's augmentation together (the
  saturation and hue kernels convert every pixel to HSV and back): 2.1 against 1.3 ms per image
  on one EPYC core. `photometric="device"` moves them to the accelerator (`googlenet_train`).
  """
  return apply_photometric(image, photometric_params(seed))


def random_resize(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Resizes to `size`×`size` with an interpolation drawn uniformly from `INTERPOLATIONS`."""
  which = tf.random.stateless_uniform([], seed, maxval=len(INTERPOLATIONS), dtype=tf.int32)
  branches = [lambda m=m: tf.image.resize(image, [size, size], method=m) for m in INTERPOLATIONS]
  return tf.clip_by_value(tf.switch_case(which, branches), 0.0, 1.0)  # Bicubic overshoots.


def device_resize_max_side(size: int) -> int:
  """The longest window side `googlenet_train(..., resize_on_device=True)` leaves to the
  accelerator: about the longest that fits `device_buffer_bytes(size)` at GoogLeNet's most
  elongated aspect (4/3; the buffer's size is checked too), and at most a 3x shrink (area's TAPS
  in `incres.resample`)."""
  pixels = device_buffer_bytes(size) // 3
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
  `{"image": [0, 1] image, "photometric": photometric_params}`: the accelerator finishes the batch
  (`incres.photometric.finish`, in the train step) with the same draws, to float32 rounding.
  `resize_on_device=True` (with it) stops after decoding the crop's window: `"image"` is the window,
  uint8, flattened and zero-padded to `device_buffer_bytes(size)`, and `"resize"` float32
  `[5 + 2·(2·size + 2)]` says how to finish it: its rows and columns, the drawn kernel (an index
  into INTERPOLATIONS), the flip, 1 where the host resized it itself (a window with a side over
  `device_resize_max_side(size)`: its [0, 1] float32 pixels' bytes, flipped, fill the buffer's
  start), then each axis' sampling positions (`_resize_positions`).
  `incres.resample.googlenet_finish` resizes, flips and distorts in the train step.
  """
  crop_seed, resize_seed, flip_seed, color_seed = _seeds(seed, 4)
  # Of a JPEG only the crop is decoded.
  x, _ = _decode_window(image, lambda h, w: (sample_crop_window(h, w, crop_seed), ()))
  if resize_on_device:
    if not (photometric_on_device and flip):
      raise ValueError("resize_on_device needs photometric_on_device and flip.")
    out = _googlenet_window_for_device(x, size, resize_seed, flip_seed)
    return {**out, "photometric": photometric_params(color_seed)}
  x = random_resize(_to_float(x), size, resize_seed)
  if flip:
    x = tf.image.stateless_random_flip_left_right(x, seed=flip_seed)
  if photometric_on_device:
    return {"image": x, "photometric": photometric_params(color_seed)}
  x = photometric_distortions(x, color_seed)
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
  capacity = device_buffer_bytes(size)
  layout = wire.resize_layout(size)
  which = tf.random.stateless_uniform([], resize_seed, maxval=len(INTERPOLATIONS), dtype=tf.int32)
  mirrored = _flips(flip_seed)  # stateless_random_flip_left_right's decision.
  shape = tf.shape(window)[:2]
  axis_params = layout.field("row_axis").length

  def on_host():
    x = random_resize(_to_float(window), size, resize_seed)
    x = tf.where(mirrored, tf.reverse(x, [1]), x)
    return _shipped(x, capacity), layout.pack(
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
    return _padded(tf.reshape(window, [-1]), capacity), layout.pack(
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


def eval_single(image: tf.Tensor, *, size: int, mean: tf.Tensor) -> tf.Tensor:
  """The single original view (ResNet §4.2), resized to `size`×`size` only if it is not so."""
  return _resized_to(_to_float(decode(image)), size) - mean


def eval_center(image: tf.Tensor, *, size: int, mean: tf.Tensor) -> tf.Tensor:
  """Shorter side 256, centre 224 crop (scaled by `size / 224` for other crop sizes).

  An encoded image is cropped first (`resized_crop`: of a JPEG only the centre window is decoded).
  A decoded one is resized whole, then cropped: the reference, which `incres.evaluate`'s view
  tables reproduce pixel for pixel; the two agree up to the resampling kernel (ANTIALIAS_ABOVE).
  """
  shorter = round(size * EVAL_RESIZE_RATIO)
  if image.dtype == tf.string:

    def box(height, width):
      new_shape = _shorter_side_shape(height, width, shorter)
      return new_shape[0], new_shape[1], (new_shape[0] - size) // 2, (new_shape[1] - size) // 2

    return resized_crop(image, size, box) * (1.0 / 255.0) - mean
  x = resize_shorter_side(_to_float(image), shorter)
  return tf.ensure_shape(center_crop(x, size), [size, size, 3]) - mean
