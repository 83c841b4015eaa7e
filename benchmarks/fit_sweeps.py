"""Each implementation's time a call split into a fixed cost and a rate, fitted over batch sizes.

Command (no GPU needed; reads JSON only)::

    python -m benchmarks.fit_sweeps FILE.json [FILE.json ...] [--min-batch 128] [--names gdn_ops copy]

For every table of a file (TP or HV, state dtype, layout) and every implementation timed at two
batch sizes or more from ``--min-batch``, a least-squares line through its medians:
``us a call = fixed + bytes / rate``. ``fixed`` is what a call costs whatever its size (the ends
of a launch: its start, its drain, the L2 it inherits), ``rate`` the pace of its body, given in %
of the run's copy bandwidth. A % of copy figure at one batch mixes the two; the line says which one
a gap lies in, and where a point misses its target, how small the fixed cost would have to be at
the fitted rate. Files are ``benchmarks.run`` sweeps (records with a ``provider``) or
``tune_tma`` / ``tune_decode`` / probe runs (records with ``results`` by name).

A line fits only where the kernel's choices do not change across the batches fitted (a rule that
turns on between two batches bends it): the largest residual is printed beside each line.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.targets import (
    COLUMNS,
    SHORT,
    TARGET_PCT,
    WITH_PCT,
    points_of,
    read_sweep,
)


@dataclasses.dataclass(frozen=True)
class Fit:
    """One implementation's line over one table's batches."""

    table: str  # "TP=1 bf16 kv" (a sweep) or "HV=32 bf16 kv" (a tuning run); "" if a file says none
    name: str  # the provider, or the tuning run's configuration name
    batches: tuple[int, ...]
    fixed_us: float
    seconds_per_byte: float
    worst_residual_us: float
    copy_bandwidth_Bps: float

    @property
    def rate_pct(self) -> float:
        """The body's pace, in % of the run's copy bandwidth."""
        return 100.0 / (self.seconds_per_byte * self.copy_bandwidth_Bps)

    def fixed_for(self, n_bytes: int, target_pct: float) -> float:
        """The fixed cost (us) at which a call of ``n_bytes`` would read ``target_pct``% of copy
        bandwidth at this line's rate (negative: the rate alone misses it)."""
        return 1e6 * (n_bytes / (target_pct / 100.0 * self.copy_bandwidth_Bps) - n_bytes * self.seconds_per_byte)

    def line(self) -> str:
        bs = f"B={self.batches[0]}-{self.batches[-1]} ({len(self.batches)})"
        res = "exact, 2 points" if len(self.batches) == 2 else f"worst residual {self.worst_residual_us:.2f} us"
        return (f"{self.table:13s} fixed {self.fixed_us:5.2f} us  rate {self.rate_pct:5.1f}% of copy  "
                f"{bs:18s} {self.name}  ({res})")


def _sweep_table(tp: int, state_dtype: str, layout: str) -> str:
    return f"TP={tp} {SHORT.get(state_dtype, state_dtype)} {layout}"


def _timings(doc: dict) -> Iterator[tuple[str, str, int, int, float]]:
    """(table, name, B, bytes, median us) of every timed figure in a file of either kind."""
    for r in doc["records"]:
        if "provider" in r:
            if r.get("status") == "ok" and r.get("p50_us") is not None:
                yield _sweep_table(r["tp"], r["state_dtype"], r["layout"]), r["provider"], r["B"], r["bytes"], r["p50_us"]
            continue
        dtype = r.get("state")
        parts = [f"HV={r['HV']}" if "HV" in r else "", SHORT.get(dtype, dtype or ""), r.get("layout", "")]
        for name, figure in r.get("results", {}).items():
            if isinstance(figure, dict) and figure.get("us") is not None:
                yield " ".join(p for p in parts if p), name, r["B"], r["bytes"], figure["us"]


def fits(doc: dict, min_batch: int = 128, names: list[str] | None = None) -> list[Fit]:
    """The lines of one file (``{"header", "records"}``), one per table and name with two batch
    sizes or more from ``min_batch``; in the file's order of tables, then names."""
    if not isinstance(doc.get("records"), list) or "copy_bandwidth_Bps" not in doc.get("header", {}):
        raise ValueError("expected a benchmarks.run sweep or a tuning / probe run: a JSON object with "
                         "'records' and a 'header' giving copy_bandwidth_Bps")
    points: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}
    for table, name, B, n_bytes, us in _timings(doc):
        if B >= min_batch and (names is None or name in names):
            points.setdefault((table, name), {})[B] = (n_bytes, us)
    bw = doc["header"]["copy_bandwidth_Bps"]
    out = []
    for (table, name), by_batch in points.items():
        if len(by_batch) < 2:
            continue
        batches = tuple(sorted(by_batch))
        xs = [float(by_batch[b][0]) for b in batches]
        ys = [by_batch[b][1] for b in batches]
        slope, fixed = statistics.linear_regression(xs, ys)
        worst = max(abs(fixed + slope * x - y) for x, y in zip(xs, ys))
        out.append(Fit(table, name, batches, fixed, slope * 1e-6, worst, bw))
    return out


