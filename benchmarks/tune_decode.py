"""Sweep the decode kernel's tile (BV value rows per program, warps) on the GPU at hand.

For each batch size, state dtype and layout of the Qwen3-Next TP=1 shape it times every candidate
tile under cold-L2 CUDA-graph replay (``benchmarks.timing``) after checking its output against the
float64 reference (eagerly, then every call of its graph on a replay), and prints the best tile per point next to what ``decode_config`` picks now.
The table in ``gdn_ops/triton_decode.py`` is written from this script's JSON.

    python -m benchmarks.tune_decode [--batches 1 8 64 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Collection
from pathlib import Path

import torch
import triton

from benchmarks.providers import (
    PROVIDER_NAMES,
    Config,
    Provider,
    capture_checked,
    launcher_provider,
    load_providers,
    make_problem,
    passing,
    reference,
)
from benchmarks.timing import (
    MIN_POOLS,
    capture_graph,
    copy_bandwidth,
    l2_cache_bytes,
    min_pools_arg,
    pools_for_cold_l2,
    time_graphs_interleaved,
)
from benchmarks.tuning_results import write_results
from benchmarks.variants import is_ceiling, load_variant
from gdn_ops.triton_decode import DecodeConfig, decode_config, gpu_name

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BVS = (4, 8, 16, 32, 64, 128)
WARPS = (1, 2, 4)


def add_grid_arguments(ap: argparse.ArgumentParser, *, batches: list[int], dtypes: list[str],
                       layouts: list[str]) -> None:
    """The options of a tuning grid (read by :func:`tuning_grid`), with these defaults."""
    ap.add_argument("--batches", type=int, nargs="*", default=batches)
    ap.add_argument("--dtypes", nargs="*", default=dtypes, help="the pool's dtypes")
    ap.add_argument("--act-dtype", default="bfloat16", help="q, k, v, a, b and the output's dtype")
    ap.add_argument("--layouts", nargs="*", default=layouts)
    ap.add_argument("--heads", default="16,32", help="HK,HV")
    ap.add_argument("--slot-pad", type=int, default=0,
                    help="elements between one slot's state and the next beyond a dense pool (a page-strided pool)")


def add_timing_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of :func:`time_interleaved` that a tuning script passes through: the rounds'
    seed, their number and the fewest calls a graph."""
    ap.add_argument("--seed", type=int, default=0,
                    help="the interleaved rounds' orders; a repeat run with another seed gives each configuration other neighbours")
    ap.add_argument("--replays", type=int, default=15, help="interleaved rounds of graph replays")
    ap.add_argument("--min-pools", type=min_pools_arg, default=MIN_POOLS, help="fewest calls in one graph (benchmarks.run's option)")


def timing_options(args: argparse.Namespace) -> dict[str, int]:
    """The options of :func:`add_timing_arguments` as given, for a results file's header."""
    return {"seed": args.seed, "replays": args.replays, "min_pools": args.min_pools}


