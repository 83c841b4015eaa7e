"""Where the performance issue's targets stand, read from committed sweeps of ``benchmarks.run``.

Command (no GPU needed; reads JSON only)::

    python -m benchmarks.targets [--sources benchmarks/results/h200/targets_sources.txt]
    python -m benchmarks.targets --tables             # every provider's table instead
    python -m benchmarks.targets --update README.md   # rewrite the README's blocks from the sweeps
    python -m benchmarks.targets --check README.md    # exit 1 where they differ (a test runs this)
    python -m benchmarks.targets --plot benchmarks/results/h200/targets.png   # every table, drawn
    python -m benchmarks.targets --project 3.02       # the verdicts modelled at another copy bandwidth
    python -m benchmarks.targets --card h100 --update README.md   # the H100's sweeps and blocks

The targets are in % of the copy bandwidth measured in the same run: at least 95% from B=128, 90%
at B=32 and 80% at B=8, and at most 3.0 us a call at B=1, for both state dtypes and layouts, and
gdn_ops faster than SGLang's kernel everywhere. A point is *out of reach* on its card when
PyTorch's copy of the same bytes in the same graphs (the run's ``copy`` provider) reads under the
target: no kernel that moves those bytes is expected to pass it.

The sources file lists sweep JSONs, oldest first, one a line (``#`` starts a comment). A later
file's point replaces an earlier file's point of the same (TP, state dtype, layout, B), with all of
its providers, so that a figure and the copy it is measured against come from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Each card's sweeps are listed in its results folder; the H200's are the README's main blocks, another
# card's blocks carry its name (``targets-h100``) and leave its tables to its committed run's text.
CARD_BLOCKS = {"h200": ("targets", "tables", "fits"), "h100": ("targets", "fits")}
DEFAULT_CARD = "h200"


def card_sources(card: str) -> Path:
    """The sources file of ``card``'s sweeps."""
    return REPO / "benchmarks" / "results" / card / "targets_sources.txt"


def card_block(name: str, card: str) -> str:
    """The README marker name of block ``name`` for ``card``."""
    return name if card == DEFAULT_CARD else f"{name}-{card}"


TARGET_PCT = {8: 80.0, 32: 90.0, 128: 95.0, 256: 95.0, 512: 95.0, 1024: 95.0}
TARGET_US_B1 = 3.0
SGLANG_LEVEL = 0.01  # medians within 1% of each other: level, neither faster
COLUMNS = (("float32", "vk"), ("bfloat16", "vk"), ("float32", "kv"), ("bfloat16", "kv"))
SHORT = {"float32": "fp32", "bfloat16": "bf16"}
PROVIDER_HEADINGS = {"gdn_ops": "gdn_ops", "gdn_ops_step_order": "step order", "gdn_ops_no_pdl": "no PDL",
                     "sglang": "SGLang", "fla": "FLA", "torch_compile": "torch.compile", "eager": "eager",
                     "copy": "copy"}
