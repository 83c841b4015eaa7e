"""Triton decode kernel for Gated DeltaNet, and its launcher.

One program owns one (batch row, value head, block of BV value rows) and keeps that
``[BV, K]`` slice of the state in registers for all T tokens: the state is read once and written
once, which is all but ~1% of the bytes. Per token (fp32 math whatever the storage dtype)::

    S = S * exp(g);  u = beta * (v - S k);  S = S + u k^T;  o = S q

with ``o`` computed from the old tile on most tiles (``DecodeConfig.from_old_state``).

The launcher is the only place that turns arguments into constexpr flags and tile sizes; the
kernel and tile choice is a pure function of shape, dtype, layout, strides and GPU (no
autotuning), so a launch inside a CUDA-graph capture is the same launch as the warm-up's. On the
GPUs they were measured on (the H200, and the H100 with the H200's tables), it hands over to a
Gluon kernel of one program per tile: in the kv layout (``gluon_decode_kv_tile.py``, from B*HV =
512) and in the vk layout (``gluon_decode_vk_tile.py``, from B*HV = 1024, or smaller grids of an
fp32 pool in slot order). On other sm_90+ GPUs a 2-byte kv state goes to the persistent Triton
kernel (``triton_decode_tma.py``, from B*HV = 16384). The persistent
Gluon kernel (``gluon_decode_kv.py``) runs when its configuration is passed.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gdn_ops.gluon_decode_kv import (
    GluonKVConfig,
    gluon_reason,
    launch_decode_kv_gluon,
)
from gdn_ops.gluon_decode_kv_tile import (
    GluonTileConfig,
    launch_decode_kv_tile,
    tile_config,
    tile_reason,
)
from gdn_ops.gluon_decode_vk_tile import (
    launch_decode_vk_tile,
    vk_tile_config,
    vk_tile_reason,
)
from gdn_ops.reference import L2NORM_EPS
from gdn_ops.triton_decode_tma import (
    H200_TABLE_CARDS,
    PersistentConfig,
    launch_decode_kv_tma,
    persistent_config,
    tuning_gpu_name,
    unsupported_reason,
)
from gdn_ops.triton_gating import decode_gates, head_gate_params
from gdn_ops.triton_slot_order import slot_order, snapshot_slot_order, sorts_rows
from gdn_ops.triton_step import delta_rule_step, delta_rule_step_from_old_state

# Programmatic dependent launch (sm_90+): GDN_OPS_PDL=0 turns it off for every launch.
PDL_ENABLED = os.environ.get("GDN_OPS_PDL", "1") != "0"
# Under PDL the state tile is prefetched into L2 before the wait only when the whole call's state
# is this small: measured on an H200, the prefetch gains up to 4 MiB (B <= 2 fp32, B <= 4 bf16 at
# TP=1) and loses from 8 MiB (NOTES.md). Why it loses is not established.
PREFETCH_MAX_STATE_BYTES = 4 << 20


@triton.jit
def _prefetch_l2(ptrs):
    """Ask L2 for the lines under ``ptrs``: no registers, no ordering, cannot fault the kernel."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr,
    state_ptr, indices_ptr, rows_ptr, o_ptr,
    T, num_slots, scale, softplus_beta, softplus_threshold,
    s_qb, s_qt, s_qh, s_qk,
    s_kb, s_kt, s_kh, s_kk,
    s_vb, s_vt, s_vh, s_vv,
    s_ab, s_at, s_ah,
    s_bb, s_bt, s_bh,
    s_slot, s_head,
    s_ob, s_ot, s_oh, s_ov,
    s_A, s_dt,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, STATE_VK: tl.constexpr,
    HAS_INDICES: tl.constexpr, L2_EPS: tl.constexpr,
    PDL: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr,
    FROM_OLD_STATE: tl.constexpr, SORTED_ROWS: tl.constexpr, STATE_ALIGN: tl.constexpr,
    OPERANDS_FIRST: tl.constexpr, EARLY_TILE: tl.constexpr,
):
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0)
    v_block = pid % NV
    row_head = pid // NV
    # with SORTED_ROWS, indices_ptr holds the slots in ascending order and rows_ptr their rows
    rank = (row_head // HV).to(tl.int64)
    hv = row_head % HV
    h = hv // GROUP

    offs_k = tl.arange(0, BK)
    offs_v = v_block * BV + tl.arange(0, BV)
    mask_k = offs_k < K
    mask_v = offs_v < V

    if STATE_VK:
        tile = offs_v[:, None] * K + offs_k[None, :]
    else:
        tile = offs_k[None, :] * V + offs_v[:, None]
    head_offset = hv.to(tl.int64) * s_head

    if PREFETCH:
        # Until gdc_wait() returns, what the previous kernel writes (indices, pool, q/k/v) may
        # still change, so nothing read here is used except as a prefetch address. L2 is coherent,
        # so a prefetched line is never stale; the ".cg" load keeps the early index out of L1,
        # where the read after the wait could otherwise find it.
        if HAS_INDICES:
            early_slot = tl.load(indices_ptr + rank, cache_modifier=".cg").to(tl.int64)
        else:
            early_slot = rank
        if (early_slot >= 0) & (early_slot < num_slots):
            # one pointer per line of LINE elements (128 bytes, or the tile's width if narrower)
            if STATE_VK:
                offs_line = tl.arange(0, BK // LINE) * LINE
                line_tile = offs_v[:, None] * K + offs_line[None, :]
                line_mask = mask_v[:, None] & (offs_line < K)[None, :]
            else:
                offs_line = v_block * BV + tl.arange(0, BV // LINE) * LINE
                line_tile = offs_k[None, :] * V + offs_line[:, None]
                line_mask = (offs_line < V)[:, None] & mask_k[None, :]
            head_ptr = state_ptr + early_slot * s_slot + head_offset
            _prefetch_l2(tl.where(line_mask, head_ptr + line_tile, head_ptr))
    if PDL:
        # Launched beside the previous kernel's last programs, this waits for it to finish; then
        # the next kernel may launch beside this one. Triggering before the wait instead let a
        # chain of launches pile up ahead: ~1 us more per call at B=1 in the kv layout (NOTES.md).
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()

    if OPERANDS_FIRST:
        # One token, rows as given (the launcher's promise): its operands are asked for before the
        # slot, so that their loads from DRAM do not wait behind the slot's round trip. In the
        # other order ptxas issued some of them only once the slot was back (the state's address
        # needs it), which at B=1 cost a kv call ~0.1 us on the H100 (NOTES.md, sixtieth session).
        # Kept as stored until the step (see the token loop). Volatile with EARLY_TILE (below).
        q_first = tl.load(q_ptr + rank * s_qb + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0, volatile=EARLY_TILE)
        k_first = tl.load(k_ptr + rank * s_kb + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0, volatile=EARLY_TILE)
        v_first = tl.load(v_ptr + rank * s_vb + hv * s_vh + offs_v * s_vv, mask=mask_v, other=0.0, volatile=EARLY_TILE)
        gate_a_first = tl.load(gate_a_ptr + rank * s_ab + hv * s_ah, volatile=EARLY_TILE)
        gate_b_first = tl.load(gate_b_ptr + rank * s_bb + hv * s_bh, volatile=EARLY_TILE)
        neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING, EARLY_TILE)
        if EARLY_TILE:
            # Speculation on the slot read before the wait (PREFETCH, HAS_INDICES: the launcher's
            # promise): the tile at that slot is asked for now, beside the operands, and kept below
            # only where the slot's read after the wait agrees. Every byte kept is read after the
            # wait. Volatile loads keep their program order, so every one of them is asked for
            # before the first wait on any (ptxas otherwise hoisted the slot's compare above the
            # tile's loads); this takes the slot's round trip off the path to the state at small
            # grids (NOTES.md, sixty-first and sixty-second sessions).
            early_ok = (early_slot >= 0) & (early_slot < num_slots)
            early_base = tl.multiple_of(tl.where(early_ok, early_slot, 0) * s_slot + head_offset, STATE_ALIGN)
            S_early = tl.load(state_ptr + early_base + tile, mask=(mask_v[:, None] & mask_k[None, :]) & early_ok,
                              other=0.0, volatile=True)
    if SORTED_ROWS:
        row = tl.load(rows_ptr + rank).to(tl.int64)
        # the order may come from the caller: a row outside the batch is dropped, nothing read or
        # written for it
        in_batch = (row >= 0) & (row < tl.num_programs(0) // (NV * HV))
        row = tl.where(in_batch, row, 0)
    else:
        row = rank
        in_batch = True
    if HAS_INDICES:
        slot = tl.load(indices_ptr + rank, volatile=EARLY_TILE).to(tl.int64)
        read_slot = slot
        # Out-of-range indices (-1 padding, a stale vLLM null slot past the pool) are padding rows:
        # the pool is never read or written for them, and their output is zero.
        valid = (slot >= 0) & (slot < num_slots) & in_batch
        slot = tl.where(valid, slot, 0)
    else:
        slot = row
        valid = row >= 0

    # STATE_ALIGN: elements that the slot and head strides are both multiples of (state_alignment),
    # which Triton sees by itself only at multiples of 16; a page-strided pool then still stores
    # 16-byte vectors
    state_ptrs = state_ptr + tl.multiple_of(slot * s_slot + head_offset, STATE_ALIGN) + tile
    state_mask = (mask_v[:, None] & mask_k[None, :]) & valid
    # Otherwise the state load is issued first: it is ~99% of the bytes and everything else hides
    # under it.
    if EARLY_TILE:
        # the slot changed under the wait (the kernel before rewrote the indices): its own tile
        S = S_early
        if read_slot != early_slot:
            S = tl.load(state_ptrs, mask=state_mask, other=0.0)
        S = S.to(tl.float32)
    else:
        S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)

    if not OPERANDS_FIRST:
        neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)

    for t in range(T):
        if not OPERANDS_FIRST:
            q = tl.load(q_ptr + row * s_qb + t * s_qt + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0).to(tl.float32)
            k = tl.load(k_ptr + row * s_kb + t * s_kt + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + row * s_vb + t * s_vt + hv * s_vh + offs_v * s_vv, mask=mask_v, other=0.0).to(tl.float32)
            gate_a = tl.load(gate_a_ptr + row * s_ab + t * s_at + hv * s_ah).to(tl.float32)
            gate_b = tl.load(gate_b_ptr + row * s_bb + t * s_bt + hv * s_bh).to(tl.float32)
        else:
            # Widened here, where they are used: widened as loaded, q and k's move into the tile's
            # layout (through shared memory, behind a barrier that waits for their loads) came
            # ahead of the slot's load
            q, k, v = q_first.to(tl.float32), k_first.to(tl.float32), v_first.to(tl.float32)
            gate_a, gate_b = gate_a_first.to(tl.float32), gate_b_first.to(tl.float32)
        g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)
        if FROM_OLD_STATE:
            S, o = delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
        else:
            S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
        o = tl.where(valid, o, 0.0)
        tl.store(o_ptr + row * s_ob + t * s_ot + hv * s_oh + offs_v * s_ov,
                 o.to(o_ptr.dtype.element_ty), mask=mask_v & in_batch)

    # Streaming store (.cs): the written state is not re-read by this launch, so it should not
    # displace lines other programs still need. ~0.2 us at small B with a bf16 state, neutral
    # elsewhere in the interleaved sweep (NOTES.md).
    tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=".cs")


