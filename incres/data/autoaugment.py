"""RandAugment, TrivialAugment-Wide and AutoAugment's ImageNet policy, for the tf.data pipeline.

Seeded, stateless TensorFlow functions on one uint8 `[H, W, 3]` image (issue #26): the view is a
pure function of (image, seed), the same eagerly and inside `tf.data`, so the pipeline's
per-position seeds keep resumed training exact (`incres.data.pipeline`).

The semantics are torchvision's `transforms.v2` (`_auto_augment.py` and the uint8 kernels of
`functional/_color.py` and `_geometry.py` it calls), which tests/test_autoaugment.py checks op by
op against torchvision on the same image and magnitude:

- the op set, the magnitude ranges and which magnitudes are signed (a fair coin negates them) of
  each policy (`RANDAUGMENT`, `TRIVIALAUGMENT_WIDE`, `AUTOAUGMENT`): 31 magnitude bins for
  RandAugment and TrivialAugment, AutoAugment's table indexing 10; bin m of a range (lo, hi) is
  `lo + (hi - lo)·m/(bins - 1)` (torch's float32 `linspace`, here rounded once from float64: the
  two may differ in the last bit, which no op's output notices except where a translation lands
  on a whole pixel);
- the geometric ops invert torchvision's affine matrix (`_get_inverse_affine_matrix`): shears about
  the top-left corner (`center=[0, 0]`) by `atan(m)` degrees converted back, translations by
  `int(m)` pixels, rotations by m degrees counter-clockwise about the centre; each output pixel
  is sampled where `grid_sample(align_corners=False)` samples it, nearest (round half to even,
  as `nearbyint`) or bilinear, and outside the image the fill is 0;
- the colour ops on uint8: a blend `x·r + y·(1 - r)` clamped to [0, 255] and truncated (torch's
  float-to-uint8 cast), with y = 0 (Brightness), the floored grey image (Color), its mean
  (Contrast) or the rounded 3×3 smoothing of the interior pixels (Sharpness, borders kept);
  Posterize keeps the high bits, Solarize inverts pixels at or above 255·m (compared in float32,
  as torch promotes the threshold), AutoContrast stretches each channel's [min, max] to
  [0, 255], Equalize is PIL's per-channel lookup table, Invert is 255 - x.

RandAugment's magnitude std is timm's `mstd` (`timm/data/auto_augment.py`, `AugmentOp`): each
applied op draws its magnitude from normal(M, std) and clips it to [0, bins - 1] (timm clips to
its own maximum, 10), here on torchvision's 31-bin scale. timm's M and mstd count levels of 0-10,
three of these bins each (its rotation at M is 3·M degrees, as bin 3·M here): RSB's
`rand-m7-mstd0.5` is M=21, std=1.5 here. A magnitude between bins takes the range's value there
(torchvision only indexes whole bins; a std needs the continuous scale).

What timm's RandAugment does that this one does not, with the reason (the issue asks for
torchvision's semantics, which its tests hold this module to): timm's op set (its `inc1` set
adds Invert and SolarizeAdd, has no Identity and posterizes to 4..0 bits instead of 8..4; the
colour ops' `1 ± m` factors and the increasing Solarize threshold are already this set's), its
probability 0.5 of skipping each chosen op, its fill with the dataset's mean colour instead of
0, its interpolation drawn from bilinear and bicubic per op (PIL's, on PIL images), and
`mstd` above 100 meaning a uniform magnitude. torchvision's reference recipes pass their training
interpolation (bilinear) to the policies; `interpolation="bilinear"` does the same.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

# torchvision's `num_magnitude_bins` for RandAugment and TrivialAugment-Wide ...
NUM_MAGNITUDE_BINS = 31
# ... and the bins AutoAugment's policy table indexes (`magnitudes_fn(10, ...)`).
AUTOAUGMENT_BINS = 10
INTERPOLATIONS = ("nearest", "bilinear")

# Every op, in the order of `apply_op`'s switch; a policy's op list indexes this tuple.
OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)


@dataclasses.dataclass(frozen=True)
class Magnitude:
  """An op's magnitude at bin m of `bins`: `lo + (hi - lo)·m/(bins - 1)`.

  `side`: "width" or "height" where `lo` and `hi` are fractions of that side of the image (the
  translations of RandAugment and AutoAugment); `integer`: rounded half to even (Posterize's
  bits, torch's `round`); `signed`: negated on a fair coin.
  """

  lo: float
  hi: float
  signed: bool
  side: str = ""
  integer: bool = False


def _space(
    shear: float,
    translate: float,
    relative: bool,
    rotate: float,
    enhance: float,
    posterize_bits: float,
    *,
    identity: bool,
    invert: bool,
) -> dict[str, Magnitude | None]:
  """One policy's op -> magnitude range (None: the op takes none), in torchvision's order;
  `relative`: translations in fractions of the side, else in pixels."""
  space = {"Identity": None} if identity else {}
  space.update(
      ShearX=Magnitude(0.0, shear, True),
      ShearY=Magnitude(0.0, shear, True),
      TranslateX=Magnitude(0.0, translate, True, side="width" if relative else ""),
      TranslateY=Magnitude(0.0, translate, True, side="height" if relative else ""),
      Rotate=Magnitude(0.0, rotate, True),
      Brightness=Magnitude(0.0, enhance, True),
      Color=Magnitude(0.0, enhance, True),
      Contrast=Magnitude(0.0, enhance, True),
      Sharpness=Magnitude(0.0, enhance, True),
      Posterize=Magnitude(8.0, posterize_bits, False, integer=True),
      Solarize=Magnitude(1.0, 0.0, False),
      AutoContrast=None,
      Equalize=None,
  )
  if invert:
    space["Invert"] = None
  return space


# torchvision's `_AUGMENTATION_SPACE`s. RandAugment and AutoAugment translate by up to 150/331 of
# the side (AutoAugment's 150 pixels of 331) and posterize to 8..4 bits; TrivialAugment-Wide's
# wider ranges: shears and colour factors up to 0.99, 32 pixels, 135 degrees, 8..2 bits.
RANDAUGMENT = _space(0.3, 150.0 / 331.0, True, 30.0, 0.9, 4.0, identity=True, invert=False)
TRIVIALAUGMENT_WIDE = _space(0.99, 32.0, False, 135.0, 0.99, 2.0, identity=True, invert=False)
AUTOAUGMENT = _space(0.3, 150.0 / 331.0, True, 30.0, 0.9, 4.0, identity=False, invert=True)

# AutoAugment's ImageNet policy (Cubuk et al. 2019, Appendix, Table 9; torchvision's
# `AutoAugmentPolicy.IMAGENET`): 25 sub-policies of two (op, probability, magnitude bin of 10).
AUTOAUGMENT_IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)

# The policies by their config name (`config.auto_augment`).
POLICIES = ("randaugment", "trivialaugment_wide", "autoaugment_imagenet")


# ---------------------------------------------------------------------------------------------
# Magnitudes and draws
# ---------------------------------------------------------------------------------------------


# The functions a `tf.data` map calls are left as they are written (no Python control flow on
# tensors), not rewritten by autograph: converting `apply_op`'s branches took 3.5 of a
# RandAugment's 5.3 s of tracing.
_plain_python = tf.autograph.experimental.do_not_convert


def _seeds(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  """Splits one stateless seed into `n` independent ones."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _table(space: dict[str, Magnitude | None]) -> dict[str, tf.Tensor]:
  """The space as per-op columns (op index into OPS, lo, hi, flags), indexed by the policy's op."""
  rows = list(space.items())
  mags = [m or Magnitude(0.0, 0.0, False) for _, m in rows]
  return {
      "op": tf.constant([OPS.index(name) for name, _ in rows], tf.int32),
      "lo": tf.constant([m.lo for m in mags], tf.float64),
      "hi": tf.constant([m.hi for m in mags], tf.float64),
      "signed": tf.constant([m.signed for m in mags]),
      "width": tf.constant([m.side == "width" for m in mags]),
      "height": tf.constant([m.side == "height" for m in mags]),
      "integer": tf.constant([m.integer for m in mags]),
  }


def _values(table, which, level, bins: int, height, width, sign_seed) -> tf.Tensor:
  """float32 magnitudes of the ops `which` (indices into the table) at `level` (bins, float64),
  negated on a fair coin where signed: what torchvision passes to the op."""
  take = lambda key: tf.gather(table[key], which)
  lo, hi = take("lo"), take("hi")
  side = tf.where(
      take("width"),
      tf.cast(width, tf.float64),
      tf.where(take("height"), tf.cast(height, tf.float64), tf.ones_like(lo)),
  )
  value = (lo + (hi - lo) * level / (bins - 1)) * side
  value = tf.where(take("integer"), tf.round(value), value)  # Half to even, as torch.round.
  # torchvision negates where `torch.rand(()) <= 0.5`: probability one half.
  negate = take("signed") & (tf.random.stateless_uniform(tf.shape(which), sign_seed) < 0.5)
  return tf.cast(tf.where(negate, -value, value), tf.float32)


@_plain_python
def randaugment_draw(
    seed: tf.Tensor,
    height,
    width,
    *,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.0,
    bins: int = NUM_MAGNITUDE_BINS,
) -> tuple[tf.Tensor, tf.Tensor]:
  """`(ops, values)`, int32 and float32 `[num_ops]`: RandAugment's ops (indices into OPS, each
  uniform over `RANDAUGMENT`'s 14, with replacement) and their signed magnitudes, at bin
  `magnitude`, or per op normal(magnitude, magnitude_std) clipped to [0, bins - 1] (timm's mstd)."""
  table = _table(RANDAUGMENT)
  op_seed, level_seed, sign_seed = _seeds(seed, 3)
  n = len(RANDAUGMENT)
  which = tf.random.stateless_uniform([num_ops], op_seed, maxval=n, dtype=tf.int32)
  level = tf.fill([num_ops], tf.constant(magnitude, tf.float64))
  if magnitude_std > 0:
    noise = tf.random.stateless_normal([num_ops], level_seed, dtype=tf.float64)
    level = tf.clip_by_value(level + magnitude_std * noise, 0.0, bins - 1.0)
  values = _values(table, which, level, bins, height, width, sign_seed)
  return tf.gather(table["op"], which), values


@_plain_python
def trivialaugment_draw(
    seed: tf.Tensor, height, width, *, bins: int = NUM_MAGNITUDE_BINS
) -> tuple[tf.Tensor, tf.Tensor]:
  """`(ops, values)` `[1]`: TrivialAugment-Wide's one op, uniform over its 14, at a bin uniform in
  [0, bins), signed."""
  table = _table(TRIVIALAUGMENT_WIDE)
  op_seed, level_seed, sign_seed = _seeds(seed, 3)
  which = tf.random.stateless_uniform([1], op_seed, maxval=len(TRIVIALAUGMENT_WIDE), dtype=tf.int32)
  level = tf.random.stateless_uniform([1], level_seed, maxval=bins, dtype=tf.int32)
  values = _values(table, which, tf.cast(level, tf.float64), bins, height, width, sign_seed)
  return tf.gather(table["op"], which), values


@_plain_python
def autoaugment_draw(seed: tf.Tensor, height, width) -> tuple[tf.Tensor, tf.Tensor]:
  """`(ops, values)` `[2]`: a sub-policy of AUTOAUGMENT_IMAGENET_POLICY, uniform over its 25, and
  each of its two ops applied with its probability (`rand <= p`; Identity where not)."""
  names = list(AUTOAUGMENT)
  table = _table(AUTOAUGMENT)
  policy = AUTOAUGMENT_IMAGENET_POLICY
  which = tf.constant([[names.index(op) for op, _, _ in sub] for sub in policy], tf.int32)
  prob = tf.constant([[p for _, p, _ in sub] for sub in policy], tf.float32)
  level = tf.constant([[m or 0 for _, _, m in sub] for sub in policy], tf.float64)
  pick_seed, apply_seed, sign_seed = _seeds(seed, 3)
  k = tf.random.stateless_uniform([], pick_seed, maxval=len(policy), dtype=tf.int32)
  values = _values(table, which[k], level[k], AUTOAUGMENT_BINS, height, width, sign_seed)
  applied = tf.random.stateless_uniform([2], apply_seed) <= prob[k]
  ops = tf.where(applied, tf.gather(table["op"], which[k]), OPS.index("Identity"))
  return ops, tf.where(applied, values, 0.0)


# ---------------------------------------------------------------------------------------------
# The ops, on uint8 [H, W, 3]
# ---------------------------------------------------------------------------------------------


def _inverse_affine(center, angle, translate, shear) -> tf.Tensor:
  """float64 `[6]`: torchvision's `_get_inverse_affine_matrix(center, angle, translate, 1.0,
  shear)`, output -> input in pixel coordinates relative to the image's centre (angles in
  degrees)."""
  f64 = lambda v: tf.cast(v, tf.float64)
  deg = math.pi / 180.0
  rot, sx, sy = f64(angle) * deg, f64(shear[0]) * deg, f64(shear[1]) * deg
  cx, cy = f64(center[0]), f64(center[1])
  tx, ty = f64(translate[0]), f64(translate[1])
  a = tf.cos(rot - sy) / tf.cos(sy)
  b = -(a * tf.tan(sx) + tf.sin(rot))
  c = tf.sin(rot - sy) / tf.cos(sy)
  d = tf.cos(rot) - c * tf.tan(sx)
  m0, m1, m3, m4 = d, -b, -c, a
  m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
  m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
  return tf.stack([m0, m1, m2, m3, m4, m5])


def _f32(x: tf.Tensor) -> tf.Tensor:
  """float64 `x` rounded to the nearest float32 (and kept float64)."""
  return tf.cast(tf.cast(x, tf.float32), tf.float64)


def _fma32(a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
  """float32 `a·b + c` rounded once, as torch's `add_(other, alpha)` computes it on x86 CPUs
  (vectorised, contracted to a fused multiply-add); through float64, exact for these operands."""
  f64 = lambda v: tf.cast(v, tf.float64)
  return tf.cast(f64(a) * f64(b) + f64(c), tf.float32)


def _warp(image: tf.Tensor, matrix: tf.Tensor, interpolation: str) -> tf.Tensor:
  """`image` sampled where torchvision's `_affine_grid` and `grid_sample(align_corners=False,
  padding_mode="zeros")` sample it for the inverse affine `matrix`.

  The sampling positions take torch's float32 steps, each rounded explicitly (float64 rounded to
  float32: `_f32`): where a position lies exactly half-way between two pixels (a shear of 0.6
  about the corner puts whole rows there), nearest sampling depends on the last bit, and
  TensorFlow's graph optimiser (grappler) reorders plain float32 arithmetic (x·a + y·b + c became
  a sum in another order inside `tf.data`), which the explicit roundings pin down.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  theta = _f32(matrix)
  half_w, half_h = 0.5 * wf, 0.5 * hf  # Exact, as every other step up to the first rounding.
  x = tf.range(wf) + (1.0 - wf) * 0.5  # Output pixels' centres, relative to the image's centre.
  y = (tf.range(hf) + (1.0 - hf) * 0.5)[:, None]

  def position(r, half):
    """The input pixel coordinate: `_affine_grid`'s `[x, y, 1] @ (theta / half)`, then
    `grid_sample`'s unnormalisation `(g + 1)·half - 0.5`, in torch's float32 steps."""
    g = _f32(_f32(_f32(x * _f32(r[0] / half)) + _f32(y * _f32(r[1] / half))) + _f32(r[2] / half))
    return _fma32(_f32(g + 1.0), half, -0.5)  # Contracted too.

  ix, iy = position(theta[:3], half_w), position(theta[3:], half_h)
  hf, wf = tf.cast(hf, tf.float32), tf.cast(wf, tf.float32)
  # One zero pixel around the image: every index outside it reads the fill.
  padded = tf.reshape(tf.pad(tf.cast(image, tf.float32), [[1, 1], [1, 1], [0, 0]]), [-1, 3])

  def read(row, col):
    row = tf.cast(tf.clip_by_value(row, -1.0, hf), tf.int32) + 1
    col = tf.cast(tf.clip_by_value(col, -1.0, wf), tf.int32) + 1
    return tf.gather(padded, row * (w + 2) + col)

  if interpolation == "nearest":
    out = read(tf.round(iy), tf.round(ix))  # Half to even, as nearbyint.
  else:  # grid_sample's bilinear weights and sum (contracted as `_fma32`), rounded half to even.
    x0, y0 = tf.floor(ix), tf.floor(iy)
    east, south = ix - x0, iy - y0
    west, north = 1.0 - east, 1.0 - south
    corners = [(y0, x0, north * west), (y0, x0 + 1, north * east)]
    corners += [(y0 + 1, x0, south * west), (y0 + 1, x0 + 1, south * east)]
    out = None
    for row, col, weight in corners:
      term = (read(row, col), weight[..., None])
      out = term[0] * term[1] if out is None else _fma32(term[0], term[1], out)
    out = tf.round(out)
  return tf.cast(out, tf.uint8)


def _centre_offsets(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The top-left corner relative to the centre, `(-W/2, -H/2)` (float64): torchvision's
  `center=[0, 0]`."""
  shape = tf.cast(tf.shape(image), tf.float64)
  return -0.5 * shape[1], -0.5 * shape[0]


def _shear(image, value, axis: int, interpolation: str):
  # torchvision passes `degrees(atan(m))`, which its matrix converts back to radians.
  degrees = tf.atan(tf.cast(value, tf.float64)) * (180.0 / math.pi)
  shear = (degrees, 0.0) if axis == 0 else (0.0, degrees)
  matrix = _inverse_affine(_centre_offsets(image), 0.0, (0.0, 0.0), shear)
  return _warp(image, matrix, interpolation)


def _translate(image, value, axis: int, interpolation: str):
  pixels = tf.cast(tf.cast(value, tf.int32), tf.float64)  # int(m): towards zero.
  translate = (pixels, 0.0) if axis == 0 else (0.0, pixels)
  return _warp(image, _inverse_affine((0.0, 0.0), 0.0, translate, (0.0, 0.0)), interpolation)


def _rotate(image, value, interpolation: str):
  # F.rotate takes the angle modulo 360 and gives the matrix its negative.
  angle = -tf.math.floormod(tf.cast(value, tf.float64), 360.0)
  return _warp(image, _inverse_affine((0.0, 0.0), angle, (0.0, 0.0), (0.0, 0.0)), interpolation)


def _blend(x: tf.Tensor, y: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
  """torchvision's `_blend` on uint8: `x·r + y·(1 - r)` in float32 (`x.mul(r).add_(y, alpha=1 -
  r)`), clamped, truncated."""
  ratio = tf.cast(ratio, tf.float64)
  r, q = tf.cast(ratio, tf.float32), tf.cast(1.0 - ratio, tf.float32)
  return tf.cast(tf.clip_by_value(_fma32(y, q, x * r), 0.0, 255.0), tf.uint8)


def _grey(x: tf.Tensor) -> tf.Tensor:
  """float32 `[H, W, 1]`: torchvision's luma `0.2989 R + 0.587 G + 0.114 B` (`r.mul(0.2989)
  .add_(g, alpha=0.587).add_(b, alpha=0.114)`), floored as for uint8 images."""
  r, g, b = x[..., :1], x[..., 1:2], x[..., 2:]
  return tf.floor(_fma32(b, 0.114, _fma32(g, 0.587, r * 0.2989)))


def _factor(value) -> tf.Tensor:
  return 1.0 + tf.cast(value, tf.float64)


def _brightness(image, value):
  x = tf.cast(image, tf.float32) * tf.cast(_factor(value), tf.float32)
  return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _color(image, value):
  x = tf.cast(image, tf.float32)
  return _blend(x, _grey(x), _factor(value))


def _contrast(image, value):
  x = tf.cast(image, tf.float32)
  grey = _grey(x)
  # The floored grey levels are integers: their sum is exact, as torch's float32 sum of them is.
  mean = tf.cast(tf.reduce_sum(tf.cast(grey, tf.int32)), tf.float32) / tf.cast(
      tf.size(grey), tf.float32
  )
  return _blend(x, mean, _factor(value))


def _sharpness(image, value):
  """The interior blended with its smoothing by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (rounded);
  the one-pixel border kept."""
  x = tf.cast(image, tf.float32)
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  total = 4.0 * x[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total += x[dy : h - 2 + dy, dx : w - 2 + dx]
  blurred = tf.round(total / 13.0)  # Integer sums: the same as torch's float32 convolution.
  inner = x[1:-1, 1:-1]
  alpha = tf.cast(1.0 - _factor(value), tf.float32)
  inner = _fma32(blurred - inner, alpha, inner)  # `x.add_(blurred - x, alpha=1 - r)`.
  inner = tf.cast(tf.clip_by_value(inner, 0.0, 255.0), tf.uint8)
  middle = tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], axis=1)
  return tf.concat([image[:1], middle, image[-1:]], axis=0)


def _posterize(image, value):
  bits = tf.cast(value, tf.int32)
  mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)  # The top `bits` bits.
  return tf.bitwise.bitwise_and(image, mask)


def _solarize(image, value):
  # torch compares the uint8 image with the Python threshold promoted to float32; for whole x,
  # x >= t exactly where x >= ceil(t), compared here in uint8 (none where ceil(t) > 255).
  threshold = tf.math.ceil(tf.cast(255.0 * tf.cast(value, tf.float64), tf.float32))
  level = tf.cast(tf.clip_by_value(threshold, 0.0, 255.0), tf.uint8)
  invert = (image >= level) & (threshold <= 255.0)
  # 255 - x is x XOR 255; tf.where on uint8 images is several times slower.
  return tf.bitwise.bitwise_xor(image, tf.cast(invert, tf.uint8) * 255)


def _autocontrast(image, value):
  del value
  x = tf.cast(image, tf.float32)
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)  # Reduced in uint8: faster.
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  flat = tf.equal(hi, lo)
  inv_scale = tf.where(flat, 1.0, (hi - lo) * tf.constant(1.0 / 255.0, tf.float32))
  lo = tf.where(flat, 0.0, lo)
  return tf.cast(tf.clip_by_value((x - lo) / inv_scale, 0.0, 255.0), tf.uint8)