def shortfalls(doc: dict, lines: list[Fit]) -> list[str]:
    """For each sweep point under its % target (gdn_ops, with and without the order) that the copy
    of its bytes meets (``benchmarks.targets.Point``), the fixed cost its own line would need."""
    if not any("provider" in r for r in doc["records"]):
        return []  # a tuning or probe run times configurations, not the sweep's providers
    by_key = {(f.table, f.name): f for f in lines}
    n_bytes = {(table, B): size for table, _, B, size, _ in _timings(doc)}
    out = []
    for (tp, dtype, layout, B), point in points_of(doc, "").items():
        table, target = _sweep_table(tp, dtype, layout), TARGET_PCT.get(B)
        if target is None or point.out_of_reach:
            continue
        for name in WITH_PCT:
            fit, timed = by_key.get((table, name)), point.timed.get(name)
            if fit is None or timed is None or B not in fit.batches or timed[1] >= target:
                continue
            out.append(f"{table} B={B} {name}: {timed[1]:.2f}% against {target:.0f}; at its rate "
                       f"({fit.rate_pct:.1f}%) that needs a fixed cost of "
                       f"{fit.fixed_for(n_bytes[table, B], target):.2f} us (fitted {fit.fixed_us:.2f})")
    return out


LINE_NAMES = ("gdn_ops", "gdn_ops_step_order", "copy")


def latest_lines(files: list[Path], min_batch: int = 128) -> dict[str, tuple[str, dict[str, Fit]]]:
    """For each table, the lines of the last of ``files`` (oldest first, as ``benchmarks.targets``
    reads them) whose gdn_ops line has three batch sizes or more: table -> (file stem, name -> line)."""
    out = {}
    for path in files:
        by_table: dict[str, dict[str, Fit]] = {}
        for line in fits(read_sweep(path), min_batch, list(LINE_NAMES)):
            by_table.setdefault(line.table, {})[line.name] = line
        for table, named in by_table.items():
            if "gdn_ops" in named and len(named["gdn_ops"].batches) >= 3:
                out[table] = (path.stem, named)
    return out


def lines_table(files: list[Path], min_batch: int = 128) -> str:
    """Markdown: each table's latest lines (:func:`latest_lines`), fixed us and rate % of copy."""
    rows = ["| table | run | B | gdn_ops | given the order | copy | worst residual, us |", "|---" * 7 + "|"]
    columns = [f"{SHORT[dtype]} {layout}" for dtype, layout in COLUMNS]

    def order(table: str) -> tuple[str, int]:  # by TP, then the targets tables' column order
        tp, _, rest = table.partition(" ")
        return tp, columns.index(rest) if rest in columns else len(columns)

    for table, (stem, named) in sorted(latest_lines(files, min_batch).items(), key=lambda item: order(item[0])):
        cells = [f"{named[n].fixed_us:.2f} us, {named[n].rate_pct:.1f}%" if n in named else "-" for n in LINE_NAMES]
        batches = named["gdn_ops"].batches
        residuals = " / ".join(f"{named[n].worst_residual_us:.2f}" for n in LINE_NAMES if n in named)
        rows.append(f"| {table} | `{stem}` | {batches[0]}-{batches[-1]} | " + " | ".join(cells) + f" | {residuals} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fit_sweeps", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--min-batch", type=int, default=128, help="leave out smaller batches (default 128)")
    ap.add_argument("--names", nargs="+", help="only these providers / configurations")
    args = ap.parse_args(argv)
    for path in args.files:
        doc = read_sweep(path)
        try:
            lines = fits(doc, args.min_batch, args.names)
        except ValueError as e:
            ap.error(f"{path}: {e}")
        print(f"{path.name} (copy {doc['header']['copy_bandwidth_Bps'] / 1e12:.3f} TB/s)")
        print("\n".join("  " + f.line() for f in lines) or "  no name timed at two batch sizes")
        for text in shortfalls(doc, lines):
            print("  " + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
