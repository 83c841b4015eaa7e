"""The decode kernels against the float64 reference: every dtype, layout, stride and padding case.

On CPU the Triton kernel runs in Triton's interpreter (small shapes) and the op runs its PyTorch
kernel; on a GPU the op runs the Triton kernel with the full ranges and the production tiles.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TRITON_INTERPRET
from decode_case import (
    PERSISTENT_CASE,
    PERSISTENT_VARIANTS,
    DecodeCase,
    assert_close_to_reference,
    build,
    check,
    run_op,
    run_triton,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import decode_cases

needs_interpreter = pytest.mark.skipif(not TRITON_INTERPRET, reason="Triton interpreter off (TRITON_INTERPRET!=1)")


def _interpreter_config(case: DecodeCase):
    """One block of V per program: the interpreter's cost grows with the number of programs."""
    import triton

    from gdn_ops.triton_decode import DecodeConfig

    return DecodeConfig(BV=triton.next_power_of_2(case.V), BK=triton.next_power_of_2(case.K), num_warps=4)


@needs_interpreter
@given(decode_cases(small=True))
def test_triton_kernel_matches_reference_in_interpreter(case):
    check(build(case, "cpu"), lambda inp: run_triton(inp, _interpreter_config(case)))


@needs_interpreter
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("BV", [8, 16, 32])
def test_triton_partial_value_blocks_are_masked(layout, BV):
    """V = 48 or 96 split into BV-row blocks: the last block is partial, and K = 96 pads the key tile."""
    from gdn_ops.triton_decode import DecodeConfig

    case = DecodeCase(B=2, T=2, HK=1, group=2, K=96, V=48 if BV != 32 else 96, state_layout=layout,
                      padding_rows=(1,), slot_pad=3, out_given=True, seed=BV)
    check(build(case, "cpu"), lambda inp: run_triton(inp, DecodeConfig(BV=BV, BK=128, num_warps=2)))


@needs_interpreter
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("from_old_state", [True, False], ids=["o-from-old-state", "o-from-new-state"])
def test_triton_step_orders_match_reference(layout, from_old_state):
    """Both ways of taking o (from the old tile, from the updated one) over two tokens, with a
    padding row and a partial key tile."""
    from gdn_ops.triton_decode import DecodeConfig

    case = DecodeCase(B=3, T=2, HK=2, group=2, K=24, V=32, state_layout=layout, state_dtype=torch.float32,
                      padding_rows=(1,), slot_pad=2, out_given=True, seed=7)
    config = DecodeConfig(BV=16, BK=32, num_warps=1, from_old_state=from_old_state)
    check(build(case, "cpu"), lambda inp: run_triton(inp, config))


@needs_interpreter
@pytest.mark.parametrize("changes", [
    {}, {"fused_gating": False}, {"index_dtype": None, "padding_rows": ()},
    {"index_dtype": torch.int64, "padding_value": 1000}, {"state_dtype": torch.bfloat16, "l2norm": True},
    {"T": 2}], ids=["fused", "unfused", "no-indices", "past-pool-int64", "bf16-l2norm", "two-tokens"])
@pytest.mark.parametrize("sort_rows", [False, True], ids=["batch-order", "slot-order"])
def test_triton_operands_first_matches_reference(changes, sort_rows):
    """The one-token order that loads q, k, v and the gates before the slot (the launcher takes it
    at T = 1 with the rows as given, and the slot-first order otherwise: two tokens, rows in slot
    order), with padding rows and a partial key tile, in the kv layout that the rule serves."""
    from gdn_ops.triton_decode import DecodeConfig

    case = dataclasses.replace(DecodeCase(B=3, T=1, HK=2, group=2, K=24, V=32, state_layout="kv",
                                          padding_rows=(1,), slot_pad=2, out_given=True, seed=11), **changes)
    config = DecodeConfig(BV=16, BK=32, num_warps=1, operands_first=True, sort_rows=sort_rows)
    check(build(case, "cpu"), lambda inp: run_triton(inp, config))


@pytest.mark.parametrize(("rows_x_heads", "dtype", "gpu", "expected"), [
    (8, torch.float32, "NVIDIA H100 80GB HBM3", (16, 1)), (16, torch.float32, "NVIDIA H100 80GB HBM3", (16, 1)),
    (17, torch.float32, "NVIDIA H100 80GB HBM3", (32, 1)), (64, torch.float32, "NVIDIA H100 80GB HBM3", (32, 1)),
    (65, torch.float32, "NVIDIA H100 80GB HBM3", (16, 1)), (32, torch.bfloat16, "NVIDIA H100 80GB HBM3", (32, 1)),
    (17, torch.bfloat16, "NVIDIA H100 80GB HBM3", (32, 1)), (33, torch.bfloat16, "NVIDIA H100 80GB HBM3", (32, 1)),
    (16, torch.bfloat16, "NVIDIA H100 80GB HBM3", (16, 1)), (32, torch.float32, "NVIDIA H200", (16, 1)),
    (32, torch.bfloat16, "NVIDIA H200", (16, 1)), (32, torch.float32, "", (16, 1))])