def _equalize(image, value):
  """PIL's `ImageOps.equalize` per channel, as torchvision's uint8 kernel computes it: level k maps
  to `(cum[k - 1] + step // 2) // step`, `step` the pixels below the channel's top level over 255
  (a channel with `step` 0 is kept)."""
  del value
  flat = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
  # Per channel: histogram_fixed_width took 0.6 ms a 224² image on one core, bincount 1.4.
  hist = tf.stack([tf.histogram_fixed_width(flat[:, c], [0, 256], nbins=256) for c in range(3)])
  flat = flat + 256 * tf.range(3)
  cum = tf.cumsum(hist, axis=1)
  top = tf.gather(hist, tf.argmax(cum, axis=1, output_type=tf.int32), batch_dims=1)
  step = (tf.shape(flat)[0] - top) // 255
  lut = (cum[:, :-1] + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
  lut = tf.concat([tf.zeros([3, 1], tf.int32), tf.clip_by_value(lut, 0, 255)], axis=1)
  lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])  # Kept: the identity.
  return tf.reshape(tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), flat), tf.shape(image))


def _invert(image, value):
  del value
  return 255 - image


@_plain_python
def apply_op(
    image: tf.Tensor, op: tf.Tensor, value: tf.Tensor, *, interpolation: str = "nearest"
) -> tf.Tensor:
  """uint8 `image` through OPS[op] at magnitude `value` (signed, in the op's own units: what
  torchvision's `_apply_image_or_video_transform` receives)."""
  branches = [
      lambda: image,
      lambda: _shear(image, value, 0, interpolation),
      lambda: _shear(image, value, 1, interpolation),
      lambda: _translate(image, value, 0, interpolation),
      lambda: _translate(image, value, 1, interpolation),
      lambda: _rotate(image, value, interpolation),
      lambda: _brightness(image, value),
      lambda: _color(image, value),
      lambda: _contrast(image, value),
      lambda: _sharpness(image, value),
      lambda: _posterize(image, value),
      lambda: _solarize(image, value),
      lambda: _autocontrast(image, value),
      lambda: _equalize(image, value),
      lambda: _invert(image, value),
  ]
  assert len(branches) == len(OPS)
  return tf.ensure_shape(tf.switch_case(op, branches), image.shape)


