"""Decode demo: run the fused op on the Qwen3-Next shape, check it against the float64 reference and
time it. On a GPU it runs the Triton kernel (timed under CUDA-graph replay); on CPU the PyTorch kernel.

    python -m gdn_ops.demo [--batch B] [--state-dtype float32|bfloat16] [--layout vk|kv] [--steps N]
"""

from __future__ import annotations

import argparse
import time

import torch

import gdn_ops


def _inputs(B: int, HK: int, HV: int, K: int, V: int, act: torch.dtype, device: str, gen: torch.Generator):
    def r(*shape, std=1.0):
        return (torch.randn(shape, generator=gen) * std).to(device=device, dtype=act)

    return {
        "A_log": torch.randn(HV, generator=gen).to(device), "a": r(B, 1, HV), "dt_bias": torch.randn(HV, generator=gen).to(device),
        "softplus_beta": 1.0, "softplus_threshold": 20.0, "q": r(B, 1, HK, K), "k": r(B, 1, HK, K), "v": r(B, 1, HV, V), "b": r(B, 1, HV),
    }


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--batch", type=int, default=64 if cuda else 4)
    p.add_argument("--heads", default="16,32", help="key heads,value heads (Qwen3-Next TP=1: 16,32)")
    p.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layout", default="vk", choices=["vk", "kv"])
    p.add_argument("--steps", type=int, default=8, help="decode steps run and checked")
    args = p.parse_args(argv)

    device = "cuda" if cuda else "cpu"
    B, (HK, HV), K, V = args.batch, map(int, args.heads.split(",")), 128, 128
    state_dtype = getattr(torch, args.state_dtype)
    gen = torch.Generator().manual_seed(0)
    num_slots = 2 * B + 3
    inner = (HV, V, K) if args.layout == "vk" else (HV, K, V)
    pool = torch.randn((num_slots, *inner), generator=gen).to(device=device, dtype=state_dtype)
    ref_pool = pool.double()
    indices = torch.randperm(num_slots, generator=gen)[:B].to(device=device, dtype=torch.int32)
    if B > 1:
        indices[B // 2] = -1  # a padding row, as CUDA-graph padding produces
    # the slot order an engine computes once per step for all its GDN layers (these slots stay put)
    order = gdn_ops.slot_order(indices)

    # Several decode steps against the float64 reference, which carries its own state.
    worst_o = worst_state = 0.0
    for _ in range(args.steps):
        step = _inputs(B, HK, HV, K, V, torch.bfloat16, device, gen)
        o = gdn_ops.fused_sigmoid_gating_delta_rule_update(
            **step, initial_state_source=pool, initial_state_indices=indices,
            use_qk_l2norm_in_kernel=True, state_layout=args.layout, initial_state_order=order)
        o_ref, ref_pool = gdn_ops.fused_sigmoid_gating_delta_rule_reference(
            **step, initial_state_source=ref_pool, initial_state_indices=indices,
            use_qk_l2norm_in_kernel=True, state_layout=args.layout, compute_dtype=torch.float64)
        worst_o = max(worst_o, _rel_err(o, o_ref))
        worst_state = max(worst_state, _rel_err(pool, ref_pool))
        ref_pool = pool.double()  # re-sync so each step's error is measured, not bf16 drift
    tol = {torch.float32: 1e-2, torch.bfloat16: 2e-2, torch.float16: 1e-2}[state_dtype]
    ok = worst_o < tol and worst_state < tol

    # Timing: CUDA-graph replay on GPU (what engines do), wall clock on CPU.
    step = _inputs(B, HK, HV, K, V, torch.bfloat16, device, gen)
    out = torch.empty(B, 1, HV, V, device=device, dtype=torch.bfloat16)

    def call():
        gdn_ops.fused_sigmoid_gating_delta_rule_update(
            **step, initial_state_source=pool, initial_state_indices=indices,
            use_qk_l2norm_in_kernel=True, state_layout=args.layout, out=out, initial_state_order=order)

    reps = 50 if cuda else 5
    if cuda:
        call()  # compile and warm up before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                call()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        us = start.elapsed_time(end) * 1e3 / reps
        where = torch.cuda.get_device_name()
    else:
        call()
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        us = (time.perf_counter() - t0) * 1e6 / reps
        where = "CPU (PyTorch kernel)"
    live = B - 1 if B > 1 else 1
    state_bytes = 2 * live * HV * K * V * pool.element_size()
    print(f"gdn_ops decode demo on {where}: B={B} HK={HK} HV={HV} K=V={K} state={args.state_dtype} layout={args.layout}")
    print(f"  {args.steps} steps vs float64 reference: max rel. error o {worst_o:.2e}, state {worst_state:.2e} "
          f"-> {'OK' if ok else 'FAILED'}")
    print(f"  {us:.1f} us per call (warm L2 {'graph replay' if cuda else 'wall clock'}), "
          f"{state_bytes / us / 1e3:.1f} GB/s of state traffic")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
