"""RandAugment, TrivialAugment-Wide and AutoAugment (incres.data.autoaugment) against torchvision's
`transforms.v2`: every op on the same uint8 image at the same magnitude, the policies' tables,
and the distributions of the ops and magnitudes they draw; determinism in the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from incres.data import autoaugment

torch = pytest.importorskip("torch")
v2 = pytest.importorskip("torchvision.transforms.v2")

H, W = 32, 48  # The images of the op tests; the draws use a 224×200 one.
DRAW_H, DRAW_W = 224, 200

# Magnitudes per op, in the units torchvision's `_apply_image_or_video_transform` receives (the
# policies' ranges and beyond: a shear of 0.6 about the corner puts whole rows of positions exactly
# half-way between pixels; 1 - 2/30 is Solarize's bin 2, a threshold of exactly 238 in float32).
MAGNITUDES = {
    "Identity": [0.0],
    "ShearX": [0.1, -0.3, 0.6, -0.99],
    "ShearY": [0.1, -0.3, 0.6, -0.99],
    "TranslateX": [3.7, -14.5, 32.0],
    "TranslateY": [3.7, -14.5, 32.0],
    "Rotate": [13.5, -30.0, 90.0, 135.0],
    "Brightness": [0.27, -0.5, 0.99],
    "Color": [0.27, -0.5, 0.9, -0.99],
    "Contrast": [0.27, -0.5, 0.9, -0.99],
    "Sharpness": [0.27, -0.5, 0.9, -0.99],
    "Posterize": [8, 6, 4, 2],
    "Solarize": [1.0, 1.0 - 2 / 30, 1.0 - 1 / 30, 0.5, 0.0],
    "AutoContrast": [0.0],
    "Equalize": [0.0],
    "Invert": [0.0],
}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _images():
  """A noisy image whose channels span different ranges (so that AutoContrast and Equalize change
  it), and a smooth one with a flat channel (their degenerate case)."""
  rng = np.random.default_rng(0)
  a = np.stack(
      [
          rng.integers(20, 231, (H, W)),
          np.clip(np.linspace(50, 150, W)[None, :] + rng.normal(0, 10, (H, W)), 0, 255),
          rng.integers(0, 256, (H, W)),
      ],
      -1,
  ).astype(np.uint8)
  yy, xx = np.mgrid[:20, :30]
  b = np.stack([4 * yy + 3 * xx, np.full((20, 30), 77), 255 - 5 * yy], -1).astype(np.uint8)
  return [a, b]


def _torchvision(image: np.ndarray, name: str, value: float, interpolation: str) -> np.ndarray:
  transform = v2.RandAugment(interpolation=v2.InterpolationMode(interpolation))
  value = int(value) if name == "Posterize" else float(np.float32(value))
  out = transform._apply_image_or_video_transform(
      torch.from_numpy(image).permute(2, 0, 1).contiguous(),
      name,
      value,
      interpolation=transform.interpolation,
      fill=transform._fill,
  )
  return out.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("interpolation", autoaugment.INTERPOLATIONS)
def test_every_op_equals_torchvision_v2_on_the_same_image_and_magnitude(interpolation):
  """Tolerance: each (op, magnitude) may differ from torchvision in at most 1% of its values, the
  colour ops and bilinear sampling by at most 1 level. Justification: torch's float32 arithmetic
  is contracted into fused multiply-adds on x86 CPUs (blends, grey levels, sampling positions,
  bilinear sums), which `autoaugment` reproduces step by step; a build or CPU that does not
  contract them can move a value across a rounding boundary (one level), or a nearest sample
  lying exactly half-way between two pixels to the other one. On the machines this was written
  on (x86-64 with FMA) every value is equal."""
  apply = tf.function(
      lambda image, op, value: autoaugment.apply_op(image, op, value, interpolation=interpolation),
      input_signature=[
          tf.TensorSpec([None, None, 3], tf.uint8),
          tf.TensorSpec([], tf.int32),
          tf.TensorSpec([], tf.float32),
      ],
  )
  checked, unequal = 0, 0
  for image in _images():
    for name, values in MAGNITUDES.items():
      for value in values:
        mine = apply(image, autoaugment.OPS.index(name), value).numpy()
        theirs = _torchvision(image, name, value, interpolation)
        diff = np.abs(mine.astype(int) - theirs.astype(int))
        what = f"{name} at {value} ({interpolation}), image {image.shape}"
        assert np.mean(diff > 0) <= 0.01, what
        if name not in GEOMETRIC or interpolation == "bilinear":
          assert diff.max() <= 1, what
        checked += 1
        unequal += int(diff.max() > 0)
  assert checked == 2 * sum(map(len, MAGNITUDES.values()))
  # The ops do something: torchvision's outputs are not all the input (a vacuous comparison).
  image = _images()[0]
  assert not np.array_equal(_torchvision(image, "Equalize", 0.0, interpolation), image)
  assert not np.array_equal(_torchvision(image, "ShearX", 0.1, interpolation), image)


def _torch_magnitudes(space: dict, bins: int) -> dict:
  """{op: (float32 magnitudes per bin or None, signed)} of a torchvision `_AUGMENTATION_SPACE`."""
  out = {}
  for name, (fn, signed) in space.items():
    m = fn(bins, DRAW_H, DRAW_W)
    out[name] = (None if m is None else m.numpy().astype(np.float64), signed)
  return out


SPACES = {
    "randaugment": (autoaugment.RANDAUGMENT, v2.RandAugment._AUGMENTATION_SPACE, 31),
    "trivialaugment_wide": (
        autoaugment.TRIVIALAUGMENT_WIDE,
        v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        31,
    ),
    "autoaugment": (autoaugment.AUTOAUGMENT, v2.AutoAugment._AUGMENTATION_SPACE, 10),
}


@pytest.mark.parametrize("policy", SPACES)
def test_op_sets_ranges_and_signs_are_torchvision_s(policy):
  ours, theirs, bins = SPACES[policy]
  theirs = _torch_magnitudes(theirs, bins)
  assert list(ours) == list(theirs)  # The same ops, in the same order (the draws index them).
  for name, magnitude in ours.items():
    table, signed = theirs[name]
    assert (magnitude is None) == (table is None), name
    if magnitude is None:
      continue
    assert magnitude.signed == signed, name
    side = {"width": DRAW_W, "height": DRAW_H}.get(magnitude.side, 1.0)
    mine = (magnitude.lo + (magnitude.hi - magnitude.lo) * np.arange(bins) / (bins - 1)) * side
    mine = np.round(mine) if magnitude.integer else mine
    # torch's float32 linspace: to its last bit.
    np.testing.assert_allclose(mine, table, rtol=2e-7, atol=1e-7, err_msg=name)


def test_autoaugment_imagenet_policy_is_torchvision_s():
  theirs = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies
  assert [tuple(map(tuple, sub)) for sub in theirs] == list(autoaugment.AUTOAUGMENT_IMAGENET_POLICY)
  assert len(autoaugment.AUTOAUGMENT_IMAGENET_POLICY) == 25


def _draws(draw, n: int):
  """`n` draws of `draw(seed, height, width)` with seeds (5, i): ops as names, values float64."""
  ds = tf.data.Dataset.range(n).map(
      lambda i: draw(tf.stack([tf.constant(5, tf.int64), i]), DRAW_H, DRAW_W)
  )
  ops, values = next(iter(ds.batch(n)))
  names = np.array(autoaugment.OPS)[ops.numpy()]
  return names, values.numpy().astype(np.float64)


def _assert_uniform(observed_counts, what: str):
  """A chi-square test of equal frequencies (deterministic seeds: the same counts every run)."""
  p = stats.chisquare(observed_counts).pvalue
  assert p > 1e-3, f"{what}: {observed_counts} (p = {p:.2g})"


def _assert_fair_signs(names, values, space):
  """Signed ops are negative about half the time (a binomial test); unsigned ones never."""
  signed = np.array([space[n] is not None and space[n].signed for n in names])
  negative = values < 0
  assert not negative[~signed].any()
  k, n = int(negative[signed & (values != 0)].sum()), int((signed & (values != 0)).sum())
  assert stats.binomtest(k, n).pvalue > 1e-3, (k, n)


def test_randaugment_draws_uniform_ops_at_the_fixed_magnitude_with_fair_signs():
  names, values = _draws(autoaugment.randaugment_draw, 3000)  # 2 ops each.
  assert names.shape == (3000, 2)
  space = autoaugment.RANDAUGMENT
  counts = [int(np.sum(names == op)) for op in space]
  _assert_uniform(counts, "RandAugment's ops")
  # Both positions independently uniform: the two ops agree about 1/14 of the time.
  agree = int(np.sum(names[:, 0] == names[:, 1]))
  assert stats.binomtest(agree, 3000, 1 / 14).pvalue > 1e-3, agree
  names, values = names.ravel(), values.ravel()
  _assert_fair_signs(names, values, space)
  theirs = _torch_magnitudes(v2.RandAugment._AUGMENTATION_SPACE, 31)
  for op in space:
    table = theirs[op][0]
    want = 0.0 if table is None else table[9]  # Bin 9, torchvision's default magnitude.
    np.testing.assert_allclose(np.abs(values[names == op]), want, rtol=2e-7, err_msg=op)


# Ops whose magnitude is `hi·level/(bins - 1)` (Solarize: `1 - level/(bins - 1)`): their level can
# be read back from the value.
LINEAR = {
    "ShearX": 0.3,
    "ShearY": 0.3,
    "Rotate": 30.0,
    "Brightness": 0.9,
    "Color": 0.9,
    "Contrast": 0.9,
    "Sharpness": 0.9,
}


def _levels(names, values, ranges=LINEAR, bins=31):
  levels = [np.abs(values[names == op]) / hi * (bins - 1) for op, hi in ranges.items()]
  levels.append((1.0 - values[names == "Solarize"]) * (bins - 1))
  return np.concatenate(levels)


def test_randaugment_magnitude_std_draws_normal_levels_clipped_to_the_bins():
  """timm's mstd: each op's level normal(M, std), clipped to [0, 30]."""
  draw = lambda seed, h, w: autoaugment.randaugment_draw(seed, h, w, magnitude=15, magnitude_std=3)
  levels = _levels(*(a.ravel() for a in _draws(draw, 3000)))
  assert len(levels) > 3000
  assert stats.kstest(levels, stats.norm(15, 3).cdf).pvalue > 1e-3
  draw = lambda seed, h, w: autoaugment.randaugment_draw(seed, h, w, magnitude=29, magnitude_std=3)
  levels = _levels(*(a.ravel() for a in _draws(draw, 2000)))
  assert levels.max() <= 30 + 1e-4 and levels.min() >= 0
  at_top = int(np.sum(levels > 30 - 1e-4))
  p_top = stats.norm(29, 3).sf(30)  # Everything above the last bin lands on it.
  assert stats.binomtest(at_top, len(levels), p_top).pvalue > 1e-3, (at_top, len(levels))


def test_trivialaugment_wide_draws_one_uniform_op_at_a_uniform_bin():
  names, values = _draws(autoaugment.trivialaugment_draw, 6000)
  names, values = names[:, 0], values[:, 0]
  space = autoaugment.TRIVIALAUGMENT_WIDE
  _assert_uniform([int(np.sum(names == op)) for op in space], "TrivialAugment-Wide's ops")
  _assert_fair_signs(names, values, space)
  wide = {op: 0.99 for op in LINEAR} | {"Rotate": 135.0}
  levels = _levels(names, values, wide)
  bins = np.round(levels).astype(int)
  np.testing.assert_allclose(levels, bins, atol=1e-4)  # Whole bins only.
  _assert_uniform(np.bincount(bins, minlength=31), "TrivialAugment-Wide's bins")
  # Every value is one of torchvision's, for the translations and Posterize too.
  theirs = _torch_magnitudes(v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31)
  for op in ("TranslateX", "Posterize"):
    got = np.abs(values[names == op])
    nearest = np.min(np.abs(got[:, None] - theirs[op][0][None, :]), axis=1)
    assert nearest.max() <= 1e-5 * np.abs(got).max(), op


def test_autoaugment_draws_sub_policies_uniformly_and_each_op_with_its_probability():
  names, values = _draws(autoaugment.autoaugment_draw, 5000)
  policy = autoaugment.AUTOAUGMENT_IMAGENET_POLICY
  theirs = _torch_magnitudes(v2.AutoAugment._AUGMENTATION_SPACE, 10)
  for position in range(2):
    expected = {"Identity": 0.0}
    for sub in policy:
      op, p, _ = sub[position]
      expected[op] = expected.get(op, 0.0) + p / len(policy)
      expected["Identity"] += (1 - p) / len(policy)
    ops = sorted(expected)
    observed = [int(np.sum(names[:, position] == op)) for op in ops]
    p = stats.chisquare(observed, [expected[op] * len(names) for op in ops]).pvalue
    assert p > 1e-3, (position, dict(zip(ops, observed)))
  # Two applied ops are always one of the table's pairs, each at its bin's magnitude.
  pairs = set()
  for (a, p, ma), (b, q, mb) in policy:
    value = lambda op, m: 0.0 if m is None or theirs[op][0] is None else theirs[op][0][m]
    pairs.add((a, round(value(a, ma), 4), b, round(value(b, mb), 4)))
  both = (names[:, 0] != "Identity") & (names[:, 1] != "Identity")
  for (a, b), (va, vb) in zip(names[both], np.abs(values[both])):
    assert (a, round(va, 4), b, round(vb, 4)) in pairs, (a, va, b, vb)
  assert both.sum() > 1000
  _assert_fair_signs(names.ravel(), values.ravel(), autoaugment.AUTOAUGMENT | {"Identity": None})


POLICIES = {
    "randaugment": lambda x, s: autoaugment.randaugment(x, s),
    "trivialaugment_wide": lambda x, s: autoaugment.trivialaugment_wide(x, s),
    "autoaugment_imagenet": lambda x, s: autoaugment.autoaugment_imagenet(
        x, s, interpolation="bilinear"
    ),
}


@pytest.mark.parametrize("name", POLICIES)
def test_policies_are_deterministic_in_the_seed_eagerly_and_in_tf_data(name):
  fn = POLICIES[name]
  image = tf.constant(_images()[0])
  ds = tf.data.Dataset.range(12).map(
      lambda i: fn(image, tf.stack([tf.constant(7, tf.int64), i])), num_parallel_calls=4
  )
  views = np.stack(list(ds.as_numpy_iterator()))
  assert views.dtype == np.uint8 and views.shape == (12, H, W, 3)
  for i in (3, 10):  # Eagerly (slow: every call builds its switch anew), the same views.
    np.testing.assert_array_equal(fn(image, tf.constant([7, i], tf.int64)).numpy(), views[i])
  # Different seeds, different views (most of them: Identity, AutoAugment's skipped ops and
  # Equalize twice leave some alike).
  distinct = {view.tobytes() for view in views}
  assert len(distinct) >= 5, len(distinct)


def test_policy_by_name_and_unknown_name():
  assert set(autoaugment.POLICIES) == {"randaugment", "trivialaugment_wide", "autoaugment_imagenet"}
  image = tf.constant(_images()[1])
  np.testing.assert_array_equal(autoaugment.policy("none")(image, None), image)
  with pytest.raises(ValueError, match="randaugment"):
    autoaugment.policy("randaugment2")
  assert math.isclose(150 / 331, autoaugment.RANDAUGMENT["TranslateX"].hi)
