"""The modern ImageNet training transform (`config.augment = "random_resized_crop"`, issue #26).

torchvision's reference recipe (`references/classification/presets.py`,
`ClassificationPresetTrain`) and timm's (`transforms_imagenet_train`): a random-resized crop
(area 8%-100% of the image, aspect ratio 3/4-4/3) resized bilinearly to `image_size`, a
horizontal flip, then Bag of Tricks' colour jitter and PCA lighting noise on the uint8 crop
(`config.color_jitter`, `config.pca_lighting`: `incres.data.color_jitter`; off by default), then
the auto-augment policy (`config.auto_augment`: `incres.data.autoaugment`), then the [0, 1]
scale, the mean and the std, then random erasing (`config.random_erasing`:
`incres.data.erasing`). A seeded, stateless function of (image, seed): each example's view depends
on (config, step) through its position's seed, so resumed training stays exact; all of it runs on
the host (`incres.data.placement`).

The crop is GoogLeNet's (`googlenet_augment.sample_crop_window`), which is torchvision's
`RandomResizedCrop.get_params`: the same area and log-uniform aspect draws, `round` to whole
pixels, up to ten tries (drawn at once here, the first that fits taken: the same distribution as
drawing them in turn) and the same fallback (the whole image, its aspect clamped into the range,
centred). Resizing decodes only the crop's window of a JPEG and resamples it with incres' crop
resampler (`crops.resized_crop`): plain bilinear where the crop shrinks by up to 2x, the
antialiased kernel beyond, where torchvision antialiases every shrink (the difference is
`crops.ANTIALIAS_ABOVE`'s). The resized crop is rounded to uint8, as torchvision's is, before
the policy.
"""

from __future__ import annotations

import functools
from typing import Callable

import tensorflow as tf

from incres import configs
from incres.data import autoaugment, color_jitter, crops, erasing, googlenet_augment

AUGMENT = "random_resized_crop"  # Its `config.augment` value.


def train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    mean,
    std,
    policy: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    erasing_probability: float = 0.0,
    erasing_fill: str = "zero",
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0),
    lighting_std: float = 0.0,
) -> tf.Tensor:
  """float32 `[size, size, 3]`: `image` (uint8 `[H, W, 3]` or encoded bytes) through the crop,
  flip, colour jitter of strengths `jitter` (brightness, contrast, saturation) and PCA lighting of
  `lighting_std` (`color_jitter.color_augment`; all 0: none), `policy` (uint8 `(image, seed) ->
  image`, None: none), `(x / 255 - mean) / std` and random erasing at `erasing_probability`."""
  crop_seed, flip_seed, policy_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4)
  )

  def box(height, width):
    top, left, h, w = tf.unstack(
        tf.cast(googlenet_augment.sample_crop_window(height, width, crop_seed), tf.float32)
    )
    # The image resized so that the crop becomes size×size, and the crop's corner in it.
    scale_y, scale_x = size / h, size / w
    new_h = tf.cast(height, tf.float32) * scale_y
    new_w = tf.cast(width, tf.float32) * scale_x
    return new_h, new_w, top * scale_y, left * scale_x

  flip = tf.random.stateless_uniform([], flip_seed) < 0.5  # RandomHorizontalFlip(0.5).
  x = crops.resized_crop(image, size, box, flip=flip)
  x = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
  if any(jitter) or lighting_std > 0:  # Its own stream: the four above draw as without it.
    x = color_jitter.color_augment(
        x, color_jitter.stream(seed), strengths=tuple(jitter), lighting_std=lighting_std
    )
  if policy is not None:
    x = policy(x, policy_seed)
  x = (tf.cast(x, tf.float32) * (1.0 / 255.0) - mean) / std
  if erasing_probability > 0:
    x = erasing.random_erasing(x, erase_seed, probability=erasing_probability, fill=erasing_fill)
  return tf.ensure_shape(x, [size, size, 3])


def policy_fn(config) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None:
  """The uint8 `(image, seed) -> image` policy of `config.auto_augment` (and `randaugment_*`,
  `auto_augment_interpolation`); None for "none". `augment="cifar"` takes it too."""
  name = config.get("auto_augment", "none")
  if name == "none":
    return None
  return autoaugment.policy(
      name,
      num_ops=config.get("randaugment_num_ops", 2),
      magnitude=config.get("randaugment_magnitude", 9),
      magnitude_std=config.get("randaugment_magnitude_std", 0.0),
      interpolation=config.get("auto_augment_interpolation", "nearest"),
  )


def train_fn(config, *, mean, std) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """`(image, seed) -> view` for `config` (`color_jitter`, `pca_lighting`, `auto_augment`,
  `randaugment_*`, `auto_augment_interpolation`, `random_erasing*`; checked by
  `configs.check_auto_augment`)."""
  configs.check_auto_augment(config)
  return functools.partial(
      train,
      size=config.image_size,
      mean=mean,
      std=std,
      policy=policy_fn(config),
      erasing_probability=config.get("random_erasing", 0.0),
      erasing_fill=config.get("random_erasing_fill", "zero"),
      jitter=tuple(float(s) for s in config.get("color_jitter", (0.0, 0.0, 0.0))),
      lighting_std=float(config.get("pca_lighting", 0.0)),
  )