class DecodeConfig(NamedTuple):
    """Tile of one program: ``BV`` value rows by ``BK`` (next power of two >= K) keys.

    ``from_old_state`` takes the step's ``o`` from the old tile
    (``triton_step.delta_rule_step_from_old_state``), otherwise from the updated one. ``sort_rows``
    runs the rows in ascending slot order (``triton_slot_order``; only with ``indices``), at the
    cost of one more small launch unless the caller gives the order. ``maxnreg`` caps registers
    per thread (ptxas ``.maxnreg``), for tuning experiments: the tables leave it unset, as caps
    measured slower (NOTES.md). ``operands_first`` loads a one-token step's q, k, v and gates
    before the slot, then the state (the launcher applies it at T = 1 with the rows as given).
    ``early_tile`` adds to that order the tile at the slot read before the PDL wait, kept where the
    slot's read after the wait agrees (the launcher applies it where the call prefetches and has
    slot indices; otherwise it changes nothing).
    """

    BV: int
    BK: int
    num_warps: int
    maxnreg: int | None = None
    from_old_state: bool = True
    sort_rows: bool = False
    operands_first: bool = False
    early_tile: bool = False


# Tiles tuned on an H200 (benchmarks/tune_decode.py; NOTES.md has the sweeps).
# "vk" (K contiguous): one warp over ~4 KB of state won at every batch size. The K reductions stay
# inside the warp (shuffles, no shared memory), and many small programs keep more independent
# loads in flight than a few large ones. Up to SMALL_GRID_ROW_HEADS (row, head) pairs the grid is
# too small to fill the GPU, so V is split further (BV=4). Under PDL that pays only at B*HV = 32:
# at 64 the 4 KB tile was 4% (fp32) and 21% (bf16) faster (NOTES.md).
VK_TILE_BYTES = 4096
SMALL_GRID_ROW_HEADS = 32