def test_operands_first_kv_tiles_where_measured(rows_x_heads, dtype, gpu, expected):
    """The H100's kv tiles in the operands-first order under PDL: 32 value rows on one warp from
    B*HV = 17, to 64 with an fp32 state, to 32 with bf16 (where KV_TILES takes over with the same
    tile); KV_TILES elsewhere and without PDL."""
    from gdn_ops.triton_decode import decode_config

    config = decode_config(rows_x_heads, 128, 128, dtype, "kv", gpu)
    assert (config.BV, config.num_warps) == expected
    assert config.operands_first == (rows_x_heads <= 64 and gpu != "")
    # launched without PDL, KV_TILES' tile (no prefetch before the wait for the larger tile to lean on)
    without_pdl = decode_config(rows_x_heads, 128, 128, dtype, "kv", gpu, pdl=False)
    assert without_pdl == decode_config(rows_x_heads, 128, 128, dtype, "kv", "", pdl=False)._replace(
        operands_first=config.operands_first)


@pytest.mark.parametrize(("rows_x_heads", "dtype", "layout", "gpu", "pdl", "expected"), [
    (8, torch.float32, "kv", "NVIDIA H100 80GB HBM3", True, True),
    (16, torch.bfloat16, "kv", "NVIDIA H100 80GB HBM3", True, True),
    (1, torch.float32, "kv", "NVIDIA H100 80GB HBM3", True, True),
    (17, torch.float32, "kv", "NVIDIA H100 80GB HBM3", True, False),
    (64, torch.float32, "kv", "NVIDIA H100 80GB HBM3", True, False),
    (17, torch.bfloat16, "kv", "NVIDIA H100 80GB HBM3", True, True),
    (64, torch.bfloat16, "kv", "NVIDIA H100 80GB HBM3", True, True),
    (65, torch.bfloat16, "kv", "NVIDIA H100 80GB HBM3", True, False),
    (32, torch.bfloat16, "kv", "NVIDIA H100 80GB HBM3", False, False),
    (8, torch.float32, "kv", "NVIDIA H100 80GB HBM3", False, False),
    (8, torch.float32, "vk", "NVIDIA H100 80GB HBM3", True, False),
    (8, torch.float32, "kv", "NVIDIA H200", True, False), (8, torch.float32, "kv", "", True, False)])
def test_early_tile_where_measured(rows_x_heads, dtype, layout, gpu, pdl, expected):
    """The early tile on the H100's kv grids under PDL up to B*HV = 16 with an fp32 state (its
    16-row tiles) and up to 64 with bf16 (on one warp from 17), always in the operands-first order;
    nowhere else."""
    from gdn_ops.triton_decode import decode_config

    config = decode_config(rows_x_heads, 128, 128, dtype, layout, gpu, pdl=pdl)
    assert config.early_tile == expected
    assert not config.early_tile or (config.operands_first and config.num_warps == 1
                                     and config.BV == (16 if rows_x_heads <= 16 else 32))


@pytest.mark.parametrize(("changes", "pdl", "expected"), [
    ({}, True, True), ({}, False, False), ({"index_dtype": None, "padding_rows": ()}, True, False),
    ({"T": 2}, True, False), ({"B": 64}, True, False)])
def test_launcher_applies_the_early_tile_only_where_it_can(changes, pdl, expected):
    """A config asking for the early tile gets it (``EARLY_TILE``) only where the launch has what it
    speculates on: PDL with the state prefetched before the wait (not past PREFETCH_MAX_STATE_BYTES:
    64 rows of 8 fp32 heads is 32 MiB), slot indices, one token (the operands-first order). The
    launch is recorded on CPU, not run."""
    from tile_kernel_checks import kernel_calls

    import gdn_ops.triton_decode as launcher
    from gdn_ops.triton_decode import DecodeConfig

    case = dataclasses.replace(DecodeCase(B=2, T=1, HK=4, group=2, K=128, V=128, state_layout="kv",
                                          state_dtype=torch.float32, pool_guard=0, out_given=True), **changes)
    inp = build(case, "cpu")
    config = DecodeConfig(BV=16, BK=128, num_warps=1, operands_first=True, early_tile=True)
    with kernel_calls(launcher, "_decode_kernel") as calls:
        launcher.launch_decode(inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices,
                               inp.out.view, scale=case.K**-0.5, use_qk_l2norm_in_kernel=True, state_layout="kv",
                               config=config, pdl=pdl)
    (_, _, kwargs), = calls
    assert kwargs["EARLY_TILE"] is expected


