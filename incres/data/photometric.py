"""GoogLeNet's photometric distortions on the host: brightness, contrast, saturation and hue in a
random order, as TensorFlow's `tf.image.stateless_random_*` draw and apply them.

The draws travel as `wire.PHOTOMETRIC` (`photometric_params`); they are applied here
(`apply_photometric`) or, with `photometric="device"`, in the train step
(`incres.data.device_photometric`, the same ops in closed form). Both sides read the vector by
field name.
"""

from __future__ import annotations

import tensorflow as tf

from incres import wire
from incres.data import image_ops

# The paper cites Howard's photometric distortions without magnitudes; these are the ones of the
# Inception reference preprocessing (TF-slim `inception_preprocessing.distort_color`).
BRIGHTNESS_DELTA = 32 / 255
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)
# The photometric distortions: `wire.PHOTOMETRIC`'s "order" indexes this tuple, and its
# "magnitudes" are in this order.
PHOTOMETRIC_OPS = ("brightness", "contrast", "saturation", "hue")
# TensorFlow's kernel of each.
_ADJUST = {
    "brightness": tf.image.adjust_brightness,
    "contrast": tf.image.adjust_contrast,
    "saturation": tf.image.adjust_saturation,
    "hue": tf.image.adjust_hue,
}


def photometric_params(seed: tf.Tensor) -> tf.Tensor:
  """The random draws of `photometric_distortions` as float32 `wire.PHOTOMETRIC` (`[8]`).

  "order": the op applied at each of the four positions (an index into `PHOTOMETRIC_OPS`);
  "magnitudes": the brightness delta, contrast factor, saturation factor and hue delta, drawn
  exactly as `tf.image.stateless_random_{brightness,contrast,saturation,hue}` draw them from their
  seeds. The accelerator applies them with `incres.data.device_photometric.distort` (config
  `photometric`).
  """
  order_seed, b_seed, c_seed, s_seed, h_seed = image_ops.split_seed(seed, 5)
  order = tf.argsort(tf.random.stateless_uniform([len(PHOTOMETRIC_OPS)], order_seed))
  uniform = tf.random.stateless_uniform
  values = [
      uniform([], b_seed, minval=-BRIGHTNESS_DELTA, maxval=BRIGHTNESS_DELTA),
      uniform([], c_seed, minval=CONTRAST_RANGE[0], maxval=CONTRAST_RANGE[1]),
      uniform([], s_seed, minval=SATURATION_RANGE[0], maxval=SATURATION_RANGE[1]),
      uniform([], h_seed, minval=-HUE_DELTA, maxval=HUE_DELTA),
  ]
  return wire.PHOTOMETRIC.pack(
      tf.concat, order=tf.cast(order, tf.float32), magnitudes=tf.stack(values)
  )


def apply_photometric(image: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
  """The four distortions of `params` (`photometric_params`) in its order, each clipped to
  [0, 1]."""
  order = tf.cast(wire.PHOTOMETRIC.get(params, "order"), tf.int32)
  magnitudes = wire.PHOTOMETRIC.get(params, "magnitudes")
  ops = [
      lambda x, adjust=_ADJUST[name], k=k: adjust(x, magnitudes[k])
      for k, name in enumerate(PHOTOMETRIC_OPS)
  ]
  x = image
  for position in range(len(ops)):
    # Bind the current `x` now: the branches are traced inside this iteration.
    x = tf.switch_case(order[position], [lambda op=op, x=x: op(x) for op in ops])
    x = tf.clip_by_value(x, 0.0, 1.0)
  return x


def photometric_distortions(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation and hue, applied in a random order; input/output in [0, 1].

  On the host these four cost more than the rest of GoogLeNet's augmentation together (the
  saturation and hue kernels convert every pixel to HSV and back): 2.1 against 1.3 ms per image
  on one EPYC core. `photometric="device"` moves them to the accelerator
  (`googlenet_augment.googlenet_train`).
  """
  return apply_photometric(image, photometric_params(seed))