class LargeGridTile(NamedTuple):
    """A vk tile for large grids: from B*HV ``start``, ``tile_bytes`` of state over ``num_warps``
    warps; ``from_old_state`` as :class:`DecodeConfig`'s."""

    start: int
    tile_bytes: int
    num_warps: int
    from_old_state: bool = True


# Large vk grids, by (GPU name part, state element size). "" is every GPU; a later entry that also
# matches wins.
VK_LARGE_GRID_TILES = {
    # 8 KB tiles (BV=32 at K=128) ran ~2.5% faster at B=128 and 512 (H200, under PDL). A bf16 tile
    # widened to fp32 needs twice the registers per byte, so the register file, not the
    # 32-programs-per-SM limit, caps the bytes in flight, and a larger tile keeps more of them in
    # flight per register. Taking o from the old state ran 12% slower on this tile (H200,
    # results/h200/tune_bf16_vk_bv32_two_pass.json: 75.7 against 84.9% at B=128, 80.8 against 90.7%
    # at 1024; 242 registers against 168).
    ("", 2): LargeGridTile(4096, 8192, 1, from_old_state=False),
    # H100 (80GB HBM3; results/h100/tune_tiles_fp32_vk_h100*.json, two runs): 16 KB tiles of 2
    # warps (BV=32) ran 1-1.4% faster than the 4 KB tile from B*HV = 8192 (B=256 at TP=1), level
    # with SGLang's kernel there, both at ~98% of copy bandwidth.
    ("H100", 4): LargeGridTile(8192, 16384, 2),
}
# "kv" (V contiguous): the tile must be wide in V for coalesced rows, and the K reduction then
# crosses threads; (max B*HV, BV, warps) by state element size, first row that fits wins.
KV_TILES = {
    4: ((128, 16, 1), (512, 32, 2), (None, 64, 4)),
    2: ((32, 16, 1), (512, 32, 1), (None, 32, 2)),
}
# Every tile takes o from the old state (H200, NOTES.md eleventh session: 1-7% faster from B=1 to
# 64 in the sweep, within 0.8 points from B=128) except the 2-byte vk large-grid tile above and an
# fp32 vk state with 2-byte activations over this B*HV range, by GPU name, which keep o from the
# updated state: there the old-state step was 1.5-1.8% slower at B*HV = 256 (three runs), and
# 1.1-1.9 points faster at 1024 and 2048 (results/h200/tune_sort_fp32_vk*.json, TP=1 and 4).
# The H100 too: at TP=4 fp32 vk B=32 (B*HV 256) +1.8 / +1.7 points (results/h100/ot_*_1077935.json).
VK_4B_NEW_STATE_ROWS = dict.fromkeys(H200_TABLE_CARDS, (256, 511))
# One token's q, k, v and gates loaded before the slot (``DecodeConfig.operands_first``) in the kv
# layout up to this B*HV, by GPU name; against the slot first (NOTES.md, sixtieth session):
# - H100, the grid (results/h100/gridkv_h100_7ce25a0 against grid_h100_96345f7): TP=1 B=1 fp32
#   -0.06..-0.09 us, bf16 -0.15; B=2 -0.22 / -0.24; TP=4 B=1-8 (B*HV 8-64) -0.05..-0.37;
# - H200, the same order as a variant (results/h200/sfh_*_h200_94ec832.json): TP=1 B=1 -0.12 / -0.10,
#   B=2 -0.32 / -0.23; TP=4 B*HV 8-64 -0.08..-0.30; at B*HV 128 +0.06..+0.30 (both TPs), within that
#   run's lean against the variant (its round order; NOTES.md); vk level.
OPERANDS_FIRST_ROW_HEADS = dict.fromkeys(H200_TABLE_CARDS, 64)
# In the operands-first order a kv tile of 32 value rows and one warp (16 KB of fp32 state, 8 KB of
# bf16) beats KV_TILES' 16 rows from B*HV = 17: half as many programs, each waiting once on the
# same operands and slot. By GPU name, {state element size: (first B*HV, last B*HV, BV, warps)},
# within OPERANDS_FIRST_ROW_HEADS. H100, seeds 0 and 1 (results/h100/k32_*_h100_f24e9eb.json), us
# against BV16: fp32 B*HV 32 -0.16 (TP=1) / -0.10 (TP=4), 64 -0.31 / -0.33, but 8 and 16 +0.21 /
# +0.11 (32 and 64 programs); bf16 B*HV 32 -0.07 / -0.14 (from 33 KV_TILES has it already).
# Two warps (the key sums through shared memory) beat one at bf16 B*HV 32 without the early tile
# (results/h100/w2_*_h100_dc068ca.json: -0.12 us TP=1, -0.06 TP=4), but one warp with the early
# tile (below) beats both: against two warps, seeds 0 and 1 (results/h100/et_*_h100_c7b99b8.json),
# -0.016 / -0.017 us at TP=1 B=1, -0.099 / -0.105 at TP=4 B=4. fp32 +0.07 / +0.01..+0.04 on two warps.
# Only under PDL, whose L2 prefetch before the wait the larger tile leans on: launched without it,
# BV32 took 0.8-0.9 us more than BV16 at fp32 B*HV 32-64 (results/h100/gridkv_h100_1858da2.json).
# Not measured on the H200, which keeps KV_TILES.
KV_OPERANDS_FIRST_TILES = {"H100": {4: (17, 64, 32, 1), 2: (17, 32, 32, 1)}}
# The early tile (``DecodeConfig.early_tile``) in the operands-first order under PDL, by GPU name,
# {state element size: last B*HV}. H100, as benchmarks/variants.py's ``early_tile_volatile``
# (results/h100/sp_tp4_h100_d94786c.json, k32_tp4_h100_f24e9eb.json), us, on the 16-row tiles:
# fp32 B*HV 8 -0.19 / -0.19, 16 -0.21 / -0.20; bf16 8 -0.15 / -0.16, 16 -0.22 / -0.21; the shipped
# path again (results/h100/et_tp4*_h100_c7b99b8.json): fp32 8 -0.18, 16 -0.20; bf16 8 -0.15, 16
# -0.21 (two seeds each). On the 32-row tiles above, fp32 (one warp) lost 0.02-0.08 us at B*HV 32
# and 64 (k32_*, et_tp4*); bf16 on one warp gained: against BV32 one warp without it, B*HV 32
# -0.13 / -0.13 (TP=1, et_tp1*) and -0.16 / -0.16 (TP=4), 64 -0.04 / -0.05 (TP=1 B=2, k32_tp1*) and
# -0.06 (TP=4 B=8, one seed).
# The path compiles (Triton 3.6, sm_90) to the very SASS of that variant (BV16 and BV32, fp32 and
# bf16; NOTES.md, sixty-second session), and passed its own PDL tests on the H100 (BV16 and BV32,
# fp32 and bf16, the indices and the pool rewritten late; sixty-third session).
KV_EARLY_TILE_ROW_HEADS = {"H100": {4: 16, 2: 64}}