# Rows 2 and 3 are padding, so the stale read at odd rows (the next row's slot) covers every case:
# row 1 a padding slot early and its own after, row 3 the reverse, row 5 another row's live slot
# (wrapping to row 0); the even rows read the same slot twice, row 2 a padding one.
_STALE_SLOT_CASE = DecodeCase(B=6, T=1, HK=2, group=2, K=32, V=32, state_layout="kv", padding_rows=(2, 3),
                              spare_slots=3, slot_pad=4, out_given=True)


def _check_stale_slot(case: DecodeCase, BV: int, variant: str) -> None:
    """``case`` through ``variant``'s launcher with the early tile forced (``BV`` rows, one warp)."""
    from benchmarks.variants import load_variant
    from gdn_ops.triton_decode import DecodeConfig

    config = DecodeConfig(BV=BV, BK=32, num_warps=1, operands_first=True, early_tile=True)
    launch = load_variant(variant).launch_decode
    check(build(case, "cpu"), lambda inp: run_triton(inp, config, launch_decode=launch))


@needs_interpreter
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("BV", [16, 32])
def test_early_tile_is_reloaded_where_the_slot_changed(state_dtype, BV):
    """The early tile's choice (``DecodeConfig.early_tile``) in the interpreter, through the variant
    ``early_tile_stale_slot`` whose slot read before the wait is stale at odd rows: each row must
    step its own slot's state whichever read it kept, and no other slot may change. The GPU test
    of the real race is tests/test_pdl.py's."""
    _check_stale_slot(dataclasses.replace(_STALE_SLOT_CASE, state_dtype=state_dtype, seed=BV), BV,
                      "early_tile_stale_slot")


@needs_interpreter
def test_an_early_tile_kept_whatever_the_slot_is_caught_in_the_interpreter():
    """The test above reaches the reload: the early tile kept at every row fails it."""
    with pytest.raises(AssertionError):
        _check_stale_slot(_STALE_SLOT_CASE, 16, "mutant_early_tile_unchecked_stale_slot")


@needs_interpreter
def test_launcher_takes_the_kv_tile_of_its_pdl():
    """The launcher asks for the tile of the launch it makes: on an H100 (its name patched in) a kv
    grid of B*HV = 32 takes 32 value rows under PDL and KV_TILES' 16 without (the interpreter's
    launch)."""
    from unittest import mock

    from gdn_ops import triton_decode

    case = DecodeCase(B=4, T=1, HK=4, group=2, K=32, V=32, state_layout="kv", state_dtype=torch.float32,
                      padding_rows=(1,), seed=3)
    inp = build(case, "cpu")
    launched = []
    with mock.patch.object(triton_decode, "gpu_name", lambda device: "NVIDIA H100 80GB HBM3"):
        with_pdl, without_pdl = (triton_decode.default_config(inp.q, inp.k, inp.v, inp.pool.view, "kv", pdl=pdl)
                                 for pdl in (True, False))
        check(inp, lambda i: run_triton(i, None, launched))
    assert (with_pdl.BV, without_pdl.BV) == (32, 16)
    assert launched == [without_pdl]


@pytest.mark.parametrize(("rows_x_heads", "layout", "gpu", "expected"), [
    (32, "kv", "NVIDIA H100 80GB HBM3", True), (64, "kv", "NVIDIA H100 80GB HBM3", True),
    (65, "kv", "NVIDIA H100 80GB HBM3", False), (32, "vk", "NVIDIA H100 80GB HBM3", False),
    (8, "kv", "NVIDIA H200", True), (128, "kv", "NVIDIA H200", False), (32, "vk", "NVIDIA H200", False),
    (32, "kv", "NVIDIA A100-SXM4-80GB", False), (32, "kv", "", False)])
def test_operands_first_where_measured(rows_x_heads, layout, gpu, expected):
    """The operands-first order on the H100's and the H200's kv grids up to B*HV = 64, both state
    dtypes; not in the vk layout (no gain there) nor on cards it was not measured on."""
    from gdn_ops.triton_decode import decode_config

    for dtype in (torch.float32, torch.bfloat16):
        assert decode_config(rows_x_heads, 128, 128, dtype, layout, gpu).operands_first == expected


