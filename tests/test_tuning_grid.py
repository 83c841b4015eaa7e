"""The tuning scripts' grid (benchmarks/tune_decode.py, shared by tune_tma.py): what the options
name is what gets timed, in a fixed order."""

from __future__ import annotations

import argparse
import dataclasses
from unittest import mock

import pytest
import torch
from conftest import TRITON_INTERPRET


def test_the_grid_nests_pool_dtype_then_layout_then_batch_at_the_options_heads_and_activations():
    from benchmarks.tune_decode import add_grid_arguments, dtype_name, tuning_grid

    ap = argparse.ArgumentParser()
    add_grid_arguments(ap, batches=[1, 8], dtypes=["float32"], layouts=["vk"])
    args = ap.parse_args(["--dtypes", "float32", "bfloat16", "--layouts", "vk", "kv", "--batches", "8", "32",
                          "--heads", "4,8", "--act-dtype", "float16"])
    grid = tuning_grid(args)
    assert [(dtype_name(c.state_dtype), c.layout, c.B) for c in grid] == [
        (dtype, layout, B) for dtype in ("float32", "bfloat16") for layout in ("vk", "kv") for B in (8, 32)]
    assert {(c.HK, c.HV, c.K, c.V, c.act_dtype) for c in grid} == {(4, 8, 128, 128, torch.float16)}
    defaults = tuning_grid(ap.parse_args([]))
    assert [(c.state_dtype, c.layout, c.B, c.HV, c.act_dtype) for c in defaults] == [
        (torch.float32, "vk", 1, 32, torch.bfloat16), (torch.float32, "vk", 8, 32, torch.bfloat16)]


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_a_page_strided_pool_is_timed_and_checked_with_its_strides(layout):
    """``--slot-pad`` gives every point's pools slots that many elements further apart than dense;
    the check before timing runs each provider on a copy with the same strides, and the shipped
    op passes it there (on the GPU, or in the Triton interpreter on the CPU)."""
    from benchmarks.providers import check, launcher_provider, make_problem, reference
    from benchmarks.tune_decode import add_grid_arguments, tuning_grid

    ap = argparse.ArgumentParser()
    add_grid_arguments(ap, batches=[2], dtypes=["float32"], layouts=[layout])
    args = ap.parse_args(["--heads", "2,4", "--slot-pad", "8"])
    cfg, = tuning_grid(args)
    cfg = dataclasses.replace(cfg, K=32, V=32)
    problem = make_problem(cfg, "cpu" if TRITON_INTERPRET else "cuda")
    assert problem.pool.stride() == (4 * 32 * 32 + 8, 32 * 32, 32, 1)
    seen = []
    provider = launcher_provider("default")
    spy = dataclasses.replace(provider, make=lambda cfg, pool, *rest: seen.append(pool.stride())
                              or provider.make(cfg, pool, *rest))
    result = check(cfg, spy, problem, reference(cfg, problem))
    assert result.ok, result.message
    assert seen == [problem.pool.stride()]


def test_variants_run_at_the_tile_they_are_given(monkeypatch):
    """A variant patches the per-tile Triton kernel, so tune_decode hands it the table's tile (or an
    extra one) and never leaves the kernel choice to the launcher."""
    from types import SimpleNamespace

    import benchmarks.tune_decode as tune
    from benchmarks.providers import Config, make_problem
    from gdn_ops.triton_decode import DecodeConfig

    launched = []
    monkeypatch.setattr(tune, "load_variant", lambda name: SimpleNamespace(
        launch_decode=lambda *args, config, **kwargs: launched.append(config)))
    chosen, extra = DecodeConfig(BV=32, BK=128, num_warps=1), DecodeConfig(BV=8, BK=128, num_warps=1)
    providers = tune.variant_providers(["a", "b"], chosen, [extra])
    assert [p.name for p in providers] == ["variant:a+pdl", "variant:a:BV8w1+pdl", "variant:b+pdl",
                                           "variant:b:BV8w1+pdl"]
    cfg = Config(tp=1, HK=2, HV=4, K=128, V=128, B=2, state_dtype=torch.bfloat16, layout="vk")
    problem = make_problem(cfg, "cpu" if TRITON_INTERPRET else "cuda")
    for provider in providers:
        provider.make(cfg, problem.pool, problem.indices, problem.inputs)()
    assert launched == [chosen, extra, chosen, extra]
    sorting = extra._replace(sort_rows=True)
    ordered = tune.variant_providers(["a"], chosen, [sorting], step_order=True)
    assert [p.name for p in ordered] == ["variant:a+pdl", "variant:a:BV8w1sort+pdl+order"]


