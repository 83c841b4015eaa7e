"""SGLang's call convention: tokens packed ``[1, N*T, ...]`` with ``cu_seqlens`` offsets, as its decode
backend calls ``fused_sigmoid_gating_delta_rule_update``; the same step as the batched form."""

from __future__ import annotations

import pytest
import torch

import gdn_ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
HK, HV, K, V, SLOTS = 2, 4, 16, 8, 9


def _batched(device, N, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)
    return {"A_log": r(HV), "a": r(N, T, HV), "dt_bias": r(HV), "softplus_beta": 1.0, "softplus_threshold": 20.0,
            "q": r(N, T, HK, K), "k": r(N, T, HK, K), "v": r(N, T, HV, V), "b": r(N, T, HV),
            "initial_state_source": r(SLOTS, HV, V, K),
            "initial_state_indices": torch.randperm(SLOTS, generator=gen)[:N].to(device, torch.int32)}


def _packed(kw, gates_dims):
    """The same tensors as SGLang passes them: q, k, v [1, N*T, ...], the gates [N*T, HV] or [1, N*T, HV]."""
    N, T = kw["q"].shape[:2]
    packed = dict(kw, initial_state_source=kw["initial_state_source"].clone(),
                  cu_seqlens=torch.arange(0, N * T + 1, T, dtype=torch.int32, device=kw["q"].device))
    for name in ("q", "k", "v"):
        packed[name] = kw[name].flatten(0, 1)[None]
    for name in ("a", "b"):
        packed[name] = kw[name].flatten(0, 1) if gates_dims == 2 else kw[name].flatten(0, 1)[None]
    return packed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("N", "T"), [(5, 1), (3, 2), (1, 1), (0, 1)])
@pytest.mark.parametrize("gates_dims", [2, 3])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_packed_tokens_give_the_batched_step(device, N, T, gates_dims, fused):
    kw = _batched(device, N, T)
    pool = kw["initial_state_source"].clone()
    packed = _packed(kw, gates_dims)
    if not fused:
        g, beta = gdn_ops.gdn_gating(kw["A_log"], kw["a"], kw["dt_bias"], kw["b"])
        for d in (kw, packed):
            for name in ("A_log", "dt_bias", "softplus_beta", "softplus_threshold"):
                del d[name]
            d.pop("a"), d.pop("b")
        kw.update(g=g, beta=beta)
        packed.update(g=g.flatten(0, 1) if gates_dims == 2 else g.flatten(0, 1)[None],
                      beta=beta.flatten(0, 1) if gates_dims == 2 else beta.flatten(0, 1)[None])
    step = gdn_ops.fused_sigmoid_gating_delta_rule_update if fused else gdn_ops.recurrent_gated_delta_rule_update
    expected = step(**kw)
    got = step(**packed)
    assert got.shape == (1, N * T, HV, V)
    torch.testing.assert_close(got[0], expected.flatten(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(packed["initial_state_source"], kw["initial_state_source"], rtol=0, atol=0)
    # and into a given packed buffer
    out = torch.full((1, N * T, HV, V), float("nan"), device=device)
    packed["initial_state_source"] = pool
    written = step(**packed, out=out)
    assert written.data_ptr() == out.data_ptr() or N == 0
    torch.testing.assert_close(out[0], expected.flatten(0, 1).float(), rtol=0, atol=0)
    torch.testing.assert_close(pool, kw["initial_state_source"], rtol=0, atol=0)


@pytest.mark.parametrize(("change", "name", "error"), [
    (lambda p: dict(p, cu_seqlens=p["cu_seqlens"][:-1]), "cu_seqlens", ValueError),  # 9 tokens in 2 sequences
    (lambda p: dict(p, cu_seqlens=p["cu_seqlens"].float()), "cu_seqlens", TypeError),
    (lambda p: dict(p, cu_seqlens=p["cu_seqlens"][None]), "cu_seqlens", ValueError),
    (lambda p: dict(p, q=p["q"][0]), "q", ValueError),  # not [1, tokens, HK, K]
    (lambda p: dict(p, a=p["a"][:-1]), "a", ValueError),
    (lambda p: dict(p, v=p["v"].unflatten(1, (3, 3))), "v", ValueError),
])
def test_packed_tokens_reject_what_they_cannot_split(change, name, error):
    packed = change(_packed(_batched("cpu", 3, 3), 2))
    with pytest.raises(error, match=f"argument '{name}'"):
        gdn_ops.fused_sigmoid_gating_delta_rule_update(**packed)


def test_packed_tokens_errors_name_the_shapes_passed():
    """A packed tensor's error names the shape passed; the checks that run on the [N, T, ...]
    views say that they did; cu_seqlens on another device than q is refused though never read."""
    packed = _packed(_batched("cpu", 3, 1), 2)
    with pytest.raises(ValueError, match=r"argument 'v' must hold the 3 packed tokens.*got shape \[1, 4, 4, 8\]"):
        gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(packed, v=torch.randn(1, 4, HV, V)))
    with pytest.raises(ValueError, match=r"argument 'a'.*\(with cu_seqlens, the packed \[3, \.\.\.\] tensors are "
                                         r"checked as their \[N, T, \.\.\.\] = \[3, 1, \.\.\.\] views\)"):
        gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(packed, a=packed["a"][:, :-1]))
    with pytest.raises(ValueError, match="argument 'cu_seqlens' must be on device cpu like q; got meta"):
        gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(packed, cu_seqlens=packed["cu_seqlens"].to("meta")))


