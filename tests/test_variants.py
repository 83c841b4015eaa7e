"""Every kernel experiment in benchmarks/variants.py still applies to the current kernel sources
(a variant whose pattern no longer matches would otherwise fail only on the GPU machine)."""

from __future__ import annotations

import contextlib

import pytest

from benchmarks.variants import (
    ALL_VARIANTS,
    KV_TILE_LOAD_POLICY_VARIANTS,
    KV_TILE_STORE_POLICY_VARIANTS,
    KV_TILE_VARIANTS,
    SLOT_ORDER_VARIANTS,
    TMA_VARIANTS,
    VARIANTS,
    VK_TILE_VARIANTS,
    load_variant,
)


def _tiny_problem(layout: str, device: str | None = None):
    """A 5-row fp32 problem (HK=2, HV=4, K=16, V=32) of ``benchmarks.providers``, on the GPU when
    there is one (the rank kernel runs on it), else the CPU."""
    import torch

    from benchmarks.providers import Config, make_problem

    cfg = Config(tp=0, HK=2, HV=4, K=16, V=32, B=5, state_dtype=torch.float32, layout=layout)
    return make_problem(cfg, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _launch(launch, problem, layout: str, config, order=None):
    """``launch`` (``launch_decode``'s signature, as ``tune_tma.variant_launch`` returns) on
    ``problem`` with the tile ``config``, without PDL, given ``order`` or not."""
    x = problem.inputs
    return launch(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], problem.pool, problem.indices,
                  x["out"], scale=0.25, use_qk_l2norm_in_kernel=True, state_layout=layout, softplus_beta=1.0,
                  softplus_threshold=20.0, config=tuple(config), pdl=False, order=order)


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_variant_patches_the_current_source(name):
    module = load_variant(name)
    launcher = ("launch_decode" if name in VARIANTS else "launch_decode_kv_tma" if name in TMA_VARIANTS
                else "launch_decode_vk_tile" if name in VK_TILE_VARIANTS
                else "launch_decode_kv_tile" if name in KV_TILE_VARIANTS
                else "slot_order" if name in SLOT_ORDER_VARIANTS else "launch_decode_kv_gluon")
    assert callable(getattr(module, launcher))


def test_tune_tma_specs_name_each_tma_kernel():
    from benchmarks.tune_tma import parse_spec
    from gdn_ops.gluon_decode_kv import GluonKVConfig
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
    from gdn_ops.triton_decode_tma import PersistentConfig

    assert parse_spec("64:4:3:4:0") == PersistentConfig(64, 4, 3, 4, prefetch_gates=False)
    assert parse_spec("64:4:3:4") == PersistentConfig(64, 4, 3, 4, prefetch_gates=True)
    assert parse_spec("g128:8:2:2") == GluonKVConfig(128, 8, 2, 2)
    assert parse_spec("g64:4:2:4:8") == GluonKVConfig(64, 4, 2, 4, vec=8)
    assert parse_spec("t128:4:16:6") == GluonTileConfig(128, 4, 16, 6)
    assert parse_spec("t128:4:8:6:8") == GluonTileConfig(128, 4, 8, 6, vec=8)
    assert parse_spec("t64:4:8:6:sort") == GluonTileConfig(64, 4, 8, 6, sort_rows=True)
    assert parse_spec("t64:4:8:6:4:p4:sort") == GluonTileConfig(64, 4, 8, 6, 4, sort_rows=True, parts=4)
    assert parse_spec("t64:4:8:6:p2") == GluonTileConfig(64, 4, 8, 6, parts=2)
    assert parse_spec("t128:4:16:6:8:tail2x6:sort") == GluonTileConfig(128, 4, 16, 6, 8, sort_rows=True,
                                                                      tail_split=2, tail_per_sm=6)
    assert parse_spec("t64:4:8:6:4:p8:tail4x3") == GluonTileConfig(64, 4, 8, 6, 4, parts=8, tail_split=4,
                                                                   tail_per_sm=3)
    assert parse_spec("t16:1:16:24:8:el:sort") == GluonTileConfig(16, 1, 16, 24, 8, sort_rows=True,
                                                                  store_eviction="evict_last")
    assert parse_spec("t8:2:8:16:4:rank") == GluonTileConfig(8, 2, 8, 16, 4, sort_rows=True, rank_in_program=True)
    assert parse_spec("t8:2:8:16:4:snap") == GluonTileConfig(8, 2, 8, 16, 4, sort_rows=True, snapshot_order=True)
    assert parse_spec("t8:2:8:20:4:el:pf8:sort") == GluonTileConfig(8, 2, 8, 20, 4, sort_rows=True,
                                                                   store_eviction="evict_last", prefetch_ahead=8)
    assert parse_spec("t128:4:8:6:8:p8:tail4x1:lel:sort") == GluonTileConfig(
        128, 4, 8, 6, 8, sort_rows=True, parts=8, tail_split=4, tail_per_sm=1, load_eviction="evict_last")
    for bad in ("64:4:3", "g64:4:x:4", "64-4-3-4", "t128:4:16", "t64:4:8:6:px", "t64:4:8:6:p", "t64:4:8:6:tail2",
                "t64:4:8:6:tailx3", "t64:4:8:6:q2", "t16:1:16:24:8:ef", "t8:2:8:20:4:pfx"):
        with pytest.raises(ValueError, match="expected BV:warps"):
            parse_spec(bad)


