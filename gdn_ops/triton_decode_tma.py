"""Persistent Triton decode kernel for a 2-byte state in the "kv" layout, from B*HV = 1024.

The one-tile-per-program kernel (``triton_decode.py``) holds its state tile in registers from the
load to the store, so the register file caps the bytes in flight; with a bf16 state in the kv
layout it reached only ~70% of copy bandwidth on an H200. Here each program walks many tiles, and
Triton's pipeliner issues the TMA copies of the next ``num_stages - 1`` tiles (and their q, k)
into shared memory while the current one is computed: the bytes in flight are bounded by shared
memory instead. The 2-byte gate inputs cannot take that path (cp.async moves 4 bytes at least), so
they are loaded one tile ahead in registers. When it runs is a per-GPU rule (``PERSISTENT_RULES``);
NOTES.md has the measurements, and the cases where this lost (the vk layout, fp32 states).

One token per call (T == 1). Rows whose slot index is padding (negative, or past the pool) read
slot ``num_slots``, one past the pool: TMA zero-fills that load, and the state store is masked.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from gdn_ops.triton_gating import decode_gates, head_gate_params
from gdn_ops.triton_step import delta_rule_step

if TYPE_CHECKING:
    from gdn_ops.gluon_decode_kv import GluonKVConfig
    from gdn_ops.gluon_decode_kv_tile import GluonTileConfig


@triton.jit
def _tile_gates(gate_a_ptr, gate_b_ptr, tile, num_tiles, s_ab, s_ah, s_bb, s_bh, NV: tl.constexpr, HV: tl.constexpr):
    """The gate inputs (a, b or g, beta) of ``tile``'s row and head, as stored; zero past the last tile."""
    row_head = tile // NV
    row = (row_head // HV).to(tl.int64)
    hv = row_head % HV
    live = tile < num_tiles
    gate_a = tl.load(gate_a_ptr + row * s_ab + hv * s_ah, mask=live, other=0.0)
    gate_b = tl.load(gate_b_ptr + row * s_bb + hv * s_bh, mask=live, other=0.0)
    return gate_a, gate_b


@triton.jit
def _decode_kv_tma_kernel(
    q_desc, k_desc, v_ptr,
    gate_a_ptr, gate_b_ptr,  # a, b (FUSED_GATING) or g, beta
    A_log_ptr, dt_bias_ptr,
    state_desc, state_ptr, indices_ptr, o_ptr,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_vb, s_vh, s_vv, s_ab, s_ah, s_bb, s_bh, s_slot, s_head, s_ob, s_oh, s_ov, s_A, s_dt,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, HAS_INDICES: tl.constexpr,
    L2_EPS: tl.constexpr, NUM_STAGES: tl.constexpr, PREFETCH_GATES: tl.constexpr, PDL: tl.constexpr,
):
    NV: tl.constexpr = V // BV
    offs_k = tl.arange(0, K)
    offs_bv = tl.arange(0, BV)
    if PDL:
        # Nothing is read before the previous kernel has finished; the next kernel may launch only
        # after this program's last tile (below): this grid fills the GPU, and letting the next
        # kernel in at the start cost 1-2% at B >= 512 (NOTES.md).
        tl.extra.cuda.gdc_wait()
    if PREFETCH_GATES:
        # 2-byte scalars cannot go through the pipeliner's cp.async, so loaded in the loop they are
        # two serial global loads on each tile's critical path; here they come one tile ahead.
        gate_a_next, gate_b_next = _tile_gates(gate_a_ptr, gate_b_ptr, tl.program_id(0), num_tiles,
                                               s_ab, s_ah, s_bb, s_bh, NV, HV)
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        v0 = (tile % NV) * BV
        row_head = tile // NV
        row = row_head // HV
        hv = row_head % HV
        h = hv // GROUP
        if HAS_INDICES:
            slot = tl.load(indices_ptr + row)
            valid = (slot >= 0) & (slot < num_slots)
            slot = tl.where(valid, slot, num_slots).to(tl.int32)
        else:
            slot = row
            valid = row >= 0
        # [K, BV] from the pool's [K, V] head, turned to [BV, K] rows for the shared step
        S = tl.trans(state_desc.load([slot, hv, 0, v0]).reshape(K, BV)).to(tl.float32)
        q = q_desc.load([row, h, 0]).reshape(K).to(tl.float32)
        k = k_desc.load([row, h, 0]).reshape(K).to(tl.float32)
        row64 = row.to(tl.int64)
        v = tl.load(v_ptr + row64 * s_vb + hv * s_vh + (v0 + offs_bv) * s_vv).to(tl.float32)
        if PREFETCH_GATES:
            gate_a = gate_a_next.to(tl.float32)
            gate_b = gate_b_next.to(tl.float32)
        else:
            gate_a = tl.load(gate_a_ptr + row64 * s_ab + hv * s_ah).to(tl.float32)
            gate_b = tl.load(gate_b_ptr + row64 * s_bb + hv * s_bh).to(tl.float32)
        neg_exp_A, dt_bias = head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING)
        g, beta = decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING)

        S, o = delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
        o = tl.where(valid, o, 0.0)
        tl.store(o_ptr + row64 * s_ob + hv * s_oh + (v0 + offs_bv) * s_ov, o.to(o_ptr.dtype.element_ty))
        # A plain streaming store, not a TMA store: measured ~1% faster (NOTES.md).
        tile_offs = offs_k[None, :] * V + (v0 + offs_bv)[:, None]
        state_ptrs = state_ptr + slot.to(tl.int64) * s_slot + hv.to(tl.int64) * s_head + tile_offs
        tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=(offs_bv < BV)[:, None] & valid,
                 cache_modifier=".cs")
        if PREFETCH_GATES:
            # after the store: measured faster than before the reductions at B >= 512 on an H200
            gate_a_next, gate_b_next = _tile_gates(gate_a_ptr, gate_b_ptr, tile + tl.num_programs(0), num_tiles,
                                                   s_ab, s_ah, s_bb, s_bh, NV, HV)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


