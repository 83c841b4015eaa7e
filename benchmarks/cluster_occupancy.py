"""How many CTAs of a thread-block cluster the GPU keeps resident at once, by cluster size.

    python -m benchmarks.cluster_occupancy --out benchmarks/results/h200

Asks the driver (``cuOccupancyMaxActiveClusters``, through Triton's driver utilities: 128 threads
a CTA) for a trivial kernel at several dynamic shared-memory sizes, and sets the answer beside
what the same shared memory allows without clusters (the SM's shared memory over the CTA's,
counting the 1 KB the driver reserves for each CTA). It asks again through ``libcuda`` with each
cluster scheduling policy as a launch attribute (Triton's launcher asks for "spread"); the
answer without a policy must equal Triton's, which checks the structures. The cluster kv prototype
(``benchmarks/kv_cluster.py``) needs many small programs an SM; ncu reported far fewer resident
(NOTES.md, twenty-third session), and this measures that limit without the prototype.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
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


# cuda.h: CUlaunchAttributeID and CUclusterSchedulingPolicy values
_CLUSTER_DIMENSION, _CLUSTER_SCHEDULING_POLICY_PREFERENCE = 4, 5
POLICIES = {"default": 0, "spread": 1, "load_balancing": 2}


class _LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: the id, 4 bytes of padding, a 64-byte union (8-byte aligned)
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint64 * 8)]


class _LaunchConfig(ctypes.Structure):
    # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("sharedMemBytes", ctypes.c_uint),
                ("hStream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint)]


@functools.cache
def _libcuda() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def max_active_clusters_with_policy(shared: int, cluster: int, policy: str | None) -> int:
    """:func:`max_active_clusters` asked of ``libcuda`` directly, with the cluster scheduling
    ``policy`` (a :data:`POLICIES` key) as a launch attribute, or none."""
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"max_active_clusters_with_policy: policy must be None or one of {sorted(POLICIES)}; "
                         f"got {policy!r}")
    max_active_clusters(shared, cluster)  # compiles, loads and sets the dynamic shared memory limit
    x = torch.zeros(1, device="cuda")
    function = _noop.warmup(x, grid=(1,)).function
    attrs = (_LaunchAttribute * 2)()
    attrs[0].id = _CLUSTER_DIMENSION
    attrs[0].value[0] = cluster | (1 << 32)  # clusterDim {x, y, z} = {cluster, 1, 1}
    attrs[0].value[1] = 1
    attrs[1].id = _CLUSTER_SCHEDULING_POLICY_PREFERENCE
    attrs[1].value[0] = POLICIES[policy] if policy else 0
    config = _LaunchConfig((ctypes.c_uint * 3)(cluster, 1, 1), (ctypes.c_uint * 3)(128, 1, 1), shared, None,
                           attrs, 2 if policy else 1)
    count = ctypes.c_int(-1)
    status = _libcuda().cuOccupancyMaxActiveClusters(ctypes.byref(count), ctypes.c_void_p(function),
                                                  ctypes.byref(config))
    if status != 0:
        raise RuntimeError(f"cuOccupancyMaxActiveClusters returned CUresult {status}")
    return count.value


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
            if max_active_clusters_with_policy(shared, cluster, None) != clusters:
                raise RuntimeError("libcuda's answer without a policy differs from Triton's: the structures are wrong")
            by_policy = {name: max_active_clusters_with_policy(shared, cluster, name) for name in POLICIES}
            rows.append({"shared": shared, "cluster": cluster, "max_active_clusters": clusters,
                         "ctas_per_sm": clusters * cluster / sms, "ctas_per_sm_by_shared_memory": by_shared,
                         "max_active_clusters_by_policy": by_policy})
            print(f"shared {shared:6d} B  cluster {cluster}: {clusters:5d} clusters, "
                  f"{clusters * cluster / sms:5.2f} CTAs an SM (shared memory alone: {by_shared}); by policy "
                  + ", ".join(f"{name} {n}" for name, n in by_policy.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    header = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "sms": sms,
              "shared_memory_per_sm": sm_shared}
    path.write_text(json.dumps({"header": header, "records": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
