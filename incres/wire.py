"""The wire format of the parameter vectors the host ships with a crop left to the accelerator.

With `resample="device"` each example of a batch carries a float32 vector saying how the train step
is to finish its crop: ResNet's `'resample'` (`resample_layout`: written by
`incres.data.crops.resized_crop_for_device` and `resnet_augment.resnet_imagenet_train`, read by
`incres.data.device_resample.view` and `finish`) and GoogLeNet's `'resize'` (`resize_layout`:
written by `incres.data.googlenet_augment.googlenet_train`, read by
`device_resample.googlenet_view`); GoogLeNet's colour distortions travel as `'photometric'`
(`PHOTOMETRIC`: written by `incres.data.photometric.photometric_params`, read there by
`apply_photometric` and on the device by `incres.data.device_photometric.distort`). Each field's
name, offset, length and dtype are declared once here; the host packs with `Layout.pack` and the
device reads with `Layout.get`, so the two sides cannot disagree on an index.

Imports nothing of the package (and neither TensorFlow nor JAX): both sides import it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of a shipped vector: `length` consecutive elements from `offset`."""

  name: str
  offset: int
  length: int
  dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Layout:
  """A shipped vector's fields, contiguous, in order, from offset 0."""

  name: str
  fields: tuple[Field, ...]

  @classmethod
  def of(cls, name: str, spec: Sequence[tuple[str, int]]) -> Layout:
    """The layout of the `(field name, length)` pairs laid end to end."""
    fields, offset = [], 0
    for field_name, length in spec:
      fields.append(Field(field_name, offset, length))
      offset += length
    return cls(name, tuple(fields))

  @property
  def length(self) -> int:
    """The vector's length."""
    last = self.fields[-1]
    return last.offset + last.length

  def field(self, name: str) -> Field:
    """The field called `name`."""
    for f in self.fields:
      if f.name == name:
        return f
    raise KeyError(f"{self.name} has no field {name!r}.")

  def offset(self, name: str) -> int:
    """Where field `name` starts."""
    return self.field(name).offset

  def get(self, params: Any, name: str) -> Any:
    """Field `name` of `params` (its last axis the vector): a scalar per vector for a field of
    length 1, else its `length` elements."""
    f = self.field(name)
    if f.length == 1:
      return params[..., f.offset]
    return params[..., f.offset : f.offset + f.length]

  def pack(self, concat: Callable[..., Any], **values: Any) -> Any:
    """The vector of `values` (one 1-D sequence or tensor per field, by name), joined by
    `concat(parts, 0)` (`tf.concat`, `np.concatenate`). The values may name only the leading
    fields: `resized_crop_for_device` packs all but ResNet's colour shift, appended later."""
    names = [f.name for f in self.fields]
    if list(values) != names[: len(values)]:
      raise ValueError(f"{self.name} packs {names} in order, got {list(values)}.")
    return concat([values[n] for n in names[: len(values)]], 0)


@functools.lru_cache(maxsize=None)
def resample_layout(size: int) -> Layout:
  """ResNet's `'resample'` vector for a `size` view: the window's rows and columns, 1 where the
  host resampled the view itself, the `size` row and `size` column sampling positions, then the
  PCA colour shift (3)."""
  return Layout.of(
      "resample",
      [
          ("rows", 1),
          ("cols", 1),
          ("host_resampled", 1),
          ("row_positions", size),
          ("col_positions", size),
          ("colour_shift", 3),
      ],
  )


@functools.lru_cache(maxsize=None)
def resize_layout(size: int) -> Layout:
  """GoogLeNet's `'resize'` vector for a `size` view: the window's rows and columns, the drawn
  kernel (an index into `googlenet_augment.INTERPOLATIONS`), the flip, 1 where the host resized
  the view itself, then each axis' positions (`googlenet_augment._resize_positions`: 2·size + 2
  each)."""
  axis = 2 * size + 2
  return Layout.of(
      "resize",
      [
          ("rows", 1),
          ("cols", 1),
          ("kernel", 1),
          ("flip", 1),
          ("host_resized", 1),
          ("row_axis", axis),
          ("col_axis", axis),
      ],
  )


# GoogLeNet's `'photometric'` vector (`photometric.photometric_params`, read by
# `photometric.apply_photometric` and `device_photometric.distort`): the op at each of the four
# positions (an index into `photometric.PHOTOMETRIC_OPS`), then the brightness delta, contrast,
# saturation and hue magnitudes.
PHOTOMETRIC = Layout.of("photometric", [("order", 4), ("magnitudes", 4)])
