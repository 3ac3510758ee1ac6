"""The shipped parameter vectors' declared layouts (`incres.wire`): contiguous, covering, and
every field packed and read back in place."""

from __future__ import annotations

import numpy as np
import pytest

from incres import wire

LAYOUTS = [
    wire.resample_layout(224),
    wire.resample_layout(32),
    wire.resize_layout(224),
    wire.PHOTOMETRIC,
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.name}-{l.length}")
def test_fields_are_contiguous_and_cover_the_vector(layout):
  offset = 0
  for field in layout.fields:
    assert field.offset == offset and field.length > 0 and field.dtype == "float32"
    offset += field.length
  assert offset == layout.length
  assert len({f.name for f in layout.fields}) == len(layout.fields)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l.name}-{l.length}")
def test_pack_then_get_round_trips_every_field(layout):
  values = {
      f.name: np.arange(f.offset, f.offset + f.length, dtype=np.float32) + 0.5
      for f in layout.fields
  }
  packed = layout.pack(np.concatenate, **values)
  assert packed.shape == (layout.length,)
  np.testing.assert_array_equal(packed, np.arange(layout.length, dtype=np.float32) + 0.5)
  batch = np.stack([packed, packed + 1.0])
  for f in layout.fields:
    got = layout.get(packed, f.name)
    expected = values[f.name][0] if f.length == 1 else values[f.name]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(layout.get(batch, f.name)[1], np.asarray(expected) + 1.0)


def test_known_offsets():
  """The layouts the host and the device agreed on before they were declared here."""
  assert wire.resample_layout(224).offset("row_positions") == 3
  assert wire.resample_layout(224).offset("colour_shift") == 3 + 2 * 224
  assert wire.resample_layout(224).length == 3 + 2 * 224 + 3
  assert wire.resize_layout(224).offset("row_axis") == 5
  assert wire.resize_layout(224).length == 5 + 2 * (2 * 224 + 2)
  assert wire.PHOTOMETRIC.offset("magnitudes") == 4 and wire.PHOTOMETRIC.length == 8


def test_pack_refuses_fields_out_of_order():
  layout = wire.resample_layout(4)
  with pytest.raises(ValueError):
    layout.pack(np.concatenate, cols=[1.0], rows=[1.0])
  with pytest.raises(KeyError):
    layout.get(np.zeros(layout.length), "nope")
