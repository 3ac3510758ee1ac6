"""GoogLeNet's photometric distortions on the accelerator, inside the jitted train step.

The host pipeline draws the distortions (`incres.data.photometric.photometric_params`: the order
of the four ops and their magnitudes, from the example's position seed, so resuming stays exact)
and ships the [0, 1] image before them; `finish` applies them here and subtracts the mean. On the
host they cost more than the crop, decode and resize together (TensorFlow's saturation and hue
kernels convert every pixel to HSV and back, single-threaded per image), which left a 16-core GPU
host unable to feed GoogLeNet (benchmarks/RESULTS.md); on a GPU they are a few elementwise passes
over the batch.

Each op is TensorFlow's, written in closed form (`tf.image.adjust_*`; agreement to float32
rounding is tested against them):
- brightness: `x + delta`;
- contrast: `(x - m) * factor + m`, `m` the image's per-channel mean;
- saturation: HSV saturation times `factor`, clipped to [0, 1]. With `v = max(r, g, b)` and
  `n = min(r, g, b)` that is `c' = v - f * (v - c)` for every channel `c`, with
  `f = min(factor, v / (v - n))` (the clip: at `f = v / (v - n)` the smallest channel reaches 0);
  value and hue are unchanged;
- hue: HSV hue plus `delta` (mod 1) at unchanged value and saturation: each channel is
  `v - (v - n) * clip(min(k, 4 - k), 0, 1)`, `k = (s + 6 * hue') mod 6` with `s` = 5, 3, 1 for
  R, G, B (the hexcone).
One known difference: TensorFlow's saturation kernel turns a pixel grey when its hue rounds to
exactly 1.0 (red the largest channel, blue above green by less than ~2e-7 of the spread:
`(1, 0.5, 0.50000006)` at factor 1 becomes `(0.5, 0.5, 0.5)`); here such a pixel keeps its colour.
At each of the four positions every op is computed and the example's own one selected (one fused
program for the batch, whatever each example's order), then clipped to [0, 1] as on the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from incres import wire


def _brightness(x: jax.Array, delta: jax.Array) -> jax.Array:
  return x + delta


def _contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
  m = jnp.mean(x, axis=(-3, -2), keepdims=True)
  return (x - m) * factor + m


def _saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
  v = jnp.max(x, axis=-1, keepdims=True)
  n = jnp.min(x, axis=-1, keepdims=True)
  spread = v - n
  f = jnp.where(spread > 0, jnp.minimum(factor, v / jnp.where(spread > 0, spread, 1.0)), factor)
  return v - f * (v - x)


def _hue(x: jax.Array, delta: jax.Array) -> jax.Array:
  v = jnp.max(x, axis=-1, keepdims=True)
  spread = v - jnp.min(x, axis=-1, keepdims=True)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v0, spread0 = v[..., 0], spread[..., 0]
  # Hue in sixths, as TensorFlow's rgb_to_hsv picks the sector: by which channel is the maximum.
  num = jnp.where(r == v0, g - b, jnp.where(g == v0, b - r, r - g))
  sector = jnp.where(r == v0, 0.0, jnp.where(g == v0, 2.0, 4.0))
  h6 = jnp.where(spread0 > 0, num / jnp.where(spread0 > 0, spread0, 1.0), 0.0) + sector
  k = jnp.mod(h6[..., None] + 6.0 * delta + jnp.array([5.0, 3.0, 1.0]), 6.0)
  return v - spread * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


# In `photometric.PHOTOMETRIC_OPS` order: `wire.PHOTOMETRIC`'s "order" indexes it, and its
# "magnitudes" follow it.
_OPS = (_brightness, _contrast, _saturation, _hue)


def distort(images: jax.Array, params: jax.Array) -> jax.Array:
  """`images` float32 `[B, H, W, 3]` in [0, 1] distorted by `params` `[B, 8]`
  (`incres.data.photometric.photometric_params`, `wire.PHOTOMETRIC`): the four ops in each
  example's order, each clipped."""
  x = images.astype(jnp.float32)
  params = params.astype(jnp.float32)
  order = wire.PHOTOMETRIC.get(params, "order").astype(jnp.int32)
  # [B, 4, 1, 1, 1]: broadcast over H, W, C.
  magnitudes = wire.PHOTOMETRIC.get(params, "magnitudes")[:, :, None, None, None]
  for position in range(wire.PHOTOMETRIC.field("order").length):
    which = order[:, position, None, None, None]
    out = x
    for k, op in enumerate(_OPS):
      out = jnp.where(which == k, op(x, magnitudes[:, k]), out)
    x = jnp.clip(out, 0.0, 1.0)
  return x


def finish(images: jax.Array, params: jax.Array, mean: Any, std: Any | None = None) -> jax.Array:
  """The train step's input: `distort`, then the mean subtracted (and divided by `std` if given),
  as `incres.data.googlenet_augment.googlenet_train` does on the host."""
  x = distort(images, params) - jnp.asarray(mean, jnp.float32)
  return x if std is None else x / jnp.asarray(std, jnp.float32)
