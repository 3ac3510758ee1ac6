"""ResNet's CIFAR training augmentation (§4.2): the per-pixel mean, 4 zero pixels each side, a
random crop of the input's size, a flip; the wide ResNets' reflected border (`padding="reflect"`);
and, with `config.auto_augment` (issue #26), a policy of `incres.data.autoaugment` on the uint8
view after them."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from incres.data import decoding, image_ops

# `config.cifar_padding` -> tf.pad's mode.
PAD_MODES = {"zero": "CONSTANT", "reflect": "REFLECT"}
# Folded into the example's seed for the policy's draws: the crop and flip keep the seeds they have
# without a policy, so a policy that changes nothing gives the same view bit for bit.
POLICY_STREAM = 0x706F6C  # "pol"


def cifar_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    mean: tf.Tensor,
    pad: int = 4,
    size: int | None = None,
    padding: str = "zero",
    policy: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> tf.Tensor:
  """ResNet §4.2: per-pixel mean subtraction, `pad` zero pixels each side, random crop, flip; then
  `policy` (uint8 `(image, seed) -> image`; None: none) on the uint8 view.

  The mean image is subtracted before padding: it is a per-pixel mean of the unshifted images, so it
  must be aligned with them, and the zero padding is then the mean colour, as in fb.resnet.torch.
  The crop has the input's size (32×32 on CIFAR). Deviation, for datasets that are not CIFAR: with
  `size`, an image of another size (a `folder:` of photos) is first resized to `size`×`size`, the
  view `eval_views.eval_single` gives and the per-pixel mean is computed in; a 32×32 image is
  untouched.

  `padding="reflect"` mirrors the border instead (without repeating the edge pixel: torch's and
  Lua Torch's reflection padding), as the wide ResNets' code does
  (szagoruyko/wide-residual-networks, `randomcrop_type reflection`). It mirrors the
  mean-subtracted image, which for a channel mean (normalize="mean_std") is the same as mirroring
  the image, as they do.

  With a policy (RandAugment, TrivialAugment-Wide, AutoAugment), it runs on the uint8 image after
  the pad, crop and flip, where timm's and torchvision's CIFAR recipes put it (`RandomCrop(32,
  padding=4)`, `RandomHorizontalFlip()`, the policy, `ToTensor()`, `Normalize`): the image and the
  mean are padded alike (zeros, or both mirrored) and cropped and flipped together (the same
  offsets and flip as without a policy), the policy sees the image with black (or mirrored)
  borders, as torchvision's, and the shifted mean is subtracted after it, so that a zero border is
  still the mean colour where the policy left it. A policy that changes nothing gives the view
  without one, bit for bit. A resized image (`size`, above) is rounded to uint8 before the policy.
  """
  crop_seed, flip_seed = image_ops.split_seed(seed, 2)
  if policy is not None:
    return _with_policy(image, seed, crop_seed, flip_seed, mean, pad, size, padding, policy)
  x = image_ops.to_float(decoding.decode(image))
  if size is not None:
    x = image_ops.resized_to(x, size)
  x = x - mean
  shape = tf.shape(x)
  x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode=PAD_MODES[padding])
  x = tf.image.stateless_random_crop(x, shape, seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(x, seed=flip_seed)


def _with_policy(image, seed, crop_seed, flip_seed, mean, pad, size, padding, policy) -> tf.Tensor:
  """`cifar_train` with a policy: pad, crop and flip the uint8 image and the mean together."""
  x = decoding.decode(image)
  if size is not None:
    resized = image_ops.resized_to(image_ops.to_float(x), size) * 255.0
    x = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
  # The pixels' uint8 values are exact in float32: the crop and flip move them unchanged.
  both = tf.concat([tf.cast(x, tf.float32), tf.broadcast_to(mean, tf.shape(x))], axis=-1)
  shape = tf.shape(both)
  both = tf.pad(both, [[pad, pad], [pad, pad], [0, 0]], mode=PAD_MODES[padding])
  # The same draws as without a policy: the crop's offsets depend on the rank, not the channels.
  both = tf.image.stateless_random_crop(both, shape, seed=crop_seed)
  both = tf.image.stateless_random_flip_left_right(both, seed=flip_seed)
  view, shifted_mean = both[..., :3], both[..., 3:]
  view = policy(
      tf.cast(view, tf.uint8), tf.random.experimental.stateless_fold_in(seed, POLICY_STREAM)
  )
  return image_ops.to_float(view) - shifted_mean
