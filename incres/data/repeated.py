"""Repeated augmentation's batch layout: which image, and which of its views, each row holds.

Repeated augmentation (`config.repeated_augmentation` = k > 1; Hoffer et al. 2020, "Augment your
batch"; Berman et al. 2019; the RA sampler of torchvision's `references/classification/sampler.py`
and timm's `RepeatAugSampler`, both from DeiT): every global batch of B rows holds B / k images,
each k times, each copy (a "view") augmented with a seed of its own, its position in the training
stream. The references' sampler repeats each index of an epoch's permutation k times, pads, deals
the list out to the replicas in turn (`indices[rank::world_size]`: consecutive copies of an image
go to consecutive replicas) and keeps about len(dataset) / world_size indices per replica (rounded
down to a multiple of 256 in all), so an epoch is as many views as the split has images, of about
1/k of its images, a fresh random subset each epoch. Here an epoch likewise holds k·⌊n/k⌋ views
(n when k divides the split's n images): the first ⌊n/k⌋ images of the epoch's permutation (the
same seeded permutation as with k = 1), each k times; the run's length in epochs and steps is
unchanged.

The layout (`layout`): row r of the global batch holds view r // I of image r % I (I = B / k:
view-major, all first views, then all second views, ...). The global batch is sharded contiguously,
process p holding rows [p·B/P, (p+1)·B/P) and each device B/D consecutive rows of them, so the views
of one image, I rows apart, lie on k different devices whenever k <= D (I >= B/D, a device's share),
and on k different processes (hosts) whenever k <= P. With more views than devices (one CPU) each
device holds ⌊k/D⌋ or ⌈k/D⌉ of each image's views, spread evenly (the references' sampler, with
fewer replicas than repetitions, also puts several on one). Streamed datasets (ImageNet) read each
process's own share of the files, so an image's views stay on its process, laid out the same way
over the process's devices (different devices whenever k is at most the local device count); an
epoch there reads the first records of its shuffled order that its batches use (about 1/k of the
process's share), and a resumed run skips the consumed ones unread, as without repetition.
`incres.data.pipeline` builds the batches; k = 1 is its plain order.
"""

from __future__ import annotations

import numpy as np


def layout(global_batch: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
  """`(image, view)`, int64 [global_batch] each: which of the batch's `global_batch // repeats`
  images and which of its `repeats` views each row of a global batch holds with repeated
  augmentation: row r holds view r // I of image r % I (I = global_batch // repeats), so the
  copies of an image are I rows apart, on different devices of the contiguously sharded batch
  (above). repeats=1: row r is image r."""
  if repeats < 1 or global_batch % repeats:
    raise ValueError(f"{global_batch} rows do not hold whole images of {repeats} views.")
  rows = np.arange(global_batch, dtype=np.int64)
  images = global_batch // repeats
  return rows % images, rows // images
