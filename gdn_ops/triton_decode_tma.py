"""Persistent Triton decode kernel that streams state tiles through shared memory with TMA.

EXPERIMENT (issue 5): the register file caps how much state the one-tile-per-program kernel in
``triton_decode.py`` keeps in flight (a bf16 tile is widened to fp32 in registers). Here each
program walks many tiles; Triton's pipeliner issues the TMA copy of the tiles NUM_STAGES ahead
into shared memory, so the bytes in flight are bounded by shared memory, not registers.

One token (T == 1). Padding rows map to slot ``num_slots``, one past the pool: TMA zero-fills
such a load and clips such a store, so the pool is never touched for them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from gdn_ops.triton_gating import gdn_gates


@triton.jit
def _decode_tma_kernel(
    q_ptr, k_ptr, v_ptr,
    gate_a_ptr, gate_b_ptr,
    A_log_ptr, dt_bias_ptr,
    state_desc, indices_ptr, o_ptr,
    q_desc, k_desc, v_desc, a_desc, b_desc, state_ptr, s_slot, s_head,
    num_tiles, num_slots, scale, softplus_beta, softplus_threshold,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_ab, s_ah, s_bb, s_bh, s_ob, s_oh, s_A, s_dt,
    HV: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    FUSED_GATING: tl.constexpr, USE_L2NORM: tl.constexpr, STATE_VK: tl.constexpr,
    HAS_INDICES: tl.constexpr, L2_EPS: tl.constexpr, NUM_STAGES: tl.constexpr,
    TMA_STORE: tl.constexpr, PDL: tl.constexpr, INPUT_TMA: tl.constexpr,
):
    NV: tl.constexpr = V // BV
    offs_k = tl.arange(0, K)
    offs_bv = tl.arange(0, BV)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        v_block = tile % NV
        row_head = tile // NV
        row = (row_head // HV).to(tl.int64)
        hv = row_head % HV
        h = hv // GROUP
        if HAS_INDICES:
            slot = tl.load(indices_ptr + row)
            valid = (slot >= 0) & (slot < num_slots)
            slot = tl.where(valid, slot, num_slots)
        else:
            slot = row.to(tl.int32)
            valid = True
        v0 = v_block * BV
        if STATE_VK:
            S = state_desc.load([slot, hv, v0, 0]).reshape(BV, K).to(tl.float32)
        else:
            S = tl.trans(state_desc.load([slot, hv, 0, v0]).reshape(K, BV)).to(tl.float32)

        # INPUT_TMA: 0 pointer loads, 1 q/k through TMA, 2 also v, 3 also the gates
        row32 = row.to(tl.int32)
        if INPUT_TMA >= 1:
            q = q_desc.load([row32, h, 0]).reshape(K).to(tl.float32)
            k = k_desc.load([row32, h, 0]).reshape(K).to(tl.float32)
        else:
            q = tl.load(q_ptr + row * s_qb + h * s_qh + offs_k).to(tl.float32)
            k = tl.load(k_ptr + row * s_kb + h * s_kh + offs_k).to(tl.float32)
        if INPUT_TMA >= 2:
            v = v_desc.load([row32, hv, v0]).reshape(BV).to(tl.float32)
        else:
            v = tl.load(v_ptr + row * s_vb + hv * s_vh + v0 + offs_bv).to(tl.float32)
        if INPUT_TMA >= 3:
            pick = tl.arange(0, HV) == hv
            gate_a = tl.sum(tl.where(pick, a_desc.load([row32, 0]).reshape(HV).to(tl.float32), 0.0), axis=0)
            gate_b = tl.sum(tl.where(pick, b_desc.load([row32, 0]).reshape(HV).to(tl.float32), 0.0), axis=0)
        else:
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
        tl.store(o_ptr + row * s_ob + hv * s_oh + v0 + offs_bv, o.to(o_ptr.dtype.element_ty))
        S_out = S.to(state_desc.dtype)
        if TMA_STORE:
            if STATE_VK:
                state_desc.store([slot, hv, v0, 0], S_out.reshape(1, 1, BV, K))
            else:
                state_desc.store([slot, hv, 0, v0], tl.trans(S_out).reshape(1, 1, K, BV))
        else:
            if STATE_VK:
                tile_offs = (v0 + offs_bv)[:, None] * K + offs_k[None, :]
            else:
                tile_offs = offs_k[None, :] * V + (v0 + offs_bv)[:, None]
            ptrs = state_ptr + slot.to(tl.int64) * s_slot + hv.to(tl.int64) * s_head + tile_offs
            tl.store(ptrs, S_out, mask=(offs_bv < BV)[:, None] & valid, cache_modifier=".cs")


def launch_decode_tma(
    q, k, v, gate_a, gate_b, A_log, dt_bias, state, indices, out, *,
    scale: float, use_qk_l2norm_in_kernel: bool, state_layout: str,
    softplus_beta: float = 1.0, softplus_threshold: float = 20.0,
    config=None, pdl: bool | None = None, num_stages: int = 3, programs_per_sm: int = 4,
    input_tma: int = 3, tma_store: bool = True,
):
    """Same contract as ``triton_decode.launch_decode`` for T == 1 (EXPERIMENT)."""
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from gdn_ops.reference import L2NORM_EPS
    from gdn_ops.triton_decode import _supports_pdl, PDL_ENABLED

    B, T, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    assert T == 1
    BV = config.BV
    block = [1, 1, BV, K] if state_layout == "vk" else [1, 1, K, BV]
    desc = TensorDescriptor(state, list(state.shape), list(state.stride()), block)
    num_tiles = B * HV * (V // BV)
    if num_tiles == 0:
        return config
    if state.device.type == "cuda":
        sms = torch.cuda.get_device_properties(state.device).multi_processor_count
    else:
        sms = 2
    grid = (min(num_tiles, programs_per_sm * sms),)
    if input_tma > 0:
        def view(x, block):  # [B, 1, H, D] -> [B, H, D], or [B, 1, H] -> [B, H]
            x = x[:, 0]
            return TensorDescriptor(x, list(x.shape), list(x.stride()), block)
        input_descs = (view(q, [1, 1, K]), view(k, [1, 1, K]), view(v, [1, 1, BV]),
                       view(gate_a, [1, HV]), view(gate_b, [1, HV]))
    else:
        input_descs = (desc,) * 5
    if pdl is None:
        pdl = PDL_ENABLED and _supports_pdl(state.device)
    fused = A_log is not None
    _decode_tma_kernel[grid](
        q, k, v, gate_a, gate_b,
        A_log if fused else gate_a, dt_bias if fused else gate_a,
        desc, indices if indices is not None else state, out,
        *input_descs, state, state.stride(0), state.stride(1),
        num_tiles, state.shape[0], float(scale), float(softplus_beta), float(softplus_threshold),
        q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
        gate_a.stride(0), gate_a.stride(2), gate_b.stride(0), gate_b.stride(2), out.stride(0), out.stride(2),
        A_log.stride(0) if fused else 0, dt_bias.stride(0) if fused else 0,
        HV=HV, GROUP=HV // HK, K=K, V=V, BV=BV,
        FUSED_GATING=fused, USE_L2NORM=bool(use_qk_l2norm_in_kernel), STATE_VK=state_layout == "vk",
        HAS_INDICES=indices is not None, L2_EPS=L2NORM_EPS, NUM_STAGES=num_stages, TMA_STORE=tma_store, INPUT_TMA=input_tma,
        PDL=bool(pdl), num_warps=config.num_warps, **({"launch_pdl": True} if pdl else {}),
    )
    return config
