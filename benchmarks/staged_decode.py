"""Experiment: a persistent decode kernel whose state loads Triton software-pipelines.

The shipped kernel holds every byte in flight in registers, and the register file caps that:
a bf16 state is widened to fp32 (one register per 2 bytes loaded), so 128 registers per thread
for a 4 KB tile and at most ~64 KB of state in flight per SM, against ~128 KB with an fp32 state.
Here each program loops over tiles ``pid, pid + grid, ...`` with ``tl.range(num_stages=STAGES)``;
Triton turns the state load into ``cp.async`` copies into shared memory ``STAGES - 1`` tiles ahead,
so the bytes in flight are bounded by shared memory instead. T = 1 only (an experiment, timed by
``benchmarks.tune_decode --staged``); if it wins it moves into ``gdn_ops``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from gdn_ops.reference import L2NORM_EPS
from gdn_ops.triton_gating import gdn_gates


@triton.jit
def _decode_staged_kernel(
    q_ptr, k_ptr, v_ptr,
    gate_a_ptr, gate_b_ptr,
    A_log_ptr, dt_bias_ptr,
    state_ptr, indices_ptr, o_ptr,
    T, num_slots, scale, softplus_beta, softplus_threshold,
    s_qb, s_qt, s_qh, s_qk,
    s_kb, s_kt, s_kh, s_kk,
    s_vb, s_vt, s_vh, s_vv,
    s_ab, s_at, s_ah,
    s_bb, s_bt, s_bh,
    s_slot, s_head,
    s_ob, s_ot, s_oh, s_ov,
    s_A, s_dt,
    n_tiles,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, STATE_VK: tl.constexpr,
    HAS_INDICES: tl.constexpr, L2_EPS: tl.constexpr, STAGES: tl.constexpr,
):
    NV: tl.constexpr = (V + BV - 1) // BV
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    for tile_id in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=STAGES):
        v_block = tile_id % NV
        row_head = tile_id // NV
        row = (row_head // HV).to(tl.int64)
        hv = row_head % HV
        h = hv // GROUP
        offs_v = v_block * BV + tl.arange(0, BV)
        mask_v = offs_v < V
        if HAS_INDICES:
            slot = tl.load(indices_ptr + row).to(tl.int64)
            valid = (slot >= 0) & (slot < num_slots)
            slot = tl.where(valid, slot, 0)
        else:
            slot = row
            valid = row >= 0
        if STATE_VK:
            tile = offs_v[:, None] * K + offs_k[None, :]
        else:
            tile = offs_k[None, :] * V + offs_v[:, None]
        state_ptrs = state_ptr + slot * s_slot + hv.to(tl.int64) * s_head + tile
        state_mask = (mask_v[:, None] & mask_k[None, :]) & valid
        S = tl.load(state_ptrs, mask=state_mask, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + row * s_qb + h * s_qh + offs_k * s_qk, mask=mask_k, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + row * s_kb + h * s_kh + offs_k * s_kk, mask=mask_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row * s_vb + hv * s_vh + offs_v * s_vv, mask=mask_v, other=0.0).to(tl.float32)
        gate_a = tl.load(gate_a_ptr + row * s_ab + hv * s_ah).to(tl.float32)
        gate_b = tl.load(gate_b_ptr + row * s_bb + hv * s_bh).to(tl.float32)
        if FUSED_GATING:
            neg_exp_A = -tl.exp(tl.load(A_log_ptr + hv * s_A).to(tl.float32))
            dt_bias = tl.load(dt_bias_ptr + hv * s_dt).to(tl.float32)
            g, beta = gdn_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold)
        else:
            g = gate_a
            beta = gate_b
        if USE_L2NORM:
            q = q / tl.sqrt(tl.sum(q * q, axis=0) + L2_EPS)
            k = k / tl.sqrt(tl.sum(k * k, axis=0) + L2_EPS)
        q = q * scale
        S = S * tl.exp(g)
        u = beta * (v - tl.sum(S * k[None, :], axis=1))
        S = S + u[:, None] * k[None, :]
        o = tl.sum(S * q[None, :], axis=1)
        o = tl.where(valid, o, 0.0)
        tl.store(o_ptr + row * s_ob + hv * s_oh + offs_v * s_ov, o.to(o_ptr.dtype.element_ty), mask=mask_v)
        tl.store(state_ptrs, S.to(state_ptr.dtype.element_ty), mask=state_mask, cache_modifier=".cs")


class StagedConfig(NamedTuple):
    BV: int
    num_warps: int
    stages: int
    programs_per_sm: int

    @property
    def name(self) -> str:
        return f"staged:BV{self.BV}w{self.num_warps}s{self.stages}p{self.programs_per_sm}"


def launch_staged(q, k, v, a, b, A_log, dt_bias, state, indices, out, *, scale: float,
                  use_qk_l2norm_in_kernel: bool, state_layout: str, config: StagedConfig) -> None:
    """Same contract as ``gdn_ops.triton_decode.launch_decode`` for fused gating and T = 1."""
    B, T, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    assert T == 1 and A_log is not None
    n_tiles = B * HV * triton.cdiv(V, config.BV)
    sms = torch.cuda.get_device_properties(state.device).multi_processor_count if state.is_cuda else 2
    grid = (min(n_tiles, sms * config.programs_per_sm),)
    _decode_staged_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, state, indices, out,
        T, state.shape[0], float(scale), 1.0, 20.0,
        *q.stride(), *k.stride(), *v.stride(), *a.stride(), *b.stride(),
        state.stride(0), state.stride(1), *out.stride(), A_log.stride(0), dt_bias.stride(0),
        n_tiles,
        HV=HV, GROUP=HV // HK, K=K, V=V, BK=triton.next_power_of_2(K), BV=config.BV,
        FUSED_GATING=True, USE_L2NORM=bool(use_qk_l2norm_in_kernel), STATE_VK=state_layout == "vk",
        HAS_INDICES=True, L2_EPS=L2NORM_EPS, STAGES=config.stages, num_warps=config.num_warps,
    )
