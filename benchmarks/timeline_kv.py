"""When the Gluon tile kernels' programs start, run and end, across consecutive launches.

    python -m benchmarks.timeline_kv --batch 256 --state-dtype bf16 --spec t128:4:8:6:8:p8:tail4x1:sort

Launches the decode ``--launches`` times back to back under PDL (as the benchmark's graph does,
each call on its own pool so that every call meets a cold L2; the slot order given, as an engine
gives it) through the ``kv_tile_timeline`` variant (benchmarks/variants.py), whose programs record
the global timer when they start, when their PDL wait returns and when they end, and their SM
(``--variant vk_tile_timeline``: the vk tile kernel's programs on a vk pool). Records with two more
columns, a pair's first tile done and second started (the two-tiles variants of the twenty-fifth
session, retired; they patch the kernel at commit 567a45c), are reported as ``first_tile``,
``switch`` and ``second_tile`` too.
For each launch after the first it reports, in us:

- ``span``: first program running (its wait returned) to last program ended;
- ``gap``: the previous launch's last program ended to this launch's first program running;
- ``ideal``: the bytes of a call at ``--copy-tbps`` (the copy bandwidth of a sweep on this card);
- ``fill`` / ``drain``: from the first program running until the SMs run 90% of their slots, and
  from the last moment they run 90% to the end;
- ``slots``: the mean share of the SMs' program slots (``programs_per_sm`` each) running over the span;
- ``drain_moved_us`` / ``drain_lost_us``: the drain's share of the call's bytes, at the copy's pace
  (each program's bytes spread evenly over its run; a piece of the grid's tail holds
  ``1 / tail_split`` of a whole tile's), and what the drain takes beyond that;
- ``idle_body`` / ``idle_drain``: slot-us not running before and after the drain starts;
- ``turnover``: median and 10th / 90th percentiles of the time from a program's end to the next
  program's start on the same SM (each SM's k-th end paired with its k-th start after the launch
  began running), and ``run``, the same of a program's run.

``--read PATH`` reports from a JSON this script wrote (``.json.gz``, or ``.json`` uncompressed),
without a GPU (``ideal`` at ``--copy-tbps`` where an older JSON does not hold it).

A measurement of the launch's shape, not a timing: the clock reads and stores add a little to each
program. By default the launches are eager: where a call is shorter than the host takes to launch
one (on the H200 calls of ~134 us did not queue, 266 us did), ``gap`` is host time and the launches
do not overlap under PDL as the benchmark's graph replays do; ``--graph`` replays them from one CUDA
graph instead. Writes ``<out>/<tag>.json.gz`` with every program's record.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch
import triton

from benchmarks.providers import Config, launcher_provider, make_problem
from benchmarks.run import DTYPES, GEOMETRY, HEAD_DIM
from benchmarks.targets import read_sweep
from benchmarks.tune_tma import parse_spec, variant_launch
from benchmarks.variants import VK_TILE_VARIANTS, load_variant

TIMELINE_VARIANTS = ("kv_tile_timeline", "vk_tile_timeline", "kv_tile_stagger2000_timeline",
                     "kv_tile_drain_prefetch3_timeline")


def running_slots(records: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Programs running (wait returned, not ended) at each time of ``grid_ns``; ``records`` are a
    launch's ``[programs, 4]`` rows (started, waited, ended, SM)."""
    waited, ended = np.sort(records[:, 1]), np.sort(records[:, 2])
    return np.searchsorted(waited, grid_ns, side="right") - np.searchsorted(ended, grid_ns, side="right")


def slot_turnovers(records: np.ndarray) -> np.ndarray:
    """ns from a program's end to the next program's start on the same SM: on each SM, the k-th
    program to start after the SM's first end is paired with the k-th to end."""
    gaps = []
    for sm in np.unique(records[:, 3]):
        on_sm = records[records[:, 3] == sm]
        later = np.sort(on_sm[on_sm[:, 0] > on_sm[:, 2].min(), 0])
        gaps.append(later - np.sort(on_sm[:, 2])[:len(later)])
    return np.concatenate(gaps)


def _percentiles_us(values: np.ndarray) -> list[float] | None:
    return [round(float(v) / 1e3, 3) for v in np.percentile(values, [50, 10, 90])] if values.size else None


