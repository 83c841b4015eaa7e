"""Algebraic laws of the float64 reference: the oracle must itself be right."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from gdn_ops.reference import (
    delta_rule_step_reference,
    gdn_gating_reference,
    recurrent_gated_delta_rule_reference,
)

f64 = torch.float64


def _inputs(seed, B=3, T=3, HK=2, group=2, K=8, V=6):
    gen = torch.Generator().manual_seed(seed)
    HV = HK * group
    r = lambda *s: torch.randn(*s, generator=gen, dtype=f64)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)
    q, k = unit(r(B, T, HK, K)), unit(r(B, T, HK, K))
    g, beta = -torch.rand(B, T, HV, generator=gen, dtype=f64), torch.rand(B, T, HV, generator=gen, dtype=f64)
    return q, k, r(B, T, HK * group, V), g, beta, r(B, HV, V, K)


@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_t_tokens_equal_t_chained_single_steps(seed, T):
    q, k, v, g, beta, S = _inputs(seed, T=T)
    o_all, S_all = delta_rule_step_reference(q, k, v, g, beta, S, compute_dtype=f64)
    for t in range(T):
        o_t, S = delta_rule_step_reference(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1],
                                           beta[:, t:t + 1], S, compute_dtype=f64)
        torch.testing.assert_close(o_all[:, t], o_t[:, 0])
    torch.testing.assert_close(S_all, S)


@given(st.integers(0, 2**31 - 1))
def test_kv_layout_is_the_transpose_of_vk(seed):
    q, k, v, g, beta, S = _inputs(seed)
    o_vk, S_vk = delta_rule_step_reference(q, k, v, g, beta, S, compute_dtype=f64)
    o_kv, S_kv = delta_rule_step_reference(q, k, v, g, beta, S.transpose(-1, -2), state_layout="kv", compute_dtype=f64)
    torch.testing.assert_close(o_vk, o_kv)
    torch.testing.assert_close(S_vk, S_kv.transpose(-1, -2))


@given(st.integers(0, 2**31 - 1), st.integers(2, 3))
def test_gqa_equals_explicitly_repeated_key_heads(seed, group):
    q, k, v, g, beta, S = _inputs(seed, group=group)
    o, S1 = delta_rule_step_reference(q, k, v, g, beta, S, compute_dtype=f64)
    rep = lambda x: x.repeat_interleave(group, dim=2)
    o_rep, S_rep = delta_rule_step_reference(rep(q), rep(k), v, g, beta, S, compute_dtype=f64)
    torch.testing.assert_close(o, o_rep)
    torch.testing.assert_close(S1, S_rep)


def test_no_decay_no_update_reads_the_state():
    q, k, v, g, beta, S = _inputs(1, T=1)
    o, S1 = delta_rule_step_reference(q, k, v, torch.zeros_like(g), torch.zeros_like(beta), S, scale=0.5,
                                      compute_dtype=f64)
    torch.testing.assert_close(S1, S)
    torch.testing.assert_close(o[:, 0], torch.einsum("bhvk,bhk->bhv", S, 0.5 * q[:, 0].repeat_interleave(2, 1)))


def test_full_write_with_unit_key_makes_the_state_recall_v():
    """Delta rule with beta=1 and no decay: afterwards S k = v exactly (for unit-norm k)."""
    q, k, v, g, beta, S = _inputs(2, T=1, group=1)
    _, S1 = delta_rule_step_reference(q, k, v, torch.zeros_like(g), torch.ones_like(beta), S, compute_dtype=f64)
    torch.testing.assert_close(torch.einsum("bhvk,bhk->bhv", S1, k[:, 0]), v[:, 0])


def test_total_decay_forgets_the_old_state():
    q, k, v, g, beta, S = _inputs(3, T=1, group=1)
    _, S1 = delta_rule_step_reference(q, k, v, torch.full_like(g, -torch.inf), torch.ones_like(beta), S,
                                      compute_dtype=f64)
    torch.testing.assert_close(S1, torch.einsum("bhv,bhk->bhvk", v[:, 0], k[:, 0]))


def test_padding_rows_get_zero_output_and_leave_the_pool_untouched():
    q, k, v, g, beta, S = _inputs(4, B=4, group=1)
    pool = torch.randn(6, *S.shape[1:], dtype=f64)
    idx = torch.tensor([5, -1, 2, 6])  # 6 == num_slots: also padding
    o, new_pool = recurrent_gated_delta_rule_reference(q, k, v, g, beta, pool, idx)
    assert bool((o[1] == 0).all()) and bool((o[3] == 0).all())
    for slot in (0, 1, 3, 4):
        assert torch.equal(new_pool[slot], pool[slot])
    o_live, states = delta_rule_step_reference(q[[0, 2]], k[[0, 2]], v[[0, 2]], g[[0, 2]], beta[[0, 2]], pool[[5, 2]],
                                               compute_dtype=f64)
    torch.testing.assert_close(o[[0, 2]], o_live)
    torch.testing.assert_close(new_pool[[5, 2]], states)


@given(st.floats(-40, 40), st.floats(0.5, 2.0), st.floats(1.0, 30.0))
def test_gates_decay_and_step_size_are_in_range(x, softplus_beta, threshold):
    a = torch.tensor([[x]], dtype=f64)
    g, beta = gdn_gating_reference(torch.tensor([0.3], dtype=f64), a, torch.tensor([0.1], dtype=f64), a,
                                   softplus_beta, threshold, compute_dtype=f64)
    assert float(g) <= 0.0 and 0.0 <= float(beta) <= 1.0
    z = (x + 0.1) * softplus_beta
    expected_softplus = (x + 0.1) if z > threshold else torch.log1p(torch.exp(torch.tensor(z, dtype=f64))) / softplus_beta
    torch.testing.assert_close(g, -torch.exp(torch.tensor(0.3, dtype=f64)) * expected_softplus * torch.ones_like(g))
