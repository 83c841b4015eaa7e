"""Rewrite ``gating``: PyTorch gating feeding recurrent_gated_delta_rule_update -> the fused op."""

from __future__ import annotations

import pytest
import torch
from fx_models import (
    FUSED,
    RECURRENT,
    assert_close,
    assert_state_written_only_by,
    decode_inputs,
    gating_hf,
    gating_op,
    gating_other_orders,
    gating_reference,
    gating_same_dtype,
    gating_scaled_commuted,
    op_calls,
    run_both,
)

import gdn_ops
from fx_passes.patterns import torch_gating_into_recurrent_op as gating_module


def decode_step(gating, layout="vk"):
    def step(q, k, v, a, b, A_log, dt_bias, pool, idx):
        g, beta = gating(A_log, a, dt_bias, b)
        return gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, idx, state_layout=layout)

    return step


@pytest.mark.parametrize(
    "gating, dtype, layout",
    [
        pytest.param(gating_hf, torch.bfloat16, "vk", id="transformers-form-bf16-vk"),
        pytest.param(gating_hf, torch.float32, "kv", id="transformers-form-fp32-kv"),
        pytest.param(gating_reference, torch.float16, "vk", id="explicit-casts-fp16"),
        pytest.param(gating_scaled_commuted, torch.bfloat16, "kv", id="softplus-beta2-threshold15-commuted"),
        pytest.param(gating_same_dtype, torch.float32, "vk", id="no-casts-fp32"),
        pytest.param(gating_other_orders, torch.bfloat16, "vk", id="bias-first-sign-outside"),
        pytest.param(gating_op, torch.bfloat16, "vk", id="gdn_gating-op"),
    ],
)
def test_pytorch_gating_fuses_into_the_fused_op(gating, dtype, layout):
    inputs = decode_inputs(dtype=dtype, layout=layout)
    actual, expected, pool_c, pool_e, code, counts = run_both(decode_step(gating, layout), inputs)

    assert counts == {"gating": gating_module.REWRITE.EXPECTED_MATCHES}
    calls = assert_state_written_only_by(code, FUSED, expected_calls=1)
    assert op_calls(code, RECURRENT) == []
    if gating is gating_scaled_commuted:
        assert calls[0][3:5] == ["2.0", "15.0"]  # softplus beta, threshold read from the graph
    assert_close(actual, expected, dtype)
    assert_close(pool_c["pool"], pool_e["pool"], dtype)


def test_each_layer_gets_one_fused_call():
    inputs = decode_inputs(dtype=torch.bfloat16)
    second = decode_inputs(dtype=torch.bfloat16, seed=1)
    step = decode_step(gating_hf)

    def two_layers(q, k, v, a, b, A_log, dt_bias, pool, idx, a2, b2, A_log2, dt_bias2, pool2):
        o = step(q, k, v, a, b, A_log, dt_bias, pool, idx)
        return step(o[:, :, :2].contiguous(), k, v, a2, b2, A_log2, dt_bias2, pool2, idx)

    extra = {"a2": second["a"], "b2": second["b"], "A_log2": second["A_log"], "dt_bias2": second["dt_bias"], "pool2": second["pool"]}
    args = {**inputs, **extra}
    actual, expected, comp, eager, code, counts = run_both(two_layers, args)
    assert counts == {"gating": 2}
    assert_state_written_only_by(code, FUSED, expected_calls=2)
    assert_close(actual, expected, torch.bfloat16)
    for name in ("pool", "pool2"):
        assert_close(comp[name], eager[name], torch.bfloat16)


def test_gates_with_another_user_stay_and_the_op_still_fuses():
    inputs = decode_inputs(dtype=torch.float32)

    def step_and_log_gates(q, k, v, a, b, A_log, dt_bias, pool, idx):
        g, beta = gating_hf(A_log, a, dt_bias, b)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, idx)
        return o, g.mean() + beta.mean()

    (o, stat), (o_e, stat_e), comp, eager, code, counts = run_both(step_and_log_gates, inputs)
    assert counts == {"gating": 1}
    assert_state_written_only_by(code, FUSED, expected_calls=1)
    assert_close(o, o_e, torch.float32)
    assert_close(stat, stat_e, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_gating_the_fused_op_cannot_take_is_left_alone():
    """fp64 gates, a strided A_log, and a g that is not the gating expression: three unfused calls."""
    base = decode_inputs(dtype=torch.float32)
    A_log_wide = torch.stack([base["A_log"], base["A_log"] + 1], dim=-1).reshape(-1)  # A_log_wide[::2] == A_log

    def three_calls(q, k, v, a, b, A_log, dt_bias, pool, idx, A_log_wide):
        g64 = -A_log.double().exp() * torch.nn.functional.softplus(a.double() + dt_bias.double())
        o1 = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g64.float(), b.double().sigmoid().float(), pool, idx)
        g_strided, beta = gating_hf(A_log_wide[::2], a, dt_bias, b)
        o2 = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g_strided, beta, pool, idx)
        o3 = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, -a.abs(), beta, pool, idx)
        return o1 + o2 + o3

    actual, expected, comp, eager, code, counts = run_both(three_calls, {**base, "A_log_wide": A_log_wide})
    assert counts == {}
    assert op_calls(code, FUSED) == []
    assert len(op_calls(code, RECURRENT)) == 3
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_gating_inputs_in_the_buffer_the_op_writes_are_left_alone():
    """a and b sliced from the workspace that out= is also a slice of (interleaved rows): the
    unfused op read fresh g and beta, but the fused one would read a and b there, and the op
    refuses inputs that share memory with what it writes (the compiled step raised at run time)."""
    base = decode_inputs(dtype=torch.float32)
    B, _, HV, V = base["v"].shape
    workspace = torch.randn(B, 1, HV * V + 2 * HV, device=base["v"].device)

    def step(q, k, v, A_log, dt_bias, pool, idx, ws):
        a, b = ws[..., HV * V:HV * V + HV], ws[..., HV * V + HV:]
        g, beta = gating_hf(A_log, a, dt_bias, b)
        out = ws[..., :HV * V].unflatten(-1, (HV, V))
        gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, idx, out=out)
        return ws.sum()

    inputs = {n: base[n] for n in ("q", "k", "v", "A_log", "dt_bias", "pool", "idx")}
    actual, expected, comp, eager, code, counts = run_both(step, {**inputs, "ws": workspace})
    assert counts == {}
    assert op_calls(code, FUSED) == []
    assert_close(comp["ws"], eager["ws"], torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)
    assert_close(actual, expected, torch.float32)
