"""Random erasing (incres.data.erasing): the box's area and aspect distribution against
torchvision's `RandomErasing`, the probability, the fills (zero; timm's per-pixel normal), and
determinism in the seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from incres.data import erasing

torch = pytest.importorskip("torch")
v2 = pytest.importorskip("torchvision.transforms.v2")

H, W = 40, 56


def _boxes(n: int, h: int = H, w: int = W) -> np.ndarray:
  ds = tf.data.Dataset.range(n).map(
      lambda i: erasing.erasing_box(h, w, tf.stack([tf.constant(3, tf.int64), i]))
  )
  return next(iter(ds.batch(n))).numpy()


def _torchvision_boxes(n: int) -> np.ndarray:
  torch.manual_seed(0)
  transform = v2.RandomErasing(p=1.0)
  image = torch.zeros(3, H, W)
  params = [transform.make_params([image]) for _ in range(n)]
  return np.array([[p["i"], p["j"], p["h"], p["w"]] for p in params if p["v"] is not None])


def test_defaults_are_torchvision_s():
  transform = v2.RandomErasing()
  assert tuple(transform.scale) == erasing.SCALE and tuple(transform.ratio) == erasing.RATIO
  assert transform.p == 0.5 and transform.value == [0.0]


def test_box_area_and_aspect_are_distributed_as_torchvision_s():
  ours, theirs = _boxes(3000), _torchvision_boxes(3000)
  top, left, h, w = ours.T
  assert np.all((h > 0) & (h < H) & (w > 0) & (w < W))  # Strictly inside, as torchvision's.
  assert np.all((top >= 0) & (top + h <= H) & (left >= 0) & (left + w <= W))
  for name, mine, ref in (
      ("area", h * w / (H * W), theirs[:, 2] * theirs[:, 3] / (H * W)),
      ("log aspect h/w", np.log(h / w), np.log(theirs[:, 2] / theirs[:, 3])),
      ("top", top / (H - h + 1), theirs[:, 0] / (H - theirs[:, 2] + 1)),
  ):
    p = stats.ks_2samp(mine, ref).pvalue
    assert p > 1e-3, (name, p)
  # Against the definition too: area fraction within the scale (pixel rounding aside), aspect
  # within the ratio range.
  area = h * w / (H * W)
  assert 0.01 < area.min() < 0.03 and 0.3 < area.max() < 0.36
  assert np.exp(np.log(h / w)).min() > 0.2 and np.exp(np.log(h / w)).max() < 4.5


def test_nothing_is_erased_where_no_box_fits():
  # A one-pixel-high image: no box is strictly shorter than it.
  assert np.all(_boxes(50, 1, 200)[:, 2:] == 0)


def _erased(fill: str, probability: float, n: int):
  image = tf.fill([H, W, 3], 5.0)
  ds = tf.data.Dataset.range(n).map(
      lambda i: erasing.random_erasing(
          image, tf.stack([tf.constant(9, tf.int64), i]), probability=probability, fill=fill
      )
  )
  return next(iter(ds.batch(n))).numpy()


@pytest.mark.parametrize("fill", erasing.FILLS)
def test_probability_fill_and_the_rest_of_the_image_kept(fill):
  out = _erased(fill, 0.5, 1000)
  changed = out != 5.0
  erased = changed.reshape(1000, -1).any(axis=1)
  assert stats.binomtest(int(erased.sum()), 1000, 0.5).pvalue > 1e-3, erased.sum()
  for view, mask in zip(out[erased][:50], changed[erased][:50]):
    rows, cols = np.nonzero(mask.any(axis=2))
    # One rectangle across all channels.
    box = np.zeros_like(mask)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    np.testing.assert_array_equal(mask | box, box)
  values = out[changed]
  if fill == "zero":
    assert np.all(values == 0.0)
  else:  # timm's mode='pixel': independent standard normal values.
    assert len(values) > 100_000
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1.0) < 0.01
    assert stats.kstest(values[:20_000], "norm").pvalue > 1e-3


def test_erasing_is_deterministic_in_the_seed_and_zero_probability_is_off():
  image = tf.random.stateless_normal([H, W, 3], [1, 2])
  seed = tf.constant([4, 5], tf.int64)
  a = erasing.random_erasing(image, seed, probability=1.0, fill="pixel").numpy()
  np.testing.assert_array_equal(
      erasing.random_erasing(image, seed, probability=1.0, fill="pixel").numpy(), a
  )
  other = erasing.random_erasing(image, tf.constant([4, 6], tf.int64), probability=1.0).numpy()
  assert not np.array_equal(a, image.numpy()) and not np.array_equal(other, a)
  off = erasing.random_erasing(image, seed, probability=0.0, fill="pixel").numpy()
  np.testing.assert_array_equal(off, image.numpy())
  with pytest.raises(ValueError, match="zero"):
    erasing.random_erasing(image, seed, probability=0.5, fill="mean")
