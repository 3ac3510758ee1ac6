"""The crops' resampling on the accelerator, inside the jitted train step (config `resample`):
ResNet's (`finish`) and GoogLeNet's (`googlenet_finish`).

On the host, ResNet's scale augmentation (`incres.data.resnet_augment`) decodes the window of
the JPEG under the drawn 224 view, resamples it (`tf.image.crop_and_resize`, mirrored
when flipped) and normalises it. Resampling and normalising cost as much as decoding: on one EPYC
core the host delivers ~600 views/s, ~1,000/s when it only decodes the window and ships it
(benchmarks/RESULTS.md), which left a 16-core GPU host unable to feed ResNet-50. With
`resample="device"` the host ships the uint8 window and its sampling positions
(`crops.resized_crop_for_device`: the same draws, so resuming stays exact) and `finish` does the
rest here: a few gathers and elementwise passes over the batch. GoogLeNet's crops likewise
(`googlenet_finish`: `tf.image.resize` with the drawn kernel, then the colour distortions).

The host computes the sampling positions, with TensorFlow's float32 roundings: compiled here, XLA
would fuse a multiply-add or fold a division into a multiplication (optimisation barriers do not
survive compilation), which moves a position by an ulp, and one ulp can pick another bicubic
table entry.

`view` is `tf.image.crop_and_resize`'s bilinear kernel, written out: output row `i` reads the
window's rows `floor(y)` and `ceil(y)` at its position `y` (in the window with one replicated row
each side, so row `r` of it is window row `clip(r - 1, 0, rows - 1)`) and blends them with
`y - floor(y)`; columns likewise; `top + (bottom - top)·dy` after `left + (right - left)·dx`, the
kernel's order. The pixels equal the host's to float32 rounding (tested). A view the host
resampled itself (its antialiased kernel, for views shrunk more than 2x) arrives as its float32
pixels' bytes and is taken as is. Each read gathers whole pixels (3 bytes) from the window.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from incres import wire
from incres.data import device_photometric


def _neighbours(p: jax.Array, length: jax.Array):
  """`(low, high, frac)`: window indices and weight of sampling positions `p` of the padded
  window (one replicated pixel each side of `length` pixels)."""
  low = jnp.floor(p)
  last = length.astype(jnp.int32) - 1
  to_window = lambda q: jnp.clip(q.astype(jnp.int32) - 1, 0, last)
  return to_window(low), to_window(jnp.ceil(p)), p - low


def _host_view(buffer: jax.Array, size: int) -> jax.Array:
  """A view resampled on the host: its float32 pixels' bytes (little-endian, as tf.bitcast
  wrote them) at the buffer's start."""
  x = buffer[: size * size * 3 * 4].reshape(size, size, 3, 4)
  return jax.lax.bitcast_convert_type(x, jnp.float32)


def view(buffer: jax.Array, params: jax.Array, size: int) -> jax.Array:
  """float32 `[size, size, 3]` on the pixel scale [0, 255] of one example's `(buffer, params)`
  (`crops.resized_crop_for_device`: `wire.resample_layout(size)`, with or without its colour
  shift)."""
  layout = wire.resample_layout(size)
  cols = layout.get(params, "cols").astype(jnp.int32)
  rows_at = layout.get(params, "row_positions")
  cols_at = layout.get(params, "col_positions")
  top, bottom, dy = _neighbours(rows_at, layout.get(params, "rows"))
  left, right, dx = _neighbours(cols_at, layout.get(params, "cols"))
  pixels = buffer.reshape(-1, 3)  # The buffer's length is a multiple of 3.

  def read(rows, columns):
    index = rows[:, None] * cols + columns[None, :]
    return jnp.take(pixels, index, axis=0, mode="clip").astype(jnp.float32)

  top_left, top_right = read(top, left), read(top, right)
  bottom_left, bottom_right = read(bottom, left), read(bottom, right)
  dx = dx[None, :, None]
  upper = top_left + (top_right - top_left) * dx
  lower = bottom_left + (bottom_right - bottom_left) * dx
  sampled = upper + (lower - upper) * dy[:, None, None]
  host_resampled = layout.get(params, "host_resampled")
  return jnp.where(host_resampled > 0.5, _host_view(buffer, size), sampled)


