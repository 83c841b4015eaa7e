"""What a decode call costs the kernel after it: each call followed by a GEMM of a layer's size.

The benchmark chains decode calls, so whatever one call leaves in L2 (dirty rows, lines marked by
a cache-policy hint) is met by the next decode call. In a model the decode is followed by the
layer's other kernels, which stream their own weights. This script times, interleaved and cold
as ``tune_decode`` does, graphs whose every call is a decode on its own pool followed by
``y = x @ W`` on its own weight (``x [B, K]``, ``W [K, N]`` in the activations' dtype; the
default is the size of Qwen3-Next's linear-attention input projection, 2048 x 12288), beside the
same decodes alone and the GEMMs alone. ``(decode + GEMM) - decode`` is what the GEMM costs after
that decode; a kernel change that moves cost into its neighbour shows there and not in the
benchmark. ``(decode + GEMM) - GEMM`` is what a decode costs in a model's order, each one after a
GEMM rather than after another decode (the benchmark's graphs chain decodes, each starting under
the one before with PDL): printed and recorded with its % of the copy bandwidth, as the targets
read it.

    python -m benchmarks.neighbour_gemm --dtypes bfloat16 --layouts vk --batches 256 \\
        --specs t16:1:16:24:8:sort t16:1:16:24:8:el:sort --variants vk_tile_cs_store --step-order
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.providers import (
    Config,
    Provider,
    launcher_provider,
    make_problem,
    passing,
    reference,
)
from benchmarks.timing import copy_bandwidth
from benchmarks.tune_decode import (
    add_grid_arguments,
    add_timing_arguments,
    dtype_name,
    time_as_asked,
    timing_options,
    tuning_grid,
)
from benchmarks.tune_tma import parse_spec, spec_variant_providers
from benchmarks.tuning_results import write_results

GEMM_ONLY = "gemm"


def gemm_factory(K: int, N: int):
    """``make(cfg, inputs)`` of one call's GEMM: a fresh random ``W [K, N]`` and ``x [cfg.B, K]``
    in the activations' dtype (each call its own weight, so every GEMM reads it cold, as each layer
    of a model reads its own), returning the call."""

    def make(cfg: Config, inputs: dict):
        device, dtype = inputs["q"].device, cfg.act_dtype
        w = torch.randn(K, N, device=device, dtype=dtype)
        x = torch.randn(cfg.B, K, device=device, dtype=dtype)
        y = torch.empty(cfg.B, N, device=device, dtype=dtype)
        return lambda: torch.mm(x, w, out=y)

    return make


def with_gemm(provider: Provider, K: int, N: int) -> Provider:
    """``provider`` with each call followed by its own GEMM (:func:`gemm_factory`); a call returns
    what the decode returned."""
    gemm = gemm_factory(K, N)

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict):
        decode, after = provider.make(cfg, pool, indices, inputs), gemm(cfg, inputs)

        def step():
            out = decode()
            after()
            return out

        return step

    return Provider(f"{provider.name}+gemm", make, provider.layouts)


def gemm_only(K: int, N: int) -> Provider:
    """The GEMMs alone, one a call, for scale."""
    gemm = gemm_factory(K, N)
    return Provider(GEMM_ONLY, lambda cfg, pool, indices, inputs: gemm(cfg, inputs), yardstick=True)


def decode_after_gemm(times: dict[str, float], names: list[str], nbytes: int, copy_bw: float) -> dict[str, list[float]]:
    """Each decode's ``[us, % of copy bandwidth]`` in a model's order: its graph of decode + GEMM
    pairs less the GEMMs' graph, both timed in the same rounds (us a call)."""
    out = {}
    for name in names:
        us = times[name + "+gemm"] - times[GEMM_ONLY]
        out[name] = [us, 100 * nbytes / (us * 1e-6) / copy_bw if us > 0 else float("nan")]
    return out


