"""Rewrite ``qk_l2norm``: a PyTorch q/k L2 norm in front of a decode op -> use_qk_l2norm_in_kernel=True."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fx_models import (
    FUSED,
    L2NORM_ARG,
    RECURRENT,
    assert_close,
    assert_qk_read_in_place,
    assert_state_written_only_by,
    decode_inputs,
    l2norm_div,
    l2norm_fp32,
    l2norm_rsqrt,
    l2norm_rsqrt_first,
    op_calls,
    run_both,
)

import gdn_ops
from fx_passes.patterns import torch_l2norm_into_decode_op as l2norm_module


@pytest.mark.parametrize(
    "norm, dtype",
    [
        pytest.param(l2norm_rsqrt, torch.float32, id="x*rsqrt-fp32"),
        pytest.param(l2norm_div, torch.float16, id="x/sqrt(pow)-fp16"),
        pytest.param(l2norm_rsqrt_first, torch.bfloat16, id="rsqrt*x-dim3-bf16"),
        pytest.param(l2norm_fp32, torch.bfloat16, id="fp32-norm-cast-back-bf16"),
    ],
)
def test_pytorch_l2norm_folds_into_either_op(norm, dtype):
    """Layer 1 calls the unfused op on precomputed gates, layer 2 the fused op."""
    inputs = decode_inputs(dtype=dtype)
    with torch.no_grad():
        g, beta = gdn_ops.gdn_gating_reference(inputs["A_log"], inputs["a"], inputs["dt_bias"], inputs["b"])
    inputs.update(g=g, beta=beta, pool2=inputs["pool"].clone() + 0.5)

    def two_layers(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2):
        o1 = gdn_ops.recurrent_gated_delta_rule_update(norm(q), norm(k), v, g, beta, pool, idx)
        o2 = gdn_ops.fused_sigmoid_gating_delta_rule_update(
            A_log, a, dt_bias, 1.0, 20.0, norm(q), norm(k), o1, b, pool2, idx
        )
        return o2

    actual, expected, comp, eager, code, counts = run_both(two_layers, inputs)
    assert counts == {"qk_l2norm": 2 * l2norm_module.REWRITE.EXPECTED_MATCHES}
    for op in (RECURRENT, FUSED):
        (call,) = assert_state_written_only_by(code, op, expected_calls=1)
        assert call[L2NORM_ARG[op]] == "True"
    assert_close(actual, expected, dtype)
    for name in ("pool", "pool2"):
        assert_close(comp[name], eager[name], dtype)


def test_the_op_reads_q_and_k_where_they_are():
    """q and k as slices of one projection, as a model lays them out (rows of 2K): once the norm is
    folded the op reads them in place, not copies in the layout of the normed tensors it read before."""
    inputs = decode_inputs(dtype=torch.float32)
    with torch.no_grad():
        g, beta = gdn_ops.gdn_gating_reference(inputs["A_log"], inputs["a"], inputs["dt_bias"], inputs["b"])
    inputs = {"qk": torch.cat([inputs["q"], inputs["k"]], dim=-1), "v": inputs["v"], "pool": inputs["pool"],
              "idx": inputs["idx"], "g": g, "beta": beta}

    def layer(qk, v, pool, idx, g, beta):
        K = qk.shape[-1] // 2
        return gdn_ops.recurrent_gated_delta_rule_update(l2norm_rsqrt(qk[..., :K]), l2norm_rsqrt(qk[..., K:]), v, g,
                                                         beta, pool, idx)

    actual, expected, comp, eager, code, counts = run_both(layer, inputs)
    assert counts == {"qk_l2norm": 1}
    assert_qk_read_in_place(code)
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_norms_the_kernel_does_not_compute_are_left_alone():
    """Another eps, F.normalize, a norm on q only, a norm over another dim, a norm in fp64."""
    inputs = decode_inputs(dtype=torch.float32)

    def normalize(x):
        return F.normalize(x, dim=-1, eps=1e-6)

    def other_dim(x):
        return x * torch.rsqrt((x * x).sum(dim=-2, keepdim=True) + 1e-6)

    def in_fp64(x):
        return l2norm_rsqrt(x.double()).to(x.dtype)

    cases = [
        (lambda x: l2norm_rsqrt(x, eps=1e-5), lambda x: l2norm_rsqrt(x, eps=1e-5)),
        (normalize, normalize),
        (l2norm_rsqrt, lambda x: x),
        (other_dim, other_dim),
        (in_fp64, in_fp64),
    ]

    def five_calls(q, k, v, a, b, A_log, dt_bias, pool, idx):
        out = 0
        for qn, kn in cases:
            out = out + gdn_ops.fused_sigmoid_gating_delta_rule_update(
                A_log, a, dt_bias, 1.0, 20.0, qn(q), kn(k), v, b, pool, idx
            )
        return out

    actual, expected, comp, eager, code, counts = run_both(five_calls, inputs)
    assert counts == {}
    calls = op_calls(code, FUSED)
    assert len(calls) == len(cases)
    assert all(call[L2NORM_ARG[FUSED]] == "False" for call in calls)
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_q_and_k_in_the_buffer_the_op_writes_keep_their_norm():
    """The second layer reads q and k from the first one's output buffer and writes its own output
    there: normalised, they were fresh tensors; folded, the op would read the buffer it writes
    (and refuses to). Only the first layer's norm folds."""
    base = decode_inputs(dtype=torch.float32, HK=2, HV=4, K=8, V=8)
    B, _, HV, V = base["v"].shape

    def two_layers(q, k, v, A_log, a, dt_bias, b, pool, idx, buf):
        g, beta = -A_log.exp() * F.softplus(a + dt_bias), b.sigmoid()
        gdn_ops.recurrent_gated_delta_rule_update(l2norm_rsqrt(q), l2norm_rsqrt(k), v, g, beta, pool, idx, out=buf)
        q2, k2 = buf[:, :, :2], buf[:, :, 2:]
        gdn_ops.recurrent_gated_delta_rule_update(l2norm_rsqrt(q2), l2norm_rsqrt(k2), v, g, beta, pool, idx, out=buf)
        return buf.sum()

    _actual, _expected, comp, eager, _code, counts = run_both(two_layers, {**base, "buf": torch.zeros(B, 1, HV, V, device=base["v"].device)})
    assert counts.get("qk_l2norm") == 1
    assert_close(comp["buf"], eager["buf"], torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)