WITH_PCT = ("gdn_ops", "gdn_ops_step_order")  # cells that also give % of copy bandwidth
Key = tuple[int, str, str, int]  # (tp, state dtype, layout, B)


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point's figures, all from one run (``source``, the sweep's file stem)."""

    tp: int
    dtype: str
    layout: str
    B: int
    source: str
    timed: dict[str, tuple[float, float]]  # provider -> (median us a call, % of copy bandwidth)
    failed: str | None = None  # gdn_ops failed its check or raised in this run: why (the record's note)

    def _fig(self, provider: str, i: int) -> float | None:
        t = self.timed.get(provider)
        return None if t is None else t[i]

    us = property(lambda self: self._fig("gdn_ops", 0), doc="gdn_ops, median us a call")
    pct = property(lambda self: self._fig("gdn_ops", 1), doc="gdn_ops, % of copy bandwidth")
    us_given_order = property(lambda self: self._fig("gdn_ops_step_order", 0),
                              doc="the same op given ``initial_state_order``")
    pct_given_order = property(lambda self: self._fig("gdn_ops_step_order", 1))
    copy_pct = property(lambda self: self._fig("copy", 1), doc="PyTorch's copy of the same bytes")
    us_no_pdl = property(lambda self: self._fig("gdn_ops_no_pdl", 0),
                         doc="gdn_ops launched without PDL (sorting by itself): no overlap with the call before")
    pct_no_pdl = property(lambda self: self._fig("gdn_ops_no_pdl", 1))
    sglang_us = property(lambda self: self._fig("sglang", 0), doc="SGLang's kernel (vk only)")

    @property
    def figures(self) -> tuple[float | None, float | None]:
        """gdn_ops without / given the order, in the unit of this point's target (us at B=1, else %)."""
        return (self.us, self.us_given_order) if self.B == 1 else (self.pct, self.pct_given_order)

    def meets(self, figure: float | None) -> bool | None:
        """Whether ``figure`` (in :attr:`figures`' unit) meets this point's target; None without one."""
        if figure is None:
            return None
        if self.B == 1:
            return figure <= TARGET_US_B1
        target = TARGET_PCT.get(self.B)
        return None if target is None else figure >= target

    @property
    def out_of_reach(self) -> bool:
        """The copy of the same bytes reads under the target (only for % targets)."""
        target = TARGET_PCT.get(self.B)
        return target is not None and self.copy_pct is not None and self.copy_pct < target

    @property
    def figure_no_pdl(self) -> float | None:
        """gdn_ops without PDL, in the unit of this point's target."""
        return self.us_no_pdl if self.B == 1 else self.pct_no_pdl

    @property
    def met_only_with_pdl(self) -> bool:
        """Met without the order as timed (calls back to back, each overlapping the one before
        under PDL), but not by gdn_ops launched without PDL (which sorts by itself too), as after a
        kernel that lets nothing start early."""
        return self.status in ("met", "met without the order") and self.meets(self.figure_no_pdl) is False

    @property
    def status(self) -> str:
        """``met`` (both figures), ``met given the order`` or ``met without it`` (one of them),
        ``out of reach``, ``open``, ``no target``, or ``failed`` where gdn_ops failed in the run."""
        if self.failed is not None:
            return "failed"
        plain, given = map(self.meets, self.figures)
        if plain is None:
            return "no target"
        if plain and given is not False:
            return "met"
        if plain or given:
            return "met without the order" if plain else "met given the order"
        return "out of reach" if self.out_of_reach else "open"


def projected(point: Point, copy_bw: float, to_copy_bw: float) -> Point:
    """``point`` (measured where the copy ran at ``copy_bw`` bytes/s) as it would read on a card
    whose copy runs at ``to_copy_bw``, if each timed call kept the time it spends beyond moving
    its bytes at the copy's rate: a model for predictions (say, an H200's sweep on an H100), not
    a measurement."""
    if copy_bw <= 0 or to_copy_bw <= 0:
        raise ValueError(f"copy bandwidths above zero (got copy_bw={copy_bw}, to_copy_bw={to_copy_bw})")
    timed = {}
    for provider, (us, pct) in point.timed.items():
        moved_us = pct / 100 * us  # the call's bytes at copy_bw
        new_us = us + moved_us * (copy_bw / to_copy_bw - 1)
        timed[provider] = (new_us, 100 * moved_us * copy_bw / to_copy_bw / new_us)
    return dataclasses.replace(point, timed=timed)


def read_sweep(path: Path) -> dict:
    """A JSON file the benchmarks wrote (a ``benchmarks.run`` sweep's ``{"header", "records"}``, or
    a timeline of ``benchmarks.timeline_kv``), gzipped where it ends in ``.gz``."""
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def read_sources(path: Path) -> list[Path]:
    """The sweep files a sources file names, oldest first (relative names: beside the sources file)."""
    files = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            files.append(path.parent / name)
    if not files:
        raise ValueError(f"{path}: names no sweep file")
    return files


def points_of(sweep: dict, source: str) -> dict[Key, Point]:
    """Every grid point of one sweep where gdn_ops was timed or failed (its check, or with an
    error), keyed by (tp, dtype, layout, B): a failure replaces an earlier run's figures too."""
    timed: dict[Key, dict[str, tuple[float, float]]] = {}
    failed: dict[Key, str] = {}
    for r in sweep["records"]:
        key = (r["tp"], r["state_dtype"], r["layout"], r["B"])
        if r.get("status") == "ok":
            timed.setdefault(key, {})[r["provider"]] = (r["p50_us"], r["pct_of_copy_bw"])
        elif r["provider"] == "gdn_ops" and r.get("status") in ("failed", "error"):
            failed[key] = r.get("note") or r["status"]
    return {key: Point(*key, source=source, timed=timed.get(key, {}), failed=failed.get(key))
            for key in {*timed, *failed} if key in failed or "gdn_ops" in timed[key]}