def decode_providers(specs: list[str], variants: list[str], layout: str, step_order: bool,
                     without_pdl: bool = False) -> list[Provider]:
    """The launcher's default and each spec (``tune_tma``'s syntax) with each variant of its
    kernel that ``variants`` names, given the slot order when ``step_order``; with ``without_pdl``
    also the default launched without programmatic dependent launch (``+no_pdl``): after a GEMM,
    what the PDL launch itself costs or saves."""
    suffix = "+order" if step_order else ""
    providers = [launcher_provider("default" + suffix, step_order=step_order)]
    if without_pdl:
        providers.append(launcher_provider("default" + suffix + "+no_pdl", pdl=False, step_order=step_order))
    for spec in specs:
        config = parse_spec(spec)
        providers.append(launcher_provider(spec + suffix, config=config, step_order=step_order))
        providers += spec_variant_providers(spec, config, variants, layout, step_order)
    return providers


def gemm_shape(text: str) -> tuple[int, int]:
    """``--gemm``'s ``K:N``, two positive integers."""
    try:
        K, N = map(int, text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gemm expects K:N, two integers (got {text!r})") from None
    if K <= 0 or N <= 0:
        raise argparse.ArgumentTypeError(f"--gemm expects K:N, both positive (got {text!r})")
    return K, N


def main() -> None:
    ap = argparse.ArgumentParser()
    add_grid_arguments(ap, batches=[256], dtypes=["bfloat16"], layouts=["vk"])
    ap.add_argument("--specs", nargs="*", default=[], metavar="tune_tma's spec")
    ap.add_argument("--variants", nargs="*", default=[], help="variants of benchmarks/variants.py, at each spec")
    ap.add_argument("--step-order", action="store_true", help="give each decode the step's slot order")
    ap.add_argument("--without-pdl", action="store_true", help="also the default launched without PDL")
    ap.add_argument("--gemm", type=gemm_shape, default=(2048, 12288), metavar="K:N", help="the GEMM after each decode")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="neighbour_gemm")
    ap.add_argument("--mem-budget-gb", type=float, default=40.0)
    add_timing_arguments(ap)
    args = ap.parse_args()
    K, N = args.gemm
    bw = copy_bandwidth()
    records = []
    for cfg in tuning_grid(args):
        problem = make_problem(cfg, "cuda")
        decodes, failed = passing(cfg, decode_providers(args.specs, args.variants, cfg.layout, args.step_order,
                                                   args.without_pdl),
                                  problem, reference(cfg, problem))
        runnable = decodes + [with_gemm(p, K, N) for p in decodes] + [gemm_only(K, N)]
        times, replay_failed = time_as_asked(cfg, runnable, args, checked=[p.name for p in runnable])
        failed.update(replay_failed)
        paired = [p.name for p in decodes if p.name in times and p.name + "+gemm" in times]  # both checked on a replay
        after = {n: times[n + "+gemm"] - times[n] for n in paired}
        model_order = decode_after_gemm(times, paired, cfg.bytes_per_call(), bw)
        records.append({"B": cfg.B, "HK": cfg.HK, "HV": cfg.HV, "state": dtype_name(cfg.state_dtype),
                        "layout": cfg.layout, "bytes": cfg.bytes_per_call(), "gemm": [K, N],
                        "errors": failed, "us": times, "gemm_after_decode_us": after,
                        "decode_after_gemm_us_pct": model_order})
        print(f"{dtype_name(cfg.state_dtype):8s} {cfg.layout} B={cfg.B:5d}  gemm alone {times[GEMM_ONLY]:.1f} us  "
              + "  ".join(f"{n} {times[n]:.1f} us, +gemm {times[n + '+gemm']:.1f} (gemm after it {after[n]:.1f}; "
                          f"it after a gemm {model_order[n][0]:.2f} us, {model_order[n][1]:.2f}% of copy)"
                          for n in after), failed or "", flush=True)
    write_results(args.out, args.tag, records, bw, **timing_options(args))


if __name__ == "__main__":
    main()