def finish(
    buffer: jax.Array, params: jax.Array, size: int, mean: Any, std: Any = None
) -> jax.Array:
  """The model's input from a batch's uint8 `[B, N]` buffers and float32 `[B, 3 + 2·size + 3]`
  parameters: each view resampled (`view`), scaled to [0, 1], shifted by its colour shift (the
  last 3), minus `mean` (divided by `std`), as `resnet_augment.resnet_imagenet_train` does on the
  host."""
  x = jax.vmap(view, in_axes=(0, 0, None))(buffer, params, size)
  shift = wire.resample_layout(size).get(params, "colour_shift")[:, None, None, :]
  x = x * (1.0 / 255.0) + (shift - jnp.asarray(mean, jnp.float32))
  return x if std is None else x / jnp.asarray(std, jnp.float32)


# --- GoogLeNet: `googlenet_augment.random_resize`'s four kernels --------------------------------
#
# `tf.image.resize` (antialias=False) of the crop's window to size×size with the drawn kernel, in
# `googlenet_augment.INTERPOLATIONS` order: bilinear and bicubic (Keys, a = -0.5) at half-pixel
# centres, area (box averaging, TensorFlow's ResizeArea), nearest (half-pixel centres). Each is
# separable: per axis, output index `i` reads at most TAPS input indices with weights (`_taps`), so
# one gather-and-sum pass per axis serves all four. The weights are TensorFlow's (its bicubic
# coefficient table, its edge renormalisation, ResizeArea's cell overlaps) at the host's
# positions (`googlenet_augment._resize_positions`); only the order of the float32 sums differs.

TAPS = 4  # Input indices an output index reads at most: bicubic's 4; area's up to a 3x shrink.
_CUBIC_TABLE_SIZE = 1024


def _cubic_table() -> np.ndarray:
  """TensorFlow's bicubic coefficient table (resize_bicubic_op.cc, `InitCoeffsTable`, Keys'
  kernel, a = -0.5): `[2 * (table_size + 1)]`, each entry evaluated in double at a float32 `x`
  and rounded once to float32."""
  a = -0.5
  table = np.zeros(2 * (_CUBIC_TABLE_SIZE + 1), np.float32)
  for i in range(_CUBIC_TABLE_SIZE + 1):
    x = float(np.float32(i / _CUBIC_TABLE_SIZE))
    table[2 * i] = ((a + 2) * x - (a + 3)) * x * x + 1
    x = float(np.float32(x + 1.0))
    table[2 * i + 1] = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return table


_CUBIC_TABLE = _cubic_table()


