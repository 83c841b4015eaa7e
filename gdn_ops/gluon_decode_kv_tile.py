"""Gluon decode kernel for the "kv" layout, one short-lived program per tile (not persistent).

The persistent kernel (``gluon_decode_kv.py``) streams tiles through a ring of shared-memory
buffers. Moving the same bytes with one program per head, many of them resident per SM, ran
1.5-2.5% faster on the H100 and the H200 (``benchmarks/probe_stream.py``, NOTES.md). This kernel
is that structure with the step in it. Each program:

1. loads its tile ``[K, BV]`` (with its q and k) into shared memory by ``PARTS`` TMA copies of
   ``K / PARTS`` key rows, issued at once, each on its own barrier; from the rule's thresholds
   (``TileRule.loads_evict_last``) with an evict-last L2 policy, so that the tile's lines are
   still in L2 when step 5 writes them (Gluon cannot express it: see step 5);
2. reads it in steps of ``ROWS`` key rows to sum ``S^T k`` and ``S^T q``, each step as soon as its
   part has landed (so the sums start while later parts are still arriving). Every thread
   accumulates only its own elements, and one in-warp reduction at the end finishes both sums;
3. computes ``u = beta (v - d S^T k)`` and ``o = d S^T q + u (k . q)``, with ``d = exp(g)``
   (the same step as ``triton_step.delta_rule_step``, with ``o`` taken from the old state);
4. reads the rows again and writes ``d S + k u^T`` back in place;
5. sends the tile home by TMA stores, one per part, with an evict-last L2 policy where
   ``store_eviction`` asks for it (no rule does now). Gluon cannot give a TMA copy a policy, so
   the launcher compiles such a binary with its PTX rewritten (``gdn_ops.ptx_rewrite``).

Only a few rows are in registers at a time, so the register file does not limit how many
programs share an SM: shared memory does, about 6 whole bf16 heads or 6 half fp32 ones.

Such a program lives about 12 us (by arithmetic: 6 per SM share its bandwidth), so a launch
ends with SMs emptying slot by slot. With ``GluonTileConfig.tail_split`` the grid's last programs,
which the block scheduler starts last, take pieces of the last whole tiles (``split_grid``,
``tail_tile``): the same step on fewer columns, through the start of the same buffers, so the
launch's end is shorter and occupancy unchanged. The H200 rule cuts 1-2 whole-head or half-head
tiles per SM in quarters and 2 quarter-head tiles per SM in halves (``TileRule``'s tail steps).

A thread reads and writes exactly the elements it owns (one layout for every pass), so the passes
need no barrier between them for correctness (Triton's membar pass still puts one on each side of
every second-pass store, since the steps are views of one buffer). Warps sit side by side along the columns, so no key sum leaves a
warp. The pool is seen in 128-byte chunks of columns as in ``gluon_decode_kv`` (one TMA copy of
consecutive rows per part of a tile). A padded row reads and writes slot ``num_slots``, one past
the pool: TMA zero-fills those loads and drops those stores.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
)

from gdn_ops.gluon_decode_kv import (
    _cta_barrier,
    _gdc_launch_dependents,
    _gdc_wait,
    _in_pool,
    _issue_tile,
    _row_slot_now,
    _tile_columns,
    _tile_inputs,
    _tile_row,
    chunk_columns,
    kv_launch_args,
    kv_state_descriptor,
    lanes_along_keys,
    shared_memory_reason,
)
from gdn_ops.ptx_rewrite import (
    ptx_rewrite,
    tma_state_loads_and_stores_evict_last,
    tma_state_loads_evict_last,
    tma_stores_evict_last,
)
from gdn_ops.triton_decode_tma import (
    H200_TABLE_CARDS,
    sm90_gpu_rule,
    sm_count,
    unsupported_reason,
)
from gdn_ops.triton_gating import decode_gates
from gdn_ops.triton_slot_order import SNAPSHOT_MAX_ROWS


@gluon.jit
def qk_factors(q_smem, k_smem, scale, K: gl.constexpr, flat_layout: gl.constexpr, USE_L2NORM: gl.constexpr,
               L2_EPS: gl.constexpr):
    """``(q_factor, k_factor, k.q)`` of the ``[1, 1, K]`` q and k in shared memory: q and k enter the
    sums as raw values, and their norms and the scale are factors applied after."""
    q_all = q_smem.reshape([K]).load(flat_layout).to(gl.float32)
    k_all = k_smem.reshape([K]).load(flat_layout).to(gl.float32)
    if USE_L2NORM:
        q_factor = scale / gl.sqrt(gl.sum(q_all * q_all, axis=0) + L2_EPS)
        k_factor = 1.0 / gl.sqrt(gl.sum(k_all * k_all, axis=0) + L2_EPS)
    else:
        q_factor = scale
        k_factor = 1.0
    return q_factor, k_factor, gl.sum(k_all * q_all, axis=0) * (k_factor * q_factor)


@gluon.jit
def key_sums(rows_smem, q_keys, k_keys, bars, ROWS: gl.constexpr, STEPS: gl.constexpr, PART: gl.constexpr,
             rows_layout: gl.constexpr, keys_layout: gl.constexpr, phase=0):
    """Each thread's share ``[ROWS, NC, C]`` of ``S^T k`` and ``S^T q`` (raw q, k) over the
    ``STEPS * ROWS`` key rows of ``rows_smem``, a step as soon as its part of ``PART`` rows has
    landed, the barriers' ``phase`` (barrier 0 is waited on before)."""
    NC: gl.constexpr = rows_smem.shape[1]
    C: gl.constexpr = rows_smem.shape[2]
    sk = gl.zeros([ROWS, NC, C], gl.float32, rows_layout)
    sq = gl.zeros([ROWS, NC, C], gl.float32, rows_layout)
    for i in gl.static_range(STEPS):
        if i > 0 and (i * ROWS) % PART == 0:
            mbarrier.wait(bars.index(i * ROWS // PART), phase)
        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)
        sk += S * k_keys.slice(i * ROWS, ROWS).load(keys_layout).to(gl.float32)[:, None, None]
        sq += S * q_keys.slice(i * ROWS, ROWS).load(keys_layout).to(gl.float32)[:, None, None]
    return sk, sq


@gluon.jit
def update_rows(rows_smem, k_keys, k_factor, decay, u, ROWS: gl.constexpr, STEPS: gl.constexpr,
                rows_layout: gl.constexpr, keys_layout: gl.constexpr):
    """Rewrite the ``STEPS * ROWS`` key rows of ``rows_smem`` in place as ``d S + k u^T``."""
    for i in gl.static_range(STEPS):
        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)
        k = k_keys.slice(i * ROWS, ROWS).load(keys_layout).to(gl.float32) * k_factor
        rows_smem.slice(i * ROWS, ROWS).store((S * decay + k[:, None, None] * u[None, :, :]).to(rows_smem.dtype))


