"""Rewrite ``hf_recurrence``: transformers' plain-PyTorch Qwen3-Next / Qwen3.5 decode step -> gdn-ops."""

from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch
from fx_models import (
    DEVICE,
    FUSED,
    LAYOUT_ARG,
    RECURRENT,
    assert_close,
    assert_state_written_only_by,
    compile_and_run,
    decode_inputs,
    gating_hf,
    op_calls,
    pass_compile_context,
    tiny_qwen3_5,
    tiny_qwen3_next,
)
from torch._inductor.utils import run_and_get_code

import fx_passes
from fx_passes.patterns import hf_torch_recurrent_gated_delta_rule as hf_module

transformers = pytest.importorskip("transformers")
from transformers.models.qwen3_next import modeling_qwen3_next

HF_STEP = inspect.unwrap(modeling_qwen3_next.torch_recurrent_gated_delta_rule)
# Releases before ~5.20 repeat the key heads for GQA in the module's forward, later ones inside
# the function: the test layer does what the installed release's module does.
HF_STEP_REPEATS_HEADS = "repeat_interleave" in inspect.getsource(HF_STEP)


def module_repeats(HK: int, HV: int, layers: int = 1) -> dict[str, int]:
    """The ``key_heads`` count the pass reports where the module, not the function, repeats the key
    heads (the release-wide choice above; Qwen3.5's module makes the same one as Qwen3-Next's)."""
    return {"key_heads": layers} if HK < HV and not HF_STEP_REPEATS_HEADS else {}


def hf_layer(write_back: bool = True):
    """The decode part of Qwen3NextGatedDeltaNet.forward, then what the cache does with the state."""

    def step(q, k, v, a, b, A_log, dt_bias, state):
        g, beta = gating_hf(A_log, a, dt_bias, b)
        groups = v.shape[2] // q.shape[2]
        if groups > 1 and not HF_STEP_REPEATS_HEADS:
            q, k = q.repeat_interleave(groups, dim=2), k.repeat_interleave(groups, dim=2)
        o, last = HF_STEP(q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
                          use_qk_l2norm_in_kernel=True)
        if write_back:
            state.copy_(last)  # LinearAttentionLayer.update_recurrent_state
            return o
        return o, last

    return step


def hf_inputs(dtype, HK, HV, B=3):
    x = decode_inputs(B=B, HK=HK, HV=HV, dtype=dtype, layout="kv", slots=B)
    state = x.pop("pool")
    x.pop("idx")
    return {**x, "state": state}


@pytest.mark.parametrize(
    "dtype, HK, HV",
    [
        pytest.param(torch.float32, 2, 4, id="fp32-gqa"),
        pytest.param(torch.bfloat16, 4, 4, id="bf16"),
        pytest.param(torch.float16, 2, 4, id="fp16-gqa"),
    ],
)
def test_transformers_decode_step_becomes_one_fused_call_on_the_cache_buffer(dtype, HK, HV):
    inputs = hf_inputs(dtype, HK, HV)
    eager = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        expected = hf_layer()(**eager)
    actual, code, counts = compile_and_run(hf_layer(), **inputs)

    assert counts == {"hf_recurrence": hf_module.REWRITE.EXPECTED_MATCHES, "gating": 1, **module_repeats(HK, HV)}
    (call,) = assert_state_written_only_by(code, FUSED, expected_calls=1)
    assert call[LAYOUT_ARG[FUSED]] == "'kv'"
    assert op_calls(code, RECURRENT) == []
    assert_close(actual, expected, dtype)
    assert_close(inputs["state"], eager["state"], dtype)


def test_a_state_that_is_not_written_back_is_not_mutated():
    """With no copy back into the input, the op must run on a copy: the caller's tensor stays as it was."""
    inputs = hf_inputs(torch.float32, 2, 4)
    before = inputs["state"].clone()
    with torch.no_grad():
        o_e, last_e = hf_layer(write_back=False)(**{k: v.clone() for k, v in inputs.items()})
    (o, last), code, counts = compile_and_run(hf_layer(write_back=False), **inputs)
    assert counts == {"hf_recurrence": 1, "gating": 1, **module_repeats(2, 4)}
    assert len(op_calls(code, FUSED)) == 1
    torch.testing.assert_close(inputs["state"], before, rtol=0, atol=0)
    assert_close(o, o_e, torch.float32)
    assert_close(last, last_e, torch.float32)


def test_fp64_decode_step_is_left_alone():
    inputs = hf_inputs(torch.float64, 2, 4)
    inputs["state"] = inputs["state"].double()
    eager = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        expected = hf_layer()(**eager)
    actual, code, counts = compile_and_run(hf_layer(), **inputs)
    assert counts == {}
    assert "gdn_ops" not in code
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(inputs["state"], eager["state"])


@pytest.mark.parametrize("rows", [slice(2, 5), slice(0, 3)], ids=["offset", "leading"])
def test_a_state_that_is_a_view_into_a_larger_pool_is_left_alone(rows):
    """The op is handed the state as its own base. A slice of a larger pool must not be: Inductor
    clones such a base as if it began its storage, and rows 2-4 of 5 came out NaN and garbage in
    the second of two steps. Left alone, the steps run as written."""
    x = hf_inputs(torch.float32, 2, 4)
    state = x.pop("state")  # [3, HV, K, V]: a pool of 5 slots around it
    x["pool"] = torch.cat([state, torch.randn(2, *state.shape[1:], device=state.device) * 0.1])

    def two_steps(q, k, v, a, b, A_log, dt_bias, pool):
        step = hf_layer()
        return step(q, k, v, a, b, A_log, dt_bias, pool[rows]), step(q, k, v, a, b, A_log, dt_bias, pool[rows])

    eager = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        expected = two_steps(**eager)
    actual, _code, counts = compile_and_run(two_steps, **x)
    for got, want in zip(actual, expected):
        assert_close(got, want, torch.float32)
    assert_close(x["pool"], eager["pool"], torch.float32)
    assert counts == {}