@needs_interpreter
@pytest.mark.parametrize("sort_rows", [False, True], ids=["batch-order", "slot-order"])
def test_triton_reads_strided_indices(sort_rows):
    """Indices that are every third element of a larger buffer (a column of a 2-D tensor): the
    elements between hold other rows' slots, so a kernel that read them as contiguous would update
    the wrong slots."""
    from gdn_ops.triton_decode import DecodeConfig

    case = DecodeCase(B=4, T=1, HK=2, group=2, K=16, V=32, padding_rows=(2,), indices_stride=3, out_given=True,
                      seed=17)
    config = DecodeConfig(BV=32, BK=16, num_warps=1, sort_rows=sort_rows)
    check(build(case, "cpu"), lambda inp: run_triton(inp, config))


@needs_interpreter
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_triton_rows_in_slot_order_match_reference(layout):
    """``sort_rows``: programs take the rows in ascending slot order (padding rows first); every row's
    output and slot come out as in batch order."""
    from gdn_ops.triton_decode import DecodeConfig

    case = DecodeCase(B=5, T=2, HK=2, group=2, K=24, V=32, state_layout=layout, state_dtype=torch.float32,
                      padding_rows=(1, 3), slot_pad=2, out_given=True, seed=11)
    config = DecodeConfig(BV=16, BK=32, num_warps=1, sort_rows=True)
    check(build(case, "cpu"), lambda inp: run_triton(inp, config))


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(16, 32), (4, 8)], ids=["tp1", "tp4"])
@pytest.mark.parametrize(("layout", "BV", "num_warps"), [("vk", 8, 1), ("kv", 64, 4)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_triton_rows_in_slot_order_on_the_model_shape(heads, layout, BV, num_warps, state_dtype):
    """``sort_rows`` with the large-batch tiles on Qwen3-Next's heads: more programs than fit on the
    GPU at once, padding rows at the start, middle and end, under PDL."""
    from tile_kernel_checks import check_launch, model_case

    from gdn_ops.triton_decode import DecodeConfig

    case = model_case(heads, layout, {"state_dtype": state_dtype}, seed=13)
    check_launch(case, DecodeConfig(BV=BV, BK=128, num_warps=num_warps, sort_rows=True))


@pytest.mark.parametrize(
    ("rows_x_heads", "act_itemsize", "gpu", "new_state"),
    [
        (256, 2, "NVIDIA H200", True),  # B=8 at TP=1
        (511, 2, "NVIDIA H200", True),
        (255, 2, "NVIDIA H200", False),
        (512, 2, "NVIDIA H200", False),
        (2048, 2, "NVIDIA H200", False),
        (256, 4, "NVIDIA H200", False),  # fp32 activations take o from the old state everywhere
        (256, 2, "NVIDIA H100 80GB HBM3", True),  # the H200's table (ot_*_1077935: +1.8 at TP=4 B=32)
        (512, 2, "NVIDIA H100 80GB HBM3", False),
        (256, 2, "", False),
    ],
)
def test_o_comes_from_the_updated_state_only_where_measured(rows_x_heads, act_itemsize, gpu, new_state):
    """An fp32 vk state with 2-byte activations over B*HV 256-511 on the H200 and the H100; every
    other tile below the 2-byte vk large-grid tile takes o from the old state."""
    from gdn_ops.triton_decode import decode_config

    config = decode_config(rows_x_heads, 128, 128, torch.float32, "vk", gpu, act_itemsize)
    assert (config.BV, config.num_warps) == ((4, 1) if rows_x_heads <= 32 else (8, 1))
    assert config.from_old_state == (not new_state)
    for dtype, layout in ((torch.bfloat16, "vk"), (torch.float32, "kv"), (torch.bfloat16, "kv")):
        assert decode_config(rows_x_heads, 128, 128, dtype, layout, gpu, act_itemsize).from_old_state


@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA H100 80GB HBM3", ""])
def test_the_two_byte_vk_large_grid_tile_takes_o_from_the_updated_state(gpu):
    """The 8 KB tile of a 2-byte vk state, every GPU: o from the updated state (12% faster on the H200)."""
    from gdn_ops.triton_decode import decode_config

    large, below = (decode_config(n, 128, 128, torch.bfloat16, "vk", gpu) for n in (4096, 4095))
    assert (large.BV, large.from_old_state) == (32, False)
    assert (below.BV, below.from_old_state) == (16, True)


@pytest.mark.parametrize(("layout", "dtype", "start"), [("vk", torch.float32, 2048), ("kv", torch.float32, 4096),
                                                         ("vk", torch.bfloat16, 2048), ("kv", torch.bfloat16, 4096)])
def test_rows_go_in_slot_order_from_the_measured_grid_on_the_h200_and_the_h100(layout, dtype, start):
    from gdn_ops.triton_decode import decode_config
    from gdn_ops.triton_slot_order import sorts_rows

    for gpu in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", ""):
        for rows_x_heads in (start - 1, start, 4 * start):
            expected = gpu in ("NVIDIA H200", "NVIDIA H100 80GB HBM3") and rows_x_heads >= start
            assert sorts_rows(gpu, layout, dtype.itemsize, rows_x_heads) == expected
            assert decode_config(rows_x_heads, 128, 128, dtype, layout, gpu).sort_rows == expected


@pytest.mark.parametrize(
    ("rows_x_heads", "dtype", "gpu", "expected"),
    [
        (8192, torch.float32, "NVIDIA H100 80GB HBM3", (32, 2)),  # the H100's own large-grid tile
        (8191, torch.float32, "NVIDIA H100 80GB HBM3", (8, 1)),
        (8192, torch.float32, "NVIDIA H200", (8, 1)),
        (8192, torch.float32, "", (8, 1)),
        (8192, torch.bfloat16, "NVIDIA H100 80GB HBM3", (32, 1)),  # 8 KB bf16 tiles, every GPU
        (32, torch.float32, "NVIDIA H100 80GB HBM3", (4, 1)),  # small grid
    ],
)
def test_vk_tile_table_by_gpu(rows_x_heads, dtype, gpu, expected):
    from gdn_ops.triton_decode import decode_config

    config = decode_config(rows_x_heads, 128, 128, dtype, "vk", gpu)
    assert (config.BV, config.num_warps) == expected


@given(dtype=st.sampled_from((torch.float16, torch.bfloat16, torch.float32)),
       slot_stride=st.integers(1, 2**24), head_stride=st.integers(1, 2**16))
def test_state_alignment_is_the_most_the_slot_and_head_strides_share_up_to_16_bytes(dtype, slot_stride,
                                                                                   head_stride):
    """What the per-tile kernel is told of its pool (``STATE_ALIGN``): a power of two of elements,
    at most 16 bytes, dividing both strides, and no larger one under 16 bytes does."""
    from gdn_ops.triton_decode import state_alignment

    pool = torch.empty_strided((3, 2, 4, 4), (slot_stride, head_stride, 4, 1), dtype=dtype, device="meta")
    align = state_alignment(pool)
    assert align & (align - 1) == 0 and align * pool.element_size() <= 16
    assert slot_stride % align == 0 and head_stride % align == 0
    if 2 * align * pool.element_size() <= 16:
        assert slot_stride % (2 * align) or head_stride % (2 * align)


@pytest.mark.gpu
def test_default_tile_at_large_vk_grid_matches_reference():
    """B*HV = 8192 with an fp32 vk state: the tile this GPU's table picks (BV=32 with 2 warps on an
    H100), against the reference with guards and padding rows."""
    case = DecodeCase(B=256, T=1, HK=16, group=2, K=128, V=128, state_layout="vk", state_dtype=torch.float32,
                      padding_rows=(0, 77, 255), spare_slots=5, slot_pad=4, out_given=True, seed=21)
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, None, launched))
    from gdn_ops.triton_decode import decode_config, gpu_name

    assert launched == [decode_config(256 * 32, 128, 128, torch.float32, "vk", gpu_name(torch.device("cuda")))]


