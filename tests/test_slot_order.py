"""``triton_slot_order.slot_order``: the rows sorted by slot, against ``torch.sort(stable=True)``;
and the decode given that order (``initial_state_order``).

Runs through Triton's interpreter on CPU, on the GPU when there is one.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
import triton
import triton.language as tl
from decode_case import DecodeCase, build, check, run_triton
from hypothesis import given
from hypothesis import strategies as st
from strategies import slot_vectors
from tile_kernel_checks import kernel_calls

from gdn_ops.triton_slot_order import slot_order

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@given(slot_vectors(), st.sampled_from([None, 32]))
def test_rows_come_in_stable_ascending_slot_order(indices, max_columns):
    """With ``max_columns`` 32 the comparisons run in several steps (as they do past
    ``MAX_COLUMNS`` slots)."""
    import gdn_ops.triton_slot_order as module

    with mock.patch.object(module, "MAX_COLUMNS", max_columns or module.MAX_COLUMNS):
        order = slot_order(indices.to(DEVICE))
    expected_slots, expected_rows = torch.sort(indices, stable=True)
    assert order.dtype == indices.dtype and order.shape == (2, len(indices))
    sorted_slots, rows = order.cpu()
    assert torch.equal(rows, expected_rows.to(indices.dtype))
    assert torch.equal(sorted_slots, expected_slots)


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


# --------------------------------------------------------------------------------------------
# The decode given its order (``initial_state_order``): what an engine computes once per step
# --------------------------------------------------------------------------------------------

ORDER_CASE = DecodeCase(B=6, T=1, HK=2, group=2, K=32, V=64, state_layout="kv", state_dtype=torch.bfloat16,
                        padding_rows=(2,), spare_slots=3, slot_pad=8, pool_guard=64, out_given=True, seed=5)


def _sorting_config(kernel: str):
    """A configuration of ``kernel`` that takes its rows in slot order."""
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
    from gdn_ops.triton_decode import DecodeConfig

    if kernel == "gluon-vk-tile":  # the small cases of test_gluon_decode_{vk,kv}_tile.py
        return GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=4, vec=8, sort_rows=True)
    if kernel == "gluon-kv-tile":
        return GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=4, sort_rows=True)
    return DecodeConfig(BV=16, BK=32, num_warps=1, sort_rows=True)


KERNELS = ["triton", pytest.param("gluon-vk-tile", marks=pytest.mark.gpu),
           pytest.param("gluon-kv-tile", marks=pytest.mark.gpu)]


def _case_for(kernel: str, **changes) -> DecodeCase:
    layout = "vk" if kernel == "gluon-vk-tile" else "kv"
    return dataclasses.replace(ORDER_CASE, state_layout=layout, **changes)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_a_given_order_is_read_instead_of_sorting(kernel, index_dtype):
    """The order of these indices, given: the reference's result, and no rank kernel launched."""
    import gdn_ops.triton_slot_order as module

    inp = build(_case_for(kernel, index_dtype=index_dtype), DEVICE)
    order = slot_order(inp.indices)
    with kernel_calls(module, "_slot_order_kernel") as ranks:
        check(inp, lambda inp: run_triton(inp, _sorting_config(kernel), order=order))
    assert ranks == []


@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_outside_the_batch_in_a_given_order_are_dropped(kernel):
    """An order is the caller's, so the kernel bounds its rows: a row outside ``[0, B)`` reads and
    writes nothing (the rows it displaced keep their output and slot), and nothing out of bounds."""
    inp = build(_case_for(kernel), DEVICE)
    order = slot_order(inp.indices)
    dropped = tuple(int(r) for r in order[1, [0, 3, 5]])  # the padding row among them
    order[1, [0, 3, 5]] = torch.tensor([-1, ORDER_CASE.B, 2**31 - 1], dtype=order.dtype, device=order.device)
    check(inp, lambda inp: run_triton(inp, _sorting_config(kernel), order=order), dropped_rows=dropped)


@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA H100 80GB HBM3", ""])
def test_a_given_order_sorts_from_its_own_measured_grid(gpu):
    """With the order given the H200 and the H100 sort from :data:`SORT_ROWS_GIVEN_ORDER_FROM` (no
    rank kernel to pay for), without it from :data:`SORT_ROWS_FROM`; other GPUs never."""
    from gdn_ops.triton_decode import decode_config
    from gdn_ops.triton_slot_order import (
        SORT_ROWS_FROM,
        SORT_ROWS_GIVEN_ORDER_FROM,
        sorts_rows,
    )

    cards = [card for card in ("H200", "H100") if card in gpu]
    for order_given, table in ((False, SORT_ROWS_FROM), (True, SORT_ROWS_GIVEN_ORDER_FROM)):
        assert {key[1:]: start for key, start in table.items() if key[0] == "H100"} == {
            key[1:]: start for key, start in table.items() if key[0] == "H200"}
        for (name, layout, itemsize), start in table.items():
            if cards and name not in cards:
                continue  # the other card's entry, the same
            dtype = torch.float32 if itemsize == 4 else torch.bfloat16
            for rows_x_heads in (start - 1, start, 4 * start):
                expected = name in gpu and rows_x_heads >= start
                assert sorts_rows(gpu, layout, itemsize, rows_x_heads, order_given) == expected
                assert decode_config(rows_x_heads, 128, 128, dtype, layout, gpu, 2, order_given).sort_rows == expected
    assert all(SORT_ROWS_GIVEN_ORDER_FROM[key] <= start for key, start in SORT_ROWS_FROM.items())


