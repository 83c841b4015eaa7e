"""The interleaved replay timer's rounds, on CPU (graphs and CUDA events replaced by recorders),
and how many calls one graph holds."""

from __future__ import annotations

import itertools

import pytest

from benchmarks import timing


class _Clock:
    """Stands in for CUDA events: each ``record`` reads a shared tick counter."""

    ticks = itertools.count()

    def __init__(self, enable_timing: bool = True):
        self.at = None

    def record(self):
        self.at = next(self.ticks)

    def elapsed_time(self, end: _Clock) -> float:
        return float(end.at - self.at)


class _Graph:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def replay(self):
        self.log.append(self.name)


@pytest.fixture(autouse=True)
def _fake_events(monkeypatch):
    monkeypatch.setattr(timing.torch.cuda, "Event", _Clock)
    monkeypatch.setattr(timing.torch.cuda, "synchronize", lambda: None)


def _rounds(seed: int, names=("a", "b", "c", "d"), replays: int = 6, settle: int = 2) -> list[list[str]]:
    """The timed rounds' replay orders of ``time_graphs_interleaved`` under ``seed``."""
    log: list[str] = []
    result = timing.time_graphs_interleaved({n: (_Graph(n, log), 4) for n in names}, replays=replays,
                                            settle_rounds=settle, seed=seed)
    assert set(result) == set(names) and all(t.replays == replays for t in result.values())
    timed = log[settle * len(names):]
    return [timed[i:i + len(names)] for i in range(0, len(timed), len(names))]


def test_every_round_replays_each_graph_once():
    rounds = _rounds(seed=0)
    assert len(rounds) == 6
    assert all(sorted(r) == ["a", "b", "c", "d"] for r in rounds)


def test_the_seed_sets_the_rounds_orders():
    """One seed repeats its orders (a rerun replays alike); another seed gives the graphs other
    neighbours, which is what a repeat under another seed is for."""
    assert _rounds(seed=0) == _rounds(seed=0)
    assert _rounds(seed=0) != _rounds(seed=1)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_call_is_a_replay_over_its_calls(seed):
    """Each sample is one replay's time divided by the calls in its graph (4 here)."""
    log: list[str] = []
    result = timing.time_graphs_interleaved({"a": (_Graph("a", log), 4)}, replays=3, settle_rounds=0, seed=seed)
    # a replay between two records is one tick of the fake clock: 1 ms, 1000 us, over 4 calls
    assert result["a"].samples_us == [250.0, 250.0, 250.0]


@pytest.mark.parametrize(("bytes_per_call", "budget", "min_pools", "expected"), [
    (10, 10_000, 2, 40),  # the cold-L2 multiple: 4 x 100 bytes of L2 in 10-byte calls
    (10, 200, 2, 20),  # what the budget affords
    (1_000, 10_000, 2, 2),  # each pool beyond the L2: the minimum rules
    (1_000, 10_000, 8, 8),  # more calls a graph, to dilute what the neighbouring graphs add
    (1_000, 1_000, 8, 8),  # the minimum even over the budget
])
def test_pools_for_cold_l2(bytes_per_call, budget, min_pools, expected):
    assert timing.pools_for_cold_l2(bytes_per_call, 100, budget, factor=4, min_pools=min_pools) == expected


@pytest.mark.parametrize(("pools", "expected"), [(40, None), (39, 3.9), (1024, None)])
def test_a_graph_short_of_the_cold_l2_multiple_is_told(pools, expected):
    """40 calls of 10 bytes fill 4 x 100 bytes of L2; one fewer is short of it."""
    assert timing.cold_l2_shortfall(pools, 10, 100, factor=4) == expected


def test_one_pool_a_graph_is_refused():
    with pytest.raises(ValueError, match="min_pools must be at least 2"):
        timing.pools_for_cold_l2(1_000, 100, 10_000, min_pools=1)


def test_the_sweep_takes_its_fewest_calls_a_graph():
    from benchmarks.run import parse_args

    assert parse_args([]).min_pools == timing.MIN_POOLS == 8
    assert parse_args(["--min-pools", "8"]).min_pools == 8
    with pytest.raises(SystemExit):
        parse_args(["--min-pools", "1"])


