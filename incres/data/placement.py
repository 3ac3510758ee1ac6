"""Where the augmentation runs: which parts the train step finishes on the accelerator.

`decide_placement(config, backend)` decides it once per run (`train.prepare_run` calls it once
and hands the `Placement` to the input pipeline, the train step and its `device_preprocess`, and the
run's message); `photometric_on_device` and `resample_on_device` are its two answers, for callers
that need only one.
"""

from __future__ import annotations

import dataclasses

import jax

from incres import configs


@dataclasses.dataclass(frozen=True)
class Placement:
  """Which augmentation steps the train step finishes on the accelerator.

  `photometric`: GoogLeNet's colour distortions (batches carry `'photometric'`); `resample`: the
  crop's resampling and what follows it (ResNet's resample, flip and normalisation: `'resample'`;
  GoogLeNet's resize and flip, with its colour distortions: `'resize'` and `'photometric'`).
  """

  augment: str
  photometric: bool = False
  resample: bool = False

  @property
  def on_device(self) -> bool:
    """Whether the train step finishes any of the augmentation."""
    return self.photometric or self.resample

  @property
  def batch_keys(self) -> frozenset[str]:
    """The batch keys besides 'image' and 'label' that the train step's preprocess consumes (a
    step built with this placement but without its preprocess refuses a batch carrying them)."""
    keys = set()
    if self.photometric:
      keys.add("photometric")
    if self.resample:
      keys.add("resize" if self.augment == "googlenet" else "resample")
    return frozenset(keys)


def _accelerated(place: str, backend: str) -> bool:
  return place == "device" or (place == "auto" and backend in ("gpu", "tpu"))


def decide_placement(config, backend: str | None = None) -> Placement:
  """Where `config`'s augmentation runs on `backend` (default `jax.default_backend()`).

  Photometric (config `photometric`, GoogLeNet only): on the device when "device", or "auto" on an
  accelerator or when the crops are resized there (`resample="device"`: the distortions come
  after). Resample (config `resample`): on the device when "device", or "auto" on an accelerator;
  GoogLeNet's only with its colour distortions there too. "random_resized_crop" (with its
  auto-augment policy and random erasing) runs wholly on the host.
  """
  backend = jax.default_backend() if backend is None else backend
  photometric_place = configs.check_photometric(config)
  resample_place = configs.check_resample(config)
  if config.augment == "random_resized_crop":
    # All on the host, wherever the run is: its policies (incres.data.autoaugment) work on the
    # uint8 crop after its resize, and its colour ops after them, so neither part can move.
    return Placement(config.augment)
  if config.augment == "googlenet":
    photometric = _accelerated(photometric_place, backend) or (
        photometric_place == "auto" and resample_place == "device"
    )
    resample = _accelerated(resample_place, backend) and photometric
  else:
    photometric = False
    resample = config.augment == "resnet_imagenet" and _accelerated(resample_place, backend)
  return Placement(config.augment, photometric=photometric, resample=resample)


def photometric_on_device(config) -> bool:
  """Whether GoogLeNet's photometric distortions run in the train step (config `photometric`;
  "auto" also when its crops are resized there, `resample="device"`: the distortions come after)."""
  return decide_placement(config).photometric


def resample_on_device(config) -> bool:
  """Whether the crop's resampling and what follows it run in the train step (config `resample`):
  ResNet's resample, flip and normalisation, or GoogLeNet's resize and flip (with its colour
  distortions there too)."""
  return decide_placement(config).resample