@gluon.jit
def _kv_tile(tile, num_tiles, q_desc, k_desc, state_desc, tile_smem, q_smem, k_smem, bars, v_ptr,
             gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
             num_slots, scale, softplus_beta, softplus_threshold,
             s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, batch_indices_ptr,
             HV: gl.constexpr, GROUP: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BV: gl.constexpr,
             C: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_C: gl.constexpr,
             FUSED_GATING: gl.constexpr, USE_L2NORM: gl.constexpr, HAS_INDICES: gl.constexpr,
             L2_EPS: gl.constexpr, SORTED_ROWS: gl.constexpr, PARTS: gl.constexpr, CHECK_SLOTS: gl.constexpr):
    """The step on tile ``tile`` of ``num_tiles`` (``BV`` value columns of one row's head, all K
    keys), through ``tile_smem [1, 1, K, BV // C, C]``, q and k buffers and ``PARTS`` barriers;
    ``state_desc`` moves ``K // PARTS`` key rows of ``BV`` columns at a time."""
    NV: gl.constexpr = V // BV
    NC: gl.constexpr = BV // C
    STEPS: gl.constexpr = K // ROWS
    PART: gl.constexpr = K // PARTS  # key rows per TMA copy, a multiple of ROWS
    # [ROWS, NC, C] rows of the tile: the layout of gluon_decode_kv's whole tile, on fewer rows
    rows_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (NC * LANES_C), NC, LANES_C], [1, 1, WARPS],
                                                 [2, 1, 0])
    keys_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, rows_layout))
    cols_layout: gl.constexpr = gl.SliceLayout(0, rows_layout)
    # every warp holds all of q and k, so their sums stay in the warp
    flat_layout: gl.constexpr = gl.BlockedLayout([max(1, K // 32)], [32], [WARPS], [0])

    # with SORTED_ROWS, indices_ptr holds the slots in ascending order and rows_ptr their rows
    row, in_batch = _tile_row(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)
    slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = _tile_inputs(
        tile, row, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr,
        s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt, NV, HV, BV, C, HAS_INDICES, FUSED_GATING, cols_layout)
    slot = gl.where(in_batch, slot, num_slots)
    if CHECK_SLOTS:
        # the order was ranked from the slots as read before the previous kernel's end: this row's
        # slot as it is now, checked below while the tile's copies are in flight
        slot_now = _row_slot_now(row, in_batch, batch_indices_ptr)
    _issue_tile(tile, slot, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,
                NV, HV, GROUP, NC, PART, PARTS)

    hv = tile // NV % HV
    neg_exp_A = -gl.exp(A_log_in.to(gl.float32))
    g, beta = decode_gates(gate_a_in.to(gl.float32), gate_b_in.to(gl.float32), neg_exp_A,
                           dt_bias_in.to(gl.float32), softplus_beta, softplus_threshold, FUSED_GATING)
    decay = gl.exp(g)
    mbarrier.wait(bars.index(0), 0)
    phase = 0
    if CHECK_SLOTS:
        # where the slot changed, the tile comes again from there once the stale copies have landed
        # (the rows stay a permutation whatever the snapshot saw; only a slot can be stale). Here,
        # after the first part has landed: ptxas hoists the comparison above what comes before it
        # (in the vk tile above copies and loads, which then waited for the slot's read).
        slot_now = _in_pool(slot_now, num_slots)
        if slot_now != slot:
            for j in gl.static_range(1, PARTS):
                mbarrier.wait(bars.index(j), 0)
            _issue_tile(tile, slot_now, row, True, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, 0,
                        NV, HV, GROUP, NC, PART, PARTS)
            mbarrier.wait(bars.index(0), 1)
        phase = (slot_now != slot).to(gl.int32)
        slot = slot_now

    q_factor, k_factor, kq = qk_factors(q_smem, k_smem, scale, K, flat_layout, USE_L2NORM, L2_EPS)
    rows_smem = tile_smem.reshape([K, NC, C])
    k_keys = k_smem.reshape([K])
    sk, sq = key_sums(rows_smem, q_smem.reshape([K]), k_keys, bars, ROWS, STEPS, PART, rows_layout, keys_layout,
                      phase)
    Sk = gl.sum(sk, axis=0) * k_factor
    Sq = gl.sum(sq, axis=0) * q_factor
    u = beta * (v_in.to(gl.float32) - decay * Sk)
    o = decay * Sq + u * kq
    update_rows(rows_smem, k_keys, k_factor, decay, u, ROWS, STEPS, rows_layout, keys_layout)

    o = gl.where(slot < num_slots, o, 0.0)
    cols = (tile % NV) * BV + _tile_columns(BV, C, cols_layout)
    gl.store(o_ptr + row.to(gl.int64) * s_ob + hv * s_oh + cols * s_ov, o.to(o_ptr.dtype.element_ty), mask=in_batch)
    fence_async_shared()
    _cta_barrier()
    # a padded row's slot is one past the pool: TMA drops out-of-bounds writes
    for j in gl.static_range(PARTS):
        tma.async_copy_shared_to_global(state_desc, [slot, hv, j * PART, (tile % NV) * NC, 0],
                                        tile_smem.slice(j * PART, PART, dim=2))
    tma.store_wait(0)


@gluon.jit
def _decode_kv_tile_kernel(
    q_desc, k_desc, state_desc, v_ptr,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, tail_state_desc, whole_tiles,
    batch_indices_ptr,
    HV: gl.constexpr, GROUP: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BV: gl.constexpr,
    C: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_C: gl.constexpr,
    FUSED_GATING: gl.constexpr, USE_L2NORM: gl.constexpr, HAS_INDICES: gl.constexpr,
    L2_EPS: gl.constexpr, PDL: gl.constexpr, SORTED_ROWS: gl.constexpr, PARTS: gl.constexpr,
    TAIL_SPLIT: gl.constexpr, TAIL_C: gl.constexpr, TAIL_ROWS: gl.constexpr, TAIL_PARTS: gl.constexpr,
    STORE_EVICTION: gl.constexpr,  # not read here: it keys the binary whose PTX the launcher rewrites
    LOAD_EVICTION: gl.constexpr,  # the same
    CHECK_SLOTS: gl.constexpr,
):
    tile_smem = gl.allocate_shared_memory(state_desc.dtype, [1, 1, K, BV // C, C], state_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [1, 1, K], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1, 1, K], k_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [PARTS, 1], mbarrier.MBarrierLayout())
    for j in gl.static_range(PARTS):
        mbarrier.init(bars.index(j), count=1)
    if PDL:
        # nothing is read before the previous kernel has finished; the next launch may start then,
        # its programs taking the SM slots this launch's last wave frees (NOTES.md, eighteenth session)
        _gdc_wait()
        _gdc_launch_dependents()

    pid = gl.program_id(0)
    if TAIL_SPLIT == 1 or pid < whole_tiles:
        _kv_tile(pid, num_tiles, q_desc, k_desc, state_desc, tile_smem, q_smem, k_smem, bars, v_ptr,
                 gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
                 num_slots, scale, softplus_beta, softplus_threshold,
                 s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, batch_indices_ptr,
                 HV, GROUP, K, V, BV, C, ROWS, WARPS, VEC, LANES_C, FUSED_GATING, USE_L2NORM, HAS_INDICES,
                 L2_EPS, SORTED_ROWS, PARTS, CHECK_SLOTS)
    else:
        # the grid's last programs (started last) split the remaining whole tiles TAIL_SPLIT ways;
        # numbered as tiles of BV // TAIL_SPLIT columns, whole tile w is tail tiles w * TAIL_SPLIT + j.
        # They see the start of the buffer as their smaller tile (a reinterpretation: Triton 3.6
        # cannot reshape a view of a slice).
        TAIL_BV: gl.constexpr = BV // TAIL_SPLIT
        _kv_tile(pid + whole_tiles * (TAIL_SPLIT - 1), num_tiles * TAIL_SPLIT, q_desc, k_desc, tail_state_desc,
                 tile_smem._reinterpret(state_desc.dtype, [1, 1, K, TAIL_BV // TAIL_C, TAIL_C],
                                        tail_state_desc.layout),
                 q_smem, k_smem, bars, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
                 num_slots, scale, softplus_beta, softplus_threshold,
                 s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, batch_indices_ptr,
                 HV, GROUP, K, V, TAIL_BV, TAIL_C, TAIL_ROWS, WARPS, VEC, TAIL_C // (WARPS * VEC), FUSED_GATING,
                 USE_L2NORM, HAS_INDICES, L2_EPS, SORTED_ROWS, TAIL_PARTS, CHECK_SLOTS)
    for j in gl.static_range(PARTS):
        mbarrier.invalidate(bars.index(j))


class GluonTileConfig(NamedTuple):
    """``BV`` value columns per program (all K keys), read ``rows`` key rows at a time by
    ``num_warps`` warps, each lane ``vec`` contiguous values; ``programs_per_sm`` resident
    programs sets the register cap."""

    BV: int
    num_warps: int
    rows: int
    programs_per_sm: int
    vec: int = 4
    sort_rows: bool = False  # the rows in slot order (triton_slot_order), as DecodeConfig.sort_rows
    parts: int = 1  # kv kernel: the tile's state arrives in this many TMA copies (the vk kernel takes 1)
    # kv kernel: the grid's last programs, which start last, take tiles cut tail_split ways, covering
    # tail_per_sm whole tiles per SM: the launch's last slots then empty sooner (split_grid). The vk
    # kernel takes 1 (no split measured faster there).
    tail_split: int = 1
    tail_per_sm: int = 0
    # the L2 eviction policy the updated rows are stored with: "" or, in the vk kernel, one of
    # Triton's ("evict_first", "evict_last"); in the kv kernel, whose rows leave by TMA stores,
    # "evict_last" (by a PTX rewrite, gdn_ops.ptx_rewrite)
    store_eviction: str = ""
    # vk kernel, with sort_rows: each program ranks the batch's slots itself to find the row at its
    # place, instead of the rank kernel launched before it (small batches only: B^2 comparisons a
    # program, gluon_decode_vk_tile.RANK_IN_PROGRAM_MAX_ROWS); a given slot order is read as usual
    rank_in_program: bool = False
    # with sort_rows and no order given: the rows ranked in one program from the slots as read once,
    # maybe before the previous kernel's end (triton_slot_order.snapshot_slot_order), with no second
    # read after it; each program then checks its own row's slot after its wait and takes its state
    # again where that slot changed (at most triton_slot_order.SNAPSHOT_MAX_ROWS rows). No rule
    # picks it: on the H200 it ran level with the rank kernel at kv and fp32 vk points and 0.5 behind
    # at bf16 vk B=128 (results/h200/sl*_7200a1c.json; NOTES.md, forty-second session)
    snapshot_order: bool = False
    # vk kernel: each program prefetches into L2 the state rows of the tile prefetch_ahead x SMs
    # further on in the grid (0: none)
    prefetch_ahead: int = 0
    # kv kernel: the L2 eviction policy the state's TMA loads carry, "" or "evict_last" (by the PTX
    # rewrite, as store_eviction): a tile's lines then stay in L2 until its program stores them back
    load_eviction: str = ""

    @property
    def maxnreg(self) -> int:
        """Registers per thread that let ``programs_per_sm`` programs share an SM's 64K registers."""
        return min(255, 65536 // (self.programs_per_sm * self.num_warps * 32)) // 8 * 8


def split_grid(config: GluonTileConfig, num_tiles: int, device_index: int) -> tuple[int, int]:
    """``(whole_tiles, grid)`` for ``num_tiles`` tiles of ``config.BV``: programs below
    ``whole_tiles`` take one whole tile each; the rest, ``config.tail_split`` per whole tile, the
    last ``min(num_tiles, tail_per_sm * SMs)`` whole tiles in pieces. Deterministic per GPU."""
    tail = min(num_tiles, config.tail_per_sm * sm_count(device_index)) if config.tail_split > 1 else 0
    return num_tiles - tail, num_tiles + tail * (config.tail_split - 1)


# Tuned with benchmarks/tune_tma.py (results/h200/tune_tile_h200.json, tune_tile_small_h200.json,
# tune_tile_tp4_h200.json; results/h100/tune_tile_h100.json): whole-head tiles (32 KB) of 4 warps
# reading 8 rows at a time in 16-byte vectors, 6 programs per SM, from B*HV = 1024; quarter-head
# tiles (32 columns, 8 KB) of 2 warps from 512, where whole heads leave SMs idle. Below that the
# Triton per-tile kernel is faster (H200 B=8: 6.5 against 6.8 us).
KV_2B_TILE_CONFIG = GluonTileConfig(BV=128, num_warps=4, rows=8, programs_per_sm=6, vec=8)
KV_2B_TILE_SMALL_CONFIG = GluonTileConfig(BV=32, num_warps=2, rows=16, programs_per_sm=12)

# An fp32 state on the H200 (results/h200/tune_tile_fp32_h200.json, tune_tile_fp32_2_h200.json,
# tune_tile_fp32_3_h200.json, tune_tile_fp32_small_h200.json): half-head tiles (64 columns, 32 KB)
# of 4 warps, 8 rows at a time, 6 programs per SM. Against the Triton kernels: +8% at B*HV = 512
# in two runs, +1.0-1.6% at 1024 in three, +0.8% at 2048, +0.3-0.4% at 4096, level from 8192;
# 14-16% slower at 256 in two runs (+7% at 384, one run).
KV_4B_TILE_CONFIG = GluonTileConfig(BV=64, num_warps=4, rows=8, programs_per_sm=6, vec=4)


class TileRule(NamedTuple):
    """From which B*HV :func:`tile_config` picks this kernel on one kind of GPU, and from which its
    tile arrives in :data:`TILE_PARTS` copies."""

    small_from: int  # KV_2B_TILE_SMALL_CONFIG for a 2-byte state from here
    large_from: int  # KV_2B_TILE_CONFIG for a 2-byte state from here
    fp32_from: int | None = None  # KV_4B_TILE_CONFIG for an fp32 state from here (None: the Triton kernel)
    parts_from: int | None = None  # a 2-byte state's tile in TILE_PARTS copies from here (None: one copy)
    fp32_parts_from: int | None = None  # the same for an fp32 state
    # (from B*HV, tail_split, tail_per_sm) steps, ascending: the whole-head 2-byte tile's grid ends
    # in pieces of tail_split (split_grid) covering tail_per_sm whole tiles per SM; () for none
    tail_steps: tuple[tuple[int, int, int], ...] = ()
    small_tail_steps: tuple[tuple[int, int, int], ...] = ()  # the same for the quarter-head 2-byte tile
    fp32_tail_steps: tuple[tuple[int, int, int], ...] = ()  # the same for the fp32 tile
    # a 2-byte state's tile loaded evict-last in L2 from here (None: never); its stores stay plain
    # (an evict-last store, GluonTileConfig.store_eviction, is a tune spec: no rule picks it now)
    loads_evict_last_from: int | None = None
    fp32_loads_evict_last_from: int | None = None  # the same for an fp32 state

    def loads_evict_last(self, itemsize: int, rows_x_heads: int) -> bool:
        """Whether the tile of an ``itemsize``-byte state loads it evict-last at this B*HV."""
        start = self.fp32_loads_evict_last_from if itemsize == 4 else self.loads_evict_last_from
        return start is not None and rows_x_heads >= start


# On the H200 (results/h200/tune_kv_parts_fp32.json, tune_kv_parts_bf16.json, tune_kv_tile_parts_*.json;
# two runs each, rows sorted): the tile in 8 copies against one ran +0.9 / +1.1 / +1.4 points of copy
# bandwidth for an fp32 state at B*HV = 8192 / 16384 / 32768 (+0.4-0.5 at 4096, level at 2048 with 2-4
# copies, 2-3 points slower at 1024), and for a 2-byte state +0.8 / +1.1 at 16384 / 32768 (level at
# 8192, -0.4 at 4096): the sums start on the first rows while the rest are still arriving. The sweep
# after the change (sweep_524a70c against sweep_f6ecb78) moved fp32 kv +0.5 at 4096, where its rows
# are not sorted, and +1.1 / +1.2 / +1.4 above; bf16 kv +0.4 / +0.9 / +1.3 from 8192.
TILE_PARTS = 8

# On the H200 (results/h200/tune_tail_small_*.json, tune_tail_confirm_*.json; NOTES.md, sixteenth
# session): the grid's last whole tiles cut in quarters gain where a launch is a few waves of
# programs, as the last slots empty sooner, and cost where there are too many pieces. Points of copy
# bandwidth against the same tile, sorted or given the order, in two runs: fp32 B*HV 512 +0.8 (1.3
# waves; 2 per SM lose 0.6), 1024-2048 +1.5-3.6 with 2 per SM (+0.6-2.3 with 1), 4096 +1.1-1.3,
# 8192 +0.6-0.7, from 16384 +0.1-0.3; 2-byte 1024 +1.1-1.4 (2 per SM lose 2.9-3.5), 2048-4096
# +1.2-2.3 with 2 per SM (+0.4-0.9 with 1), 8192 +1.0 with 1 per SM (+0.5-0.7 with 2), from 16384
# +0.1-0.5 (2-byte 1024: +0.2 in two later runs, seventeenth session).
# Cut in halves, or with 3 or more per SM, the pieces were level or slower; at 1.3 waves (fp32 512,
# 2-byte 1024) halves of 2 per SM lost about 3 points against no split, and eighths 1.7-3.3
# against the quarters (tune_tail_halves_{fp32,bf16}_*.json, tune_tail_eighths_*.json; eighths
# took a smaller vec, on a branch); the vk tile kernel gained nothing measurable from any split.
# The quarter-head 2-byte tile (results/h200/tune_tail_halves_tp*.json, tune_tail_quarterhead.json;
# NOTES.md, seventeenth session) gains with 2 tiles per SM in halves, in three runs at TP=1 and two
# at TP=4: B*HV 512 +0.7-1.9, 768 +0.7-1.3, 640, 896 and the TP=4 points from 768 within -0.1 to
# +0.5; in quarters it was level or slower.

# The tile's TMA stores with an evict-last L2 policy (results/h200/tune_kv_tma_evict_last_*_b9b0c46.json;
# NOTES.md, twenty-eighth session), against the same tile, sorting or given the order, two runs: from
# B*HV 4096 -0.14..+0.78 points of copy bandwidth (21 of 24 pairs gained; bf16 B=512 +0.5-0.8), at
# 1024 (fp32 B=32, 64 MB of state a call, about the L2) -0.5..-1.1 in all 8. The rule stored so from
# 4096 until the state's loads took the policy instead (below).
# The state's TMA loads evict-last, the stores plain (NOTES.md, forty-seventh session,
# results/h200/el_*_902c0cb.json): a program stores the lines it read about 11 us before, and with L2
# full of the previous call's dirty lines a read line left to the normal policy is often gone by then
# (the loads evict-first lost 4-7 points). Against the stores evict-last, sorting / given the order:
# bf16 B=128 +1.5 / +1.4, B=256 +2.1 / +2.3 (95.5 / 96.2% of copy); with the stores evict-last as
# well +0.8..+1.6, so the stores go plain. Under a second seed at other points (el_*/lel_*_35e0d00.json):
# fp32 B=128 +1.6 / +1.7, bf16 B=512 +3.2 / +3.1, TP=4 bf16 B=512 +1.5 / +1.5, fp32 B=512 +1.7 / +1.9;
# each decode followed by the 48 MB input-projection GEMM (ngl_*_35e0d00.json), the pair 0.5-2.6 us
# faster at bf16 B=128 and 256 and fp32 B=128 given the order. Below 4096, seeds 0 and 1
# (lelb_*_3d11214.json; NOTES.md, forty-eighth session): at B*HV 2048 an fp32 state (128 MB a call)
# +1.6..+1.9, a bf16 one (64 MB) -0.2..+0.2; at 1024 an fp32 state (64 MB) -0.4..-0.6. The policy
# pays from 128 MB of state a call, about twice the L2, whatever the dtype: from 2048 for fp32.


# By GPU name; other GPUs keep the Triton kernels (not measured there). Tuned on the H200; the H100
# takes the same rule (triton_decode_tma.H200_TABLE_CARDS). At TP=1 bf16 B=32 (B*HV 1024) on the
# H100, of eight tile specs given the order the rule's was the best (88.6% of copy; no tail 87.0,
# tail4x2 86.7, evict-last loads 82.6; results/h100/kv32_h100_1077935.json).
H200_TILE_RULE = TileRule(small_from=512, large_from=1024, fp32_from=512, parts_from=8192, fp32_parts_from=4096,
                          tail_steps=((1024, 4, 1), (2048, 4, 2), (8192, 4, 1)), small_tail_steps=((512, 2, 2),),
                          fp32_tail_steps=((512, 4, 1), (1024, 4, 2), (4096, 4, 1)), loads_evict_last_from=4096,
                          fp32_loads_evict_last_from=2048)
TILE_RULES = dict.fromkeys(H200_TABLE_CARDS, H200_TILE_RULE)


@functools.cache
def tile_rule(device_index: int) -> TileRule | None:
    """This GPU's :class:`TileRule`, ``None`` where the kernel is not used. Cached: the launcher
    asks on every call."""
    return sm90_gpu_rule(TILE_RULES, device_index)


def tile_config(q: torch.Tensor, k: torch.Tensor, state: torch.Tensor, state_layout: str,
                rows_x_heads: int) -> GluonTileConfig | None:
    """This kernel's configuration when this GPU's rule picks it and it can run these operands
    (kv state, T == 1, TMA-addressable q, k and pool); ``None`` otherwise. Metadata only."""
    if state_layout != "kv" or state.device.type != "cuda":
        return None
    rule = tile_rule(state.device.index or 0)
    config = None if rule is None else rule_config(rule, state.element_size(), rows_x_heads)
    if config is None or unsupported_reason(q, k, state, state_layout, config) or tile_reason(q, state, config):
        return None
    return config


@functools.cache
def rule_config(rule: TileRule, itemsize: int, rows_x_heads: int) -> GluonTileConfig | None:
    """The configuration ``rule`` picks for a state of ``itemsize``-byte elements at this B*HV,
    ``None`` where it leaves the grid to the Triton kernels. Cached: the launcher asks on every call."""
    if itemsize == 2 and rows_x_heads >= rule.small_from:
        whole_heads = rows_x_heads >= rule.large_from
        config = KV_2B_TILE_CONFIG if whole_heads else KV_2B_TILE_SMALL_CONFIG
        parts_from, tail_steps = rule.parts_from, rule.tail_steps if whole_heads else rule.small_tail_steps
    elif itemsize == 4 and rule.fp32_from is not None and rows_x_heads >= rule.fp32_from:
        config, parts_from, tail_steps = KV_4B_TILE_CONFIG, rule.fp32_parts_from, rule.fp32_tail_steps
    else:
        return None
    if parts_from is not None and rows_x_heads >= parts_from:
        config = config._replace(parts=TILE_PARTS)
    tail = next(((split, per_sm) for start, split, per_sm in reversed(tail_steps) if rows_x_heads >= start), None)
    if tail is not None:
        config = config._replace(tail_split=tail[0], tail_per_sm=tail[1])
    if rule.loads_evict_last(itemsize, rows_x_heads):
        config = config._replace(load_eviction="evict_last")
    return config


def tile_reason(q: torch.Tensor, state: torch.Tensor, config: GluonTileConfig) -> str | None:
    """Why ``config`` cannot run this kernel on these operands beyond TMA's needs
    (``triton_decode_tma.unsupported_reason``), or ``None`` if it can: its layout must cover
    ``[rows, BV]`` row steps that divide K and whole swizzle periods, and ``programs_per_sm``
    programs must fit one SM's shared memory. Metadata only."""
    return snapshot_order_reason(q, config) or _tile_reason(q.shape[-1], state.element_size(), q.element_size(), config)


def snapshot_order_reason(q: torch.Tensor, config: GluonTileConfig) -> str | None:
    """Why ``config.snapshot_order`` cannot order this batch (``q [B, ...]``): more rows than one
    program sorts (``triton_slot_order.SNAPSHOT_MAX_ROWS``); ``None`` if it can or is off."""
    if config.snapshot_order and q.shape[0] > SNAPSHOT_MAX_ROWS:
        return f"at most {SNAPSHOT_MAX_ROWS} rows for snapshot_order, sorted in one program (got B={q.shape[0]})"
    return None


@functools.cache
def _tile_reason(K: int, itemsize: int, qk_itemsize: int, config: GluonTileConfig) -> str | None:
    """:func:`tile_reason` on the metadata it reads (cached: the launcher asks on every call)."""
    lanes_k = lanes_along_keys(config.BV, itemsize, config.num_warps, config.vec)
    if lanes_k is None:
        return (f"BV={config.BV} in chunks of C={chunk_columns(config.BV, itemsize)} columns, C a multiple of "
                f"num_warps*vec={config.num_warps * config.vec} by a power of two")
    # a step of rows must cover whole 1024-byte swizzle blocks (8 rows of 128 bytes; narrower tiles
    # swizzle over fewer bytes, so this is the safe side for them)
    period_rows = max(1, 1024 // (config.BV * itemsize))
    if K % config.rows or config.rows % lanes_k or config.rows % period_rows:
        return (f"rows={config.rows} dividing K={K}, a multiple of the {lanes_k} lanes along the keys and "
                f"of {period_rows} rows (1024 bytes, a whole swizzle block)")
    if config.parts < 1 or K % config.parts or (K // config.parts) % config.rows:
        return f"parts={config.parts} dividing K={K} into parts of whole steps of rows={config.rows} key rows"
    if config.rank_in_program:
        return "rank_in_program=False (only the vk kernel ranks its rows in the program)"
    if config.prefetch_ahead:
        return f"prefetch_ahead=0 (only the vk kernel prefetches a later tile; got {config.prefetch_ahead})"
    if config.store_eviction not in ("", "evict_last"):
        return (f"store_eviction '' or 'evict_last' (the only L2 policy given to this kernel's TMA stores; "
                f"got {config.store_eviction!r})")
    if config.load_eviction not in ("", "evict_last"):
        return (f"load_eviction '' or 'evict_last' (the only L2 policy given to this kernel's TMA loads; "
                f"got {config.load_eviction!r})")
    if config.tail_split < 1 or config.tail_per_sm < 0 or config.BV % config.tail_split:
        return (f"tail_split={config.tail_split} >= 1 dividing BV={config.BV}, and "
                f"tail_per_sm={config.tail_per_sm} >= 0")
    if config.tail_split > 1:
        reason = _tile_reason(K, itemsize, qk_itemsize, tail_tile(config, K, itemsize))
        if reason is not None:
            return f"the tail tiles of tail_split={config.tail_split}: {reason}"
    shared = K * config.BV * itemsize + 2 * K * qk_itemsize + 8 * config.parts
    return shared_memory_reason(shared, config.programs_per_sm, "a tile with q and k")


@functools.cache
def tail_tile(config: GluonTileConfig, K: int, itemsize: int) -> GluonTileConfig:
    """The tile of the grid's last programs under ``config.tail_split``: ``BV / tail_split``
    columns, read in steps of at least ``rows`` key rows that the narrower layout covers (its
    lanes along the keys and a whole swizzle block), in at most ``parts`` copies of whole steps.
    Cached: the launcher asks on every call with a tail."""
    BV = config.BV // config.tail_split
    rows = max(config.rows, lanes_along_keys(BV, itemsize, config.num_warps, config.vec) or 1,
               1024 // (BV * itemsize))
    return config._replace(BV=BV, rows=rows, parts=max(1, min(config.parts, K // rows)), tail_split=1,
                           tail_per_sm=0)


def launch_decode_kv_tile(
    q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *,
    scale: float, use_qk_l2norm_in_kernel: bool, softplus_beta: float, softplus_threshold: float,
    config: GluonTileConfig, pdl: bool, l2_eps: float, rows: torch.Tensor | None = None,
    batch_indices: torch.Tensor | None = None,
) -> GluonTileConfig:
    """Launch the kernel on validated arguments that TMA can address (the checks of
    ``triton_decode_tma.unsupported_reason`` and :func:`tile_reason`): ``state [slots, HV, K, V]``
    in the kv layout, T == 1; sm_90+ only (no interpreter). With ``rows`` (the rows in slot order,
    ``triton_slot_order.slot_order``), ``indices`` are the slots in that order; with
    ``batch_indices`` too (the slots in batch order), ``indices`` and ``rows`` are a snapshot
    order (``triton_slot_order.snapshot_slot_order``) whose slots each program checks."""
    K, V = q.shape[-1], v.shape[3]
    num_tiles = q.shape[0] * v.shape[2] * (V // config.BV)
    if num_tiles == 0:
        return config
    whole_tiles, grid = split_grid(config, num_tiles, state.device.index or 0)
    state_desc = kv_state_descriptor(state, config.BV, K // config.parts)
    args, kwargs = kv_launch_args(
        q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, num_tiles, config=config, scale=scale,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
        softplus_threshold=softplus_threshold, pdl=pdl, l2_eps=l2_eps, state_desc=state_desc)
    tail = tail_tile(config, K, state.element_size()) if grid > whole_tiles else config
    tail_desc = state_desc if tail is config else kv_state_descriptor(state, tail.BV, K // tail.parts)
    with l2_policy(config):
        _decode_kv_tile_kernel[(grid,)](*args, rows if rows is not None else state, tail_desc, whole_tiles,
                                        batch_indices if batch_indices is not None else state,
                                        CHECK_SLOTS=rows is not None and batch_indices is not None,
                                        ROWS=config.rows, SORTED_ROWS=rows is not None, PARTS=config.parts,
                                        TAIL_SPLIT=config.BV // tail.BV, TAIL_ROWS=tail.rows, TAIL_PARTS=tail.parts,
                                        TAIL_C=chunk_columns(tail.BV, state.element_size()),
                                        LOAD_EVICTION=config.load_eviction,
                                        STORE_EVICTION=config.store_eviction, **kwargs)
    return config


# (load_eviction, store_eviction): the PTX rewrite that gives the kernel's TMA copies those policies
_L2_REWRITES = {("", "evict_last"): tma_stores_evict_last,
                ("evict_last", ""): tma_state_loads_evict_last,
                ("evict_last", "evict_last"): tma_state_loads_and_stores_evict_last}


def l2_policy(config: GluonTileConfig) -> contextlib.AbstractContextManager:
    """What the kernel is launched (and compiled) inside for ``config``: where its state's loads or
    its stores are evict-last (``load_eviction``, ``store_eviction``), the PTX rewrite that gives its
    TMA copies that L2 policy (the kernel's ``LOAD_EVICTION`` and ``STORE_EVICTION`` key that
    binary apart), otherwise nothing."""
    rewrite = _L2_REWRITES.get((config.load_eviction, config.store_eviction))
    return contextlib.nullcontext() if rewrite is None else ptx_rewrite("_decode_kv_tile_kernel", rewrite)