def test_packed_tokens_compile_fullgraph_with_a_dynamic_token_count():
    """The unpacking is shape arithmetic and views: no graph break, the count of tokens symbolic."""
    kw = _batched("cpu", 4, 1)
    packed = _packed(kw, 2)
    expected = gdn_ops.fused_sigmoid_gating_delta_rule_update(**kw)
    torch._dynamo.reset()
    step = torch.compile(gdn_ops.fused_sigmoid_gating_delta_rule_update, fullgraph=True, dynamic=True)
    with torch.no_grad():
        got = step(**packed)
    torch.testing.assert_close(got[0], expected.flatten(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(packed["initial_state_source"], kw["initial_state_source"], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("indices_2d", [False, True])
def test_vllm_call_convention_gives_the_batched_step(device, indices_2d):
    """vLLM's names and order (a before b, softplus as beta/threshold, initial_state, ssm_state_indices)."""
    from gdn_ops import vllm_api

    kw = _batched(device, 5, 1)
    packed = _packed(kw, 2)
    expected = gdn_ops.fused_sigmoid_gating_delta_rule_update(**kw)
    slots = packed["initial_state_indices"]
    o, state = vllm_api.fused_sigmoid_gating_delta_rule_update(
        packed["A_log"], packed["a"], packed["b"], packed["dt_bias"], packed["q"], packed["k"], packed["v"],
        initial_state=packed["initial_state_source"], inplace_final_state=True, cu_seqlens=packed["cu_seqlens"],
        ssm_state_indices=slots[:, None] if indices_2d else slots)
    assert state is packed["initial_state_source"]
    torch.testing.assert_close(o[0], expected.flatten(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(state, kw["initial_state_source"], rtol=0, atol=0)


def test_vllm_call_convention_reads_the_first_slots_of_a_longer_index_vector():
    """vLLM decodes the first N rows of a mixed batch apart from its prefills and passes the slots
    of the whole batch; its kernel reads the first N (the call was refused here: [B] expected)."""
    from gdn_ops import vllm_api

    kw = _batched("cpu", 3, 1)
    packed = _packed(kw, 2)
    expected = gdn_ops.fused_sigmoid_gating_delta_rule_update(**kw)
    prefills = torch.tensor([SLOTS - 1, -1], dtype=torch.int32)  # slots the decode call must not touch
    o, state = vllm_api.fused_sigmoid_gating_delta_rule_update(
        packed["A_log"], packed["a"], packed["b"], packed["dt_bias"], packed["q"], packed["k"], packed["v"],
        initial_state=packed["initial_state_source"], cu_seqlens=packed["cu_seqlens"],
        ssm_state_indices=torch.cat([packed["initial_state_indices"], prefills]))
    torch.testing.assert_close(o[0], expected.flatten(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(state, kw["initial_state_source"], rtol=0, atol=0)  # every other slot as it was


@pytest.mark.parametrize(("change", "name"), [
    ({"inplace_final_state": False}, "inplace_final_state"),
    ({"initial_state": None}, "initial_state"),
    ({"is_kda": True}, "is_kda"),
    ({"num_accepted_tokens": torch.ones(3, dtype=torch.int32)}, "num_accepted_tokens"),
    ({"ssm_state_indices": torch.zeros(3, 2, dtype=torch.int32)}, "ssm_state_indices"),
])
def test_vllm_call_convention_refuses_what_is_not_the_decode_step(change, name):
    from gdn_ops import vllm_api

    packed = _packed(_batched("cpu", 3, 1), 2)
    args = {"A_log": packed["A_log"], "a": packed["a"], "b": packed["b"], "dt_bias": packed["dt_bias"],
            "q": packed["q"], "k": packed["k"], "v": packed["v"], "initial_state": packed["initial_state_source"],
            "cu_seqlens": packed["cu_seqlens"], "ssm_state_indices": packed["initial_state_indices"]}
    before = packed["initial_state_source"].clone()
    with pytest.raises(NotImplementedError, match=f"argument '{name}'"):
        vllm_api.fused_sigmoid_gating_delta_rule_update(**{**args, **change})
    torch.testing.assert_close(packed["initial_state_source"], before, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_sharing_a_null_slot_leave_every_other_slot_right(device):
    """vLLM's padding: padded rows all at slot 0. The live rows' slots get their own results and the
    slots no row names stay as they were, whatever slot 0 ends up holding."""
    kw = _batched(device, 6, 1)
    slots = torch.tensor([3, 0, 5, 0, 0, 8], dtype=torch.int32, device=device)
    pool = kw["initial_state_source"]
    before = pool.clone()
    live = torch.tensor([0, 2, 5], device=device)
    expected_pool = before.clone()
    expected_o = gdn_ops.fused_sigmoid_gating_delta_rule_update(**{
        **kw, **{n: kw[n][live] for n in ("q", "k", "v", "a", "b")},
        "initial_state_source": expected_pool, "initial_state_indices": slots[live]})
    o = gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(kw, initial_state_indices=slots))
    # (a batch of 6 against one of 3: the GPU may pick another tile, so not bit for bit)
    torch.testing.assert_close(o[live], expected_o, rtol=1e-5, atol=1e-5)
    others = [s for s in range(SLOTS) if s != 0]
    torch.testing.assert_close(pool[others], expected_pool[others], rtol=1e-5, atol=1e-5)
    assert torch.equal(pool[[1, 2, 4, 6, 7]], before[[1, 2, 4, 6, 7]])
