"""Two sweeps of ``benchmarks.run`` point by point: what moved between them, and by how much.

Command (no GPU needed; reads JSON only)::

    python -m benchmarks.compare_sweeps OLD.json NEW.json [--providers gdn_ops gdn_ops_step_order] [--min-batch 32]
    python -m benchmarks.compare_sweeps H200.json.gz H100.json --project   # the model against a card's run

For every point both sweeps timed (TP, state dtype, layout, B) and each provider asked for, it
prints % of copy bandwidth old -> new and the change in points, and the change in us a call.
Percentages are of each run's own copy bandwidth, which differs between cards of one model (H200s
have read 4.25 and 4.28 TB/s): the header line gives both, and for the same time a call the slower
card's percentages sit higher (about 0.6 points there). The last line
gives the median change and its range over the printed points. With ``--project`` OLD's figures
are first modelled at NEW's copy bandwidth (``targets.projected``), so that a run on another card
checks the model. Either file may be gzipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks.targets import SHORT, points_of, projected, read_sweep


def compare(old: dict, new: dict, providers: list[str], min_batch: int = 1, project: bool = False) -> list[str]:
    """Report lines for two sweeps' JSON (``{"header", "records"}``), one per shared point and provider;
    ``project`` models ``old`` at ``new``'s copy bandwidth first."""
    a, b = points_of(old, "old"), points_of(new, "new")
    bw = [s["header"]["copy_bandwidth_Bps"] / 1e12 for s in (old, new)]
    if project:
        a = {key: projected(point, bw[0], bw[1]) for key, point in a.items()}
    commits = [s["header"].get("gdn_ops_commit", "?")[:7] for s in (old, new)]
    lines = [(f"gdn_ops {commits[0]} (copy {bw[0]:.3f} TB/s{', modelled at the next' if project else ''}) -> "
              f"{commits[1]} (copy {bw[1]:.3f} TB/s); % of each run's copy bandwidth, points; us a call")]
    changes = []
    for key in sorted(set(a) & set(b)):
        tp, dtype, layout, batch = key
        if batch < min_batch:
            continue
        for name in providers:
            before, after = a[key].timed.get(name), b[key].timed.get(name)
            if before is None or after is None:
                continue
            change = after[1] - before[1]
            changes.append(change)
            lines.append(f"TP={tp} {SHORT.get(dtype, dtype)} {layout} B={batch:<5d} {name:20s} "
                         f"{before[1]:6.2f} -> {after[1]:6.2f} {change:+6.2f}   {after[0] - before[0]:+8.2f} us")
    if not changes:
        lines.append("no point and provider in both sweeps")
    else:
        lines.append(f"{len(changes)} figures: median {statistics.median(changes):+.2f} points, "
                     f"{min(changes):+.2f}..{max(changes):+.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare_sweeps", description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--providers", nargs="+", default=["gdn_ops", "gdn_ops_step_order"])
    ap.add_argument("--min-batch", type=int, default=1, help="leave out smaller batches")
    ap.add_argument("--project", action="store_true", help="model OLD at NEW's copy bandwidth first")
    args = ap.parse_args(argv)
    old, new = read_sweep(args.old), read_sweep(args.new)
    print("\n".join(compare(old, new, args.providers, args.min_batch, args.project)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