class PersistentConfig(NamedTuple):
    """``BV`` value columns per tile (all K keys), ``num_stages`` tiles in the TMA pipeline,
    ``programs_per_sm`` resident programs per SM (the grid is that times the SM count);
    ``prefetch_gates`` loads each tile's gate inputs one tile ahead."""

    BV: int
    num_warps: int
    num_stages: int
    programs_per_sm: int
    prefetch_gates: bool = True


# Tuned on an H200 (benchmarks/tune_tma.py, results/h200/tma_probe*.json): a 16 KB bf16 tile,
# 3 stages, 4 programs of 4 warps per SM (128 registers and ~50 KB of shared memory each).
KV_2B_CONFIG = PersistentConfig(BV=64, num_warps=4, num_stages=3, programs_per_sm=4)
KV_2B_LARGE_CONFIG = KV_2B_CONFIG._replace(prefetch_gates=False)


class PersistentRule(NamedTuple):
    """When :func:`persistent_config` picks the persistent kernel on one kind of GPU."""

    min_row_heads: int  # B*HV from which the persistent kernel runs
    gates_in_loop_from: int | None  # B*HV from which it loads the gates in the loop (None: never)


# By GPU name; measured with benchmarks/tune_tma.py against the per-tile kernel.
PERSISTENT_RULES = {
    # results/h200/tune_tma_confirm_tp*_h200.json: with the gates a tile ahead 5-7% faster than the
    # per-tile kernel at B*HV = 1024 (B=32 at TP=1, B=128 at TP=4), 10% at 2048; fewer row-heads not
    # measured. The prefetch itself lost 0-3% from 16384 in three runs; why is not established.
    "H200": PersistentRule(min_row_heads=1024, gates_in_loop_from=16384),
    # results/h100/tune_tma_confirm_tp1_h100*.json (two runs): 3-5% faster than the per-tile kernel
    # from 1024 to 8192, and the prefetch 1-1.5% faster at 16384 and 32768 too.
    "H100": PersistentRule(min_row_heads=1024, gates_in_loop_from=None),
}
# Other sm_90+ GPUs (not measured): the rule the H100 had before the gate prefetch (two runs).
PERSISTENT_RULE_DEFAULT = PersistentRule(min_row_heads=16384, gates_in_loop_from=None)


Rule = TypeVar("Rule")


