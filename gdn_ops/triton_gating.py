"""Triton gating: ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``, fp32.

:func:`gdn_gates` is the one Triton copy of the gating math; both decode kernels inline it through
:func:`head_gate_params` and :func:`decode_gates` when they fuse gating, and :func:`launch_gating` runs it standalone for the
``gdn_gating`` op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gdn_gates(a, b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold):
    """fp32 gates from raw ``a, b`` and the head's ``-exp(A_log)``, ``dt_bias``."""
    x = (a + dt_bias) * softplus_beta
    # softplus(x) = log(1 + exp(beta*x)) / beta, linear above the threshold like torch's F.softplus.
    # log(1 + y) as log(u) * y / (u - 1), u = 1 + y rounded (Goldberg's log1p): for a very negative x
    # the plain form loses y in 1 + y (g came out 0 where it is -exp(A) * exp(x); 5e-5 off from -6)
    y = tl.exp(tl.minimum(x, softplus_threshold))
    u = 1.0 + y
    rounded = u == 1.0
    log1p_y = tl.where(rounded, y, tl.log(u) * (y / tl.where(rounded, 1.0, u - 1.0)))
    softplus = tl.where(x <= softplus_threshold, log1p_y, x)
    g = neg_exp_A * (softplus / softplus_beta)
    # beta stays fp32: rounding it to the activation dtype compounds over tokens
    beta = 1.0 / (1.0 + tl.exp(-b))
    return g, beta


@triton.jit
def head_gate_params(A_log_ptr, dt_bias_ptr, hv, s_A, s_dt, FUSED_GATING: tl.constexpr,
                     VOLATILE: tl.constexpr = False):
    """``(-exp(A_log[hv]), dt_bias[hv])`` in fp32 for a decode kernel that fuses gating; unused zeros otherwise.
    ``VOLATILE`` loads them as volatile (kept in program order among the caller's volatile loads)."""
    if FUSED_GATING:
        neg_exp_A = -tl.exp(tl.load(A_log_ptr + hv * s_A, volatile=VOLATILE).to(tl.float32))
        dt_bias = tl.load(dt_bias_ptr + hv * s_dt, volatile=VOLATILE).to(tl.float32)
    else:
        neg_exp_A = 0.0
        dt_bias = 0.0
    return neg_exp_A, dt_bias


@triton.jit
def decode_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold, FUSED_GATING: tl.constexpr):
    """fp32 ``g, beta`` for one token of a decode kernel: from ``a, b`` and :func:`head_gate_params` when
    gating is fused, else ``gate_a, gate_b`` already are ``g, beta``."""
    if FUSED_GATING:
        g, beta = gdn_gates(gate_a, gate_b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold)
    else:
        g = gate_a
        beta = gate_b
    return g, beta


@triton.jit
def _gating_kernel(
    A_log_ptr, a_ptr, dt_bias_ptr, b_ptr, g_ptr, beta_ptr,
    n, softplus_beta, softplus_threshold, s_A, s_dt,
    HV: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    hv = offs % HV
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    neg_exp_A = -tl.exp(tl.load(A_log_ptr + hv * s_A, mask=mask, other=0.0).to(tl.float32))
    dt_bias = tl.load(dt_bias_ptr + hv * s_dt, mask=mask, other=0.0).to(tl.float32)
    g, beta = gdn_gates(a, b, neg_exp_A, dt_bias, softplus_beta, softplus_threshold)
    tl.store(g_ptr + offs, g, mask=mask)
    tl.store(beta_ptr + offs, beta, mask=mask)


def launch_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    softplus_beta: float,
    softplus_threshold: float,
) -> None:
    """Write ``g, beta`` (contiguous fp32, shape of ``a``) from contiguous ``a, b [..., HV]``."""
    n = a.numel()
    if n == 0:  # an empty batch: nothing to write, and a zero-sized grid is an invalid launch
        return
    HV = a.shape[-1]
    BLOCK = 1024
    _gating_kernel[(triton.cdiv(n, BLOCK),)](
        A_log, a, dt_bias, b, g, beta, n, float(softplus_beta), float(softplus_threshold),
        A_log.stride(0), dt_bias.stride(0),
        HV=HV, BLOCK=BLOCK, num_warps=4,
    )