# ---------------------------------------------------------------------------------------------
# The policies
# ---------------------------------------------------------------------------------------------


@_plain_python
def apply_ops(
    image: tf.Tensor, ops: tf.Tensor, values: tf.Tensor, *, interpolation: str = "nearest"
) -> tf.Tensor:
  """uint8 `image` through each of `ops` in turn, at `values`.

  A loop in the graph rather than one switch per op: `apply_op`'s 15 branches are traced once.
  """
  if ops.shape[0] == 1:
    return apply_op(image, ops[0], values[0], interpolation=interpolation)

  def body(k, x):
    return k + 1, apply_op(x, ops[k], values[k], interpolation=interpolation)

  _, image = tf.while_loop(lambda k, x: k < tf.size(ops), body, (tf.constant(0), image))
  return image


def _hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  shape = tf.shape(image)
  return shape[0], shape[1]


@_plain_python
def randaugment(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.0,
    interpolation: str = "nearest",
) -> tf.Tensor:
  """RandAugment (Cubuk et al. 2020) as torchvision's `RandAugment(num_ops, magnitude)`, with timm's
  magnitude std (`randaugment_draw`), on uint8 `[H, W, 3]`."""
  ops, values = randaugment_draw(
      seed, *_hw(image), num_ops=num_ops, magnitude=magnitude, magnitude_std=magnitude_std
  )
  return apply_ops(image, ops, values, interpolation=interpolation)


