"""The torch.library custom ops of gdn-ops and their public Python functions.

Ops (namespace ``gdn_ops``):

* ``fused_sigmoid_gating_delta_rule_update``: gating + recurrence, pool and ``out`` written in place.
* ``recurrent_gated_delta_rule_update``: the recurrence with precomputed ``g, beta``, in place.
* ``gdn_gating``: ``(g, beta)`` in fp32, functional.
* ``slot_order``: the ``[2, B]`` slot order of a step's indices, functional; computed once per
  engine step and passed to every layer's recurrence op as ``initial_state_order``.

The in-place ops return nothing at the op level (an op may not return an alias of its input);
the public functions allocate ``out`` when it is not given and return it. Each op has a CPU
kernel in plain PyTorch (the reference math in fp32), a CUDA kernel in Triton, and a fake kernel
below it; all of them run the same metadata checks from :mod:`gdn_ops._validate`.
"""

from __future__ import annotations

import torch

from gdn_ops import _validate
from gdn_ops.reference import delta_rule_step_reference, gdn_gating_reference

_MUTATED = ("initial_state_source", "out")
_LIB = torch.library.Library("gdn_ops", "FRAGMENT")


def _forbid_autograd(op) -> None:
    """Make an in-place op raise a clear error when autograd would have to record it.

    ``register_autograd`` refuses mutating ops, and custom_op's default autograd kernel would run the
    op silently without recording it; this Autograd kernel checks first, then runs the op below
    autograd exactly as the default would.
    """
    overload = op._opoverload
    names = [arg.name for arg in overload._schema.arguments]

    def autograd_kernel(keyset, *args):
        if torch.is_grad_enabled():  # under no_grad this runs on every call: keep it free
            _validate.check_no_grad(overload._opname, **dict(zip(names, args)))
        with torch._C._AutoDispatchBelowAutograd():
            return overload.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    # Per-backend keys: a direct registration beats custom_op's own "Autograd" (alias) kernel, and
    # torch < 2.13 refuses to override that alias registration itself.
    for key in ("AutogradCPU", "AutogradCUDA"):
        _LIB.impl(overload._opname, autograd_kernel, key, with_keyset=True)


def _cpu_recurrence(q, k, v, g, beta, pool, indices, scale, use_l2norm, state_layout, out) -> None:
    """CPU kernel: fp32 reference math on the gathered rows, written back into the pool."""
    B = q.shape[0]
    if indices is None:
        rows = torch.arange(B)
        slots = rows
    else:
        slots = indices.to(torch.int64)
        live = (slots >= 0) & (slots < pool.shape[0])
        rows = live.nonzero().flatten()
        slots = slots[rows]
    out.zero_()
    if rows.numel() == 0:
        return
    o, new_state = delta_rule_step_reference(
        q[rows], k[rows], v[rows], g[rows], beta[rows], pool[slots], scale, use_l2norm,
        state_layout=state_layout, compute_dtype=torch.float32,
    )
    out[rows] = o.to(out.dtype)
    pool[slots] = new_state.to(pool.dtype)


def _resolve_scale(scale: float | None, K: int) -> float:
    return K**-0.5 if scale is None else float(scale)


# --------------------------------------------------------------------------------------------
# recurrent_gated_delta_rule_update: precomputed gates
# --------------------------------------------------------------------------------------------


def _check_recurrent(q, k, v, g, beta, pool, indices, scale, state_layout, out, order) -> None:
    _validate.check_tensor("out", out)  # the op's out is required; its dtype is read next
    B, T, _, HV, _, _ = _validate.check_recurrence(q, k, v, pool, indices, state_layout, out, out.dtype)
    _validate.check_order(order, indices, B, q.device)
    _validate.check_gates("g", g, "beta", beta, B, T, HV, q.device)
    _validate.check_scalars(scale)
    _validate.check_disjoint({"out": out, "initial_state_source": pool},
                             {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state_indices": indices,
                              "initial_state_order": order})


@torch.library.custom_op("gdn_ops::recurrent_gated_delta_rule_update", mutates_args=_MUTATED)
def _recurrent_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state_source: torch.Tensor,
    initial_state_indices: torch.Tensor | None,
    scale: float | None,
    use_qk_l2norm_in_kernel: bool,
    state_layout: str,
    out: torch.Tensor,
    initial_state_order: torch.Tensor | None = None,
) -> None:
    _check_recurrent(q, k, v, g, beta, initial_state_source, initial_state_indices, scale, state_layout, out,
                     initial_state_order)
    _cpu_recurrence(
        q, k, v, g, beta, initial_state_source, initial_state_indices,
        _resolve_scale(scale, q.shape[-1]), use_qk_l2norm_in_kernel, state_layout, out,
    )


