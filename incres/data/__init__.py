"""Input pipelines: datasets by name, the papers' augmentations, exactly resumable iterators.

One function builds any dataset named by `config.dataset`:

- a tensorflow-datasets image classification name (`cifar10`, `cifar100`, `imagenet2012`,
  `imagenette`, ...), with tfds split syntax in `config.train_split` / `config.eval_split`;
- `folder:<path>`: a `class_name/image.jpg` tree, or `<split>/class_name/image.jpg` trees;
- `digits`: scikit-learn's 1,797 bundled 8×8 digits upsampled to 32×32×3 (no download);
- `fake`: synthetic JPEG images of any size and class count, through the real decode path.

Training batches are a pure function of (config, step). Random-access sources (digits, fake,
folders, and tfds datasets small enough to hold in memory, such as CIFAR) draw a permutation per
epoch from a stateless RNG seeded by (seed, epoch), and seed every example's augmentation by
(seed, position in the training stream), so `create_train_iter(config, start_step=k)` starts
directly at batch k. Large tfds datasets (ImageNet, full-size Imagenette) are streamed: each
process reads its own tfds sub-split, an epoch is a seeded file order plus a seeded shuffle buffer,
batches never straddle epochs (the remainder of each epoch is dropped), and resuming re-reads the
current epoch's records up to the step *without decoding them*: exact, at the cost of reading at
most one epoch of raw records.

Encoded images reach the augmentations and evaluation views undecoded: from a JPEG the ResNet and
GoogLeNet crops and the centre view decode only the window they use (`decoding`, `crops`).
GoogLeNet's photometric distortions run on the accelerator when there is one (config
`photometric`): its batches then carry the [0, 1] image and the drawn distortions
(`'photometric'`), and `device_preprocess(config)` finishes them inside the train step. So do the
crops' resampling of ResNet and GoogLeNet (config `resample`): their batches carry each crop's
decoded window, uint8, and how to resample it (`'resample'`; GoogLeNet: `'resize'`).

With `config.repeated_augmentation` = k > 1 every global batch holds k views of each of its
batch_size / k images, each view seeded by its own position, laid out so that an image's views lie
on different devices (`repeated`). The centre evaluation view takes `config.eval_resize_size` and
`eval_crop_size` where they are set: FixRes-style evaluation at a size apart from training's, in
torchvision's geometry (`eval_views.eval_center`, `eval_image_size`).

Evaluation pads the last batch and carries a mask, so every example counts exactly once (unlike
the Flax ImageNet example, issue #262).

Unreadable images (truncated, empty, not an image) are skipped, counted and the first few named in
the log, without giving up exactness: a batch that fails is rebuilt from its readable rows plus
spare rows of the following batches, which depends only on the files (`create_train_iter`).
`python -m incres.data check folder:<path>` lists every unreadable file of a folder dataset.

One module per concept: `sources` (the readers, `dataset_info`), `tfds_errors` (why preparing a tfds
dataset failed), `loading` (examples out of a source, `eval_images`), `placement` (which
augmentation steps run on the accelerator), `preprocess` (normalisation, the recipes,
`device_preprocess`), `unreadable` (skipping, counting and naming unreadable images), `tfdata` (the
tf.data settings), `pipeline` (the iterators), `repeated` (repeated augmentation's batch layout) and
`__main__` (the `check` command line). The papers' augmentations and views, seeded and stateless
TensorFlow functions of (image, seed): `cifar_augment`, `resnet_augment` and `googlenet_augment`
(the recipes), `photometric` (GoogLeNet's colour distortions), `eval_views` (the training loop's
test views), built on `decoding` (whole images, or a JPEG's window), `crops` (resized crops, crop
first), `image_ops` (the small ops they share) and `imagenet_stats` (the mean, std and colour PCA).
What the train step finishes on the accelerator, in JAX: `device_photometric` (the colour
distortions) and `device_resample` (the crops' resampling).
"""

from __future__ import annotations

import importlib
from typing import Any

# The package's public names, each loaded from its module on first use. Not imported here:
# `python -m incres.data` imports this package before running `__main__`, which must quiet
# TensorFlow's start-up (`runtime.setup_process`) before TensorFlow is imported, as every tool does.
_HOMES = {
    "AUTOTUNE": "tfdata",
    "IN_MEMORY_MAX_BYTES": "sources",
    "DIGITS_SPLIT_SEED": "sources",
    "DIGITS_NUM_TEST": "sources",
    "FAKE_POOL_SIZE": "sources",
    "DatasetError": "sources",
    "DatasetInfo": "sources",
    "check_trainable": "sources",
    "dataset_info": "sources",
    "PROBE_TIMEOUT_S": "tfds_errors",
    "Placement": "placement",
    "decide_placement": "placement",
    "photometric_on_device": "placement",
    "resample_on_device": "placement",
    "normalization": "preprocess",
    "normalization_mean": "preprocess",
    "device_preprocess": "preprocess",
    "preprocess_for_eval": "preprocess",
    "eval_image_size": "preprocess",
    "eval_mean": "preprocess",
    "eval_images": "loading",
    "MAX_NAMED_BAD_IMAGES": "unreadable",
    "SPARE_BATCHES": "unreadable",
    "check_folder": "unreadable",
    "STREAM_SHUFFLE_BUFFER": "pipeline",
    "create_train_iter": "pipeline",
    "create_eval_iter": "pipeline",
    "main": "__main__",
}
_MODULES = (
    "tfdata",
    "sources",
    "tfds_errors",
    "placement",
    "preprocess",
    "loading",
    "unreadable",
    "pipeline",
    "imagenet_stats",
    "image_ops",
    "decoding",
    "crops",
    "cifar_augment",
    "resnet_augment",
    "googlenet_augment",
    "photometric",
    "eval_views",
    "device_photometric",
    "device_resample",
    "autoaugment",
    "erasing",
    "modern",
    "repeated",
)

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
  """A public name (or module) of the package, imported from its module on first use."""
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
  globals()[name] = value  # Later uses find it directly (and `monkeypatch.setattr` replaces it).
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_HOMES) | set(_MODULES))