def program_shares(config, programs: int, sms: int) -> np.ndarray:
    """Each program's share of a launch's bytes, in program order: the kv tile's grid ends in
    pieces of ``tail_split`` to a whole tile (``gluon_decode_kv_tile.split_grid``: up to
    ``tail_per_sm`` whole tiles an SM, cut last), every other program one tile."""
    weights = np.ones(programs)
    split = getattr(config, "tail_split", 1)
    if split > 1:
        weights[programs - min(programs, config.tail_per_sm * sms * split):] = 1 / split
    return weights / weights.sum()


def drain_moved(records: np.ndarray, shares: np.ndarray, drain_from_ns: int) -> float:
    """The share of the launch's bytes moved from ``drain_from_ns`` on, each program's share spread
    evenly over its run (wait returned to end)."""
    run = np.maximum(records[:, 2] - records[:, 1], 1)
    after = np.clip(records[:, 2] - np.maximum(records[:, 1], drain_from_ns), 0, None)
    return float((shares * after / run).sum())


def launch_shape(records: np.ndarray, previous_end: int | None, slots: int, ideal_us: float,
                 shares: np.ndarray | None = None) -> dict:
    """The figures of one launch (see the module's docstring); times in us. ``shares``: each
    program's share of the bytes (:func:`program_shares`), for the drain's; even if not given."""
    first, last = int(records[:, 1].min()), int(records[:, 2].max())
    grid_ns = np.arange(first, last, 50)
    running = running_slots(records, grid_ns)
    full = np.nonzero(running >= 0.9 * slots)[0]
    idle = np.clip(slots - running, 0, None) * 50 / slots / 1e3
    drain_from = full[-1] if full.size else 0
    drain_us = float((len(grid_ns) - 1 - full[-1]) * 50 / 1e3) if full.size else None
    if shares is None:
        shares = np.full(len(records), 1 / len(records))
    moved_us = (drain_moved(records, shares, int(grid_ns[drain_from])) * ideal_us
                if full.size and ideal_us else None)
    return {
        "span_us": (last - first) / 1e3,
        "gap_us": None if previous_end is None else (first - previous_end) / 1e3,
        "ideal_us": ideal_us,
        "fill_us": float(full[0] * 50 / 1e3) if full.size else None,
        "drain_us": drain_us,
        "drain_moved_us": moved_us,
        "drain_lost_us": None if moved_us is None else drain_us - moved_us,
        "slots": float(running.mean() / slots),
        "idle_body_slot_us": float(idle[:drain_from].sum()),
        "idle_drain_slot_us": float(idle[drain_from:].sum()),
        "turnover_us_p50_p10_p90": _percentiles_us(slot_turnovers(records)),
        "run_us_p50_p10_p90": _percentiles_us(records[:, 2] - records[:, 1]),
        "waiting_before_first_run_us": (first - int(records[:, 0].min())) / 1e3,
        "programs": len(records),
        "sms": len(np.unique(records[:, 3])),
        **(pair_parts(records) if records.shape[1] >= 6 else {}),
    }