@pytest.mark.parametrize("min_pools", [2, 8])
def test_the_tuning_timer_holds_at_least_min_pools_calls(monkeypatch, min_pools):
    """``tune_decode.time_interleaved`` (which tune_tma and neighbour_gemm call) captures one call a
    pool into each provider's graph, at least ``min_pools`` of them where each pool alone passes the
    L2 (problems, capture and replays replaced by recorders)."""
    from types import SimpleNamespace

    from benchmarks import tune_decode

    monkeypatch.setattr(tune_decode, "l2_cache_bytes", lambda: 100)
    monkeypatch.setattr(tune_decode, "make_problem",
                        lambda cfg, device: SimpleNamespace(pool=None, indices=None, inputs={}))
    monkeypatch.setattr(tune_decode, "capture_graph", lambda calls: calls)
    monkeypatch.setattr(tune_decode, "time_graphs_interleaved", lambda graphs, replays, seed: {
        name: SimpleNamespace(p50_us=float(calls)) for name, (graph, calls) in graphs.items()})
    cfg = SimpleNamespace(bytes_per_call=lambda: 2_000, state_bytes=1_000)  # 1000 distinct bytes a call
    provider = SimpleNamespace(name="p", make=lambda cfg, pool, indices, inputs: (lambda: None))
    assert tune_decode.time_interleaved(cfg, [provider], budget=10**9, min_pools=min_pools) == ({"p": float(min_pools)}, {})


def test_the_tuning_scripts_share_the_timers_options():
    """``--seed``, ``--replays`` and ``--min-pools`` of tune_tma and neighbour_gemm, one definition;
    a count of pools is an integer of at least 2, refused at parse time otherwise."""
    import argparse

    from benchmarks.tune_decode import add_timing_arguments

    ap = argparse.ArgumentParser()
    add_timing_arguments(ap)
    args = ap.parse_args([])
    assert (args.seed, args.replays, args.min_pools) == (0, 15, timing.MIN_POOLS)
    assert ap.parse_args(["--min-pools", "8", "--seed", "3"]).min_pools == 8
    assert timing.min_pools_arg("2") == 2
    for text in ("1", "0", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            timing.min_pools_arg(text)


def test_every_tuning_script_times_as_asked(monkeypatch):
    """``tune_decode.time_as_asked`` hands ``time_interleaved`` the script's memory budget in bytes
    and its timer options, and ``timing_options`` puts the same three in a results file's header;
    tune_decode takes those options from the one definition too."""
    import argparse

    from benchmarks import tune_decode

    asked = {}
    monkeypatch.setattr(tune_decode, "time_interleaved",
                        lambda cfg, providers, budget, **options: asked.update(budget=budget, **options) or ({"p": 1.0}, {}))
    args = argparse.Namespace(mem_budget_gb=1.5, seed=3, replays=7, min_pools=4)
    assert tune_decode.time_as_asked(None, [], args, checked=["p"]) == ({"p": 1.0}, {})
    assert asked == {"budget": 3 * 2**29, "seed": 3, "replays": 7, "min_pools": 4, "checked": ["p"]}
    assert tune_decode.timing_options(args) == {"seed": 3, "replays": 7, "min_pools": 4}
    parsed = tune_decode.parser().parse_args(["--seed", "2", "--min-pools", "8"])
    assert tune_decode.timing_options(parsed) == {"seed": 2, "replays": 15, "min_pools": 8}
    with pytest.raises(SystemExit):
        tune_decode.parser().parse_args(["--min-pools", "1"])


def test_the_tuning_round_checks_the_decodes_and_times_the_ceilings_and_peers_unchecked(monkeypatch):
    """``tune_decode.check_then_time``: only decode steps meet the reference check and the replay
    check; a ceiling (by variant name or named unchecked) and a peer are timed without either."""
    import argparse
    from types import SimpleNamespace

    from benchmarks import tune_decode

    names = ["BV16w1+pdl", "variant:step_out+pdl", "variant:pdl_no_prefetch+pdl", "c8:128:1:16:1:4:skipsums",
             "bad+pdl"]
    providers = [SimpleNamespace(name=n) for n in names]
    peer = SimpleNamespace(name="copy")
    checked_eagerly, timed = [], {}
    monkeypatch.setattr(tune_decode, "passing", lambda cfg, provs, problem, ref: (
        checked_eagerly.extend(p.name for p in provs) or [p for p in provs if p.name != "bad+pdl"],
        {"bad+pdl": "rel err"}))
    monkeypatch.setattr(tune_decode, "time_as_asked", lambda cfg, provs, args, checked: timed.update(
        timed=[p.name for p in provs], checked=list(checked)) or ({p.name: 1.0 for p in provs}, {}))
    runnable, ceilings, times, failed = tune_decode.check_then_time(
        None, providers, None, None, argparse.Namespace(), unchecked={"c8:128:1:16:1:4:skipsums"}, peers=[peer])
    assert checked_eagerly == ["BV16w1+pdl", "variant:pdl_no_prefetch+pdl", "bad+pdl"]
    assert [p.name for p in runnable] == ["BV16w1+pdl", "variant:pdl_no_prefetch+pdl"]
    assert [p.name for p in ceilings] == ["variant:step_out+pdl", "c8:128:1:16:1:4:skipsums"]
    assert timed["checked"] == ["BV16w1+pdl", "variant:pdl_no_prefetch+pdl"]
    assert set(timed["timed"]) == set(times) == {*timed["checked"], *(p.name for p in ceilings), "copy"}
    assert failed == {"bad+pdl": "rel err"}
