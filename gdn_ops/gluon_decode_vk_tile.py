"""Gluon decode kernel for the "vk" layout, one short-lived program per tile (not persistent).

In the vk layout a head's state is ``[V, K]`` with the keys contiguous, so every sum of the step
runs along one value row: ``S k`` and ``S q`` per row, then the row's update ``d S_v + u_v k``.
A row needs nothing from any other row, and the whole step is one pass over the rows.

The Triton per-tile kernel (``triton_decode.py``) already works one short-lived program per tile,
but holds its whole tile in registers, widened to fp32: for a 2-byte state the register file, not
the memory system, caps the bytes in flight per SM. Here the tile lands in shared memory by TMA,
and registers hold a step of rows only once it has landed. The shipped tiles are 4 KB: 16 rows of
a 2-byte state on one warp, 24 programs per SM, and 8 rows of an fp32 one on two warps, 16 or 20
per SM: short programs, so an SM's slots empty and refill in small steps (NOTES.md, nineteenth,
twenty-first, thirty-fifth, fortieth, forty-fourth and forty-fifth sessions). Each program:

0. with its rows in slot order, finds its row at its place in that order: read from the rank
   kernel's output (``triton_slot_order``) or the caller's, or for an fp32 pool of few rows
   (``rank_in_program``) by ranking the batch's slots itself, so that no rank kernel runs between
   the previous kernel's end and this one's start;
1. loads its tile ``[BV, K]`` by TMA on a barrier of its own, and q, k and its ``BV`` values of v
   on another, and takes q and k's norms and the gates while the tile is still arriving; in the
   large grids' tiles (``prefetch_ahead``) it also asks L2 for the rows of the tile ``prefetch_ahead``
   x SMs further on in the grid, so that the pool's reads run ahead of the programs (NOTES.md,
   forty-third and forty-fourth sessions);
2. for each step of ``ROWS`` value rows: sums ``S k`` and ``S q`` along the keys (inside a warp),
   takes ``u = beta (v - d S k)`` and ``o = d S q + u (k . q)`` with ``d = exp(g)`` (the step of
   ``triton_step.delta_rule_step``, ``o`` from the old state), and stores the updated rows
   ``d S + u k^T`` and the step's ``o`` straight from registers, the rows with the
   configuration's L2 eviction policy (evict-last on large grids: ``VK_TILE_RULES``).

The rows leave as soon as their step is done, each warp writing whole rows in 16-byte vectors, so
in a tile of several steps the stores overlap the later ones. With the whole-head tile this kernel
shipped first, that measured 0.5-1.1% faster than writing the rows back to shared memory for one
TMA store of the tile at the end (NOTES.md, the variant's record); the shipped tiles are now one
step each. Value rows
are held in 128-byte chunks of keys (``[BV, K // C, C]``, as ``gluon_decode_kv`` holds key rows),
so a tile arrives as one TMA copy of consecutive 128-byte rows under the 128-byte swizzle. A padded
row reads slot ``num_slots``, one past the pool, which TMA zero-fills; its stores are masked off.
The grid has no tail split (``GluonTileConfig.tail_split``, which ``gluon_decode_kv_tile`` has):
every split measured level or slower with the whole-head tile (NOTES.md, sixteenth and seventeenth
sessions), and the one-warp tiles' programs are shorter than a split's pieces were.

Gluon has no interpreter: this kernel is tested on the GPU, and on the CPU only compiled for sm_90
(``tests/test_gluon_decode_vk_tile.py``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
)

from gdn_ops.gluon_decode_kv import (
    _gdc_launch_dependents,
    _gdc_wait,
    _in_pool,
    _row_slot_now,
    _tile_row,
    _tile_slot,
    chunk_columns,
    shared_memory_reason,
    tma_descriptor,
)
from gdn_ops.gluon_decode_kv_tile import GluonTileConfig, snapshot_order_reason
from gdn_ops.triton_decode_tma import sm90_gpu_rule, sm_count, tma_step_reason
from gdn_ops.triton_gating import decode_gates, head_gate_params
from gdn_ops.triton_slot_order import _ranks


@gluon.jit
def _row_at_place(place, indices_ptr, B, num_slots, WARPS: gl.constexpr):
    """``(row, slot)``: the batch row that comes ``place``-th when the ``B <= 32`` rows are
    ranked by their slots at ``indices_ptr`` (batch order; padding, a slot outside
    ``[0, num_slots)``, first; ties by row), and that row's slot, -1 for padding. Each
    lane ranks one row against all B slots, which it holds in registers: B^2 comparisons a
    program, so for small batches only (``RANK_IN_PROGRAM_MAX_ROWS``)."""
    pairs: gl.constexpr = gl.BlockedLayout([1, 32], [32, 1], [WARPS, 1], [1, 0])
    mine_rows = gl.arange(0, 32, layout=gl.SliceLayout(1, pairs))
    slot = gl.load(indices_ptr + mine_rows, mask=mine_rows < B, other=0)
    slot = gl.where((slot >= 0) & (slot < num_slots), slot, -1).to(gl.int32)
    # rows past B rank after every row of the batch, so all 32 are counted (no mask a comparison)
    mine = gl.where(mine_rows < B, slot, 2147483647)
    theirs = gl.convert_layout(mine, gl.SliceLayout(0, pairs))  # every lane holds all B slots
    # the rank kernel's count (triton_slot_order), on the slots as this program read them once
    hit = _ranks(mine, mine_rows, theirs, gl.arange(0, 32, layout=gl.SliceLayout(0, pairs)), 32) == place
    return gl.sum(gl.where(hit, mine_rows, 0), axis=0), gl.sum(gl.where(hit, slot, 0), axis=0)


@gluon.jit
def _prefetch_rows_l2(row0_ptr, row_stride, NROWS: gl.constexpr, ROW_BYTES: gl.constexpr, WARPS: gl.constexpr):
    """Bulk L2 prefetches (``cp.async.bulk.prefetch.L2``) of ``NROWS <= 32 * WARPS`` rows of
    ``ROW_BYTES`` bytes, ``row_stride`` elements apart from ``row0_ptr``, one row a thread. A hint:
    nothing waits for it, and L2 keeps it coherent with every write."""
    lanes: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    r = gl.arange(0, 32 * WARPS, layout=lanes)
    gl.inline_asm_elementwise(
        "{ .reg .pred p; setp.lt.s32 p, $2, $3; @p cp.async.bulk.prefetch.L2.global [$1], $4; mov.u32 $0, 0; }",
        "=r,l,r,r,r", [row0_ptr + r.to(gl.int64) * row_stride, r, gl.full([32 * WARPS], NROWS, gl.int32, lanes),
                       gl.full([32 * WARPS], ROW_BYTES, gl.int32, lanes)],
        dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _decode_vk_tile_kernel(
    q_desc, k_desc, v_desc, state_desc,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr, state_ptr,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, s_sb, s_sh, s_sv, rows_ptr, batch_indices_ptr,
    HV: gl.constexpr, GROUP: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BV: gl.constexpr,
    C: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_C: gl.constexpr,
    FUSED_GATING: gl.constexpr, USE_L2NORM: gl.constexpr, HAS_INDICES: gl.constexpr,
    L2_EPS: gl.constexpr, PDL: gl.constexpr, SORTED_ROWS: gl.constexpr, STORE_EVICTION: gl.constexpr,
    RANK_IN_PROGRAM: gl.constexpr, CHECK_SLOTS: gl.constexpr, PREFETCH_AHEAD: gl.constexpr,
):
    NV: gl.constexpr = V // BV
    NK: gl.constexpr = K // C
    STEPS: gl.constexpr = BV // ROWS
    # [ROWS, NK, C]: a step of value rows, each cut into NK chunks of C keys. Each lane holds VEC
    # contiguous keys; the lanes of a warp cover whole rows, so a row's sums stay in the warp, and
    # warps sit one above the other along the rows.
    rows_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (NK * LANES_C), NK, LANES_C], [WARPS, 1, 1],
                                                 [2, 1, 0])
    values_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, rows_layout))  # [ROWS]
    keys_layout: gl.constexpr = gl.SliceLayout(0, rows_layout)  # [NK, C]

    tile_smem = gl.allocate_shared_memory(state_desc.dtype, [1, 1, BV, NK, C], state_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [1, 1, NK, C], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1, 1, NK, C], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [1, 1, BV], v_desc.layout)
    # q, k and v arrive on one barrier and the state on its own, so that q and k's norms run while
    # the state is still on its way and only the rows' own work follows it
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    state_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(state_bar, count=1)

    tile = gl.program_id(0)
    hv = tile // NV % HV
    v0 = (tile % NV) * BV
    if PDL:
        # nothing is read before the previous kernel has finished; the next launch may start then,
        # its programs taking the SM slots this launch's last wave frees (NOTES.md, eighteenth session)
        _gdc_wait()
        _gdc_launch_dependents()
    if RANK_IN_PROGRAM:
        # the rows in slot order with no rank kernel: indices_ptr holds the slots in batch order,
        # and this program finds the row at its place by ranking them
        row, slot = _row_at_place(tile // NV // HV, indices_ptr, num_tiles // (NV * HV), num_slots, WARPS)
        in_batch = tile < num_tiles
        slot = gl.where(slot >= 0, slot, num_slots)
    else:
        # with SORTED_ROWS, indices_ptr holds the slots in ascending order and rows_ptr their rows
        row, in_batch = _tile_row(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)
        slot = gl.where(in_batch, _tile_slot(tile, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES),
                        num_slots)
    if CHECK_SLOTS:
        # the order was ranked from the slots as read before the previous kernel's end: this row's
        # slot as it is now, checked below while the state's copy is in flight
        slot_now = _row_slot_now(row, in_batch, batch_indices_ptr)
    mbarrier.expect(state_bar, state_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(state_desc, [slot, hv, v0, 0, 0], state_bar, tile_smem)
    nbytes: gl.constexpr = q_desc.block_type.nbytes + k_desc.block_type.nbytes + v_desc.block_type.nbytes
    mbarrier.expect(bar, nbytes)
    tma.async_copy_global_to_shared(q_desc, [row, hv // GROUP, 0, 0], bar, q_smem)
    tma.async_copy_global_to_shared(k_desc, [row, hv // GROUP, 0, 0], bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [row, hv, v0], bar, v_smem)
    if PREFETCH_AHEAD > 0:
        # the slot of the tile PREFETCH_AHEAD further on, whose rows this program prefetches into
        # L2 below (read here so that its latency hides behind the gates')
        ahead = tile + PREFETCH_AHEAD
        ahead_slot = _tile_slot(ahead, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)

    gate_a = gl.load(gate_a_ptr + row.to(gl.int64) * s_ab + hv * s_ah).to(gl.float32)
    gate_b = gl.load(gate_b_ptr + row.to(gl.int64) * s_bb + hv * s_bh).to(gl.float32)
    neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)
    g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)
    if PREFETCH_AHEAD > 0:  # noqa: SIM102 (a constexpr test: the runtime one exists only with it)
        if (ahead < num_tiles) & (ahead_slot < num_slots):
            _prefetch_rows_l2(state_ptr + ahead_slot.to(gl.int64) * s_sb + (ahead // NV % HV) * s_sh
                              + ((ahead % NV) * BV).to(gl.int64) * s_sv, s_sv, BV,
                              K * (state_desc.dtype.primitive_bitwidth // 8), WARPS)
    decay = gl.exp(g)
    mbarrier.wait(bar, 0)

    # every warp holds all of q and k, laid out as the keys of a row
    q = q_smem.reshape([NK, C]).load(keys_layout).to(gl.float32)
    k = k_smem.reshape([NK, C]).load(keys_layout).to(gl.float32)
    if USE_L2NORM:
        q = q * (scale / gl.sqrt(gl.sum(gl.sum(q * q, axis=1), axis=0) + L2_EPS))
        k = k / gl.sqrt(gl.sum(gl.sum(k * k, axis=1), axis=0) + L2_EPS)
    else:
        q = q * scale
    kq = gl.sum(gl.sum(k * q, axis=1), axis=0)

    state_phase = 0
    if CHECK_SLOTS:
        # where the slot changed, the state comes again from there once the stale copy has landed
        # (the rows stay a permutation whatever the snapshot saw; only a slot can be stale). Here,
        # after q, k and v have landed: ptxas hoists the comparison, and above that wait it put it
        # before v's copy and a gate's load, which then waited for the slot's read (-1.5 points
        # at bf16 B=128; NOTES.md, forty-second session).
        slot_now = _in_pool(slot_now, num_slots)
        if slot_now != slot:
            mbarrier.wait(state_bar, 0)
            mbarrier.expect(state_bar, state_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(state_desc, [slot_now, hv, v0, 0, 0], state_bar, tile_smem)
        state_phase = (slot_now != slot).to(gl.int32)
        slot = slot_now
    mbarrier.wait(state_bar, state_phase)
    rows_smem = tile_smem.reshape([BV, NK, C])
    values = v_smem.reshape([BV])
    step_rows = gl.arange(0, ROWS, layout=values_layout)
    o_rows = o_ptr + row.to(gl.int64) * s_ob + hv * s_oh + (v0 + step_rows) * s_ov
    keys = (gl.arange(0, NK, layout=gl.SliceLayout(1, keys_layout))[:, None] * C
            + gl.arange(0, C, layout=gl.SliceLayout(0, keys_layout))[None, :])
    # Every row starts on 16 bytes (the TMA descriptor needs 16-byte strides), which Triton cannot
    # see in a slot stride that is not a multiple of 16 elements (a page-strided pool): said here,
    # a lane's keys leave as one vector store on any pool this kernel takes.
    row_starts = gl.multiple_of(slot.to(gl.int64) * s_sb + hv * s_sh + (v0 + step_rows).to(gl.int64) * s_sv,
                                128 // state_desc.dtype.primitive_bitwidth)
    state_rows = state_ptr + row_starts[:, None, None] + keys[None, :, :]
    # one mask for a whole program, so that the stores stay 16-byte vectors
    live = slot < num_slots
    for i in gl.static_range(STEPS):
        S = rows_smem.slice(i * ROWS, ROWS).load(rows_layout).to(gl.float32)
        Sk = gl.sum(gl.sum(S * k[None, :, :], axis=2), axis=1)
        Sq = gl.sum(gl.sum(S * q[None, :, :], axis=2), axis=1)
        u = beta * (values.slice(i * ROWS, ROWS).load(values_layout).to(gl.float32) - decay * Sk)
        gl.store(state_rows + (i * ROWS) * s_sv, (S * decay + u[:, None, None] * k[None, :, :]).to(state_desc.dtype),
                 mask=live, eviction_policy=STORE_EVICTION)
        o = gl.where(live, decay * Sq + u * kq, 0.0)
        gl.store(o_rows + (i * ROWS) * s_ov, o.to(o_ptr.dtype.element_ty), mask=in_batch)
    mbarrier.invalidate(bar)
    mbarrier.invalidate(state_bar)


# Two warps on 16 value rows (4 KB of a 2-byte state) in one step, 16 bytes a lane, 18 programs per
# SM (a 56-register cap, no spills); ``VK_2B_TILE_CONFIG`` in NOTES.md up to the forty-sixth
# session. Two-warp programs had lost to one warp while every program
# waited for its state and q, k, v together; with the state on a barrier of its own and 18 programs
# an SM they lead. On the H200, against the one-warp tile below (the shipped one before; NOTES.md,
# fortieth session, results/h200/w2_*_1c2b670.json, g_*_76d4a1f.json), seeds 0 and 1, sorting /
# given the order: TP=1 (HV=32) B=128 +0.6..+0.7 / +0.7, B=256 +0.5 / +0.3, B=512 +0.25 / +0.2,
# B=1024 +0.2 / +0.1; TP=4 (HV=8) B*HV 4096 +0.3 / level; at 1024-2048 +0.4..+1.3 given the order,
# and unsorted +0.4..+1.0 over the per-tile Triton kernel at 1024. The one-warp tile below, with
# its L2 prefetch, leads it at every B*HV measured, so no H200 rule picks it now (a tune spec,
# t16:2:16:18:8, and the tests' plain configuration).
VK_2B_TILE_TWO_WARP_CONFIG = GluonTileConfig(BV=16, num_warps=2, rows=16, programs_per_sm=18, vec=8)

# One warp on the same 4 KB, 24 programs per SM (an 80-register cap): every 2-byte pool the rule
# gives this kernel (``VK_2B_TILE_LARGE_CONFIG`` in NOTES.md's forty-fourth and forty-fifth
# sessions, when it took large grids only). On the H200
# (results/h200/tune_vk_bf16_onewarp_f947d67.json, tune_vk_bf16_onewarp2_56118ca.json,
# tune_vk_bf16_onewarp_tp4_56118ca.json; NOTES.md, twenty-first session) this geometry ran
# 1.4-3.0 points of copy bandwidth ahead of the whole-head tile it replaced (128 rows, 4 warps, 6
# per SM); 20, 28 and 32 per SM ran within 0.6 of 24, 8-row steps and 8 KB tiles slower.
# Compiled by Triton 3.6 (the version measured) it does not spill; Triton 3.7 spills 16 bytes at
# this cap.
# Each program prefetches into L2 the rows of the tile 8 x SMs further on (prefetch_ahead; as the
# fp32 tile below): at TP=4 B=1024 +0.3..+0.5 points of copy bandwidth, sorting and given the
# order, seeds 0 and 1 (results/h200/pd4_bf16vk1024_*_60eac00.json; NOTES.md, forty-third session);
# the two-warp tile above lost 2-8 points with it. With the prefetch it leads the two-warp tile from
# B*HV 4096 at every head count measured, seeds 0 and 1, sorting / given the order: 8 heads a row
# +0.3..+0.4 / +0.6..+0.7 (results/h200/pw*_600ad10.json), 16 heads -0.1..+1.1 / +0.4..+1.3
# (hv16_bf16_*_feec93c.json), 32 heads B=128 -0.02..+0.30 / +0.12..+0.48, B=256 +0.34..+0.37 /
# +0.52..+0.57, B=512 +0.33 / +0.42, B=1024 +1.9..+2.4 (hv32_bf16_*_2e08c43.json, pw1_*_600ad10.json,
# hv32[cd]_bf16_*.json; NOTES.md, forty-fourth session); and from 1024, where the two-warp tile had
# run, on two machines, seeds 0-3, batch order / sorting / given the order (results/h200/
# n1_tp*_3adf0c0.json, n1b_tp*_a07df9f.json; forty-fifth session): B*HV 1024 +1.4..+2.6 / - /
# +0.6..+2.6, 2048-3072 - / -0.14..+0.7 / +0.45..+1.0, at 16 and 32 heads a row (TP=4 and TP=1).
VK_2B_TILE_CONFIG = GluonTileConfig(BV=16, num_warps=1, rows=16, programs_per_sm=24, vec=8, prefetch_ahead=8)

# An fp32 pool: two warps of 4 rows on 8 value rows (4 KB, the per-tile Triton kernel's tile),
# 16 bytes a lane, 16 programs per SM (a 64-register cap, no spills). On the H200
# (results/h200/tune_vk_two_warps_*.json; NOTES.md, thirty-fifth session), against the one-warp
# tile at 24 an SM, given the order: TP=1 B*HV 1024 +0.45 on average over six readings, 2048 +0.76
# over three, from 4096 +0.2..+0.7 at HV=32 in all 36 readings under four seeds of the rounds'
# order (tune_vk_el_*_c178b41.json, fold_fp32_vk_hv32_c003eab.json, seed_tp1_*_61627f0.json;
# thirty-sixth session). With the state on its own barrier it gained a little more: +0.1..+0.3
# at TP=1 B=32-256 (g_fp32_*_76d4a1f.json; fortieth session).
VK_4B_TILE_CONFIG = GluonTileConfig(BV=8, num_warps=2, rows=8, programs_per_sm=16, vec=4)

# The same tile at 20 programs per SM (48 registers, no spills), from the rule's
# ``four_byte_large_from``. On the H200, with the state on its own barrier, seeds 0 and 1, sorting /
# given the order (w2_fp32vk_tp4_*_1c2b670.json, g_fp32_tp4_*_76d4a1f.json; fortieth session): TP=4
# (HV=8) B*HV 2048 +0.1..+0.4 / +0.4..+0.5 over 16 an SM, and at 4096 and 8192 +0.3..+0.5 /
# +0.35..+0.5 over the one-warp tile (24 an SM) that those grids took before. At HV=32, without the
# prefetch below, 20 an SM ran 0.1-0.3 under 16.
# Each program issues, after its own copies and gates, bulk L2 prefetches of the 8 state rows of the
# tile 8 x SMs further on in the grid (prefetch_ahead), so that the reads run ahead of the programs.
# On the H200, against the same tile, seeds 0 and 1, sorting / given the order (results/h200/
# pf4_*_83b3794.json, ps4_*_198f16c.json, pe4_*_24be9a5.json, pd4_*_60eac00.json; NOTES.md,
# forty-third session): TP=4 B=256 +0.3..+0.9 in all ten readings (given the order 94.4 -> 94.9-95.2),
# B=512 +0.1..+0.5, B=1024 +0.0..+0.4; 4 and 12 a SM ahead were worse, 32 lost 10 points. Against 16
# an SM without it (forty-fourth session, seeds 0 and 1, sorting / given the order): 16 heads a row
# B*HV 2048 +0.4 / +0.5..+0.7, 4096 +0.4 / +0.5, 8192 +0.6 / +0.65 (hv16*_fp32_*_feec93c.json);
# 32 heads 2048 +0.3..+0.5 / +0.55, 4096 -0.01..+0.28 / 0.0..+0.1, 8192 +0.2 / +0.1..+0.2
# (hv32*_fp32_*_2e08c43.json).
VK_4B_TILE_LARGE_CONFIG = GluonTileConfig(BV=8, num_warps=2, rows=8, programs_per_sm=20, vec=4, prefetch_ahead=8)


# The most rows a program ranks by itself (GluonTileConfig.rank_in_program): each lane holds one row
# and compares it with all B slots, so a program's comparisons grow as B^2. At 64 rows (a layout of
# 64, measured before this limit) the fp32 tile ran at 79.5% of copy bandwidth against 93.5 with the
# rank kernel (H200, results/h200/rank_fp32_*_56d1070.json; NOTES.md, forty-first session).
RANK_IN_PROGRAM_MAX_ROWS = 32


class VkTileRule(NamedTuple):
    """From which B*HV a GPU picks this kernel: a 2-byte pool with its rows in their batch order
    (``two_byte_from``) and in slot order (``two_byte_sorted_from``), a 4-byte pool wherever its
    rows are sorted and from ``four_byte_from`` in batch order too. A 2-byte pool takes the one-warp
    prefetching tile; a 4-byte pool its prefetching tile from ``four_byte_large_from``, whatever its
    heads a row. A 4-byte pool of at most ``four_byte_ranked_rows`` rows takes them in slot order, each
    program ranking them itself (``rank_in_program``). From ``evict_last_from`` (None: never) the
    updated rows are stored evict-last in L2."""

    two_byte_from: int
    two_byte_sorted_from: int
    four_byte_from: int
    four_byte_large_from: int
    evict_last_from: int | None
    four_byte_ranked_rows: int = 0


# By GPU name; other GPUs keep the Triton kernel (not measured there).
# Rows stored evict-last from B*HV 4096 on the H200 (results/h200/tune_vk_store_evict_last_*_dab202c.json;
# NOTES.md, twenty-seventh session): +0.3..+0.9 points of copy bandwidth at fp32 B=128 and bf16
# B=256-512 (TP=1), sorting or given the order, in two runs, and the GEMM of a layer's input
# projection after the decode took no longer (neighbour_gemm_*_37eccf4.json); at fp32 B=32 (B*HV
# 1024, 64 MB of state a call, about the L2) it lost 0.6-1.6, the rows held in L2 meeting the next
# call's reads. Plain stores below, and .cs or evict-first stores lost 0.5-2.3 everywhere.
# A 4-byte pool of at most 32 rows ranks them in its programs (results/h200/rank_fp32_*_56d1070.json;
# NOTES.md, forty-first session): at fp32 B=32 (HV=32, B*HV 1024) without the order, seeds 0 and 1,
# 90.09 / 90.25% of copy bandwidth against 89.08 / 89.10 sorted by the rank kernel and 88.84 / 88.65
# in batch order (given the order 90.6-90.8). A 2-byte pool lost there (78.7 against 79.0-79.4 with
# the rank kernel and 80.5-81.0 in batch order), so it keeps batch order.
H200_VK_TILE_RULE = VkTileRule(two_byte_from=1024, two_byte_sorted_from=1024, four_byte_from=1024,
                               four_byte_large_from=2048, evict_last_from=4096, four_byte_ranked_rows=32)
# The H100 takes the H200's rule (triton_decode_tma.H200_TABLE_CARDS) with its rows stored plainly: at
# TP=1 fp32 B=256 and 1024 (results/h100/vk_h100_1077935.json, sorting / given the order) the rule's
# tile stored evict-last read 97.1 / 97.4 and 98.0 / 98.1% of copy bandwidth, stored plainly 98.7 /
# 99.1 and 99.6 / 99.7, where SGLang's kernel reads 96.7-97.9 (grid_h100_96345f7.json).
VK_TILE_RULES = {"H200": H200_VK_TILE_RULE, "H100": H200_VK_TILE_RULE._replace(evict_last_from=None)}


@functools.cache
def vk_tile_rule(device_index: int) -> VkTileRule | None:
    """This GPU's :class:`VkTileRule`, ``None`` where the kernel is not used. Cached: the launcher
    asks on every call."""
    return sm90_gpu_rule(VK_TILE_RULES, device_index)


def vk_tile_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, state_layout: str,
                   rows_x_heads: int, sorted_rows: bool = False) -> GluonTileConfig | None:
    """This kernel's configuration when this GPU's rule picks it and it can run these operands
    (a vk state, T == 1, q, k, v and pool all TMA-addressable): a 2-byte pool from the rule's B*HV
    (a smaller one where the decode takes its rows in slot order, ``sorted_rows``), a 4-byte one in
    slot order or from the rule's ``four_byte_from``, with few enough rows in slot order ranked in
    the program; a 2-byte pool takes the one-warp prefetching tile, a 4-byte one its prefetching
    tile on large grids; either with its rows stored evict-last from the rule's
    ``evict_last_from``; ``None`` otherwise. Metadata only."""
    # an fp16 pool and fp32 activations gain here as bf16 does (tune_vk_tile_fp16_h200.json,
    # tune_vk_tile_act32_h200.json)
    if state_layout != "vk" or state.device.type != "cuda" or state.element_size() not in (2, 4):
        return None
    rule = vk_tile_rule(state.device.index or 0)
    config = None if rule is None else vk_rule_config(rule, state.element_size(), rows_x_heads, q.shape[0], sorted_rows)
    return None if config is None or vk_tile_reason(q, k, v, state, state_layout, config) else config


@functools.cache
def vk_rule_config(rule: VkTileRule, itemsize: int, rows_x_heads: int, rows: int,
                   sorted_rows: bool = False) -> GluonTileConfig | None:
    """The configuration ``rule`` picks for a pool of ``itemsize``-byte elements at this B*HV and
    ``rows`` (B), its rows in slot order or not, ``None`` where it leaves the grid to the Triton
    kernel (:func:`vk_tile_config`'s choice before it asks whether the operands allow it). Cached:
    the launcher asks on every call."""
    if itemsize == 2:
        start = rule.two_byte_sorted_from if sorted_rows else rule.two_byte_from
        config = None if rows_x_heads < start else VK_2B_TILE_CONFIG
    elif sorted_rows or rows_x_heads >= rule.four_byte_from:
        config = VK_4B_TILE_LARGE_CONFIG if rows_x_heads >= rule.four_byte_large_from else VK_4B_TILE_CONFIG
        if rows <= rule.four_byte_ranked_rows:
            # (given the order, the launcher reads it instead)
            config = config._replace(sort_rows=True, rank_in_program=True)
    else:
        return None
    if rule.evict_last_from is not None and rows_x_heads >= rule.evict_last_from:
        config = config._replace(store_eviction="evict_last")
    return config


def lanes_along_values(K: int, itemsize: int, vec: int) -> int | None:
    """Value rows one warp covers in the kernel's ``[ROWS, K // C, C]`` register layout (each lane
    ``vec`` contiguous keys), or ``None`` where that layout cannot cover a K-key row."""
    C = chunk_columns(K, itemsize)
    lanes_c, rest = divmod(C, vec)
    lanes_per_row = lanes_c * (K // C)
    if rest or lanes_per_row not in (1, 2, 4, 8, 16, 32):
        return None
    return 32 // lanes_per_row


def vk_tile_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, state_layout: str,
                   config: GluonTileConfig) -> str | None:
    """Why ``config`` cannot run this kernel on these operands, or ``None`` if it can: a vk pool and
    T == 1, TMA-addressable q, k, v and pool, steps of ``rows`` value rows that the warps cover
    and that divide ``BV``, and ``programs_per_sm`` programs that fit one SM's shared memory.
    Reads metadata only (legal during CUDA-graph capture)."""
    if state_layout != "vk":
        return f"state_layout='vk' (got {state_layout!r})"
    if config.BV > 256 or config.BV * v.element_size() < 16:
        return f"BV={config.BV} values, at most 256 and at least 16 bytes (a TMA box of v)"
    reason = tma_step_reason(q, state, state.shape[-2], config.BV, (("q", q), ("k", k), ("v", v)))
    if reason is not None:
        return reason
    # the kernel addresses a head's rows at hv * (head stride) in 32 bits: a head-major pool of more
    # than about 4200 Qwen3-Next slots puts that past 2**31 (its rows went below the pool)
    head_span = (state.shape[1] - 1) * state.stride(1)
    if head_span > 2**31 - 1:
        return f"head offsets within 32 bits: (HV - 1) x the pool's head stride is {head_span}"
    if config.rank_in_program and q.shape[0] > RANK_IN_PROGRAM_MAX_ROWS:
        return f"at most {RANK_IN_PROGRAM_MAX_ROWS} rows to rank them in the program (got B={q.shape[0]})"
    reason = snapshot_order_reason(q, config)
    if reason is not None:
        return reason
    K = q.shape[-1]
    return _vk_config_reason(K, state.element_size(), q.element_size(), v.element_size(), config)


@functools.cache
def _vk_config_reason(K: int, itemsize: int, qk_itemsize: int, v_itemsize: int,
                      config: GluonTileConfig) -> str | None:
    """The part of :func:`vk_tile_reason` that reads only sizes (cached: asked on every launch)."""
    if config.parts != 1:
        return f"parts=1 (this kernel loads its tile in one copy; got parts={config.parts})"
    if config.tail_split != 1:
        return f"tail_split=1 (this kernel's grid has no tail split; got tail_split={config.tail_split})"
    if config.store_eviction not in ("", "evict_first", "evict_last"):
        return f"store_eviction '', 'evict_first' or 'evict_last' (got {config.store_eviction!r})"
    if config.load_eviction:
        return f"load_eviction='' (only the kv kernel's loads take an L2 policy; got {config.load_eviction!r})"
    if config.prefetch_ahead < 0:
        return f"prefetch_ahead >= 0 tiles per SM (got {config.prefetch_ahead})"
    if config.prefetch_ahead and config.BV > 32 * config.num_warps:
        return (f"BV={config.BV} value rows at most 32 * num_warps={config.num_warps} to prefetch them, one a "
                f"thread (or prefetch_ahead=0)")
    rows_per_warp = lanes_along_values(K, itemsize, config.vec)
    if rows_per_warp is None:
        return (f"vec={config.vec} dividing C={chunk_columns(K, itemsize)} keys into lanes that cover whole rows of "
                f"K={K} in a power of two")
    if config.BV % config.rows or config.rows % (rows_per_warp * config.num_warps):
        return (f"rows={config.rows} dividing BV={config.BV} and a multiple of the {rows_per_warp * config.num_warps} "
                f"rows that num_warps={config.num_warps} warps cover")
    shared = config.BV * K * itemsize + 2 * K * qk_itemsize + config.BV * v_itemsize + 8
    return shared_memory_reason(shared, config.programs_per_sm, "a tile with q, k and v")


def launch_decode_vk_tile(
    q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *,
    scale: float, use_qk_l2norm_in_kernel: bool, softplus_beta: float, softplus_threshold: float,
    config: GluonTileConfig, pdl: bool, l2_eps: float, rows: torch.Tensor | None = None,
    batch_indices: torch.Tensor | None = None,
) -> GluonTileConfig:
    """Launch the kernel on validated arguments that pass :func:`vk_tile_reason`:
    ``q, k [B, 1, HK, K]``, ``v [B, 1, HV, V]``, ``state [slots, HV, V, K]`` (vk layout),
    ``out [B, 1, HV, V]``; sm_90+ only (no interpreter). With ``rows`` (the rows in slot order,
    ``triton_slot_order.slot_order``), ``indices`` are the slots in that order; without them a
    ``config`` that sorts its rows and ranks them in the program (``rank_in_program``) takes
    ``indices`` in batch order. With ``batch_indices`` (the slots in batch order), ``indices`` and
    ``rows`` are a snapshot order (``triton_slot_order.snapshot_slot_order``) whose slots each
    program checks against them."""
    B, _, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    num_tiles = B * HV * (V // config.BV)
    if num_tiles == 0:
        return config
    fused = A_log is not None
    C = chunk_columns(K, state.element_size())
    rank_in_program = config.sort_rows and config.rank_in_program and rows is None and indices is not None
    # q and k seen in chunks of C keys, as the rows of the state are
    q3, k3, v3 = q[:, 0], k[:, 0], v[:, 0]
    _decode_vk_tile_kernel[(num_tiles,)](
        tma_descriptor(q3, [B, HK, K // C, C], [*q3.stride()[:2], C, 1], [1, 1, K // C, C]),
        tma_descriptor(k3, [B, HK, K // C, C], [*k3.stride()[:2], C, 1], [1, 1, K // C, C]),
        tma_descriptor(v3, list(v3.shape), list(v3.stride()), [1, 1, config.BV]),
        tma_descriptor(state, [*state.shape[:3], K // C, C], [*state.stride()[:3], C, 1],
                       [1, 1, config.BV, K // C, C]),
        gate_a, gate_b, A_log if fused else gate_a, dt_bias if fused else gate_a,
        indices if indices is not None else state, out, state,
        num_tiles, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        gate_a.stride(0), gate_a.stride(2), gate_b.stride(0), gate_b.stride(2), out.stride(0), out.stride(2),
        out.stride(3), A_log.stride(0) if fused else 0, dt_bias.stride(0) if fused else 0, *state.stride()[:3],
        rows if rows is not None else state, batch_indices if batch_indices is not None else state,
        HV=HV, GROUP=HV // HK, K=K, V=V, BV=config.BV, C=C, ROWS=config.rows, WARPS=config.num_warps,
        VEC=config.vec, LANES_C=C // config.vec, FUSED_GATING=fused, USE_L2NORM=bool(use_qk_l2norm_in_kernel),
        HAS_INDICES=indices is not None, L2_EPS=l2_eps, PDL=bool(pdl), SORTED_ROWS=rows is not None,
        STORE_EVICTION=config.store_eviction,
        RANK_IN_PROGRAM=rank_in_program,
        CHECK_SLOTS=rows is not None and batch_indices is not None,
        # a program that ranks its rows would prefetch by the slots in batch order: none there
        PREFETCH_AHEAD=config.prefetch_ahead * sm_count(state.device.index or 0)
        if config.prefetch_ahead and not rank_in_program else 0,
        num_warps=config.num_warps,
        maxnreg=config.maxnreg, **({"launch_pdl": True} if pdl else {}),
    )
    return config
