"""The split-K kv prototype (benchmarks/kv_split.py) computes the decode step: every pool row and
output against the float64 reference, through the Triton interpreter on the CPU (its last-arriver
design has no program waiting on another, so the interpreter's one-at-a-time programs run it)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.kv_split import KvSplitConfig, launch_decode_kv_split
from benchmarks.providers import (
    Config,
    check,
    launcher_provider,
    make_problem,
    reference,
)
from benchmarks.tune_tma import parse_spec

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("parts", "depth", "sort_rows", "step_order"),
                         [(4, 1, False, False), (8, 4, True, False), (2, 2, True, True)])
def test_the_split_step_matches_the_reference(state_dtype, parts, depth, sort_rows, step_order):
    cfg = Config(tp=0, HK=2, HV=4, K=32, V=16, B=6, state_dtype=state_dtype, layout="kv")
    problem = make_problem(cfg, DEVICE)
    ref = reference(cfg, problem)
    provider = launcher_provider("split", launch_decode_kv_split, KvSplitConfig(parts, 2, sort_rows, depth),
                                 step_order=step_order)
    result = check(cfg, provider, problem, ref)
    assert result.ok, result.message
    # the counters are back at zero: a second call (a CUDA graph's next replay) starts clean
    assert check(cfg, provider, problem, ref).ok


def test_the_split_prototype_takes_kv_pools_only():
    cfg = Config(tp=0, HK=2, HV=4, K=32, V=16, B=3, state_dtype=torch.float32, layout="vk")
    problem = make_problem(cfg, DEVICE)
    result = check(cfg, launcher_provider("split", launch_decode_kv_split, KvSplitConfig(4, 2)), problem,
                   reference(cfg, problem))
    assert not result.ok and "a kv pool" in result.message


@pytest.mark.parametrize(("V", "config"), [(16, KvSplitConfig(3, 2)), (16, KvSplitConfig(4, 2, depth=3)),
                                           (16, KvSplitConfig(64, 2)), (24, KvSplitConfig(4, 2))])
def test_the_split_prototype_refuses_shapes_it_cannot_tile(V, config):
    cfg = Config(tp=0, HK=2, HV=4, K=32, V=V, B=3, state_dtype=torch.float32, layout="kv")
    problem = make_problem(cfg, DEVICE)
    result = check(cfg, launcher_provider("split", launch_decode_kv_split, config), problem, reference(cfg, problem))
    assert not result.ok and "powers of two, parts dividing K" in result.message


def test_split_specs_parse():
    assert parse_spec("s8:4") == KvSplitConfig(8, 4)
    assert parse_spec("s16:2:sort") == KvSplitConfig(16, 2, sort_rows=True)
    assert parse_spec("s8:2:d4:sort") == KvSplitConfig(8, 2, sort_rows=True, depth=4)
    assert parse_spec("s8:1:d2:r64:sort") == KvSplitConfig(8, 1, sort_rows=True, depth=2, maxnreg=64)
    assert parse_spec("s8:1:r64") == KvSplitConfig(8, 1, maxnreg=64)
    assert parse_spec("s16:1:wait:sort") == KvSplitConfig(16, 1, sort_rows=True, wait=True)
    assert parse_spec("s16:1:sort:wait") == KvSplitConfig(16, 1, sort_rows=True, wait=True)
    assert parse_spec("s8:2:wait:pollload:sort") == KvSplitConfig(8, 2, sort_rows=True, wait=True, poll_load=True)
    assert parse_spec("s8:2:wait:skipwait") == KvSplitConfig(8, 2, wait=True, skip="wait")
    assert parse_spec("s8:2:wait:skipexchange:sort") == KvSplitConfig(8, 2, sort_rows=True, wait=True, skip="exchange")
    assert parse_spec("s16:1:r96:h8:wait:sort") == KvSplitConfig(16, 1, sort_rows=True, maxnreg=96, wait=True, heads=8)
    assert parse_spec("s16:2:h4:wait") == KvSplitConfig(16, 2, wait=True, heads=4)
    assert parse_spec("s16:1:h4:wait:once:sort") == KvSplitConfig(16, 1, sort_rows=True, wait=True, heads=4,
                                                                  sum_once=True)
    assert parse_spec("s16:1:r80:wait:skipread:ring512:sort") == KvSplitConfig(16, 1, sort_rows=True, maxnreg=80,
                                                                              wait=True, skip="read", ring=512)
    assert parse_spec("s8:2:wait:skipstore:ring64") == KvSplitConfig(8, 2, wait=True, skip="store", ring=64)
    assert parse_spec("s16:1:wait:ring256:sort") == KvSplitConfig(16, 1, sort_rows=True, wait=True, ring=256)
    for bad in ("s8", "s8:x", "s8:4:4", "s8:2:dx", "s8:2:d4:4", "s8:2:r64:d2", "s8:2:wait:wait", "s8:2:pollload",
                "s8:2:skipwait:sort", "s8:2:wait:skipwait:skipfence", "s8:2:h4", "s8:2:h4:r64:wait", "s8:2:hx:wait", "s8:2:once", "s8:2:wait:once:pollload",
                "s8:2:wait:once:skipwait", "s8:2:ring64", "s8:2:wait:skipread:ringx",
                "s8:2:skipstore"):
        with pytest.raises(ValueError, match="expected BV:warps"):
            parse_spec(bad)


@pytest.mark.gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("parts", "warps", "sort_rows", "step_order", "poll_load", "heads", "sum_once", "ring"),
                         [(4, 1, False, False, False, 1, False, 0), (8, 2, True, False, True, 1, False, 0),
                          (16, 1, True, True, False, 1, False, 0), (4, 2, True, False, False, 3, False, 0),
                          (8, 1, False, False, True, 4, False, 0), (16, 2, True, True, False, 8, False, 0),
                          (8, 1, True, False, False, 1, True, 0), (16, 2, False, True, False, 3, True, 0),
                          (16, 2, True, False, False, 8, True, 0), (4, 1, True, False, False, 1, False, 3),
                          (16, 1, False, True, True, 1, False, 7), (8, 1, True, True, False, 1, False, 32)])
def test_the_waiting_split_matches_the_reference_on_every_replay(state_dtype, parts, warps, sort_rows, step_order,
                                                                 poll_load, heads, sum_once, ring):
    """``wait``: each program writes its own rows once its head's partials are in; its counter grows
    by ``parts`` a call, so three calls in a row must each be right. With ``heads`` a program takes
    that many heads in turn (20 heads here: with 3 or 8 a program the last group runs past the batch);
    with ``sum_once`` the head's last program adds the partials for the others; with ``ring`` the 20
    heads share that many heads' scratch rows in turn (3 and 7 do not divide 20; 32 exceeds it)."""
    cfg = Config(tp=0, HK=2, HV=4, K=64, V=32, B=5, state_dtype=state_dtype, layout="kv")
    problem = make_problem(cfg, DEVICE)
    ref = reference(cfg, problem)
    provider = launcher_provider("split_wait", launch_decode_kv_split,
                                 KvSplitConfig(parts, warps, sort_rows, wait=True, poll_load=poll_load, heads=heads,
                                               sum_once=sum_once, ring=ring),
                                 step_order=step_order)
    for _ in range(3):
        result = check(cfg, provider, problem, ref)
        assert result.ok, result.message


