"""Plain-PyTorch Gated DeltaNet decode: the oracle every kernel is compared with.

Runs in any floating dtype (float64 on CPU for tests); every function is functional (returns
new tensors, never writes its inputs). Shapes follow the ops in :mod:`gdn_ops.ops`:

    q, k  [B, T, HK, K]      v, o  [B, T, HV, V]      a, b, g, beta  [B, T, HV]
    A_log, dt_bias  [HV]     state pool  [num_slots, HV, V, K] ("vk") or [num_slots, HV, K, V] ("kv")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The eps the kernel's in-kernel L2 norm uses: x / sqrt(sum(x*x) + L2NORM_EPS).
L2NORM_EPS = 1e-6


def gdn_gating_reference(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    b: torch.Tensor,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates of one decode step: ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    ``A_log, dt_bias [HV]``, ``a, b [..., HV]``; returns ``g, beta [..., HV]`` in ``compute_dtype``.
    """
    a = a.to(compute_dtype)
    x = a + dt_bias.to(compute_dtype)
    g = -torch.exp(A_log.to(compute_dtype)) * F.softplus(x, beta=softplus_beta, threshold=softplus_threshold)
    beta = torch.sigmoid(b.to(compute_dtype))
    return g, beta


def l2norm_reference(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(sum(x*x, -1) + L2NORM_EPS)`` along the last dim."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def delta_rule_step_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "vk",
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run T decode tokens of dense per-row states.

    ``state [B, HV, V, K]`` ("vk") or ``[B, HV, K, V]`` ("kv"), one state per batch row.
    Returns ``o [B, T, HV, V]`` and the final state (same layout), both in ``compute_dtype``.
    """
    _, T, HK, K = q.shape
    HV = v.shape[2]
    if scale is None:
        scale = K**-0.5
    q, k, v = (x.to(compute_dtype) for x in (q, k, v))
    g, beta = g.to(compute_dtype), beta.to(compute_dtype)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm_reference(q), l2norm_reference(k)
    q = q * scale
    if HV != HK:
        # value head hv reads key head hv // (HV // HK)
        q = q.repeat_interleave(HV // HK, dim=2)
        k = k.repeat_interleave(HV // HK, dim=2)
    S = state.to(compute_dtype)
    if state_layout == "kv":
        S = S.transpose(-1, -2)
    outs = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[..., None, None]
        kt = k[:, t]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhvk,bhk->bhv", S, kt))
        S = S + u[..., :, None] * kt[..., None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
    o = torch.stack(outs, dim=1)
    if state_layout == "kv":
        S = S.transpose(-1, -2)
    return o, S.contiguous()


def recurrent_gated_delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state_source: torch.Tensor,
    initial_state_indices: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "vk",
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool-level decode with precomputed gates, functional.

    Row i reads slot ``initial_state_indices[i]``; an index outside ``[0, num_slots)`` is a padding
    row: zero output, pool untouched. Returns ``o [B, T, HV, V]`` in ``compute_dtype`` and a new pool
    (a copy in ``compute_dtype``; untouched slots are exact upcasts of the input).
    """
    B = q.shape[0]
    num_slots = initial_state_source.shape[0]
    pool = initial_state_source.to(compute_dtype)
    if initial_state_indices is None:
        idx = torch.arange(B, device=pool.device)
    else:
        idx = initial_state_indices.to(torch.int64)
    valid = (idx >= 0) & (idx < num_slots)
    # Padding rows read a dummy slot appended past the end, so the computation stays free of
    # data-dependent shapes and the write-back scatters them into the dummy.
    safe = torch.where(valid, idx, torch.full_like(idx, num_slots))
    extended = torch.cat([pool, torch.zeros_like(pool[:1])], dim=0)
    o, new_states = delta_rule_step_reference(
        q, k, v, g, beta, extended[safe], scale, use_qk_l2norm_in_kernel,
        state_layout=state_layout, compute_dtype=compute_dtype,
    )
    o = torch.where(valid[:, None, None, None], o, torch.zeros_like(o))
    extended = extended.index_copy(0, safe, new_states)
    return o, extended[:num_slots]


def fused_sigmoid_gating_delta_rule_reference(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    softplus_beta: float,
    softplus_threshold: float,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state_source: torch.Tensor,
    initial_state_indices: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    *,
    state_layout: str = "vk",
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gating then :func:`recurrent_gated_delta_rule_reference`; same arguments as the fused op."""
    g, beta = gdn_gating_reference(
        A_log, a, dt_bias, b, softplus_beta, softplus_threshold, compute_dtype=compute_dtype
    )
    return recurrent_gated_delta_rule_reference(
        q, k, v, g, beta, initial_state_source, initial_state_indices, scale,
        use_qk_l2norm_in_kernel, state_layout=state_layout, compute_dtype=compute_dtype,
    )
