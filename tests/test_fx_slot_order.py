"""Rewrite ``slot_order``: decode calls that share their slot indices take one ``gdn_ops.slot_order``
of them, where the launcher would otherwise rank the slots in each call."""

from __future__ import annotations

import pytest
import torch
from fx_models import FUSED, RECURRENT, assert_close, decode_inputs, op_calls, run_both

import gdn_ops
from fx_passes.patterns import shared_slot_order

SLOT_ORDER_CALL = "torch.ops.gdn_ops.slot_order.default("


@pytest.fixture
def every_call_ranks(monkeypatch):
    """The launcher's table says every call ranks its own slots (off the GPU it says none does)."""
    monkeypatch.setattr(shared_slot_order, "ranks_its_own_slots", lambda node: True)


def _with_gates(inputs):
    with torch.no_grad():
        g, beta = gdn_ops.gdn_gating_reference(inputs["A_log"], inputs["a"], inputs["dt_bias"], inputs["b"])
    pools = {"pool2": inputs["pool"].clone() + 0.5, "pool3": inputs["pool"].clone() - 0.5}
    return {**inputs, "g": g, "beta": beta, **pools}


def three_layers(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2, pool3):
    """Three layers of one step, each on its own pool, all through the same slots."""
    o = gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx)
    o = gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool2, idx)
    return gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, o, b, pool3, idx)


def _order_args(code: str) -> list[str]:
    """The ``initial_state_order`` argument text of every decode call in the generated code."""
    return [args[-1].removeprefix("initial_state_order=") for op in (FUSED, RECURRENT) for args in op_calls(code, op)]


def _check_pools(comp, eager, dtype, names=("pool", "pool2", "pool3")):
    for name in names:
        assert_close(comp[name], eager[name], dtype)


@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_calls_sharing_their_slots_take_one_order(every_call_ranks, layout):
    inputs = _with_gates(decode_inputs(B=5, dtype=torch.float32, layout=layout, slots=9))

    def step(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2, pool3):
        o = gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx,
                                                           state_layout=layout)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool2, idx, state_layout=layout)
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, o, b, pool3, idx,
                                                              state_layout=layout)

    actual, expected, comp, eager, code, counts = run_both(step, inputs)
    assert counts == {"slot_order": 3 * shared_slot_order.REWRITE.EXPECTED_MATCHES}
    assert code.count(SLOT_ORDER_CALL) == 1
    orders = _order_args(code)
    assert len(orders) == 3 and len(set(orders)) == 1 and orders[0] != "None", orders
    assert_close(actual, expected, torch.float32)
    _check_pools(comp, eager, torch.float32)


def test_left_alone_where_no_call_would_sort():
    """As the launcher's table decides here: off the GPU, and on it at this B * HV (12), no call sorts."""
    inputs = _with_gates(decode_inputs(B=3, dtype=torch.bfloat16))
    actual, expected, comp, eager, code, counts = run_both(three_layers, inputs)
    assert counts == {}
    assert SLOT_ORDER_CALL not in code and set(_order_args(code)) == {"None"}
    assert_close(actual, expected, torch.bfloat16)
    _check_pools(comp, eager, torch.bfloat16)


def test_a_call_alone_on_its_slots_and_a_call_with_its_own_order_are_left_as_they_are(every_call_ranks):
    """Two calls on one set of slots share an order; a third on other slots keeps ranking its own, and
    a fourth given an order by the caller keeps that one."""
    inputs = _with_gates(decode_inputs(B=4, dtype=torch.float32, slots=9))
    inputs["idx2"] = torch.flip(inputs["idx"], [0]).contiguous()

    def step(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2, pool3, idx2):
        given = gdn_ops.slot_order(idx2)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, idx)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool2, idx2)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool3, idx)
        return gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool, idx2, initial_state_order=given)

    actual, expected, comp, eager, code, counts = run_both(step, inputs)
    assert counts == {"slot_order": 2}
    assert code.count(SLOT_ORDER_CALL) == 2  # the caller's and the rewrite's
    orders = _order_args(code)
    assert orders[1] == "None" and orders[0] == orders[2] != orders[3], orders
    assert_close(actual, expected, torch.float32)
    _check_pools(comp, eager, torch.float32)


