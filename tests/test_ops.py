"""The custom-op contract: opcheck, autograd refusal, gating op, torch.compile tracing."""

from __future__ import annotations

import pytest
import torch
from conftest import TRITON_INTERPRET
from decode_case import DecodeCase, build, check, run_op

import gdn_ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _op_args(inp, fused: bool, ordered: bool = False):
    c = inp.case
    out = torch.empty(inp.v.shape, dtype=c.result_dtype, device=inp.v.device)
    order = (gdn_ops.slot_order(inp.indices),) if ordered else ()
    if fused:
        op = torch.ops.gdn_ops.fused_sigmoid_gating_delta_rule_update.default
        args = (inp.A_log, inp.a, inp.dt_bias, 1.0, 20.0, inp.q, inp.k, inp.v, inp.b, inp.pool.view, inp.indices,
                None, c.l2norm, c.state_layout, out, *order)
    else:
        op = torch.ops.gdn_ops.recurrent_gated_delta_rule_update.default
        args = (inp.q, inp.k, inp.v, inp.g, inp.beta, inp.pool.view, inp.indices, None, c.l2norm, c.state_layout, out,
                *order)
    return op, args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("layout", ["vk", "kv"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_opcheck_recurrence_ops(device, fused, layout, padded):
    case = DecodeCase(B=3, T=2, HK=2, group=2, K=32, V=16, state_layout=layout, fused_gating=fused,
                      padding_rows=(1,) if padded else (), index_dtype=torch.int64 if padded else None, l2norm=padded)
    inp = build(case, device)
    # opcheck compares runs on copies, so unaddressed NaN slots are fine but make them finite for clarity
    inp.pool.view.nan_to_num_(0.5)
    op, args = _op_args(inp, fused)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_opcheck_recurrence_ops_given_the_slot_order(device, fused):
    case = DecodeCase(B=4, T=1, HK=2, group=2, K=32, V=16, state_layout="kv", fused_gating=fused,
                      padding_rows=(2,), index_dtype=torch.int64, seed=3)
    inp = build(case, device)
    inp.pool.view.nan_to_num_(0.5)
    torch.library.opcheck(*_op_args(inp, fused, ordered=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_opcheck_slot_order_op(device, dtype):
    indices = torch.tensor([7, -1, 3, 9, -1, 0], dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.gdn_ops.slot_order.default, (indices,))
    torch.library.opcheck(torch.ops.gdn_ops.slot_order.default, (indices[::2],))
    sorted_slots, rows = gdn_ops.slot_order(indices).cpu()
    assert rows.tolist() == [1, 4, 5, 2, 0, 3] and sorted_slots.tolist() == [-1, -1, 0, 3, 7, 9]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_gating_op(device):
    HV = 6
    args = (torch.randn(HV, device=device), torch.randn(4, 3, HV, device=device, dtype=torch.bfloat16),
            torch.randn(HV, device=device), torch.randn(4, 3, HV, device=device, dtype=torch.bfloat16), 1.0, 20.0)
    torch.library.opcheck(torch.ops.gdn_ops.gdn_gating.default, args)
    grad_args = tuple(a.float().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.gdn_ops.gdn_gating.default, grad_args)
    # a and b as [T, B, HV] buffers seen as [B, T, HV]: the gates still come back dense, as the fake
    # kernel says (the CPU kernel returned a's strides)
    permuted = (args[0], args[1].transpose(0, 1).contiguous().transpose(0, 1), args[2],
                args[3].transpose(0, 1).contiguous().transpose(0, 1), 1.0, 20.0)
    torch.library.opcheck(torch.ops.gdn_ops.gdn_gating.default, permuted)
    assert all(t.is_contiguous() for t in gdn_ops.gdn_gating(*permuted[:4]))
    # the head parameters alone needing grad (a and b from a frozen projection): beta reaches none
    # of them, and the backward asked autograd for a graph it had not
    params = (grad_args[0], args[1], grad_args[2], args[3], 1.0, 20.0)
    torch.library.opcheck(torch.ops.gdn_ops.gdn_gating.default, params)
    torch.library.opcheck(torch.ops.gdn_ops.gdn_gating.default, (args[0], args[1], args[2], grad_args[3], 1.0, 20.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold", [20.0, 1.0])
def test_gating_matches_reference_and_its_gradients(device, threshold):
    HV = 8
    leaves64 = [torch.randn(HV, dtype=torch.float64), torch.randn(5, 2, HV, dtype=torch.float64) * 4,
                torch.randn(HV, dtype=torch.float64), torch.randn(5, 2, HV, dtype=torch.float64) * 4]
    leaves64 = [t.to(device).requires_grad_() for t in leaves64]
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    g, beta = gdn_ops.gdn_gating(*leaves32, 1.5, threshold)
    assert g.dtype == beta.dtype == torch.float32
    g_ref, beta_ref = gdn_ops.gdn_gating_reference(*leaves64, 1.5, threshold, compute_dtype=torch.float64)
    torch.testing.assert_close(g.double(), g_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(beta.double(), beta_ref, rtol=2e-6, atol=1e-7)
    cot_g, cot_beta = torch.randn_like(g_ref), torch.randn_like(beta_ref)
    grads = torch.autograd.grad((g, beta), leaves32, (cot_g.float(), cot_beta.float()))
    grads_ref = torch.autograd.grad((g_ref, beta_ref), leaves64, (cot_g, cot_beta))
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.skipif(
    not TRITON_INTERPRET, reason="Triton interpreter off (TRITON_INTERPRET!=1)")), pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize(("low", "high"), [(-30.0, -17.0), (-12.0, -6.0), (-6.0, 6.0), (6.0, 30.0)])
def test_the_triton_gates_keep_fp32_precision_over_the_softplus_range(device, low, high):
    """The Triton gating (``gdn_gating``'s CUDA kernel, and every decode kernel's fused gating)
    against the float64 reference, relatively: written as log(1 + exp(x)) it lost exp(x) from
    about x = -16 (g came out 0) and was 5e-5 off from x = -6."""
    from gdn_ops.triton_gating import launch_gating

    HV = 8
    a = torch.empty(64, HV, device=device).uniform_(low, high)
    b, A_log, dt_bias = torch.randn(64, HV, device=device), torch.randn(HV, device=device), torch.randn(HV, device=device)
    g, beta = torch.empty_like(a), torch.empty_like(a)
    launch_gating(A_log, a - dt_bias, dt_bias, b, g, beta, 1.0, 20.0)
    g_ref, beta_ref = gdn_ops.gdn_gating_reference(A_log.double(), (a - dt_bias).double(), dt_bias.double(),
                                                   b.double(), 1.0, 20.0, compute_dtype=torch.float64)
    # The kernel rounds x = a + dt_bias to fp32 and a GPU's exp rounds x * log2(e) before ex2: each is
    # 2^-24 |x| absolute in the exponent, so |x| * sigmoid(x) / softplus(x) (softplus's condition
    # number, |x| for x << 0) times 2 * 2^-24 comes on top of a few ulps (2.4e-6 seen on an H200 with x in [-30, -17]).
    x = a.double()
    condition = x.abs() * torch.sigmoid(x) / torch.nn.functional.softplus(x)
    bound = 2e-6 + 2 * condition * 2.0**-24
    rel_err = (g.double() - g_ref).abs() / g_ref.abs()
    assert bool((rel_err <= bound).all()), f"g's relative error reaches {(rel_err / bound).max():.2f} times its bound"
    torch.testing.assert_close(beta.double(), beta_ref, rtol=2e-6, atol=0.0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_inplace_ops_refuse_inputs_that_require_grad(fused):
    inp = build(DecodeCase(B=2, T=1, HK=1, group=1, K=16, V=16, fused_gating=fused), "cpu")
    inp.q.requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only.*'q' requires grad"):
        run_op(inp)
    op, args = _op_args(inp, fused)
    with pytest.raises(RuntimeError, match="inference-only"):
        op(*args)
    with torch.no_grad():  # the same call is fine without autograd
        check(inp, run_op)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_compiles_fullgraph_with_dynamic_batch_without_recompiling(device, fused):
    torch._dynamo.reset()
    calls = []

    def step(inp):
        return run_op(inp)

    compiled = torch.compile(step, fullgraph=True, dynamic=None)
    from torch._dynamo.utils import counters

    counters.clear()
    for B in range(2, 7):
        inp = build(DecodeCase(B=B, T=1, HK=2, group=2, K=32, V=32, fused_gating=fused, padding_rows=(0,),
                               seed=B), device)
        for t in (inp.q, inp.k, inp.v, inp.a, inp.b, inp.g, inp.beta, inp.indices, inp.pool.view):
            torch._dynamo.mark_dynamic(t, 0)
        check(inp, compiled)
        calls.append(B)
    frames = counters["stats"]["unique_graphs"]
    assert frames <= 2, f"recompiled for batch sizes: {frames} graphs for {calls}"


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_with_its_slot_order_compiles_fullgraph(device):
    """An engine step as model code writes it: the order of the step's indices, then the layer's
    call given it; both ops trace through their fake kernels into one graph."""
    torch._dynamo.reset()

    def step(inp):
        order = gdn_ops.slot_order(inp.indices)
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(
            inp.A_log, inp.a, inp.dt_bias, 1.0, 20.0, inp.q, inp.k, inp.v, inp.b, inp.pool.view, inp.indices,
            state_layout=inp.case.state_layout, out=inp.out.view, initial_state_order=order)

    case = DecodeCase(B=5, T=1, HK=2, group=2, K=32, V=32, state_layout="kv", padding_rows=(1,), out_given=True,
                      seed=41)
    check(build(case, device), torch.compile(step, fullgraph=True))


@pytest.mark.parametrize("device", DEVICES)
def test_gating_reads_strided_head_parameters(device):
    HV = 5
    wide_A, wide_dt = torch.randn(3 * HV, device=device), torch.randn(3 * HV, device=device)
    a, b = torch.randn(4, HV, device=device), torch.randn(4, HV, device=device)
    g, beta = gdn_ops.gdn_gating(wide_A[::3], a, wide_dt[::3], b)
    g_ref, beta_ref = gdn_ops.gdn_gating_reference(wide_A[::3].contiguous(), a, wide_dt[::3].contiguous(), b)
    torch.testing.assert_close(g, g_ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(beta, beta_ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_gating_of_an_empty_batch(device):
    HV = 4
    A_log, dt_bias = torch.randn(HV, device=device), torch.randn(HV, device=device)
    a = b = torch.randn(0, 1, HV, device=device, dtype=torch.bfloat16)
    g, beta = gdn_ops.gdn_gating(A_log, a, dt_bias, b)
    assert g.shape == beta.shape == (0, 1, HV) and g.dtype == beta.dtype == torch.float32
