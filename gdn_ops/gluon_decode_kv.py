"""Persistent Gluon decode kernel for a 2-byte state in the "kv" layout: warps along the value columns.

In the kv layout a head's state is ``[K, V]`` with the values contiguous, and both products of the
step sum over the keys (the rows). Triton lays a ``[K, BV]`` tile out with its warps along the
keys, so every key sum of the Triton kernels (``triton_decode_tma.py``) crosses warps through
shared memory and a barrier; Nsight Compute put short-scoreboard and barrier stalls first. Gluon
lets the layout be chosen: here each warp owns ``BV / WARPS`` columns and all K keys, its lanes
split between the keys and the values, so a key sum never leaves the warp (with 8 lanes along the
128 keys, as in the shipped tiles: in-register adds, then 3 shuffles).

A tile's key rows are held in 128-byte chunks (``[K, BV // C, C]``, see ``chunk_columns``): a
whole-head tile then moves as one TMA copy of consecutive rows under the 128-byte swizzle, which
measured ~5% faster than two copies of half rows.

The loop is the same persistent walk as the Triton kernel, with the pipeline written out: each
program keeps ``NUM_BUF`` tiles (with their q, k) in flight through TMA, refilling a buffer as soon
as every warp has read it; v, the gates and the slot index of the next tile are loaded into
registers at the start of the current one. The updated tile leaves through a TMA store. One token
per call (T == 1). A padded row reads and writes slot ``num_slots``, one past the pool: TMA
zero-fills that load and drops that store.

Gluon has no interpreter: this kernel is tested on the GPU, and on the CPU only compiled for sm_90
(``tests/test_gluon_decode_kv.py``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
)

from gdn_ops.triton_decode_tma import sm_count

if TYPE_CHECKING:
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig
from gdn_ops.triton_gating import decode_gates

# Gluon is experimental and renamed the CTA barrier between Triton 3.6 (the GPU image) and 3.7 (CI).
_cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier


@gluon.jit
def _gdc_wait():
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _gdc_launch_dependents():
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _in_pool(slot, num_slots):
    """``slot`` as an int32 slot of the pool, ``num_slots`` (one past it) for padding."""
    return gl.where((slot >= 0) & (slot < num_slots), slot, num_slots).to(gl.int32)


@gluon.jit
def _tile_slot(tile, num_tiles, indices_ptr, num_slots, NV: gl.constexpr, HV: gl.constexpr,
               HAS_INDICES: gl.constexpr):
    """The pool slot ``tile`` reads and writes: ``num_slots`` (one past the pool) for padding."""
    row = tile // NV // HV
    if HAS_INDICES:
        slot = _in_pool(gl.load(indices_ptr + row, mask=tile < num_tiles, other=-1), num_slots)
    else:
        slot = row
    return slot


@gluon.jit
def _row_slot_now(row, in_batch, indices_ptr):
    """The slot of batch row ``row`` as ``indices_ptr`` (the slots in batch order) holds it after
    this kernel's wait, read past L1 and as stored (:func:`_in_pool` takes it to the pool): checks
    a slot order ranked from a snapshot (``triton_slot_order.snapshot_slot_order``). Its use
    belongs after the state's copies are issued, so that they do not wait for this read."""
    return gl.load(indices_ptr + row, mask=in_batch, other=-1, cache_modifier=".cg")


