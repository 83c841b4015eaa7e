"""A prototype, not a shipped kernel: the kv decode with the sums over K split across a cluster.

The split-K prototype (``kv_split.py``) exchanges its partial sums through global memory and an
acquire-release counter, and runs at 57-62% of copy bandwidth (NOTES.md, twenty-second session).
Here the ``CTAS`` programs that share a tile (``BV`` value columns of one head) are one thread-block
cluster (sm_90), and they exchange the partials through distributed shared memory:

0. at its start each program sets up the exchange's mbarriers and arrives (relaxed) on the
   cluster barrier, which it waits on only before its first write into another program (a
   program may not be written to before it has started);
1. each program loads ``K / CTAS`` key rows of the tile by TMA (with all of q and k, and its
   rows' share of q and k) and sums its rows' share of ``S^T k`` and ``S^T q``;
2. it stages both partial vectors in an outbox in its own shared memory, and one thread sends the
   outbox to a slot of its own in every program of the cluster (a bulk copy, ``mapa`` +
   ``cp.async.bulk.shared::cluster``, counted on the receiver's mbarrier); each program then waits
   on its own mbarrier until every program's partials have arrived. (A first version exchanged
   through ``st.shared::cluster`` and a release / acquire cluster barrier: the release compiles to
   ``MEMBAR.ALL.GPU``, and the exchange cost 88 us of 356 at bf16 B=512; a second stored 4 bytes
   at a time with ``st.async``, and the exchange's cost grew with the cluster, NOTES.md.) With
   ``exchange="scatter"`` the sums travel in two rounds of ``2 BV`` floats a program whatever the
   cluster's size (a reduce-scatter, then an all-gather: :func:`_sums_scatter`), where the one
   round of ``"all"`` brings every program ``CTAS`` times that and takes as much shared memory;
3. each program adds the ``CTAS`` slots in rank order (every program gets the same sums), takes
   ``u`` and ``o`` (the rank-0 program writes ``o``), updates its rows and stores them by TMA.

Neither Gluon nor Triton 3.6 exposes distributed shared memory (a layout split across CTAs does
not lower, NOTES.md), so the exchange is inline PTX on a region Triton does not know of: the
kernel is compiled for one CTA, and launched with ``CTAS``-CTA clusters and its dynamic shared
memory enlarged by the exchange's mbarriers, inboxes and outboxes, which sit at its end
(``%dynamic_smem_size``). The launcher sets the compiled kernel's launch metadata for that launch
(:func:`_cluster_launch`).

Programs of a cluster run together, so the kernel needs the GPU (no interpreter); tested in
``tests/test_kv_cluster.py``.

Measured on an H200 (NOTES.md, twenty-third session), given the step's order: two programs a
head (16 KB each, ``c2:128:2:8:12``) at 92.8-93.0% of copy bandwidth at bf16 B=512 and 90.4-90.5%
at B=256, where the shipped tile runs 94.9 and 92.5-92.7; clusters of 4 at 64-66%, of 8 at 32-45%.
A launch with a cluster dimension keeps at most 8 CTAs an SM resident there (the driver's count,
``benchmarks/cluster_occupancy.py``; ncu agrees), so small programs leave too few bytes in flight.
"""

from __future__ import annotations

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
    _tile_columns,
    _tile_inputs,
    _tile_row,
    kv_launch_args,
    kv_state_descriptor,
    lanes_along_keys,
    tma_descriptor,
)
from gdn_ops.gluon_decode_kv_tile import (
    GluonTileConfig,
    key_sums,
    qk_factors,
    update_rows,
)
from gdn_ops.reference import L2NORM_EPS
from gdn_ops.triton_decode import default_pdl
from gdn_ops.triton_gating import decode_gates
from gdn_ops.triton_slot_order import slot_order


class KvClusterConfig(NamedTuple):
    """``ctas`` programs (one cluster) a tile of ``BV`` value columns, each ``K / ctas`` key rows
    read ``rows`` at a time by ``num_warps`` warps (lanes ``vec`` values), in ``parts`` TMA copies;
    ``programs_per_sm`` sets the register cap; ``sort_rows`` as ``GluonTileConfig.sort_rows``;
    ``skip`` names what a ceiling leaves out; ``exchange`` how the partial sums travel."""

    ctas: int
    BV: int
    num_warps: int
    rows: int
    programs_per_sm: int
    vec: int = 8
    parts: int = 1
    sort_rows: bool = False
    # a ceiling, not a decode step (wrong sums): "sums" skips the exchange, each program's own partial
    # sums standing for the head's (still launched as clusters)
    skip: str = ""
    # "all": one round, every program's partials to every program; "scatter": a reduce-scatter
    # and an all-gather, a fixed 2 BV floats a program each way (_sums_scatter)
    exchange: str = "all"

    maxnreg = GluonTileConfig.maxnreg  # the tile kernel's register cap for programs_per_sm