def test_an_order_of_the_same_slots_already_in_the_graph_is_used(every_call_ranks):
    inputs = _with_gates(decode_inputs(B=4, dtype=torch.float32, slots=9))

    def step(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2, pool3):
        order = gdn_ops.slot_order(idx)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, idx, initial_state_order=order)
        o = gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool2, idx)
        return gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool3, idx)

    actual, expected, comp, eager, code, counts = run_both(step, inputs)
    assert counts == {"slot_order": 2}
    assert code.count(SLOT_ORDER_CALL) == 1
    assert len(set(_order_args(code))) == 1
    assert_close(actual, expected, torch.float32)
    _check_pools(comp, eager, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["vk", "kv"])
def test_on_the_gpu_the_launchers_table_decides_and_the_sorted_step_is_right(layout):
    """Qwen3-Next's TP=1 heads at B*HV 4096 with an fp32 pool, where the H200's launcher sorts the
    rows with no order given (a rank kernel a call): both calls take one order, and the step matches
    eager PyTorch."""
    from gdn_ops.triton_decode import gpu_name
    from gdn_ops.triton_slot_order import sorts_rows

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    B, HV = 128, 32
    if not sorts_rows(gpu_name(torch.device("cuda", torch.cuda.current_device())), layout, 4, B * HV, False, HV):
        pytest.skip(f"{torch.cuda.get_device_name()} does not sort these rows with no order given")
    inputs = _with_gates(decode_inputs(B=B, HK=16, HV=HV, K=128, V=128, dtype=torch.bfloat16, layout=layout,
                                       slots=B + 9))
    del inputs["pool3"]

    def step(q, k, v, a, b, A_log, dt_bias, pool, idx, g, beta, pool2):
        o = gdn_ops.fused_sigmoid_gating_delta_rule_update(A_log, a, dt_bias, 1.0, 20.0, q, k, v, b, pool, idx,
                                                           use_qk_l2norm_in_kernel=True, state_layout=layout)
        return gdn_ops.recurrent_gated_delta_rule_update(q, k, o, g, beta, pool2, idx, use_qk_l2norm_in_kernel=True,
                                                         state_layout=layout)

    actual, expected, comp, eager, code, counts = run_both(step, inputs)
    assert counts == {"slot_order": 2}
    assert code.count(SLOT_ORDER_CALL) == 1
    assert_close(actual, expected, torch.bfloat16)
    _check_pools(comp, eager, torch.bfloat16, names=("pool", "pool2"))


def test_a_batch_unknown_at_compile_time_is_left_alone(monkeypatch):
    """With a dynamic batch dimension B * HV is a symbol, so the launcher's table cannot say whether
    a call ranks its slots: the rewrite stays out, even where the table would say yes to any size."""
    import gdn_ops.triton_slot_order as slot_order_module

    monkeypatch.setattr(slot_order_module, "sorts_rows", lambda *args: True)
    inputs = _with_gates(decode_inputs(B=5, dtype=torch.float32, slots=9))
    for name in ("q", "k", "v", "a", "b", "idx", "g", "beta"):
        torch._dynamo.mark_dynamic(inputs[name], 0)
    actual, expected, comp, eager, code, counts = run_both(three_layers, inputs)
    assert counts == {}
    assert SLOT_ORDER_CALL not in code
    assert_close(actual, expected, torch.float32)
    _check_pools(comp, eager, torch.float32)


def test_with_a_static_batch_the_same_table_answer_makes_the_rewrite(monkeypatch):
    """The counterpart of the test above: the same table answer and a static batch."""
    import gdn_ops.triton_slot_order as slot_order_module

    monkeypatch.setattr(slot_order_module, "sorts_rows", lambda *args: True)
    inputs = _with_gates(decode_inputs(B=5, dtype=torch.float32, slots=9))
    actual, expected, comp, eager, code, counts = run_both(three_layers, inputs)
    assert counts == {"slot_order": 3}
    assert code.count(SLOT_ORDER_CALL) == 1
    assert_close(actual, expected, torch.float32)
    _check_pools(comp, eager, torch.float32)