@functools.cache
def decode_config(rows_x_heads: int, K: int, V: int, state_dtype: torch.dtype, state_layout: str,
                  gpu: str = "", act_itemsize: int = 2, given_order: bool = False,
                  heads: int | None = None, pdl: bool = True) -> DecodeConfig:
    """Deterministic tile choice from shape, dtype, layout, GPU name (``gpu``, e.g.
    ``torch.cuda.get_device_name()``; empty: the default tables), the bytes of an activation
    element (q's), whether the caller gives the slot order and the heads a row (HV; None: the sort
    rules for any number of heads only) and whether the call is launched with PDL (``pdl``); never
    autotuned. Cached: the launcher asks on every call."""
    BK = triton.next_power_of_2(K)
    early_tile = False
    operands_first = state_layout == "kv" and any(
        name in gpu and rows_x_heads <= limit for name, limit in OPERANDS_FIRST_ROW_HEADS.items())
    if state_layout == "kv":
        itemsize = min(4, max(2, state_dtype.itemsize))
        BV, num_warps = next((bv, w) for limit, bv, w in KV_TILES[itemsize] if limit is None or rows_x_heads <= limit)
        if operands_first and pdl:
            for name, tiles in KV_OPERANDS_FIRST_TILES.items():
                tile = tiles.get(itemsize)
                if name in gpu and tile is not None and tile[0] <= rows_x_heads <= tile[1]:
                    BV, num_warps = tile[2], tile[3]
            early_tile = any(name in gpu and rows_x_heads <= limits.get(itemsize, 0)
                             for name, limits in KV_EARLY_TILE_ROW_HEADS.items())
        new_state = False
    else:
        tile = LargeGridTile(0, VK_TILE_BYTES, 1)
        for (name, itemsize), large in VK_LARGE_GRID_TILES.items():
            if name in gpu and itemsize == state_dtype.itemsize and rows_x_heads >= large.start:
                tile = large
        BV = 4 if rows_x_heads <= SMALL_GRID_ROW_HEADS else max(4, tile.tile_bytes // (BK * state_dtype.itemsize))
        num_warps = tile.num_warps
        new_state = not tile.from_old_state or (state_dtype.itemsize == 4 and act_itemsize == 2 and any(
            name in gpu and first <= rows_x_heads <= last for name, (first, last) in VK_4B_NEW_STATE_ROWS.items()))
    return DecodeConfig(BV=min(BV, triton.next_power_of_2(V)), BK=BK, num_warps=num_warps, from_old_state=not new_state,
                        sort_rows=sorts_rows(gpu, state_layout, state_dtype.itemsize, rows_x_heads, given_order, heads),
                        operands_first=operands_first, early_tile=early_tile)


def launch_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_a: torch.Tensor,
    gate_b: torch.Tensor,
    A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    state: torch.Tensor,
    indices: torch.Tensor | None,
    out: torch.Tensor,
    *,
    scale: float,
    use_qk_l2norm_in_kernel: bool,
    state_layout: str,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
    config: DecodeConfig | PersistentConfig | GluonKVConfig | GluonTileConfig | None = None,
    pdl: bool | None = None,
    order: torch.Tensor | None = None,
) -> DecodeConfig | PersistentConfig | GluonKVConfig | GluonTileConfig:
    """Launch the decode kernel on validated arguments; returns the configuration it launched.

    ``gate_a, gate_b [B, T, HV]`` are ``a, b`` when ``A_log`` is given (gating fused in-kernel),
    else precomputed ``g, beta``. ``state`` is the pool, updated in place; ``out [B, T, HV, V]``
    receives the output (zeros for padding rows).

    ``config`` picks the kernel: a :class:`DecodeConfig` the per-tile kernel, a
    :class:`~gdn_ops.triton_decode_tma.PersistentConfig` the persistent TMA kernel (kv layout,
    T == 1, TMA-addressable operands), a :class:`~gdn_ops.gluon_decode_kv.GluonKVConfig` the
    persistent Gluon kernel (the same operands, sm_90+ only), a
    :class:`~gdn_ops.gluon_decode_kv_tile.GluonTileConfig` a Gluon kernel of one program per tile
    (the same operands in the kv layout, ``gluon_decode_kv_tile``; in the vk layout
    ``gluon_decode_vk_tile``, which also needs a TMA-addressable v); by default
    :func:`default_config` decides.

    ``order [2, B]`` (:func:`~gdn_ops.triton_slot_order.slot_order` of ``indices``, computed once
    per engine step) is the slot order a configuration that sorts its rows reads instead of
    launching the rank kernel; other configurations ignore it. Its rows are bounds-checked in the
    kernel: a row outside the batch is dropped.

    ``pdl`` (default: on for sm_90+ unless ``GDN_OPS_PDL=0``) launches with programmatic
    dependent launch: the kernel starts beside the previous kernel's tail, prefetches its state
    tile into L2 when the call's state is at most ``PREFETCH_MAX_STATE_BYTES``, and reads nothing
    that kernel may write until the previous kernel has finished.
    """
    B, T, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    fused_gating = A_log is not None
    if pdl is None:
        pdl = default_pdl(state.device)
    if config is None:
        config = default_config(q, k, v, state, state_layout, given_order=order is not None, pdl=bool(pdl))
    elif isinstance(config, (PersistentConfig, GluonKVConfig, GluonTileConfig)):
        reason = tma_config_reason(q, k, v, state, state_layout, config)
        if reason is not None:
            raise ValueError(f"launch_decode: config={config} needs {reason}")
    rows = None
    sorts = indices is not None and getattr(config, "sort_rows", False)  # DecodeConfig, GluonTileConfig
    if sorts and order is not None:
        # the kernel then reads the slots in ascending order, and each program's row from rows
        indices, rows = order
    elif indices is not None and not indices.is_contiguous():
        # every kernel reads the slots as a dense vector; a strided view (a column of a larger
        # tensor) is copied first, a small kernel that CUDA-graph capture records like any other
        indices = indices.contiguous()
    batch_indices = None
    if sorts and rows is None and getattr(config, "snapshot_order", False):
        # ranked from one read of the slots; the tile checks each row's slot against batch_indices
        batch_indices = indices
        indices, rows = snapshot_slot_order(indices, state.shape[0], pdl=bool(pdl))
    elif sorts and rows is None and not getattr(config, "rank_in_program", False):
        indices, rows = slot_order(indices, pdl=bool(pdl))
    if isinstance(config, GluonTileConfig):
        launch = launch_decode_vk_tile if state_layout == "vk" else launch_decode_kv_tile
        return launch(
            q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, scale=scale,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
            softplus_threshold=softplus_threshold, config=config, pdl=pdl, l2_eps=L2NORM_EPS, rows=rows,
            batch_indices=batch_indices,
        )
    if isinstance(config, GluonKVConfig):
        return launch_decode_kv_gluon(
            q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, scale=scale,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
            softplus_threshold=softplus_threshold, config=config, pdl=pdl, l2_eps=L2NORM_EPS,
        )
    if isinstance(config, PersistentConfig):
        return launch_decode_kv_tma(
            q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, scale=scale,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
            softplus_threshold=softplus_threshold, config=config, pdl=pdl, l2_eps=L2NORM_EPS,
        )
    grid = (B * HV * triton.cdiv(V, config.BV),)
    if grid[0] == 0:
        return config
    launch_options = {"launch_pdl": True} if pdl else {}
    prefetch = bool(pdl) and rows is None and B * HV * K * V * state.element_size() <= PREFETCH_MAX_STATE_BYTES
    # the operands-first order loads one token's operands (and the row as given)
    operands_first = config.operands_first and T == 1 and rows is None
    if config.maxnreg is not None:
        launch_options["maxnreg"] = config.maxnreg
    _decode_kernel[grid](
        q, k, v, gate_a, gate_b,
        A_log if fused_gating else gate_a, dt_bias if fused_gating else gate_a,
        state, indices if indices is not None else state, rows if rows is not None else state, out,
        T, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        *q.stride(), *k.stride(), *v.stride(), *gate_a.stride(), *gate_b.stride(),
        state.stride(0), state.stride(1), *out.stride(),
        A_log.stride(0) if fused_gating else 0, dt_bias.stride(0) if fused_gating else 0,
        HV=HV, GROUP=HV // HK, K=K, V=V, BK=config.BK, BV=config.BV,
        FUSED_GATING=fused_gating, USE_L2NORM=bool(use_qk_l2norm_in_kernel),
        STATE_VK=state_layout == "vk", HAS_INDICES=indices is not None, L2_EPS=L2NORM_EPS,
        PDL=bool(pdl), SORTED_ROWS=rows is not None,
        PREFETCH=prefetch,
        LINE=min(128 // state.element_size(), config.BK if state_layout == "vk" else config.BV),
        FROM_OLD_STATE=config.from_old_state, STATE_ALIGN=state_alignment(state),
        OPERANDS_FIRST=operands_first,
        # the early tile needs the slot read before the wait (the prefetch's) and the order above
        EARLY_TILE=config.early_tile and operands_first and prefetch and indices is not None,
        num_warps=config.num_warps, **launch_options,
    )
    return config


def state_alignment(state: torch.Tensor) -> int:
    """The most elements, up to 16 bytes' worth and a power of two, that the pool's slot and head
    strides (``state.stride(0)``, ``stride(1)``) are both multiples of. Metadata only."""
    # the gcd of a power of two with anything is a power of two
    return math.gcd(state.stride(0), state.stride(1), max(1, 16 // state.element_size()))


def tma_config_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, state_layout: str,
                      config: PersistentConfig | GluonKVConfig | GluonTileConfig) -> str | None:
    """Why the TMA kernel ``config`` names cannot run these operands (its kernel's own checks, then
    an sm_90+ GPU for the Gluon kernels), or ``None`` if it can. Metadata only."""
    if isinstance(config, GluonTileConfig) and state_layout == "vk":
        reason = vk_tile_reason(q, k, v, state, state_layout, config)
    else:
        reason = unsupported_reason(q, k, state, state_layout, config)
        if reason is None and isinstance(config, (GluonKVConfig, GluonTileConfig)):
            reason = (gluon_reason if isinstance(config, GluonKVConfig) else tile_reason)(q, state, config)
    if reason is None and not isinstance(config, PersistentConfig) and not is_sm90_gpu(state.device):
        return "an sm_90+ GPU"
    return reason


def default_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                   state_layout: str, given_order: bool = False,
                   pdl: bool = True) -> DecodeConfig | PersistentConfig | GluonTileConfig:
    """What :func:`launch_decode` launches when given no ``config``: :func:`tile_config` (kv) or
    :func:`vk_tile_config` (vk), with the rows in slot order where ``triton_slot_order.sorts_rows``
    says (from smaller grids when the caller gives the order, ``given_order``), else
    :func:`persistent_config` (each returns only a configuration these operands can run on this
    GPU), else :func:`decode_config` (for a launch with PDL or without, ``pdl``). Reads shapes,
    strides and the device only."""
    B, _, _, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    gpu = gpu_name(state.device)
    sort = sorts_rows(gpu, state_layout, state.element_size(), B * HV, given_order, HV)
    tile = (tile_config(q, k, state, state_layout, B * HV)
            or vk_tile_config(q, k, v, state, state_layout, B * HV, sorted_rows=sort))
    if tile is not None:
        return tile._replace(sort_rows=True) if sort else tile
    return (persistent_config(q, k, state, state_layout, B * HV)
            or decode_config(B * HV, K, V, state.dtype, state_layout, gpu, q.element_size(), given_order, HV,
                             pdl))


@functools.cache
def gpu_name(device: torch.device) -> str:
    """The name the tile tables are keyed by (``triton_decode_tma.tuning_gpu_name``: the CUDA
    device's own unless ``GDN_OPS_TUNING_GPU`` names another); empty off the GPU. Cached: the
    launcher asks on every call."""
    if device.type != "cuda":
        return ""
    return tuning_gpu_name(device.index)


def default_pdl(device: torch.device) -> bool:
    """Whether a launch on ``device`` uses programmatic dependent launch unless told otherwise."""
    return PDL_ENABLED and is_sm90_gpu(device)


@functools.cache
def is_sm90_gpu(device: torch.device) -> bool:
    """A real sm_90+ GPU (not Triton's interpreter): what programmatic dependent launch and the
    Gluon kernel need."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9