# The exchange lives past Triton's dynamic shared memory, addressed from its end
# (``%end = global_smem + %dynamic_smem_size``, which the launch sets): two mbarriers in the last 16 bytes
# (the first round's at -8, the second's at -16), then the inboxes and outboxes below them
# (``exchange_bytes`` gives their size).


@gluon.jit
def _exchange_open(first_round_bytes, second_round_bytes):
    """At the start, every thread once: thread 0 sets up both exchange mbarriers to complete when
    these many bytes have arrived (one arrival each, its own) and makes them visible to the
    cluster; every thread then arrives, relaxed, on the cluster barrier that
    :func:`_exchange_ready` waits on, so that no program writes into another before the other
    has set up its barriers. (A round of no bytes completes at once and is never waited on.)"""
    return gl.inline_asm_elementwise(
        """{
        .reg .pred %first;
        .reg .b32 %thread, %end, %size, %bar;
        .reg .b64 %state;
        mov.u32 %thread, %tid.x;
        setp.eq.u32 %first, %thread, 0;
        mov.u32 %end, global_smem;
        mov.u32 %size, %dynamic_smem_size;
        add.u32 %end, %end, %size;
        sub.u32 %bar, %end, 8;
        @%first mbarrier.init.shared::cta.b64 [%bar], 1;
        @%first mbarrier.arrive.expect_tx.shared::cta.b64 %state, [%bar], $1;
        sub.u32 %bar, %end, 16;
        @%first mbarrier.init.shared::cta.b64 [%bar], 1;
        @%first mbarrier.arrive.expect_tx.shared::cta.b64 %state, [%bar], $2;
        @%first fence.mbarrier_init.release.cluster;
        barrier.cluster.arrive.relaxed.aligned;
        mov.u32 $0, 0;
        }""",
        "=r,r,r", [first_round_bytes, second_round_bytes], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _exchange_ready():
    """Every thread once, before its first write into another program: wait on the cluster
    barrier of :func:`_exchange_open` (every program of the cluster has set up its mbarriers)."""
    return gl.inline_asm_elementwise("barrier.cluster.wait.aligned; mov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _stage(value, offset, owner):
    """Store ``value`` at byte ``offset`` from the end of this program's shared memory where
    ``owner`` is nonzero, from the lanes below ``owner`` (the lanes that hold a column first; the
    others repeat it)."""
    return gl.inline_asm_elementwise(
        """{
        .reg .pred %p;
        .reg .b32 %lane, %end, %size, %addr;
        mov.u32 %lane, %laneid;
        setp.lt.u32 %p, %lane, $3;
        mov.u32 %end, global_smem;
        mov.u32 %size, %dynamic_smem_size;
        add.u32 %end, %end, %size;
        add.u32 %addr, %end, $2;
        @%p st.shared.b32 [%addr], $1;
        mov.u32 $0, 0;
        }""",
        "=r,r,r,r", [value, offset, owner], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _staged():
    """Every thread once, after staging: its stores made visible to the bulk copies (async
    proxy), then the CTA barrier, so an outbox is whole before thread 0 sends it."""
    return gl.inline_asm_elementwise("fence.proxy.async.shared::cta; bar.sync 0; mov.u32 $0, 0;", "=r", [],
                                     dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _send(source, target, peer, nbytes, barrier):
    """Thread 0 copies ``nbytes`` at byte ``source`` from the end of this program's shared memory
    to byte ``target`` from the end of ``peer``'s, counted on ``peer``'s mbarrier at byte
    ``barrier`` from the end: one bulk copy (remote stores of 4 bytes each ran at ~1.3 ns apiece
    per SM, NOTES.md)."""
    return gl.inline_asm_elementwise(
        """{
        .reg .pred %first;
        .reg .b32 %thread, %end, %size, %src, %dst, %bar, %remote, %remote_bar;
        mov.u32 %thread, %tid.x;
        setp.eq.u32 %first, %thread, 0;
        mov.u32 %end, global_smem;
        mov.u32 %size, %dynamic_smem_size;
        add.u32 %end, %end, %size;
        add.u32 %src, %end, $1;
        add.u32 %dst, %end, $2;
        add.u32 %bar, %end, $5;
        mapa.shared::cluster.u32 %remote, %dst, $3;
        mapa.shared::cluster.u32 %remote_bar, %bar, $3;
        @%first cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%remote], [%src], $4, [%remote_bar];
        mov.u32 $0, 0;
        }""",
        "=r,r,r,r,r,r", [source, target, peer, nbytes, barrier], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _arrived(barrier):
    """Every thread once: wait until the round counted on the mbarrier at byte ``barrier`` from
    the end has all its bytes (its first phase completes; its acquire makes them visible)."""
    return gl.inline_asm_elementwise(
        """{
        .reg .pred %done;
        .reg .b32 %end, %size, %bar;
        mov.u32 %end, global_smem;
        mov.u32 %size, %dynamic_smem_size;
        add.u32 %end, %end, %size;
        add.u32 %bar, %end, $1;
        kv_cluster_wait_${:uid}:
        mbarrier.try_wait.parity.shared::cta.b64 %done, [%bar], 0;
        @!%done bra kv_cluster_wait_${:uid};
        mov.u32 $0, 0;
        }""",
        "=r,r", [barrier], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _pull(offset, after):
    """The value at byte ``offset`` from the end of this program's shared memory, read after
    ``after`` (a wait on the round that brought it)."""
    return gl.inline_asm_elementwise(
        """{
        .reg .b32 %end, %size, %addr;
        mov.u32 %end, global_smem;
        mov.u32 %size, %dynamic_smem_size;
        add.u32 %end, %end, %size;
        add.u32 %addr, %end, $1;
        ld.shared.b32 $0, [%addr];
        }""",
        "=r,r,r", [offset, after], dtype=gl.float32, is_pure=False, pack=1)


@gluon.jit
def _send_ready(sk, sq, cols, outbox, BV: gl.constexpr, OWNERS: gl.constexpr):
    """Stage the partials ``sk`` (at ``cols``) and ``sq`` (at ``BV + cols``) in the outbox at byte
    ``outbox`` from the end, make them visible to the bulk copies, and wait until every program
    of the cluster may be written to. Returns the owner lanes' bound (for later stages)."""
    owner = gl.full_like(cols, OWNERS)
    _stage(sk, cols * 4 - outbox, owner)
    _stage(sq, (BV + cols) * 4 - outbox, owner)
    _staged()
    _exchange_ready()
    return owner


@gluon.jit
def _sums_all_to_all(sk, sq, rank, cols, CTAS: gl.constexpr, BV: gl.constexpr, OWNERS: gl.constexpr):
    """One round: each program stages its partials ``[2 BV]`` in its outbox and sends the whole of
    it to slot ``rank`` of every program's inbox (``CTAS`` slots); each adds the slots in rank
    order. Inbox ``CTAS x 2 BV`` floats below the mbarriers, outbox below it."""
    SLOT: gl.constexpr = 2 * BV * 4
    inbox: gl.constexpr = 16 + CTAS * SLOT
    outbox: gl.constexpr = inbox + SLOT
    _send_ready(sk, sq, cols, outbox, BV, OWNERS)
    for peer in gl.static_range(CTAS):
        _send(-outbox, rank * SLOT - inbox, peer, SLOT, -8)
    arrived = _arrived(-8) + gl.zeros_like(cols)
    Sk = gl.zeros_like(sk)
    Sq = gl.zeros_like(sq)
    for peer in gl.static_range(CTAS):
        Sk += _pull(peer * SLOT + cols * 4 - inbox, arrived)
        Sq += _pull(peer * SLOT + (BV + cols) * 4 - inbox, arrived)
    return Sk, Sq


@gluon.jit
def _sums_scatter(sk, sq, rank, cols, CTAS: gl.constexpr, BV: gl.constexpr, OWNERS: gl.constexpr):
    """Two rounds, ``2 BV`` floats a program each way whatever ``CTAS``: program ``rank`` owns
    chunk ``rank`` of ``M = 2 BV / CTAS`` floats of the partials ``[Sk | Sq]``; round 1 sends chunk
    j of every program's partials to program j (slot of the sender's rank), which adds them in
    rank order; round 2 sends each summed chunk to its place in every program's sums. Below the
    mbarriers: round 1's inbox (``CTAS x M``), round 2's inbox (``2 BV``), the partials' outbox
    (``2 BV``), the summed chunk's outbox (``M``)."""
    M: gl.constexpr = 2 * BV // CTAS
    VECTOR: gl.constexpr = 2 * BV * 4
    inbox1: gl.constexpr = 16 + VECTOR
    inbox2: gl.constexpr = inbox1 + VECTOR
    outbox1: gl.constexpr = inbox2 + VECTOR
    outbox2: gl.constexpr = outbox1 + M * 4
    owner = _send_ready(sk, sq, cols, outbox1, BV, OWNERS)
    for peer in gl.static_range(CTAS):
        _send(peer * M * 4 - outbox1, rank * M * 4 - inbox1, peer, M * 4, -8)
    arrived = _arrived(-8) + gl.zeros_like(cols)
    # the elements of this program's chunk, at positions cols (Sk) and BV + cols (Sq)
    mine_k = cols // M == rank
    mine_q = (BV + cols) // M == rank
    at_k = gl.where(mine_k, cols - rank * M, 0)
    at_q = gl.where(mine_q, BV + cols - rank * M, 0)
    chunk_k = gl.zeros_like(sk)
    chunk_q = gl.zeros_like(sq)
    for sender in gl.static_range(CTAS):
        chunk_k += _pull((sender * M + at_k) * 4 - inbox1, arrived)
        chunk_q += _pull((sender * M + at_q) * 4 - inbox1, arrived)
    _stage(chunk_k, at_k * 4 - outbox2, gl.where(mine_k, owner, 0))
    _stage(chunk_q, at_q * 4 - outbox2, gl.where(mine_q, owner, 0))
    _staged()
    for peer in gl.static_range(CTAS):
        _send(-outbox2, rank * M * 4 - inbox2, peer, M * 4, -16)
    summed = _arrived(-16) + gl.zeros_like(cols)
    return _pull(cols * 4 - inbox2, summed), _pull((BV + cols) * 4 - inbox2, summed)


def exchange_bytes(config: KvClusterConfig) -> int:
    """The shared memory a program's exchange takes past Triton's (the layouts of
    :func:`_sums_all_to_all` and :func:`_sums_scatter`)."""
    vector = 2 * config.BV * 4  # a program's partial sums
    if config.exchange == "scatter":
        return 16 + 3 * vector + vector // config.ctas
    return 16 + (config.ctas + 1) * vector


@gluon.jit
def _kv_cluster_kernel(
    q_desc, k_desc, state_desc, v_ptr,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt, rows_ptr, q_part_desc, k_part_desc,
    HV: gl.constexpr, GROUP: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BV: gl.constexpr,
    C: gl.constexpr, ROWS: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_C: gl.constexpr,
    FUSED_GATING: gl.constexpr, USE_L2NORM: gl.constexpr, HAS_INDICES: gl.constexpr,
    L2_EPS: gl.constexpr, PDL: gl.constexpr, SORTED_ROWS: gl.constexpr, PARTS: gl.constexpr, CTAS: gl.constexpr,
    EXCHANGE: gl.constexpr,
):
    NV: gl.constexpr = V // BV
    NC: gl.constexpr = BV // C
    KC: gl.constexpr = K // CTAS  # key rows of this program
    STEPS: gl.constexpr = KC // ROWS
    PART: gl.constexpr = KC // PARTS
    tile_smem = gl.allocate_shared_memory(state_desc.dtype, [1, 1, KC, NC, C], state_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [1, 1, K], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [1, 1, K], k_desc.layout)
    q_part_smem = gl.allocate_shared_memory(q_part_desc.dtype, [1, 1, KC], q_part_desc.layout)
    k_part_smem = gl.allocate_shared_memory(k_part_desc.dtype, [1, 1, KC], k_part_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [PARTS, 1], mbarrier.MBarrierLayout())
    for j in gl.static_range(PARTS):
        mbarrier.init(bars.index(j), count=1)
    if EXCHANGE == 1:
        _exchange_open(CTAS * 2 * BV * 4, 0)
    elif EXCHANGE == 2:
        _exchange_open(2 * BV * 4, 2 * BV * 4)
    if PDL:
        _gdc_wait()
        _gdc_launch_dependents()

    rows_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (NC * LANES_C), NC, LANES_C], [1, 1, WARPS],
                                                 [2, 1, 0])
    keys_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, rows_layout))
    cols_layout: gl.constexpr = gl.SliceLayout(0, rows_layout)
    flat_layout: gl.constexpr = gl.BlockedLayout([max(1, K // 32)], [32], [WARPS], [0])

    # compiled for one CTA, launched in clusters of CTAS consecutive CTAs: program id = CTA id
    pid = gl.program_id(0)
    tile = pid // CTAS
    rank = pid % CTAS
    row, in_batch = _tile_row(tile, num_tiles, rows_ptr, NV, HV, SORTED_ROWS)
    slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = _tile_inputs(
        tile, row, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr, dt_bias_ptr,
        s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt, NV, HV, BV, C, HAS_INDICES, FUSED_GATING, cols_layout)
    slot = gl.where(in_batch, slot, num_slots)
    hv = tile // NV % HV
    column_chunk = (tile % NV) * NC
    first_key = rank * KC
    first: gl.constexpr = (state_desc.block_type.nbytes + q_desc.block_type.nbytes + k_desc.block_type.nbytes
                           + q_part_desc.block_type.nbytes + k_part_desc.block_type.nbytes)
    mbarrier.expect(bars.index(0), first)
    tma.async_copy_global_to_shared(state_desc, [slot, hv, first_key, column_chunk, 0], bars.index(0),
                                    tile_smem if PARTS == 1 else tile_smem.slice(0, PART, dim=2))
    tma.async_copy_global_to_shared(q_desc, [row, hv // GROUP, 0], bars.index(0), q_smem)
    tma.async_copy_global_to_shared(k_desc, [row, hv // GROUP, 0], bars.index(0), k_smem)
    tma.async_copy_global_to_shared(q_part_desc, [row, hv // GROUP, first_key], bars.index(0), q_part_smem)
    tma.async_copy_global_to_shared(k_part_desc, [row, hv // GROUP, first_key], bars.index(0), k_part_smem)
    for j in gl.static_range(1, PARTS):
        mbarrier.expect(bars.index(j), state_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(state_desc, [slot, hv, first_key + j * PART, column_chunk, 0],
                                        bars.index(j), tile_smem.slice(j * PART, PART, dim=2))

    neg_exp_A = -gl.exp(A_log_in.to(gl.float32))
    g, beta = decode_gates(gate_a_in.to(gl.float32), gate_b_in.to(gl.float32), neg_exp_A,
                           dt_bias_in.to(gl.float32), softplus_beta, softplus_threshold, FUSED_GATING)
    decay = gl.exp(g)
    mbarrier.wait(bars.index(0), 0)

    q_factor, k_factor, kq = qk_factors(q_smem, k_smem, scale, K, flat_layout, USE_L2NORM, L2_EPS)
    rows_smem = tile_smem.reshape([KC, NC, C])
    # this program's keys of q and k (a shared-memory view cannot start at a run-time offset)
    k_keys = k_part_smem.reshape([KC])
    sk, sq = key_sums(rows_smem, q_part_smem.reshape([KC]), k_keys, bars, ROWS, STEPS, PART, rows_layout,
                      keys_layout)
    cols = _tile_columns(BV, C, cols_layout)
    if EXCHANGE == 1:
        Sk, Sq = _sums_all_to_all(gl.sum(sk, axis=0), gl.sum(sq, axis=0), rank, cols, CTAS, BV, NC * LANES_C)
    elif EXCHANGE == 2:
        Sk, Sq = _sums_scatter(gl.sum(sk, axis=0), gl.sum(sq, axis=0), rank, cols, CTAS, BV, NC * LANES_C)
    else:
        Sk = gl.sum(sk, axis=0)
        Sq = gl.sum(sq, axis=0)
    u = beta * (v_in.to(gl.float32) - decay * Sk * k_factor)
    o = decay * Sq * q_factor + u * kq
    update_rows(rows_smem, k_keys, k_factor, decay, u, ROWS, STEPS, rows_layout, keys_layout)

    o = gl.where(slot < num_slots, o, 0.0)
    out_cols = (tile % NV) * BV + cols
    gl.store(o_ptr + row.to(gl.int64) * s_ob + hv * s_oh + out_cols * s_ov, o.to(o_ptr.dtype.element_ty),
             mask=in_batch & (rank == 0))
    fence_async_shared()
    _cta_barrier()
    for j in gl.static_range(PARTS):
        tma.async_copy_shared_to_global(state_desc, [slot, hv, first_key + j * PART, column_chunk, 0],
                                        tile_smem.slice(j * PART, PART, dim=2))
    tma.store_wait(0)
    for j in gl.static_range(PARTS):
        mbarrier.invalidate(bars.index(j))


def cluster_reason(K: int, V: int, itemsize: int, config: KvClusterConfig) -> str | None:
    """Why ``config`` cannot tile a ``[K, V]`` kv head of ``itemsize``-byte elements, or ``None``."""
    lanes_k = lanes_along_keys(config.BV, itemsize, config.num_warps, config.vec)
    if config.skip not in ("", "sums") or config.exchange not in ("all", "scatter"):
        return f"skip={config.skip!r} in '', 'sums' and exchange={config.exchange!r} in 'all', 'scatter'"
    if config.ctas not in (2, 4, 8) or K % config.ctas or V % config.BV:
        return f"ctas={config.ctas} in (2, 4, 8) dividing K={K}, and BV={config.BV} dividing V={V}"
    KC = K // config.ctas
    period_rows = max(1, 1024 // (config.BV * itemsize))
    if (lanes_k is None or KC % config.rows or config.rows % lanes_k or config.rows % period_rows
            or KC % config.parts or (KC // config.parts) % config.rows):
        return (f"the layout of BV={config.BV}, num_warps={config.num_warps}, vec={config.vec} covering steps of "
                f"rows={config.rows} (whole swizzle blocks of {period_rows} rows) in parts={config.parts} of the "
                f"{KC} key rows a program")
    return None


def _cluster_launch(kernel, grid: int, ctas: int, slots_bytes: int, args: list, kwargs: dict) -> None:
    """Launch ``kernel`` (a Gluon kernel compiled for one CTA) as ``grid`` clusters of ``ctas``
    CTAs (Triton's launcher multiplies the grid by the cluster size), each with ``slots_bytes`` of
    dynamic shared memory past what Triton allocated. Triton's launcher takes the cluster size and
    the dynamic shared memory from the compiled kernel's packed metadata ``(num_warps, num_ctas,
    shared)``: this sets them for this launch and puts them back (the compiled kernel is Triton's
    cached object, which nothing else should find changed)."""
    compiled = kernel.warmup(*args, grid=(grid,), **kwargs)
    plain = compiled.packed_metadata
    num_warps, _, shared = plain
    compiled.packed_metadata = (num_warps, ctas, (shared + 15) // 16 * 16 + slots_bytes)
    try:
        kernel[(grid,)](*args, **kwargs)
    finally:
        compiled.packed_metadata = plain


def launch_decode_kv_cluster(q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *, scale: float,
                             use_qk_l2norm_in_kernel: bool, state_layout: str, softplus_beta: float,
                             softplus_threshold: float, config: KvClusterConfig, pdl: bool | None,
                             order: torch.Tensor | None = None) -> KvClusterConfig:
    """``triton_decode.launch_decode``'s signature (for ``benchmarks/tune_tma.py``): ``q, k [B, 1,
    HK, K]``, ``v [B, 1, HV, V]``, ``state [slots, HV, K, V]`` (kv layout, V contiguous), ``out [B,
    1, HV, V]``; ``order`` (``slot_order(indices)``) is used when ``config.sort_rows``. sm_90 only."""
    if state_layout != "kv":
        raise ValueError(f"launch_decode_kv_cluster: a kv pool (got {state_layout!r})")
    B, _, _, K = q.shape
    V = v.shape[3]
    reason = cluster_reason(K, V, state.element_size(), config)
    if reason is not None:
        raise ValueError(f"launch_decode_kv_cluster: {reason}")
    pdl = default_pdl(state.device) if pdl is None else pdl
    rows = None
    if config.sort_rows and indices is not None:
        indices, rows = order if order is not None else slot_order(indices.contiguous(), pdl=bool(pdl))
    num_tiles = B * v.shape[2] * (V // config.BV)
    if num_tiles == 0:
        return config
    KC = K // config.ctas
    args, kwargs = kv_launch_args(
        q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, num_tiles, config=config, scale=scale,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
        softplus_threshold=softplus_threshold, pdl=pdl, l2_eps=L2NORM_EPS,
        state_desc=kv_state_descriptor(state, config.BV, KC // config.parts))
    q3, k3 = q[:, 0], k[:, 0]
    args += [rows if rows is not None else state, tma_descriptor(q3, list(q3.shape), list(q3.stride()), [1, 1, KC]),
             tma_descriptor(k3, list(k3.shape), list(k3.stride()), [1, 1, KC])]
    kwargs.update(ROWS=config.rows, SORTED_ROWS=rows is not None, PARTS=config.parts, CTAS=config.ctas,
                  EXCHANGE=0 if config.skip else 2 if config.exchange == "scatter" else 1)
    _cluster_launch(_kv_cluster_kernel, num_tiles, config.ctas, exchange_bytes(config), args, kwargs)
    return config