def merge(files: list[Path]) -> tuple[dict[Key, Point], dict[str, dict]]:
    """The points of the files, later files replacing earlier ones; and each used file's header."""
    points: dict[Key, Point] = {}
    headers = {}
    for f in files:
        if f.stem in headers:  # points and headers are keyed by it
            raise ValueError(f"{f}: another source has the same file name ({f.stem})")
        sweep = read_sweep(f)
        headers[f.stem] = sweep["header"]
        points.update(points_of(sweep, f.stem))
    used = {p.source for p in points.values()}
    return points, {k: v for k, v in headers.items() if k in used}


def _cell(p: Point | None) -> str:
    """gdn_ops without / given the order: us at B=1, % of copy elsewhere; bold where met, † out of reach."""
    if p is None:
        return "-"
    if p.failed is not None:
        return "failed"
    text = " / ".join(f"**{v:.2f}**" if p.meets(v) else f"{v:.2f}" for v in p.figures if v is not None)
    return text + (" us" if p.B == 1 else "") + (" †" if p.status == "out of reach" else "")


def table(points: dict[Key, Point], tp: int) -> str:
    """Markdown: one row per targeted B, one column per (state dtype, layout)."""
    head = f"| B (TP={tp}) | " + " | ".join(f"{SHORT[d]} {lay}" for d, lay in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for B in (1, *TARGET_PCT):
        cells = [_cell(points.get((tp, d, lay, B))) for d, lay in COLUMNS]
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sglang_line(points: dict[Key, Point]) -> str:
    """gdn_ops against SGLang over every point both ran (the targets' grid and the rest). A point
    where their medians lie within :data:`SGLANG_LEVEL` of each other is level, not a win: replays
    of one graph spread about that much."""
    pairs = [(p.sglang_us / p.us, p) for p in points.values() if p.sglang_us is not None and p.us is not None]
    if not pairs:
        return "SGLang: not in these sweeps."
    level = [p for ratio, p in pairs if 1 / (1 + SGLANG_LEVEL) < ratio < 1 + SGLANG_LEVEL]
    slower = [p for ratio, p in pairs if ratio <= 1 / (1 + SGLANG_LEVEL)]
    lo, hi = min(r for r, _ in pairs), max(r for r, _ in pairs)
    wins = len(pairs) - len(level) - len(slower)
    text = f"SGLang is slower than gdn_ops at {wins} of {len(pairs)} points ({lo:.2f}x-{hi:.2f}x)"
    if level:
        text += f"; level (within {SGLANG_LEVEL:.0%}) at " + ", ".join(_named(p, None) for p in level)
    if slower:
        text += "; faster at " + ", ".join(_named(p, None) for p in slower)
    return text + "."


def _named(p: Point, figure: float | None) -> str:
    unit = " us" if p.B == 1 else "%"
    return f"TP={p.tp} {SHORT[p.dtype]} {p.layout} B={p.B}" + ("" if figure is None else f" ({figure:.2f}{unit})")


def pdl_lines(points: dict[Key, Point]) -> str:
    """The verdicts that rest on PDL between consecutive decode calls, which the benchmark's graph
    runs back to back and an engine's step does not (another kernel runs before each decode call);
    and the points out of reach where gdn_ops reads above its copy only with that overlap."""
    keyed = [points[k] for k in sorted(points)]
    if not any(p.figure_no_pdl is not None for p in keyed):
        return ""
    needs = [p for p in keyed if p.met_only_with_pdl]
    text = ("Met only with PDL between consecutive decode calls (each call starting under the one before): "
            f"{len(needs)} points that meet their target without the order miss it launched without PDL "
            "(the `no PDL` column): " + (", ".join(_named(p, p.figure_no_pdl) for p in needs) or "none") + ".")
    above = [p for p in keyed if p.status == "out of reach" and p.pct is not None and p.copy_pct is not None
             and p.pct > p.copy_pct]
    if above:
        under = all(p.pct_no_pdl is not None and p.pct_no_pdl < p.copy_pct for p in above)
        text += (f" Out of reach (†) where gdn_ops reads above its copy, with PDL only ({'under it' if under else 'not all under it'}"
                 " without): " + ", ".join(_named(p, None) for p in above) + ".")
    return text


def _run_args(argv: list[str]) -> list[str]:
    """A run's arguments less where it wrote and when it stopped, which do not change its figures."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--tag", "--time-budget-s"):
            skip = True
        else:
            out.append(a)
    return out


def tuning_note(head: dict) -> str:
    """What a sweep's description adds when gdn_ops ran another GPU's tuning tables
    (``GDN_OPS_TUNING_GPU``; the header's ``tuning_gpu``); empty where it ran its own."""
    tuning = head.get("tuning_gpu", head["gpu"])
    return "" if tuning == head["gpu"] else f", tuning tables of {tuning!r} (GDN_OPS_TUNING_GPU)"


def sources_lines(points: dict[Key, Point], headers: dict[str, dict]) -> str:
    """Which run each table's figures come from: file, the tables it feeds, commit, copy bandwidth, card."""
    batches: dict[tuple[str, str], set[int]] = {}
    for p in points.values():
        batches.setdefault((p.source, f"TP={p.tp} {SHORT[p.dtype]} {p.layout}"), set()).add(p.B)
    whole = {}
    for (_, name), bs in batches.items():
        whole.setdefault(name, set()).update(bs)
    fed: dict[str, list[str]] = {}
    for (stem, name), bs in sorted(batches.items()):
        part = "" if bs == whole[name] else f" B={min(bs)}" + (f"-{max(bs)}" if len(bs) > 1 else "")
        fed.setdefault(stem, []).append(name + part)
    lines = []
    for stem, h in headers.items():
        args = " ".join(_run_args(h.get("argv", [])))
        lines.append(f"- `{stem}` (`{args}`): {', '.join(fed[stem])} (gdn_ops {h['gdn_ops_commit'][:7]}, "
                     f"copy {h['copy_bandwidth_Bps'] / 1e12:.2f} TB/s, {h['gpu']}, torch {h['torch']}, "
                     f"Triton {h['triton']}, {h['date_utc'][:10]}{tuning_note(h)})")
    return "\n".join(lines)


def report(points: dict[Key, Point], headers: dict[str, dict]) -> str:
    """The targets block: a table per TP, the SGLang comparison and the sources."""
    tps = sorted({k[0] for k in points})
    blocks = [table(points, tp) for tp in tps]
    sources = "Sources (`python -m benchmarks.run` with the arguments shown):\n" + sources_lines(points, headers)
    return "\n\n".join([*blocks, sglang_line(points), *filter(None, [pdl_lines(points)]), sources])


def provider_table(points: dict[Key, Point], tp: int, dtype: str, layout: str) -> str:
    """Markdown: every B of one (TP, state dtype, layout), every provider's median us a call."""
    pts = sorted((p for p in points.values() if (p.tp, p.dtype, p.layout) == (tp, dtype, layout)),
                 key=lambda p: p.B)
    names = [n for n in PROVIDER_HEADINGS if any(n in p.timed for p in pts)]
    sources = ", ".join(dict.fromkeys(f"`{p.source}`" for p in pts))
    lines = [f"TP={tp}, {SHORT[dtype]} state, {layout} layout ({sources}):", "",
             "| B | " + " | ".join(PROVIDER_HEADINGS[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for p in pts:
        cells = []
        for n in names:
            t = p.timed.get(n)
            cells.append("-" if t is None else f"{t[0]:.1f} ({t[1]:.1f}%)" if n in WITH_PCT else f"{t[0]:.1f}")
        lines.append(f"| {p.B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables_report(points: dict[Key, Point]) -> str:
    """The tables block: one provider table per (TP, state dtype, layout) in the points."""
    groups = sorted({k[:3] for k in points}, key=lambda g: (g[0], COLUMNS.index(g[1:])))
    return "\n\n".join(provider_table(points, *g) for g in groups)


def plot_points(path: Path, points: dict[Key, Point], headers: dict[str, dict]) -> str | None:
    """A PNG of every table's % of copy bandwidth against B, each provider a line (``benchmarks.run``'s
    plot), from the merged sweeps; returns a note instead where matplotlib is missing."""
    from benchmarks.run import plot

    if not points:
        return "nothing to plot: no point where gdn_ops was timed"
    order = sorted(points, key=lambda k: (k[0], COLUMNS.index(k[1:3]), k[3]))
    records = [{"tp": p.tp, "state_dtype": p.dtype, "layout": p.layout, "B": p.B, "provider": name, "status": "ok",
                "pct_of_copy_bw": pct} for p in (points[k] for k in order) for name, (_, pct) in p.timed.items()]
    bw = sorted(h["copy_bandwidth_Bps"] / 1e12 for h in headers.values())
    gpus = ", ".join(sorted({h["gpu"] for h in headers.values()}))
    dates = sorted({h["date_utc"][:10] for h in headers.values()})
    title = (f"Gated DeltaNet decode step, {gpus}, copy {bw[0]:.3f}-{bw[-1]:.3f} TB/s; "
             f"{len(headers)} runs of {' to '.join(dict.fromkeys((dates[0], dates[-1])))}")
    return plot(path, {}, records, title=title)


def fits_report(files: list[Path]) -> str:
    """The fits block: each table's time a call as a fixed cost and a rate (``benchmarks.fit_sweeps``)."""
    from benchmarks import fit_sweeps  # it imports this module

    return fit_sweeps.lines_table(files)


# each README block from the merged points, their runs' headers and the source files
BLOCKS = {"targets": lambda points, headers, files: report(points, headers),
          "tables": lambda points, headers, files: tables_report(points),
          "fits": lambda points, headers, files: fits_report(files)}


def readme_block(text: str, name: str = "targets") -> tuple[int, int]:
    """Where the block ``name`` lies in ``text``, between its markers: (start, end) offsets."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    try:
        start = text.index(begin) + len(begin)
        return start, text.index(end, start)
    except ValueError:
        raise ValueError(f"no {begin} ... {end} block") from None


def fill_readme(text: str, points: dict[Key, Point], headers: dict[str, dict], files: list[Path],
                card: str = DEFAULT_CARD) -> str:
    """``text`` with each of ``card``'s blocks (:data:`CARD_BLOCKS`) replaced by what the sweeps say."""
    for name in CARD_BLOCKS[card]:
        start, end = readme_block(text, card_block(name, card))
        text = text[:start] + "\n" + BLOCKS[name](points, headers, files) + "\n" + text[end:]
    return text


def _positive_tbps(text: str) -> float:
    """``--project``'s copy bandwidth in TB/s, above zero."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a copy bandwidth in TB/s above zero (got {text})")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", choices=sorted(CARD_BLOCKS), default=DEFAULT_CARD,
                    help="whose sweeps (its results folder's targets_sources.txt) and README blocks")
    ap.add_argument("--sources", type=Path, help="the sweep files, oldest first (default: the card's)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--check", type=Path, metavar="README", help="exit 1 unless its blocks say what the sweeps do")
    what.add_argument("--update", type=Path, metavar="README", help="rewrite its blocks from the sweeps")
    what.add_argument("--tables", action="store_true", help="print every provider's table instead")
    what.add_argument("--status", action="store_true", help="print every targeted point's verdict instead")
    what.add_argument("--plot", type=Path, metavar="PNG", help="draw every table's %% of copy bandwidth against B")
    what.add_argument("--project", type=_positive_tbps, metavar="TBPS",
                      help="every targeted point's verdict as it would read on a card copying at TBPS TB/s, "
                           "each call keeping its time beyond the copy's rate (a model, not a measurement)")
    args = ap.parse_args(argv)
    args.sources = args.sources or card_sources(args.card)
    files = read_sources(args.sources)
    points, headers = merge(files)
    if args.check or args.update:
        path = args.check or args.update
        text = path.read_text()
        filled = fill_readme(text, points, headers, files, args.card)
        card = "" if args.card == DEFAULT_CARD else f" --card {args.card}"
        if args.update:
            path.write_text(filled)
            names = ", ".join(card_block(name, args.card) for name in CARD_BLOCKS[args.card])
            print(f"{path}: blocks {names} rewritten from {args.sources}")
        elif filled != text:
            print(f"{path}: its blocks differ from the sweeps in {args.sources}; "
                  f"`python -m benchmarks.targets{card} --update {path}` rewrites them")
            return 1
        else:
            print(f"{path}: its blocks match {args.sources}")
    elif args.plot:
        note = plot_points(args.plot, points, headers)
        print(note or f"{args.plot}: written")
    elif args.tables:
        print(tables_report(points))
    elif args.project:
        print(f"on a card copying at {args.project:.2f} TB/s: gdn_ops without / given the order, copy; "
              "verdict there (verdict in the sweeps)")
        for key in sorted(points):
            p = points[key]
            if p.status != "no target":
                q = projected(p, headers[p.source]["copy_bandwidth_Bps"], args.project * 1e12)
                figs = " / ".join("-" if f is None else f"{f:.2f}" for f in q.figures)
                copy = "-" if q.copy_pct is None else f"{q.copy_pct:.2f}"
                print(f"TP={p.tp} {SHORT[p.dtype]} {p.layout} B={p.B}: {figs}, copy {copy}: {q.status} ({p.status})")
    elif args.status:
        for key in sorted(points):
            p = points[key]
            if p.status != "no target":
                note = "; missed without PDL" if p.met_only_with_pdl else ""
                print(f"TP={p.tp} {SHORT[p.dtype]} {p.layout} B={p.B}: {p.status}{note} ({p.source})")
    else:
        print(report(points, headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
