"""Random erasing (Zhong et al. 2020), a seeded, stateless TensorFlow function for tf.data.

torchvision's `transforms.v2.RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`
(`make_params`): with probability p, up to ten draws of an area fraction uniform in `scale` and
an aspect ratio h/w log-uniform in `ratio`, `h = round(sqrt(area·ratio))` and `w =
round(sqrt(area/ratio))` (half to even, as Python's `round`); the first that fits strictly inside
the image (`h < H and w < W`) is placed uniformly (top in [0, H - h], left in [0, W - w]); if none
fits, nothing is erased. It runs on the normalised image, after the mean and std (as in
torchvision's and timm's recipes), so a fill of 0 is the mean colour.

Fills: "zero" (torchvision's `value=0`) or "pixel", timm's `mode='pixel'` (`RandomErasing` in
`timm/data/random_erasing.py`): every erased value an independent standard normal draw.
Deviation from timm, for one definition of the region with either fill: timm's ranges are
(0.02, 1/3) and (0.3, 1/0.3) where torchvision's are (0.02, 0.33) and (0.3, 3.3), under 1% apart
at the top; timm's `max_count` (several boxes) is not supported (its default is one box).
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

SCALE = (0.02, 0.33)  # Area fraction of the erased box (torchvision's default).
RATIO = (0.3, 3.3)  # Its aspect ratio h/w (torchvision's default).
FILLS = ("zero", "pixel")
ATTEMPTS = 10


def erasing_box(
    height,
    width,
    seed: tf.Tensor,
    *,
    scale: Sequence[float] = SCALE,
    ratio: Sequence[float] = RATIO,
    attempts: int = ATTEMPTS,
) -> tf.Tensor:
  """int32 `[top, left, h, w]` of the box to erase in a `height`×`width` image; h = w = 0 where no
  draw fits (nothing is erased). The probability of erasing at all is the caller's."""
  draw_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  u = tf.random.stateless_uniform([attempts, 2], draw_seed, dtype=tf.float64)
  hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  area = hf * wf * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
  h = tf.round(tf.sqrt(area * aspect))  # Half to even, as Python's round.
  w = tf.round(tf.sqrt(area / aspect))
  fits = (h < hf) & (w < wf)
  first = tf.argmax(tf.cast(fits, tf.int32))
  any_fits = tf.reduce_any(fits)
  h = tf.cast(tf.where(any_fits, h[first], 0.0), tf.int32)
  w = tf.cast(tf.where(any_fits, w[first], 0.0), tf.int32)
  # torch.randint(0, n + 1): uniform over the n + 1 positions.
  offsets = tf.random.stateless_uniform([2], offset_seed, dtype=tf.float64)
  top = tf.minimum(tf.cast(offsets[0] * tf.cast(height - h + 1, tf.float64), tf.int32), height - h)
  left = tf.minimum(tf.cast(offsets[1] * tf.cast(width - w + 1, tf.float64), tf.int32), width - w)
  return tf.stack([top, left, h, w])


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    probability: float,
    fill: str = "zero",
    scale: Sequence[float] = SCALE,
    ratio: Sequence[float] = RATIO,
) -> tf.Tensor:
  """float32 `[H, W, C]` `image` (normalised) with, at `probability`, one box of `erasing_box`
  set to 0 (`fill="zero"`) or to standard normal draws (`fill="pixel"`)."""
  if fill not in FILLS:
    raise ValueError(f"random erasing fill must be one of {FILLS}, not {fill!r}.")
  apply_seed, box_seed, fill_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  shape = tf.shape(image)
  top, left, h, w = tf.unstack(erasing_box(shape[0], shape[1], box_seed, scale=scale, ratio=ratio))
  # torchvision erases where `torch.rand(1) < p`.
  erase = (tf.random.stateless_uniform([], apply_seed) < probability) & (h > 0)

  def erased():
    if fill == "zero":
      values = tf.zeros([h, w, shape[2]], image.dtype)
    else:
      values = tf.random.stateless_normal([h, w, shape[2]], fill_seed, dtype=image.dtype)
    band = image[top : top + h]
    band = tf.concat([band[:, :left], values, band[:, left + w :]], axis=1)
    return tf.concat([image[:top], band, image[top + h :]], axis=0)

  return tf.ensure_shape(tf.cond(erase, erased, lambda: image), image.shape)
