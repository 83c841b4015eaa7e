"""Public functions. Argument names and order follow SGLang's, so engine code switches by import."""

from __future__ import annotations

import torch

from gdn_ops import _validate
from gdn_ops import ops as _ops  # noqa: F401  (registers torch.ops.gdn_ops.*)


def _make_out(v: torch.Tensor, out_dtype: torch.dtype | None, out: torch.Tensor | None) -> torch.Tensor:
    _validate.check_tensor("v", v)
    dtype = _validate.resolve_out_dtype(v, out_dtype)
    if out is None:
        return torch.empty(v.shape, dtype=dtype, device=v.device)
    _validate.check_tensor("out", out)
    if out_dtype is not None and out.dtype != out_dtype:
        raise TypeError(f"gdn_ops: argument 'out' must have dtype out_dtype={out_dtype}; got {out.dtype}")
    return out


def _unpack(name: str, x: torch.Tensor, N: int, T: int, packed_dims: int) -> torch.Tensor:
    """``x`` of SGLang's packed tokens, ``[1, N * T, ...]`` or ``[N * T, ...]`` (``packed_dims``
    dims), seen as ``[N, T, ...]`` (a view)."""
    _validate.check_tensor(name, x)
    given = list(x.shape)
    if x.dim() == packed_dims + 1 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != packed_dims or x.shape[0] != N * T:
        raise ValueError(f"gdn_ops: argument '{name}' must hold the {N * T} packed tokens of cu_seqlens' {N} "
                         f"sequences, [1, {N * T}, ...] or [{N * T}, ...] with {packed_dims} dims; got shape "
                         f"{given}")
    return x.unflatten(0, (N, T))


def _as_sequences(error: ValueError | TypeError, q: torch.Tensor) -> ValueError | TypeError:
    """With ``cu_seqlens`` the ops check the packed tensors as their ``[N, T, ...]`` views (``q``'s
    first two dims): their errors say so, as the shapes they name are not the ones passed."""
    N, T = q.shape[:2]
    return type(error)(f"{error} (with cu_seqlens, the packed [{N * T}, ...] tensors are checked as their "
                       f"[N, T, ...] = [{N}, {T}, ...] views)")


