"""The batch rows ordered by the pool slot they address, for a decode that walks the pool in order.

A decode program handles one row's head (or a tile of it), and the grid runs in row order. With
rows addressing the pool's slots in a shuffled order, programs that run together touch scattered
slots; in ascending slot order the H200 decode ran 1.3-2.7 points of copy bandwidth faster at
B = 256-1024 (NOTES.md, eleventh session). This kernel gives the decode that order: the rows sorted by
their slot (ties, such as -1 padding, by row), as two vectors the decode reads instead of
``indices`` and its own row number. It is a rank count, O(B^2) comparisons: at the batch sizes
where the order pays (hundreds to a few thousand rows) that is little work, and what it costs is
latency, between the previous kernel's end and the decode's start. So each program compares its
few rows with all B slots at once (one load, one reduction) rather than in a loop of steps, and
there are many programs; and under PDL it counts before the previous kernel ends, then checks
the slots. No host sync, and the same launch every call (CUDA-graph safe).

The order depends on the slot indices alone, which an engine shares between every GDN layer of a
step: computed once per step (:func:`slot_order`) and passed to each layer's call
(``initial_state_order``), it takes the rank kernel off every layer but one. Then the decode
sorts from smaller grids too (:data:`SORT_ROWS_GIVEN_ORDER_FROM`).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from gdn_ops.triton_decode_tma import h200_table_entries

# Elements of the [rows, slots] comparison one program holds at once (16 per thread of 4 warps),
# and the most slots compared in one step: up to MAX_COLUMNS rows, one step. With 8192 (64 a
# thread) B=128 ran in 2 programs; 2048 (8 there) gained +0.0..+0.65 points without the order at
# B*HV 4096-8192 on the H200 and was level at 16384 (tune_rank_programs_*_d94f041.json; NOTES.md,
# twenty-ninth session); 512 gained as much at B=128 and lost a little at 16384.
COMPARISONS = 2048
MAX_COLUMNS = 2048

# From which B*HV the decode takes its rows in slot order, by (GPU name part, pool layout, state
# element size); not on other GPUs (not measured there). Chosen on the H200 under PDL against the
# same kernel unsorted (results/h200/tune_sort_*.json, tune_sort2_*.json; NOTES.md, twelfth and
# thirteenth sessions), then moved down once the rank kernel counted before the previous kernel's end
# and held 2048 comparisons a program (results/h200/tune_sort3_*_a761e73.{json,txt}; NOTES.md,
# thirtieth session), two runs each, sorted against the shipped unsorted default:
# fp32 vk: +1.0-1.5 points at B*HV 4096-32768 (TP=1), +0.6-0.8 at 4096-8192 (TP=4); at 2048 (the vk
# tile sorted against the per-tile Triton kernel) +1.0 / +1.1, at 1024 -0.3 / -0.1.
# fp32 kv (Gluon tile): +0.5-0.9 from 8192; at 4096 +0.9 / +0.8 (TP=1), +1.5 / +2.2 (TP=4), and
# +0.2..+0.9 in seven tuning runs of the rank kernel before; at 2048 -0.3 / -0.3, 1024 -1.3 / -0.6.
# 2-byte states (Gluon tiles): kv +0.3 / +0.8 at 4096, -1.2 / -0.6 at 2048, +0.3-0.4 at 8192 and
# +1.5-2.1 from 16384 in the sweep; a 2-byte vk pool's one-warp 4 KB tile (twenty-first session):
# level at 4096 (TP=1), +1.3 there at TP=4, +1.4-4.1 from 8192 (tune_vk_bf16_onewarp2_56118ca.json,
# tune_vk_bf16_onewarp_tp4_56118ca.json); at 2048 -0.5 / -0.6. A third run after the move
# (tune_sort4_*_9c7adf0.json): fp32 vk 2048 +2.4 (TP=1), +0.9 (TP=4); fp32 kv 4096 +0.7, +2.0 (TP=4);
# 2-byte kv 4096 -0.1, +0.8 (TP=4). A 2-byte vk pool sorts from 2048 since its tile went to two warps
# with the state on its own barrier (results/h200/g_bf16_small_*_76d4a1f.json; NOTES.md, fortieth
# session): that tile sorting, rank kernel included, against it in batch order at HV=32, B*HV 2048:
# +0.7, +0.9 (at HV=8 rows had sorted from 2048 already, below).
# These tables are the H200's, and the H100's (triton_decode_tma.h200_table_entries).
SORT_ROWS_FROM = h200_table_entries({("vk", 4): 2048, ("kv", 4): 4096, ("vk", 2): 2048, ("kv", 2): 4096})
# The same where the caller gives the order, so the decode launches no rank kernel of its own. On
# the H200 (results/h200/probe_given_order_*.json, probe_plan_*.json; NOTES.md, fourteenth
# session), sorted against unsorted: fp32 vk +2.0-2.4 points at B*HV 1024-4096 in the probe,
# +1.2-1.6 in the sweep; 2-byte states +0.5-1.7 at 1024-4096 in the probe, in the sweep level at
# 1024 and +0.5-1.2 at 2048-4096; fp32 kv +1.4 at 4096, and at 2048 +0.9 for slots given in
# ascending order. Smaller grids gained within the spread between runs there (1.5 points), so not;
# but fp32 kv at 1024 (its Gluon tile, B=32 at TP=1) gained +0.9, +0.9 and +0.6 in three later runs
# (tune_fp32_kv_sort_1024.json, tune_fp32_kv_sort_given_3.json; NOTES.md, seventeenth and
# eighteenth sessions), so from there.
# Given the order, an fp32 vk pool and a 2-byte kv pool sort from 512 (tune_vk_small_*_c178b41.json,
# tune_sort_hv*_0e03f0f.json, seed_tp*_61627f0.json; NOTES.md, thirty-sixth session): fp32 vk
# +0.1..+1.8 points at HV = 8, 16 and 32 in ten readings of one seed of the rounds' order (+1.05 on
# average) and +0.25..+1.0 under three others (+0.48 at HV=32, +0.81 at HV=8 on average), 2-byte
# kv +1.5..+3.2 in six; fp32 kv and 2-byte vk were level there.
SORT_ROWS_GIVEN_ORDER_FROM = h200_table_entries({("vk", 4): 512, ("kv", 4): 1024, ("vk", 2): 1024, ("kv", 2): 512})
# Rows of few heads sort by themselves from smaller grids, by (GPU name part, pool layout, state
# element size): (most heads a row, from which B*HV). A row's slot holds its heads' states, so
# with fewer heads a row a wave of programs in batch order spans more slots (at HV=8 an fp32 slot is
# 512 KB, a quarter of HV=32's). The thresholds above were measured at HV=32 (TP=1). On the H200,
# sorting against batch order (tune_sort_hv*_0e03f0f.json, tune_vk_1024_tp4_*_c178b41.json; NOTES.md,
# thirty-sixth session): fp32 vk at HV=8, B*HV 1024 +1.8..+2.5 in four readings (at HV=16 -0.3 /
# +0.6, at 32 level); fp32 kv at 2048 +0.9..+1.4 at HV = 8 and 16 (at 32 -0.9 / -0.2); 2-byte vk at
# 2048 +0.9 / +1.4 at HV=8 (HV=16 +0.3 / +0.6, HV=32 -0.5 / -0.4), now in SORT_ROWS_FROM for every
# HV. 2-byte kv had no such gain.
SORT_ROWS_FEW_HEADS_FROM = h200_table_entries({("vk", 4): (8, 1024), ("kv", 4): (16, 2048)})


@functools.cache
def sorts_rows(gpu: str, state_layout: str, itemsize: int, rows_x_heads: int, given_order: bool = False,
               heads: int | None = None) -> bool:
    """Whether the decode on this GPU (``gpu``: its name, empty off the GPU) takes the rows in slot
    order for this pool layout, state element size and B*HV (:data:`SORT_ROWS_FROM`, or
    :data:`SORT_ROWS_GIVEN_ORDER_FROM` when the caller gives the order), or for ``heads`` (HV) a row
    from :data:`SORT_ROWS_FEW_HEADS_FROM` (not consulted when ``heads`` is None). Cached: the
    launcher asks on every call."""
    table = SORT_ROWS_GIVEN_ORDER_FROM if given_order else SORT_ROWS_FROM
    if any(name in gpu and (layout, size) == (state_layout, itemsize) and rows_x_heads >= start
           for (name, layout, size), start in table.items()):
        return True
    return heads is not None and any(
        name in gpu and (layout, size) == (state_layout, itemsize) and heads <= most_heads and rows_x_heads >= start
        for (name, layout, size), (most_heads, start) in SORT_ROWS_FEW_HEADS_FROM.items())


@triton.jit
def _ranks(mine, rows, theirs, others, B):
    """For each of this program's rows (slot ``mine``, row number ``rows``), how many of the rows
    ``others`` (slots ``theirs``; those past ``B`` not counted) come before it in the order."""
    before = (theirs[None, :] < mine[:, None]) | ((theirs[None, :] == mine[:, None]) & (others[None, :] < rows[:, None]))
    return tl.sum((before & (others < B)[None, :]).to(tl.int32), axis=1)


@triton.jit
def _slot_order_kernel(indices_ptr, sorted_slots_ptr, rows_ptr, B, ROWS: tl.constexpr, COLUMNS: tl.constexpr,
                       ONE_STEP: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < B
    if ONE_STEP:
        # All B slots in one step (B <= COLUMNS). Under PDL the slots may come from the previous
        # kernel, still running: count from what they hold now, then, after the wait, read them
        # again past L1 and count again only if one changed. The count and the slots' first read
        # move under the previous kernel's tail (0.1-1.0 us at B = 128-512; NOTES.md, twenty-ninth
        # session). The decode may launch at once: it waits in its own gdc_wait for this kernel
        # to end, and this kernel ends after the previous one.
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        others = tl.arange(0, COLUMNS)
        mine = tl.load(indices_ptr + rows, mask=live, other=0)
        theirs = tl.load(indices_ptr + others, mask=others < B, other=0)
        rank = _ranks(mine, rows, theirs, others, B)
        if PDL:
            tl.extra.cuda.gdc_wait()
            mine_now = tl.load(indices_ptr + rows, mask=live, other=0, cache_modifier=".cg")
            theirs_now = tl.load(indices_ptr + others, mask=others < B, other=0, cache_modifier=".cg")
            # both reads compared: each may have seen a different moment of the previous kernel's writes
            changed = tl.sum((mine_now != mine).to(tl.int32), axis=0) + tl.sum((theirs_now != theirs).to(tl.int32),
                                                                              axis=0)
            if changed > 0:
                mine = mine_now
                rank = _ranks(mine_now, rows, theirs_now, others, B)
    else:
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        mine = tl.load(indices_ptr + rows, mask=live, other=0)
        rank = tl.zeros([ROWS], tl.int32)
        for start in range(0, B, COLUMNS):
            others = start + tl.arange(0, COLUMNS)
            theirs = tl.load(indices_ptr + others, mask=others < B, other=0)
            rank += _ranks(mine, rows, theirs, others, B)
    tl.store(sorted_slots_ptr + rank, mine, mask=live)
    tl.store(rows_ptr + rank, rows, mask=live)


def _check_slots(caller: str, indices: torch.Tensor) -> None:
    """The order kernels read ``indices`` as a dense vector of int32 or int64 slots: a clear error
    naming ``caller`` otherwise, from metadata only."""
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1 or not indices.is_contiguous():
        raise ValueError(f"{caller}: argument 'indices' must be a contiguous 1-D int32 or int64 tensor; got "
                         f"{indices.dtype} of shape {list(indices.shape)} and strides {list(indices.stride())}")


# The most rows the one-program order (snapshot_slot_order) sorts; a tile configured to take it
# refuses a larger batch (gluon_decode_kv_tile.snapshot_order_reason). Alone on the H200 it sorts in
# 1.5-1.8 us up to B=128, 3.4 at 512, 7.3 at 1024 and 18.9 at 2048, where the rank kernel above
# takes 1.4-1.5, 1.8, 2.0 and 3.8 (results/h200/probe_rank*.json);
# tl.sort on one warp or 128 keys a warp was no faster, and counting ranks in registers far slower
# (NOTES.md, forty-second session).
SNAPSHOT_MAX_ROWS = 2048


@triton.jit
def _snapshot_order_kernel(indices_ptr, order_ptr, B, num_slots, N: tl.constexpr, PDL: tl.constexpr):
    # One program, one read of each slot: whatever the previous kernel (still running under PDL)
    # writes meanwhile, the keys sorted are one set of values, so the rows come out a permutation.
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.arange(0, N)
    slot = tl.load(indices_ptr + rows, mask=rows < B, other=-1).to(tl.int64)
    slot = tl.where((slot >= 0) & (slot < num_slots), slot, -1)
    # (slot + 1, row) in one ascending int64 key; rows past B after every row of the batch
    key = tl.where(rows < B, ((slot + 1) << 32) | rows, 9223372036854775807)
    key = tl.sort(key)
    if PDL:
        # the order buffer may still be read by the previous decode
        tl.extra.cuda.gdc_wait()
    tl.store(order_ptr + rows, ((key >> 32) - 1).to(tl.int32), mask=rows < B)
    tl.store(order_ptr + B + rows, (key & 0xFFFFFFFF).to(tl.int32), mask=rows < B)


def snapshot_slot_order(indices: torch.Tensor, num_slots: int, pdl: bool = False) -> torch.Tensor:
    """``indices [B]`` (contiguous int32 or int64 slots, ``B <=`` :data:`SNAPSHOT_MAX_ROWS`) ->
    ``order [2, B]`` int32: ``order[1]`` the rows in ascending slot order (slots outside
    ``[0, num_slots)`` count as -1: first; ties by row), ``order[0]`` their slots, -1 for padding.

    Unlike :func:`slot_order` it reads each slot once, in one program, with ``pdl`` before the
    previous kernel has ended, and does not read them again after: ``order[1]`` is always a
    permutation of the rows, but ``order[0]`` may be what the slots held before the previous
    kernel wrote them. A decode that reads it must check each row's slot after its own wait
    (``GluonTileConfig.snapshot_order``)."""
    _check_slots("snapshot_slot_order", indices)
    B = indices.shape[0]
    if B > SNAPSHOT_MAX_ROWS:
        raise ValueError(f"snapshot_slot_order: argument 'indices' may hold at most {SNAPSHOT_MAX_ROWS} rows "
                         f"(got {B})")
    order = torch.empty(2, B, dtype=torch.int32, device=indices.device)
    if B:
        N = max(16, triton.next_power_of_2(B))
        _snapshot_order_kernel[(1,)](indices, order, B, num_slots, N=N, PDL=pdl,
                                     num_warps=max(4, min(16, N // 64)), **({"launch_pdl": True} if pdl else {}))
    return order


def slot_order(indices: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """``indices [B]`` (int32 or int64 slots, any values, padding too) -> ``order [2, B]`` of
    ``indices``' dtype: ``order[1]`` is the stable argsort of ``indices`` (the rows in ascending slot
    order) and ``order[0] = indices[order[1]]`` (their slots), so ``sorted_slots, rows = order``.
    ``pdl`` launches with programmatic dependent launch (sm_90+). Reads the slots as a dense vector,
    so ``indices`` must be contiguous; checked from metadata only."""
    _check_slots("slot_order", indices)
    B = indices.shape[0]
    order = torch.empty(2, B, dtype=indices.dtype, device=indices.device)
    if B:
        columns = min(triton.next_power_of_2(B), MAX_COLUMNS)
        per_program = max(1, min(64, COMPARISONS // columns))
        _slot_order_kernel[(triton.cdiv(B, per_program),)](indices, order[0], order[1], B, ROWS=per_program,
                                                          COLUMNS=columns, ONE_STEP=B <= MAX_COLUMNS, PDL=pdl,
                                                          num_warps=4,
                                                          **({"launch_pdl": True} if pdl else {}))
    return order