@pytest.mark.gpu
@pytest.mark.parametrize("B", [8, 64])
def test_default_tile_at_mid_vk_grid_matches_reference(B):
    """An fp32 vk state at B*HV = 256 and 2048 with bf16 activations: the H200's table takes o from
    the updated state at the first and from the old one at the second; checked with guards and padding."""
    case = DecodeCase(B=B, T=1, HK=16, group=2, K=128, V=128, state_layout="vk", state_dtype=torch.float32,
                      act_dtype=torch.bfloat16, padding_rows=(0, B - 1), spare_slots=3, slot_pad=4, out_given=True,
                      seed=B)
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, None, launched))
    from gdn_ops.triton_decode import decode_config, gpu_name

    assert launched == [decode_config(B * 32, 128, 128, torch.float32, "vk", gpu_name(torch.device("cuda")), 2)]


@needs_interpreter
def test_triton_default_config_in_interpreter():
    case = DecodeCase(B=1, T=1, HK=1, group=1, K=16, V=16, padding_rows=(), seed=3)
    check(build(case, "cpu"), run_triton)


@needs_interpreter
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_default_config_is_what_the_launcher_launches(layout):
    """``default_config`` names the launch ``launch_decode`` makes when given no configuration
    (off the GPU: the per-tile table's tile, never the persistent kernel)."""
    from gdn_ops.triton_decode import decode_config, default_config

    case = DecodeCase(B=3, T=1, HK=2, group=2, K=32, V=32, state_layout=layout, state_dtype=torch.bfloat16,
                      padding_rows=(1,), seed=5)
    inp = build(case, "cpu")
    expected = default_config(inp.q, inp.k, inp.v, inp.pool.view, layout)
    assert expected == decode_config(3 * 4, 32, 32, torch.bfloat16, layout)
    launched = []
    check(inp, lambda i: run_triton(i, None, launched))
    assert launched == [expected]


