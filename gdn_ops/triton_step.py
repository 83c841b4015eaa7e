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


@triton.jit
def _add2(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@triton.jit
def _add3(a0, b0, c0, a1, b1, c1):
    return a0 + a1, b0 + b1, c0 + c1


@triton.jit
def delta_rule_step_from_old_state(S, q, k, v, g, beta, scale, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr):
    """:func:`delta_rule_step` with ``o`` taken from the old tile (as the Gluon kernels take it)::

        d = exp(g);  u = beta * (v - d S k);  o = d S q' + u (k . q');  S = d S + u k^T

    with ``q' = scale * q`` (and the norms applied). ``S k`` and ``S q`` are then independent and
    come from one two-operand reduction, and the norms and ``k . q`` from one three-operand one, so
    a program waits on two reduction chains instead of four in a row: shorter programs where the
    kernel is latency-bound (NOTES.md, eleventh session).
    """
    u, k, decay, o = old_state_sums(S, q, k, v, g, beta, scale, USE_L2NORM, L2_EPS)
    S = S * decay + u[:, None] * k[None, :]
    return S, o


@triton.jit
def old_state_sums(S, q, k, v, g, beta, scale, USE_L2NORM: tl.constexpr, L2_EPS: tl.constexpr):
    """What :func:`delta_rule_step_from_old_state` needs of the old tile ``S`` (fp32) before its
    update: ``(u [BV], k [BK] normed, d, o [BV])``; the update is then ``S = d S + u k^T``."""
    qq, kk, kq = tl.reduce((q * q, k * k, k * q), 0, _add3)
    if USE_L2NORM:
        rq = 1.0 / tl.sqrt(qq + L2_EPS)
        rk = 1.0 / tl.sqrt(kk + L2_EPS)
    else:
        rq = 1.0
        rk = 1.0
    k = k * rk
    q = q * (rq * scale)
    kq = kq * (rk * rq * scale)
    decay = tl.exp(g)
    Sk, Sq = tl.reduce((S * k[None, :], S * q[None, :]), 1, _add2)
    u = beta * (v - decay * Sk)
    o = decay * Sq + u * kq
    return u, k, decay, o