def test_tune_tma_applies_each_family_of_variants_to_its_kernel():
    from benchmarks.tune_tma import variants_of
    from benchmarks.variants import GLUON_VARIANTS
    from gdn_ops.gluon_decode_kv import GluonKVConfig
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
    from gdn_ops.triton_decode_tma import PersistentConfig

    tile = GluonTileConfig(128, 4, 16, 6, 8)
    assert variants_of(tile, "vk") == VK_TILE_VARIANTS
    # the kv tile's policy variants only where the launcher runs the one rewrite they replace
    policy = KV_TILE_LOAD_POLICY_VARIANTS | KV_TILE_STORE_POLICY_VARIANTS
    assert "kv_tile_lel_stores_evict_first" in KV_TILE_LOAD_POLICY_VARIANTS
    assert "kv_tile_loads_evict_first" in KV_TILE_STORE_POLICY_VARIANTS
    assert set(variants_of(tile, "kv")) == set(KV_TILE_VARIANTS) - policy
    assert set(variants_of(tile._replace(load_eviction="evict_last"), "kv")) == (
        set(KV_TILE_VARIANTS) - KV_TILE_STORE_POLICY_VARIANTS)
    assert set(variants_of(tile._replace(store_eviction="evict_last"), "kv")) == (
        set(KV_TILE_VARIANTS) - KV_TILE_LOAD_POLICY_VARIANTS)
    assert set(variants_of(tile._replace(load_eviction="evict_last", store_eviction="evict_last"), "kv")) == (
        set(KV_TILE_VARIANTS) - policy)
    # the rank kernel's variants where the tile sorts
    assert variants_of(tile._replace(sort_rows=True), "vk") == VK_TILE_VARIANTS | SLOT_ORDER_VARIANTS
    assert variants_of(GluonKVConfig(128, 4, 2, 2), "kv") is GLUON_VARIANTS
    assert variants_of(PersistentConfig(64, 4, 3, 4), "kv") is TMA_VARIANTS



def test_tune_tma_refuses_a_variant_of_no_family(monkeypatch, capsys):
    """A spec's kernel passes over the other families' variants, so a misspelt name would time
    nothing and say nothing; it is refused before anything runs (no GPU needed to see it)."""
    from benchmarks import tune_tma

    monkeypatch.setattr("sys.argv", ["tune_tma", "--variants", "kv_tile_drain_prefetch2", "kv_tile_drain_prefech3"])
    monkeypatch.setattr(tune_tma, "copy_bandwidth", lambda: pytest.fail("ran past the argument check"))
    with pytest.raises(SystemExit):
        tune_tma.main()
    assert "--variants: not in benchmarks/variants.py: kv_tile_drain_prefech3" in capsys.readouterr().err

def test_tuning_results_carry_gpu_versions_date_and_copy_bandwidth(tmp_path, monkeypatch):
    import json

    import torch
    import triton

    from benchmarks.tuning_results import write_results

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    monkeypatch.delenv("GDN_OPS_TUNING_GPU", raising=False)
    path = write_results(tmp_path / "out", "tune", [{"B": 8}], 4.25e12, host="node")
    assert path == tmp_path / "out" / "tune.json"
    written = json.loads(path.read_text())
    assert written["records"] == [{"B": 8}]
    header = written["header"]
    assert (header["device"], header["torch"], header["triton"]) == ("NVIDIA H200", torch.__version__, triton.__version__)
    assert header["tuning_gpu"] == "NVIDIA H200"
    assert header["copy_bandwidth_Bps"] == 4.25e12 and header["host"] == "node" and header["date"].startswith("20")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    monkeypatch.setenv("GDN_OPS_TUNING_GPU", "H100")  # another card's tables: the header says which
    assert json.loads(write_results(tmp_path, "again", [], 4.25e12).read_text())["header"]["tuning_gpu"] == "H100"