def _persistent_config(prefetch_gates: bool = True):
    from gdn_ops.triton_decode_tma import PersistentConfig

    return PersistentConfig(BV=32, num_warps=4, num_stages=2, programs_per_sm=4, prefetch_gates=prefetch_gates)


@needs_interpreter
@pytest.mark.parametrize("prefetch_gates", [True, False], ids=["gates-ahead", "gates-in-loop"])
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("variant", list(PERSISTENT_VARIANTS))
def test_persistent_kernel_matches_reference_in_interpreter(state_dtype, variant, prefetch_gates):
    """Each program walks two tiles; padding rows (-1, or a slot past the pool) leave the pool
    untouched. With the gates loaded a tile ahead, the last tile's look-ahead reads nothing."""
    case = dataclasses.replace(PERSISTENT_CASE, state_dtype=state_dtype, seed=len(variant),
                               **PERSISTENT_VARIANTS[variant])
    launched = []
    config = _persistent_config(prefetch_gates)
    check(build(case, "cpu"), lambda inp: run_triton(inp, config, launched))
    assert launched == [config]


@given(decode_cases())
def test_cpu_op_matches_reference(case):
    check(build(case, "cpu"), run_op)


@pytest.mark.gpu
@given(decode_cases())
def test_cuda_op_matches_reference(case):
    check(build(case, "cuda"), run_op)


