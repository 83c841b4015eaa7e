"""Programmatic dependent launch: the kernel may start while the kernel before it still runs, so
it must read nothing that kernel writes (state pool, slot indices, q/k/v) until ``gdc_wait``.

The kernel before ours here is a deliberately slow writer that lets its dependent launch at
once (``gdc_launch_dependents`` first, then milliseconds of busy work, then the writes),
so a decode kernel that read early would see the old values. The last test runs a mutant that
does read early and checks that these tests catch it.
"""

from __future__ import annotations

import functools

import pytest
import torch
import triton
import triton.language as tl
from decode_case import assert_close_to_reference

from gdn_ops.reference import fused_sigmoid_gating_delta_rule_reference
from gdn_ops.triton_decode import is_sm90_gpu, launch_decode

pytestmark = pytest.mark.gpu

HK, HV, K, V = 2, 4, 128, 128
# Busy-loop steps of the writer: a few milliseconds, far longer than the host takes to launch the
# decode kernel after it (with ~20k steps the writer was done before that launch, and a mutant
# reading early went unnoticed).
SPIN = 1_000_000


@triton.jit
def _slow_writer(src_ptr, dst_ptr, scratch_ptr, n, spin, BLOCK: tl.constexpr):
    """``dst[:n] = src[:n]`` (int32 words), written only after ``spin`` steps of busy work."""
    tl.extra.cuda.gdc_launch_dependents()  # the next (PDL-launched) kernel may start right away
    pid = tl.program_id(0)
    acc = pid
    for _ in range(spin):
        acc = acc * 1664525 + 1013904223
    tl.store(scratch_ptr + pid, acc)  # keeps the loop alive
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=offs < n), mask=offs < n)


