"""EXPERIMENT: the persistent TMA kernel (gdn_ops/triton_decode_tma.py) beside the shipped kernel.

python -m benchmarks.tma_probe --batches 128 512 --specs 32:4:3:4 ...  (BV:warps:stages:programs/SM[:iN inputs through TMA, 0-3][:s pointer store])
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import torch

from benchmarks.providers import Config, check, launcher_provider, make_problem, reference
from benchmarks.timing import copy_bandwidth
from benchmarks.tune_decode import time_interleaved
from gdn_ops.triton_decode import DecodeConfig, decode_config
from gdn_ops.triton_decode_tma import launch_decode_tma


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"])
    ap.add_argument("--layouts", nargs="*", default=["vk", "kv"])
    ap.add_argument("--specs", nargs="*", default=["32:4:3:4"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="tma_probe")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bw = copy_bandwidth() if device == "cuda" else float("nan")
    records = []
    for state in args.dtypes:
        for layout in args.layouts:
            for B in args.batches:
                cfg = Config(tp=1, HK=16, HV=32, K=128, V=128, B=B, state_dtype=getattr(torch, state), layout=layout)
                problem = make_problem(cfg, device)
                ref = reference(cfg, problem)
                chosen = decode_config(B * 32, 128, 128, cfg.state_dtype, layout)
                provs = [launcher_provider("shipped+pdl", config=chosen, pdl=True)] if device == "cuda" else []
                for spec in args.specs:
                    bv, w, st, pps, *flags = spec.split(":")
                    launch = functools.partial(launch_decode_tma, num_stages=int(st), programs_per_sm=int(pps),
                                               input_tma=next((int(f[1:]) for f in flags if f[0] == "i"), 3),
                                               tma_store="s" not in flags)
                    bv, w = int(bv), int(w)
                    provs.append(launcher_provider(f"tma{spec}", launch, DecodeConfig(bv, 128, w), pdl=device == "cuda"))
                row = {"B": B, "state": state, "layout": layout, "bytes": cfg.bytes_per_call(), "chosen": list(chosen), "res": {}}
                ok = []
                for p in provs:
                    r = check(cfg, p, problem, ref)
                    if r.ok:
                        ok.append(p)
                    else:
                        row["res"][p.name] = {"error": r.message}
                if device == "cuda":
                    times = time_interleaved(cfg, ok, int(40 * 2**30))
                    for p in ok:
                        row["res"][p.name] = {"us": times[p.name], "pct": 100 * cfg.bytes_per_call() / (times[p.name] * 1e-6) / bw}
                else:
                    for p in ok:
                        row["res"][p.name] = {"ok": True}
                print(state, layout, B, json.dumps(row["res"]), flush=True)
                records.append(row)
    header = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "date": __import__("datetime").datetime.now(__import__("datetime").timezone.utc).isoformat(timespec="seconds"),
              "triton": __import__("triton").__version__, "copy_bandwidth_Bps": bw}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, args.tag + ".json"), "w") as f:
        json.dump({"header": header, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
