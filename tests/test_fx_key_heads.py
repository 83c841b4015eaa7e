"""Rewrite ``key_heads``: q and k's key heads repeated in PyTorch in front of a decode op -> the op's
own grouping of value heads over key heads (its graph snapshot: test_fx_pass.py)."""

from __future__ import annotations

import pytest
import torch
from fx_models import (
    FUSED,
    RECURRENT,
    assert_close,
    assert_qk_read_in_place,
    assert_state_written_only_by,
    clone_inputs,
    decode_inputs,
    l2norm_rsqrt,
    op_calls,
    pass_compile_context,
    run_both,
)

import fx_passes
import gdn_ops
from fx_passes.patterns import repeated_key_heads_into_decode_op as key_heads_module


def _gates(inputs):
    with torch.no_grad():
        return gdn_ops.gdn_gating_reference(inputs["A_log"], inputs["a"], inputs["dt_bias"], inputs["b"])


def repeated_decode(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2):
    """Layer 1: the unfused op on q and k repeated from 1 to 4 heads; layer 2: the fused op on them
    repeated from 2 to 4, as transformers 5.17's Qwen3-Next module does (``repeat_interleave``)."""
    groups = v.shape[2] // q.shape[2]
    q1, k1 = q[:, :, :1].repeat_interleave(v.shape[2], dim=2), k[:, :, :1].repeat_interleave(v.shape[2], dim=2)
    o1 = gdn_ops.recurrent_gated_delta_rule_update(q1, k1, v, g, beta, pool, idx, use_qk_l2norm_in_kernel=True)
    q2, k2 = q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)
    return gdn_ops.fused_sigmoid_gating_delta_rule_update(
        A_log, a, dt_bias, 1.0, 20.0, q2, k2, o1, b, pool2, idx, use_qk_l2norm_in_kernel=True
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_repeated_key_heads_fold_into_either_op(dtype):
    inputs = decode_inputs(dtype=dtype, HK=2, HV=4)
    g, beta = _gates(inputs)
    inputs.update(g=g, beta=beta, pool2=inputs["pool"].clone() + 0.5)
    actual, expected, comp, eager, code, counts = run_both(repeated_decode, inputs)
    assert counts == {"key_heads": 2 * key_heads_module.REWRITE.EXPECTED_MATCHES}
    for op in (RECURRENT, FUSED):
        assert_state_written_only_by(code, op, expected_calls=1)
    assert_qk_read_in_place(code)
    assert_close(actual, expected, dtype)
    for name in ("pool", "pool2"):
        assert_close(comp[name], eager[name], dtype)


def test_other_repeats_are_left_alone():
    """A tiled repeat (head h from key head h % HK), q repeated but not k, and q and k repeated by
    different factors to the same heads: none is the op's grouping of both."""
    inputs = decode_inputs(dtype=torch.float32, HK=2, HV=4)
    g, beta = _gates(inputs)
    inputs.update(g=g, beta=beta)

    def three_calls(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta):
        cases = [
            (q.repeat(1, 1, 2, 1), k.repeat(1, 1, 2, 1)),
            (q.repeat_interleave(2, dim=2), torch.cat([k, k.flip(2)], dim=2)),
            (q.repeat_interleave(2, dim=2), k[:, :, :1].repeat_interleave(4, dim=2)),
        ]
        out = 0
        for qr, kr in cases:
            out = out + gdn_ops.recurrent_gated_delta_rule_update(qr, kr, v, g, beta, pool, idx)
        return out

    actual, expected, comp, eager, code, counts = run_both(three_calls, inputs)
    assert counts == {}
    assert len(op_calls(code, RECURRENT)) == 3
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_a_repeat_read_before_its_input_is_written_keeps_the_old_values():
    """q and k repeated, then q written in place before the op: the op must see the repeat of the
    old q. The compiled graph writes the new q back at its end, after the op, so the fold is made
    and is safe."""
    inputs = decode_inputs(dtype=torch.float32, HK=2, HV=4)
    g, beta = _gates(inputs)
    inputs.update(g=g, beta=beta)

    def written_after_repeat(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta):
        qr, kr = q.repeat_interleave(2, dim=2), k.repeat_interleave(2, dim=2)
        q.mul_(3.0)
        return gdn_ops.recurrent_gated_delta_rule_update(qr, kr, v, g, beta, pool, idx)

    actual, expected, comp, eager, _code, counts = run_both(written_after_repeat, inputs)
    assert counts == {"key_heads": 1}
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)
    assert_close(comp["q"], eager["q"], torch.float32)


@pytest.mark.parametrize("norm_first", [True, False], ids=["norm_then_repeat", "repeat_then_norm"])
def test_a_norm_on_either_side_of_the_repeat_folds_too(norm_first):
    """Normalising each key head commutes with repeating it: either order leaves the op with the key
    heads and its own norm. Norm first, the norm meets the op only once the repeat is gone, so the
    pass runs its rewrites again (one round saw a repeat in front of the op, and kept the norm)."""

    def decode(q, k, v, a, b, A_log, dt_bias, pool, idx):
        groups = v.shape[2] // q.shape[2]
        if norm_first:
            q, k = l2norm_rsqrt(q).repeat_interleave(groups, dim=2), l2norm_rsqrt(k).repeat_interleave(groups, dim=2)
        else:
            q, k = l2norm_rsqrt(q.repeat_interleave(groups, dim=2)), l2norm_rsqrt(k.repeat_interleave(groups, dim=2))
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx)

    actual, expected, comp, eager, code, counts = run_both(decode, decode_inputs(dtype=torch.float32, HK=2, HV=4))
    assert counts == {"key_heads": 1, "qk_l2norm": 1}
    assert_qk_read_in_place(code)
    assert_close(actual, expected, torch.float32)
    assert_close(comp["pool"], eager["pool"], torch.float32)


def test_a_repeat_by_a_symbolic_group_folds_under_dynamic_shapes():
    """``dynamic=True`` makes the head counts symbols, and ``HV // HK`` with them."""

    def decode(q, k, v, a, b, A_log, dt_bias, pool, idx):
        groups = v.shape[2] // q.shape[2]
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(
            A_log, a, dt_bias, 1.0, 20.0, q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2),
            v, b, pool, idx, use_qk_l2norm_in_kernel=True)

    inputs = decode_inputs(dtype=torch.float32, HK=2, HV=4)
    eager = clone_inputs(inputs)
    with torch.no_grad():
        expected = decode(**eager)
    with pass_compile_context():
        actual = torch.compile(decode, dynamic=True)(**inputs)
    assert fx_passes.total_counts() == {"key_heads": 1}
    assert_close(actual, expected, torch.float32)
    assert_close(inputs["pool"], eager["pool"], torch.float32)
