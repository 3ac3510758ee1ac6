"""The crops' resampling on the accelerator, inside the jitted train step (config `resample`):
ResNet's (`finish`) and GoogLeNet's (`googlenet_finish`, below).

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
import numpy as np

from incres import photometric

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


# --- GoogLeNet: `augment.random_resize`'s four kernels ---------------------------------------------
#
# `tf.image.resize` (antialias=False) of the crop's window to size×size with the drawn kernel, in
# `augment.INTERPOLATIONS` order: bilinear and bicubic (Keys, a = -0.5) at half-pixel centres,
# area (box averaging, TensorFlow's ResizeArea), nearest (half-pixel centres). Each is separable:
# per axis, output index `i` reads at most TAPS input indices with weights (`_taps`), so one
# gather-and-sum pass per axis serves all four. The weights are TensorFlow's (its bicubic
# coefficient table, its edge renormalisation, ResizeArea's cell overlaps); only the order of the
# float32 sums differs, so the pixels agree to float32 rounding (tested against tf.image.resize).

TAPS = 4  # Input indices an output index reads at most: bicubic's 4; area's up to a 3x shrink.
_CUBIC_TABLE_SIZE = 1024


def _cubic_table() -> np.ndarray:
  """TensorFlow's bicubic coefficient table (resize_bicubic_op.cc, Keys' kernel, a = -0.5):
  `[2 * (table_size + 1)]`, each entry computed in float32 in TensorFlow's order."""
  a = np.float32(-0.5)
  table = np.zeros(2 * (_CUBIC_TABLE_SIZE + 1), np.float32)
  for i in range(_CUBIC_TABLE_SIZE + 1):
    x = np.float32(i / _CUBIC_TABLE_SIZE)
    table[2 * i] = ((a + 2) * x - (a + 3)) * x * x + 1
    x = np.float32(x + 1)
    table[2 * i + 1] = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return table


_CUBIC_TABLE = _cubic_table()


