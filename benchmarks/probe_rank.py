"""How long the slot-order kernels take on their own, back to back in one CUDA graph.

    python -m benchmarks.probe_rank --batches 64 128 256 512 1024 2048

``checked``: ``triton_slot_order.slot_order`` (many programs, each counting its rows' ranks, and
after the previous kernel's end a second read of the slots); ``snapshot``:
``snapshot_slot_order`` (one program sorting one read of the slots); ``--variants`` adds the
snapshot order of ``SLOT_ORDER_VARIANTS`` (benchmarks/variants.py) as ``snapshot:<name>``. Each call sorts the same
shuffled slots with padding; with no PDL here, a call's time is its kernel's whole latency from
launch to end, which under PDL in a decode the count or sort before the wait hides in part. Prints
microseconds a call (median of the replays) and writes ``<out>/<tag>.json`` with the device and
versions.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from pathlib import Path

import torch
import triton

from benchmarks.timing import time_graph_replay
from benchmarks.variants import load_variant
from gdn_ops.triton_slot_order import slot_order, snapshot_slot_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", nargs="*", type=int, default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--calls", type=int, default=100, help="launches in the graph")
    ap.add_argument("--replays", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="probe_rank")
    ap.add_argument("--variants", nargs="*", default=[], help="SLOT_ORDER_VARIANTS whose snapshot order to time too")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    records = []
    for B in args.batches:
        slots = torch.randperm(B + B // 4, generator=gen)[:B].to(torch.int32)
        slots[torch.rand(B, generator=gen) < 0.05] = -1
        slots = slots.cuda()
        num_slots = B + B // 4
        expected = torch.sort(slots, stable=True).indices.to(torch.int32)
        kernels = {"checked": functools.partial(slot_order, slots),
                   "snapshot": functools.partial(snapshot_slot_order, slots, num_slots)}
        for variant in args.variants:
            module = load_variant(variant)
            kernels[f"snapshot:{variant}"] = functools.partial(module.snapshot_slot_order, slots, num_slots)
        for name, kernel in kernels.items():
            assert torch.equal(kernel()[1], expected), f"{name} at B={B}: rows out of slot order"
            timing = time_graph_replay([kernel] * args.calls, replays=args.replays)
            records.append({"B": B, "kernel": name, "us": timing.p50_us})
            print(f"B={B:5d} {name:24s} {timing.p50_us:7.2f} us", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "calls": args.calls, "records": records}
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
