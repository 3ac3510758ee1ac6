"""Bag of Tricks' colour augmentation on the random-resized crop (`config.color_jitter`,
`config.pca_lighting`; issue #26): brightness, contrast and saturation scaled by factors
uniform in [1 - s, 1 + s], in a random order, then AlexNet's PCA lighting noise.

Source. He et al. 2019 (arXiv 1812.01187, Section 2.1) write "scale hue, saturation, and
brightness with coefficients uniformly drawn from [0.6, 1.4]" and "add PCA noise with a coefficient
sampled from a normal distribution N(0, 0.1)". The run behind its ResNet-50-D numbers (GluonCV's
`resnet50_v1d-mixup.sh` and `.log` in dmlc/web-data: `--use-rec`, `use_rec=True`) read ImageNet
through `mx.io.ImageRecordIter(brightness=0.4, contrast=0.4, saturation=0.4, pca_noise=0.1,
random_resized_crop=True, rand_mirror=True)` (dmlc/gluon-cv `scripts/classification/imagenet/
train_imagenet.py`, `get_data_rec`), whose augmenter is mxnet's `src/io/image_aug_default.cc`
(the same code from its June 2018 introduction to mxnet's last release). That code is followed
here, being what produced the paper's numbers: contrast, not hue, and these formulas on the uint8
crop after the resize (the mirror, applied later when mxnet copies the pixels out, commutes with
every op here):

- the three factors `1 + uniform(-s, s)` are drawn for every image, then the order is a uniform
  random permutation of (brightness, contrast, saturation);
- brightness: `x * a` (OpenCV `convertTo`);
- contrast: `x * a + (1 - a) * mean(gray)` over the image (`convertTo`);
- saturation: `x * a + gray * (1 - a)` per pixel (`addWeighted`);
- each result rounded half to even and clipped to uint8 (OpenCV's `saturate_cast`), in float32;
- gray: OpenCV's fixed-point luma (`cvtColor(..., CV_RGB2GRAY)`: weights 4899, 9617, 1868 over
  2^14, rounded), which mxnet applies to its BGR images (libjpeg-turbo / `imdecode` decode to
  BGR; `iter_image_recordio_2.cc` swaps to RGB only when copying out), so the weights that land on
  (R, G, B) are 1868, 9617, 4899: blue and red swapped against the usual luma. Kept, as the run
  had it (`GRAY_WEIGHTS_RGB`);
- lighting: `x + 255 * pca_shift` per channel, truncated to an integer and clipped to [0, 255]
  (the `int` arithmetic of `image_aug_default.cc`), with `alpha ~ N(0, std²)` per component
  (`incres.data.resnet_augment.pca_shift`).

Deviations: the eigenvalues are `incres.data.imagenet_stats`' ([0, 1] scale, four digits: 255 x
0.0045 = 1.1475 where mxnet has 1.148); mxnet's own random engine is not reproduced (the draws are
stateless TensorFlow ones from the example's seed, so views depend only on (config, step)); the
paper's hue is not applied (its code has none). mxnet's Gluon `transforms.RandomColorJitter` /
`RandomLighting` (the script's path without `--use-rec`) differ again (the usual luma weights,
float images) and are not what the run used.

Host cost (a 224 crop, one EPYC core, tf.data, shared machine): jitter and lighting add about 1.2
to 1.5 ms of CPU per image to the crop and flip's 1.8 to 2.1 ms (contrast 0.3, saturation 0.7,
lighting 0.5); it runs on the host, as the rest of this recipe (`incres.data.placement`).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from incres.data import image_ops, resnet_augment

OPS = ("brightness", "contrast", "saturation")  # `color_jitter`'s strengths are in this order.
# OpenCV's RGB2GRAY coefficients (R2Y, G2Y, B2Y = 4899, 9617, 1868 over 2^14), as they fall on an
# RGB image when mxnet applies RGB2GRAY to its BGR buffers: (R, G, B) weights.
GRAY_WEIGHTS_RGB = (1868, 9617, 4899)
GRAY_SHIFT = 14
# The example's colour stream: `stateless_fold_in(seed, COLOR_STREAM)`, apart from the four streams
# `incres.data.modern.train` splits the seed into, so that those draw what they drew before.
COLOR_STREAM = 4


def jitter_params(seed: tf.Tensor, strengths: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
  """`(order, factors)`: int32 `[3]`, the op (index into `OPS`) at each position, a uniform random
  permutation; float32 `[3]`, brightness, contrast and saturation factors `1 + uniform(-s, s)`."""
  order_seed, factor_seed = image_ops.split_seed(seed, 2)
  order = tf.argsort(tf.random.stateless_uniform([len(OPS)], order_seed))
  u = tf.random.stateless_uniform([len(OPS)], factor_seed, minval=-1.0, maxval=1.0)
  return tf.cast(order, tf.int32), 1.0 + u * tf.constant(strengths, tf.float32)


def _gray(x: tf.Tensor) -> tf.Tensor:
  """`gray` of `x`, an integer-valued float32 image: its sums stay below 2^24 and the scale is a
  power of two, so float32 computes OpenCV's integer arithmetic exactly."""
  # A matrix product rather than a broadcast multiply and a sum over the 3 channels (contrast on a
  # 224 crop: 0.3 against 0.8 ms on one EPYC core), exact all the same: every partial sum is an
  # integer below 2^24.
  shape = tf.shape(x)
  weights = tf.constant(GRAY_WEIGHTS_RGB, tf.float32)[:, None]
  weighted = tf.reshape(tf.matmul(tf.reshape(x, [-1, 3]), weights), [shape[0], shape[1], 1])
  return tf.floor((weighted + (1 << (GRAY_SHIFT - 1))) * (1.0 / (1 << GRAY_SHIFT)))