def _taps(method: jax.Array, length: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """`(index, weight)`, int32 and float32 `[size, TAPS]`: what output index `i` of an axis of
  `length` pixels resized to `size` reads with kernel `method` (an index into
  `augment.INTERPOLATIONS`)."""
  n = length.astype(jnp.int32)
  last = n - 1
  # TensorFlow's kernels round after every operation; XLA would fold a division by a constant into
  # a multiplication and a multiply-add into one rounding, which moves positions by an ulp (enough
  # to change a bicubic table entry). The barriers keep each rounding.
  exact = jax.lax.optimization_barrier
  scale = exact(length / exact(jnp.float32(size)))
  i = jnp.arange(size, dtype=jnp.float32)
  k = jnp.arange(TAPS, dtype=jnp.int32)
  zeros = jnp.zeros((size, TAPS), jnp.float32)

  # Bilinear: lower and upper neighbours of the half-pixel position.
  p = exact((i + 0.5) * scale) - 0.5
  f = jnp.floor(p)
  lerp = p - f
  lo = jnp.maximum(f.astype(jnp.int32), 0)
  hi = jnp.minimum(jnp.ceil(p).astype(jnp.int32), last)
  bilinear = (
      jnp.stack([lo, hi, lo, lo], 1),
      zeros.at[:, 0].set(1.0 - lerp).at[:, 1].set(lerp),
  )

  # Area: the input cells under [i·scale, (i + 1)·scale), each by its overlap, over the cell's size.
  start, end = exact(i * scale), exact((i + 1) * scale)
  first = jnp.floor(start)
  cell = first[:, None] + k[None, :].astype(jnp.float32)  # [size, TAPS] candidate cells.
  overlap = jnp.where(
      cell < start[:, None],
      jnp.where(cell + 1 > end[:, None], scale, cell + 1 - start[:, None]),
      jnp.where(cell + 1 > end[:, None], end[:, None] - cell, 1.0),
  )
  inside = cell < jnp.ceil(end)[:, None]
  area = (
      jnp.clip(cell.astype(jnp.int32), 0, last),
      jnp.where(inside, overlap, 0.0) / scale,
  )

  # Nearest: the cell under the half-pixel position.
  nearest_index = jnp.clip(jnp.floor(exact((i + 0.5) * scale)).astype(jnp.int32), 0, last)
  nearest = (jnp.repeat(nearest_index[:, None], TAPS, 1), zeros.at[:, 0].set(1.0))

  # Bicubic (Keys): four neighbours, table weights, outside ones zeroed and the rest renormalised.
  loc = f.astype(jnp.int32)
  offset = jnp.round(lerp * _CUBIC_TABLE_SIZE).astype(jnp.int32)  # lrintf: half to even.
  table = jnp.asarray(_CUBIC_TABLE)
  raw = jnp.stack(
      [
          table[offset * 2 + 1],
          table[offset * 2],
          table[(_CUBIC_TABLE_SIZE - offset) * 2],
          table[(_CUBIC_TABLE_SIZE - offset) * 2 + 1],
      ],
      1,
  )
  wanted = loc[:, None] - 1 + k[None, :]
  index = jnp.clip(wanted, 0, last)
  weight = jnp.where(index == wanted, raw, 0.0)
  total = weight.sum(1, keepdims=True)
  weight = jnp.where(
      jnp.abs(total) >= 1000.0 * jnp.finfo(jnp.float32).tiny, weight * (1.0 / total), weight
  )
  bicubic = (index, weight)

  kernels = (bilinear, area, nearest, bicubic)  # augment.INTERPOLATIONS' order.
  index = jnp.stack([t[0] for t in kernels])[method]
  weight = jnp.stack([t[1] for t in kernels])[method]
  return index, weight


# Entries of `augment.googlenet_train`'s resize parameters (float32).
_G_ROWS, _G_COLS, _G_METHOD, _G_FLIP, _G_HOST_RESIZED = range(5)


def googlenet_view(buffer: jax.Array, params: jax.Array, size: int, max_side: int) -> jax.Array:
  """float32 `[size, size, 3]` in [0, 1]: one example's window (`augment.googlenet_train` with
  `resize_on_device=True`) resized with its drawn kernel, clipped, and mirrored if drawn so: the
  host's `random_resize` and flip, before the colour distortions. `max_side` bounds the window's
  sides (`augment.device_resize_max_side`)."""
  cols = params[_G_COLS].astype(jnp.int32)
  method = params[_G_METHOD].astype(jnp.int32)
  pixels = buffer.reshape(-1, 3)
  row_index, row_weight = _taps(method, params[_G_ROWS], size)
  col_index, col_weight = _taps(method, params[_G_COLS], size)
  # Rows first: [size, TAPS, max_side] pixels (columns past `cols` are never read below).
  index = row_index[:, :, None] * cols + jnp.arange(max_side, dtype=jnp.int32)
  rows = jnp.take(pixels, index, axis=0, mode="clip").astype(jnp.float32) / 255.0
  rows = jnp.einsum("itjc,it->ijc", rows, row_weight, precision=jax.lax.Precision.HIGHEST)
  x = jnp.take(rows, col_index, axis=1, mode="clip")  # [size, size, TAPS, 3]
  x = jnp.einsum("ijtc,jt->ijc", x, col_weight, precision=jax.lax.Precision.HIGHEST)
  x = jnp.clip(x, 0.0, 1.0)  # Bicubic overshoots.
  x = jnp.where(params[_G_FLIP] > 0.5, x[:, ::-1], x)
  # A window the host resized itself: its [0, 1] pixels' bytes (already flipped).
  shipped = buffer[: size * size * 3 * 4].reshape(size, size, 3, 4)
  shipped = jax.lax.bitcast_convert_type(shipped, jnp.float32)
  return jnp.where(params[_G_HOST_RESIZED] > 0.5, shipped, x)


def googlenet_finish(
    buffer: jax.Array,
    params: jax.Array,
    distortions: jax.Array,
    size: int,
    max_side: int,
    mean: Any,
    std: Any = None,
) -> jax.Array:
  """The model's input from a GoogLeNet batch whose windows were left to the train step: each
  resized and flipped (`googlenet_view`), then its colour distortions and the normalisation
  (`incres.photometric.finish`)."""
  x = jax.vmap(googlenet_view, in_axes=(0, 0, None, None))(buffer, params, size, max_side)
  return photometric.finish(x, distortions, mean, std)
