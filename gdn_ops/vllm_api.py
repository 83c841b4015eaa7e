"""The decode step in vLLM's call convention, so that its Gated DeltaNet decode call changes only its import.

vLLM's flash-linear-attention copy calls ``fused_sigmoid_gating_delta_rule_update(A_log, a, b,
dt_bias, q, k, v, beta, threshold, scale, initial_state, inplace_final_state, cu_seqlens,
ssm_state_indices, ...)`` and takes ``(o, final_state)`` back. This module takes those names and
that order, and runs :func:`gdn_ops.fused_sigmoid_gating_delta_rule_update` on the same tensors
(views only): the pool ``initial_state [num_slots, HV, V, K]`` updated in place, the rows' slots
``ssm_state_indices`` (a negative slot is a padding row), the tokens packed by ``cu_seqlens``.
"""

from __future__ import annotations

import torch

from gdn_ops.api import fused_sigmoid_gating_delta_rule_update as _fused


def _refuse(name: str, expected: str, got: object) -> None:
    raise NotImplementedError(f"gdn_ops.vllm_api: argument '{name}' must be {expected} (the decode step with its "
                              f"state updated in place); got {got}")


def fused_sigmoid_gating_delta_rule_update(
    A_log: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dt_bias: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    inplace_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    ssm_state_indices: torch.Tensor | None = None,
    num_accepted_tokens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    is_kda: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's decode call: returns ``(o, initial_state)``, the pool updated in place.

    Shapes as vLLM passes them: with ``cu_seqlens`` (``[N + 1]``, N sequences of T tokens each) q, k
    ``[1, N*T, HK, K]``, v ``[1, N*T, HV, V]``, a, b ``[N*T, HV]``, and ``o [1, N*T, HV, V]``;
    without, ``[B, T, ...]`` as :func:`gdn_ops.fused_sigmoid_gating_delta_rule_update` takes them.
    ``ssm_state_indices [N]`` (or ``[N, 1]``) the slot of each sequence, or longer with the first N
    read (vLLM passes the whole batch's slots where it decodes the first N apart from the prefills
    that follow); ``None``: the pool holds exactly the N sequences in order. ``beta`` and ``threshold`` are softplus's (not the delta
    rule's beta, which is ``sigmoid(b)``).

    Padded rows of a CUDA graph: a negative slot skips the row (zero output, pool untouched); where
    vLLM points them all at its reserved null slot 0 instead, they all write that slot (which is then
    undefined, as with vLLM's own kernel) and no other.

    What vLLM's kernel does besides the decode step is refused with ``NotImplementedError``: a
    final state returned apart from the pool (``inplace_final_state=False``, ``initial_state=None``),
    per-token slots and accepted-token counts of speculative decoding, and KDA gating.
    """
    if initial_state is None:
        _refuse("initial_state", "the state pool", None)
    if not inplace_final_state:
        _refuse("inplace_final_state", "True", inplace_final_state)
    if num_accepted_tokens is not None:
        _refuse("num_accepted_tokens", "None", "a tensor")
    if is_kda:
        _refuse("is_kda", "False", is_kda)
    if isinstance(ssm_state_indices, torch.Tensor) and ssm_state_indices.dim() == 2:
        if ssm_state_indices.shape[1] != 1:
            _refuse("ssm_state_indices", "one slot a sequence, [N] or [N, 1]", f"shape {list(ssm_state_indices.shape)}")
        ssm_state_indices = ssm_state_indices[:, 0]
    rows = cu_seqlens.shape[0] - 1 if isinstance(cu_seqlens, torch.Tensor) else q.shape[0]
    if isinstance(ssm_state_indices, torch.Tensor) and ssm_state_indices.dim() == 1 and ssm_state_indices.shape[0] > rows:
        # vLLM hands its decode call the slots of the whole batch (decodes first, then the
        # prefills it runs apart), and its kernel reads the first N
        ssm_state_indices = ssm_state_indices[:rows]
    o = _fused(A_log, a, dt_bias, beta, threshold, q, k, v, b, initial_state, ssm_state_indices, scale,
               use_qk_l2norm_in_kernel, cu_seqlens)
    return o, initial_state
