"""Where the augmentation runs: which parts the train step finishes on the accelerator."""

from __future__ import annotations

import jax

from incres import configs


def _accelerated(place: str) -> bool:
  return place == "device" or (place == "auto" and jax.default_backend() in ("gpu", "tpu"))


def photometric_on_device(config) -> bool:
  """Whether GoogLeNet's photometric distortions run in the train step (config `photometric`;
  "auto" also when its crops are resized there, `resample="device"`: the distortions come after)."""
  place = configs.check_photometric(config)
  if config.augment != "googlenet":
    return False
  return _accelerated(place) or (place == "auto" and configs.check_resample(config) == "device")


def resample_on_device(config) -> bool:
  """Whether the crop's resampling and what follows it run in the train step (config `resample`):
  ResNet's resample, flip and normalisation, or GoogLeNet's resize and flip (with its colour
  distortions there too)."""
  place = configs.check_resample(config)
  if config.augment == "googlenet":
    return _accelerated(place) and photometric_on_device(config)
  return config.augment == "resnet_imagenet" and _accelerated(place)