@pytest.mark.gpu
@settings(max_examples=25)
@given(
    decode_cases(),
    st.sampled_from([(16, 32), (4, 8), (2, 4)]),  # Qwen3-Next (HK, HV) at TP=1, 4, 8
    st.sampled_from([1, 2, 33, 128, 257]),
)
def test_cuda_op_matches_reference_at_model_shapes(case, heads, batch):
    HK, HV = heads
    pad = tuple(r for r in (0, batch // 2, batch - 1) if case.index_dtype is not None and r < batch)
    case = dataclasses.replace(case, B=batch, T=min(case.T, 2), HK=HK, group=HV // HK, K=128, V=128,
                               index_dtype=case.index_dtype or torch.int32, padding_rows=tuple(sorted(set(pad))),
                               padding_value=-1, spare_slots=7)
    check(build(case, "cuda"), run_op)


@pytest.mark.gpu
@settings(max_examples=25)
@given(decode_cases(), st.sampled_from([(16, 32), (4, 8)]), st.sampled_from([1, 2, 3]), st.sampled_from([16, 32]),
       st.sampled_from([1, 2]), st.booleans())
def test_cuda_operands_first_at_model_shapes(case, heads, batch, BV, num_warps, early_tile):
    """The operands-first order compiled for the GPU on every card (the H100's and H200's rule takes
    it for kv grids up to B*HV = 64), on one warp or two, with the early tile or without, one
    token, as the launcher launches it (PDL on sm_90), kv and vk, every activation layout, a
    padding row."""
    from gdn_ops.triton_decode import DecodeConfig

    HK, HV = heads
    case = dataclasses.replace(case, B=batch, T=1, HK=HK, group=HV // HK, K=128, V=128,
                               padding_rows=(0,) if case.index_dtype is not None and batch > 1 else ())
    if 0 <= case.padding_value < case.num_slots:
        # drawn as "num_slots" of the drawn batch: past the resized pool, it stays a pad
        case = dataclasses.replace(case, padding_value=case.num_slots)
    config = DecodeConfig(BV=BV, BK=128, num_warps=num_warps, operands_first=True, early_tile=early_tile)
    check(build(case, "cuda"), lambda inp: run_triton(inp, config))


@pytest.mark.gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_pool_beyond_4096_slots_addressed_at_its_end(state_dtype):
    """64-bit offsets: slot * slot_stride overflows int32 past ~4096 slots of the TP=1 shape."""
    B, HK, HV, K, V = 8, 16, 32, 128, 128
    num_slots = 4200
    pool = torch.full((num_slots, HV, V, K), float("nan"), dtype=state_dtype, device="cuda")
    indices = torch.tensor([4199, 4198, 4100, -1, 4097, 4096, 5000, 4150], dtype=torch.int32, device="cuda")
    live = indices[(indices >= 0) & (indices < num_slots)].long()
    pool[live] = torch.randn(len(live), HV, V, K, device="cuda").to(state_dtype)
    # Canaries: every slot that aliases a live one modulo 2**32 bytes, and slot 0, stay NaN.
    canaries = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 100, 200, 300, 1024], device="cuda")
    q = torch.randn(B, 1, HK, K, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 1, HK, K, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, 1, HV, V, device="cuda", dtype=torch.bfloat16)
    a, b = torch.randn(B, 1, HV, device="cuda"), torch.randn(B, 1, HV, device="cuda")
    A_log, dt_bias = torch.randn(HV, device="cuda"), torch.randn(HV, device="cuda")
    import gdn_ops

    before = pool[live].clone()
    o = gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, indices,
                                                      use_qk_l2norm_in_kernel=True)
    torch.cuda.synchronize()
    assert bool(torch.isnan(pool[canaries].float()).all()), "a slot below 4096 was written (32-bit offset overflow)"
    untouched = torch.ones(num_slots, dtype=torch.bool, device="cuda")
    untouched[live] = False
    assert bool(torch.isnan(pool[untouched].float()).all()), "a slot no live row addresses was written"
    live_rows = ((indices >= 0) & (indices < num_slots)).nonzero().flatten()
    ref_o, ref_states = gdn_ops.fused_sigmoid_gating_delta_rule_reference(
        A_log, a[live_rows], dt_bias, 1.0, 20.0, q[live_rows], k[live_rows], v[live_rows], b[live_rows], before,
        None, None, True, compute_dtype=torch.float64,
    )
    assert_close_to_reference("o", o[live_rows], ref_o, torch.bfloat16)
    assert_close_to_reference("state", pool[live], ref_states, state_dtype)
    assert bool((o[(indices < 0) | (indices >= num_slots)] == 0).all())


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("changes", "persistent"),
    [
        ({}, True),
        ({"qkv_layout": "packed", "l2norm": True, "index_dtype": torch.int64}, True),
        ({"fused_gating": False, "padding_value": 10_000}, True),
        ({"B": "large"}, True),  # 16384 row-heads: the large tile, or the gates in the loop
        ({"state_dtype": torch.float16}, True),
        ({"slot_pad": 3}, False),  # slot stride not 16-byte aligned: no TMA
        ({"pool_guard": 37}, False),  # pool base not 16-byte aligned
        ({"qkv_layout": "transposed"}, False),  # q, k not contiguous in K
        ({"T": 2}, False),
        # fp32: the Gluon tile kernel where this GPU has an fp32 rule and B*HV reaches it
        ({"state_dtype": torch.float32}, True),
        ({"state_dtype": torch.float32, "B": -1}, True),
        ({"state_dtype": torch.float32, "B": "large"}, True),
        ({"state_layout": "vk"}, False),
        ({"B": -1}, False),  # one row fewer than the GPU's threshold
    ],
)
def test_large_batch_kernel_choice_and_result(changes, persistent):
    """From the GPU's B*HV threshold a 2-byte kv state takes a TMA kernel (the Gluon one of one
    program per tile where this GPU has a rule for it, else the persistent Triton one), and an fp32
    one the Gluon kernel where this GPU's rule has an fp32 threshold, but only when TMA can address
    every operand; every case matches the reference with guards and padding rows."""
    from gdn_ops.gluon_decode_kv_tile import (
        KV_2B_TILE_CONFIG,
        KV_2B_TILE_SMALL_CONFIG,
        KV_4B_TILE_CONFIG,
        rule_config,
        tile_rule,
    )
    from gdn_ops.triton_decode_tma import persistent_rule

    device = torch.cuda.current_device()
    gluon, triton_rule = tile_rule(device), persistent_rule(device)
    B = (gluon.small_from if gluon else triton_rule.min_row_heads) // 32 + 2
    if changes.get("B") == -1:
        changes = {**changes, "B": B - 3}
    elif changes.get("B") == "large":
        changes = {**changes, "B": max(B, 16384 // 32 + 2)}
    case = DecodeCase(B=B, T=1, HK=16, group=2, K=128, V=128, state_layout="kv", state_dtype=torch.bfloat16,
                      padding_rows=(0, B // 2, B - 1), spare_slots=7, slot_pad=8, pool_guard=64, out_given=True,
                      seed=11)
    case = dataclasses.replace(case, **changes)
    case = dataclasses.replace(case, padding_rows=tuple(r for r in case.padding_rows if r < case.B))
    launched = []
    check(build(case, "cuda"), lambda inp: run_triton(inp, None, launched))
    row_heads = case.B * 32
    if case.state_dtype == torch.float32:
        fp32_from = gluon.fp32_from if gluon else None
        persistent = persistent and fp32_from is not None and row_heads >= fp32_from
    if type(launched[0]).__name__ == "GluonTileConfig":
        # the rows go in slot order from this GPU's sort threshold (the "large" case on the H200)
        from gdn_ops.triton_decode import gpu_name
        from gdn_ops.triton_slot_order import sorts_rows

        assert launched[0].sort_rows == sorts_rows(gpu_name(torch.device("cuda")), "kv", case.state_dtype.itemsize,
                                                   row_heads, heads=32)
        launched = [launched[0]._replace(sort_rows=False)]
    if not persistent:
        assert [type(c).__name__ for c in launched] == ["DecodeConfig"]
    elif gluon is not None:
        # the tile of this GPU's rule for this B*HV, in parts and loaded evict-last from its
        # thresholds (the "large" cases on the H200), and with its grid's end in pieces where the rule says
        expected = rule_config(gluon, case.state_dtype.itemsize, row_heads)
        assert launched == [expected]
        evict_last = gluon.loads_evict_last(case.state_dtype.itemsize, row_heads)
        assert expected.load_eviction == ("evict_last" if evict_last else "")
        assert expected._replace(parts=1, tail_split=1, tail_per_sm=0, load_eviction="") == (
            KV_4B_TILE_CONFIG if case.state_dtype == torch.float32
            else KV_2B_TILE_CONFIG if row_heads >= gluon.large_from else KV_2B_TILE_SMALL_CONFIG)
    else:
        in_loop = triton_rule.gates_in_loop_from is not None and row_heads >= triton_rule.gates_in_loop_from
        assert [type(c).__name__ for c in launched] == ["PersistentConfig"]
        assert launched[0].prefetch_gates == (not in_loop)


@pytest.mark.parametrize(
    ("changes", "needs"),
    [
        ({"state_layout": "vk"}, "state_layout='kv'"),
        ({"T": 2}, "one token per call"),
        ({"pool_guard": 37}, "initial_state_source with a 16-byte aligned base"),
        ({"slot_pad": 3}, "initial_state_source with a 16-byte aligned base"),
        ({"qkv_layout": "transposed"}, "q with a 16-byte aligned base"),
        ({"V": 48}, "V a multiple of BV=32"),
    ],
)
def test_persistent_config_refuses_operands_it_cannot_run(changes, needs):
    """An explicit PersistentConfig is checked before any launch: a clear error, never a wrong result."""
    case = dataclasses.replace(PERSISTENT_CASE, **changes)
    with pytest.raises(ValueError, match=needs):
        run_triton(build(case, "cpu"), _persistent_config())


@pytest.mark.parametrize(("layout", "config_name", "expected"), [
    ("vk", "vk-tile", "an sm_90+ GPU"),
    ("kv", "kv-tile", "an sm_90+ GPU"),
    ("kv", "gluon", "an sm_90+ GPU"),
    ("kv", "persistent", None),  # a Triton kernel: it runs (in the interpreter) wherever TMA can address the operands
    ("vk", "persistent", "state_layout='kv'"),
    ("kv", "vk-tile-narrow", "BV=4 columns of at least 16 bytes"),
])
def test_explicit_tma_configurations_are_checked_for_their_kernel_and_the_gpu(layout, config_name, expected):
    """Operands every TMA kernel can address, on CPU tensors: what ``launch_decode`` refuses a
    configuration with, before any launch."""
    from gdn_ops.gluon_decode_kv import KV_2B_GLUON_CONFIG
    from gdn_ops.gluon_decode_kv_tile import KV_2B_TILE_CONFIG
    from gdn_ops.gluon_decode_vk_tile import VK_2B_TILE_TWO_WARP_CONFIG
    from gdn_ops.triton_decode import tma_config_reason
    from gdn_ops.triton_decode_tma import KV_2B_CONFIG

    config = {"vk-tile": VK_2B_TILE_TWO_WARP_CONFIG, "kv-tile": KV_2B_TILE_CONFIG, "gluon": KV_2B_GLUON_CONFIG,
              "persistent": KV_2B_CONFIG, "vk-tile-narrow": VK_2B_TILE_TWO_WARP_CONFIG._replace(BV=4)}[config_name]
    case = DecodeCase(B=3, T=1, HK=16, group=2, K=128, V=128, state_layout=layout, state_dtype=torch.bfloat16,
                      pool_guard=0)
    inp = build(case, "cpu")
    reason = tma_config_reason(inp.q, inp.k, inp.v, inp.pool.view, layout, config)
    assert reason is None if expected is None else expected in reason