def test_tile_specs_round_trip_through_their_names():
    from benchmarks.tune_decode import parse_tile, tile_name
    from gdn_ops.triton_decode import DecodeConfig

    assert parse_tile("8:1", 128) == DecodeConfig(BV=8, BK=128, num_warps=1)
    assert parse_tile("8:1:64:new:sort", 128) == DecodeConfig(BV=8, BK=128, num_warps=1, maxnreg=64,
                                                              from_old_state=False, sort_rows=True)
    assert parse_tile("8:1:sort", 128).sort_rows and tile_name(parse_tile("8:1:new:sort", 128)) == "BV8w1newsort"
    assert tile_name(parse_tile("8:1:new", 128)) == "BV8w1new"
    assert tile_name(parse_tile("8:1:64", 128)) == "BV8w1r64"
    assert parse_tile("16:1:of", 128) == DecodeConfig(BV=16, BK=128, num_warps=1, operands_first=True)
    assert tile_name(parse_tile("16:1:of", 128)) == "BV16w1of"
    with pytest.raises(ValueError, match="unknown options \\['old'\\]"):
        parse_tile("8:1:old", 128)


def test_tile_sweeps_take_the_sweeps_neighbours_on_request():
    """``--peers`` and ``--replays``: by default SGLang and 15 rounds; the sweep's set on request;
    gdn_ops itself is not a peer."""
    from benchmarks.tune_decode import parser

    defaults = parser().parse_args([])
    assert (defaults.peers, defaults.replays) == (["sglang"], 15)
    args = parser().parse_args(["--peers", "sglang", "fla", "torch_compile", "eager", "copy", "--replays", "30"])
    assert (args.peers, args.replays) == (["sglang", "fla", "torch_compile", "eager", "copy"], 30)
    with pytest.raises(SystemExit):
        parser().parse_args(["--peers", "gdn_ops"])


def test_step_order_gives_sorting_tiles_their_order_and_checks_out():
    """``--step-order``: a sorting tile is timed with the slot order given (no rank kernel in its
    call), named ``+order``; a tile that does not sort is unchanged. Both pass the benchmark's check
    against the reference (through Triton's interpreter on CPU)."""
    from tile_kernel_checks import kernel_calls

    import benchmarks.tune_decode as tune
    import gdn_ops.triton_slot_order as module
    from benchmarks.providers import Config, check, make_problem, reference

    sorting, plain = (tune.parse_tile(spec, 16) for spec in ("8:1:sort", "8:1"))
    given, unsorted = (tune.tile_provider(t, pdl=False, step_order=True) for t in (sorting, plain))
    assert (given.name, unsorted.name) == ("BV8w1sort+order", "BV8w1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(tp=0, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="vk")
    problem = make_problem(cfg, device)
    ref = reference(cfg, problem)
    for provider in (given, unsorted):
        assert check(cfg, provider, problem, ref).ok, provider.name
    step = given.make(cfg, problem.pool, problem.indices, problem.inputs)  # ranks once, here
    with kernel_calls(module, "_slot_order_kernel") as ranks:
        step()
    assert ranks == []


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_the_sorting_default_ranks_its_rows_unless_given_the_order(layout):
    """``--sort-default``: ``default:sort`` runs the default configuration with its rows in slot
    order (the rank kernel in its call), ``default:sort+order`` the same given the order (no rank
    kernel); both pass the benchmark's check against the reference."""
    import gdn_ops.triton_slot_order as module
    from benchmarks.providers import Config, check, make_problem, reference
    from benchmarks.tune_tma import sorting_default_provider

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(tp=0, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout=layout)
    problem = make_problem(cfg, device)
    ref = reference(cfg, problem)
    providers = [sorting_default_provider(False), sorting_default_provider(True)]
    for provider in providers:
        assert check(cfg, provider, problem, ref).ok, provider.name
    ranks, kernel = [], module._slot_order_kernel

    class Counted:  # launches the rank kernel and counts its launches
        def __getitem__(self, grid):
            ranks.append(grid)
            return kernel[grid]

    launches = {}
    for provider in providers:  # after the checks: each step updates the problem's pool in place
        step = provider.make(cfg, problem.pool, problem.indices, problem.inputs)  # given: ranks once, here
        ranks.clear()
        with mock.patch.object(module, "_slot_order_kernel", Counted()):
            step()
        launches[provider.name] = len(ranks)
    assert launches == {"default:sort": 1, "default:sort+order": 0}