@pytest.mark.parametrize("gate_shapes", [((1, 1, 4), (3, 1, 4)), ((3, 1, 4), (3, 1, 1))], ids=["g", "beta"])
def test_gates_that_broadcast_are_left_alone(gate_shapes):
    """transformers' step broadcasts g and beta (a decay shared by the batch, a beta per row); the op
    takes them [B, T, HV] only, and compiling failed in its shape check."""
    x = hf_inputs(torch.float32, 4, 4)  # as many key heads as value heads: any release's function takes them
    x = {"q": x["q"], "k": x["k"], "v": x["v"], "state": x["state"],
         "g": -torch.rand(gate_shapes[0], device=DEVICE), "beta": torch.rand(gate_shapes[1], device=DEVICE)}

    def step(q, k, v, g, beta, state):
        o, last = HF_STEP(q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
                          use_qk_l2norm_in_kernel=True)
        state.copy_(last)
        return o

    eager = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        expected = step(**eager)
    actual, _code, counts = compile_and_run(step, **x)
    assert_close(actual, expected, torch.float32)
    assert_close(x["state"], eager["state"], torch.float32)
    assert counts == {}


def test_missing_transformers_skips_the_pattern_with_a_debug_line(monkeypatch, caplog):
    rewrite = hf_module.HFTorchRecurrentGatedDeltaRule()
    monkeypatch.setattr(hf_module.importlib.util, "find_spec", lambda name, *a: None)
    with caplog.at_level(logging.DEBUG, logger=fx_passes.LOGGER_NAME):
        assert rewrite.setup() is False
    assert any("transformers is not installed" in r.getMessage() for r in caplog.records)


def test_a_function_that_does_not_trace_is_skipped_with_a_debug_line(monkeypatch, caplog):
    def broken(query, key, value, g, beta, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, **kwargs):
        raise RuntimeError("unsupported in this release")

    rewrite = hf_module.HFTorchRecurrentGatedDeltaRule()
    monkeypatch.setattr(hf_module, "imported_functions", lambda: [("some.transformers.module", broken)])
    with caplog.at_level(logging.DEBUG, logger=fx_passes.LOGGER_NAME):
        assert rewrite.setup() is True
    assert rewrite.traced_modules == []
    assert any("does not trace" in r.getMessage() for r in caplog.records)
    graph = torch.fx.Graph()
    graph.output(())
    assert rewrite.apply(graph) == 0


# --------------------------------------------------------------------------------------------
# a whole model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny_model", [tiny_qwen3_next, tiny_qwen3_5], ids=["qwen3_next", "qwen3_5"])
def test_tiny_model_decodes_with_the_fused_kernel(tiny_model):
    """Random weights, no download: prefill eagerly, then decode tokens eagerly and compiled."""
    from transformers.cache_utils import StaticCache

    config, model = tiny_model()
    n_linear = config.layer_types.count("linear_attention")
    prompt = torch.randint(0, config.vocab_size, (2, 5), device=DEVICE)
    with torch.no_grad():
        try:
            cache_eager = StaticCache(config=config, max_cache_len=16)
            logits = model(input_ids=prompt, past_key_values=cache_eager, use_cache=True).logits
        except (AttributeError, TypeError, ValueError):
            # early 5.x releases have no static cache for this hybrid model: use the model's own
            # (its attention cache grows, so the decode step compiles again once, dynamically)
            out = model(input_ids=prompt, use_cache=True)
            logits, cache_eager = out.logits, out.past_key_values
    cache_compiled = copy.deepcopy(cache_eager)
    token = logits[:, -1:].argmax(-1)

    def states(cache):
        """The linear-attention layers' recurrent states (the cache classes changed across releases)."""
        found = []
        for layer in getattr(cache, "layers", []):
            rs = getattr(layer, "recurrent_states", None)
            rs = rs.get(0) if isinstance(rs, dict) else rs
            rs = rs[0] if isinstance(rs, (list, tuple)) and rs else rs
            if isinstance(rs, torch.Tensor):
                found.append(rs)
        return found

    before = states(cache_compiled)
    compiled = torch.compile(model)
    with pass_compile_context():
        for step in range(3):
            expected = model(input_ids=token, past_key_values=cache_eager, use_cache=True).logits
            if step == 0:
                out, codes = run_and_get_code(compiled, input_ids=token, past_key_values=cache_compiled, use_cache=True)
                code = "\n".join(codes)
                counts = fx_passes.total_counts()
            else:
                out = compiled(input_ids=token, past_key_values=cache_compiled, use_cache=True)
            torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
            token = expected[:, -1:].argmax(-1)  # both decode the same tokens

    assert counts == {"hf_recurrence": n_linear, "gating": n_linear,
                      **module_repeats(config.linear_num_key_heads, config.linear_num_value_heads, n_linear)}
    assert op_calls(code, RECURRENT) == []
    if before and all(a is b for a, b in zip(before, states(cache_compiled))):
        # the cache updates its state tensors in place (transformers >= ~5.20): the op must
        # update them directly, with no copy
        assert_state_written_only_by(code, FUSED, expected_calls=n_linear)
    else:
        # the cache replaces its tensors: the graph must not mutate its inputs, the op runs on a copy
        assert len(op_calls(code, FUSED)) == n_linear
    for state_c, state_e in zip(states(cache_compiled), states(cache_eager)):
        torch.testing.assert_close(state_c, state_e, atol=1e-5, rtol=1e-5)
