"""One token of the gated delta rule on a register tile, shared by both Triton decode kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def delta_rule_step(S, q, k, v, g, beta, scale, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr):
    """``S [BV, BK]`` fp32 (value rows by keys), ``q, k [BK]``, ``v [BV]``, scalars ``g, beta``.

    Returns the updated tile and ``o [BV]``::

        S = S * exp(g);  u = beta * (v - S k);  S = S + u k^T;  o = S (scale * q)
    """
    if USE_L2NORM:
        q = q / tl.sqrt(tl.sum(q * q, axis=0) + L2_EPS)
        k = k / tl.sqrt(tl.sum(k * k, axis=0) + L2_EPS)
    q = q * scale
    S = S * tl.exp(g)
    u = beta * (v - tl.sum(S * k[None, :], axis=1))
    S = S + u[:, None] * k[None, :]
    o = tl.sum(S * q[None, :], axis=1)
    return S, o