@_plain_python
def trivialaugment_wide(
    image: tf.Tensor, seed: tf.Tensor, *, interpolation: str = "nearest"
) -> tf.Tensor:
  """TrivialAugment-Wide (Müller & Hutter 2021) as torchvision's `TrivialAugmentWide()`."""
  ops, values = trivialaugment_draw(seed, *_hw(image))
  return apply_ops(image, ops, values, interpolation=interpolation)


@_plain_python
def autoaugment_imagenet(
    image: tf.Tensor, seed: tf.Tensor, *, interpolation: str = "nearest"
) -> tf.Tensor:
  """AutoAugment's ImageNet policy (Cubuk et al. 2019) as torchvision's `AutoAugment()`."""
  ops, values = autoaugment_draw(seed, *_hw(image))
  return apply_ops(image, ops, values, interpolation=interpolation)


def policy(
    name: str,
    *,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.0,
    interpolation: str = "nearest",
):
  """`(image, seed) -> image` of the policy `name` (one of POLICIES; "none": the image as is)."""
  if name == "none":
    return lambda image, seed: image
  if name == "randaugment":
    return lambda image, seed: randaugment(
        image,
        seed,
        num_ops=num_ops,
        magnitude=magnitude,
        magnitude_std=magnitude_std,
        interpolation=interpolation,
    )
  if name == "trivialaugment_wide":
    return lambda image, seed: trivialaugment_wide(image, seed, interpolation=interpolation)
  if name == "autoaugment_imagenet":
    return lambda image, seed: autoaugment_imagenet(image, seed, interpolation=interpolation)
  raise ValueError(f"Unknown auto-augment policy {name!r}; known: none, {', '.join(POLICIES)}.")
