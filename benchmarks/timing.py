"""GPU timers: a copy-bandwidth probe, and a cold-L2 CUDA-graph replay timer.

The replay timer captures N independent calls, each updating its own state pool in place, into
one CUDA graph. With the pools together at least ``COLD_L2_FACTOR`` times the L2 size, every call
finds its pool evicted by the calls before it, as a layer's decode step does in a real model
(the other layers' states pass through L2 in between). Replaying a graph removes the host's
launch overhead, which otherwise hides small-batch kernels. ``triton.testing.do_bench`` is not
used: its L2 flush writes 256 MB of dirty lines whose write-back lands inside the timed kernel.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

COLD_L2_FACTOR = 4
# The fewest calls one graph holds, whatever the cold-L2 multiple asks. A replay's two ends (the
# first call starts on the previous graph's leftovers with nothing to overlap, the last has nothing
# after it) cost a few us a graph whatever it holds; in an engine's step graph a decode sits among a
# layer's other kernels and pays none of that. With 2 calls a graph each carried half of it: 8 read
# every implementation +0.1..+2.1 points of copy bandwidth higher where the minimum ruled (the
# largest where a call is shortest), within the spread elsewhere (H200,
# results/h200/sweep8_tp{1,4}_b517e34.json against sweep_c003eab.json.gz; NOTES.md, thirty-eighth session).
MIN_POOLS = 8


def l2_cache_bytes(device: torch.device | int | None = None) -> int:
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def _event_ms(fn: Callable[[], None], iters: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def copy_bandwidth(nbytes: int = 2 << 30, iters: int = 10, device: str = "cuda") -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written (median)."""
    n = nbytes // 4
    src = torch.randn(n, device=device, dtype=torch.float32)  # random data: never time zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    ms = sorted(_event_ms(functools.partial(dst.copy_, src), iters))
    if not torch.equal(dst[:: max(1, n // 4096)], src[:: max(1, n // 4096)]):
        raise RuntimeError("copy-bandwidth probe: the copy is wrong")
    del src, dst
    torch.cuda.empty_cache()
    median_ms = ms[len(ms) // 2]
    return 2 * n * 4 / (median_ms * 1e-3)


_ONE_POOL = "one pool is read warm from the replay before"


def min_pools_arg(text: str) -> int:
    """``--min-pools``' value (argparse type): an integer of at least 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2: {_ONE_POOL} (got {value})")
    return value


def pools_for_cold_l2(
    bytes_per_call: int,
    l2_bytes: int,
    mem_budget_bytes: int,
    *,
    factor: int = COLD_L2_FACTOR,
    min_pools: int = MIN_POOLS,
    max_pools: int = 1024,
) -> int:
    """How many independent calls (each with its own pool) one graph rotates through.

    Enough that the pools total ``factor`` x L2, no more than the memory budget allows, and never
    fewer than ``min_pools`` (a single pool would be re-read warm from the replay before). At large
    batch each pool alone exceeds L2 many times over, and the minimum rules.
    """
    if min_pools < 2:
        raise ValueError(f"min_pools must be at least 2: {_ONE_POOL} (got {min_pools})")
    wanted = math.ceil(factor * l2_bytes / max(1, bytes_per_call))
    affordable = mem_budget_bytes // max(1, bytes_per_call)
    return max(min_pools, min(wanted, affordable, max_pools))


def cold_l2_shortfall(pools: int, bytes_per_call: int, l2_bytes: int, factor: int = COLD_L2_FACTOR) -> float | None:
    """The multiple of the L2 that ``pools`` calls of ``bytes_per_call`` total where it falls short of
    ``factor`` (the memory budget or the cap on calls a graph bounded them), else None: a call of
    such a graph may meet lines the replay before left in L2."""
    multiple = pools * bytes_per_call / max(1, l2_bytes)
    return multiple if multiple < factor else None


@dataclass
class Timing:
    """Per-call times in microseconds (one replay's time / calls per replay), over replays."""

    p20_us: float
    p50_us: float
    p80_us: float
    calls_per_replay: int
    replays: int
    samples_us: list[float] = field(default_factory=list)  # per-call time of each replay, in replay order


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def capture_graph(calls: Sequence[Callable[[], object]], warmup: int = 2) -> torch.cuda.CUDAGraph:
    """Run ``calls`` ``warmup`` times on a side stream, then capture them all into one CUDA graph.

    The side-stream passes are where Triton and Inductor compile and the caching allocator settles;
    nothing may compile or synchronise under capture.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()  # the first replay uploads the graph
    torch.cuda.synchronize()
    return graph


def time_graphs_interleaved(
    graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]], replays: int = 30, settle_rounds: int = 3, seed: int = 0
) -> dict[str, Timing]:
    """Time several captured graphs (``name -> (graph, calls in it)``) in interleaved rounds.

    Each round replays every graph once, in an order of its own (seeded, so a run repeats): a
    drift of the card's state over the measurement (clocks, power, temperature) lands on every
    implementation alike instead of on whichever is timed first, and so does what a graph inherits
    from the one before it (the L2 lines that graph left dirty). With the rounds only rotated, each
    graph always followed the same one, and at B <= 16 the same launch read up to 9% slower after
    the copy than after a decode (NOTES.md, fourteenth session). ``settle_rounds`` untimed rounds go
    first. Each replay is timed alone with CUDA events. ``seed`` picks the rounds' orders: runs of
    one seed give each graph the same neighbours, so repeating a run with another seed is what
    varies them.
    """
    names = list(graphs)
    for _ in range(settle_rounds):
        for name in names:
            graphs[name][0].replay()
    torch.cuda.synchronize()
    events = {n: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(replays)] for n in names}
    rounds = random.Random(seed)
    for r in range(replays):
        for name in rounds.sample(names, len(names)):
            start, end = events[name][r]
            start.record()
            graphs[name][0].replay()
            end.record()
    torch.cuda.synchronize()
    out = {}
    for name in names:
        n_calls = graphs[name][1]
        samples = [s.elapsed_time(e) * 1e3 / n_calls for s, e in events[name]]
        ordered = sorted(samples)
        out[name] = Timing(
            p20_us=_quantile(ordered, 0.2),
            p50_us=_quantile(ordered, 0.5),
            p80_us=_quantile(ordered, 0.8),
            calls_per_replay=n_calls,
            replays=replays,
            samples_us=samples,
        )
    return out


def time_graph_replay(calls: Sequence[Callable[[], object]], replays: int = 30, warmup: int = 2) -> Timing:
    """Capture all ``calls`` into one CUDA graph and time its replays (per call: replay time / len(calls))."""
    graph = capture_graph(calls, warmup)
    try:
        return time_graphs_interleaved({"graph": (graph, len(calls))}, replays)["graph"]
    finally:
        del graph
