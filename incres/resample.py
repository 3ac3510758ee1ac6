"""ResNet's crop resampling on the accelerator, inside the jitted train step (config `resample`).

On the host, ResNet's scale augmentation (`incres.augment.resnet_imagenet_train`) decodes the
window of the JPEG under the drawn 224 view, resamples it (`tf.image.crop_and_resize`, mirrored
when flipped) and normalises it. Resampling and normalising cost as much as decoding: on one EPYC
core the host delivers ~600 views/s, ~1,030/s when it only decodes the window and ships it
(benchmarks/RESULTS.md), which left a 16-core GPU host unable to feed ResNet-50. With
`resample="device"` the host ships the uint8 window and its sampling positions
(`augment.resized_crop_for_device`: the same draws, so resuming stays exact) and `finish` does the
rest here: a few gathers and elementwise passes over the batch.

`view` is `tf.image.crop_and_resize`'s bilinear kernel, written out: output row `i` reads the
window's rows `floor(y)` and `ceil(y)` at `y = y0 + i·y_step` (positions in the window with one
replicated row each side, so row `r` of it is window row `clip(r - 1, 0, rows - 1)`) and blends
them with `y - floor(y)`; columns likewise; `top + (bottom - top)·dy` after
`left + (right - left)·dx`, the kernel's order. The pixels equal the host's bit for bit op by op,
and jitted up to the rounding of the sampling positions (tested). A view the host resampled
itself (its antialiased kernel, for views shrunk more than 2x) arrives as its float32 pixels'
bytes and is taken as is. Each read gathers whole pixels (3 bytes) from the window's buffer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Indices into the parameters (`augment.DEVICE_RESAMPLE_PARAMS`, then the colour shift).
_ROWS, _COLS, _Y0, _Y_STEP, _X0, _X_STEP, _HOST_RESAMPLED = range(7)
_SHIFT = slice(7, 10)


def _positions(start: jax.Array, step: jax.Array, size: int, length: jax.Array):
  """`(low, high, frac)`: window indices and weight of `size` sampling positions `start + k·step`
  of the padded window (one replicated pixel each side of `length` pixels)."""
  p = start + jnp.arange(size, dtype=jnp.float32) * step
  low = jnp.floor(p)
  high = jnp.ceil(p)
  last = length.astype(jnp.int32) - 1
  to_window = lambda q: jnp.clip(q.astype(jnp.int32) - 1, 0, last)
  return to_window(low), to_window(high), p - low


def view(buffer: jax.Array, params: jax.Array, size: int) -> jax.Array:
  """float32 `[size, size, 3]` on the pixel scale [0, 255] of one example's `(buffer, params)`
  (`augment.resized_crop_for_device`)."""
  cols = params[_COLS].astype(jnp.int32)
  top, bottom, dy = _positions(params[_Y0], params[_Y_STEP], size, params[_ROWS])
  left, right, dx = _positions(params[_X0], params[_X_STEP], size, params[_COLS])
  pixels = buffer.reshape(-1, 3)  # The buffer's length is a multiple of 3.

  def read(rows, columns):
    index = rows[:, None] * cols + columns[None, :]
    return jnp.take(pixels, index, axis=0, mode="clip").astype(jnp.float32)

  dx = dx[None, :, None]
  upper = read(top, left) + (read(top, right) - read(top, left)) * dx
  lower = read(bottom, left) + (read(bottom, right) - read(bottom, left)) * dx
  sampled = upper + (lower - upper) * dy[:, None, None]
  # A view resampled on the host: its float32 pixels' bytes (little-endian, as tf.bitcast wrote).
  shipped = buffer[: size * size * 3 * 4].reshape(size, size, 3, 4)
  shipped = jax.lax.bitcast_convert_type(shipped, jnp.float32)
  return jnp.where(params[_HOST_RESAMPLED] > 0.5, shipped, sampled)


def finish(
    buffer: jax.Array, params: jax.Array, size: int, mean: Any, std: Any = None
) -> jax.Array:
  """The model's input from a batch's uint8 `[B, N]` buffers and float32 `[B, 10]` parameters:
  each view resampled (`view`), scaled to [0, 1], shifted by its colour shift, minus `mean`
  (divided by `std`), as `augment.resnet_imagenet_train` does on the host."""
  x = jax.vmap(view, in_axes=(0, 0, None))(buffer, params, size)
  x = x * (1.0 / 255.0) + (params[:, None, None, _SHIFT] - jnp.asarray(mean, jnp.float32))
  return x if std is None else x / jnp.asarray(std, jnp.float32)
