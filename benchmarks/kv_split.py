"""A prototype, not a shipped kernel: the kv decode with the sums over K split across programs.

A kv program must sum over all K key rows of its columns before it can write any of them, so the
shipped kv tile is a whole head of a bf16 state (32 KB) or half of an fp32 one, and its data
movement alone runs 3-5 points of copy bandwidth under 4 KB programs (NOTES.md, twenty-second
session). Here ``PARTS`` programs share a head, each reading ``K / PARTS`` key rows of all V
columns (4 KB in 8 parts for bf16, 16 for fp32):

1. each program sums its rows' share of ``S^T k`` and ``S^T q``, stores the two partial vectors
   to a scratch row of its own, and counts itself in on the head's counter (acquire-release);
2. the program that counts in last (no program waits on another, so no co-residency is assumed
   and the interpreter runs it too) adds the partials, takes the step's ``u`` and ``o``, and
   rewrites the whole head: its rows were read moments before by the head's other programs, so
   they come from L2, and only the writes reach DRAM from here;
3. it sets the counter back to zero, so the scratch is ready for the next call (and for a CUDA
   graph's next replay) without a memset.

With ``wait`` (thirty-second session) no program rewrites another's rows: every program of a head
waits at the head's counter until all ``PARTS`` have counted in, reads their partial ``S^T k``
back, and writes its own rows from registers (the head's first program also the output). The
counter only ever grows, by ``PARTS`` a call, so it needs no reset between calls or replays (an
int32 counter: good for 2^31 / PARTS calls, which a benchmark never reaches). Programs that wait
on each other need the whole head resident at once; the grid's programs start in order and a head
is ``PARTS`` consecutive programs, far fewer than an SM holds, so a head's last program always
finds a slot. The interpreter runs one program at a time, so this mode runs on a GPU only.
Measured on an H200 (NOTES.md, thirty-second session): correct, and 37-67% of copy bandwidth at
fp32 kv B=32 and 128 and bf16 kv B=256 and 512, where the shipped kv tile runs 86-95.5%. Its
ceilings (``KvSplitConfig.skip``) place the cost: without the exchange of partials the same
program ran at 95.2-95.9% at fp32 kv B=128 (one warp, 8 key rows), with the exchange but no wait
at 64-72%.

Two more forms of the wait (thirty-third session), both worse: with ``heads`` a program takes one
part of that many consecutive heads in turn and requests the next head's rows before each wait
(``_kv_split_pipelined_kernel``), 41-47% at fp32 kv B=128 and 20-33% at bf16 kv B=256; with
``sum_once`` the head's last program to count in adds the partials and the others read its totals
(one vector instead of ``PARTS``), 56% and 52%. So neither a latency that overlap hides nor the
partials' read volume is the exchange's cost.

Two more ceilings (thirty-fourth session) take the exchange apart: ``skip="read"`` stores the
partials and nothing else, ``skip="store"`` only reads them back; with ``ring`` the heads share
``ring`` heads' scratch rows, so that the scratch stays in L2 instead of being written back to DRAM
(64 MB a call at fp32 kv B=128 with 16 parts: an eighth of the call's traffic). Without a skip a
ring is a real exchange: a head's programs wait until the previous head on the rows has counted
its readers out (the done counts), and count themselves out once they have read them. Measured at
fp32 kv B=128 (NOTES.md, thirty-fourth session): storing the partials alone ran at 92.0% of copy
bandwidth into a ring of 64 heads' rows and at 83.8% into a set a head (the bare program 96.5, the
shipped tile 94.4); reading them back cost 19.5 points more, the wait 19 more (the real ring 58.5%).

The scratch (``PARTS + 1`` rows of ``2 V`` floats and two counters per head) is kept per device,
shape and mode (``_scratch``: counters that share it must grow in step); it is allocated the first
time a shape is seen, which must not be during a capture.

Measured on an H200 (NOTES.md, twenty-second session, calls 10-12): correct, and at best 57-62% of
copy bandwidth at bf16 B=256-512 and fp32 B=128-256, where the shipped kv tile runs 92.5-96%.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gdn_ops.reference import L2NORM_EPS
from gdn_ops.triton_decode import default_pdl
from gdn_ops.triton_gating import decode_gates, head_gate_params
from gdn_ops.triton_slot_order import slot_order


class KvSplitConfig(NamedTuple):
    """``parts`` programs a head (each ``K / parts`` key rows), ``num_warps`` warps each; with
    ``sort_rows`` the rows in slot order (``triton_slot_order``), as ``GluonTileConfig.sort_rows``;
    the last program of a head rewrites it ``depth`` parts at a time."""

    parts: int
    num_warps: int
    sort_rows: bool = False
    depth: int = 1  # parts the last program reads from L2 before writing any (a divisor of parts)
    maxnreg: int = 0  # a register cap (0: none), so that more programs fit an SM; the last program spills
    wait: bool = False  # every program waits for its head's partials and writes its own rows
    poll_load: bool = False  # with wait: poll the counter by volatile loads (one acquire at the end)
    # the wait mode's ceilings (wrong results; for timing only): "wait", no program waits; "fence", nor
    # does its count order the partials (a relaxed atomic); "exchange", no partials, count or wait at all;
    # "read", the partials stored but neither counted nor read back (each program updates from its own
    # sums); "store", nothing stored or counted, the scratch's partials read back as they stand
    skip: str = ""
    heads: int = 1  # with wait: consecutive heads a program, the next one's rows requested before each wait
    sum_once: bool = False  # with wait: the last program to count in adds the partials, the others read its totals
    # head h uses the scratch rows and counter of h % ring (0: its own), so that the scratch (ring * parts
    # * 2 V floats) stays in L2: with a skip the heads sharing rows race (a ceiling); with wait alone each
    # head waits until the previous head on its rows has read them (one warp a program)
    ring: int = 0


# a wait gives up after this many polls (about a second, far beyond any wait that will end), so that a bug in
# the protocol fails the reference check instead of hanging the GPU
MAX_POLLS: tl.constexpr = tl.constexpr(1 << 20)


@triton.jit
def _summed_partials(partial_ptr, head, cols, offset, PARTS: tl.constexpr, V: tl.constexpr):
    """``[V]``: the head's ``PARTS`` partial vectors at ``offset`` (0: ``S^T k``, ``V``: ``S^T q``) of
    their ``2 V`` scratch rows, added in a fixed order (from L2: another program wrote them)."""
    rows = partial_ptr + (head * PARTS).to(tl.int64) * (2 * V) + offset + cols
    total = tl.zeros([V], tl.float32)
    for p in tl.static_range(PARTS):
        total += tl.load(rows + p * (2 * V), cache_modifier=".cg")
    return total


@triton.jit
def _head_update(
    Sk, q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
    softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A, s_dt,
    K: tl.constexpr, FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr,
):
    """A head's step from its summed ``Sk = S^T k`` (raw k, ``[V]``): ``u = beta (v - d S^T k)`` with
    k normalised, the factors that normalise k and q (q's with ``scale``), the normalised ``k . q``
    and the decay ``d = exp(g)``."""
    beta, v_head, k_factor, q_factor, kq, decay = _head_inputs(
        q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
        softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A, s_dt,
        K, FUSED_GATING, USE_L2NORM, L2_EPS)
    return beta * (v_head - decay * Sk * k_factor), k_factor, q_factor, kq, decay


@triton.jit
def _head_inputs(
    q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
    softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A, s_dt,
    K: tl.constexpr, FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr,
):
    """What a head's step needs besides ``S^T k``: ``(beta, v [V], k_factor, q_factor, kq, decay)``
    (see :func:`_head_update`). The wait mode loads them before it stores anything, since the
    compiler cannot move a load above a store it cannot prove apart from it; timed, that order
    changed nothing (thirty-fourth session, call 3), but it keeps each ceiling's SASS to what its
    exchange needs."""
    all_keys = tl.arange(0, K)
    k_all = tl.load(k_ptr + row * s_kb + qk_head * s_kh + all_keys).to(tl.float32)
    q_all = tl.load(q_ptr + row * s_qb + qk_head * s_qh + all_keys).to(tl.float32)
    if USE_L2NORM:
        k_factor = 1.0 / tl.sqrt(tl.sum(k_all * k_all, axis=0) + L2_EPS)
        q_factor = scale / tl.sqrt(tl.sum(q_all * q_all, axis=0) + L2_EPS)
    else:
        k_factor = 1.0
        q_factor = scale
    kq = tl.sum(k_all * q_all, axis=0) * (k_factor * q_factor)
    gate_a = tl.load(gate_a_ptr + row * s_ab + hv * s_ah).to(tl.float32)
    gate_b = tl.load(gate_b_ptr + row * s_bb + hv * s_bh).to(tl.float32)
    neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)
    g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)
    decay = tl.exp(g)
    v_head = tl.load(v_ptr + row * s_vb + hv * s_vh + cols).to(tl.float32)
    return beta, v_head, k_factor, q_factor, kq, decay


@triton.jit
def _head_place(head, B, num_slots, rows_ptr, indices_ptr, state_ptr, s_sb, s_sh, HV: tl.constexpr,
                GROUP: tl.constexpr, HAS_INDICES: tl.constexpr, SORTED_ROWS: tl.constexpr):
    """``(row, in_batch, live, head_state, qk_head)`` of ``head`` (its place in the (slot-ordered)
    batch times ``HV`` plus its value head): its batch row (0 when not in the batch), whether the row is
    in the batch, whether its slot is in the pool (a padded row's is not), its state's base pointer
    (slot 0's when not live) and its q/k head. A place past the batch is neither in it nor live."""
    place = head // HV
    hv = head % HV
    in_range = place < B
    if SORTED_ROWS:
        row = tl.load(rows_ptr + place, mask=in_range, other=-1)
        in_batch = (row >= 0) & (row < B)
        row = tl.where(in_batch, row, 0).to(tl.int64)
    else:
        row = tl.where(in_range, place, 0).to(tl.int64)
        in_batch = in_range
    if HAS_INDICES:
        slot = tl.load(indices_ptr + (place if SORTED_ROWS else row), mask=in_range, other=-1).to(tl.int64)
    else:
        slot = row
    live = in_batch & (slot >= 0) & (slot < num_slots)
    slot = tl.where(live, slot, 0)
    return row, in_batch, live, state_ptr + slot * s_sb + hv * s_sh, (hv // GROUP).to(tl.int64)


@triton.jit
def _publish_partials(S, k_part, q_part, partial_ptr, count_ptr, scratch, part, cols, active, PARTS: tl.constexpr,
                      V: tl.constexpr, SKIP: tl.constexpr):
    """``(own_Sk, own_Sq, arrived)``: this program's share ``[V]`` of ``S^T k`` and ``S^T q`` over its
    rows ``S [K / PARTS, V]`` (fp32), stored to its scratch row, and the head's count it found when it
    counted in (acquire-release, so the stores are visible to whoever sees the count). Nothing is
    stored or counted unless ``active``; with ``SKIP`` (``KvSplitConfig.skip``) less or nothing. The
    scratch row and counter are the head's ``scratch`` (``KvSplitConfig.ring``)."""
    own_Sk = tl.sum(S * k_part[:, None], axis=0)
    own_Sq = tl.sum(S * q_part[:, None], axis=0)
    if SKIP == "exchange" or SKIP == "store":
        arrived = part
    else:
        partial = partial_ptr + (scratch * PARTS + part).to(tl.int64) * (2 * V)
        tl.store(partial + cols, own_Sk, mask=active)
        tl.store(partial + V + cols, own_Sq, mask=active)
        if SKIP == "read":
            arrived = part
        else:
            # every warp's stores before the one thread's count: its release covers only what precedes it
            tl.debug_barrier()
            if SKIP == "fence":
                arrived = tl.atomic_add(count_ptr + scratch, 1, sem="relaxed", mask=active)
            else:
                arrived = tl.atomic_add(count_ptr + scratch, 1, sem="acq_rel", mask=active)
    return own_Sk, own_Sq, arrived


@triton.jit
def _wait_for_rows(count_ptr, done_ptr, head, scratch, heads, PARTS: tl.constexpr, RING: tl.constexpr):
    """With a ring of scratch rows (``KvSplitConfig.ring``): wait until the previous head on this
    head's rows ``scratch`` has read them. ``uses`` of the call's ``heads`` share the rows, and this
    head's turn on them is ``c * uses + head // RING``, ``c`` being the number of calls before this
    one. Until this program counts in, the rows' count holds ``c * uses * PARTS`` plus this call's
    earlier turns (fewer than ``uses * PARTS``), which gives ``c``. Each turn's ``PARTS`` readers
    count out on ``done_ptr``, so the wait ends once ``turn * PARTS`` have."""
    uses = (heads - 1 - scratch) // RING + 1
    before = tl.load(count_ptr + scratch, volatile=True)
    use = before // (uses * PARTS) * uses + head // RING
    freed = tl.atomic_add(done_ptr + scratch, 0, sem="acquire")
    polls = 0
    while (freed - use * PARTS < 0) & (polls < MAX_POLLS):
        freed = tl.atomic_add(done_ptr + scratch, 0, sem="acquire")
        polls += 1


@triton.jit
def _kv_split_kernel(
    q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, state_ptr, indices_ptr, rows_ptr, o_ptr,
    partial_ptr, count_ptr, total_ptr, done_ptr, B, num_slots, scale, softplus_beta, softplus_threshold,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_A, s_dt, s_sb, s_sh, s_sk,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, PARTS: tl.constexpr,
    FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, HAS_INDICES: tl.constexpr, SORTED_ROWS: tl.constexpr,
    L2_EPS: tl.constexpr, PDL: tl.constexpr, DEPTH: tl.constexpr, WAIT: tl.constexpr, POLL_LOAD: tl.constexpr,
    SKIP: tl.constexpr, SUM_ONCE: tl.constexpr, RING: tl.constexpr,
):
    FREE_ROWS: tl.constexpr = RING > 0 and SKIP == "" and WAIT
    RP: tl.constexpr = K // PARTS
    pid = tl.program_id(0)
    head = pid // PARTS  # place in the (slot-ordered) batch * HV + value head
    part = pid % PARTS
    hv = head % HV
    scratch = head % RING if RING else head
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row, in_batch, live, head_state, qk_head = _head_place(head, B, num_slots, rows_ptr, indices_ptr, state_ptr,
                                                           s_sb, s_sh, HV, GROUP, HAS_INDICES, SORTED_ROWS)
    cols = tl.arange(0, V)
    keys = part * RP + tl.arange(0, RP)
    S = tl.load(head_state + keys[:, None] * s_sk + cols[None, :], mask=live, other=0.0).to(tl.float32)
    k_part = tl.load(k_ptr + row * s_kb + qk_head * s_kh + keys).to(tl.float32)
    q_part = tl.load(q_ptr + row * s_qb + qk_head * s_qh + keys).to(tl.float32)
    if WAIT:
        beta, v_head, k_factor, q_factor, kq, decay = _head_inputs(
            q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
            softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A,
            s_dt, K, FUSED_GATING, USE_L2NORM, L2_EPS)
    if FREE_ROWS:
        _wait_for_rows(count_ptr, done_ptr, head, scratch, B * HV, PARTS, RING)
    own_Sk, own_Sq, arrived = _publish_partials(S, k_part, q_part, partial_ptr, count_ptr, scratch, part, cols,
                                                part < PARTS, PARTS, V, SKIP)  # always active
    if WAIT:
        _write_own_rows(S, own_Sk, own_Sq, k_part, keys, arrived, head, scratch, part, row, live, in_batch, head_state,
                        cols, beta, v_head, k_factor, q_factor, kq, decay, o_ptr, partial_ptr, count_ptr, total_ptr,
                        done_ptr, s_ob, s_oh, s_sk, HV, V, PARTS, POLL_LOAD, SKIP, SUM_ONCE, FREE_ROWS)
    elif arrived == PARTS - 1:
        tl.debug_barrier()  # every warp's reads after the acquire
        Sk = _summed_partials(partial_ptr, head, cols, 0, PARTS, V)
        Sq = _summed_partials(partial_ptr, head, cols, V, PARTS, V)
        u, k_factor, q_factor, kq, decay = _head_update(
            Sk, q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
            softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A, s_dt,
            K, FUSED_GATING, USE_L2NORM, L2_EPS)
        o = tl.where(live, decay * Sq * q_factor + u * kq, 0.0)
        tl.store(o_ptr + row * s_ob + hv * s_oh + cols, o.to(o_ptr.dtype.element_ty), mask=in_batch)
        # DEPTH parts' rows requested before any of them is written: the stores may alias the
        # loads, so the compiler would otherwise wait on L2 for each part in turn
        for first in tl.static_range(0, PARTS, DEPTH):
            batch = ()
            for p in tl.static_range(first, first + DEPTH):
                rows_p = p * RP + tl.arange(0, RP)
                batch = batch + (tl.load(head_state + rows_p[:, None] * s_sk + cols[None, :], mask=live, other=0.0,
                                         cache_modifier=".cg"),)
            for j in tl.static_range(DEPTH):
                rows_p = (first + j) * RP + tl.arange(0, RP)
                k_p = tl.load(k_ptr + row * s_kb + qk_head * s_kh + rows_p).to(tl.float32) * k_factor
                tl.store(head_state + rows_p[:, None] * s_sk + cols[None, :],
                         (batch[j].to(tl.float32) * decay + k_p[:, None] * u[None, :]).to(state_ptr.dtype.element_ty),
                         mask=live)
        tl.store(count_ptr + head, 0)


@triton.jit
def _sums_once(partial_ptr, total_ptr, done_ptr, head, part, cols, last, calls, PARTS: tl.constexpr, V: tl.constexpr):
    """``(Sk, Sq)``, the head's summed ``S^T k`` and ``S^T q`` (``Sq`` for part 0 only), added up once
    a head: the ``last`` program to count in adds the partials (all visible to it: its count was an
    acquire), stores the totals and releases them by growing the head's done count to ``calls``
    (this call's number, so no reset is needed); the others wait for that and read the totals."""
    totals = total_ptr + head.to(tl.int64) * (2 * V)
    if last:
        Sk = _summed_partials(partial_ptr, head, cols, 0, PARTS, V)
        Sq = _summed_partials(partial_ptr, head, cols, V, PARTS, V)
        tl.store(totals + cols, Sk)
        tl.store(totals + V + cols, Sq)
        tl.debug_barrier()
        tl.atomic_add(done_ptr + head, 1, sem="release")
    else:
        done = tl.atomic_add(done_ptr + head, 0, sem="acquire")
        polls = 0
        while (done - calls < 0) & (polls < MAX_POLLS):
            done = tl.atomic_add(done_ptr + head, 0, sem="acquire")
            polls += 1
        tl.debug_barrier()  # every warp's reads after the acquire
        Sk = tl.load(totals + cols, cache_modifier=".cg")
        Sq = tl.load(totals + V + cols, mask=part == 0, other=0.0, cache_modifier=".cg")
    return Sk, Sq


@triton.jit
def _write_own_rows(
    S, own_Sk, own_Sq, k_part, keys, arrived, head, scratch, part, row, live, in_batch, head_state, cols,
    beta, v_head, k_factor, q_factor, kq, decay, o_ptr, partial_ptr, count_ptr, total_ptr, done_ptr, s_ob, s_oh, s_sk,
    HV: tl.constexpr, V: tl.constexpr, PARTS: tl.constexpr, POLL_LOAD: tl.constexpr, SKIP: tl.constexpr,
    SUM_ONCE: tl.constexpr, FREE_ROWS: tl.constexpr,
):
    """The ``wait`` mode's second half: wait until the head's ``PARTS`` programs have counted in
    (this call's target is the next multiple of ``PARTS`` above the count this program found), then
    update this program's rows ``S [K / PARTS, V]`` (keys ``keys``, whose k is ``k_part``) from the
    head's summed partials and the rest of its step (:func:`_head_inputs`), polling the counter by
    acquire atomics or (``POLL_LOAD``) volatile loads; with ``SKIP`` (``KvSplitConfig.skip``, a
    ceiling) without waiting. The scratch rows and counter are the head's ``scratch``
    (``KvSplitConfig.ring``). With ``SUM_ONCE`` the last program to count in sums the partials and
    publishes the totals, which the others wait for. With ``FREE_ROWS`` (a real ring) the program
    counts itself out on ``done_ptr`` once it has read all it needs of the rows, so that the next
    head on them may overwrite them."""
    target = (arrived // PARTS + 1) * PARTS
    seen = arrived + 1
    if SUM_ONCE:
        Sk, Sq = _sums_once(partial_ptr, total_ptr, done_ptr, scratch, part, cols, seen == target, target // PARTS,
                            PARTS, V)
    elif SKIP == "":
        if POLL_LOAD:
            polls = 0
            while (seen - target < 0) & (polls < MAX_POLLS):
                seen = tl.load(count_ptr + scratch, volatile=True)
                polls += 1
            seen = tl.atomic_add(count_ptr + scratch, 0, sem="acquire")
        else:
            polls = 0
            while (seen - target < 0) & (polls < MAX_POLLS):
                seen = tl.atomic_add(count_ptr + scratch, 0, sem="acquire")
                polls += 1
        tl.debug_barrier()  # every warp's reads after the acquire
    if SKIP == "exchange" or SKIP == "read":
        Sk = own_Sk
    elif not SUM_ONCE:
        Sk = _summed_partials(partial_ptr, scratch, cols, 0, PARTS, V)
    if FREE_ROWS and part != 0:
        # the release orders this warp's reads of the rows (one warp: the launcher refuses more)
        # before the count that lets the next head overwrite them; part 0 reads S^T q as well, below
        tl.atomic_add(done_ptr + scratch, 1, sem="release")
    hv = head % HV
    u = beta * (v_head - decay * Sk * k_factor)
    tl.store(head_state + keys[:, None] * s_sk + cols[None, :],
             (S * decay + (k_part * k_factor)[:, None] * u[None, :]).to(head_state.dtype.element_ty), mask=live)
    if part == 0:
        if SKIP == "exchange" or SKIP == "read":
            Sq = own_Sq
        elif not SUM_ONCE:
            Sq = _summed_partials(partial_ptr, scratch, cols, V, PARTS, V)
            if FREE_ROWS:
                tl.atomic_add(done_ptr + scratch, 1, sem="release")
        o = tl.where(live, decay * Sq * q_factor + u * kq, 0.0)
        tl.store(o_ptr + row * s_ob + hv * s_oh + cols, o.to(o_ptr.dtype.element_ty), mask=in_batch)


@triton.jit
def _kv_split_pipelined_kernel(
    q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, state_ptr, indices_ptr, rows_ptr, o_ptr,
    partial_ptr, count_ptr, total_ptr, done_ptr, B, num_slots, scale, softplus_beta, softplus_threshold,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_A, s_dt, s_sb, s_sh, s_sk,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, PARTS: tl.constexpr,
    HEADS: tl.constexpr, FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, HAS_INDICES: tl.constexpr,
    SORTED_ROWS: tl.constexpr, L2_EPS: tl.constexpr, PDL: tl.constexpr, POLL_LOAD: tl.constexpr,
    SKIP: tl.constexpr, SUM_ONCE: tl.constexpr,
):
    """The ``wait`` mode over ``HEADS`` consecutive heads a program (``KvSplitConfig.heads``), one
    part of each, pipelined: the next head's rows are requested before this head's wait, so that a
    program's state bytes keep moving while its head's partials are exchanged. A group of ``PARTS``
    consecutive programs shares the heads; the last group's heads past the batch run the exchange on
    scratch rows of their own and touch neither the pool nor the output."""
    RP: tl.constexpr = K // PARTS
    pid = tl.program_id(0)
    part = pid % PARTS
    head = (pid // PARTS) * HEADS
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    cols = tl.arange(0, V)
    keys = part * RP + tl.arange(0, RP)
    row, in_batch, live, head_state, qk_head = _head_place(head, B, num_slots, rows_ptr, indices_ptr, state_ptr,
                                                           s_sb, s_sh, HV, GROUP, HAS_INDICES, SORTED_ROWS)
    S = tl.load(head_state + keys[:, None] * s_sk + cols[None, :], mask=live, other=0.0)
    k_part = tl.load(k_ptr + row * s_kb + qk_head * s_kh + keys)
    q_part = tl.load(q_ptr + row * s_qb + qk_head * s_qh + keys)
    own_Sk, own_Sq, arrived = _publish_partials(S.to(tl.float32), k_part.to(tl.float32), q_part.to(tl.float32),
                                                partial_ptr, count_ptr, head, part, cols, part < PARTS, PARTS, V,
                                                SKIP)
    for j in range(HEADS):
        has_next = j + 1 < HEADS
        n_row, n_in_batch, n_live, n_head_state, n_qk_head = _head_place(
            head + 1, B, num_slots, rows_ptr, indices_ptr, state_ptr, s_sb, s_sh, HV, GROUP, HAS_INDICES, SORTED_ROWS)
        # requested now, used after this head's exchange: kept in the pool's dtype until then, since a
        # conversion here would wait for the bytes
        n_S = tl.load(n_head_state + keys[:, None] * s_sk + cols[None, :], mask=n_live & has_next, other=0.0)
        n_k_part = tl.load(k_ptr + n_row * s_kb + n_qk_head * s_kh + keys)
        n_q_part = tl.load(q_ptr + n_row * s_qb + n_qk_head * s_qh + keys)
        hv = head % HV
        beta, v_head, k_factor, q_factor, kq, decay = _head_inputs(
            q_ptr, k_ptr, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr, row, qk_head, hv, cols, scale,
            softplus_beta, softplus_threshold, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_A,
            s_dt, K, FUSED_GATING, USE_L2NORM, L2_EPS)
        _write_own_rows(S.to(tl.float32), own_Sk, own_Sq, k_part.to(tl.float32), keys, arrived, head, head, part, row,
                        live, in_batch, head_state, cols, beta, v_head, k_factor, q_factor, kq, decay, o_ptr,
                        partial_ptr, count_ptr, total_ptr, done_ptr, s_ob, s_oh, s_sk, HV, V, PARTS, POLL_LOAD, SKIP,
                        SUM_ONCE, False)
        own_Sk, own_Sq, arrived = _publish_partials(n_S.to(tl.float32), n_k_part.to(tl.float32),
                                                    n_q_part.to(tl.float32), partial_ptr, count_ptr, head + 1, part,
                                                    cols, has_next, PARTS, V, SKIP)
        head += 1
        row, in_batch, live, head_state, qk_head = n_row, n_in_batch, n_live, n_head_state, n_qk_head
        S, k_part, q_part = n_S, n_k_part, n_q_part


_SCRATCH: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _scratch(device: torch.device, heads: int, parts: int, V: int, wait: bool, sum_once: bool,
             shared_by: int, skip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial sums, then each head's totals (``sum_once``), all written before they are read;
    and the counters, then the done counts (``sum_once``), zeroed here: a counter is set back to zero
    by each head's last program, or with ``wait`` grown by ``parts`` a call, a done count by one a
    call; with a ring, the done counts count each use's readers out. For ``heads`` heads, or a ring of
    ``heads`` rows shared by ``shared_by`` heads (0: none; a ring's counts hold for one number of heads).
    Kept apart by every mode and ceiling (``skip``), since a counter must see every call its done count
    sees: a ceiling that counts in but never out would leave a real ring's waits unending."""
    key = (device, heads, parts, V, wait, sum_once, shared_by, skip)
    if key not in _SCRATCH:
        _SCRATCH[key] = (torch.empty(heads * (parts + 1) * 2 * V, dtype=torch.float32, device=device),
                         torch.zeros(2 * heads, dtype=torch.int32, device=device))
    return _SCRATCH[key]


def launch_decode_kv_split(q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *, scale: float,
                           use_qk_l2norm_in_kernel: bool, state_layout: str, softplus_beta: float,
                           softplus_threshold: float, config: KvSplitConfig, pdl: bool | None,
                           order: torch.Tensor | None = None) -> KvSplitConfig:
    """``triton_decode.launch_decode``'s signature (for ``benchmarks/tune_tma.py``): ``q, k [B, 1,
    HK, K]``, ``v [B, 1, HV, V]``, ``state [slots, HV, K, V]`` (kv layout, V contiguous), ``out [B,
    1, HV, V]``; ``order`` (``slot_order(indices)``) is used when ``config.sort_rows``."""
    if state_layout != "kv" or any(t.stride(-1) != 1 for t in (q, k, v, state, out)):
        raise ValueError(f"launch_decode_kv_split: a kv pool, and q, k, v, the pool and out with a unit inner "
                         f"stride (got {state_layout!r})")
    B, _, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    powers_of_two = all(n > 0 and n & (n - 1) == 0 for n in (K, V, config.parts))  # tl.arange's extents
    if not powers_of_two or K % config.parts or config.parts % config.depth:
        raise ValueError(f"launch_decode_kv_split: K={K}, V={V} and config.parts={config.parts} powers of two, "
                         f"parts dividing K, and config.depth={config.depth} dividing config.parts")
    if config.ring < 0 or config.ring and (config.heads > 1 or config.sum_once or not config.skip and (
            not config.wait or config.num_warps > 1)):
        raise ValueError(f"launch_decode_kv_split: config.ring={config.ring} shares scratch rows between heads: "
                         "with config.skip (a ceiling), or with config.wait and one warp a program (whose release "
                         "orders its reads of the rows), in either case one head a program and no sum_once")
    if config.wait and os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("launch_decode_kv_split: config.wait has a head's programs wait for each other, which "
                         "the interpreter (one program at a time) cannot run; it needs a GPU")
    if config.heads > 1 and not config.wait:
        raise ValueError(f"launch_decode_kv_split: config.heads={config.heads} pipelines the wait mode; it needs "
                         "config.wait")
    if config.sum_once and (not config.wait or config.skip or config.poll_load):
        raise ValueError("launch_decode_kv_split: config.sum_once changes how the wait mode exchanges; it needs "
                         "config.wait, without config.skip or config.poll_load")
    pdl = default_pdl(state.device) if pdl is None else pdl
    rows = None
    if config.sort_rows and indices is not None:
        indices, rows = order if order is not None else slot_order(indices.contiguous(), pdl=bool(pdl))
    if B == 0:
        return config
    groups = triton.cdiv(B * HV, config.heads)
    heads = min(groups * config.heads, config.ring) if config.ring else groups * config.heads  # scratch rows
    partial, count = _scratch(state.device, heads, config.parts, V, config.wait, config.sum_once,
                              B * HV if config.ring else 0, config.skip)
    fused = A_log is not None
    if config.heads > 1:
        kernel, grid = _kv_split_pipelined_kernel, (groups * config.parts,)
        options = {"HEADS": config.heads, "num_stages": 1}  # the loop is pipelined by hand
    else:
        kernel, grid = _kv_split_kernel, (B * HV * config.parts,)
        options = {"DEPTH": config.depth, "WAIT": config.wait, "RING": config.ring}
    kernel[grid](
        q, k, v, gate_a, gate_b, A_log if fused else gate_a, dt_bias if fused else gate_a, state,
        indices if indices is not None else state, rows if rows is not None else state, out, partial, count,
        partial[heads * config.parts * 2 * V:], count[heads:],
        B, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2), gate_a.stride(0),
        gate_a.stride(2), gate_b.stride(0), gate_b.stride(2), out.stride(0), out.stride(2),
        A_log.stride(0) if fused else 0, dt_bias.stride(0) if fused else 0, state.stride(0), state.stride(1),
        state.stride(2),
        HV=HV, GROUP=HV // HK, K=K, V=V, PARTS=config.parts, FUSED_GATING=fused,
        USE_L2NORM=bool(use_qk_l2norm_in_kernel), HAS_INDICES=indices is not None, SORTED_ROWS=rows is not None,
        L2_EPS=L2NORM_EPS, PDL=bool(pdl), POLL_LOAD=config.poll_load, SKIP=config.skip, SUM_ONCE=config.sum_once,
        num_warps=config.num_warps,
        **options,
        **({"maxnreg": config.maxnreg} if config.maxnreg else {}), **({"launch_pdl": True} if pdl else {}),
    )
    return config
