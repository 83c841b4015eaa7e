"""How many CTAs of a thread-block cluster the GPU keeps resident at once, by cluster size.

    python -m benchmarks.cluster_occupancy --out benchmarks/results/h200

Asks the driver (``cuOccupancyMaxActiveClusters``, through Triton's driver utilities: 128 threads
a CTA) for a trivial kernel at several dynamic shared-memory sizes, and sets the answer beside
what the same shared memory allows without clusters (the SM's shared memory over the CTA's,
counting the 1 KB the driver reserves for each CTA). The cluster kv prototype
(``benchmarks/kv_cluster.py``) needs many small programs an SM; ncu reported far fewer resident
(NOTES.md, twenty-third session), and this measures that limit without the prototype.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def _noop(x_ptr):
    tl.store(x_ptr + tl.program_id(0), 0)


def max_active_clusters(shared: int, cluster: int) -> int:
    """The driver's ``cuOccupancyMaxActiveClusters`` for :func:`_noop` with ``shared`` bytes of
    dynamic shared memory in clusters of ``cluster`` CTAs of 128 threads."""
    x = torch.zeros(1, device="cuda")
    compiled = _noop.warmup(x, grid=(1,))
    compiled._init_handles()
    return triton.runtime.driver.active.utils.cuOccupancyMaxActiveClusters(compiled.function, shared, cluster)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="cluster_occupancy")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    sm_shared = props.shared_memory_per_multiprocessor
    rows = []
    for shared in (1024, 8 * 1024, 12 * 1024, 20 * 1024, 33 * 1024):
        by_shared = min(32, sm_shared // (shared + 1024))  # 32: sm_90's CTAs an SM
        for cluster in (1, 2, 4, 8):
            clusters = max_active_clusters(shared, cluster)
            rows.append({"shared": shared, "cluster": cluster, "max_active_clusters": clusters,
                         "ctas_per_sm": clusters * cluster / sms, "ctas_per_sm_by_shared_memory": by_shared})
            print(f"shared {shared:6d} B  cluster {cluster}: {clusters:5d} clusters, "
                  f"{clusters * cluster / sms:5.2f} CTAs an SM (shared memory alone: {by_shared})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    header = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "sms": sms,
              "shared_memory_per_sm": sm_shared}
    path.write_text(json.dumps({"header": header, "records": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