def tuning_grid(args: argparse.Namespace) -> list[Config]:
    """One point per pool dtype, layout and batch (in that nesting) of the options of
    :func:`add_grid_arguments`, at Qwen3-Next's head size (K = V = 128)."""
    HK, HV = map(int, args.heads.split(","))
    act = getattr(torch, args.act_dtype)
    return [Config(tp=1, HK=HK, HV=HV, K=128, V=128, B=B, state_dtype=getattr(torch, state), layout=layout,
                   act_dtype=act, slot_pad=args.slot_pad)
            for state in args.dtypes for layout in args.layouts for B in args.batches]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, as the options name it."""
    return str(dtype).removeprefix("torch.")


def candidates(K: int, V: int) -> list[DecodeConfig]:
    BK = triton.next_power_of_2(K)
    out = []
    for BV in BVS:
        if BV > triton.next_power_of_2(V):
            continue
        for w in WARPS:
            per_thread = BV * BK // (32 * w)
            if 4 <= per_thread <= 256:
                out.append(DecodeConfig(BV=BV, BK=BK, num_warps=w))
    return out


def parse_tile(spec: str, BK: int) -> DecodeConfig:
    """``"BV:WARPS[:MAXNREG][:new][:sort][:of][:et]"``: ``new`` takes o from the updated state, ``sort``
    runs the rows in slot order, ``of`` loads one token's operands before the slot, ``et`` adds the
    early tile to that order (see :class:`DecodeConfig`)."""
    BV, warps, *rest = spec.split(":")
    cap = next((int(r) for r in rest if r.isdigit()), None)
    unknown = set(rest) - {"new", "sort", "of", "et", str(cap)}
    if unknown:
        raise ValueError(f"tile {spec!r}: unknown options {sorted(unknown)}; "
                         "expected BV:WARPS[:MAXNREG][:new][:sort][:of][:et]")
    return DecodeConfig(BV=int(BV), BK=BK, num_warps=int(warps), maxnreg=cap, from_old_state="new" not in rest,
                        sort_rows="sort" in rest, operands_first="of" in rest, early_tile="et" in rest)


def tile_name(tile: DecodeConfig) -> str:
    """``BV8w1``, with ``r64`` for a register cap, ``new`` for o from the updated state, ``sort``
    for rows in slot order, ``of`` for the operands first and ``et`` for the early tile (the options
    of :func:`parse_tile`)."""
    return (f"BV{tile.BV}w{tile.num_warps}" + (f"r{tile.maxnreg}" if tile.maxnreg else "")
            + ("" if tile.from_old_state else "new") + ("sort" if tile.sort_rows else "")
            + ("of" if tile.operands_first else "") + ("et" if tile.early_tile else ""))


def tile_provider(tile: DecodeConfig | None, launch=None, name: str = "", pdl: bool = False,
                  step_order: bool = False) -> Provider:
    """``tile`` through the launcher; with ``step_order`` a sorting tile is given the slot order
    (computed before capture, as an engine computes it once per step) instead of ranking the rows
    on every call."""
    given = step_order and tile is not None and tile.sort_rows
    return launcher_provider((name or tile_name(tile)) + ("+pdl" if pdl else "") + ("+order" if given else ""),
                             launch, tile, pdl, step_order=given)


def variant_providers(names: list[str], chosen: DecodeConfig, extra: list[DecodeConfig],
                      step_order: bool = False) -> list[Provider]:
    """Each variant of ``names`` (benchmarks/variants.py: patches of the per-tile Triton kernel) at
    the table's tile ``chosen`` and at each ``extra`` tile, under PDL; ``step_order`` as
    :func:`tile_provider`'s, so a variant and its tile are timed alike. The tile is always passed:
    given none, the launcher picks its default kernel, from some grids a Gluon kernel that the patch
    does not touch (the eleventh session's variant figures for bf16 vk from B=128 timed the Gluon vk
    tile kernel that way; NOTES.md, twelfth session)."""
    providers = []
    for name in names:
        launch = load_variant(name).launch_decode
        providers.append(tile_provider(chosen, launch, f"variant:{name}", pdl=True, step_order=step_order))
        providers += [tile_provider(t, launch, f"variant:{name}:{tile_name(t)}", pdl=True, step_order=step_order)
                      for t in extra]
    return providers


def time_interleaved(cfg: Config, providers: list[Provider], budget: int, replays: int = 15,
                     seed: int = 0, min_pools: int = MIN_POOLS, checked: Collection[str] = ()
                     ) -> tuple[dict[str, float], dict[str, str]]:
    """Median per-call time of each provider, all captured first and then replayed interleaved
    (timing one provider after another let the first one timed at a point read ~10% slow), in the
    rounds' orders of ``seed`` (:func:`benchmarks.timing.time_graphs_interleaved`); and, for each
    provider named in ``checked`` whose graph fails the check on a replay
    (:func:`benchmarks.providers.capture_checked`: a decode that races its neighbours under PDL,
    say), why, in place of a time.

    Every provider's graph rotates through the same pools (each updated in place by whichever
    provider runs): the pools alone total the cold-L2 multiple, so sharing them keeps each call
    cold while the memory no longer grows with the number of providers (per-provider pools ran
    an 80 GB card out of memory with every tile at B=1024). At least ``min_pools`` calls a graph
    (``benchmarks.run --min-pools``: a replay's two ends weigh less in more calls)."""
    footprint = cfg.bytes_per_call() - cfg.state_bytes  # distinct bytes: the state is updated in place
    n = pools_for_cold_l2(footprint, l2_cache_bytes(), budget, min_pools=min_pools)
    problems = [make_problem(cfg, "cuda") for _ in range(n)]
    graphs, keep, failed = {}, [], {}
    for prov in providers:
        graph, calls, after = capture_checked(cfg, prov, problems, capture_graph, check=prov.name in checked)
        # a graph replays raw addresses: whatever a call allocated for itself must outlive the replays
        keep.append(calls)
        if after is not None and not after.ok:
            failed[prov.name] = f"replayed graph failed the check: {after.message}"
        else:
            graphs[prov.name] = (graph, len(calls))
    timings = time_graphs_interleaved(graphs, replays=replays, seed=seed)
    del graphs, problems, keep
    return {name: t.p50_us for name, t in timings.items()}, failed


def time_as_asked(cfg: Config, providers: list[Provider], args: argparse.Namespace, checked: Collection[str] = ()
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """:func:`time_interleaved` under a script's options: its pools within ``--mem-budget-gb`` (GiB)
    and the options of :func:`add_timing_arguments`."""
    return time_interleaved(cfg, providers, int(args.mem_budget_gb * 2**30), checked=checked, **timing_options(args))


def check_then_time(cfg: Config, providers: list[Provider], problem, ref, args: argparse.Namespace,
                    unchecked: Collection[str] = (), peers: list[Provider] = ()
                    ) -> tuple[list[Provider], list[Provider], dict[str, float], dict[str, str]]:
    """The tuning scripts' round at one point: each of ``providers`` checked against ``ref`` on
    ``problem`` but its ceilings (``variants.is_ceiling``, or named in ``unchecked``: not decode
    steps), then the passing ones timed (:func:`time_as_asked`, each graph checked again on a
    replay) beside the ceilings and ``peers`` (both unchecked). Returns the passing providers, the
    ceilings, the times and why each failing provider failed."""
    ceilings = [p for p in providers if is_ceiling(p.name) or p.name in unchecked]
    runnable, failed = passing(cfg, [p for p in providers if p not in ceilings], problem, ref)
    times, replay_failed = time_as_asked(cfg, runnable + ceilings + list(peers), args,
                                         checked=[p.name for p in runnable])
    failed.update(replay_failed)
    return runnable, ceilings, times, failed


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    ap = argparse.ArgumentParser()
    add_grid_arguments(ap, batches=list(BATCHES), dtypes=["float32", "bfloat16"], layouts=["vk", "kv"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="tune_decode", help="output file stem")
    ap.add_argument("--mem-budget-gb", type=float, default=40.0, help="pools of one point (shared by all providers)")
    ap.add_argument("--variants", nargs="*", default=[], help="kernel experiments from benchmarks/variants.py")
    ap.add_argument("--tiles", choices=["all", "chosen"], default="all", help="sweep every tile or time the shipped choice")
    ap.add_argument("--extra-tiles", nargs="*", default=[], metavar="BV:WARPS[:MAXNREG][:new][:sort][:of][:et]",
                    help="tiles to time beside the sweep or the chosen one")
    ap.add_argument("--pdl", choices=["off", "on", "both"], default="off", help="programmatic dependent launch")
    ap.add_argument("--step-order", action="store_true",
                    help="give sorting tiles the slot order (initial_state_order) instead of ranking on each call")
    # What runs between a tile's replays changes what the L2 holds when it starts: an evict_first
    # rule won here beside SGLang alone and lost in the sweep beside every peer (NOTES.md, eleventh
    # session). "--peers sglang fla torch_compile eager copy --replays 30" gives a tile the sweep's
    # neighbours and replay count.
    ap.add_argument("--peers", nargs="*", default=["sglang"],
                    choices=[n for n in PROVIDER_NAMES if not n.startswith("gdn_ops")],
                    help="peers timed in the same interleaved rounds (unchecked)")
    add_timing_arguments(ap)
    return ap


def main() -> None:
    args = parser().parse_args()
    bw = copy_bandwidth()
    peers, _ = load_providers(tuple(args.peers))
    records = []
    for cfg in tuning_grid(args):
        state, layout, B, HK, HV = dtype_name(cfg.state_dtype), cfg.layout, cfg.B, cfg.HK, cfg.HV
        chosen = decode_config(B * HV, cfg.K, cfg.V, cfg.state_dtype, layout, gpu_name(torch.device("cuda")),
                               cfg.act_dtype.itemsize, args.step_order, pdl=args.pdl != "off")
        problem = make_problem(cfg, "cuda")
        ref = reference(cfg, problem)
        row = {"B": B, "HK": HK, "HV": HV, "state": state, "act": args.act_dtype, "layout": layout,
               "bytes": cfg.bytes_per_call(), "slot_pad": cfg.slot_pad, "chosen": list(chosen), "tiles": {}}
        extra = [parse_tile(spec, chosen.BK) for spec in args.extra_tiles]
        # an extra tile that is the chosen one (or repeats) is timed once
        tiles = list(dict.fromkeys((candidates(cfg.K, cfg.V) if args.tiles == "all" else [chosen]) + extra))
        pdls = {"off": [False], "on": [True], "both": [False, True]}[args.pdl]
        providers = [tile_provider(t, pdl=p, step_order=args.step_order) for t in tiles for p in pdls]
        providers += variant_providers(args.variants, chosen, extra, args.step_order)
        peers_here = [peer for peer in peers.values() if peer.supports(cfg) is None]
        runnable, ceilings, times, failed = check_then_time(cfg, providers, problem, ref, args, peers=peers_here)
        row["unchecked"] = [p.name for p in ceilings]  # ceilings: timed, not decode steps
        row["tiles"].update({name: {"error": message} for name, message in failed.items()})
        for prov in runnable + ceilings:
            if prov.name in times:
                row["tiles"][prov.name] = {"us": times[prov.name]}
        for peer in peers_here:
            row[peer.name + "_us"] = times[peer.name]
        timed = {n: t for n, t in row["tiles"].items() if "us" in t and ":" not in n}
        best = min(timed, key=lambda n: timed[n]["us"])
        chosen_name = tile_provider(chosen, pdl=args.pdl == "on", step_order=args.step_order).name
        row["best"] = best
        def pct(us: float, moved: int = cfg.bytes_per_call()) -> float:
            return 100 * moved / (us * 1e-6) / bw

        print(f"{state:8s} {layout} B={B:5d} best {best:8s} {timed[best]['us']:9.1f} us "
              f"({pct(timed[best]['us']):5.1f}%)  chosen {chosen_name:12s} "
              f"{timed.get(chosen_name, {}).get('us', float('nan')):9.1f} us"
              + (f"  sglang {row['sglang_us']:9.1f} us ({pct(row['sglang_us']):5.1f}%)" if "sglang_us" in row else "")
              + "".join(f"  {n} {t['us']:.1f} us ({pct(t['us']):.1f}%)" for n, t in row["tiles"].items()
                        if "us" in t and (":" in n or "+pdl" in n)),
              flush=True)
        records.append(row)
        del problem, ref
        torch.cuda.empty_cache()
    write_results(Path(args.out), args.tag, records, bw, host=platform.node(), **timing_options(args))


if __name__ == "__main__":
    main()