@pytest.mark.parametrize("name", ["next_tile_ahead_p8", "persistent_p8"])
@pytest.mark.parametrize(("layout", "sort_rows", "T", "index_dtype"), [
    ("vk", True, 1, "int32"), ("kv", False, 2, "int64"), ("vk", False, 1, None)])
def test_persistent_variants_match_the_reference(name, layout, sort_rows, T, index_dtype):
    """The persistent per-tile variants (a program per SM slot working tile after tile, with or
    without its next tile's state loaded ahead) are decode steps, checked against the float64
    reference before they are timed; here through Triton's interpreter, several tiles per program."""
    import torch
    from decode_case import DecodeCase, build, check

    from gdn_ops.triton_decode import DecodeConfig

    module = load_variant(name)
    dtype = getattr(torch, index_dtype) if index_dtype else None
    case = DecodeCase(B=5, T=T, HK=2, group=2, K=16, V=32, state_layout=layout, state_dtype=torch.bfloat16,
                      index_dtype=dtype, padding_rows=(1, 3) if dtype else (), out_given=True, seed=T)
    config = DecodeConfig(BV=8, BK=16, num_warps=1, sort_rows=sort_rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def run(inp):
        module.launch_decode(inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices,
                             inp.out.view, scale=case.K**-0.5, use_qk_l2norm_in_kernel=False, state_layout=layout,
                             config=config)
        return inp.out.view

    check(build(case, device), run)


@pytest.mark.parametrize("name", ["norm_factors", "early_slot_load", "operands_before_slot",
                                  "operands_before_slot_early", "operands_before_slot_cv",
                                  "operands_before_slot_norm_factors"])
@pytest.mark.parametrize(("layout", "state_dtype", "l2norm", "T"), [
    ("kv", "float32", True, 1), ("vk", "bfloat16", True, 1), ("kv", "bfloat16", False, 1), ("vk", "float32", True, 2)])
def test_step_variants_are_the_decode_step(name, layout, state_dtype, l2norm, T):
    """The per-tile kernel's step and load-order variants of the sixtieth and sixty-first sessions are decode steps,
    checked against the float64 reference before they are timed: with and without the norms, one
    token (their own path) and two (the shipped one), padding rows, through Triton's interpreter on
    CPU (without PDL, so the variants that read the slot before the wait run their shipped order
    here; on a GPU the tuning scripts check them the same way under PDL)."""
    import torch
    from decode_case import DecodeCase, build, check

    from gdn_ops.triton_decode import DecodeConfig

    module = load_variant(name)
    case = DecodeCase(B=3, T=T, HK=2, group=2, K=16, V=32, state_layout=layout,
                      state_dtype=getattr(torch, state_dtype), l2norm=l2norm, padding_rows=(1,), out_given=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def run(inp):
        module.launch_decode(inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices,
                             inp.out.view, scale=case.K**-0.5, use_qk_l2norm_in_kernel=l2norm, state_layout=layout,
                             config=DecodeConfig(BV=8, BK=16, num_warps=1))
        return inp.out.view

    check(build(case, device), run)


def _policy_config(name: str, config):
    """``config`` with the evict-last copies that kv tile policy variant ``name`` rewrites: its
    state's loads (``KV_TILE_LOAD_POLICY_VARIANTS``) or its stores."""
    if name in KV_TILE_LOAD_POLICY_VARIANTS:
        return config._replace(load_eviction="evict_last")
    return config._replace(store_eviction="evict_last") if name in KV_TILE_STORE_POLICY_VARIANTS else config


def compiled_variant_ptx(name: str) -> str:
    """The PTX of kv tile policy variant ``name`` compiled for sm_90 at the shipped bf16 tile with
    the copies it rewrites evict-last, through the variant's own rewrite."""
    from tile_kernel_checks import compile_recorded_launch

    from gdn_ops.gluon_decode_kv_tile import KV_2B_TILE_CONFIG

    module, config = load_variant(name), _policy_config(name, KV_2B_TILE_CONFIG)
    with module.l2_policy(config):
        return compile_recorded_launch(module, "_decode_kv_tile_kernel", "launch_decode_kv_tile", "kv",
                                       config).asm["ptx"]


def compiled_vk_loads_evict_last_ptx() -> str:
    """The PTX of ``vk_tile_loads_evict_last`` compiled for sm_90 at the shipped one-warp bf16 tile
    through the rewrite its launcher compiles it inside (the recording runs outside any compile)."""
    from tile_kernel_checks import compile_recorded_launch

    from gdn_ops.gluon_decode_vk_tile import VK_2B_TILE_CONFIG
    from gdn_ops.ptx_rewrite import ptx_rewrite, tma_state_loads_evict_last

    with ptx_rewrite("_decode_vk_tile_kernel", tma_state_loads_evict_last):
        return compile_recorded_launch(load_variant("vk_tile_loads_evict_last"), "_decode_vk_tile_kernel",
                                       "launch_decode_vk_tile", "vk", VK_2B_TILE_CONFIG).asm["ptx"]


def compiled_variant_shared_memory(name: str) -> int:
    """Shared memory of Gluon tile variant ``name``'s kernel compiled for sm_90 as its own launcher
    launches it at the shipped bf16 tile (recorded on CPU); a variant of the kv tile's store policy
    with its rows stored evict-last, through its own PTX rewrite."""
    from tile_kernel_checks import compile_recorded_launch

    from gdn_ops.gluon_decode_kv_tile import KV_2B_TILE_CONFIG
    from gdn_ops.gluon_decode_vk_tile import VK_2B_TILE_TWO_WARP_CONFIG

    module = load_variant(name)
    if name in VK_TILE_VARIANTS:
        layout, config, policy = "vk", VK_2B_TILE_TWO_WARP_CONFIG, contextlib.nullcontext()
    else:
        layout, config = "kv", _policy_config(name, KV_2B_TILE_CONFIG)
        policy = module.l2_policy(config)
    with policy:
        return compile_recorded_launch(module, f"_decode_{layout}_tile_kernel", f"launch_decode_{layout}_tile",
                                       layout, config).metadata.shared


@pytest.mark.parametrize("name", sorted(VK_TILE_VARIANTS | KV_TILE_VARIANTS))
def test_tile_variant_compiles_for_sm90(name):
    """A Gluon tile variant whose patches still match can still fail to compile when the code
    around them moved (two did, unnoticed until the GPU); compiled here at the shipped bf16 tile,
    in a child process as the kernels' own compile tests do. (The variant's own kernel: from
    f26a9ec to this session this test compiled the shipped one, its helper no longer reading the
    kernel it was given.)"""
    from sm90_compile import run_in_child

    assert int(run_in_child("test_variants", f"t.compiled_variant_shared_memory({name!r})")) > 0


@pytest.mark.parametrize(("name", "policies", "hinted_loads", "hinted_stores"), [
    ("kv_tile_el_fraction25", ["evict_last.b64 %gdn_l2_evict_last, 0.25;"], 0, 1),
    ("kv_tile_loads_evict_first", ["evict_last.b64 %gdn_l2_evict_last, 1.0;",
                                   "evict_first.b64 %gdn_l2_evict_first, 1.0;"], 1, 1),
    ("kv_tile_lel_fraction50", ["evict_last.b64 %gdn_l2_evict_last, 0.5;"], 1, 0),
    ("kv_tile_lel_stores_evict_first", ["evict_last.b64 %gdn_l2_evict_last, 1.0;",
                                        "evict_first.b64 %gdn_l2_evict_first, 1.0;"], 1, 1),
])
def test_policy_variants_rewrite_the_ptx_they_name(name, policies, hinted_loads, hinted_stores):
    """The policy variants' binaries carry their L2 policies: stores evict-last on a fraction of the
    lines, the state's TMA load (not q's and k's) evict-first beside them, that load evict-last on a
    fraction of its lines and the stores plain, or that load evict-last and the stores evict-first."""
    from sm90_compile import run_in_child

    assert name in KV_TILE_STORE_POLICY_VARIANTS | KV_TILE_LOAD_POLICY_VARIANTS
    ptx = run_in_child("test_variants", f"t.compiled_variant_ptx({name!r})")
    assert [line.split("L2::", 1)[1].strip() for line in ptx.splitlines() if "createpolicy" in line] == policies
    assert ptx.count("mbarrier::complete_tx::bytes.L2::cache_hint") == hinted_loads
    assert ptx.count("bulk_group.L2::cache_hint") == hinted_stores
    assert ptx.count("cp.async.bulk.tensor.5d.global.shared::cta.bulk_group") == 1  # the store, either way
    if "evict_first" in name:  # the copies named evict-first carry that policy, the others evict-last
        first = "bulk_group" if "stores" in name else "complete_tx::bytes"
        assert [line for line in ptx.splitlines() if "%gdn_l2_evict_first;" in line and "cache_hint" in line]
        assert all(first in line for line in ptx.splitlines() if "%gdn_l2_evict_first;" in line and "cache_hint" in line)


def test_the_vk_loads_variant_hints_the_state_loads_only():
    """The vk tile's state arrives by 5-d TMA copies (q and k 4-d, v 3-d): the rewrite hints those,
    with one evict-last policy, and no other copy."""
    from sm90_compile import run_in_child

    ptx = run_in_child("test_variants", "t.compiled_vk_loads_evict_last_ptx()")
    loads = [line for line in ptx.splitlines() if "mbarrier::complete_tx::bytes" in line]
    assert any(".5d." in line for line in loads)
    assert all((".L2::cache_hint" in line) == (".5d." in line) for line in loads)
    assert ptx.count(".reg .b64 %gdn_l2_evict_last;") == 1


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_tile_variants_run_inside_the_shipped_launcher(monkeypatch, layout):
    """``tune_tma`` times a Gluon tile variant through the shipped ``launch_decode`` with the
    variant's launcher swapped in, so a sorting spec sorts and takes a given slot order as the
    shipped kernel does (before, the variant was called directly and ran its rows unsorted).
    The launcher's sm_90 check is lifted and the variant's launcher records (runs on CPU too)."""
    from types import SimpleNamespace

    import torch

    import gdn_ops
    import gdn_ops.triton_decode as shipped
    from benchmarks import tune_tma
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig

    name = {"vk": "launch_decode_vk_tile", "kv": "launch_decode_kv_tile"}[layout]
    calls = []
    monkeypatch.setattr(tune_tma, "load_variant", lambda variant: SimpleNamespace(
        **{name: lambda *args, rows=None, config, **kwargs: calls.append((args[8], rows, config))}))
    monkeypatch.setattr(shipped, "tma_config_reason", lambda *args: None)
    launch = tune_tma.variant_launch(next(v for v in ALL_VARIANTS if v in (VK_TILE_VARIANTS if layout == "vk"
                                                                          else KV_TILE_VARIANTS)))
    problem = _tiny_problem(layout)
    config = GluonTileConfig(BV=32, num_warps=1, rows=8, programs_per_sm=4, sort_rows=True)
    order = gdn_ops.slot_order(problem.indices)
    for given in (None, order):
        _launch(launch, problem, layout, config, given)
    (ranked_slots, ranked_rows, first), (slots, rows, second) = calls
    assert first == second == config
    assert torch.equal(slots, order[0]) and torch.equal(rows, order[1])
    assert torch.equal(ranked_slots, order[0]) and torch.equal(ranked_rows, order[1])
    assert torch.equal(problem.indices[rows], slots) and torch.all(slots[1:] >= slots[:-1])


def test_a_vk_tile_variant_is_checked_by_its_own_rules(monkeypatch):
    """A vk tile variant may widen what its kernel takes (``vk_tile_v_box_floor``: tiles of fewer
    than 16 bytes of v), so ``tune_tma`` checks it with the variant module's ``vk_tile_reason``,
    not the shipped one's."""
    from types import SimpleNamespace

    from benchmarks import tune_tma
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig

    monkeypatch.setattr(tune_tma, "load_variant", lambda variant: SimpleNamespace(
        launch_decode_vk_tile=lambda *args, **kwargs: None, vk_tile_reason=lambda *args: "the variant's rule"))
    launch = tune_tma.variant_launch(next(iter(VK_TILE_VARIANTS)))
    with pytest.raises(ValueError, match="needs the variant's rule"):
        _launch(launch, _tiny_problem("vk", "cpu"), "vk", GluonTileConfig(BV=32, num_warps=1, rows=8, programs_per_sm=4))


@pytest.mark.parametrize("name", sorted(SLOT_ORDER_VARIANTS))
@pytest.mark.parametrize("pdl", [False, pytest.param(True, marks=pytest.mark.gpu)])
def test_rank_kernel_variants_sort_as_the_shipped_one(name, pdl):
    """Each rank-kernel variant gives the stable argsort of the slots (with PDL on the GPU too), at
    batch sizes of one step of columns, padding repeated."""
    import torch

    if pdl and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_variant(name)
    gen = torch.Generator().manual_seed(3)
    for B in (1, 5, 130, 1024, 2048):
        slots = torch.randperm(B + 40, generator=gen)[:B].to(torch.int32)
        slots[torch.rand(B, generator=gen) < 0.2] = -1
        sorted_slots, rows = module.slot_order(slots.to(device), pdl=pdl).cpu()
        expected_slots, expected_rows = torch.sort(slots, stable=True)
        assert torch.equal(rows, expected_rows.to(torch.int32)) and torch.equal(sorted_slots, expected_slots)


def test_a_rank_kernel_variant_runs_inside_the_shipped_decode(monkeypatch):
    """``tune_tma`` times a SLOT_ORDER_VARIANTS variant as the shipped decode with the variant's
    ``slot_order`` (and ``snapshot_slot_order``) in place of the shipped one: called where the decode sorts by itself, not where
    the order is given. (The tile launcher records; the sm_90 check is lifted; runs on CPU too.)"""
    from types import SimpleNamespace

    import torch

    import gdn_ops
    import gdn_ops.triton_decode as shipped
    from benchmarks import tune_tma
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
    from gdn_ops.triton_slot_order import slot_order

    ranked, launched = [], []

    def variant_slot_order(indices, pdl=False):
        ranked.append(indices)
        return slot_order(indices, pdl=pdl)

    monkeypatch.setattr(tune_tma, "load_variant", lambda variant: SimpleNamespace(
        slot_order=variant_slot_order, snapshot_slot_order=shipped.snapshot_slot_order))
    monkeypatch.setattr(shipped, "tma_config_reason", lambda *args: None)
    monkeypatch.setattr(shipped, "launch_decode_kv_tile",
                        lambda *args, rows=None, config, **kwargs: launched.append((args[8], rows)))
    launch = tune_tma.variant_launch(next(iter(SLOT_ORDER_VARIANTS)))
    problem = _tiny_problem("kv")
    config = GluonTileConfig(BV=32, num_warps=1, rows=8, programs_per_sm=4, sort_rows=True)
    order = gdn_ops.slot_order(problem.indices)
    for given in (None, order):
        _launch(launch, problem, "kv", config, given)
    assert len(ranked) == 1 and ranked[0] is problem.indices
    assert all(torch.equal(slots, order[0]) and torch.equal(rows, order[1]) for slots, rows in launched)
    assert len(launched) == 2
    # outside the block the shipped decode has its own rank kernel again
    assert shipped.slot_order is slot_order


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_the_per_tile_ceilings_do_what_they_leave_out(layout):
    """``sums_only`` gives the step's ``o`` (taken from the old state's sums) and leaves the pool as
    it was; ``step_out`` leaves the pool too, and its ``o`` is not the step's. Either would pass the
    reference check only by mistake, so the tuning scripts time them unchecked (``is_ceiling``)."""
    import torch

    from gdn_ops.triton_decode import DecodeConfig, launch_decode

    problem = _tiny_problem(layout)  # on the GPU where there is one: no interpreter there
    x = problem.inputs

    def launch(launcher):
        launcher(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], problem.pool, problem.indices,
                 x["out"], scale=0.25, use_qk_l2norm_in_kernel=True, state_layout=layout,
                 config=DecodeConfig(BV=8, BK=16, num_warps=1), pdl=False)

    before = problem.pool.clone()
    launch(launch_decode)
    o_step, updated = problem.inputs["out"].clone(), problem.pool.clone()
    assert not torch.equal(updated, before)
    for name in ("sums_only", "step_out"):
        problem.pool.copy_(before)
        problem.inputs["out"].fill_(float("nan"))
        launch(load_variant(name).launch_decode)
        assert torch.equal(problem.pool, before), name
        close = torch.allclose(problem.inputs["out"], o_step, rtol=1e-5, atol=1e-6)
        assert close == (name == "sums_only"), name


def test_a_ceiling_is_named_by_its_variant_whatever_the_suffixes():
    from benchmarks.variants import CEILING_VARIANTS, is_ceiling

    assert {"step_out", "sums_only", "kv_tile_copy_only"} <= CEILING_VARIANTS
    assert is_ceiling("variant:step_out+pdl") and is_ceiling("variant:sums_only+pdl+order")
    assert is_ceiling("variant:kv_tile_copy_only:t128:4:8:6:8:tail4x1:sort+order")
    assert not is_ceiling("variant:pdl_no_prefetch+pdl") and not is_ceiling("variant:operand_prefetch:BV32w2+pdl")
    assert not is_ceiling("step_out") and not is_ceiling("BV16w1+pdl") and not is_ceiling("t128:4:8:6:8:sort")
