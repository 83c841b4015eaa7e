"""Benchmark of the Gated DeltaNet decode step: gdn_ops against its peers, as % of copy bandwidth.

Command (on a machine with a CUDA GPU, from the repository root)::

    python -m benchmarks.run [--quick] [--batches 1 8 64] [--out benchmarks/results]

Method. The step is memory bound (the state is ~99% of the bytes), so each implementation is
measured against the card's own device-to-device copy bandwidth, probed first in the same run.
For every Qwen3-Next shard (TP=1: HK=16, HV=32; TP=4: HK=4, HV=8; K=V=128), batch size, state
dtype (fp32, bf16) and pool layout ("vk" = [slots, HV, V, K], "kv" = [slots, HV, K, V]), with one
token (T=1) of bf16 activations:

1. every provider runs one step on fresh random data and must match the float64 reference of
   ``gdn_ops.reference`` (relative L2 error of o and of the updated pool); one that fails is
   reported as failing and not timed;
2. N independent calls, each with its own pool addressed through shuffled int32 slot indices, are
   captured in one CUDA graph, N chosen so that the pools total at least 4x the L2 cache (within
   a memory budget; at least ``--min-pools``, 8 by default), so every call starts with a cold L2;
   one replay of the graph is checked again, every call (the first two and the last where copies of
   all its pools would pass 4 GiB; ``providers.check_after``: each output,
   NaN-filled first, and each pool's slots, against the reference of one step from the pool as it
   was before the replay), and a graph that fails is not timed; both checks take the worst (row, head) slice's relative error;
3. the providers' graphs are replayed in ~30 interleaved rounds (each round replays every
   provider's graph once, in an order of its own drawn from ``--seed``), so drifts of clock or
   power hit all alike; a call's time is one replay's time / N; p20/p50/p80 over replays are reported (the
   per-replay samples are kept in the JSON), and % of copy bandwidth = bytes / p50 / copy bandwidth, where bytes =
   state read + written plus q, k, v, a, b, indices read and o written.

Outputs in ``--out``: ``<tag>.json`` (a header with GPU, versions, commit, date and the copy
bandwidth; then one record per provider x config), ``<tag>.txt`` (the table printed at the end)
and ``<tag>.png`` (% of copy bandwidth vs batch, one panel per (TP, state dtype, layout)).
``--quick`` runs B in {1, 32, 512} at TP=1, fp32, vk only. Peers that are not installed are
skipped with a note: SGLang's Triton file is loaded by path (``$GDN_BENCH_SGLANG_FILE``,
``.peers/sglang_fused_sigmoid_gating_recurrent.py`` or an installed sglang), flash-linear-attention
is imported as ``fla``. ``python -m benchmarks.providers`` runs the correctness checks on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import providers as P
from benchmarks import timing
from benchmarks.targets import tuning_note
from gdn_ops.triton_decode_tma import tuning_gpu_name

GEOMETRY = {1: (16, 32), 2: (8, 16), 4: (4, 8), 8: (2, 4)}  # tp -> (HK, HV), Qwen3-Next
HEAD_DIM = 128
ALL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_BATCHES = (1, 32, 512)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICE = "cuda"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in 1, 32, 512 at TP=1, fp32 state, vk layout")
    ap.add_argument("--batches", type=int, nargs="+", help=f"batch sizes (default {list(ALL_BATCHES)})")
    ap.add_argument("--tp", type=int, nargs="+", choices=sorted(GEOMETRY), help="TP shards (default 1 4)")
    ap.add_argument("--state-dtypes", nargs="+", choices=sorted(DTYPES), help="default fp32 bf16")
    ap.add_argument("--layouts", nargs="+", choices=("vk", "kv"), help="default vk kv")
    ap.add_argument("--providers", nargs="+", choices=P.PROVIDER_NAMES, default=list(P.PROVIDER_NAMES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", help="output file stem (default: quick or sweep)")
    ap.add_argument("--replays", type=int, default=30, help="timed graph replays per point")
    ap.add_argument("--mem-budget-gb", type=float, default=4.0,
                    help="GPU memory for the rotated pools of one point (at least --min-pools are used)")
    ap.add_argument("--min-pools", type=timing.min_pools_arg, default=timing.MIN_POOLS,
                    help="fewest calls (pools) in one graph, whatever the cold-L2 multiple needs")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no new point after this many seconds; results so far are written")
    ap.add_argument("--seed", type=int, default=0,
                    help="the inputs' and the interleaved rounds' orders; a rerun under another seed gives each "
                         "implementation other neighbours")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches = args.batches or list(QUICK_BATCHES)
        args.tp = args.tp or [1]
        args.state_dtypes = args.state_dtypes or ["fp32"]
        args.layouts = args.layouts or ["vk"]
        args.replays = min(args.replays, 20)
    args.batches = args.batches or list(ALL_BATCHES)
    args.tp = args.tp or [1, 4]
    args.state_dtypes = args.state_dtypes or ["fp32", "bf16"]
    args.layouts = args.layouts or ["vk", "kv"]
    args.tag = args.tag or ("quick" if args.quick else "sweep")
    return args


def groups(args) -> list[tuple[str, int, str]]:
    """(layout, tp, dtype) panels, the V-major layout every engine uses first."""
    return [(lay, tp, dt) for lay in args.layouts for tp in args.tp for dt in args.state_dtypes]


def make_config(layout: str, tp: int, dtype: str, B: int) -> P.Config:
    HK, HV = GEOMETRY[tp]
    return P.Config(tp=tp, HK=HK, HV=HV, K=HEAD_DIM, V=HEAD_DIM, B=B, state_dtype=DTYPES[dtype], layout=layout)


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------


def _git(*cmd: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(P.REPO_ROOT), *cmd], check=False, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def gdn_ops_commit() -> str:
    """$GDN_OPS_COMMIT when set (a copied tree may carry a stale .git), else HEAD (+ "-dirty" when
    gdn_ops/ has changes)."""
    if os.environ.get("GDN_OPS_COMMIT"):
        return os.environ["GDN_OPS_COMMIT"]
    head = _git("rev-parse", "HEAD")
    if head:
        dirty = _git("status", "--porcelain", "--", "gdn_ops")
        return head + ("-dirty" if dirty else "")
    return "unknown"


def header(args, copy_bw: float, provider_sources: dict, notes: dict) -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "benchmark": "gdn_ops decode step (Gated DeltaNet, Qwen3-Next shapes)",
        "gpu": props.name,
        # the name gdn_ops looks its tuning tables up by (GDN_OPS_TUNING_GPU, else the GPU's own)
        "tuning_gpu": tuning_gpu_name(0),
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "l2_cache_bytes": timing.l2_cache_bytes(0),
        "gpu_memory_bytes": props.total_memory,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "gdn_ops_commit": gdn_ops_commit(),
        "gdn_ops_source": P.source_digest(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "copy_bandwidth_Bps": copy_bw,
        "method": (
            f"per-call time = CUDA-graph replay time / N calls, each on its own pool (pools >= "
            f"{timing.COLD_L2_FACTOR}x L2, at least {args.min_pools}); providers' graphs replayed in {args.replays} "
            "interleaved rounds (each in its own seeded order); p20/p50/p80 over replays; "
            "pct_of_copy_bw = bytes / p50 / copy_bandwidth; bytes = 2 x state + q,k,v,a,b,o,indices,A_log,dt_bias"
        ),
        "T": 1,
        "activation_dtype": "bfloat16",
        "use_qk_l2norm_in_kernel": P.USE_QK_L2NORM,
        "providers": provider_sources,
        "skipped_providers": notes,
        "argv": sys.argv[1:],
        "complete": False,
    }


# ----------------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------------


def _record(cfg: P.Config, provider: str, status: str, copy_bw: float, **extra) -> dict:
    rec = {
        "provider": provider,
        "status": status,
        "tp": cfg.tp, "HK": cfg.HK, "HV": cfg.HV, "K": cfg.K, "V": cfg.V, "T": cfg.T, "B": cfg.B,
        "state_dtype": P.dtype_name(cfg.state_dtype),
        "act_dtype": P.dtype_name(cfg.act_dtype),
        "layout": cfg.layout,
        "bytes": cfg.bytes_per_call(),
        "p20_us": None, "p50_us": None, "p80_us": None, "pct_of_copy_bw": None,
    }
    rec.update(extra)
    if rec["p50_us"]:
        rec["pct_of_copy_bw"] = 100.0 * rec["bytes"] / (rec["p50_us"] * 1e-6) / copy_bw
    return rec


def _free() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def run_point(cfg: P.Config, providers: dict, args, copy_bw: float, l2: int) -> list[dict]:
    """Check then time every provider at one config."""
    records, passed = [], []
    torch.manual_seed(args.seed * 1_000_003 + cfg.B * 31 + cfg.tp)
    problem = P.make_problem(cfg, DEVICE)
    ref = P.reference(cfg, problem)
    for name, prov in providers.items():
        why = prov.supports(cfg)
        if why is not None:
            records.append(_record(cfg, name, "skipped", copy_bw, note=why))
            continue
        if prov.yardstick:
            passed.append((name, prov, P.CheckResult(True, math.nan, math.nan, "yardstick: not checked")))
            continue
        res = P.check(cfg, prov, problem, ref)
        if res.ok:
            passed.append((name, prov, res))
        else:
            records.append(_record(cfg, name, "failed", copy_bw, err_o=res.err_o, err_state=res.err_state,
                                   note=f"correctness check failed: {res.message}"))
    del problem, ref
    _free()

    footprint = cfg.bytes_per_call() - cfg.state_bytes  # the state is read and written in place
    n = timing.pools_for_cold_l2(footprint, l2, int(args.mem_budget_gb * 2**30), min_pools=args.min_pools)
    short = timing.cold_l2_shortfall(n, footprint, l2)
    if short is not None:
        print(f"warning: {cfg.label()}: {n} calls a graph total {short:.2f}x the L2, under the "
              f"{timing.COLD_L2_FACTOR}x the method asks (memory budget or cap on calls): calls may meet a warm L2",
              file=sys.stderr)
    pools = [P.make_problem(cfg, DEVICE) for _ in range(n)]
    # Capture every provider's graph first, then time them all in interleaved rounds: a provider
    # timed alone and first at a point was seen to run ~10% slower in part of its replays.
    graphs, keep, replay_errs = {}, [], {}
    for name, prov, res in passed:
        try:
            # the calls (each but the first overlapping the one before it under PDL) checked again on a replay
            graph, calls, after = P.capture_checked(cfg, prov, pools, timing.capture_graph)
            keep.append(calls)
        except Exception as exc:  # report and go on: one broken peer must not sink the sweep
            records.append(_record(cfg, name, "error", copy_bw, err_o=res.err_o, err_state=res.err_state,
                                   note=f"capture raised {type(exc).__name__}: {str(exc)[:300]}"))
            _free()
            continue
        if after is not None:
            if not after.ok:
                records.append(_record(cfg, name, "failed", copy_bw, err_o=res.err_o, err_state=res.err_state,
                                       note=f"replayed graph failed the check: {after.message}"))
                continue
            replay_errs[name] = after
        graphs[name] = (graph, len(calls))
    errs = {name: res for name, _, res in passed}
    try:
        timings = timing.time_graphs_interleaved(graphs, replays=args.replays, seed=args.seed) if graphs else {}
    except Exception as exc:
        timings = {}
        for name in graphs:
            records.append(_record(cfg, name, "error", copy_bw, err_o=errs[name].err_o, err_state=errs[name].err_state,
                                   note=f"replay raised {type(exc).__name__}: {str(exc)[:300]}"))
    for name, t in timings.items():
        records.append(_record(cfg, name, "ok", copy_bw, p20_us=t.p20_us, p50_us=t.p50_us, p80_us=t.p80_us,
                               calls_per_replay=t.calls_per_replay, replays=t.replays,
                               l2_multiple=round(n * footprint / l2, 2),
                               err_o=errs[name].err_o, err_state=errs[name].err_state,
                               **({"replay_err_o": replay_errs[name].err_o, "replay_err_state": replay_errs[name].err_state}
                                  if name in replay_errs else {}),
                               samples_us=[round(x, 3) for x in t.samples_us]))
    order = {n: i for i, n in enumerate(P.PROVIDER_NAMES)}
    records.sort(key=lambda r: order.get(r["provider"], len(order)))
    del graphs, keep
    _free()
    del pools
    _free()
    return records


class Progress:
    """tqdm on a terminal; otherwise one line per panel (keeps logs and output tails short)."""

    def __init__(self, total: int):
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="pt", file=sys.stderr)
            except ImportError:
                pass
        self.t0 = time.time()

    def point(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)
            self.bar.update(1)

    def panel(self, label: str, n_points: int) -> None:
        if self.bar is None:
            print(f"[{time.time() - self.t0:6.1f} s] {label}: {n_points} points done", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finite_or_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def write_json(path: Path, head: dict, records: list[dict]) -> None:
    """Strict JSON (NaN errors become null), replaced atomically so a killed run leaves a valid file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite_or_none({"header": head, "records": records}), indent=1, allow_nan=False))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def fit_lines(head: dict, records: list[dict]) -> list[str]:
    """The run's lines ``us a call = fixed + bytes / rate`` over B >= 128 (``benchmarks.fit_sweeps``)
    for gdn_ops, given the order, and the copy, where a table has two such batch sizes or more."""
    from benchmarks.fit_sweeps import LINE_NAMES, fits

    lines = fits({"header": head, "records": records}, names=list(LINE_NAMES))
    if not lines:
        return []
    return ["", "a call's time as fixed + bytes / rate over B >= 128 (python -m benchmarks.fit_sweeps):",
            *("  " + line.line() for line in lines)]


