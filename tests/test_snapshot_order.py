"""The snapshot slot order (``triton_slot_order.snapshot_slot_order``, ``GluonTileConfig.snapshot_order``):
the rows ranked in one program from one read of the slots, and each tile checking its own row's
slot after its wait.

The rank runs through Triton's interpreter on CPU; the tiles that check it are Gluon kernels, so
they run on the GPU and are only compiled for sm_90 on the CPU.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from decode_case import DecodeCase, build, check, run_triton
from hypothesis import given
from hypothesis import strategies as st
from sm90_compile import assert_no_spills, run_in_child
from strategies import slot_vectors
from test_slot_order import _write_slots_late

from gdn_ops.gluon_decode_kv_tile import (
    KV_2B_TILE_CONFIG,
    KV_4B_TILE_CONFIG,
    GluonTileConfig,
    snapshot_order_reason,
)
from gdn_ops.gluon_decode_vk_tile import VK_2B_TILE_TWO_WARP_CONFIG, VK_4B_TILE_CONFIG
from gdn_ops.triton_slot_order import SNAPSHOT_MAX_ROWS, snapshot_slot_order

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@given(slot_vectors(), st.integers(0, 400))
def test_rows_come_as_one_permutation_in_ascending_slot_order(indices, num_slots):
    """Slots outside ``[0, num_slots)`` (padding, past the pool, past int32) count as -1 and come
    first; ties by row."""
    order = snapshot_slot_order(indices.to(DEVICE), num_slots)
    clamped = torch.where((indices >= 0) & (indices < num_slots), indices, -1)
    expected_slots, expected_rows = torch.sort(clamped, stable=True)
    assert order.dtype == torch.int32 and order.shape == (2, len(indices))
    sorted_slots, rows = order.cpu().long()
    assert torch.equal(rows, expected_rows) and torch.equal(sorted_slots, expected_slots)


@pytest.mark.parametrize(("indices", "needs"), [
    (torch.zeros(4, dtype=torch.float32, device=DEVICE), r"contiguous 1-D int32 or int64 tensor; got torch.float32"),
    (torch.arange(8, dtype=torch.int32, device=DEVICE)[::2], r"contiguous 1-D .* strides \[2\]"),
    (torch.zeros(SNAPSHOT_MAX_ROWS + 1, dtype=torch.int32, device=DEVICE),
     rf"at most {SNAPSHOT_MAX_ROWS} rows \(got {SNAPSHOT_MAX_ROWS + 1}\)"),
])
def test_refuses_what_it_cannot_sort_before_any_launch(indices, needs):
    with pytest.raises(ValueError, match=r"snapshot_slot_order: argument 'indices' .*" + needs):
        snapshot_slot_order(indices, 10)


@pytest.mark.parametrize("config", [VK_4B_TILE_CONFIG, KV_2B_TILE_CONFIG], ids=["vk", "kv"])
def test_tiles_refuse_a_snapshot_of_more_rows_than_one_program_sorts(config):
    q = torch.empty(SNAPSHOT_MAX_ROWS + 1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
    snapshot = config._replace(sort_rows=True, snapshot_order=True)
    assert snapshot_order_reason(q, snapshot) == (f"at most {SNAPSHOT_MAX_ROWS} rows for snapshot_order, sorted in "
                                                  f"one program (got B={SNAPSHOT_MAX_ROWS + 1})")
    assert snapshot_order_reason(q[:SNAPSHOT_MAX_ROWS], snapshot) is None
    assert snapshot_order_reason(q, config) is None


def compiled_report(layout: str, config: GluonTileConfig, state: str) -> str:
    """``ptxas -v`` of the ``layout`` tile compiled for sm_90 with a snapshot order to check."""
    from sm90_compile import ptxas_report
    from tile_kernel_checks import compile_recorded_launch

    import gdn_ops.gluon_decode_kv_tile as kv
    import gdn_ops.gluon_decode_vk_tile as vk

    module, kernel, launcher = ((vk, "_decode_vk_tile_kernel", "launch_decode_vk_tile") if layout == "vk" else
                                (kv, "_decode_kv_tile_kernel", "launch_decode_kv_tile"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[state]
    compiled = compile_recorded_launch(module, kernel, launcher, layout, config, dtype, snapshot_order=True)
    assert "ld.global.cg" in compiled.asm["ptx"], "the slot was not read past L1"
    return ptxas_report(compiled.asm["ptx"])


@pytest.mark.parametrize(("layout", "config", "state"), [
    ("vk", VK_4B_TILE_CONFIG, "fp32"), ("vk", VK_2B_TILE_TWO_WARP_CONFIG._replace(store_eviction="evict_last"), "bf16"),
    ("kv", KV_4B_TILE_CONFIG._replace(parts=8, tail_split=4, tail_per_sm=1), "fp32"), ("kv", KV_2B_TILE_CONFIG, "bf16"),
], ids=["vk-fp32", "vk-bf16", "kv-fp32-parts-tail", "kv-bf16"])
def test_checking_tiles_compile_without_spills(layout, config, state):
    """The check (one slot read past L1, and a second copy of the state on a change) fits the
    shipped register caps."""
    snapshot = config._replace(sort_rows=True, snapshot_order=True)
    assert_no_spills(run_in_child("test_snapshot_order", f"t.compiled_report({layout!r}, t.{snapshot!r}, {state!r})"))


# --------------------------------------------------------------------------------------------
# On the GPU: the tiles against the float64 reference
# --------------------------------------------------------------------------------------------

def _case(layout: str, state_dtype: torch.dtype, B: int, **changes) -> DecodeCase:
    case = DecodeCase(B=B, T=1, HK=4, group=2, K=128, V=128, state_layout=layout, state_dtype=state_dtype,
                      padding_rows=tuple(sorted({0, B // 2, B - 1})) if B > 2 else (), spare_slots=9, slot_pad=8,
                      pool_guard=64, out_given=True, seed=B)
    return dataclasses.replace(case, **changes)


def _snapshot_config(layout: str, state_dtype: torch.dtype):
    shipped = {("vk", 4): VK_4B_TILE_CONFIG, ("vk", 2): VK_2B_TILE_TWO_WARP_CONFIG, ("kv", 4): KV_4B_TILE_CONFIG,
               ("kv", 2): KV_2B_TILE_CONFIG}[layout, state_dtype.itemsize]
    return shipped._replace(sort_rows=True, snapshot_order=True)


LAYOUTS = [("vk", torch.float32), ("vk", torch.bfloat16), ("kv", torch.float32), ("kv", torch.bfloat16)]
LAYOUT_IDS = ["vk-fp32", "vk-bf16", "kv-fp32", "kv-bf16"]


@pytest.mark.gpu
@pytest.mark.parametrize(("layout", "state_dtype"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(("B", "changes"), [(1, {}), (77, {}), (300, {"index_dtype": torch.int64, "padding_value": 2**40}),
                                            (SNAPSHOT_MAX_ROWS, {"HK": 1})], ids=["1", "77", "300-int64", "max"])
def test_decode_with_a_snapshot_order_matches_reference(layout, state_dtype, B, changes):
    """Through ``launch_decode``: the snapshot order, and not the checked rank kernel, orders the rows;
    every row, padding ones included, matches the reference with its guards."""
    import gdn_ops.triton_decode as launcher

    case = _case(layout, state_dtype, B, **changes)
    config = _snapshot_config(layout, state_dtype)
    launched = []
    with mock.patch.object(launcher, "slot_order", side_effect=AssertionError("the checked rank kernel ran")):
        check(build(case, "cuda"), lambda inp: run_triton(inp, config, launched))
    assert launched == [config]


@pytest.mark.gpu
@pytest.mark.parametrize(("layout", "state_dtype"), LAYOUTS, ids=LAYOUT_IDS)
def test_a_stale_snapshot_is_corrected_row_by_row(layout, state_dtype):
    """An order ranked from other slots than the rows address now (every row's slot moved, some rows
    turned into padding and some padding into rows): each tile must take its state from the slot its
    row holds now, so the result is the reference's for the current slots."""
    from gdn_ops.gluon_decode_kv_tile import launch_decode_kv_tile
    from gdn_ops.gluon_decode_vk_tile import launch_decode_vk_tile

    inp = build(_case(layout, state_dtype, 96), "cuda")
    gen = torch.Generator().manual_seed(3)
    stale = inp.indices[torch.randperm(96, generator=gen)].clone()
    stale[torch.rand(96, generator=gen) < 0.1] = -1
    sorted_slots, rows = snapshot_slot_order(stale, inp.case.num_slots)
    changed = int((sorted_slots != inp.indices[rows.long()].clamp(min=-1)).sum())
    assert changed > 80, changed
    launch = launch_decode_vk_tile if layout == "vk" else launch_decode_kv_tile
    config = _snapshot_config(layout, state_dtype)

    def run(inp):
        c = inp.case
        launch(inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, sorted_slots, inp.out.view,
               scale=c.K**-0.5, use_qk_l2norm_in_kernel=c.l2norm, softplus_beta=1.0, softplus_threshold=20.0,
               config=config, pdl=True, l2_eps=1e-6, rows=rows, batch_indices=inp.indices)
        return inp.out.view

    check(inp, run)