@_recurrent_op.register_kernel("cuda")
def _recurrent_cuda(q, k, v, g, beta, initial_state_source, initial_state_indices, scale,
                    use_qk_l2norm_in_kernel, state_layout, out, initial_state_order=None) -> None:
    from gdn_ops.triton_decode import launch_decode

    _check_recurrent(q, k, v, g, beta, initial_state_source, initial_state_indices, scale, state_layout, out,
                     initial_state_order)
    launch_decode(
        q, k, v, g, beta, None, None, initial_state_source, initial_state_indices, out,
        scale=_resolve_scale(scale, q.shape[-1]), use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=state_layout, order=initial_state_order,
    )


@_recurrent_op.register_fake
def _recurrent_fake(q, k, v, g, beta, initial_state_source, initial_state_indices, scale,
                    use_qk_l2norm_in_kernel, state_layout, out, initial_state_order=None) -> None:
    _check_recurrent(q, k, v, g, beta, initial_state_source, initial_state_indices, scale, state_layout, out,
                     initial_state_order)


_forbid_autograd(_recurrent_op)


# --------------------------------------------------------------------------------------------
# fused_sigmoid_gating_delta_rule_update: gating inside the kernel
# --------------------------------------------------------------------------------------------


def _check_fused(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, pool, indices,
                 scale, state_layout, out, order) -> None:
    _validate.check_tensor("out", out)
    B, T, _, HV, _, _ = _validate.check_recurrence(q, k, v, pool, indices, state_layout, out, out.dtype)
    _validate.check_order(order, indices, B, q.device)
    _validate.check_gates("a", a, "b", b, B, T, HV, q.device)
    _validate.check_head_params(A_log, dt_bias, HV, q.device)
    _validate.check_scalars(scale, softplus_beta, softplus_threshold)
    _validate.check_disjoint({"out": out, "initial_state_source": pool},
                             {"q": q, "k": k, "v": v, "a": a, "b": b, "A_log": A_log, "dt_bias": dt_bias,
                              "initial_state_indices": indices, "initial_state_order": order})