def gray(image: tf.Tensor) -> tf.Tensor:
  """float32 `[H, W, 1]`: the uint8 luma of uint8 `image` as mxnet's augmenter computes it."""
  return _gray(tf.cast(image, tf.float32))


def _saturate(x: tf.Tensor) -> tf.Tensor:
  """OpenCV's `saturate_cast<uchar>` of float32 (round half to even, clip), kept in float32."""
  return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def _adjust(x: tf.Tensor, op: str, factor: tf.Tensor) -> tf.Tensor:
  """`adjust` on the uint8 values held in float32 (the ops pass them on without casts)."""
  if op == "brightness":
    return _saturate(x * factor)
  if op == "contrast":
    mean = tf.cast(tf.reduce_mean(tf.cast(_gray(x), tf.float64)), tf.float32)
    return _saturate(x * factor + (1.0 - factor) * mean)
  if op == "saturation":
    return _saturate(x * factor + _gray(x) * (1.0 - factor))
  raise ValueError(f"colour jitter op must be one of {OPS}, not {op!r}.")


def adjust(image: tf.Tensor, op: str, factor: tf.Tensor) -> tf.Tensor:
  """uint8 `image` with `op` (one of `OPS`) at `factor`, as `image_aug_default.cc` applies it."""
  return tf.cast(_adjust(tf.cast(image, tf.float32), op, factor), tf.uint8)


def _apply_jitter(
    x: tf.Tensor, order: tf.Tensor, factors: tf.Tensor, strengths: Sequence[float]
) -> tf.Tensor:
  branches = [
      (lambda x, op=op, k=k: _adjust(x, op, factors[k])) if strengths[k] else (lambda x: x)
      for k, op in enumerate(OPS)
  ]
  for position in range(len(OPS)):
    x = tf.switch_case(order[position], [lambda b=b, x=x: b(x) for b in branches])
  return x


def apply_jitter(
    image: tf.Tensor, order: tf.Tensor, factors: tf.Tensor, strengths: Sequence[float]
) -> tf.Tensor:
  """uint8 `image` through the ops of `order` at `factors`; ops of strength 0 are skipped (their
  factor is 1: unchanged pixels either way)."""
  x = _apply_jitter(tf.cast(image, tf.float32), order, factors, strengths)
  return tf.ensure_shape(tf.cast(x, tf.uint8), image.shape)


def _lighting(x: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
  # mxnet adds in float and stores in an int: truncation, the same as the floor once clipped.
  return tf.clip_by_value(tf.floor(x + 255.0 * resnet_augment.pca_shift(seed, std)), 0.0, 255.0)


def lighting(image: tf.Tensor, seed: tf.Tensor, std: float) -> tf.Tensor:
  """uint8 `image` plus AlexNet's PCA shift (`resnet_augment.pca_shift` on the 0-255 scale),
  truncated and clipped to uint8 as mxnet's augmenter does."""
  return tf.cast(_lighting(tf.cast(image, tf.float32), seed, std), tf.uint8)


def color_augment(
    image: tf.Tensor, seed: tf.Tensor, *, strengths: Sequence[float], lighting_std: float
) -> tf.Tensor:
  """uint8 `image` (the crop) through the colour jitter of `strengths` (brightness, contrast,
  saturation) and PCA lighting noise of `lighting_std` (0: none), seeded by `seed`."""
  jitter_seed, lighting_seed = image_ops.split_seed(seed, 2)
  x = tf.cast(image, tf.float32)  # uint8 values throughout: each op rounds and clips.
  if any(strengths):
    x = _apply_jitter(x, *jitter_params(jitter_seed, strengths), strengths)
  if lighting_std > 0:
    x = _lighting(x, lighting_seed, lighting_std)
  return tf.ensure_shape(tf.cast(x, tf.uint8), image.shape)


def stream(seed: tf.Tensor) -> tf.Tensor:
  """The colour stream's seed of an example's `seed`."""
  return tf.random.experimental.stateless_fold_in(seed, COLOR_STREAM)