@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA H100 80GB HBM3", ""])
def test_rows_of_few_heads_sort_by_themselves_from_smaller_grids(gpu):
    """Without the order, a pool of at most :data:`SORT_ROWS_FEW_HEADS_FROM`'s heads a row sorts from
    its smaller B*HV on the H200 and the H100 (only where the caller says how many heads); more heads
    a row, or no heads given, keep :data:`SORT_ROWS_FROM`; the order given sorts from its own table
    as before."""
    from gdn_ops.triton_decode import decode_config
    from gdn_ops.triton_slot_order import (
        SORT_ROWS_FEW_HEADS_FROM,
        SORT_ROWS_FROM,
        SORT_ROWS_GIVEN_ORDER_FROM,
        sorts_rows,
    )

    cards = [card for card in ("H200", "H100") if card in gpu]
    for (name, layout, itemsize), (most_heads, start) in SORT_ROWS_FEW_HEADS_FROM.items():
        if cards and name not in cards:
            continue  # the other card's entry, the same
        assert SORT_ROWS_FEW_HEADS_FROM[("H100" if name == "H200" else "H200"), layout, itemsize] == (most_heads, start)
        assert SORT_ROWS_GIVEN_ORDER_FROM[name, layout, itemsize] <= start < SORT_ROWS_FROM[name, layout, itemsize]
        dtype = torch.float32 if itemsize == 4 else torch.bfloat16
        for heads, rows_x_heads, expected in ((most_heads, start, True), (most_heads // 2, start, True),
                                              (most_heads, start - 1, False), (2 * most_heads, start, False),
                                              (None, start, False)):
            expected = expected and name in gpu
            assert sorts_rows(gpu, layout, itemsize, rows_x_heads, heads=heads) == expected, (heads, rows_x_heads)
            config = decode_config(rows_x_heads, 128, 128, dtype, layout, gpu, 2, heads=heads)
            assert config.sort_rows == expected
            assert sorts_rows(gpu, layout, itemsize, rows_x_heads, True, heads) == (name in gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_the_op_given_the_order_on_the_model_shape(layout, state_dtype):
    """The public op with ``initial_state_order`` on Qwen3-Next's heads, more tiles than fit on
    the GPU and padding rows: the reference's result, and no rank kernel of its own."""
    from tile_kernel_checks import model_case

    import gdn_ops
    import gdn_ops.triton_slot_order as module

    inp = build(model_case((16, 32), layout, {"state_dtype": state_dtype}, seed=29), "cuda")
    order = gdn_ops.slot_order(inp.indices)

    def run(inp):
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(
            inp.A_log, inp.a, inp.dt_bias, 1.0, 20.0, inp.q, inp.k, inp.v, inp.b, inp.pool.view, inp.indices,
            state_layout=layout, out=inp.out.view, initial_state_order=order)

    with kernel_calls(module, "_slot_order_kernel") as ranks:
        check(inp, run)
    assert ranks == []


@triton.jit
def _write_slots_late(source_ptr, slots_ptr, B, hold_ns, BLOCK: tl.constexpr):
    """Lets the next (PDL) kernel launch, holds ``hold_ns``, then copies ``B`` slots from ``source``."""
    tl.extra.cuda.gdc_launch_dependents()
    start = tl.extra.cuda.globaltimer()
    while tl.extra.cuda.globaltimer() - start < hold_ns:
        pass
    for first in range(0, B, BLOCK):
        offsets = first + tl.arange(0, BLOCK)
        tl.store(slots_ptr + offsets, tl.load(source_ptr + offsets, mask=offsets < B), mask=offsets < B)


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 300, 2048, 2049])
def test_slots_written_by_the_previous_kernel_under_pdl(B):
    """Under PDL the one-step rank kernel (B <= MAX_COLUMNS) counts from the slots before the
    previous kernel ends and checks them after its wait. Here the previous kernel lets it launch at
    once, then holds for 2 ms (far longer than the host takes to launch the rank kernel; both
    compiled beforehand) before it writes the slots: the order must be that of the slots written,
    not of those the first read saw. B = 2049 takes the path that waits before it reads."""
    gen = torch.Generator().manual_seed(B)
    before, after = (torch.randperm(B + 7, generator=gen)[:B].to(torch.int32).cuda() for _ in range(2))
    after[torch.rand(B, generator=gen) < 0.2] = -1
    slots = before.clone()
    for hold_ns in (0, 2_000_000):  # the first launch compiles both kernels
        slots.copy_(before)
        _write_slots_late[(1,)](after, slots, B, hold_ns, BLOCK=1024)
        order = slot_order(slots, pdl=True)
    expected_slots, expected_rows = torch.sort(after, stable=True)
    assert B == 1 or not torch.equal(torch.sort(before, stable=True)[1], expected_rows)
    assert torch.equal(order[1], expected_rows.to(torch.int32)) and torch.equal(order[0], expected_slots)