@torch.library.custom_op("gdn_ops::fused_sigmoid_gating_delta_rule_update", mutates_args=_MUTATED)
def _fused_op(
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
    scale: float | None,
    use_qk_l2norm_in_kernel: bool,
    state_layout: str,
    out: torch.Tensor,
    initial_state_order: torch.Tensor | None = None,
) -> None:
    _check_fused(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b,
                 initial_state_source, initial_state_indices, scale, state_layout, out, initial_state_order)
    g, beta = gdn_gating_reference(A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
    _cpu_recurrence(
        q, k, v, g, beta, initial_state_source, initial_state_indices,
        _resolve_scale(scale, q.shape[-1]), use_qk_l2norm_in_kernel, state_layout, out,
    )


@_fused_op.register_kernel("cuda")
def _fused_cuda(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, initial_state_source,
                initial_state_indices, scale, use_qk_l2norm_in_kernel, state_layout, out,
                initial_state_order=None) -> None:
    from gdn_ops.triton_decode import launch_decode

    _check_fused(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b,
                 initial_state_source, initial_state_indices, scale, state_layout, out, initial_state_order)
    launch_decode(
        q, k, v, a, b, A_log, dt_bias, initial_state_source, initial_state_indices, out,
        scale=_resolve_scale(scale, q.shape[-1]), use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_layout=state_layout, softplus_beta=softplus_beta, softplus_threshold=softplus_threshold,
        order=initial_state_order,
    )


@_fused_op.register_fake
def _fused_fake(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b, initial_state_source,
                initial_state_indices, scale, use_qk_l2norm_in_kernel, state_layout, out,
                initial_state_order=None) -> None:
    _check_fused(A_log, a, dt_bias, softplus_beta, softplus_threshold, q, k, v, b,
                 initial_state_source, initial_state_indices, scale, state_layout, out, initial_state_order)


_forbid_autograd(_fused_op)


# --------------------------------------------------------------------------------------------
# gdn_gating: functional fp32 gates
# --------------------------------------------------------------------------------------------


def _check_gating(A_log, a, dt_bias, b, softplus_beta, softplus_threshold) -> None:
    _validate.check_tensor("a", a)
    _validate.check_tensor("b", b)
    if a.dim() < 1:
        raise ValueError(f"gdn_ops: argument 'a' must be a tensor [..., HV]; got shape {list(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"gdn_ops: argument 'b' must have the shape of 'a' {list(a.shape)}; got {list(b.shape)}")
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in _validate.ACTIVATION_DTYPES:
            raise TypeError(f"gdn_ops: argument '{name}' must have dtype in {list(_validate.ACTIVATION_DTYPES)}; got {t.dtype}")
        if t.device != a.device:
            raise ValueError(f"gdn_ops: argument '{name}' must be on device {a.device} like a; got {t.device}")
    _validate.check_head_params(A_log, dt_bias, a.shape[-1], a.device)
    _validate.check_scalars(None, softplus_beta, softplus_threshold)


@torch.library.custom_op("gdn_ops::gdn_gating", mutates_args=())
def _gating_op(
    A_log: torch.Tensor,
    a: torch.Tensor,
    dt_bias: torch.Tensor,
    b: torch.Tensor,
    softplus_beta: float,
    softplus_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_gating(A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
    g, beta = gdn_gating_reference(A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
    # dense, as the CUDA and fake kernels make them (elementwise math keeps a's strides)
    return g.contiguous(), beta.contiguous()


@_gating_op.register_kernel("cuda")
def _gating_cuda(A_log, a, dt_bias, b, softplus_beta, softplus_threshold):
    from gdn_ops.triton_gating import launch_gating

    _check_gating(A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
    g = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    beta = torch.empty_like(g)
    launch_gating(A_log, a.contiguous(), dt_bias, b.contiguous(), g, beta, softplus_beta, softplus_threshold)
    return g, beta


@_gating_op.register_fake
def _gating_fake(A_log, a, dt_bias, b, softplus_beta, softplus_threshold):
    _check_gating(A_log, a, dt_bias, b, softplus_beta, softplus_threshold)
    g = a.new_empty(a.shape, dtype=torch.float32)
    return g, torch.empty_like(g)


def _gating_setup_context(ctx, inputs, output) -> None:
    A_log, a, dt_bias, b, softplus_beta, softplus_threshold = inputs
    ctx.save_for_backward(A_log, a, dt_bias, b)
    ctx.softplus = (softplus_beta, softplus_threshold)


def _gating_backward(ctx, grad_g, grad_beta):
    # The gates are cheap elementwise math: differentiate the reference itself.
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
    wanted = [t for t in leaves if t.requires_grad]
    with torch.enable_grad():
        g, beta = gdn_gating_reference(*leaves, *ctx.softplus)
        # beta depends on b alone and g on the rest: an output none of the wanted inputs reach has no graph
        reached = [(out, grad) for out, grad in ((g, grad_g), (beta, grad_beta)) if out.requires_grad]
        grads = iter(torch.autograd.grad([out for out, _ in reached], wanted, [grad for _, grad in reached],
                                         allow_unused=True))
    return (*(next(grads) if t.requires_grad else None for t in leaves), None, None)


_gating_op.register_autograd(_gating_backward, setup_context=_gating_setup_context)


# --------------------------------------------------------------------------------------------
# slot_order: the rows of a step sorted by the slot they address
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("gdn_ops::slot_order", mutates_args=())
def _slot_order_op(initial_state_indices: torch.Tensor) -> torch.Tensor:
    _validate.check_slot_indices(initial_state_indices)
    sorted_slots, rows = torch.sort(initial_state_indices, stable=True)
    return torch.stack([sorted_slots, rows.to(initial_state_indices.dtype)])


@_slot_order_op.register_kernel("cuda")
def _slot_order_cuda(initial_state_indices):
    from gdn_ops.triton_decode import default_pdl
    from gdn_ops.triton_slot_order import slot_order

    _validate.check_slot_indices(initial_state_indices)
    return slot_order(initial_state_indices.contiguous(), pdl=default_pdl(initial_state_indices.device))


@_slot_order_op.register_fake
def _slot_order_fake(initial_state_indices):
    _validate.check_slot_indices(initial_state_indices)
    return initial_state_indices.new_empty((2, initial_state_indices.shape[0]))