def slow_write(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into ``dst`` (same shape, contiguous) from a kernel that writes late."""
    d, s = dst.view(-1).view(torch.int32), src.reshape(-1).view(torch.int32)
    block = 1024
    grid = (triton.cdiv(d.numel(), block),)
    scratch = torch.empty(grid[0], dtype=torch.int32, device=dst.device)
    _slow_writer[grid](s, d, scratch, d.numel(), SPIN, BLOCK=block, num_warps=4)


def _step_inputs(B: int, layout: str, gen: torch.Generator, state_dtype: torch.dtype) -> dict:
    inner = (HV, V, K) if layout == "vk" else (HV, K, V)
    num_slots = B + 3

    def randn(*shape, dtype=torch.float32, std=1.0):
        return (torch.randn(shape, generator=gen) * std).to(dtype=dtype, device="cuda")

    return {
        "q": randn(B, 1, HK, K, dtype=torch.bfloat16, std=2.0), "k": randn(B, 1, HK, K, dtype=torch.bfloat16, std=2.0),
        "v": randn(B, 1, HV, V, dtype=torch.bfloat16), "a": randn(B, 1, HV, dtype=torch.bfloat16),
        "b": randn(B, 1, HV, dtype=torch.bfloat16), "A_log": randn(HV, std=0.5), "dt_bias": randn(HV, std=0.5),
        "pool": randn(num_slots, *inner, dtype=state_dtype),
        "indices": torch.randperm(num_slots, generator=gen)[:B].to(device="cuda", dtype=torch.int32),
    }


def run_after_slow_writer(B: int, layout: str, target: str, launch=launch_decode, steps: int = 3,
                          state_dtype: torch.dtype = torch.float32) -> list:
    """Each step: the slow writer puts new values into ``target`` just before the decode kernel.
    Returns the configurations launched."""
    gen = torch.Generator().manual_seed(B * 7 + len(target))
    live = _step_inputs(B, layout, gen, state_dtype)
    launched = []
    for _ in range(steps):
        new = _step_inputs(B, layout, gen, state_dtype)
        for name in ("q", "k", "v", "a", "b", "pool", "indices"):
            if name != target:
                live[name].copy_(new[name])
        expected_o, expected_pool = fused_sigmoid_gating_delta_rule_reference(
            new["A_log"], new["a"], new["dt_bias"], 1.0, 20.0, new["q"], new["k"], new["v"], new["b"],
            new["pool"], new["indices"], None, True, state_layout=layout, compute_dtype=torch.float64)
        live["A_log"], live["dt_bias"] = new["A_log"], new["dt_bias"]
        out = torch.full((B, 1, HV, V), float("nan"), dtype=torch.bfloat16, device="cuda")
        slow_write(live[target], new[target])
        launched.append(launch(live["q"], live["k"], live["v"], live["a"], live["b"], live["A_log"], live["dt_bias"],
                               live["pool"], live["indices"], out, scale=K**-0.5, use_qk_l2norm_in_kernel=True,
                               state_layout=layout, pdl=True))
        torch.cuda.synchronize()
        assert_close_to_reference("o", out, expected_o, torch.bfloat16)
        assert_close_to_reference("pool", live["pool"], expected_pool, state_dtype)
    return launched


needs_pdl = pytest.mark.skipif(not torch.cuda.is_available() or not is_sm90_gpu(torch.device("cuda")),
                               reason="programmatic dependent launch needs sm_90+")


# B=1: the state is small enough to be prefetched into L2 before the wait; B=48: it is not.
@needs_pdl
@pytest.mark.parametrize("target", ["pool", "indices", "q", "v"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("B", [1, 48])
def test_reads_wait_for_the_kernel_before(B, layout, target):
    run_after_slow_writer(B, layout, target)


@needs_pdl
@pytest.mark.parametrize("kernel", ["triton", "gluon-small", "gluon-large", "gluon-tile", "gluon-tile-small",
                                    "gluon-vk-tile", "gluon-tile-sorted", "gluon-vk-tile-sorted", "vk-tile-sorted"])
@pytest.mark.parametrize("target", ["pool", "indices", "q", "v"])
def test_tma_kernel_reads_wait_for_the_kernel_before(target, kernel):
    """A bf16 pool at B*HV = 1024, through each TMA kernel and tile (kv, and vk for the Gluon vk kernel),
    and the tiles that take the rows in slot order (a sort kernel between the writer and the decode)."""
    from gdn_ops import gluon_decode_kv as gluon
    from gdn_ops import gluon_decode_kv_tile as tile
    from gdn_ops.gluon_decode_vk_tile import VK_2B_TILE_TWO_WARP_CONFIG
    from gdn_ops.triton_decode import DecodeConfig
    from gdn_ops.triton_decode_tma import KV_2B_CONFIG

    config = {"triton": KV_2B_CONFIG, "gluon-small": gluon.KV_2B_GLUON_CONFIG,
              "gluon-large": gluon.KV_2B_GLUON_LARGE_CONFIG, "gluon-tile": tile.KV_2B_TILE_CONFIG,
              "gluon-tile-small": tile.KV_2B_TILE_SMALL_CONFIG,
              "gluon-vk-tile": VK_2B_TILE_TWO_WARP_CONFIG,
              "gluon-tile-sorted": tile.KV_2B_TILE_CONFIG._replace(sort_rows=True),
              "gluon-vk-tile-sorted": VK_2B_TILE_TWO_WARP_CONFIG._replace(sort_rows=True),
              "vk-tile-sorted": DecodeConfig(BV=8, BK=128, num_warps=1, sort_rows=True)}[kernel]
    layout = "vk" if "vk" in kernel else "kv"
    launched = run_after_slow_writer(1024 // HV, layout, target, launch=functools.partial(launch_decode, config=config),
                                     steps=2, state_dtype=torch.bfloat16)
    assert launched == [config, config]


@needs_pdl
@pytest.mark.parametrize("target", ["pool", "q"])
def test_a_kernel_that_reads_before_the_wait_is_caught(target):
    from benchmarks.variants import load_variant

    mutant = load_variant("mutant_read_before_wait").launch_decode
    with pytest.raises(AssertionError):
        run_after_slow_writer(1, "vk", target, launch=mutant)


def _early_tile_launch(BV: int, variant: str | None = None):
    """The launcher (or ``variant``'s) with the early tile forced: the operands-first order, ``BV``
    value rows on one warp."""
    from benchmarks.variants import load_variant
    from gdn_ops.triton_decode import DecodeConfig

    config = DecodeConfig(BV=BV, BK=K, num_warps=1, operands_first=True, early_tile=True)
    return functools.partial(load_variant(variant).launch_decode if variant else launch_decode, config=config)


# B=8 at HV=4: a state small enough for the L2 prefetch before the wait (the early slot read), and
# enough rows that the writer's new slots differ from the old somewhere in every step.
@needs_pdl
@pytest.mark.parametrize("target", ["indices", "pool"])
@pytest.mark.parametrize("BV", [16, 32])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_early_tile_takes_the_slot_read_after_the_wait(state_dtype, BV, target):
    """The early tile (``DecodeConfig.early_tile``) loads the tile at the slot read before the PDL
    wait and keeps it only where the slot's read after the wait agrees: with the indices (or the
    pool) rewritten late by the kernel before, the later read must win."""
    run_after_slow_writer(8, "kv", target, launch=_early_tile_launch(BV), state_dtype=state_dtype)


@needs_pdl
def test_an_early_tile_that_ignores_the_slot_read_after_the_wait_is_caught():
    with pytest.raises(AssertionError):
        run_after_slow_writer(8, "kv", "indices", launch=_early_tile_launch(16, "mutant_early_tile_unchecked"))
