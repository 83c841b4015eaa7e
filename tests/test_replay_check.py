"""benchmarks.providers.check_after, the check benchmarks.run and the tuning timer give every call of
a captured graph on a replay: a run that steps each problem once passes; one that skips, repeats
or half-does a step fails. Here the run is plain calls of the public op on the CPU, or a stand-in
graph that replays them."""

from __future__ import annotations

import pytest
import torch

from benchmarks.providers import Config, check_after, load_providers, make_problem


def _problem_and_step(layout: str, state_dtype: torch.dtype, B: int, slot_pad: int = 0):
    torch.manual_seed(B)
    cfg = Config(tp=1, HK=2, HV=4, K=16, V=32, B=B, state_dtype=state_dtype, layout=layout, slot_pad=slot_pad)
    problem = make_problem(cfg, "cpu")
    providers, _ = load_providers(["gdn_ops"])
    step = providers["gdn_ops"].make(cfg, problem.pool, problem.indices, problem.inputs)
    return cfg, problem, step


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize(("B", "slot_pad"), [(1, 0), (5, 0), (40, 0), (40, 24)])
def test_one_step_passes(layout, state_dtype, B, slot_pad):
    cfg, problem, step = _problem_and_step(layout, state_dtype, B, slot_pad)
    result = check_after(cfg, [problem], step, [lambda: problem.inputs["out"]])
    assert result.ok, result.message


def test_an_earlier_call_gone_wrong_fails():
    """Two calls, the first one's pool left as it was (a race under PDL may hit any call)."""
    cfg, first, step_first = _problem_and_step("kv", torch.float32, 5)
    _, second, step_second = _problem_and_step("kv", torch.float32, 7)
    outputs = [lambda: first.inputs["out"], lambda: second.inputs["out"]]
    assert check_after(cfg, [first, second], lambda: (step_first(), step_second()), outputs).ok
    kept = first.pool.clone()

    def second_only():
        step_first()
        first.pool.copy_(kept)
        step_second()

    result = check_after(cfg, [first, second], second_only, outputs)
    assert not result.ok and result.message.startswith("call 0:")


def test_a_run_that_does_nothing_fails():
    cfg, problem, _ = _problem_and_step("vk", torch.float32, 5)
    result = check_after(cfg, [problem], lambda: None, [lambda: problem.inputs["out"]])
    assert not result.ok  # the output is left NaN and the pool unchanged


def test_two_steps_fail():
    cfg, problem, step = _problem_and_step("kv", torch.float32, 5)
    result = check_after(cfg, [problem], lambda: (step(), step()), [lambda: problem.inputs["out"]])
    assert not result.ok and result.err_state > 1e-4


def test_a_checked_slot_left_as_it_was_fails():
    """The output is right and every slot but one picked row's is stepped."""
    cfg, problem, step = _problem_and_step("vk", torch.float32, 40)
    last_slot = int(problem.indices[-1])
    kept = problem.pool[last_slot].clone()

    def step_but_one_slot():
        step()
        problem.pool[last_slot] = kept

    result = check_after(cfg, [problem], step_but_one_slot, [lambda: problem.inputs["out"]])
    assert not result.ok and result.err_o < 1e-2 and result.err_state > 1e-4


def test_an_unwritten_output_row_fails():
    cfg, problem, step = _problem_and_step("kv", torch.bfloat16, 40)

    def step_but_row_0():
        step()
        problem.inputs["out"][0] = float("nan")

    result = check_after(cfg, [problem], step_but_row_0, [lambda: problem.inputs["out"]])
    assert not result.ok


class ReplayedCalls:
    """A stand-in for a captured graph on the CPU: a replay runs the calls again."""

    def __init__(self, calls):
        self.calls = calls

    def replay(self):
        for call in self.calls:
            call()


def capture(calls, warmup=2):
    for call in calls:
        call()
    return ReplayedCalls(calls)


def _good_and_stale():
    """gdn_ops, and a provider whose calls are right the first time each (the eager check, the
    capture) and leave the pool alone after (as a race under PDL in a graph might)."""
    from benchmarks.providers import Provider

    good = load_providers(["gdn_ops"])[0]["gdn_ops"]

    def make_stale(cfg, pool, indices, inputs):
        step, calls = good.make(cfg, pool, indices, inputs), []

        def first_call_only():
            calls.append(1)
            return step() if len(calls) == 1 else inputs["out"]

        return first_call_only

    return good, Provider("stale", make_stale)


CFG = Config(tp=1, HK=2, HV=4, K=16, V=32, B=6, state_dtype=torch.float32, layout="kv")