@gluon.jit
def _tile_row(tile, num_tiles, rows_ptr, NV: gl.constexpr, HV: gl.constexpr, SORTED_ROWS: gl.constexpr):
    """``(row, in_batch)``: the batch row ``tile`` works for, its place in the grid or with
    ``SORTED_ROWS`` the row at that place of ``rows_ptr`` (the rows in slot order,
    ``triton_slot_order``); and whether that row is in the batch. The order may come from the
    caller, so a row outside ``[0, B)`` comes back as row 0 with ``in_batch`` false: the tile must
    then read and write nothing for it."""
    row = tile // NV // HV
    if SORTED_ROWS:
        row = gl.load(rows_ptr + row, mask=tile < num_tiles, other=0)
        in_batch = (row >= 0) & (row < num_tiles // (NV * HV))
        row = gl.where(in_batch, row, 0).to(gl.int32)
    else:
        in_batch = tile < num_tiles
    return row, in_batch


@gluon.jit
def _issue_tile(tile, slot, row, live, state_desc, q_desc, k_desc, tile_smem, q_smem, k_smem, bars, bar0,
                NV: gl.constexpr, HV: gl.constexpr, GROUP: gl.constexpr, NC: gl.constexpr,
                PART: gl.constexpr, PARTS: gl.constexpr):
    """Start the TMA copies of ``tile``'s state (at ``slot``) into ``tile_smem [1, 1, K, NC, C]``
    in ``PARTS`` parts of ``PART`` key rows, part j on barrier ``bar0 + j`` of ``bars``; q and k (of
    ``row``) come with the first part. Nothing where ``live`` is false (past the last tile)."""
    hv = tile // NV % HV
    column_chunk = (tile % NV) * NC
    first: gl.constexpr = state_desc.block_type.nbytes + q_desc.block_type.nbytes + k_desc.block_type.nbytes
    mbarrier.expect(bars.index(bar0), first, pred=live)
    tma.async_copy_global_to_shared(state_desc, [slot, hv, 0, column_chunk, 0], bars.index(bar0),
                                    tile_smem if PARTS == 1 else tile_smem.slice(0, PART, dim=2), pred=live)
    tma.async_copy_global_to_shared(q_desc, [row, hv // GROUP, 0], bars.index(bar0), q_smem, pred=live)
    tma.async_copy_global_to_shared(k_desc, [row, hv // GROUP, 0], bars.index(bar0), k_smem, pred=live)
    for j in gl.static_range(1, PARTS):
        mbarrier.expect(bars.index(bar0 + j), state_desc.block_type.nbytes, pred=live)
        tma.async_copy_global_to_shared(state_desc, [slot, hv, j * PART, column_chunk, 0], bars.index(bar0 + j),
                                        tile_smem.slice(j * PART, PART, dim=2), pred=live)


@gluon.jit
def _tile_columns(BV: gl.constexpr, C: gl.constexpr, cols_layout: gl.constexpr):
    """Column offsets ``[BV // C, C]`` within a tile held as chunks of C columns."""
    chunk = gl.arange(0, BV // C, layout=gl.SliceLayout(1, cols_layout))
    col = gl.arange(0, C, layout=gl.SliceLayout(0, cols_layout))
    return chunk[:, None] * C + col[None, :]


@gluon.jit
def _tile_inputs(tile, row, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr,
                 dt_bias_ptr, s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt,
                 NV: gl.constexpr, HV: gl.constexpr, BV: gl.constexpr, C: gl.constexpr,
                 HAS_INDICES: gl.constexpr, FUSED_GATING: gl.constexpr, cols_layout: gl.constexpr):
    """``tile``'s slot, the v columns and gate inputs of ``row`` and (fused gating) its head's
    ``A_log, dt_bias``, as stored: loads only, issued a tile ahead of their use (zeros past the
    last tile)."""
    row = row.to(gl.int64)
    hv = tile // NV % HV
    live = tile < num_tiles
    slot = _tile_slot(tile, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)
    cols = (tile % NV) * BV + _tile_columns(BV, C, cols_layout)
    v = gl.load(v_ptr + row * s_vb + hv * s_vh + cols * s_vv, mask=(cols >= 0) & live, other=0.0)
    gate_a = gl.load(gate_a_ptr + row * s_ab + hv * s_ah, mask=live, other=0.0)
    gate_b = gl.load(gate_b_ptr + row * s_bb + hv * s_bh, mask=live, other=0.0)
    if FUSED_GATING:
        A_log = gl.load(A_log_ptr + hv * s_A, mask=live, other=0.0)
        dt_bias = gl.load(dt_bias_ptr + hv * s_dt, mask=live, other=0.0)
    else:
        A_log = 0.0
        dt_bias = 0.0
    return slot, v, gate_a, gate_b, A_log, dt_bias


@gluon.jit
def _decode_kv_gluon_kernel(
    q_desc, k_desc, state_desc, v_ptr,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr, indices_ptr, o_ptr,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_ov, s_A, s_dt,
    HV: gl.constexpr, GROUP: gl.constexpr, K: gl.constexpr, V: gl.constexpr, BV: gl.constexpr,
    C: gl.constexpr, WARPS: gl.constexpr, VEC: gl.constexpr, LANES_C: gl.constexpr,
    FUSED_GATING: gl.constexpr, USE_L2NORM: gl.constexpr, HAS_INDICES: gl.constexpr,
    L2_EPS: gl.constexpr, NUM_BUF: gl.constexpr, PDL: gl.constexpr,
):
    NV: gl.constexpr = V // BV
    NC: gl.constexpr = BV // C
    # A [K, BV] tile is held as [K, NC, C]: each key row cut into NC chunks of C columns (128 bytes),
    # so that TMA moves a whole-head tile as one copy of consecutive 128-byte rows (two copies of
    # half rows were slower) with the 128-byte swizzle. Each lane holds VEC contiguous values of
    # every (32 // (NC * LANES_C))-th key; warps sit side by side along the chunk columns, so no key
    # sum leaves a warp. The lanes of one shared-memory access cover consecutive chunk rows, which the swizzle
    # puts in distinct banks.
    tile_layout: gl.constexpr = gl.BlockedLayout([1, 1, VEC], [32 // (NC * LANES_C), NC, LANES_C], [1, 1, WARPS],
                                                 [2, 1, 0])
    keys_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, tile_layout))
    cols_layout: gl.constexpr = gl.SliceLayout(0, tile_layout)

    tile_smem = gl.allocate_shared_memory(state_desc.dtype, [NUM_BUF, 1, 1, K, NC, C], state_desc.layout)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [NUM_BUF, 1, 1, K], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [NUM_BUF, 1, 1, K], k_desc.layout)
    # The updated tile leaves by a TMA store of whole rows: measured faster than register stores,
    # where each warp writes its columns' share of every row (NOTES.md).
    out_smem = gl.allocate_shared_memory(state_desc.dtype, [1, 1, K, NC, C], state_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(bars.index(i), count=1)

    pid = gl.program_id(0)
    step = gl.num_programs(0)
    if PDL:
        # nothing is read before the previous kernel has finished (the next one may start after
        # this program's last tile, below, as in the Triton kernel)
        _gdc_wait()
    for i in gl.static_range(NUM_BUF):
        tile = pid + i * step
        slot = _tile_slot(tile, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)
        _issue_tile(tile, slot, tile // NV // HV, tile < num_tiles, state_desc, q_desc, k_desc, tile_smem.index(i),
                    q_smem.index(i), k_smem.index(i), bars, i, NV, HV, GROUP, NC, K, 1)
    issue_slot = _tile_slot(pid + NUM_BUF * step, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)
    slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = _tile_inputs(
        pid, pid // NV // HV, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr, A_log_ptr,
        dt_bias_ptr, s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt, NV, HV, BV, C, HAS_INDICES, FUSED_GATING,
        cols_layout)
    offs_bv = _tile_columns(BV, C, cols_layout)

    i = 0
    for tile in range(pid, num_tiles, step):
        # The next tile's small inputs first, so that their latency hides behind this tile's work.
        next_inputs = _tile_inputs(
            tile + step, (tile + step) // NV // HV, num_tiles, indices_ptr, num_slots, v_ptr, gate_a_ptr, gate_b_ptr,
            A_log_ptr, dt_bias_ptr, s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_A, s_dt, NV, HV, BV, C, HAS_INDICES,
            FUSED_GATING, cols_layout)
        buf = i % NUM_BUF
        mbarrier.wait(bars.index(buf), (i // NUM_BUF) & 1)
        S = tile_smem.index(buf).reshape([K, NC, C]).load(tile_layout).to(gl.float32)
        q = q_smem.index(buf).reshape([K]).load(keys_layout).to(gl.float32)
        k = k_smem.index(buf).reshape([K]).load(keys_layout).to(gl.float32)
        # One barrier for two things: every warp has read this buffer (refill it with the tile
        # NUM_BUF steps ahead), and the previous tile's store has read the output buffer.
        tma.store_wait(0)
        fence_async_shared()
        _cta_barrier()
        next_tile = tile + NUM_BUF * step
        _issue_tile(next_tile, issue_slot, next_tile // NV // HV, next_tile < num_tiles, state_desc, q_desc, k_desc,
                    tile_smem.index(buf), q_smem.index(buf), k_smem.index(buf), bars, buf, NV, HV, GROUP, NC,
                    K, 1)
        issue_slot = _tile_slot(next_tile + step, num_tiles, indices_ptr, num_slots, NV, HV, HAS_INDICES)

        row_head = tile // NV
        row = row_head // HV
        hv = row_head % HV
        v0 = (tile % NV) * BV
        neg_exp_A = -gl.exp(A_log_in.to(gl.float32))
        g, beta = decode_gates(gate_a_in.to(gl.float32), gate_b_in.to(gl.float32), neg_exp_A,
                               dt_bias_in.to(gl.float32), softplus_beta, softplus_threshold, FUSED_GATING)
        v = v_in.to(gl.float32)

        # the step of triton_step.delta_rule_step, on a [K, NC, C] tile (keys by values)
        if USE_L2NORM:
            q = q / gl.sqrt(gl.sum(q * q, axis=0) + L2_EPS)
            k = k / gl.sqrt(gl.sum(k * k, axis=0) + L2_EPS)
        q = q * scale
        S = S * gl.exp(g)
        u = beta * (v - gl.sum(S * k[:, None, None], axis=0))
        S = S + k[:, None, None] * u[None, :, :]
        o = gl.sum(S * q[:, None, None], axis=0)

        o = gl.where(slot < num_slots, o, 0.0)
        gl.store(o_ptr + row.to(gl.int64) * s_ob + hv * s_oh + (v0 + offs_bv) * s_ov, o.to(o_ptr.dtype.element_ty))
        out_smem.reshape([K, NC, C]).store(S.to(state_desc.dtype))
        fence_async_shared()
        _cta_barrier()
        # a padded row's slot is one past the pool: TMA drops out-of-bounds writes
        tma.async_copy_shared_to_global(state_desc, [slot, hv, 0, (tile % NV) * NC, 0], out_smem)

        slot, v_in, gate_a_in, gate_b_in, A_log_in, dt_bias_in = next_inputs
        i += 1  # noqa: SIM113 (Gluon loops have no enumerate)
    tma.store_wait(0)
    for i in gl.static_range(NUM_BUF):
        mbarrier.invalidate(bars.index(i))
    if PDL:
        _gdc_launch_dependents()


class GluonKVConfig(NamedTuple):
    """``BV`` value columns per tile (all K keys) split over ``num_warps`` warps, each lane ``vec``
    contiguous values; ``num_buf`` tiles in flight per program; ``programs_per_sm`` resident programs."""

    BV: int
    num_warps: int
    num_buf: int
    programs_per_sm: int
    vec: int = 4

    @property
    def maxnreg(self) -> int:
        """Registers per thread that let ``programs_per_sm`` programs share an SM's 64K registers:
        left alone, ptxas gave 8 warps 227 and so one program per SM."""
        return min(255, 65536 // (self.programs_per_sm * self.num_warps * 32)) // 8 * 8


# The default for a 2-byte kv state on the H100 and H200 until the kernel of one program per tile
# (gluon_decode_kv_tile.py) beat it at every B*HV (NOTES.md); kept as explicit configurations for
# tuning. Tuned with benchmarks/tune_tma.py (results/h200/tune_chunks2_h200.json): half-head tiles
# (64 columns, 16 KB) of 4 warps, 4 programs per SM, while a program walks few tiles; whole-head
# tiles (32 KB, one TMA copy each) of 4 warps, 2 programs per SM, from B*HV = 2048. Shared memory: 2
# tiles in flight and the output tile, 50 KB and 97 KB per program (~200 KB per SM). The whole-head
# tile holds 128 values per thread: 246 registers, no spills, in the sm_90 compile.
KV_2B_GLUON_CONFIG = GluonKVConfig(BV=64, num_warps=4, num_buf=2, programs_per_sm=4)
KV_2B_GLUON_LARGE_CONFIG = GluonKVConfig(BV=128, num_warps=4, num_buf=2, programs_per_sm=2)


def chunk_columns(BV: int, itemsize: int) -> int:
    """Columns per chunk of a key row in the kernel's view of a tile: 128 bytes (the TMA swizzle's
    width), or the whole tile row when that is shorter."""
    return min(BV, 128 // itemsize)


# sm_90's shared memory per program (227 KB), and per SM (228 KB, of which each resident program reserves 1 KB)
MAX_SHARED_BYTES = 232448
SM_SHARED_BYTES = 233472


def lanes_along_keys(BV: int, itemsize: int, num_warps: int, vec: int) -> int | None:
    """Lanes of a warp along the keys in the kv kernels' ``[K, BV // C, C]`` register layout (each
    lane ``vec`` values, warps side by side along the columns), or ``None`` where that layout
    cannot cover a ``BV``-column tile row. Shared by both Gluon kv kernels' checks."""
    C = chunk_columns(BV, itemsize)
    lanes_c, rest = divmod(C, num_warps * vec)
    lanes_c_and_chunks = lanes_c * (BV // C)
    if rest or lanes_c_and_chunks not in (1, 2, 4, 8, 16, 32):
        return None
    return 32 // lanes_c_and_chunks


def shared_memory_reason(shared: int, programs_per_sm: int, what: str) -> str | None:
    """Why ``programs_per_sm`` programs of ``shared`` bytes each (``what`` they hold) do not fit
    sm_90's shared memory, per program and together on one SM; ``None`` if they do."""
    if shared > MAX_SHARED_BYTES:
        return f"{what} ({shared} bytes) within {MAX_SHARED_BYTES} bytes of shared memory"
    if programs_per_sm * (shared + 1024) > SM_SHARED_BYTES:
        # more would not be resident together: the grid's last programs would start late
        return (f"programs_per_sm={programs_per_sm} programs of {shared} bytes of shared memory "
                f"(and 1024 reserved each) within an SM's {SM_SHARED_BYTES} bytes")
    return None


def gluon_reason(q: torch.Tensor, state: torch.Tensor, config: GluonKVConfig) -> str | None:
    """Why ``config`` cannot run the Gluon kernel on these operands beyond TMA's needs
    (``triton_decode_tma.unsupported_reason``), or ``None`` if it can: its register layout must
    cover a ``[K, BV]`` tile, and its buffers fit in shared memory, ``programs_per_sm`` of them
    in one SM's. Metadata only."""
    K = q.shape[-1]
    lanes_k = lanes_along_keys(config.BV, state.element_size(), config.num_warps, config.vec)
    if lanes_k is None or K % lanes_k:
        return (f"BV={config.BV} in chunks of C={chunk_columns(config.BV, state.element_size())} columns, C a "
                f"multiple of num_warps*vec={config.num_warps * config.vec} by a power of two that leaves K={K} a "
                "multiple of the lanes along the keys")
    tile = K * config.BV * state.element_size()
    shared = config.num_buf * (tile + 2 * K * q.element_size() + 8) + tile
    return shared_memory_reason(shared, config.programs_per_sm,
                                f"its buffers: {config.num_buf} tiles of {tile} bytes with q, k, and the output tile")


@functools.cache
def _shared_layout(block: tuple[int, ...], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    """The TMA-swizzled shared layout of a ``block`` of ``dtype`` (cached: asked on every launch)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), getattr(gl, str(dtype).split(".")[-1]))


def tma_descriptor(t: torch.Tensor, shape: list[int], strides: list[int], block: list[int]):
    """A Gluon TMA descriptor over ``t`` seen as ``shape``/``strides``, moving ``block`` at a time
    into the swizzled shared layout the kernels allocate for it."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    return TensorDescriptor(t, shape, strides, block, _shared_layout(tuple(block), t.dtype))


def kv_state_descriptor(state: torch.Tensor, BV: int, key_rows: int):
    """A TMA descriptor of the pool ``[slots, HV, K, V]`` seen as ``[slots, HV, K, V // C, C]`` (key
    rows cut into chunks of C columns, ``chunk_columns``), moving ``key_rows`` key rows of a
    ``BV``-column tile at a time."""
    C = chunk_columns(BV, state.element_size())
    return tma_descriptor(state, [*state.shape[:3], state.shape[3] // C, C], [*state.stride()[:3], C, 1],
                          [1, 1, key_rows, BV // C, C])


def kv_launch_args(q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, num_tiles: int, *,
                   config: GluonKVConfig | GluonTileConfig, scale: float, use_qk_l2norm_in_kernel: bool,
                   softplus_beta: float, softplus_threshold: float, pdl: bool, l2_eps: float,
                   state_desc) -> tuple[list, dict]:
    """Positional and keyword launch arguments that both Gluon kv kernels take (this one and
    ``gluon_decode_kv_tile``'s), for ``config``'s ``BV``, warps and ``vec``: TMA descriptors of q,
    k and the pool (``state_desc``, a :func:`kv_state_descriptor` of the launcher's choice), the
    other operands and their strides, the shared constexprs, register cap and PDL launch."""
    _, _, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    BV = config.BV
    q3, k3 = q[:, 0], k[:, 0]
    fused = A_log is not None
    C = chunk_columns(BV, state.element_size())
    args = [
        tma_descriptor(q3, list(q3.shape), list(q3.stride()), [1, 1, K]),
        tma_descriptor(k3, list(k3.shape), list(k3.stride()), [1, 1, K]),
        state_desc,
        v, gate_a, gate_b, A_log if fused else gate_a, dt_bias if fused else gate_a,
        indices if indices is not None else state, out,
        num_tiles, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        v.stride(0), v.stride(2), v.stride(3), gate_a.stride(0), gate_a.stride(2), gate_b.stride(0), gate_b.stride(2),
        out.stride(0), out.stride(2), out.stride(3), A_log.stride(0) if fused else 0, dt_bias.stride(0) if fused else 0,
    ]
    kwargs = {
        "HV": HV, "GROUP": HV // HK, "K": K, "V": V, "BV": BV, "C": C, "WARPS": config.num_warps, "VEC": config.vec,
        "LANES_C": C // (config.num_warps * config.vec), "FUSED_GATING": fused,
        "USE_L2NORM": bool(use_qk_l2norm_in_kernel), "HAS_INDICES": indices is not None, "L2_EPS": l2_eps,
        "PDL": bool(pdl), "num_warps": config.num_warps, "maxnreg": config.maxnreg,
        **({"launch_pdl": True} if pdl else {}),
    }
    return args, kwargs


def launch_decode_kv_gluon(
    q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *,
    scale: float, use_qk_l2norm_in_kernel: bool, softplus_beta: float, softplus_threshold: float,
    config: GluonKVConfig, pdl: bool, l2_eps: float,
) -> GluonKVConfig:
    """Launch the Gluon kernel on validated arguments that TMA can address (the checks of
    ``triton_decode_tma.unsupported_reason`` and :func:`gluon_reason`): ``state [slots, HV, K, V]``
    of a 2-byte dtype in the kv layout, T == 1; sm_90+ only (no interpreter)."""
    num_tiles = q.shape[0] * v.shape[2] * (v.shape[3] // config.BV)
    if num_tiles == 0:
        return config
    args, kwargs = kv_launch_args(
        q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, num_tiles, config=config, scale=scale,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, softplus_beta=softplus_beta,
        softplus_threshold=softplus_threshold, pdl=pdl, l2_eps=l2_eps,
        state_desc=kv_state_descriptor(state, config.BV, q.shape[-1]))
    grid = (min(num_tiles, config.programs_per_sm * sm_count(state.device.index or 0)),)
    _decode_kv_gluon_kernel[grid](*args, NUM_BUF=config.num_buf, **kwargs)
    return config