def _taps(method: jax.Array, length: jax.Array, axis: jax.Array, size: int):
  """`(index, weight)`, int32 and float32 `[size, TAPS]`: what output index `i` of an axis of
  `length` pixels resized to `size` reads with kernel `method` (an index into
  `googlenet_augment.INTERPOLATIONS`), from the axis' host-computed `[scale, (i + 0.5)·scale
  (size), i·scale (size + 1)]` (`googlenet_augment._resize_positions`)."""
  last = length.astype(jnp.int32) - 1
  scale, half, edges = axis[0], axis[1 : size + 1], axis[size + 1 :]
  k = jnp.arange(TAPS, dtype=jnp.int32)
  zeros = jnp.zeros((size, TAPS), jnp.float32)

  # Bilinear: lower and upper neighbours of the half-pixel position.
  p = half - 0.5
  f = jnp.floor(p)
  lerp = p - f
  lo = jnp.maximum(f.astype(jnp.int32), 0)
  hi = jnp.minimum(jnp.ceil(p).astype(jnp.int32), last)
  bilinear = (jnp.stack([lo, hi, lo, lo], 1), zeros.at[:, 0].set(1.0 - lerp).at[:, 1].set(lerp))

  # Area: the input cells under [start, end), each by its overlap, over the cell's size.
  start, end = edges[:-1, None], edges[1:, None]
  cell = jnp.floor(start) + k[None, :].astype(jnp.float32)  # [size, TAPS] candidate cells.
  overlap = jnp.where(
      cell < start,
      jnp.where(cell + 1 > end, scale, cell + 1 - start),
      jnp.where(cell + 1 > end, end - cell, 1.0),
  )
  area_weight = jnp.where(cell < jnp.ceil(end), overlap, 0.0) / scale
  area = (jnp.clip(cell.astype(jnp.int32), 0, last), area_weight)

  # Nearest: the cell under the half-pixel position.
  nearest_index = jnp.clip(jnp.floor(half).astype(jnp.int32), 0, last)
  nearest = (jnp.repeat(nearest_index[:, None], TAPS, 1), zeros.at[:, 0].set(1.0))

  # Bicubic (Keys): four neighbours, table weights, outside ones zeroed and the rest renormalised.
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
  wanted = f.astype(jnp.int32)[:, None] - 1 + k[None, :]
  index = jnp.clip(wanted, 0, last)
  weight = jnp.where(index == wanted, raw, 0.0)
  total = weight.sum(1, keepdims=True)
  normal = jnp.abs(total) >= 1000.0 * jnp.finfo(jnp.float32).tiny
  bicubic = (index, jnp.where(normal, weight * (1.0 / total), weight))

  kernels = (bilinear, area, nearest, bicubic)  # googlenet_augment.INTERPOLATIONS' order.
  index = jnp.stack([t[0] for t in kernels])[method]
  weight = jnp.stack([t[1] for t in kernels])[method]
  return index, weight


def googlenet_view(buffer: jax.Array, params: jax.Array, size: int, max_side: int) -> jax.Array:
  """float32 `[size, size, 3]` in [0, 1]: one example's window
  (`googlenet_augment.googlenet_train` with `resize_on_device=True`) resized with its drawn kernel,
  clipped, and mirrored if drawn so: the host's `random_resize` and flip, before the colour
  distortions. `max_side` bounds the window's sides (`googlenet_augment.device_resize_max_side`);
  `params` is `wire.resize_layout(size)`."""
  layout = wire.resize_layout(size)
  cols = layout.get(params, "cols").astype(jnp.int32)
  method = layout.get(params, "kernel").astype(jnp.int32)
  row_axis, col_axis = layout.get(params, "row_axis"), layout.get(params, "col_axis")
  row_index, row_weight = _taps(method, layout.get(params, "rows"), row_axis, size)
  col_index, col_weight = _taps(method, layout.get(params, "cols"), col_axis, size)
  # Rows first: each tap row as one contiguous slice of `max_side` pixels (those past `cols` are
  # never read below); the buffer is extended so that no slice is clamped.
  flat = jnp.concatenate([buffer, jnp.zeros(max_side * 3, buffer.dtype)])
  starts = (row_index * cols * 3).reshape(-1)
  take_row = lambda start: jax.lax.dynamic_slice(flat, (start,), (max_side * 3,))
  rows = jax.vmap(take_row)(starts).reshape(size, TAPS, max_side, 3)
  rows = (rows.astype(jnp.float32) / 255.0 * row_weight[:, :, None, None]).sum(1)
  # Then columns, mirrored by reading them in reverse order.
  flip = layout.get(params, "flip") > 0.5
  col_index = jnp.where(flip, col_index[::-1], col_index)
  col_weight = jnp.where(flip, col_weight[::-1], col_weight)
  x = (jnp.take(rows, col_index, axis=1, mode="clip") * col_weight[None, :, :, None]).sum(2)
  x = jnp.clip(x, 0.0, 1.0)  # Bicubic overshoots.
  return jnp.where(layout.get(params, "host_resized") > 0.5, _host_view(buffer, size), x)


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
  (`device_photometric.finish`)."""
  x = jax.vmap(googlenet_view, in_axes=(0, 0, None, None))(buffer, params, size, max_side)
  return device_photometric.finish(x, distortions, mean, std)
