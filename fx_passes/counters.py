"""Match counters and the package logger.

``logging.getLogger("gdn_ops.fx_passes")`` logs one INFO line per rewrite and DEBUG lines for
candidates that were looked at and left alone (and for patterns that could not be set up).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping

log = logging.getLogger("gdn_ops.fx_passes")

_last: dict[str, int] = {}
_total: collections.Counter[str] = collections.Counter()


def record(counts: Mapping[str, int]) -> None:
    """Store the counts of one pass invocation (one FX graph) and add them to the totals."""
    global _last
    _last = dict(counts)
    _total.update({k: v for k, v in counts.items() if v})
    try:
        from torch._dynamo.utils import counters as torch_counters

        for name, n in counts.items():
            if n:
                torch_counters["gdn_ops"][name] += n
    except ImportError:  # pragma: no cover - counters moved
        pass


def last_counts() -> dict[str, int]:
    """Matches per pattern in the graph the pass rewrote last (every pattern listed, zeros too).

    Empty before the pass first runs. A cache hit of Inductor's FX graph cache does not run the
    pass, so a cached compile leaves these as they were.
    """
    return dict(_last)


def total_counts() -> dict[str, int]:
    """Matches per pattern summed over every graph since the last :func:`reset_counts`."""
    return dict(_total)


def reset_counts() -> None:
    global _last
    _last = {}
    _total.clear()
