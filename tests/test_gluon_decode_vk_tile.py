"""The Gluon vk kernel of one program per tile: against the float64 reference on the GPU, compiled
for sm_90 on CPU (Gluon has no interpreter).

On CPU the compile checks the design: shared memory holds the tile, q, k, v and the barrier and
nothing more (no row sum through shared memory), and the register cap that lets
``programs_per_sm`` programs share an SM holds without spills.
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
import triton
from decode_case import PERSISTENT_VARIANTS, DecodeCase, build, check, run_triton
from hypothesis import given, settings
from hypothesis import strategies as st
from sm90_compile import (
    assert_no_spills,
    ptxas_report,
    run_in_child,
)
from tile_kernel_checks import (
    check_launch,
    compile_recorded_launch,
    model_case,
    record_launch,
)

import gdn_ops
from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
from gdn_ops.gluon_decode_vk_tile import (
    RANK_IN_PROGRAM_MAX_ROWS,
    VK_2B_TILE_CONFIG,
    VK_2B_TILE_TWO_WARP_CONFIG,
    VK_4B_TILE_CONFIG,
    VK_4B_TILE_LARGE_CONFIG,
    lanes_along_values,
    vk_tile_reason,
    vk_tile_rule,
)
from gdn_ops.triton_decode import gpu_name
from gdn_ops.triton_slot_order import SNAPSHOT_MAX_ROWS, slot_order, sorts_rows

# K = 32: one 64-byte chunk per row, 4 lanes per row at vec 8, so a warp covers 8 rows
SMALL_CASE = DecodeCase(B=3, T=1, HK=2, group=2, K=32, V=64, state_layout="vk", state_dtype=torch.bfloat16,
                        padding_rows=(1,), spare_slots=3, slot_pad=8, pool_guard=64, out_given=True)
SMALL_CONFIGS = {"whole-rows": GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=4, vec=8),
                 "half-rows": GluonTileConfig(BV=32, num_warps=1, rows=8, programs_per_sm=4, vec=8)}
MODEL_CONFIGS = {"shipped": VK_2B_TILE_TWO_WARP_CONFIG,
                 "shipped-sorted": VK_2B_TILE_TWO_WARP_CONFIG._replace(sort_rows=True),
                 "shipped-evict-last": VK_2B_TILE_TWO_WARP_CONFIG._replace(store_eviction="evict_last"),
                 "large-evict-last": VK_2B_TILE_CONFIG._replace(sort_rows=True, store_eviction="evict_last"),
                 "whole-head": GluonTileConfig(BV=128, num_warps=4, rows=16, programs_per_sm=6, vec=8),
                 "half-head": GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=12, vec=8),
                 "head-rows8": GluonTileConfig(BV=128, num_warps=4, rows=8, programs_per_sm=6, vec=8),
                 "head-vec4": GluonTileConfig(BV=128, num_warps=4, rows=16, programs_per_sm=6, vec=4),
                 "quarter-head": GluonTileConfig(BV=32, num_warps=1, rows=16, programs_per_sm=12, vec=8)}
VARIANTS = {**PERSISTENT_VARIANTS, "fp32-state": {"state_dtype": torch.float32},
            "fp16-state": {"state_dtype": torch.float16}, "fp32-activations": {"act_dtype": torch.float32},
            "fp16": {"state_dtype": torch.float16, "act_dtype": torch.float16}, "fp32-out": {"out_dtype": torch.float32}}


@pytest.mark.gpu
@pytest.mark.parametrize("config", list(SMALL_CONFIGS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_small_shape_matches_reference(variant, config):
    case = dataclasses.replace(SMALL_CASE, seed=len(variant), **VARIANTS[variant])
    check_launch(case, SMALL_CONFIGS[config])


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(16, 32), (4, 8)], ids=["tp1", "tp4"])
@pytest.mark.parametrize("variant", ["fused", "unfused", "past-pool-int64", "fp32-state", "fp16-state",
                                     "fp32-activations", "fp16", "fp32-out"])
@pytest.mark.parametrize("config", list(MODEL_CONFIGS))
def test_model_shape_matches_reference(heads, variant, config):
    """Qwen3-Next's head shape, with more tiles than fit on the GPU at once and padding rows."""
    case = model_case(heads, "vk", VARIANTS[variant], seed=6)
    chosen = MODEL_CONFIGS[config]
    if case.state_dtype == torch.float32:  # twice the bytes per tile: half the programs fit an SM
        chosen = chosen._replace(programs_per_sm=chosen.programs_per_sm // 2, vec=min(chosen.vec, 4))
    check_launch(case, chosen)


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(16, 32), (4, 8)], ids=["tp1", "tp4"])
@pytest.mark.parametrize("sort_rows", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("store_eviction", ["", "evict_last"])
@pytest.mark.parametrize("config", [VK_4B_TILE_CONFIG, VK_4B_TILE_LARGE_CONFIG], ids=["shipped", "large"])
def test_fp32_pool_configuration_matches_reference(heads, sort_rows, store_eviction, config):
    """The configurations an fp32 pool ships (two warps on 8 value rows, 16 bytes a lane, at 16 or
    20 programs an SM),
    with plain and evict-last state stores, at Qwen3-Next's head shape, more tiles than fit on the
    GPU at once and padding rows."""
    case = model_case(heads, "vk", {"state_dtype": torch.float32}, seed=8)
    check_launch(case, config._replace(sort_rows=sort_rows, store_eviction=store_eviction))


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 29, RANK_IN_PROGRAM_MAX_ROWS])
@pytest.mark.parametrize("variant", ["fused", "past-pool-int64", "bf16-state", "tp4"])
def test_rows_ranked_in_the_program_match_reference(B, variant):
    """Rows in slot order with each program ranking the slots itself (``rank_in_program``): no rank
    kernel runs, and every row, padding ones (first, middle, last; -1 or past the pool) included,
    matches the reference with its guards, up to the most rows a program ranks."""
    import gdn_ops.triton_decode as launcher

    changes = {"fused": {}, "past-pool-int64": PERSISTENT_VARIANTS["past-pool-int64"],
               "bf16-state": {"state_dtype": torch.bfloat16}, "tp4": {"HK": 4}}[variant]
    case = DecodeCase(B=B, T=1, HK=16, group=2, K=128, V=128, state_layout="vk", state_dtype=torch.float32,
                      padding_rows=tuple(sorted({0, B // 2, B - 1})) if B > 2 else (), spare_slots=7, slot_pad=8,
                      pool_guard=64, out_given=True, seed=B)
    case = dataclasses.replace(case, **changes)
    shipped = VK_2B_TILE_TWO_WARP_CONFIG if case.state_dtype == torch.bfloat16 else VK_4B_TILE_CONFIG
    with mock.patch.object(launcher, "slot_order", side_effect=AssertionError("the rank kernel ran")):
        check_launch(case, shipped._replace(sort_rows=True, rank_in_program=True))


@pytest.mark.gpu
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, RANK_IN_PROGRAM_MAX_ROWS), data=st.data())
def test_rows_ranked_in_the_program_take_any_slots_and_padding(B, data):
    """Property: for any batch up to the limit, int32 or int64 slots, dense or strided, any padding
    rows with any padding value (-1, another negative, the pool's size, past int32), the programs
    that rank their rows themselves match the reference and touch no other slot."""
    import gdn_ops.triton_decode as launcher

    index_dtype = data.draw(st.sampled_from((torch.int32, torch.int64)))
    case = DecodeCase(B=B, T=1, HK=2, group=2, K=128, V=128, state_layout="vk", state_dtype=torch.float32,
                      index_dtype=index_dtype, padding_rows=tuple(sorted(data.draw(st.sets(st.integers(0, B - 1))))),
                      indices_stride=data.draw(st.sampled_from((1, 3))), spare_slots=data.draw(st.integers(0, 5)),
                      slot_pad=8, pool_guard=64, out_given=True, seed=data.draw(st.integers(0, 2**31 - 1)))
    padding_value = data.draw(st.sampled_from((-1, -7, case.num_slots, 2**31 - 1 if index_dtype == torch.int32 else 2**40)))
    case = dataclasses.replace(case, padding_value=padding_value)
    with mock.patch.object(launcher, "slot_order", side_effect=AssertionError("the rank kernel ran")):
        check_launch(case, VK_4B_TILE_CONFIG._replace(sort_rows=True, rank_in_program=True))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("changes", "tile"),
    [
        ({}, True),
        ({"B": "large"}, True),
        ({"B": -1}, False),  # one row fewer than the GPU's threshold
        ({"B": "given-order"}, True),  # under that threshold, but the caller gives the slot order
        ({"B": "below-given-order"}, False),
        ({"slot_pad": 3}, False),  # slot stride not 16-byte aligned: no TMA
        ({"qkv_layout": "transposed"}, False),  # q, k, v not contiguous
        ({"state_dtype": torch.float32}, True),  # an fp32 pool from its B*HV (H200: 1024), rows in batch order
        ({"state_dtype": torch.float32, "B": "large"}, True),  # and where its rows are sorted (H200: from 2048)
        ({"state_dtype": torch.float32, "B": -1}, False),
        # at most the rule's ranked rows (H200: 32): in slot order, ranked by the programs themselves
        ({"state_dtype": torch.float32, "B": "ranked"}, True),
        # an fp32 pool's large-grid tile from its threshold (H200: 2048), and a 2-byte pool's one tile
        # there too, at 32 heads a row and at 8 (TP=4: an fp32 pool sorted from 1024 by itself)
        ({"state_dtype": torch.float32, "B": "large-from"}, True),
        ({"state_dtype": torch.float32, "HK": 4}, True),
        ({"state_dtype": torch.float32, "HK": 4, "B": "large-from"}, True),
        ({"state_dtype": torch.float32, "HK": 4, "B": "large"}, True),
        ({"B": "large-from"}, True),
        ({"HK": 4, "B": "large"}, True),
        ({"HK": 4, "B": "large-from"}, True),
        ({"state_dtype": torch.float16}, True),
        ({"state_dtype": torch.float16, "act_dtype": torch.float16}, True),
        ({"act_dtype": torch.float32}, True),
        ({"out_dtype": torch.float32}, True),
        ({"T": 2}, False),
    ],
)
def test_default_kernel_choice_and_result(changes, tile):
    """From the GPU's B*HV threshold a 2-byte vk state takes this kernel, whatever the activations'
    dtype (from a lower one when the caller gives the slot order), always as the one-warp tile, and
    a 4-byte one from its own threshold, its large-grid tile from its own B*HV whatever the heads a
    row, but only when
    TMA can address every operand (with the rows in slot order where ``sorts_rows`` says, for the
    case's heads a row); every case matches the reference with guards and padding rows."""
    rule = vk_tile_rule(torch.cuda.current_device())
    gpu = gpu_name(torch.device("cuda"))
    if rule is None:
        pytest.skip(f"no rule for this kernel on {gpu}")
    state_dtype = changes.get("state_dtype", torch.bfloat16)
    start = rule.two_byte_from if state_dtype.itemsize == 2 else rule.four_byte_from
    large_from = rule.four_byte_large_from
    heads = changes.get("HK", 16) * 2  # HV
    B = {-1: start // heads - 1, "large": 4 * start // heads + 2, "given-order": rule.two_byte_sorted_from // heads + 1,
         "below-given-order": rule.two_byte_sorted_from // heads - 1,
         "large-from": large_from // heads + 1, "ranked": rule.four_byte_ranked_rows}.get(changes.get("B"),
                                                                                                start // heads + 2)
    given_order = changes.get("B") in ("given-order", "below-given-order")
    changes = {name: value for name, value in changes.items() if name != "B"}
    case = DecodeCase(B=B, T=1, HK=16, group=2, K=128, V=128, state_layout="vk", state_dtype=torch.bfloat16,
                      padding_rows=(0, B // 2, B - 1), spare_slots=7, slot_pad=8, pool_guard=64, out_given=True,
                      seed=12)
    case = dataclasses.replace(case, **changes)
    launched = []
    check(build(case, "cuda"),
          lambda inp: run_triton(inp, None, launched, order=slot_order(inp.indices) if given_order else None))
    if tile:
        sort_rows = sorts_rows(gpu, "vk", case.state_dtype.itemsize, B * heads, given_order, heads)
        large = B * heads >= large_from
        shipped = (VK_2B_TILE_CONFIG if case.state_dtype != torch.float32
                   else VK_4B_TILE_LARGE_CONFIG if large else VK_4B_TILE_CONFIG)
        eviction = "evict_last" if rule.evict_last_from is not None and B * heads >= rule.evict_last_from else ""
        ranked = case.state_dtype == torch.float32 and B <= rule.four_byte_ranked_rows
        assert launched == [shipped._replace(sort_rows=sort_rows or ranked, store_eviction=eviction,
                                             rank_in_program=ranked)]
    else:
        assert [type(c).__name__ for c in launched] == ["DecodeConfig"]


@pytest.mark.parametrize(
    ("changes", "config", "needs"),
    [
        ({"T": 2}, SMALL_CONFIGS["whole-rows"], "one token per call"),
        ({"slot_pad": 3}, SMALL_CONFIGS["whole-rows"], "initial_state_source with a 16-byte aligned base"),
        ({"qkv_layout": "transposed"}, SMALL_CONFIGS["whole-rows"], "with a 16-byte aligned base and strides"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(BV=128), "V a multiple of BV=128"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(vec=3), "vec=3 dividing C=32 keys"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(rows=8), "rows=8 dividing BV=64 and a multiple of the 16 rows"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(parts=2), "parts=1 .this kernel loads its tile in one copy"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(tail_split=2, tail_per_sm=1),
         "tail_split=1 .this kernel's grid has no tail split; got tail_split=2"),
        ({"B": SNAPSHOT_MAX_ROWS + 1, "padding_rows": ()}, SMALL_CONFIGS["whole-rows"]._replace(sort_rows=True, snapshot_order=True),
         f"at most {SNAPSHOT_MAX_ROWS} rows for snapshot_order, sorted in one program .got B={SNAPSHOT_MAX_ROWS + 1}"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(store_eviction="evict_later"),
         "store_eviction '', 'evict_first' or 'evict_last' .got 'evict_later'"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(load_eviction="evict_last"),
         "load_eviction='' .only the kv kernel's loads take an L2 policy; got 'evict_last'"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(prefetch_ahead=-1), "prefetch_ahead >= 0 tiles per SM .got -1"),
        ({}, SMALL_CONFIGS["whole-rows"]._replace(num_warps=1, prefetch_ahead=8),
         "BV=64 value rows at most 32 . num_warps=1 to prefetch them, one a thread"),
        ({"K": 128, "V": 128}, MODEL_CONFIGS["whole-head"]._replace(programs_per_sm=7), "within an SM's 233472 bytes"),
        ({"B": RANK_IN_PROGRAM_MAX_ROWS + 1, "padding_rows": ()},
         SMALL_CONFIGS["whole-rows"]._replace(sort_rows=True, rank_in_program=True),
         f"at most {RANK_IN_PROGRAM_MAX_ROWS} rows to rank them in the program .got B={RANK_IN_PROGRAM_MAX_ROWS + 1}"),
    ],
)
def test_refuses_operands_it_cannot_run(changes, config, needs):
    """Checked before any launch, on metadata only: a clear error naming what is needed."""
    case = dataclasses.replace(SMALL_CASE, **changes)
    with pytest.raises(ValueError, match=needs):
        run_triton(build(case, "cuda" if torch.cuda.is_available() else "cpu"), config)


def test_a_head_major_pool_past_32_bit_head_offsets_is_refused():
    """The kernel stores a head's rows at hv x the pool's head stride in 32 bits (a 64-bit product
    spilled the one-warp tiles): a head-major pool of 4300 Qwen3-Next slots puts head 31 past 2**31,
    and its rows were stored below the pool. Refused there (the launcher then takes another
    kernel), taken at 4000 slots and from a dense pool of any size (meta tensors: shapes only)."""
    HV, K, V, B = 32, 128, 128, 64
    q = torch.empty(B, 1, 16, K, dtype=torch.bfloat16, device="meta")
    v = torch.empty(B, 1, HV, V, dtype=torch.bfloat16, device="meta")

    def head_major(slots):
        return torch.empty(HV, slots, V, K, dtype=torch.bfloat16, device="meta").transpose(0, 1)

    for config in (VK_2B_TILE_CONFIG, VK_2B_TILE_TWO_WARP_CONFIG):
        assert "head offsets within 32 bits" in vk_tile_reason(q, q, v, head_major(4300), "vk", config)
        assert vk_tile_reason(q, q, v, head_major(4000), "vk", config) is None
        assert vk_tile_reason(q, q, v, torch.empty(9000, HV, V, K, dtype=torch.bfloat16, device="meta"), "vk",
                              config) is None


def test_a_pool_of_no_slots_goes_to_a_kernel_without_tma():
    """Every row padding and no slot at all: legal, but a TMA descriptor takes no empty dimension
    (Triton asserted while building it), so the TMA kernels refuse it and the per-tile kernel runs."""
    from gdn_ops.gluon_decode_kv_tile import KV_2B_TILE_CONFIG
    from gdn_ops.triton_decode_tma import KV_2B_CONFIG, unsupported_reason

    HV, K, V, B = 32, 128, 128, 16
    q = torch.empty(B, 1, 16, K, dtype=torch.bfloat16, device="meta")
    v = torch.empty(B, 1, HV, V, dtype=torch.bfloat16, device="meta")
    for slots, refused in ((0, True), (1, False)):
        vk_pool = torch.empty(slots, HV, V, K, dtype=torch.bfloat16, device="meta")
        kv_pool = torch.empty(slots, HV, K, V, dtype=torch.bfloat16, device="meta")
        reasons = [vk_tile_reason(q, q, v, vk_pool, "vk", VK_2B_TILE_CONFIG),
                   unsupported_reason(q, q, kv_pool, "kv", KV_2B_CONFIG),
                   unsupported_reason(q, q, kv_pool, "kv", KV_2B_TILE_CONFIG)]
        assert [r == "a pool of at least one slot" for r in reasons] == [refused] * 3, reasons


@pytest.mark.gpu
def test_a_head_major_pool_past_32_bit_head_offsets_decodes_in_place():
    """Whatever kernel the GPU's rule takes for it: a bf16 head-major pool of 4300 Qwen3-Next slots
    (about 4.5 GB, a 4.4 GB NaN guard below it, where the vk tile's 32-bit head offsets stored head
    31's rows) updates its addressed slots as the reference does and writes nothing else."""
    from gdn_ops.reference import fused_sigmoid_gating_delta_rule_reference

    B, HK, HV, K, V, slots, guard = 16, 16, 32, 128, 128, 4300, 2_200_000_000
    dev, bf16 = "cuda", torch.bfloat16
    buffer = torch.full((guard + HV * slots * V * K,), float("nan"), dtype=bf16, device=dev)
    pool = buffer[guard:].view(HV, slots, V, K).transpose(0, 1)
    # distinct slots, the last one (the farthest offsets) among them
    idx = torch.cat([torch.randperm(slots - 1, device=dev)[:B - 1], torch.tensor([slots - 1], device=dev)]).to(torch.int32)
    pool[idx.long()] = (torch.randn(B, HV, V, K, device=dev) * 0.1).to(bf16)
    before = pool[idx.long()].clone()
    r = lambda *shape: torch.randn(*shape, device=dev).to(bf16)
    q, k, v, a, b = r(B, 1, HK, K), r(B, 1, HK, K), r(B, 1, HV, V), r(B, 1, HV), r(B, 1, HV)
    A_log, dt_bias = torch.randn(HV, device=dev), torch.randn(HV, device=dev)
    o = gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx,
                                                       use_qk_l2norm_in_kernel=True)
    o_ref, states_ref = fused_sigmoid_gating_delta_rule_reference(
        A_log.double(), a.double(), dt_bias.double(), 1.0, 20.0, q.double(), k.double(), v.double(), b.double(),
        before.double(), None, use_qk_l2norm_in_kernel=True)
    torch.testing.assert_close(o.double(), o_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(pool[idx.long()].double(), states_ref, rtol=2e-2, atol=2e-2)
    assert bool(torch.isnan(buffer[:guard]).all()), "the guard below the pool was written"
    untouched = torch.ones(slots, dtype=torch.bool, device=dev)
    untouched[idx.long()] = False
    assert bool(torch.isnan(pool[untouched]).all()), "a slot no row names was written"


@pytest.mark.parametrize("config", list(MODEL_CONFIGS.values()), ids=list(MODEL_CONFIGS))
def test_model_configurations_fit(config):
    q = torch.empty(1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
    v = torch.empty(1, 1, 32, 128, dtype=torch.bfloat16, device="meta")
    state = torch.empty(1, 32, 128, 128, dtype=torch.bfloat16, device="meta")
    assert vk_tile_reason(q, q, v, state, "vk", config) is None
    # a GluonTileConfig on a kv pool goes to the kv kernel; this one only serves vk
    assert vk_tile_reason(q, q, v, state, "kv", config) == "state_layout='vk' (got 'kv')"


def compiled(config: GluonTileConfig, state: str = "bf16", slot_pad: int = 0) -> tuple[int, str, str]:
    """Shared memory, state stores and L2 prefetches (``"<stores of one a lane's keys> <other stores>
    <bulk prefetches>"``) and ``ptxas -v`` report of the
    kernel as launched with ``config`` on a Qwen3-Next head with bf16 activations and a ``state``
    (``bf16`` or ``fp32``) pool, dense or with slots ``slot_pad`` elements further apart, compiled
    for sm_90."""
    import re

    import gdn_ops.gluon_decode_vk_tile as tile

    compiled = compile_recorded_launch(tile, "_decode_vk_tile_kernel", "launch_decode_vk_tile", "vk", config,
                                       {"bf16": torch.bfloat16, "fp32": torch.float32}[state], slot_pad)
    ptx = compiled.asm["ptx"]
    # o is bf16, stored one value a lane (st.global.b16); every other store is a state row's, of
    # a lane's `vec` contiguous keys
    lane_vector = {16: "v4.b32", 8: "v2.b32", 4: "b32"}[config.vec * {"bf16": 2, "fp32": 4}[state]]
    hint = rf"L1::{config.store_eviction}\.L2::cache_hint\." if config.store_eviction else ""
    vectors = len(re.findall(rf"st\.global\.{hint}{lane_vector} ", ptx))
    others = len(re.findall(r"st\.global\.", ptx)) - vectors - len(re.findall(r"st\.global\.b16 ", ptx))
    prefetches = len(re.findall(r"cp\.async\.bulk\.prefetch\.L2\.global ", ptx))
    return compiled.metadata.shared, f"{vectors} {others} {prefetches}", ptxas_report(ptx)


@pytest.mark.parametrize(("config", "state"), [*((c, "bf16") for c in MODEL_CONFIGS.values()), (VK_4B_TILE_CONFIG, "fp32"),
                                               (VK_4B_TILE_CONFIG._replace(store_eviction="evict_last"), "fp32"),
                                               (VK_4B_TILE_LARGE_CONFIG, "fp32"),
                                               (VK_4B_TILE_LARGE_CONFIG._replace(store_eviction="evict_last"), "fp32"),
                                               (VK_4B_TILE_LARGE_CONFIG._replace(prefetch_ahead=0), "fp32")],
                         ids=[*MODEL_CONFIGS, "fp32-shipped", "fp32-shipped-evict-last", "fp32-large",
                              "fp32-large-evict-last", "fp32-large-no-prefetch"])
def test_compiles_for_sm90_with_only_the_tile_in_shared_memory_and_no_spills(config, state):
    """As launched on a dense pool: shared memory holds the tile, q, k, v and the two barriers and nothing
    more; each lane's ``vec`` keys of a row leave as one vector store (16 bytes in the shipped
    configurations); a configuration with ``prefetch_ahead`` has its one bulk L2 prefetch
    (issued by a thread a row), the others none; nothing spills."""
    stdout = run_in_child("test_gluon_decode_vk_tile", f"'\\n'.join(map(str, t.compiled(t.{config!r}, {state!r})))")
    shared, stores, report = stdout.split("\n", 2)
    K, state_bytes = 128, 4 if state == "fp32" else 2
    # the two 8-byte barriers, each placed on 16 bytes
    data = K * config.BV * state_bytes + (2 * K + config.BV) * 2
    assert int(shared) == -(-data // 16) * 16 + 16 + 8
    lane_vectors = config.BV * K // (config.vec * 32 * config.num_warps)
    assert stores == f"{lane_vectors} 0 {int(config.prefetch_ahead > 0)}"
    # the one-warp 2-byte tile was measured with Triton 3.6, which fits it in its 80 registers;
    # Triton 3.7 spills 16 bytes there (gluon_decode_vk_tile.VK_2B_TILE_CONFIG)
    newer_triton = tuple(map(int, triton.__version__.split(".")[:2])) >= (3, 7)
    one_warp = config._replace(sort_rows=False, store_eviction="") == VK_2B_TILE_CONFIG
    assert_no_spills(report, at_most=16 if newer_triton and one_warp else 0)


@pytest.mark.parametrize(("config", "state"), [(VK_2B_TILE_TWO_WARP_CONFIG, "bf16"), (VK_4B_TILE_CONFIG, "fp32")],
                         ids=["bf16", "fp32"])
def test_rows_ranked_in_the_program_compile_without_spills(config, state):
    """Ranking the rows in the program (``rank_in_program``, up to 32 rows here) fits the shipped
    register cap with no spills; the slots reach every lane through shared memory (one int32 a row)
    beside what the tile needs."""
    plain = run_in_child("test_gluon_decode_vk_tile", f"t.compiled(t.{config!r}, {state!r})[0]")
    ranked = config._replace(sort_rows=True, rank_in_program=True)
    stdout = run_in_child("test_gluon_decode_vk_tile", f"'\\n'.join(map(str, t.compiled(t.{ranked!r}, {state!r})))")
    shared, _, report = stdout.split("\n", 2)
    assert int(plain) < int(shared) <= int(plain) + 32 * 4
    assert_no_spills(report)


@pytest.mark.parametrize(("config", "state", "slot_pad"), [(VK_2B_TILE_TWO_WARP_CONFIG, "bf16", 8),
                                                           (VK_2B_TILE_CONFIG, "bf16", 8),
                                                           (VK_4B_TILE_CONFIG, "fp32", 4),
                                                           (VK_4B_TILE_LARGE_CONFIG, "fp32", 4)],
                         ids=["bf16", "bf16-large", "fp32", "fp32-large"])
def test_page_strided_pool_still_stores_whole_vectors(config, state, slot_pad):
    """A pool whose slots lie 16 bytes further apart than dense (a slot stride TMA takes, but not
    a multiple of 16 elements, which Triton would otherwise assume unaligned) stores each lane's
    keys as the dense pool does: one vector."""
    stdout = run_in_child("test_gluon_decode_vk_tile", f"t.compiled(t.{config!r}, {state!r}, {slot_pad})[1]")
    assert stdout.strip() == f"{config.BV * 128 // (config.vec * 32 * config.num_warps)} 0 {int(config.prefetch_ahead > 0)}"


def test_launch_arguments_match_the_kernel_parameters():
    """Each positional argument lands on the kernel parameter of its kind (descriptor, pointer,
    scalar) and the keywords are exactly the kernel's constexprs. Recorded on CPU with the kernel
    replaced."""
    import gdn_ops.gluon_decode_vk_tile as tile

    config = MODEL_CONFIGS["half-head"]
    grid, args, _ = record_launch(tile, "_decode_vk_tile_kernel", "launch_decode_vk_tile", "vk", config)
    assert args["num_tiles"] == 3 * 32 * (128 // config.BV) == grid[0]
    # value rows of 128 keys in two 64-key chunks; the pool's strides reach the register stores
    assert list(args["state_desc"].block_shape) == [1, 1, config.BV, 2, 64]
    assert list(args["v_desc"].block_shape) == [1, 1, config.BV]
    assert (args["s_sb"], args["s_sh"], args["s_sv"]) == args["state_ptr"].stride()[:3]


@pytest.mark.parametrize(("K", "itemsize", "vec", "rows"), [
    (128, 2, 8, 2),  # 64-key chunks: 8 lanes a chunk, 16 a row
    (128, 4, 4, 1),  # 32-key chunks: 8 lanes a chunk, all 32 a row
    (32, 2, 8, 8),  # one 32-key chunk: 4 lanes a row, as SMALL_CASE uses
    (128, 2, 3, None),  # 3 keys a lane do not tile a chunk
    (128, 4, 1, None),  # 128 lanes a row: more than a warp
])
def test_lanes_along_values_counts_the_rows_a_warp_covers(K, itemsize, vec, rows):
    assert lanes_along_values(K, itemsize, vec) == rows