def format_table(head: dict, records: list[dict]) -> str:
    """One block per (layout, TP, dtype): us per call (p50) and % of copy bandwidth; gdn_ops speed-ups."""
    bw = head["copy_bandwidth_Bps"]
    lines = [
        (f"{head['gpu']}  copy bandwidth {bw / 1e12:.2f} TB/s (read+write)  L2 {head['l2_cache_bytes'] / 2**20:.0f} MiB  "
         f"torch {head['torch']}  triton {head['triton']}  gdn_ops {head['gdn_ops_commit'][:12]}"
         + tuning_note(head)),
        "cells: median us per call (% of copy bandwidth); speed-up = peer p50 / gdn_ops p50",
    ]
    panels: dict[tuple, list[dict]] = {}
    for r in records:
        panels.setdefault((r["layout"], r["tp"], r["state_dtype"]), []).append(r)
    for (layout, tp, dt), recs in panels.items():
        names = [n for n in P.PROVIDER_NAMES if any(r["provider"] == n and r["status"] != "skipped" for r in recs)]
        peers = [n for n in names if n != "gdn_ops"]
        r0 = recs[0]
        lines.append("")
        lines.append(f"TP={tp} (HK={r0['HK']}, HV={r0['HV']}, K={r0['K']}, V={r0['V']})  state {dt}  layout {layout}")
        cols = ["    B"] + [f"{n:>16s}" for n in names] + [f"{'x ' + n:>10s}" for n in peers if "gdn_ops" in names]
        lines.append(" ".join(cols))
        by_key = {(r["B"], r["provider"]): r for r in recs}
        for B in sorted({r["B"] for r in recs}):
            row = [f"{B:5d}"]
            for n in names:
                r = by_key.get((B, n))
                if r is None:
                    row.append(f"{'-':>16s}")
                elif r["status"] == "ok":
                    row.append(f"{r['p50_us']:9.1f} ({r['pct_of_copy_bw']:3.0f}%)")
                else:
                    row.append(f"{r['status'].upper():>16s}")
            if "gdn_ops" in names:
                mine = by_key.get((B, "gdn_ops"))
                for n in peers:
                    r = by_key.get((B, n))
                    if mine and r and mine["status"] == "ok" and r["status"] == "ok":
                        row.append(f"{r['p50_us'] / mine['p50_us']:10.2f}")
                    else:
                        row.append(f"{'-':>10s}")
            lines.append(" ".join(row))
    lines += fit_lines(head, records)
    problems: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["status"] in ("failed", "error"):
            problems.setdefault((r["provider"], r["status"]), []).append(r)
    if problems:
        lines.append("")
        lines.append("not timed:")
        for (name, status), recs in problems.items():
            r = recs[0]
            lines.append(f"  {name} {status} at {len(recs)} point(s); first at TP={r['tp']} B={r['B']} "
                         f"{r['state_dtype']} {r['layout']}: {r['note']}")
    for name, why in head.get("skipped_providers", {}).items():
        lines.append(f"  {name} skipped: {why}")
    if not head.get("complete"):
        lines.append(f"INCOMPLETE: {head.get('stopped_early', 'the sweep did not finish')}")
    return "\n".join(lines)