def test_the_sweep_times_a_graph_only_if_its_replay_passes(monkeypatch):
    """benchmarks.run's wiring: the stale provider is reported as failing and not timed; gdn_ops is
    timed, with the replay's errors in its record."""
    import argparse

    from benchmarks import run, timing

    def timed(graphs, **_):
        return {name: timing.Timing(1.0, 1.0, 1.0, n, 1, [1.0]) for name, (_, n) in graphs.items()}

    monkeypatch.setattr(run, "DEVICE", "cpu")
    monkeypatch.setattr(run, "_free", lambda: None)
    monkeypatch.setattr(timing, "capture_graph", capture)
    monkeypatch.setattr(timing, "time_graphs_interleaved", timed)
    good, stale = _good_and_stale()
    args = argparse.Namespace(seed=0, mem_budget_gb=1e-3, min_pools=3, replays=1)
    records = run.run_point(CFG, {"gdn_ops": good, "stale": stale}, args, 1e12, 1 << 10)
    by_name = {r["provider"]: r for r in records}
    assert by_name["gdn_ops"]["status"] == "ok" and by_name["gdn_ops"]["replay_err_state"] < 1e-4
    assert by_name["stale"]["status"] == "failed" and "replayed graph" in by_name["stale"]["note"]


@pytest.mark.parametrize("checked", [("gdn_ops", "stale"), ("gdn_ops",)])
def test_the_tuning_timer_times_a_checked_graph_only_if_its_replay_passes(monkeypatch, checked):
    """tune_decode.time_interleaved (tune_tma's, neighbour_gemm's and probe_stream's timer): the
    stale provider, when checked, has a reason in place of a time; unchecked (a ceiling, say), it is
    timed."""
    from types import SimpleNamespace

    from benchmarks import tune_decode

    monkeypatch.setattr(tune_decode, "l2_cache_bytes", lambda: 1 << 10)
    monkeypatch.setattr(tune_decode, "make_problem", lambda cfg, device: make_problem(cfg, "cpu"))
    monkeypatch.setattr(tune_decode, "capture_graph", capture)
    monkeypatch.setattr(tune_decode, "time_graphs_interleaved", lambda graphs, replays, seed: {
        name: SimpleNamespace(p50_us=1.0) for name in graphs})
    times, failed = tune_decode.time_interleaved(CFG, list(_good_and_stale()), budget=10**9, min_pools=3,
                                                 checked=checked)
    assert "gdn_ops" in times
    if "stale" in checked:
        assert "stale" not in times and "replayed graph" in failed["stale"]
    else:
        assert "stale" in times and not failed


def test_one_stale_head_fails_the_check_at_a_large_batch():
    """One (slot, head) of a bf16 pool left as it was, among 2048: over the whole pool its error
    was under the 1e-2 tolerance; the check takes the worst (slot, head)."""
    from benchmarks.providers import Provider, check, reference

    cfg, problem, _ = _problem_and_step("vk", torch.bfloat16, 512)
    good = load_providers(["gdn_ops"])[0]["gdn_ops"]

    def make_one_head_stale(cfg, pool, indices, inputs):
        step = good.make(cfg, pool, indices, inputs)
        slot = int(indices[7])

        def stepped():
            kept = pool[slot, 2].clone()
            out = step()
            pool[slot, 2] = kept
            return out

        return stepped

    result = check(cfg, Provider("stale_head", make_one_head_stale), problem, reference(cfg, problem))
    assert not result.ok and result.err_state > 1e-2 and result.err_o < 1e-2


def test_sglang_is_not_offered_a_page_strided_pool():
    from benchmarks.providers import Provider

    sglang_like = Provider("sglang", lambda *a: None, layouts=("vk",), dense_pools_only=True)
    padded = Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="vk", slot_pad=8)
    assert "dense pools only" in sglang_like.supports(padded)
    assert sglang_like.supports(Config(tp=1, HK=2, HV=4, K=16, V=32, B=3, state_dtype=torch.float32, layout="vk")) is None


@pytest.mark.parametrize(("allowance", "checked"), [(1 << 40, [0, 1, 2, 3, 4]), (1, [0, 1, 4])])
def test_the_replay_check_holds_copies_of_all_pools_or_checks_three_calls(monkeypatch, allowance, checked):
    """Every call while the pools' copies fit the allowance; else the first two and the last."""
    from benchmarks import providers

    monkeypatch.setattr(providers, "CHECK_SNAPSHOT_BYTES", allowance)
    seen = []
    monkeypatch.setattr(providers, "check_after", lambda cfg, problems, run, outputs, numbers: seen.append(numbers))
    good = load_providers(["gdn_ops"])[0]["gdn_ops"]
    problems = [make_problem(CFG, "cpu") for _ in range(5)]
    providers.capture_checked(CFG, good, problems, capture)
    assert seen == [checked]


def test_a_yardstick_is_never_checked():
    """The copy is no decode step: its graph is captured and timed, never checked."""
    from benchmarks import providers

    copy = load_providers(["copy"])[0]["copy"]
    _graph, calls, result = providers.capture_checked(CFG, copy, [make_problem(CFG, "cpu") for _ in range(2)], capture)
    assert result is None and len(calls) == 2


def test_an_output_missing_for_a_problem_is_refused_before_the_run():
    cfg, problem, _ = _problem_and_step("vk", torch.float32, 3)
    ran = []
    with pytest.raises(ValueError, match="one output and number a problem"):
        check_after(cfg, [problem, problem], lambda: ran.append(1), [lambda: problem.inputs["out"]])
    assert not ran