def _tma_ready(t: torch.Tensor, dims: int) -> bool:
    """A TMA descriptor over the last ``dims`` dims of ``t``: 16-byte aligned base and strides, unit inner stride."""
    if t.data_ptr() % 16 or t.stride(-1) != 1:
        return False
    return all(t.stride(d) * t.element_size() % 16 == 0 for d in range(t.dim() - dims, t.dim() - 1))


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, state: torch.Tensor, state_layout: str,
                       config: PersistentConfig | GluonKVConfig | GluonTileConfig) -> str | None:
    """Why a persistent kernel (TMA, T == 1) with ``config`` cannot run these operands, or ``None`` if it can.
    Reads metadata only (legal during CUDA-graph capture)."""
    if state_layout != "kv":
        return f"state_layout='kv' (got {state_layout!r})"
    if config.BV * state.element_size() < 16:
        return f"BV={config.BV} columns of at least 16 bytes (a TMA box row)"
    return tma_step_reason(q, state, state.shape[-1], config.BV, (("q", q), ("k", k)))


def tma_step_reason(q: torch.Tensor, state: torch.Tensor, V: int, BV: int,
                    activations: tuple[tuple[str, torch.Tensor], ...]) -> str | None:
    """What every TMA decode kernel needs, whatever its layout: T == 1, K a power of two in 16..256,
    V a multiple of the tile's ``BV`` values, 32-bit slot and tile indices, a pool of one slot or more
    and a TMA-addressable pool and ``activations`` (named ``[B, 1, H, D]`` tensors); ``None`` if these operands have it."""
    B, T, _, K = q.shape
    if T != 1:
        return f"one token per call (got T={T})"
    if K not in (16, 32, 64, 128, 256) or V % BV:
        return f"K a power of two in 16..256 and V a multiple of BV={BV} (got K={K}, V={V})"
    # tile and row indices and TMA coordinates are 32-bit in the kernel
    if state.shape[0] >= 2**31 - 1 or B * state.shape[1] * (V // BV) >= 2**31:
        return "fewer than 2**31 slots and tiles"
    if state.shape[0] == 0:  # every row is padding; a TMA descriptor takes no empty dimension
        return "a pool of at least one slot"
    for name, t, dims in (("initial_state_source", state, 4), *((name, t[:, 0], 3) for name, t in activations)):
        if not _tma_ready(t, dims):
            return f"{name} with a 16-byte aligned base and strides and a unit inner stride (TMA)"
    return None


def persistent_config(q: torch.Tensor, k: torch.Tensor, state: torch.Tensor, state_layout: str,
                      rows_x_heads: int) -> PersistentConfig | None:
    """The persistent kernel's configuration when it is the faster kernel on this GPU and it can run
    these operands (:func:`unsupported_reason`); ``None`` otherwise."""
    if state.element_size() != 2 or state.device.type != "cuda":
        return None
    rule = persistent_rule(state.device.index or 0)
    if rule is None or rows_x_heads < rule.min_row_heads:
        return None
    in_loop = rule.gates_in_loop_from is not None and rows_x_heads >= rule.gates_in_loop_from
    config = KV_2B_LARGE_CONFIG if in_loop else KV_2B_CONFIG
    return None if unsupported_reason(q, k, state, state_layout, config) else config


# GDN_OPS_TUNING_GPU=H200 looks every tuning table up as if the GPU's name were "H200": for measuring
# one card's tables on another of the same chip (the H100 and H200 SXM are both GH100 with 132 SMs,
# though the driver reports 50 and 60 MiB of L2); unset, the GPU's own name.
TUNING_GPU_ENV = "GDN_OPS_TUNING_GPU"

# The cards whose entries in the tile and sort tables are the H200's (each table says where a card
# differs). On the H100, one call each (results/h100/ot_own_h100_1077935.json against
# ot_h200t_h100_1077935.json; NOTES.md, fifty-eighth session): the H200's tables against the H100's
# own older ones at TP=1 and 4, B = 1, 32, 128, 512, every layout and dtype, read -0.2..+3.6 points
# of copy bandwidth without the order and -0.1..+4.2 given it: level at B=1, faster from B*HV 1024
# and at TP=4 fp32 vk B=32 (o from the updated state, +1.8 / +1.7). The names match by part, so an
# H100 PCIe or NVL takes them too, unmeasured.
H200_TABLE_CARDS = ("H200", "H100")


def h200_table_entries(entries: dict[tuple, Rule]) -> dict[tuple, Rule]:
    """A table keyed by (GPU name part, *key) holding ``entries`` (keyed by the rest) for each of
    :data:`H200_TABLE_CARDS`."""
    return {(card, *key): value for card in H200_TABLE_CARDS for key, value in entries.items()}


def tuning_gpu_name(device_index: int | None) -> str:
    """The name the per-GPU tuning tables are looked up by on CUDA device ``device_index`` (None:
    the current one): the device's own name unless ``GDN_OPS_TUNING_GPU`` names another, which
    only an sm_90 device may (the tables' kernels and shared-memory budgets are sm_90's; elsewhere
    ``ValueError``). Its callers cache what they look up, so the variable is read once per table
    and device in a process."""
    name = torch.cuda.get_device_name(device_index)
    tuning = os.environ.get(TUNING_GPU_ENV)
    if not tuning:
        return name
    major, minor = torch.cuda.get_device_capability(device_index)
    if major != 9:
        raise ValueError(f"{TUNING_GPU_ENV}={tuning!r} looks up another card's tuning tables, which are "
                         f"for sm_90 GPUs; {name} is sm_{major}{minor}: unset it")
    return tuning


def sm90_gpu_rule(rules: dict[str, Rule], device_index: int, default: Rule | None = None) -> Rule | None:
    """The entry of ``rules`` (keyed by a part of the GPU's name, :func:`tuning_gpu_name`) for this
    GPU, else ``default``; ``None`` before sm_90 (no TMA). Shared by the TMA kernels' per-GPU rules."""
    if torch.cuda.get_device_capability(device_index)[0] < 9:
        return None
    name = tuning_gpu_name(device_index)
    return next((rule for gpu, rule in rules.items() if gpu in name), default)


@functools.cache
def persistent_rule(device_index: int) -> PersistentRule | None:
    """This GPU's :class:`PersistentRule`; ``None`` before sm_90 (no TMA). Cached: the launcher
    asks on every call."""
    return sm90_gpu_rule(PERSISTENT_RULES, device_index, PERSISTENT_RULE_DEFAULT)


@functools.cache
def sm_count(device_index: int) -> int:
    """The GPU's SM count (cached)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def launch_decode_kv_tma(
    q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *,
    scale: float, use_qk_l2norm_in_kernel: bool, softplus_beta: float, softplus_threshold: float,
    config: PersistentConfig, pdl: bool, l2_eps: float,
) -> PersistentConfig:
    """Launch the persistent kernel on validated arguments (``triton_decode.launch_decode`` decides).

    ``state [slots, HV, K, V]`` of a 2-byte dtype; T == 1; q, k, state TMA-addressable
    (:func:`persistent_config`). Off the GPU (Triton's interpreter) the grid is one program per
    two tiles, so that each program still walks more than one tile.
    """
    B, _, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    BV = config.BV
    num_tiles = B * HV * (V // BV)
    if num_tiles == 0:
        return config
    programs = config.programs_per_sm * sm_count(state.device.index or 0) if state.is_cuda else (num_tiles + 1) // 2
    q3, k3 = q[:, 0], k[:, 0]
    fused = A_log is not None
    _decode_kv_tma_kernel[(min(num_tiles, programs),)](
        TensorDescriptor(q3, list(q3.shape), list(q3.stride()), [1, 1, K]),
        TensorDescriptor(k3, list(k3.shape), list(k3.stride()), [1, 1, K]),
        v, gate_a, gate_b,
        A_log if fused else gate_a, dt_bias if fused else gate_a,
        TensorDescriptor(state, list(state.shape), list(state.stride()), [1, 1, K, BV]),
        state, indices if indices is not None else state, out,
        num_tiles, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        v.stride(0), v.stride(2), v.stride(3), gate_a.stride(0), gate_a.stride(2), gate_b.stride(0), gate_b.stride(2),
        state.stride(0), state.stride(1), out.stride(0), out.stride(2), out.stride(3),
        A_log.stride(0) if fused else 0, dt_bias.stride(0) if fused else 0,
        HV=HV, GROUP=HV // HK, K=K, V=V, BV=BV,
        FUSED_GATING=fused, USE_L2NORM=bool(use_qk_l2norm_in_kernel), HAS_INDICES=indices is not None,
        L2_EPS=l2_eps, NUM_STAGES=config.num_stages, PREFETCH_GATES=bool(config.prefetch_gates), PDL=bool(pdl),
        num_warps=config.num_warps, **({"launch_pdl": True} if pdl else {}),
    )
    return config
