"""``triton_slot_order.slot_order``: the rows sorted by slot, against ``torch.sort(stable=True)``.

Runs through Triton's interpreter on CPU, on the GPU when there is one.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gdn_ops.triton_slot_order import slot_order

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@st.composite
def slot_vectors(draw):
    """Distinct slots of a pool in a shuffled order, with padding: -1, repeated, and out-of-range
    values past int32 in an int64 vector (which a cast to int32 would turn into real slots)."""
    B = draw(st.integers(0, 300))
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    slots = torch.randperm(B + draw(st.integers(0, 64)), generator=gen)[:B].to(dtype)
    padding = torch.rand(B, generator=gen) < draw(st.sampled_from([0.0, 0.2, 1.0]))
    pad = (2**32 + 5) if dtype == torch.int64 and draw(st.booleans()) else -1
    return torch.where(padding, torch.tensor(pad, dtype=dtype), slots)


@given(slot_vectors(), st.sampled_from([None, 32]))
def test_rows_come_in_stable_ascending_slot_order(indices, max_columns):
    """With ``max_columns`` 32 the comparisons run in several steps (as they do past
    ``MAX_COLUMNS`` slots)."""
    import gdn_ops.triton_slot_order as module

    with mock.patch.object(module, "MAX_COLUMNS", max_columns or module.MAX_COLUMNS):
        sorted_slots, rows = slot_order(indices.to(DEVICE))
    expected_slots, expected_rows = torch.sort(indices, stable=True)
    assert rows.dtype == torch.int32 and sorted_slots.dtype == indices.dtype
    assert torch.equal(rows.cpu(), expected_rows.to(torch.int32))
    assert torch.equal(sorted_slots.cpu(), expected_slots)


@pytest.mark.parametrize(("indices", "got"), [
    (torch.zeros(4, dtype=torch.float32, device=DEVICE), "torch.float32 of shape [4]"),
    (torch.zeros(2, 3, dtype=torch.int32, device=DEVICE), "of shape [2, 3]"),
    # made on the device: moving a strided view there would give a dense copy
    (torch.arange(8, dtype=torch.int32, device=DEVICE)[::2], "strides [2]"),
])
def test_refuses_what_it_cannot_read_before_any_launch(indices, got):
    with pytest.raises(ValueError, match=r"argument 'indices' must be a contiguous 1-D int32 or int64 tensor.*"
                                         + got.replace("[", r"\[").replace("]", r"\]")):
        slot_order(indices)
