"""The Gluon kv kernel of one program per tile: against the float64 reference on the GPU, compiled
for sm_90 on CPU (Gluon has no interpreter).

On CPU the compile checks the design: shared memory holds the tile, q, k and the barrier and
nothing more (no key sum through shared memory), and the register cap that lets
``programs_per_sm`` programs share an SM holds without spills.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from unittest import mock

import pytest
import torch
from decode_case import (
    PERSISTENT_CASE,
    PERSISTENT_VARIANTS,
    build,
    run_triton,
)
from hypothesis import given
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

import gdn_ops.gluon_decode_kv_tile as tile_module
from gdn_ops.gluon_decode_kv_tile import (
    KV_2B_TILE_CONFIG,
    KV_2B_TILE_SMALL_CONFIG,
    KV_4B_TILE_CONFIG,
    TILE_PARTS,
    TILE_RULES,
    GluonTileConfig,
    rule_config,
    split_grid,
    tile_reason,
)
from gdn_ops.triton_slot_order import SNAPSHOT_MAX_ROWS

# K = 32: 8 lanes along the keys, steps of 16 rows (the swizzle's period for 64-byte rows)
SMALL_CONFIGS = {"half-rows": GluonTileConfig(BV=32, num_warps=2, rows=16, programs_per_sm=4),
                 "whole-rows": GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=4),
                 "two-parts": GluonTileConfig(BV=32, num_warps=2, rows=16, programs_per_sm=4, parts=2),
                 "tail-in-halves": GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=4, parts=2,
                                                   tail_split=2, tail_per_sm=1)}
MODEL_CONFIGS = {"shipped": KV_2B_TILE_CONFIG,
                 "shipped-small": KV_2B_TILE_SMALL_CONFIG,
                 "head-vec4": GluonTileConfig(BV=128, num_warps=4, rows=16, programs_per_sm=6),
                 "half-head": GluonTileConfig(BV=64, num_warps=2, rows=16, programs_per_sm=12),
                 "shipped-fp32": KV_4B_TILE_CONFIG,
                 "shipped-sorted": KV_2B_TILE_CONFIG._replace(sort_rows=True),
                 "shipped-fp32-sorted": KV_4B_TILE_CONFIG._replace(sort_rows=True),
                 "parts4-sorted": KV_2B_TILE_CONFIG._replace(sort_rows=True, parts=4),
                 "parts8": KV_2B_TILE_CONFIG._replace(parts=8),
                 "fp32-parts2-sorted": KV_4B_TILE_CONFIG._replace(sort_rows=True, parts=2)}
# the grid's last tiles cut in pieces (split_grid): whole tiles and pieces in one launch at the
# model shape, as the H200 rule picks them and in halves
TAIL_CONFIGS = {"rule-tail4x2": rule_config(TILE_RULES["H200"], 2, 2048),
                "rule-parts8-tail4x1-sorted": rule_config(TILE_RULES["H200"], 2, 8192)._replace(sort_rows=True),
                "rule-small-tail2x2": rule_config(TILE_RULES["H200"], 2, 512),
                "rule-fp32-tail4x2-sorted": rule_config(TILE_RULES["H200"], 4, 1024)._replace(sort_rows=True),
                "rule-fp32-parts8-tail4x1": rule_config(TILE_RULES["H200"], 4, 4096),
                "parts8-tail2x6": KV_2B_TILE_CONFIG._replace(parts=8, tail_split=2, tail_per_sm=6)}
VARIANTS = {**PERSISTENT_VARIANTS, "fp32-state": {"state_dtype": torch.float32},
            "fp32-activations": {"act_dtype": torch.float32}}


@pytest.mark.gpu
@pytest.mark.parametrize("config", list(SMALL_CONFIGS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_small_shape_matches_reference(variant, config):
    case = dataclasses.replace(PERSISTENT_CASE, seed=len(variant), **VARIANTS[variant])
    check_launch(case, SMALL_CONFIGS[config])


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [(16, 32), (4, 8)], ids=["tp1", "tp4"])
@pytest.mark.parametrize("variant", ["fused", "unfused", "past-pool-int64", "fp32-state", "fp32-activations"])
@pytest.mark.parametrize("config", list(MODEL_CONFIGS | TAIL_CONFIGS))
def test_model_shape_matches_reference(heads, variant, config):
    """Qwen3-Next's head shape, with more tiles than fit on the GPU at once and padding rows."""
    case = model_case(heads, "kv", VARIANTS[variant], seed=5)
    chosen = (MODEL_CONFIGS | TAIL_CONFIGS)[config]
    if case.state_dtype == torch.float32 and chosen._replace(sort_rows=False) != KV_4B_TILE_CONFIG:
        chosen = chosen._replace(programs_per_sm=chosen.programs_per_sm // 2)  # twice the bytes per tile
    check_launch(case, chosen)


@pytest.mark.gpu
@pytest.mark.parametrize("load_eviction", ["", "evict_last"])
@pytest.mark.parametrize("store_eviction", ["", "evict_last"])
def test_the_binary_that_runs_carries_the_l2_policies(monkeypatch, store_eviction, load_eviction):
    """On the GPU, through Triton's JIT as the decode launches it (the H200 rule's bf16 tile from
    B*HV 8192): with the evict-last policy on the stores each of its 12 TMA stores carries the L2
    hint, on the loads each of its 12 state loads does, and without it none does; either way the
    decode matches the reference."""
    kernel = tile_module._decode_kv_tile_kernel
    ran = []

    class Recording:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: ran.append(kernel[grid](*args, **kwargs))

    monkeypatch.setattr(tile_module, "_decode_kv_tile_kernel", Recording())
    config = KV_2B_TILE_CONFIG._replace(parts=TILE_PARTS, tail_split=4, tail_per_sm=1, store_eviction=store_eviction,
                                        load_eviction=load_eviction)
    check_launch(model_case((16, 32), "kv", {}, seed=7), config)
    ptx = ran[-1].asm["ptx"]
    assert (ptx.count("bulk_group.L2::cache_hint"), ptx.count("bulk_group [")) == ((12, 0) if store_eviction else (0, 12))
    assert ptx.count("complete_tx::bytes.L2::cache_hint") == (12 if load_eviction else 0)


@pytest.mark.parametrize(
    ("changes", "config", "needs"),
    [
        ({"T": 2}, SMALL_CONFIGS["half-rows"], "one token per call"),
        ({"slot_pad": 3}, SMALL_CONFIGS["half-rows"], "initial_state_source with a 16-byte aligned base"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(vec=3), r"C=32 columns, C a multiple of num_warps\*vec=6"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(rows=4), "rows=4 dividing K=32, a multiple of the 8 lanes"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(rows=8), "and of 16 rows"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(parts=3), "parts=3 dividing K=32 into parts of whole steps"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(parts=4), "parts=4 dividing K=32 into parts of whole steps of rows=16"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(tail_split=3, tail_per_sm=1), "tail_split=3 >= 1 dividing BV=32"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(sort_rows=True, rank_in_program=True),
         "rank_in_program=False .only the vk kernel ranks its rows in the program"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(prefetch_ahead=8),
         "prefetch_ahead=0 .only the vk kernel prefetches a later tile; got 8"),
        ({"B": SNAPSHOT_MAX_ROWS + 1, "padding_rows": ()}, SMALL_CONFIGS["half-rows"]._replace(sort_rows=True, snapshot_order=True),
         f"at most {SNAPSHOT_MAX_ROWS} rows for snapshot_order, sorted in one program .got B={SNAPSHOT_MAX_ROWS + 1}"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(store_eviction="evict_first"),
         "store_eviction '' or 'evict_last' .the only L2 policy given to this kernel's TMA stores; got 'evict_first'"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(load_eviction="evict_first"),
         "load_eviction '' or 'evict_last' .the only L2 policy given to this kernel's TMA loads; got 'evict_first'"),
        ({}, SMALL_CONFIGS["half-rows"]._replace(tail_split=8, tail_per_sm=1),
         r"the tail tiles of tail_split=8: BV=4 in chunks of C=4 columns, C a multiple of num_warps\*vec=8"),
        ({"K": 128, "V": 128}, MODEL_CONFIGS["head-vec4"]._replace(programs_per_sm=7), "within an SM's 233472 bytes"),
        ({"K": 256, "V": 256, "state_dtype": torch.float32}, GluonTileConfig(256, 16, 16, 1, vec=2),
         "within 232448 bytes of shared memory"),
    ],
)
def test_refuses_operands_it_cannot_run(changes, config, needs):
    """Checked before any launch, on metadata only: a clear error naming what is needed."""
    case = dataclasses.replace(PERSISTENT_CASE, **changes)
    with pytest.raises(ValueError, match=needs):
        run_triton(build(case, "cuda" if torch.cuda.is_available() else "cpu"), config)


@given(num_tiles=st.integers(1, 3000), sms=st.integers(1, 160), split=st.sampled_from([1, 2, 4]),
       tail_per_sm=st.integers(0, 6))
def test_the_split_grid_covers_every_tile_once(num_tiles, sms, split, tail_per_sm):
    """The kernel's map from program to tile (its formulas, written again here) over the grid
    ``split_grid`` gives: every column of every tile exactly once, the grid's last programs on the
    last ``min(num_tiles, tail_per_sm * SMs)`` tiles in pieces."""
    config = KV_2B_TILE_CONFIG._replace(tail_split=split, tail_per_sm=tail_per_sm)
    with mock.patch.object(tile_module, "sm_count", lambda index: sms):
        whole_tiles, grid = split_grid(config, num_tiles, 0)
    pieces = split if grid > whole_tiles else 1  # the launcher's TAIL_SPLIT
    covered = collections.Counter()
    for pid in range(grid):
        if pieces == 1 or pid < whole_tiles:
            covered.update(range(pid * split, (pid + 1) * split))
        else:
            covered[pid + whole_tiles * (pieces - 1)] += 1
    assert covered == collections.Counter(range(num_tiles * split))
    assert num_tiles - whole_tiles == (min(num_tiles, tail_per_sm * sms) if split > 1 else 0)


def test_rules_switch_from_the_small_to_the_whole_head_tiles():
    assert all(0 < rule.small_from <= rule.large_from for rule in TILE_RULES.values())


def test_the_h100_takes_the_h200s_tile_rules_with_its_vk_rows_stored_plainly():
    """Measured on the H100 (results/h100/ot_*_1077935.json, vk_h100_1077935.json): the H200's rules
    read faster or level, but for its vk rows' evict-last stores, 1.6 points slower there."""
    from gdn_ops.gluon_decode_vk_tile import VK_TILE_RULES, vk_rule_config

    assert TILE_RULES["H100"] == TILE_RULES["H200"]
    assert VK_TILE_RULES["H200"].evict_last_from is not None
    assert VK_TILE_RULES["H100"] == VK_TILE_RULES["H200"]._replace(evict_last_from=None)
    for itemsize in (2, 4):
        for heads in (8, 32):
            for rows in (32, 128, 512, 1024):
                h200, h100 = (vk_rule_config(VK_TILE_RULES[card], itemsize, rows * heads, rows, sorted_rows=True)
                              for card in ("H200", "H100"))
                if h200 is None:  # a 2-byte pool's tile starts at 1024
                    assert h100 is None and itemsize == 2 and rows * heads < 1024
                    continue
                assert h100 == h200._replace(store_eviction="")
                assert h200.store_eviction == ("evict_last" if rows * heads >= 4096 else "")


def _tail(config: GluonTileConfig, per_sm: int, split: int = 4) -> GluonTileConfig:
    return config._replace(tail_split=split, tail_per_sm=per_sm)


def _evict_last(config: GluonTileConfig) -> GluonTileConfig:
    return config._replace(load_eviction="evict_last")


@pytest.mark.parametrize(("itemsize", "rows_x_heads", "expected"), [
    (2, 256, None), (2, 511, None), (2, 512, _tail(KV_2B_TILE_SMALL_CONFIG, 2, split=2)),
    (2, 1023, _tail(KV_2B_TILE_SMALL_CONFIG, 2, split=2)),
    (2, 1024, _tail(KV_2B_TILE_CONFIG, 1)), (2, 2048, _tail(KV_2B_TILE_CONFIG, 2)),
    (2, 4095, _tail(KV_2B_TILE_CONFIG, 2)), (2, 4096, _evict_last(_tail(KV_2B_TILE_CONFIG, 2))),
    (2, 8192, _evict_last(_tail(KV_2B_TILE_CONFIG._replace(parts=TILE_PARTS), 1))),
    (4, 256, None), (4, 512, _tail(KV_4B_TILE_CONFIG, 1)), (4, 1024, _tail(KV_4B_TILE_CONFIG, 2)),
    (4, 2047, _tail(KV_4B_TILE_CONFIG, 2)), (4, 2048, _evict_last(_tail(KV_4B_TILE_CONFIG, 2))),
    (4, 4095, _evict_last(_tail(KV_4B_TILE_CONFIG, 2))),
    (4, 4096, _evict_last(_tail(KV_4B_TILE_CONFIG._replace(parts=TILE_PARTS), 1))),
    (4, 32768, _evict_last(_tail(KV_4B_TILE_CONFIG._replace(parts=TILE_PARTS), 1)))])
def test_the_h200_rule_picks_tiles_and_parts_by_grid(itemsize, rows_x_heads, expected):
    """The H200's thresholds (NOTES.md): the tile kernel from B*HV 512, whole 2-byte heads from
    1024, the tile in parts from 8192 (2-byte) and 4096 (fp32), and the grid's end in quarter
    pieces, 2 whole tiles per SM at B*HV 2048-4095 (2-byte) and 1024-4095 (fp32), else 1; the
    quarter-head 2-byte tile's end in halves, 2 per SM; the state loaded evict-last from 4096
    (2-byte) and 2048 (fp32), 128 MB of state a call either way."""
    assert rule_config(TILE_RULES["H200"], itemsize, rows_x_heads) == expected
    if expected is not None:
        q = torch.empty(1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
        state = torch.empty(1, 32, 128, 128, dtype=torch.float32 if itemsize == 4 else torch.bfloat16, device="meta")
        assert tile_reason(q, state, expected) is None


def test_the_fp32_configuration_fits_an_fp32_head():
    q = torch.empty(1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
    state = torch.empty(1, 32, 128, 128, dtype=torch.float32, device="meta")
    assert tile_reason(q, state, KV_4B_TILE_CONFIG) is None


@pytest.mark.parametrize(("capability", "name", "expected"), [
    ((9, 0), "NVIDIA H100 80GB HBM3", "h100"),
    ((9, 0), "NVIDIA H200", "h200"),
    ((9, 0), "NVIDIA H20", "default"),
    ((8, 0), "NVIDIA A100-SXM4-80GB", None),
])
def test_gpu_rules_are_found_by_name_from_sm90(monkeypatch, capability, name, expected):
    from gdn_ops.triton_decode_tma import sm90_gpu_rule

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: name)
    monkeypatch.delenv("GDN_OPS_TUNING_GPU", raising=False)  # the card's own name, whatever the suite runs under
    assert sm90_gpu_rule({"H200": "h200", "H100": "h100"}, 0, "default") == expected


@pytest.mark.parametrize(("tuning_gpu", "expected"), [("H200", "h200"), ("NVIDIA H20", "default"), ("", "h100")])
def test_gdn_ops_tuning_gpu_names_the_tables_looked_up(monkeypatch, tuning_gpu, expected):
    """On an H100, ``GDN_OPS_TUNING_GPU`` picks another GPU's entry of every per-GPU table (empty:
    the GPU's own), and the launcher's tile tables see the same name."""
    from gdn_ops.triton_decode import gpu_name
    from gdn_ops.triton_decode_tma import sm90_gpu_rule

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("GDN_OPS_TUNING_GPU", tuning_gpu)
    gpu_name.cache_clear()
    try:
        assert sm90_gpu_rule({"H200": "h200", "H100": "h100"}, 0, "default") == expected
        assert gpu_name(torch.device("cuda", 0)) == (tuning_gpu or "NVIDIA H100 80GB HBM3")
        assert gpu_name(torch.device("cpu")) == ""
    finally:
        gpu_name.cache_clear()  # the real GPU's name for the tests after this one


def test_gdn_ops_tuning_gpu_is_refused_off_sm90(monkeypatch):
    """Another card's tables hold sm_90 kernels and budgets: on any other GPU the variable is an
    error that names it, before any table is read."""
    from gdn_ops.triton_decode_tma import sm90_gpu_rule, tuning_gpu_name

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (10, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA B200")
    monkeypatch.setenv("GDN_OPS_TUNING_GPU", "H200")
    with pytest.raises(ValueError, match=r"GDN_OPS_TUNING_GPU='H200' .* sm_90 GPUs; NVIDIA B200 is sm_100"):
        sm90_gpu_rule({"H200": "h200"}, 0, "default")
    monkeypatch.delenv("GDN_OPS_TUNING_GPU")
    assert tuning_gpu_name(0) == "NVIDIA B200" and sm90_gpu_rule({"H200": "h200"}, 0, "default") == "default"


@pytest.mark.parametrize("config", list(MODEL_CONFIGS.values()), ids=list(MODEL_CONFIGS))
def test_model_configurations_fit(config):
    q = torch.empty(1, 1, 16, 128, dtype=torch.bfloat16, device="meta")
    state = torch.empty(1, 32, 128, 128, dtype=torch.bfloat16, device="meta")
    assert tile_reason(q, state, config) is None


def compiled(config: GluonTileConfig, state: str = "bf16") -> tuple[int, str]:
    """Shared memory and ``ptxas -v`` report of the kernel as launched with ``config`` on a
    Qwen3-Next head with bf16 activations and a dense ``state`` (bf16 or fp32) pool, compiled for
    sm_90 (an H200's 132 SMs for the grid's tail) as the launcher compiles it (its L2 policies'
    PTX rewrite included)."""
    kernel = compiled_kernel(config, state)
    return kernel.metadata.shared, ptxas_report(kernel.asm["ptx"])


def compiled_kernel(config: GluonTileConfig, state: str = "bf16"):
    """The kernel compiled for sm_90 as :func:`compiled` describes."""
    import gdn_ops.gluon_decode_kv_tile as tile

    with tile.l2_policy(config):
        return compile_recorded_launch(tile, "_decode_kv_tile_kernel", "launch_decode_kv_tile", "kv", config,
                                       {"bf16": torch.bfloat16, "fp32": torch.float32}[state])


def tma_hints(config: GluonTileConfig, state: str) -> tuple[int, int, int, int]:
    """In the PTX of :func:`compiled_kernel`: TMA stores with an L2 hint, plain TMA stores, the
    state's TMA loads (5-d) with an L2 hint, and evict-last policies made."""
    ptx = compiled_kernel(config, state).asm["ptx"]
    return (ptx.count("bulk_group.L2::cache_hint"), ptx.count("bulk_group ["),
            len(re.findall(r"tensor\.5d\.shared::\w+\.global\.mbarrier::complete_tx::bytes\.L2::cache_hint", ptx)),
            ptx.count("createpolicy.fractional.L2::evict_last"))


@pytest.mark.parametrize("config", list(MODEL_CONFIGS.values()), ids=list(MODEL_CONFIGS))
def test_compiles_for_sm90_with_only_the_tile_in_shared_memory_and_no_spills(config):
    stdout = run_in_child("test_gluon_decode_kv_tile", f"'\\n'.join(map(str, t.compiled(t.{config!r})))")
    shared, report = stdout.split("\n", 1)
    K = 128
    assert int(shared) == (K * config.BV + 2 * K) * 2 + 8 * config.parts  # the tile, q, k and a barrier per part
    assert_no_spills(report)


@pytest.mark.parametrize(("state", "rows_x_heads"), [("bf16", 512), ("bf16", 2048), ("bf16", 8192), ("fp32", 1024),
                                                           ("fp32", 2048), ("fp32", 4096)])
def test_compiles_the_h200_rule_with_tails_for_sm90(state, rows_x_heads):
    """The rule's configurations with a tail in pieces: the same shared memory (the pieces use the
    start of the whole tile's buffer) within the 80 registers that the rule's programs per SM allow
    (6 of 4 warps, or 12 of 2 for the quarter-head tile), and nothing on the stack. (Compiled from a
    hand-built signature without the launch's alignment hints, the tiles in 8 parts kept 4-8 bytes
    there; as launched they keep none, with Triton 3.6 and 3.7.)"""
    itemsize = {"bf16": 2, "fp32": 4}[state]
    config = rule_config(TILE_RULES["H200"], itemsize, rows_x_heads)
    assert config.tail_split > 1
    stdout = run_in_child("test_gluon_decode_kv_tile", f"'\\n'.join(map(str, t.compiled(t.{config!r}, {state!r})))")
    shared, report = stdout.split("\n", 1)
    K = 128
    assert int(shared) == K * config.BV * itemsize + 2 * K * 2 + 8 * config.parts
    assert int(re.search(r"Used (\d+) registers", report)[1]) <= config.maxnreg == 80
    assert_no_spills(report)


@pytest.mark.parametrize(("state", "rows_x_heads", "expected"), [
    ("bf16", 4095, "(0, 2, 0, 0)"), ("bf16", 4096, "(0, 2, 2, 1)"), ("bf16", 8192, "(0, 12, 12, 1)"),
    ("fp32", 1024, "(0, 2, 0, 0)"), ("fp32", 2048, "(0, 2, 2, 1)"), ("fp32", 4096, "(0, 12, 12, 1)")])
def test_the_h200_rule_loads_evict_last_from_its_threshold(state, rows_x_heads, expected):
    """As the launcher compiles the rule's tile for sm_90: from its dtype's threshold each of
    the state's TMA loads (one per part, and one per part of the tail's pieces) carries the L2 hint
    of one evict-last policy and the stores none; below it nothing is hinted. (Hinted, the tile's
    registers and stack are checked by test_compiles_the_h200_rule_with_tails_for_sm90.)"""
    rule, itemsize = TILE_RULES["H200"], {"bf16": 2, "fp32": 4}[state]
    config = rule_config(rule, itemsize, rows_x_heads)
    assert (config.load_eviction == "evict_last") == rule.loads_evict_last(itemsize, rows_x_heads)
    assert config.store_eviction == ""
    assert run_in_child("test_gluon_decode_kv_tile", f"t.tma_hints(t.{config!r}, {state!r})").strip() == expected


@pytest.mark.parametrize("launcher", ["persistent", "tile"])
def test_launch_arguments_match_the_kernel_parameters(monkeypatch, launcher):
    """Both Gluon kv launchers build their common arguments in ``kv_launch_args``: each positional
    argument lands on the kernel parameter of its kind (descriptor, pointer, scalar) and the
    keywords are exactly the kernel's constexprs. Recorded on CPU with the kernel replaced."""
    import gdn_ops.gluon_decode_kv as persistent
    import gdn_ops.gluon_decode_kv_tile as tile

    module, kernel, launch, config = {
        "persistent": (persistent, "_decode_kv_gluon_kernel", "launch_decode_kv_gluon", persistent.KV_2B_GLUON_CONFIG),
        "tile": (tile, "_decode_kv_tile_kernel", "launch_decode_kv_tile", KV_2B_TILE_CONFIG)}[launcher]
    monkeypatch.setattr(persistent, "sm_count", lambda index: 132)
    grid, args, _ = record_launch(module, kernel, launch, "kv", config)
    num_tiles = 3 * 32 * (128 // config.BV)
    assert args["num_tiles"] == num_tiles
    assert grid[0] == (num_tiles if launcher == "tile" else min(num_tiles, 132 * config.programs_per_sm))
