"""ResNet's ImageNet training augmentation (§3.4): scale augmentation (shorter side uniform in
[256, 480], a random 224 crop), flip, the mean, and AlexNet's PCA colour shift.

The crop is made before the resize (`incres.data.crops`): of a JPEG only the window under it is
decoded and resampled, on the host or, with `resample_on_device=True`, in the train step.
"""

from __future__ import annotations

import tensorflow as tf

from incres import wire
from incres.data import crops, decoding, image_ops, imagenet_stats

# ResNet §3.4 scale augmentation, for a 224 crop; other crop sizes scale it.
RESNET_SCALE_RANGE = (256, 480)


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
  scale_seed, crop_seed, _, _ = image_ops.split_seed(seed, 4)
  lo = round(scale_range[0] * size / 224)
  hi = round(scale_range[1] * size / 224)
  shorter = tf.random.stateless_uniform([], scale_seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
  new_shape = image_ops.shorter_side_shape(height, width, shorter)
  # `tf.image.stateless_random_crop(x, [size, size, 3], crop_seed)` on the resized image draws its
  # offset thus (tensorflow/python/ops/random_crop_ops.py).
  limit = tf.concat([new_shape - size + 1, [1]], 0)
  offset = tf.random.stateless_uniform([3], crop_seed, maxval=tf.int32.max, dtype=tf.int32) % limit
  return shorter, new_shape, offset[:2]


def pca_shift(seed: tf.Tensor, std: float = 0.1) -> tf.Tensor:
  """AlexNet colour augmentation's RGB shift: sum_i alpha_i * lambda_i * v_i,
  alpha_i ~ N(0, std²)."""
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=std)
  eigvec = tf.constant(imagenet_stats.PCA_EIGENVECTORS, tf.float32)
  return tf.linalg.matvec(eigvec, alpha * tf.constant(imagenet_stats.PCA_EIGENVALUES, tf.float32))


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, std: float = 0.1) -> tf.Tensor:
  """AlexNet colour augmentation: `image` plus `pca_shift(seed, std)`."""
  return image + pca_shift(seed, std)


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
  that window is decoded (of a JPEG) and resampled (`crops.resized_crop`). Same draws as
  `resnet_imagenet_train_reference`, the whole-image implementation, and the same pixels up to
  the resampling kernel (`crops.ANTIALIAS_ABOVE`).

  `resample_on_device=True` stops after decoding the window and returns `{"image": the window
  (uint8 buffer), "resample": its sampling parameters and the colour shift}`
  (`crops.resized_crop_for_device`'s `[3 + 2·size]`, then the PCA shift's 3): the accelerator
  resamples, flips and normalises the batch (`incres.data.device_resample.finish`, in the train
  step) with the same draws, to float32 rounding. `mean` is then not used.
  """
  _, _, flip_seed, pca_seed = image_ops.split_seed(seed, 4)

  def box(height, width):
    _, new_shape, offset = resnet_scale_and_offset(
        height, width, seed, size=size, scale_range=scale_range
    )
    return new_shape[0], new_shape[1], offset[0], offset[1]

  if resample_on_device:
    buffer, params = crops.resized_crop_for_device(
        image, size, box, flip=image_ops.flips(flip_seed)
    )
    # `params` packs `wire.resample_layout(size)` up to its last field, the colour shift.
    params = tf.concat([params, pca_shift(pca_seed, pca_std)], 0)
    return {
        "image": buffer,
        "resample": tf.ensure_shape(params, [wire.resample_layout(size).length]),
    }
  # The flip is the crop's sampling order, and 1/255, the mean and the colour shift one fused
  # affine map (issue #15: 17% of this function's time on one core); the same values as
  # flipping, scaling, subtracting and shifting in turn, to float32 rounding.
  x = crops.resized_crop(image, size, box, flip=image_ops.flips(flip_seed))
  return x * (1.0 / 255.0) + (pca_shift(pca_seed, pca_std) - mean)


def resnet_imagenet_train_reference(
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
  scale_seed, crop_seed, flip_seed, pca_seed = image_ops.split_seed(seed, 4)
  lo = round(scale_range[0] * size / 224)
  hi = round(scale_range[1] * size / 224)
  shorter = tf.random.stateless_uniform([], scale_seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
  x = image_ops.resize_shorter_side(image_ops.to_float(decoding.decode(image)), shorter)
  x = tf.image.stateless_random_crop(x, [size, size, 3], seed=crop_seed)
  x = tf.image.stateless_random_flip_left_right(x, seed=flip_seed)
  return pca_lighting(x - mean, pca_seed, pca_std)
