"""Launch the decode op a few times at one benchmark point, for Nsight Compute to profile.

    ncu --clock-control none --kernel-name regex:_decode_ --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python -m benchmarks.profile_decode --batch 512 --state-dtype bf16 --layout vk

The first launches compile and warm up; ncu's default cache control flushes L2 before the
profiled launch, so it sees the cold-L2 case the benchmark times. ``--no-pdl`` launches without
programmatic dependent launch. ``--stream 1:c1024`` launches ``benchmarks.probe_stream``'s register
stream of that spec on the same pool instead (no arithmetic), to profile beside the decode. Off a
GPU it runs on the CPU (Triton's interpreter), which only checks that the launches run.
``--pools 3`` gives each launch the next of three pools (and inputs), as the benchmark's rotation
does, so that under ``--cache-control none`` the profiled launch inherits another pool's dirty L2
lines rather than its own state.
``--tile 16:1:sort`` profiles a tile of the per-tile Triton kernel (``benchmarks.tune_decode``'s
tile syntax), and ``--variant`` takes that kernel's VARIANTS too, at the given tile or the table's.
``--spec s8:1:sort`` launches the split-K kv prototype (``benchmarks.kv_split``), ``--spec
c2:128:4:8:8:sort`` the cluster one (``benchmarks.kv_cluster``).
"""

from __future__ import annotations

import argparse

import torch
import triton

from benchmarks.probe_stream import reg_stream
from benchmarks.providers import Config, launcher_provider, make_problem
from benchmarks.run import DTYPES, GEOMETRY, HEAD_DIM
from benchmarks.tune_decode import parse_tile
from benchmarks.tune_tma import parse_spec, prototype_launch, variant_launch
from benchmarks.variants import (
    GLUON_VARIANTS,
    KV_TILE_VARIANTS,
    TMA_VARIANTS,
    VARIANTS,
    VK_TILE_VARIANTS,
    load_variant,
)
from gdn_ops.gluon_decode_kv import KV_2B_GLUON_CONFIG, GluonKVConfig
from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
from gdn_ops.triton_decode import DecodeConfig, decode_config, default_config, gpu_name
from gdn_ops.triton_decode_tma import KV_2B_CONFIG, PersistentConfig

TILE_VARIANTS = VK_TILE_VARIANTS | KV_TILE_VARIANTS


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--state-dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--layout", choices=("vk", "kv"), default="vk")
    ap.add_argument("--tp", type=int, choices=sorted(GEOMETRY), default=1)
    ap.add_argument("--launches", type=int, default=3)
    ap.add_argument("--pools", type=int, default=1, help="launches rotate through this many pools")
    ap.add_argument("--no-pdl", action="store_true")
    ap.add_argument("--spec", help="a TMA-kernel configuration in benchmarks.tune_tma's spec syntax (64:4:3:4, g64:4:2:4, "
                                   "t128:4:8:6:8), or the split-K or cluster kv prototype's (s8:1:sort, c2:128:4:8:8:sort)")
    ap.add_argument("--tile", metavar="BV:WARPS[:MAXNREG][:new][:sort]", help="a tile of the per-tile Triton kernel")
    ap.add_argument("--variant", help="profile this VARIANTS / TMA_VARIANTS / GLUON_VARIANTS entry of benchmarks/variants.py instead")
    ap.add_argument("--stream", metavar="WARPS[:cCHUNK][:oop][:seq]",
                    help="profile probe_stream's register stream of this spec instead of the decode")
    args = ap.parse_args(argv)
    if args.pools < 1:
        ap.error(f"--pools: at least one pool (got {args.pools})")
    HK, HV = GEOMETRY[args.tp]
    cfg = Config(tp=args.tp, HK=HK, HV=HV, K=HEAD_DIM, V=HEAD_DIM, B=args.batch,
                 state_dtype=DTYPES[args.state_dtype], layout=args.layout)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    problems = [make_problem(cfg, device) for _ in range(args.pools)]
    x = problems[0].inputs
    config = default_config(x["q"], x["k"], x["v"], problems[0].pool, cfg.layout, pdl=not args.no_pdl)
    launch = None
    if args.spec:
        config = parse_spec(args.spec)
        launch = prototype_launch(config)
    if args.tile:
        config = parse_tile(args.tile, triton.next_power_of_2(HEAD_DIM))
    if args.variant in VARIANTS:
        # a patch of the per-tile kernel: always give it a tile, or the launcher may pick another kernel
        launch = load_variant(args.variant).launch_decode
        if not isinstance(config, DecodeConfig):
            gpu = gpu_name(torch.device("cuda")) if torch.cuda.is_available() else ""
            config = decode_config(args.batch * HV, HEAD_DIM, HEAD_DIM, cfg.state_dtype, cfg.layout, gpu,
                                   pdl=not args.no_pdl)
    elif args.variant:
        launch = variant_launch(args.variant)
        if args.variant in GLUON_VARIANTS and not isinstance(config, GluonKVConfig):
            config = KV_2B_GLUON_CONFIG
        elif args.variant in TMA_VARIANTS and not isinstance(config, PersistentConfig):
            config = KV_2B_CONFIG
        elif args.variant in TILE_VARIANTS and not isinstance(config, GluonTileConfig):
            ap.error(f"--variant {args.variant} patches a Gluon tile kernel: give its tile with --spec tBV:...")
    provider = launcher_provider("gdn_ops", launch, config, pdl=False if args.no_pdl else None)
    if args.stream:
        provider = reg_stream(args.stream)
    steps = [provider.make(cfg, p.pool, p.indices, p.inputs) for p in problems]
    for i in range(args.launches):
        steps[i % len(steps)]()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    what = provider.name if args.stream else " ".join(filter(None, [args.variant, str(config)]))
    print(f"{cfg.label()}: {args.launches} launches of {what} over {len(steps)} pool(s), "
          f"{cfg.bytes_per_call() / 1e6:.1f} MB each")


if __name__ == "__main__":
    main()