def plot(path: Path, head: dict, records: list[dict], title: str | None = None) -> str | None:
    """PNG of % of copy bandwidth vs batch, a panel per (TP, state dtype, layout) in the records'
    order; returns a note instead when matplotlib is missing. ``title`` replaces the one made from
    ``head`` (the card and its copy bandwidth)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not importable: no plot written"
    panels = []
    for r in records:
        key = (r["tp"], r["state_dtype"], r["layout"])
        if key not in panels:
            panels.append(key)
    if not panels:
        return "nothing to plot"
    ncols = min(4, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows + 0.6), squeeze=False, sharey=True)
    colors = {n: f"C{i}" for i, n in enumerate(P.PROVIDER_NAMES)}  # one colour per provider in every panel
    top = max([100.0] + [r["pct_of_copy_bw"] * 1.05 for r in records if r["status"] == "ok"])
    for ax, (tp, dt, layout) in zip(axes.flat, panels):
        batches = sorted({r["B"] for r in records if (r["tp"], r["state_dtype"], r["layout"]) == (tp, dt, layout)})
        for name in P.PROVIDER_NAMES:
            pts = sorted((r["B"], r["pct_of_copy_bw"]) for r in records
                         if r["provider"] == name and r["status"] == "ok"
                         and (r["tp"], r["state_dtype"], r["layout"]) == (tp, dt, layout))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if name == "gdn_ops" else 1.2, color=colors[name], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches], fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"TP={tp}  state {dt}  layout {layout}", fontsize=9)
        ax.set_xlabel("batch")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, top)
    for ax in axes[:, 0]:
        ax.set_ylabel("% of copy bandwidth")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    shown = [n for n in P.PROVIDER_NAMES if any(r["provider"] == n and r["status"] == "ok" for r in records)]
    handles = [plt.Line2D([], [], color=colors[n], marker="o", lw=2.2 if n == "gdn_ops" else 1.2) for n in shown]
    fig.legend(handles, shown, loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    fig.suptitle(title or f"Gated DeltaNet decode step, {head['gpu']}, copy {head['copy_bandwidth_Bps'] / 1e12:.2f} TB/s",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.run needs a CUDA GPU; `python -m benchmarks.providers` checks the providers on CPU.")
        return 2
    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, txt_path, png_path = (args.out / f"{args.tag}{ext}" for ext in (".json", ".txt", ".png"))

    torch.manual_seed(args.seed)
    copy_bw = timing.copy_bandwidth()
    l2 = timing.l2_cache_bytes(0)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s (read+write); L2 {l2 / 2**20:.0f} MiB", flush=True)
    providers, notes = P.load_providers(args.providers)
    for name, why in notes.items():
        print(f"note: provider {name} skipped: {why}", flush=True)
    head = header(args, copy_bw, {n: p.source for n, p in providers.items()}, notes)

    plan = groups(args)
    progress = Progress(len(plan) * len(args.batches))
    records: list[dict] = []
    stopped = None
    with torch.no_grad():
        for layout, tp, dt in plan:
            done = 0
            for B in args.batches:
                if args.time_budget_s is not None and time.time() - t_start > args.time_budget_s:
                    stopped = f"time budget of {args.time_budget_s:.0f} s reached before TP={tp} {dt} {layout} B={B}"
                    break
                cfg = make_config(layout, tp, dt, B)
                records.extend(run_point(cfg, providers, args, copy_bw, l2))
                progress.point(f"tp{tp} {dt} {layout} B={B}")
                done += 1
            progress.panel(f"TP={tp} {dt} {layout}", done)
            write_json(json_path, head, records)
            if stopped:
                break
    progress.close()

    head["complete"] = stopped is None
    if stopped:
        head["stopped_early"] = stopped
    head["elapsed_s"] = round(time.time() - t_start, 1)
    write_json(json_path, head, records)
    note = plot(png_path, head, records)
    table = format_table(head, records)
    txt_path.write_text(table + "\n")
    print(f"wrote {json_path}, {txt_path}" + (f" ({note})" if note else f", {png_path}"))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