def pair_parts(records: np.ndarray) -> dict:
    """Where a pair program's time goes, from the two records the retired
    kv_tile_two_tiles_strided_switch variant added (columns 4 and 5: first tile done, second tile
    started): p50 / p10 / p90 in us of the first tile (from the wait), the switch, and the second
    tile, over the programs with two."""
    pairs = records[records[:, 5] > records[:, 4]]
    return {"first_tile_us": _percentiles_us(pairs[:, 4] - pairs[:, 1]),
            "switch_us": _percentiles_us(pairs[:, 5] - pairs[:, 4]),
            "second_tile_us": _percentiles_us(pairs[:, 2] - pairs[:, 5])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.timeline_kv", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--state-dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--tp", type=int, choices=sorted(GEOMETRY), default=1)
    ap.add_argument("--spec", help="the tile's configuration, benchmarks.tune_tma's tBV:... syntax")
    ap.add_argument("--variant", choices=TIMELINE_VARIANTS, default=TIMELINE_VARIANTS[0],
                    help="the kv tile kernel's programs, or the vk tile kernel's on a vk pool")
    ap.add_argument("--launches", type=int, default=6)
    ap.add_argument("--graph", action="store_true",
                    help="replay the launches from one CUDA graph, as the benchmark does, instead of eagerly")
    ap.add_argument("--copy-tbps", type=float, default=4.25, help="copy bandwidth (TB/s, read+write) for 'ideal'")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="timeline_kv")
    ap.add_argument("--read", type=Path, help="report from this JSON of an earlier run instead (no GPU)")
    args = ap.parse_args(argv)
    if args.read:
        saved = read_sweep(args.read)
        records = [np.array(launch) for launch in saved["records"]]
        # the SMs the programs ran on, where an older JSON does not say
        sms = saved.get("sms") or len(np.unique(np.concatenate([launch[:, 3] for launch in records])))
        config = parse_spec(saved["spec"])
        ideal_us = saved.get("ideal_us") or (
            call_bytes(saved["tp"], saved["B"], saved["state_dtype"], saved.get("variant", TIMELINE_VARIANTS[0]))
            / (args.copy_tbps * 1e6) if {"tp", "B", "state_dtype"} <= saved.keys() else 0.0)
        report(saved.get("label", args.read.name.split(".")[0]), records, config.programs_per_sm * sms, ideal_us,
               config, sms)
        return
    if args.batch is None or args.spec is None:
        ap.error("--batch and --spec are needed to launch (or --read a JSON)")
    if not torch.cuda.is_available():
        ap.error("needs a GPU (the tile kernels are Gluon, sm_90+)")
    config = parse_spec(args.spec)
    cfg = problem_config(args.tp, args.batch, args.state_dtype, args.variant)
    provider = launcher_provider("timeline", variant_launch(args.variant), config, pdl=True,
                                 step_order=config.sort_rows)
    steps = []
    for _ in range(args.launches):  # a pool each: every call meets a cold L2
        p = make_problem(cfg, "cuda")
        steps.append(provider.make(cfg, p.pool, p.indices, p.inputs))
    timelines = load_variant(args.variant).TIMELINES
    for _ in range(2):  # the first pass compiles and leaves the record buffers in the allocator's cache
        timelines.clear()
        torch.cuda.synchronize()
        for step in steps:
            step()
        torch.cuda.synchronize()
    if args.graph:  # the host no longer spaces the launches: each queues behind the last, under PDL
        timelines.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for step in steps:
                step()
        for _ in range(2):
            graph.replay()
        torch.cuda.synchronize()
    records = [t.cpu().numpy() for t in timelines]
    ideal_us = cfg.bytes_per_call() / (args.copy_tbps * 1e12) * 1e6
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = report(cfg.label(), records, config.programs_per_sm * sms, ideal_us, config, sms)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json.gz"  # a record a program: megabytes a run as plain text
    with gzip.open(path, "wt") as f:
        json.dump({
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gdn_ops_commit": os.environ.get("GDN_OPS_COMMIT", ""), "label": cfg.label(), "spec": args.spec,
            "variant": args.variant,
            "config": str(config), "B": args.batch, "tp": args.tp, "state_dtype": args.state_dtype,
            "sms": sms, "ideal_us": ideal_us, "graph": args.graph, "shapes": shapes,
            "records": [launch.tolist() for launch in records]}, f)
    print(f"wrote {path}")


def problem_config(tp: int, batch: int, state_dtype: str, variant: str) -> Config:
    """The benchmark's problem that ``variant``'s kernel times (a vk pool for the vk tile's)."""
    HK, HV = GEOMETRY[tp]
    return Config(tp=tp, HK=HK, HV=HV, K=HEAD_DIM, V=HEAD_DIM, B=batch, state_dtype=DTYPES[state_dtype],
                  layout="vk" if variant in VK_TILE_VARIANTS else "kv")


def call_bytes(tp: int, batch: int, state_dtype: str, variant: str) -> int:
    """The bytes a call moves (``Config.bytes_per_call``) for a run's saved shape."""
    return problem_config(tp, batch, state_dtype, variant).bytes_per_call()


def report(label: str, records: list[np.ndarray], slots: int, ideal_us: float, config=None,
           sms: int | None = None) -> list[dict]:
    """Print and return :func:`launch_shape` of each launch in turn (the bytes spread by
    :func:`program_shares` of ``config`` on ``sms`` SMs where given, else evenly)."""
    shapes, previous_end = [], None
    for launch in records:
        shares = program_shares(config, len(launch), sms) if config is not None and sms else None
        shapes.append(launch_shape(launch, previous_end, slots, ideal_us, shares))
        previous_end = int(launch[:, 2].max())
    for i, shape in enumerate(shapes):
        print(f"{label} launch {i}: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shape.items()))
    return shapes


if __name__ == "__main__":
    main()