def _unpacked(cu_seqlens: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              gates: dict[str, torch.Tensor], out: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``q, k, v``, the two ``gates`` (by name) and ``out`` of SGLang's packed form as ``[N, T, ...]`` views."""
    N, T = _sequences(cu_seqlens, q)
    q, k, v = (_unpack(name, x, N, T, 3) for name, x in (("q", q), ("k", k), ("v", v)))
    first, second = (_unpack(name, x, N, T, 2) for name, x in gates.items())
    return q, k, v, first, second, None if out is None else _unpack("out", out, N, T, 3)


def _sequences(cu_seqlens: torch.Tensor, q: torch.Tensor) -> tuple[int, int]:
    """``(N, T)``: ``cu_seqlens [N + 1]`` offsets of N sequences of T tokens each, packed in ``q [1, N * T, HK, K]``.

    Only shapes are read (the offsets stay on the device): each sequence must hold ``T`` tokens."""
    _validate.check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype not in _validate.INDEX_DTYPES:
        raise TypeError(f"gdn_ops: argument 'cu_seqlens' must have dtype in {list(_validate.INDEX_DTYPES)}; got "
                        f"{cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"gdn_ops: argument 'cu_seqlens' must be [N + 1] sequence offsets; got shape "
                         f"{list(cu_seqlens.shape)}")
    _validate.check_tensor("q", q)
    if cu_seqlens.device != q.device:  # never read, but the op's tensors share one device
        raise ValueError(f"gdn_ops: argument 'cu_seqlens' must be on device {q.device} like q; got {cu_seqlens.device}")
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(f"gdn_ops: argument 'q' must be [1, total_tokens, HK, K] with cu_seqlens; got shape "
                         f"{list(q.shape)}")
    N, total = cu_seqlens.shape[0] - 1, q.shape[1]
    if N == 0:
        if total:
            raise ValueError(f"gdn_ops: argument 'cu_seqlens' names no sequence, but q holds {total} tokens")
        return 0, 1
    if total % N:
        raise ValueError(f"gdn_ops: argument 'cu_seqlens' must split q's {total} tokens into its {N} sequences "
                         f"of equal length; {total} is not a multiple of {N}")
    return N, total // N


def fused_sigmoid_gating_delta_rule_update(
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
    cu_seqlens: torch.Tensor | None = None,
    *,
    state_layout: str = "vk",
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    initial_state_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Gated DeltaNet decode step with the gating fused in; updates the state pool in place.

    Args:
        A_log: ``[HV]`` per-head log decay rate.
        a: ``[B, T, HV]`` decay input; ``g = -exp(A_log) * softplus(a + dt_bias)`` (fp32).
        dt_bias: ``[HV]``.
        softplus_beta, softplus_threshold: as in ``torch.nn.functional.softplus`` (1.0, 20.0 in Qwen3-Next).
        q, k: ``[B, T, HK, K]``; v: ``[B, T, HV, V]`` with ``HV % HK == 0`` (value head ``hv`` reads key
            head ``hv // (HV // HK)``). Any strides (slices of a packed projection are fine).
        b: ``[B, T, HV]``; ``beta = sigmoid(b)``, kept in fp32.
        initial_state_source: the state pool, ``[num_slots, HV, V, K]`` for ``state_layout="vk"`` (K
            contiguous) or ``[num_slots, HV, K, V]`` for ``"kv"``; fp32, bf16 or fp16; the two inner dims
            dense, slot and head strides free. Rows are read and written in place.
        initial_state_indices: ``[B]`` int32/int64 slot of each row, distinct for live rows, any stride
            (a strided view is copied to a dense one first, on the device); an index outside
            ``[0, num_slots)`` (e.g. -1) marks a padding row, which gets a zero output and never touches
            the pool. ``None``: the pool has exactly ``B`` slots in batch order.
        scale: query scale, ``K ** -0.5`` when ``None``.
        use_qk_l2norm_in_kernel: L2-normalise q and k (``x / sqrt(sum(x*x) + 1e-6)``) before use.
        cu_seqlens: SGLang's packed form: ``[N + 1]`` offsets of N sequences, their tokens packed in
            ``q, k [1, N*T, HK, K]``, ``v [1, N*T, HV, V]``, ``a, b [N*T, HV]`` (or ``[1, N*T, HV]``);
            ``o`` comes back ``[1, N*T, HV, V]``, ``out`` is given so. The sequences must all hold T
            tokens (a decode step: ``T = 1``, ``cu_seqlens = arange(N + 1)``): only the shapes are
            read, so that nothing synchronises; offsets of unequal sequences give wrong results.
        state_layout: ``"vk"`` or ``"kv"`` (keyword-only).
        out_dtype: output dtype, v's dtype by default; ``torch.float32`` avoids fp16 overflow.
        out: optional ``[B, T, HV, V]`` buffer of ``out_dtype`` to write into (CUDA-graph reuse).
        initial_state_order: optional ``[2, B]`` from :func:`gdn_ops.slot_order` of
            ``initial_state_indices``: the rows sorted by their slot. The indices of an engine step
            are the same in every GDN layer, so compute it once per step and pass it to every
            layer: where the kernel walks the pool in slot order (large batches on the GPUs it was
            measured on) it then reads this instead of sorting on each call, and it sorts from
            smaller batches too. It must be the order of these indices; its rows are bound-checked
            in the kernel (a row outside the batch is dropped, never read out of bounds). Ignored
            where the kernel does not sort, and on the CPU.

    Returns:
        ``o [B, T, HV, V]``: ``out`` when given. T tokens run in order; the final state is written once.
    """
    _validate.check_float("softplus_beta", softplus_beta)
    _validate.check_float("softplus_threshold", softplus_threshold)
    _validate.check_float("scale", scale, optional=True)
    if cu_seqlens is not None:
        q, k, v, a, b, out = _unpacked(cu_seqlens, q, k, v, {"a": a, "b": b}, out)
    try:
        o = _make_out(v, out_dtype, out)
        torch.ops.gdn_ops.fused_sigmoid_gating_delta_rule_update(
            A_log, a, dt_bias, float(softplus_beta), float(softplus_threshold), q, k, v, b,
            initial_state_source, initial_state_indices, scale, bool(use_qk_l2norm_in_kernel), state_layout, o,
            initial_state_order,
        )
    except (ValueError, TypeError) as error:
        if cu_seqlens is None:
            raise
        raise _as_sequences(error, q) from None
    return o if cu_seqlens is None else o.flatten(0, 1)[None]


def recurrent_gated_delta_rule_update(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state_source: torch.Tensor,
    initial_state_indices: torch.Tensor | None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    state_layout: str = "vk",
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    initial_state_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decode step with precomputed gates ``g, beta [B, T, HV]`` (fp32 or activation dtype).

    ``g`` is the log decay (the state is multiplied by ``exp(g)``), ``beta`` the delta-rule step size.
    Everything else is as in :func:`fused_sigmoid_gating_delta_rule_update`: the pool is updated in
    place, padding rows leave it untouched and get a zero output, ``initial_state_order`` is the
    optional per-step slot order, ``cu_seqlens`` takes the packed form (``g, beta`` packed as ``a, b``),
    and ``o [B, T, HV, V]`` is returned.
    """
    _validate.check_float("scale", scale, optional=True)
    if cu_seqlens is not None:
        q, k, v, g, beta, out = _unpacked(cu_seqlens, q, k, v, {"g": g, "beta": beta}, out)
    try:
        o = _make_out(v, out_dtype, out)
        torch.ops.gdn_ops.recurrent_gated_delta_rule_update(
            q, k, v, g, beta, initial_state_source, initial_state_indices, scale,
            bool(use_qk_l2norm_in_kernel), state_layout, o, initial_state_order,
        )
    except (ValueError, TypeError) as error:
        if cu_seqlens is None:
            raise
        raise _as_sequences(error, q) from None
    return o if cu_seqlens is None else o.flatten(0, 1)[None]


def gdn_gating(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    b: torch.Tensor,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates of Gated DeltaNet in fp32: ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    ``A_log, dt_bias [HV]``; ``a, b [..., HV]`` (same shape). Returns ``g, beta`` of that shape,
    fp32. Differentiable.
    """
    _validate.check_float("softplus_beta", softplus_beta)
    _validate.check_float("softplus_threshold", softplus_threshold)
    return torch.ops.gdn_ops.gdn_gating(A_log, a, dt_bias, b, float(softplus_beta), float(softplus_threshold))


def slot_order(initial_state_indices: torch.Tensor) -> torch.Tensor:
    """The rows of a step sorted by the pool slot they address, for ``initial_state_order``.

    ``initial_state_indices [B]`` (int32/int64, any values and strides, padding too) -> ``[2, B]`` of
    the same dtype: ``[1]`` the rows in ascending slot order (a stable sort, so padding rows of
    equal value keep their batch order), ``[0]`` their slots. One small kernel with no host sync
    (legal in CUDA-graph capture); the indices of a step are the same in every GDN layer, so an
    engine calls this once per step and passes the result to every layer's decode call.
    """
    return torch.ops.gdn_ops.slot_order(initial_state_indices)