@pytest.mark.gpu
def test_a_ceiling_on_the_same_ring_leaves_the_real_exchange_right():
    """A ceiling counts in on its ring's counters and never out; the real ring that follows on the
    same shape must not inherit those counts (it would wait for readers that never come)."""
    cfg = Config(tp=0, HK=2, HV=4, K=64, V=32, B=5, state_dtype=torch.float32, layout="kv")
    problem = make_problem(cfg, DEVICE)
    ref = reference(cfg, problem)
    for skip in ("fence", "wait"):
        check(cfg, launcher_provider("split_ceiling", launch_decode_kv_split,
                                     KvSplitConfig(4, 1, wait=True, skip=skip, ring=3)), problem, ref)
    real = launcher_provider("split_ring", launch_decode_kv_split, KvSplitConfig(4, 1, wait=True, ring=3))
    for _ in range(2):
        result = check(cfg, real, problem, ref)
        assert result.ok, result.message


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's refusal")
def test_the_waiting_split_refuses_the_interpreter():
    cfg = Config(tp=0, HK=2, HV=4, K=32, V=16, B=3, state_dtype=torch.float32, layout="kv")
    problem = make_problem(cfg, DEVICE)
    result = check(cfg, launcher_provider("split_wait", launch_decode_kv_split, KvSplitConfig(4, 1, wait=True)),
                   problem, reference(cfg, problem))
    assert not result.ok and "needs a GPU" in result.message


@pytest.mark.parametrize(("config", "message"),
                         [(KvSplitConfig(4, 1, heads=2), "config.heads=2 pipelines the wait mode"),
                          (KvSplitConfig(4, 1, sort_rows=True, sum_once=True), "config.sum_once changes how"),
                          (KvSplitConfig(4, 1, ring=2), "config.ring=2 shares scratch rows"),
                          (KvSplitConfig(4, 2, wait=True, ring=2), "config.ring=2 shares scratch rows"),
                          (KvSplitConfig(4, 1, wait=True, ring=2, sum_once=True), "config.ring=2 shares scratch rows")])
def test_the_split_refuses_options_it_cannot_honour(config, message):
    cfg = Config(tp=0, HK=2, HV=4, K=32, V=16, B=3, state_dtype=torch.float32, layout="kv")
    problem = make_problem(cfg, DEVICE)
    result = check(cfg, launcher_provider("split", launch_decode_kv_split, config), problem, reference(cfg, problem))
    assert not result.ok and message in result.message