@pytest.mark.gpu
@pytest.mark.parametrize(("layout", "state_dtype"), LAYOUTS, ids=LAYOUT_IDS)
def test_slots_written_by_the_previous_kernel_under_pdl(layout, state_dtype):
    """The previous kernel lets the decode's launches start, holds 2 ms, then writes the slots: the
    one-program rank reads them before that write (seen from the order it stored), and the tiles
    must still update the slots written. PDL lets the rank start early but does not promise it
    (with other processes' kernels on the GPU it may not), so the step is taken until one stale read
    is seen, each result checked against the reference."""
    import gdn_ops.triton_decode as launcher

    B = 160
    case = _case(layout, state_dtype, B)
    config = _snapshot_config(layout, state_dtype)
    orders = []

    def snapshot_kept(indices, num_slots, pdl=False):
        orders.append(snapshot_slot_order(indices, num_slots, pdl))
        return orders[-1]

    def step(inp, hold_ns):
        after = inp.indices.clone()
        before = after[torch.randperm(B, generator=torch.Generator().manual_seed(hold_ns % 7))]
        inp.indices.copy_(before)
        _write_slots_late[(1,)](after, inp.indices, B, hold_ns, BLOCK=1024)
        return run_triton(inp, config)

    def stale_rows() -> int:
        inp = build(case, "cuda")  # the slots as written
        sorted_slots, rows = orders[-1].long()
        return int((sorted_slots != torch.where(inp.indices >= 0, inp.indices, -1)[rows]).sum())

    with mock.patch.object(launcher, "snapshot_slot_order", snapshot_kept):
        step(build(case, "cuda"), 0)  # compiles every kernel of the step first
        for _ in range(5):
            check(build(case, "cuda"), lambda inp: step(inp, 2_000_000))
            if stale_rows() > B // 2:
                break
        else:
            pytest.fail("in 5 steps the rank never read the slots before the previous kernel wrote them")
