"""ResNet's CIFAR training augmentation (§4.2): the per-pixel mean, 4 zero pixels each side, a
random crop of the input's size, a flip; the wide ResNets' reflected border (`padding="reflect"`).
"""

from __future__ import annotations

import tensorflow as tf

from incres.data import decoding, image_ops

# `config.cifar_padding` -> tf.pad's mode.
PAD_MODES = {"zero": "CONSTANT", "reflect": "REFLECT"}


def cifar_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    mean: tf.Tensor,
    pad: int = 4,
    size: int | None = None,
    padding: str = "zero",
) -> tf.Tensor:
  """ResNet §4.2: per-pixel mean subtraction, `pad` zero pixels each side, random crop, flip.

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
  """
  crop_seed, flip_seed = image_ops.split_seed(seed, 2)
  x = image_ops.to_float(decoding.decode(image))
  if size is not None:
    x = image_ops.resized_to(x, size)
  x = x - mean
  shape = tf.shape(x)
  x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode=PAD_MODES[padding])
  x = tf.image.stateless_random_crop(x, shape, seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(x, seed=flip_seed)
